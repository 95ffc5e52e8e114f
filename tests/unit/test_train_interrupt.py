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
