"""`fftrain train` (and `torchrun fftrain/train.py`): one training run on this process.

`main` parses the arguments and loads the config; `run_training` does the rest: distributed
set-up, the start-up checks (`fftrain.training.startup`, resolved once and handed to the trainer),
the trainer, clean errors. Every check that can fail on the user's input runs before anything is
written to `output_dir`; then global rank 0 takes the folder's lock; then the logs, the config and
the checkpoints are written. A `UserError` ends the run with one line and exit
status 2: a start-up refusal is agreed by all ranks and printed by rank 0 only; an error found
mid-run (a bad record, a diverged loss) is printed by the rank that met it.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import os
import signal
import sys

from fftrain.config import ConfigError, TrainConfig, dump_config
from fftrain.distributed import DistContext, StartupTimeout, destroy_distributed, init_distributed
from fftrain.errors import EXIT_USER_ERROR, UserError, one_line
from fftrain.training.run_log import setup_logging
from fftrain.training.startup import StartupRefused, check_before_spawn, start_up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fftrain.config import keys_help
    from fftrain.configs import packaged_configs

    parser = argparse.ArgumentParser(prog="fftrain train", description="Train a face-recognition network on "
                                     "several datasets at once (FaceFusion).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="config keys (--set KEY=VALUE; the defaults below are the paper's "
                                     "setting; with no --config the CPU demo, configs/demo_cpu.yaml, replaces "
                                     "some):\n" + keys_help())
    parser.add_argument("--config", help="a packaged config's name (" + ", ".join(packaged_configs()) + ") or a "
                        "YAML file (default: the embedded CPU demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=0.01 (repeatable)")
    parser.add_argument("--resume", help="'auto' (newest complete checkpoint in the run dir), a checkpoint "
                        "folder, or '' to start fresh; same as --set checkpoint.resume=...")
    from fftrain.commands.launch import add_launch_arguments

    add_launch_arguments(parser)
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
    from fftrain.distributed import launch_rank
    from fftrain.errors import report_user_error
    from fftrain.demo import DEMO_CONFIG

    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume!r}" if args.resume else "checkpoint.resume=''")
    try:
        config_path = config_file(args.config)
        cfg = load_config(config_path, overrides, base=None if args.config else DEMO_CONFIG)
    except UserError as e:  # every rank has the same config: rank 0 says it
        return report_user_error("fftrain", e) if launch_rank() == 0 else EXIT_USER_ERROR
    if args.nproc_per_node is not None:  # the launcher: check here, then start the workers
        from fftrain.commands.launch import launch

        return launch(args, cfg, config_path, check_before_spawn)
    try:
        return run_training(cfg)
    except KeyboardInterrupt:
        return interrupted(launch_rank())


def interrupted(rank: int) -> int:
    """Ctrl-C: no traceback from every rank; one line (from rank 0, or from the launcher that started us)."""
    from fftrain.commands.launch import LAUNCHED_ENV

    if rank == 0 and not os.environ.get(LAUNCHED_ENV):
        print("fftrain: interrupted; the newest complete checkpoint is kept: run the same command again to resume "
              "(checkpoint.resume=auto)", file=sys.stderr, flush=True)
    return 130


def config_file(name_or_path: str | None) -> str | None:
    """`--config`: a packaged config's name or a path; a name that is neither is a ConfigError."""
    from fftrain.configs import packaged_configs, resolve_config

    if name_or_path is None:
        return None
    path = resolve_config(name_or_path)
    if not os.path.exists(path):
        raise ConfigError(f"--config {name_or_path}: no such file and no packaged config of that name "
                          f"(packaged: {', '.join(packaged_configs())})")
    return path


def write_config(cfg: TrainConfig, resume_meta: dict | None) -> None:
    """config.yaml for a fresh run; a resumed run keeps it and adds config-resume-<step>.yaml."""
    from recordio_tools.files import write_text_atomic

    name = "config.yaml" if resume_meta is None else f"config-resume-{resume_meta['step']:08d}.yaml"
    write_text_atomic(os.path.join(cfg.output_dir, name), dump_config(cfg))


def run_training(cfg: TrainConfig) -> int:
    try:
        ctx = init_distributed(cfg.device)
    except StartupTimeout as e:  # not the user's doing: exit 1, and torchrun's next restart round tries again
        print(f"fftrain: {e}", file=sys.stderr)
        return 1
    lock, log = None, None
    try:
        started = start_up(cfg, ctx)
        cfg, lock = started.cfg, started.lock
        log = setup_logging(cfg.output_dir, ctx.rank)
        if ctx.is_main:
            write_config(cfg, started.point.resume_meta)
        from fftrain.training.trainer import Trainer

        results = Trainer(cfg, ctx, started.data, started.point).train()
        for name, r in results.items():
            log.info(f"final verification {name}: accuracy {r['accuracy']:.4f} ± {r['std']:.4f}")
        return 0
    except UserError as e:
        return report(e, ctx, log)
    except BaseException as e:
        if log is not None and not isinstance(e, (KeyboardInterrupt, SystemExit)):
            wait_for_a_stop_signal(e)
            log_file = os.path.join(cfg.output_dir, "logs", f"rank{ctx.rank}.log")
            log.exception(f"unexpected error on rank {ctx.rank}")  # into the rank log, whatever torchrun shows
            print(f"fftrain: unexpected error on rank {ctx.rank} ({type(e).__name__}: {e}); its traceback is in "
                  f"{log_file}. torchrun --local-ranks-filter shows rank 0 only: read every "
                  f"{os.path.join(cfg.output_dir, 'logs', 'rank*.log')}", file=sys.stderr)
        raise
    finally:
        if lock is not None:
            lock.release()
        destroy_distributed(ctx)


def wait_for_a_stop_signal(error: BaseException, seconds: float = 3.0) -> None:
    """On Ctrl-C the launcher signals every rank; a rank whose peer stopped first sees its collective break before
    its own signal lands. Give that signal a moment (it raises KeyboardInterrupt here: the job was interrupted, not
    crashed) before calling the broken collective a crash."""
    import time

    if any(words in str(error) for words in ("closed by peer", "Connection reset", "Broken pipe")):
        time.sleep(seconds)


def report(error: UserError, ctx: DistContext, log) -> int:
    """One line on stderr (and in this rank's log file, if there is one yet); exit status 2."""
    where = f" on rank {ctx.rank}" if ctx.world_size > 1 and not isinstance(error, StartupRefused) else ""
    line = f"fftrain: error{where}: {one_line(error)}"
    if log is not None:
        log.error(line, extra={"console": False})
    if ctx.is_main or not isinstance(error, StartupRefused):
        print(line, file=sys.stderr, flush=True)
    return EXIT_USER_ERROR
