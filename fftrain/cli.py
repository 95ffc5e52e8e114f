"""`fftrain`: train, fuse, evaluate and export.

    fftrain train [--config C] [--set k=v ...]          # same as fftrain/train.py (torchrun works too)
    fftrain fuse --checkpoint DIR --t1 0.7 --dry-run     # what fusion would merge at this T1
    fftrain eval --checkpoint DIR lfw.bin cfp_fp.bin     # verification table + JSON
    fftrain export --checkpoint DIR --onnx model.onnx    # backbone to ONNX, checked with onnxruntime
    fftrain audit --checkpoint DIR --data MANIFEST --out DIR   # label noise, duplicates, test-set leakage
    fftrain pseudo-label --checkpoint DIR --unlabeled DATASET --out DIR   # cluster an unlabeled set into a dataset
    fftrain plan --classes 29000000 --gpus 8 --gpu-memory 80 --max-classes   # per-GPU memory, fits?
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from .audit.cli import add_audit_parser
    from .evaluation.cli_commands import add_eval_parser, add_export_parser
    from .fusion_cli import add_fuse_parser
    from .pseudo_label.cli import add_pseudo_label_parser
    from .plan import add_plan_parser

    parser = argparse.ArgumentParser(prog="fftrain", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = subparsers.add_parser("train", help="train (see fftrain/train.py --help)", add_help=False)
    train.set_defaults(run=None)
    add_fuse_parser(subparsers)
    add_eval_parser(subparsers)
    add_export_parser(subparsers)
    add_audit_parser(subparsers)
    add_pseudo_label_parser(subparsers)
    add_plan_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from .train import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    from .errors import UserError, report_user_error

    try:
        return int(args.run(args) or 0)
    except UserError as e:
        return report_user_error(f"fftrain {args.command}", e)


if __name__ == "__main__":
    sys.exit(main())
