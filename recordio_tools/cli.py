"""`recordio_tools`: one command, one subcommand per dataset task.

    recordio_tools synth --out data/synth            # the synthetic six-dataset set
    recordio_tools build --out data/train data/synth/*/
    recordio_tools inspect data/train
    recordio_tools verify data/train
    recordio_tools relabel data/train --label-map label_map.json --in-place   # after `fftrain fuse`

Each subcommand lives in recordio_tools/commands/<name>.py with `add_parser(subparsers)` and
`run(args) -> int`. Expected failures (bad files, bad arguments) print one line naming the
file and record and exit 2; Ctrl-C exits 130 with previous outputs intact.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from .errors import UsageError, UserError, report_user_error

COMMANDS = ["convert", "import", "build", "inspect", "verify", "synth", "split-overlap", "relabel"]


def _module(command: str):
    return importlib.import_module(f"recordio_tools.commands.{command.replace('-', '_').replace('import', 'import_')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recordio_tools", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        _module(command).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (UserError, FileNotFoundError) as e:
        return report_user_error(f"recordio_tools {args.command}", e)
    except KeyboardInterrupt:
        print(f"recordio_tools {args.command}: interrupted; earlier outputs left as they were", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        where = getattr(args, "out", None) or e.filename or "the output folder"
        print(f"recordio_tools {args.command}: error: no space left on {os.path.abspath(where)}; nothing was "
              "written there (partial output removed)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
