"""A rank whose collective broke because a peer stopped on Ctrl-C waits for its own stop signal, so the job ends as
interrupted (one line from the launcher) instead of as a crash with this rank's traceback."""

import os
import signal
import threading
import time

import pytest

from fftrain.commands.train import wait_for_a_stop_signal

PEER_GONE = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:39643")


def test_a_broken_collective_turns_into_the_interrupt_that_follows_it():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))  # the launcher's signal, a moment later
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            wait_for_a_stop_signal(PEER_GONE, seconds=5.0)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)


def test_other_errors_do_not_wait():
    start = time.monotonic()
    wait_for_a_stop_signal(ValueError("a real bug"), seconds=5.0)
    assert time.monotonic() - start < 1.0


def _dcp_failure(exc: BaseException):
    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    def save():
        try:
            raise exc
        except BaseException as e:  # as DCP's save does on each rank
            raise CheckpointException("save failed", {0: _wrap_exception(e)}) from None
    return save


def test_a_ctrl_c_inside_the_checkpoint_save_stays_an_interrupt():
    """DCP wraps whatever a rank raised while saving, a Ctrl-C included, in its CheckpointException; the save's
    failure exchange must not turn that into a write error (the job would then end as a crash)."""
    from fftrain.training.checkpoint.dcp_io import _try

    with pytest.raises(KeyboardInterrupt):
        _try(_dcp_failure(KeyboardInterrupt()))
    assert _try(_dcp_failure(OSError(28, "No space left on device"))) == "ENOSPC"  # a real failure: reported
