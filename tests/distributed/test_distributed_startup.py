"""Process-group start-up under torchrun: a fresh store per restart round, and a bounded wait for peers."""

import datetime
import socket
import threading
import time

import pytest
import torch.distributed as dist

from fftrain.distributed import StartupTimeout, round_store


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def agent_store(monkeypatch):
    """What torchrun's agent provides: a store every worker reaches at MASTER_ADDR:MASTER_PORT."""
    store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=30))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    return store


def _start_ranks(world_size: int, timeout_s: float) -> list:
    results = [None] * world_size

    def start(rank):
        try:
            results[rank] = round_store(rank, world_size, timeout_s)
        except Exception as e:
            results[rank] = e

    threads = [threading.Thread(target=start, args=(rank,)) for rank in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s + 30)
    return results


def test_a_round_ignores_the_dead_round_left_in_the_agent_store(agent_store):
    agent_store.set("fftrain/test/round_store_port", str(_dead_port()))   # the last round's rank 0, now dead
    agent_store.set("fftrain/arrived", "5")                              # and keys of the old group
    stores = _start_ranks(3, timeout_s=60)
    assert all(isinstance(s, dist.Store) for s in stores), stores
    stores[1].set("hello", "from rank 1")
    assert stores[0].get("hello") == b"from rank 1" == stores[2].get("hello")
    assert stores[0].add("fftrain/arrived", 0) == 3


def test_a_missing_peer_fails_start_up_in_bounded_time(agent_store):
    start = time.monotonic()
    with pytest.raises(StartupTimeout, match="rank 0 saw 1 of 2 ranks arrive"):
        round_store(0, 2, timeout_s=2)
    assert time.monotonic() - start < 15


def test_rank0_never_coming_fails_the_others_in_bounded_time(agent_store):
    agent_store.set("fftrain/test/round_store_port", str(_dead_port()))
    start = time.monotonic()
    with pytest.raises(StartupTimeout, match="could not reach rank 0's store"):
        round_store(1, 2, timeout_s=3)
    assert time.monotonic() - start < 30
