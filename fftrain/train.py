"""fftrain's training entry point (torchrun or plain python).

    # the embedded demo: synthetic six-dataset set, tiny backbone, CPU, ~10 minutes on 2 cores
    torchrun --nproc_per_node=2 fftrain/train.py
    # one node, 8 GPUs, the paper setting on your built training set
    torchrun --nproc_per_node=8 fftrain/train.py --config configs/six_datasets_r50.yaml \
        --set data.manifest=/data/train/manifest.json
    # two nodes (run on each; NODE_RANK 0 and 1)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$HEAD:29500 \
        fftrain/train.py --config configs/six_datasets_r50.yaml
    # a single process, no torchrun
    python fftrain/train.py --set optim.total_steps=100 --set optim.warmup_steps=10 --set optim.lr_milestones=[75,90]

With no --config the embedded demo config (configs/demo_cpu.yaml) is used. `--set key=value`
overrides any config key (YAML syntax for the value); `--resume auto|PATH|''` is
`checkpoint.resume`.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import signal
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fftrain.config import keys_help

    parser = argparse.ArgumentParser(prog="fftrain train", description="Train a face-recognition network on "
                                     "several datasets at once (FaceFusion).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="config keys (--set KEY=VALUE; the defaults below are the paper's "
                                     "setting; with no --config the CPU demo, configs/demo_cpu.yaml, replaces "
                                     "some):\n" + keys_help())
    parser.add_argument("--config", help="YAML run config (default: the embedded CPU demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=0.01 (repeatable)")
    parser.add_argument("--resume", help="'auto' (newest complete checkpoint in the run dir), a checkpoint "
                        "folder, or '' to start fresh; same as --set checkpoint.resume=...")
    return parser.parse_args(argv)


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 PID` prints where every thread of a stuck rank is (stderr must be a real file)."""
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (io.UnsupportedOperation, ValueError, AttributeError):  # stderr replaced, e.g. under pytest capture
        pass


def main(argv: list[str] | None = None) -> int:
    _stacks_on_sigusr1()
    from fftrain.config import load_config
    from fftrain.demo import DEMO_CONFIG
    from fftrain.distributed import launch_rank
    from fftrain.errors import EXIT_USER_ERROR, UserError, report_user_error

    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume!r}" if args.resume else "checkpoint.resume=''")
    try:
        cfg = load_config(args.config, overrides, base=None if args.config else DEMO_CONFIG)
    except UserError as e:  # every rank has the same config: rank 0 says it
        return report_user_error("fftrain", e) if launch_rank() == 0 else EXIT_USER_ERROR
    from fftrain.run import run_training

    return run_training(cfg)


if __name__ == "__main__":
    sys.exit(main())
