"""Start the training workers through torchrun's own launcher (elastic agent, rendezvous, restarts).

    code = launch_workers(["-m", "fftrain.train", "--config", "six_datasets_r50"], nproc_per_node=8,
                          max_restarts=3)

The torchrun options are parsed by torchrun's parser and turned into its launch config by its
`config_from_args`, so every option means what it means to torchrun. Two differences, both about how a
job ends:
- a worker that exits with the user-error status (2: a refused setting or input, already explained on
  one line by the worker) is not restarted: the agent's remaining restarts are set to 0 as soon as it
  sees that exit, since a restart would meet the same refusal;
- the end is one line, not torchrun's ChildFailedError report: nothing more for a user error, the
  failed ranks and their exit codes for a crash (the worker printed its traceback and wrote it to its
  rank log), "interrupted" for a Ctrl-C.
Returns the job's exit status: 0, 2 (user error), 1 (a worker failed), 130 (interrupted).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import uuid

EXIT_INTERRUPTED = 130


def _no_restart_on(exit_code: int):
    """The elastic agent class of torchrun, except that a worker exiting with `exit_code` uses up the restarts."""
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    class Agent(LocalElasticAgent):
        def _monitor_workers(self, worker_group):
            result = super()._monitor_workers(worker_group)
            if result.is_failed() and any(f.exitcode == exit_code for f in result.failures.values()):
                self._remaining_restarts = 0
            return result

    return Agent


@contextlib.contextmanager
def _agent_class(agent):
    """torchrun's `launch_agent` builds its agent by this module-level name; use ours for one launch."""
    import torch.distributed.launcher.api as api

    saved = api.LocalElasticAgent
    api.LocalElasticAgent = agent
    try:
        yield
    finally:
        api.LocalElasticAgent = saved


@contextlib.contextmanager
def _quiet_agent_logs():
    """The agent logs each worker's exit at ERROR and its SIGTERMs at WARNING; the one-line end says it."""
    logger = logging.getLogger("torch.distributed.elastic")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def torchrun_argv(worker: list[str], *, nproc_per_node: int, nnodes: str = "1", node_rank: int = 0,
                  rdzv_endpoint: str = "", rdzv_backend: str = "c10d", rdzv_id: str = "",
                  max_restarts: int = 0, local_ranks_filter: str = "") -> list[str]:
    """torchrun's command line for these options (standalone rendezvous on one node without an endpoint)."""
    argv = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", f"--max-restarts={max_restarts}"]
    if nnodes == "1" and not rdzv_endpoint:
        argv.append("--standalone")
    else:
        argv += [f"--node-rank={node_rank}", f"--rdzv-backend={rdzv_backend}", f"--rdzv-endpoint={rdzv_endpoint}",
                 f"--rdzv-id={rdzv_id or 'fftrain'}"]
    if local_ranks_filter:
        argv.append(f"--local-ranks-filter={local_ranks_filter}")
    return argv + worker


def _standalone(args) -> None:
    """What torchrun's `run` does for --standalone before building the config."""
    if args.standalone:
        args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())


def launch_workers(worker: list[str], *, user_error_code: int = 2, **options) -> int:
    """Run `python <worker...>` on every local rank under torchrun's elastic agent; the job's exit status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    args = get_args_parser().parse_args(torchrun_argv(worker, **options))
    _standalone(args)
    config, command, command_args = config_from_args(args)
    try:
        with _agent_class(_no_restart_on(user_error_code)), _quiet_agent_logs():
            elastic_launch(config, command)(*command_args)
    except ChildFailedError as e:
        codes = {rank: f.exitcode for rank, f in e.failures.items()}
        if user_error_code in codes.values():
            return user_error_code
        if all(code in (-2, EXIT_INTERRUPTED) for code in codes.values()):
            return _interrupted()
        failed = ", ".join(f"rank {rank} exited {code}" for rank, code in sorted(codes.items()))
        print(f"fftrain: workers failed ({failed}); each rank's traceback is in its output and logs/rank<r>.log",
              file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, SignalException):
        return _interrupted()
    return 0


def _interrupted() -> int:
    print("fftrain: interrupted; the newest complete checkpoint is kept: run the same command again to resume "
          "(checkpoint.resume=auto)", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED
