"""Options several subcommands share, declared once (same flags, same help text)."""

from __future__ import annotations


def add_overwrite(parser) -> None:
    """--overwrite: replace an --out folder that is not an earlier output of this command (see shards.check_out)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out folder even if it is not an earlier output of this command")


def add_dataset_out(parser) -> None:
    """--out and --name of a command that writes one dataset folder (convert, import)."""
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="dataset folder to write (replaced as a whole at the end)")
    parser.add_argument("--name", help="dataset name stored in dataset.json (default: the --out folder's name)")


def add_class_offset(parser) -> None:
    """--class-offset of a command that writes one dataset folder (convert, import)."""
    parser.add_argument("--class-offset", type=int, default=0, metavar="C",
                        help="first class id: stored labels are offset + local label (default: 0)")
