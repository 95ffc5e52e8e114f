"""`fftrain train --nproc-per-node N [--nnodes ... --rdzv-endpoint ...]`: check, then start the workers.

    fftrain train --nproc-per-node 8 --config six_datasets_r50 --set data.manifest=/data/train/manifest.json
    fftrain train --nproc-per-node 8 --nnodes 2 --node-rank $NODE_RANK --rdzv-endpoint $HEAD:29500 --config ...

Before any worker starts, this process checks what a worker would refuse at start-up: every config key,
the training set (manifest, shards, index, the batch size against the data split over all ranks), the
verification files, a pretrained backbone and the checkpoint to resume with its resume rules. A refusal is
one line and exit status 2, and nothing is spawned. Then the workers (`python -m fftrain.train` with the
same config) run under torchrun's elastic agent (`fftrain.distributed.launcher`): restarts up to
`--max-restarts` from the newest checkpoint, except after a worker's user error; Ctrl-C ends the job with
one line, the newest complete checkpoint kept for `--resume auto`.
"""

from __future__ import annotations

import argparse
import os

from fftrain.config import TrainConfig
from fftrain.errors import UserError

LAUNCHED_ENV = "FFTRAIN_LAUNCHED"
"""Set for the workers: the launcher, not each worker, reports a Ctrl-C."""


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("launcher (start the workers from here, through torchrun's elastic agent)")
    group.add_argument("--nproc-per-node", type=int, metavar="N", help="workers on this node; without it this "
                       "process is one worker (as under torchrun)")
    group.add_argument("--nnodes", default="1", help="nodes, or MIN:MAX for an elastic job (default: 1)")
    group.add_argument("--node-rank", type=int, default=0, help="this node's rank (static rendezvous)")
    group.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT", help="rendezvous of a multi-node job")
    group.add_argument("--rdzv-backend", default="c10d", help="default: %(default)s")
    group.add_argument("--rdzv-id", default="", help="job id shared by the nodes (default: fftrain)")
    group.add_argument("--max-restarts", type=int, default=3, help="restart rounds after a worker dies "
                       "(each resumes from the newest checkpoint; never after a user error; default: %(default)s)")
    group.add_argument("--local-ranks-filter", default="0", help="local ranks whose output is shown "
                       "(default: %(default)s; '' for all)")


def _world_size(args) -> int:
    nnodes = args.nnodes.split(":")[-1]
    if not nnodes.isdigit() or int(nnodes) < 1:
        raise UserError(f"--nnodes {args.nnodes}: expected a count or MIN:MAX")
    if args.nproc_per_node < 1:
        raise UserError(f"--nproc-per-node {args.nproc_per_node}: must be >= 1")
    if args.max_restarts < 0:
        raise UserError(f"--max-restarts {args.max_restarts}: must be >= 0")
    if args.nnodes != "1" and not args.rdzv_endpoint:
        raise UserError(f"--nnodes {args.nnodes}: a multi-node job needs --rdzv-endpoint HOST:PORT")
    return int(nnodes) * args.nproc_per_node


def worker_argv(args, config_path: str | None) -> list[str]:
    argv = ["-m", "fftrain.train"]
    if config_path:
        argv += ["--config", os.path.abspath(config_path)]
    for override in args.overrides:
        argv += ["--set", override]
    if args.resume is not None:
        argv += ["--resume", args.resume]
    return argv


def launch(args, cfg: TrainConfig, config_path: str | None, check_before_spawn) -> int:
    """`check_before_spawn(cfg, world_size)` raises the UserError a worker would meet at start-up."""
    from fftrain.distributed.launcher import launch_workers
    from fftrain.errors import report_user_error

    try:
        check_before_spawn(cfg, _world_size(args))
    except UserError as e:
        return report_user_error("fftrain", e)
    os.environ[LAUNCHED_ENV] = "1"
    return launch_workers(worker_argv(args, config_path), nproc_per_node=args.nproc_per_node, nnodes=args.nnodes,
                          node_rank=args.node_rank, rdzv_endpoint=args.rdzv_endpoint, rdzv_backend=args.rdzv_backend,
                          rdzv_id=args.rdzv_id, max_restarts=args.max_restarts,
                          local_ranks_filter=args.local_ranks_filter)
