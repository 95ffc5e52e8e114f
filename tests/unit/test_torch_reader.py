"""The DataLoader fallback gives the DALI pipeline's images, labels and order for the same records."""

import numpy as np
import pytest
import torch

from data_helpers import make_training_set, read_uid
from fftrain.data import DataError, build_loader
from fftrain.data.augment import step_params

BATCH = 8


@pytest.fixture(scope="module")
def tset(tmp_path_factory):
    return make_training_set(str(tmp_path_factory.mktemp("sets")))


def batches(manifest, backend, epochs=1, **kw):
    kw = {"shard_id": 0, "num_shards": 1, "device": "cpu", "batch_size": BATCH, "seed": 11, **kw}
    if backend == "dali":
        kw["num_threads"] = 1
    with build_loader(manifest, backend=backend, **kw) as ld:
        return [b for _ in range(epochs) for b in ld]


@pytest.mark.parametrize("workers", [0, 2])
def test_both_readers_give_the_same_batches(tset, workers):
    pytest.importorskip("nvidia.dali")
    kw = {"shard_id": 1, "num_shards": 2, "epoch": 3, "start_step": 1}
    dali = batches(tset.manifest, "dali", epochs=2, **kw)
    torch_ = batches(tset.manifest, "torch", epochs=2, num_workers=workers, **kw)
    assert len(dali) == len(torch_) > 0
    for a, b in zip(dali, torch_):
        assert (a.epoch, a.step) == (b.epoch, b.step)
        for name in ("source", "dataset", "fused"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        # same libjpeg-turbo decode, same flips; normalisation to within one float32 ulp
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-6)


def test_torch_reader_covers_the_epoch_once_across_ranks(tset):
    seen = [read_uid(img) for rank in range(2)
            for b in batches(tset.manifest, "torch", shard_id=rank, num_shards=2, num_workers=0) for img in b.images]
    assert len(seen) == len(set(seen)) == (len(tset.source) // (2 * BATCH)) * 2 * BATCH
    assert all(0 <= u < len(tset.source) for u in seen)


def test_strong_augmentation_agrees_in_distribution(tset):
    pytest.importorskip("nvidia.dali")
    dali = batches(tset.manifest, "dali", strong_augment=True)[:3]
    torch_ = batches(tset.manifest, "torch", strong_augment=True, num_workers=0)[:3]
    level = 1 / 127.5
    for step, (a, b) in enumerate(zip(dali, torch_)):
        assert torch.equal(a.source, b.source)
        params = step_params(11, 0, step, shard_id=0, num_shards=1, batch_size=BATCH, image_size=112, strong=True)
        for i in range(BATCH):
            diff = (a.images[i] - b.images[i]).abs()
            if (params.blur_size[i] == 112).all():  # colour only: the same matrix, rounding may differ by 1 level
                assert diff.max() <= level + 1e-5
            else:  # DALI's and PIL's bilinear resize differ by a few levels near edges
                assert diff.mean() < 6 * level


def test_corrupt_jpeg_in_a_worker_names_shard_and_key(tmp_path):
    tset = make_training_set(str(tmp_path), datasets=(("a", 2, 12, 1), ("b", 2, 12, 2)), corrupt=(1, 9))
    with pytest.raises(DataError, match=r"^\S+/b/shard-00001\.rec key 4 \(byte \d+\): JPEG header broken: .*"
                                        r"recordio_tools verify [^\n]*$"):  # the message, not the worker's traceback
        batches(tset.manifest, "torch", epochs=3, batch_size=4, num_workers=1)


def test_loader_from_config_and_position(tset):
    from fftrain.config import TrainConfig
    from fftrain.data import build_loader_from_config
    from fftrain.distributed import single_process_context

    cfg = TrainConfig()
    cfg.data.reader, cfg.data.batch_size, cfg.data.num_workers, cfg.model.channels_last = "torch", BATCH, 0, False
    steps = len(tset.source) // BATCH
    ld = build_loader_from_config(cfg, single_process_context(), manifest=tset.manifest, epoch=2, start_step=steps)
    assert len(ld) == steps and ld.position == (3, 0)  # the end of epoch 2 is the start of epoch 3
    first = next(iter(ld))
    assert (first.epoch, first.step) == (3, 0) and ld.position == (3, 1)
    ld.set_position(0, steps - 1)
    assert [(b.epoch, b.step) for b in ld] == [(0, steps - 1)] and ld.position == (1, 0)
    ld.close()
    with pytest.raises(ValueError, match=r"start step 99 outside the epoch's steps \[0, 15\)"):
        build_loader_from_config(cfg, single_process_context(), manifest=tset.manifest, start_step=99)


def test_training_data_streams_from_a_global_step(tset):
    from fftrain.config import TrainConfig
    from fftrain.data import TrainingData
    from fftrain.distributed import single_process_context

    cfg = TrainConfig()
    cfg.data.reader, cfg.data.batch_size, cfg.data.num_workers, cfg.model.channels_last = "torch", BATCH, 0, False
    data = TrainingData.from_config(cfg, single_process_context(), tset.manifest)
    steps = data.steps_per_epoch
    assert (data.num_source_classes, data.num_datasets, steps) == (13, 3, len(tset.source) // BATCH)
    stream = iter(data.make_loader(start_step=steps - 1))
    got = [next(stream) for _ in range(steps + 2)]  # runs on across two epoch ends
    assert [(b.epoch, b.step) for b in got] == [(0, steps - 1)] + [(1, s) for s in range(steps)] + [(2, 0)]
    data.labels.swap_label_map(np.zeros(13, dtype=np.int64))  # the trainer's swap reaches the running stream
    assert next(stream).fused.eq(0).all()
