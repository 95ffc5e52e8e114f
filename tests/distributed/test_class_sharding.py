import pytest
import torch
from hypothesis import given, strategies as st

from fftrain.distributed.class_sharding import owner_of, shard_range, shard_ranges


@given(st.integers(0, 5000), st.integers(1, 80))
def test_ranges_tile_the_classes_as_torch_chunk_does(num_classes, world_size):
    ranges = shard_ranges(num_classes, world_size)
    assert ranges[0][0] == 0 and ranges[-1][1] == num_classes
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    chunks = [len(c) for c in torch.arange(num_classes).chunk(world_size)] if num_classes else []
    assert [end - start for start, end in ranges] == chunks + [0] * (world_size - len(chunks))


@given(st.integers(1, 5000), st.integers(1, 80))
def test_owner_of_agrees_with_shard_range(num_classes, world_size):
    owners = owner_of(torch.arange(num_classes), num_classes, world_size)
    for rank, (start, end) in enumerate(shard_ranges(num_classes, world_size)):
        assert bool((owners[start:end] == rank).all())


def test_examples():
    assert shard_ranges(11, 4) == [(0, 3), (3, 6), (6, 9), (9, 11)]
    assert shard_ranges(2, 3) == [(0, 1), (1, 2), (2, 2)]
    assert shard_ranges(5, 4) == [(0, 2), (2, 4), (4, 5), (5, 5)]
    assert owner_of(torch.tensor([0, 2, 3, 8, 9, 10]), 11, 4).tolist() == [0, 0, 1, 2, 3, 3]


def test_errors():
    with pytest.raises(ValueError, match=r"rank 4 out of range \[0, 4\)"):
        shard_range(10, 4, 4)
    with pytest.raises(ValueError, match="world_size must be >= 1, got 0"):
        shard_range(10, 0, 0)
    with pytest.raises(ValueError, match="num_classes must be >= 0, got -1"):
        shard_ranges(-1, 2)
    with pytest.raises(ValueError, match=r"class id 10 out of range \[0, 10\)"):
        owner_of(torch.tensor([3, 10]), 10, 2)
    with pytest.raises(ValueError, match=r"class id -2 out of range \[0, 10\)"):
        owner_of(torch.tensor([-2]), 10, 2)
