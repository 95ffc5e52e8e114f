"""`fftrain`: train, fuse, evaluate and export.

    fftrain train [--config C] [--set k=v ...]          # same as fftrain/train.py (torchrun works too)
    fftrain fuse --checkpoint DIR --t1 0.7 --dry-run     # what fusion would merge at this T1
    fftrain eval --checkpoint DIR lfw.bin cfp_fp.bin     # verification table + JSON
    fftrain export --checkpoint DIR --onnx model.onnx    # backbone to ONNX, checked with onnxruntime
    fftrain audit --checkpoint DIR --data MANIFEST --out DIR   # label noise, duplicates, test-set leakage
    fftrain pseudo-label --checkpoint DIR --unlabeled DATASET --out DIR   # cluster an unlabeled set into a dataset
    fftrain demo-report runs/demo                        # classes after fusion, merge precision/recall, accuracy
    fftrain plan --classes 29000000 --gpus 8 --gpu-memory 80 --max-classes   # per-GPU memory, fits?
"""

from __future__ import annotations

import argparse
import importlib
import sys


#: every subcommand but `train`: (its module under fftrain/commands/, the function adding its parser)
COMMANDS = (
    ("fftrain.commands.fuse", "add_fuse_parser"),
    ("fftrain.commands.eval", "add_eval_parser"),
    ("fftrain.commands.export", "add_export_parser"),
    ("fftrain.commands.audit", "add_audit_parser"),
    ("fftrain.commands.pseudo_label", "add_pseudo_label_parser"),
    ("fftrain.commands.plan", "add_plan_parser"),
    ("fftrain.commands.demo_report", "add_demo_report_parser"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fftrain", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = subparsers.add_parser("train", help="train (see fftrain/train.py --help)", add_help=False)
    train.set_defaults(run=None)
    for module, add_parser in COMMANDS:
        getattr(importlib.import_module(module), add_parser)(subparsers)
    return parser


def _lease(checkpoint: str | None):
    """A read lease on the checkpoint a command reads, so a training run's pruning leaves it alone."""
    import contextlib

    from fftrain.training.read_lease import read_lease

    return read_lease(checkpoint) if checkpoint else contextlib.nullcontext()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from fftrain.commands.train import main as train_main

        return train_main(argv[1:])
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        args = build_parser().parse_args(argv)
        from fftrain.errors import UserError, report_user_error

        try:
            with _lease(getattr(args, "checkpoint", None)):
                return int(args.run(args) or 0)
        except UserError as e:
            return report_user_error(f"fftrain {args.command}", e)
    except KeyboardInterrupt:  # every output is written atomically: nothing half-written is left
        prog = f"fftrain {command}".strip()
        print(f"{prog}: interrupted; earlier outputs left as they were", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
