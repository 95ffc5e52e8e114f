import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fftrain.data import sharding
from fftrain.data.augment import color_matrix, step_params


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), world=st.integers(1, 5), batch=st.integers(1, 9), seed=st.integers(0, 2**31),
       epoch=st.integers(0, 9))
def test_ranks_split_each_epoch_into_disjoint_full_batches(n, world, batch, seed, epoch):
    if n < world * batch:
        with pytest.raises(ValueError, match="do not fill one global batch"):
            sharding.steps_per_epoch(n, world, batch)
        return
    order = sharding.epoch_order(n, seed, epoch)
    steps = sharding.steps_per_epoch(n, world, batch)
    per_rank = [sharding.rank_batches(order, shard_id=r, num_shards=world, batch_size=batch) for r in range(world)]
    assert all(b.shape == (steps, batch) for b in per_rank)
    seen = np.concatenate([b.ravel() for b in per_rank])
    assert len(np.unique(seen)) == len(seen) == steps * world * batch
    assert n - len(seen) == sharding.dropped_per_epoch(n, world, batch) < world * batch
    assert set(seen) == set(order[:len(seen)])  # the dropped tail is the end of the permutation


def test_global_batch_does_not_depend_on_the_world_size():
    order = sharding.epoch_order(100, 3, 1)
    one = sharding.rank_batches(order, shard_id=0, num_shards=1, batch_size=12)
    four = [sharding.rank_batches(order, shard_id=r, num_shards=4, batch_size=3) for r in range(4)]
    for step in range(len(one)):
        assert np.array_equal(one[step], np.concatenate([f[step] for f in four]))
    assert np.array_equal(sharding.rank_batch(order, 2, shard_id=1, num_shards=4, batch_size=3), four[1][2])


def test_order_is_deterministic_per_seed_and_epoch():
    a = sharding.epoch_order(1000, 7, 0)
    assert np.array_equal(a, sharding.epoch_order(1000, 7, 0))
    assert not np.array_equal(a, sharding.epoch_order(1000, 7, 1))
    assert not np.array_equal(a, sharding.epoch_order(1000, 8, 0))
    assert sorted(a.tolist()) == list(range(1000))
    assert np.array_equal(sharding.epoch_order(5, 7, 3, shuffle=False), np.arange(5))


def test_resume_slices_the_same_batches():
    order = sharding.epoch_order(90, 1, 2)
    full = sharding.rank_batches(order, shard_id=1, num_shards=2, batch_size=4)
    assert np.array_equal(sharding.rank_batches(order, shard_id=1, num_shards=2, batch_size=4, start_step=5), full[5:])
    with pytest.raises(ValueError, match=r"start step 11 outside the epoch's steps \[0, 11\)"):
        sharding.rank_batches(order, shard_id=1, num_shards=2, batch_size=4, start_step=11)
    with pytest.raises(ValueError, match=r"shard_id must be in \[0, 2\), got 2"):
        sharding.rank_batches(order, shard_id=2, num_shards=2, batch_size=4)


def test_epoch_position_round_trip():
    assert sharding.epoch_position(0, 10) == (0, 0)
    assert sharding.epoch_position(25, 10) == (2, 5)
    assert all(sharding.global_step(*sharding.epoch_position(g, 7), 7) == g for g in range(50))


@pytest.mark.parametrize("n, world", [(10, 3), (1000, 8), (17, 1), (9, 9)])
def test_reader_shards_match_dali_and_have_enough_records(n, world):
    ranges = [sharding.reader_shard_range(r, world, n) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) == n // world
    batch = max(1, n // world // 3)
    assert min(sizes) >= sharding.steps_per_epoch(n, world, batch) * batch
    assert [sharding.reader_shard_for_epoch(0, world, e) for e in range(world + 1)] == list(range(world)) + [0]


def test_derived_seeds_fit_dali_and_differ():
    seeds = {sharding.derive_seed(5, e, r) for e in range(20) for r in range(4)}
    assert len(seeds) == 80 and all(0 <= s < 2**31 for s in seeds)
    assert sharding.derive_seed(5, 1, 2) == sharding.derive_seed(5, 1, 2)


def test_augmentation_parameters_do_not_depend_on_the_world_size():
    kw = dict(image_size=112, flip=True, strong=True)
    one = step_params(4, 1, 3, shard_id=0, num_shards=1, batch_size=64, **kw)
    halves = [step_params(4, 1, 3, shard_id=r, num_shards=2, batch_size=32, **kw) for r in range(2)]
    assert np.array_equal(one.mirror, np.concatenate([h.mirror for h in halves]))
    assert np.array_equal(one.color, np.concatenate([h.color for h in halves]))
    assert 10 < one.mirror.sum() < 54
    assert (one.blur_size < 112).any() and (one.blur_size == 112).any()
    plain = step_params(4, 1, 3, shard_id=0, num_shards=1, batch_size=64, image_size=112, flip=False)
    assert not plain.mirror.any() and (plain.blur_size == 112).all() and (plain.color == np.eye(3)).all()


def test_color_matrix_identity_and_grey():
    assert np.allclose(color_matrix(0.0, 1.0, 1.0), np.eye(3), atol=1e-6)
    grey = color_matrix(0.0, 0.0, 1.0)
    assert np.allclose(grey, grey[0:1], atol=1e-6)  # every channel gets the same luma
    assert np.isclose(grey[0].sum(), 1.0, atol=1e-5)
