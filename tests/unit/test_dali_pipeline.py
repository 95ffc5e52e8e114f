"""DALI pipeline (CPU-only mode) over small training sets built here and over the MXNet fixtures."""

import os
import shutil

import numpy as np
import pytest
import torch

from data_helpers import fixture_manifest, make_training_set, read_uid, reference
from fftrain.data import DataError, build_loader
from fftrain.data.augment import step_params
from fftrain.data.label_space import LabelSpace, class_ids_from_labels
from fftrain.data.records import RecordSet
from fftrain.data.sharding import steps_per_epoch
from recordio_tools.insightface import detect_layout
from recordio_tools.manifest import load_manifest
from recordio_tools.recordio import RecordReader, class_label, format_index, unpack
from recordio_tools.recordio import class_ids_from_labels as np_class_ids

pytest.importorskip("nvidia.dali")

BATCH = 8


@pytest.fixture(scope="module")
def tset(tmp_path_factory):
    return make_training_set(str(tmp_path_factory.mktemp("sets")))


def loader(manifest, **kw):
    kw = {"backend": "dali", "shard_id": 0, "num_shards": 1, "device": "cpu", "batch_size": BATCH, "seed": 3,
          "num_threads": 1, **kw}
    return build_loader(manifest, **kw)


def epoch(ld):
    """[(epoch, step, uids, source, dataset, fused, images)] of one epoch."""
    return [(b.epoch, b.step, [read_uid(i) for i in b.images], b.source.tolist(), b.dataset.tolist(),
             b.fused.tolist(), b.images) for b in ld]


def check_labels(rows, tset):
    for *_, uids, source, dataset, fused, _ in rows:
        assert source == [tset.source[u] for u in uids]
        assert dataset == [tset.dataset[u] for u in uids]
        assert fused == source  # identity label map before fusion


@pytest.mark.parametrize("order", ["global", "reader"])
@pytest.mark.parametrize("world", [1, 2])
def test_epoch_sees_every_image_once_across_ranks(tset, order, world):
    total = len(tset.source)
    rows = []
    for rank in range(world):
        with loader(tset.manifest, shard_id=rank, num_shards=world, order=order, initial_fill=16) as ld:
            assert len(ld) == steps_per_epoch(total, world, BATCH)
            rank_rows = epoch(ld)
            assert [r[1] for r in rank_rows] == list(range(len(ld))) and ld.position == (1, 0)
            rows += rank_rows
    seen = [u for r in rows for u in r[2]]
    assert len(seen) == len(set(seen)) == steps_per_epoch(total, world, BATCH) * world * BATCH
    assert set(seen) <= set(tset.source)
    check_labels(rows, tset)
    if order == "global":  # batches mix the datasets
        assert max(len(set(r[4])) for r in rows) >= 2


def test_decoded_pixels_equal_a_pil_reference(tset):
    # DALI's CPU decoder and Pillow both use libjpeg-turbo: identical uint8 pixels; the [-1, 1]
    # normalisation differs by at most one float32 ulp.
    with loader(tset.manifest, flip=False) as ld:
        for b in list(ld)[:4]:
            for image in b.images:
                np.testing.assert_allclose(image.numpy(), reference(tset.jpeg[read_uid(image)]), rtol=0, atol=1e-6)
    with loader(tset.manifest, flip=True) as ld:
        b = next(iter(ld))
        mirror = step_params(3, 0, 0, shard_id=0, num_shards=1, batch_size=BATCH, image_size=112).mirror
        for image, flip in zip(b.images, mirror):
            np.testing.assert_allclose(image.numpy(), reference(tset.jpeg[read_uid(image)], bool(flip)), atol=1e-6)


@pytest.mark.parametrize("order", ["global", "reader"])
def test_order_is_deterministic_per_seed_and_differs_per_epoch(tset, order):
    def uids(seed, epochs=2):
        with loader(tset.manifest, seed=seed, order=order, initial_fill=16) as ld:
            return [[r[2] for r in epoch(ld)] for _ in range(epochs)]

    first = uids(3)
    assert first == uids(3)
    assert first[0] != first[1]
    assert first[0] != uids(4, 1)[0]


@pytest.mark.parametrize("order", ["global", "reader"])
def test_resume_continues_with_the_same_batches(tset, order):
    with loader(tset.manifest, order=order, initial_fill=16) as ld:
        steps = len(ld)
        epoch(ld)
        full = epoch(ld) + epoch(ld)  # epochs 1 and 2
    with loader(tset.manifest, order=order, initial_fill=16, epoch=1, start_step=steps - 2) as ld:
        resumed = epoch(ld) + epoch(ld)
    assert [r[:2] for r in resumed] == [(1, steps - 2), (1, steps - 1)] + [(2, s) for s in range(steps)]
    for got, want in zip(resumed, full[steps - 2:]):
        assert got[:6] == want[:6]
        assert torch.equal(got[6], want[6])


def test_label_map_swap_takes_effect_on_the_next_batch(tset):
    with loader(tset.manifest) as ld:
        it = iter(ld)
        first = next(it)
        assert torch.equal(first.fused, first.source)
        merged = np.arange(ld.labels.num_source_classes)
        merged[merged >= 4] -= 4  # dataset b's classes 4..9 onto 0..5, c's 10..12 onto 6..8
        ld.labels.swap_label_map(merged)
        second = next(it)
        assert torch.equal(second.fused, torch.as_tensor(merged)[second.source])
        assert ld.labels.num_fused_classes == 9


def test_label_tables_reject_bad_maps():
    tables = LabelSpace(np.array([0, 0, 1, 2]))
    with pytest.raises(ValueError, match="label_map has 3 entries, the training set has 4 source classes"):
        tables.swap_label_map([0, 1, 2])
    with pytest.raises(ValueError, match="not contiguous: 1 unused below the maximum 2"):
        tables.swap_label_map([0, 0, 2, 2])
    with pytest.raises(ValueError, match="1-d integer array"):
        tables.swap_label_map(np.zeros(4, dtype=np.float32))


def test_channels_last_and_strong_augmentation(tset):
    with loader(tset.manifest, channels_last=True, strong_augment=True) as ld:
        b = next(iter(ld))
    assert b.images.is_contiguous(memory_format=torch.channels_last) and b.images.shape == (BATCH, 3, 112, 112)
    assert b.images.min() >= -1 and b.images.max() <= 1
    params = step_params(3, 0, 0, shard_id=0, num_shards=1, batch_size=BATCH, image_size=112, strong=True)
    changed = [not np.allclose(img.numpy(), reference(tset.jpeg[read_uid(img)], bool(m)), atol=1e-6)
               for img, m in zip(b.images, params.mirror)]
    touched = [(s < 112).any() or not np.array_equal(c, np.eye(3)) for s, c in zip(params.blur_size, params.color)]
    assert changed == touched


def test_exact_class_ids_beyond_float32(tmp_path):
    # A float32 holds integers exactly only up to 2^24: the flag-2 label (float + residual) keeps them.
    ids = np.array([2**24 + 1, 2**31 + 7, 2**40 - 3, 5], dtype=np.int64)
    labels = np.stack([class_label(int(c)) for c in ids])
    assert np.array_equal(np_class_ids(labels), ids)
    assert torch.equal(class_ids_from_labels(torch.from_numpy(labels)), torch.from_numpy(ids))
    assert torch.equal(class_ids_from_labels(torch.tensor([[3.0], [7.0]])), torch.tensor([3, 7]))
    # ... through the shards, both for the Python record reader and for fn.readers.mxnet
    from nvidia.dali import Pipeline, fn

    from recordio_tools.manifest import write_manifest
    from recordio_tools.files import atomic_directory
    from recordio_tools.shards import DatasetWriter
    from data_helpers import encode_jpeg, identity_image

    with atomic_directory(str(tmp_path / "big")) as tmp:
        writer = DatasetWriter(tmp, "big", 1)
        for c in ids:
            writer.add(int(c), encode_jpeg(identity_image(int(c) % 97)))
        info = writer.finish(2**40)
    manifest = write_manifest(str(tmp_path / "train"), [info], [str(tmp_path / "big")])
    records = RecordSet(manifest)
    assert [records.read(k)[1] for k in range(4)] == ids.tolist()
    pipe = Pipeline(batch_size=4, num_threads=1, device_id=None)
    with pipe:
        _, raw = fn.readers.mxnet(path=records.rec_paths, index_path=[records.index_path])
        pipe.set_outputs(raw)
    pipe.build()
    (raw,) = pipe.run()
    assert np.array_equal(np_class_ids(np.asarray(raw.as_tensor())), ids)


@pytest.fixture(scope="module")
def synthetic_six(tmp_path_factory):
    synthetic = pytest.importorskip("recordio_tools.synthetic")
    out = str(tmp_path_factory.mktemp("synth") / "six")
    config = synthetic.tiny_config(ids=60, min_ids=10, images_per_id=4.0, verification_pairs=4, verification_ids=10,
                                   workers=1)
    synthetic.generate(config, out, progress=False)
    return os.path.join(out, "manifest.json")


def test_synthetic_six_dataset_set_across_two_ranks(synthetic_six):
    from fftrain.data.sharding import epoch_order

    records = RecordSet(load_manifest(synthetic_six))
    truth = np.array([records.read(k)[1] for k in range(len(records))])
    class_dataset = load_manifest(synthetic_six).class_dataset()
    batch, seen = 32, []
    for rank in range(2):
        with loader(synthetic_six, shard_id=rank, num_shards=2, batch_size=batch, seed=5) as ld:
            for b in ld:
                assert torch.equal(b.dataset, torch.from_numpy(class_dataset)[b.source])
                seen += b.source.tolist()
    read = steps_per_epoch(len(records), 2, batch) * 2 * batch
    # the epoch reads the first `read` records of its permutation: the same labels, each record once
    assert sorted(seen) == sorted(truth[epoch_order(len(records), 5, 0)[:read]].tolist())
    assert set(class_dataset[seen]) == set(range(6))


# ---------------------------------------------------------------------------------------------
# MXNet fixtures


def _fixture_records(rec):
    with RecordReader(rec) as r:
        return {key: (unpack(r.read(key))) for key in r.keys}


@pytest.mark.parametrize("order", ["global", "reader"])
def test_mxnet_plain_fixture(mxnet_fixtures, tmp_path, order):
    folder = mxnet_fixtures / "plain_dali_ready"
    manifest = fixture_manifest(str(tmp_path), str(folder / "train.rec"), str(folder / "train.idx"), "plain", 4, 16)
    fixture = _fixture_records(str(folder / "train.rec"))
    records = {k: (int(h.label), reference(jpeg)) for k, (h, jpeg) in fixture.items()}
    seen = []
    for rank in range(2):
        with loader(manifest, shard_id=rank, num_shards=2, batch_size=4, flip=False, order=order, initial_fill=4) as ld:
            for b in ld:
                for image, source in zip(b.images.numpy(), b.source.tolist()):
                    key = next(k for k, (_, ref) in records.items() if np.allclose(image, ref, atol=1e-6))
                    assert source == records[key][0]
                    seen.append(key)
    assert sorted(seen) == list(range(16))


def test_mxnet_insightface_fixture_through_an_index_of_image_keys(mxnet_fixtures, tmp_path):
    rec = mxnet_fixtures / "insightface_ms1m_style" / "train.rec"
    folder = tmp_path / "ms1m"
    folder.mkdir()
    os.symlink(rec, folder / "train.rec")
    with RecordReader(str(rec)) as r:
        layout = detect_layout(r)
        (folder / "images.idx").write_text(format_index([(k, r.index[k]) for k in layout.image_keys]))
        truth = {k: (int(unpack(r.read(k))[0].label), reference(unpack(r.read(k))[1])) for k in layout.image_keys}
    manifest = fixture_manifest(str(tmp_path / "train"), str(folder / "train.rec"), str(folder / "images.idx"),
                                "ms1m", 6, 30)
    for order in ("global", "reader"):
        seen = []
        with loader(manifest, batch_size=5, flip=False, order=order, initial_fill=5) as ld:
            for b in ld:
                for image, source in zip(b.images.numpy(), b.source.tolist()):
                    key = next(k for k, (_, ref) in truth.items() if np.allclose(image, ref, atol=1e-6))
                    assert source == truth[key][0]
                    seen.append(key)
        assert sorted(seen) == list(range(1, 31))


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors before the first step, or naming the record mid-run


def test_missing_shard_is_named(tmp_path):
    tset = make_training_set(str(tmp_path), datasets=(("a", 2, 10, 2), ("b", 2, 10, 1)))
    os.remove(os.path.join(tset.folders[1], "shard-00000.rec"))
    with pytest.raises(ValueError, match=r"shard file .*b/shard-00000\.rec is missing"):
        loader(tset.manifest)


def test_shard_index_that_does_not_match_its_rec_is_named(tmp_path):
    tset = make_training_set(str(tmp_path), datasets=(("a", 2, 10, 2), ("b", 2, 10, 1)))
    idx = os.path.join(tset.folders[0], "shard-00001.idx")
    lines = [line.split("\t") for line in open(idx).read().splitlines()]
    open(idx, "w").write("".join(f"{k}\t{int(o) + 4}\n" for k, o in lines))
    with pytest.raises(DataError, match=r"a/shard-00001\.idx: no record at byte 0 of .*a/shard-00001\.rec"):
        loader(tset.manifest)


def test_rec_that_changed_after_build_is_named(tmp_path):
    tset = make_training_set(str(tmp_path), datasets=(("a", 2, 10, 1), ("b", 2, 10, 1)))
    rec = os.path.join(tset.folders[1], "shard-00000.rec")
    shutil.copyfile(os.path.join(tset.folders[0], "shard-00000.rec"), rec)  # other records at other offsets
    with pytest.raises(DataError, match=r"b/shard-00000\.rec key 0 \(byte 0\): label 1 outside dataset 'b'"):
        loader(tset.manifest)
    shutil.copyfile(os.path.join(tset.folders[0], "shard-00000.idx"), rec[:-4] + ".idx")  # .idx follows the .rec
    with pytest.raises(DataError, match=r"b/shard-00000\.idx: no record at byte \d+ of .*b/shard-00000\.rec, "
                                        r"where the combined index .*train\.idx has one"):
        loader(tset.manifest)


def test_labels_outside_the_class_range_are_named_at_start(tmp_path):
    tset = make_training_set(str(tmp_path), datasets=(("a", 3, 9, 1), ("b", 4, 12, 2)), classes_short_by=1)
    with pytest.raises(DataError, match=r"b/shard-00000\.rec key 0 \(byte 0\): label 6 outside dataset 'b''s "
                                        r"source classes \[3, 6\).*recordio_tools verify"):
        loader(tset.manifest)


@pytest.mark.parametrize("order", ["global", "reader"])
def test_corrupt_jpeg_mid_run_names_shard_and_key(tmp_path, order):
    tset = make_training_set(str(tmp_path), datasets=(("a", 2, 12, 1), ("b", 2, 12, 2)), corrupt=(1, 9))
    # image 9 of b went to shard 1 (round robin) as its key 4; the global order checks each JPEG's
    # structure before DALI sees it, fn.readers.mxnet reads the records itself
    problem = r"JPEG header broken: .*" if order == "global" else r"the JPEG does not decode \(DALI: .*\)"
    with pytest.raises(DataError, match=rf"b/shard-00001\.rec key 4 \(byte \d+\): {problem}; "
                                        r"run `recordio_tools verify .*manifest\.json`"):
        with loader(tset.manifest, order=order, batch_size=4, initial_fill=4) as ld:
            for _ in range(3):
                list(ld)


def test_unknown_backend_and_order_list_the_choices(tset):
    with pytest.raises(ValueError, match=r"unknown data backend 'mx'; available: \['dali', 'torch'\]"):
        loader(tset.manifest, backend="mx")
    with pytest.raises(ValueError, match=r"unknown DALI order 'random'; available: \['global', 'reader'\]"):
        loader(tset.manifest, order="random")


@pytest.mark.parametrize("backend, order", [("dali", "global"), ("dali", "reader"), ("torch", "global")])
def test_label_outside_the_class_range_mid_run_is_named(tmp_path, backend, order):
    tset = make_training_set(str(tmp_path), datasets=(("a", 3, 9, 1), ("b", 4, 12, 2)), classes_short_by=1)
    kw = {"order": order, "initial_fill": 4} if backend == "dali" else {"num_workers": 0}
    # validate=False skips the start-up checks, so the bad labels (b's local label 3) are met while reading
    bad = r"b/shard-0000[01]\.rec key \d+ \(byte \d+\): label 6 outside .*source classes"
    with pytest.raises(DataError, match=bad):
        with build_loader(tset.manifest, backend=backend, shard_id=0, num_shards=1, device="cpu", batch_size=4, seed=3,
                          validate=False, **kw) as ld:
            for _ in range(3):
                list(ld)


@pytest.mark.gpu
@pytest.mark.parametrize("order", ["global", "reader"])
def test_mixed_gpu_decode_matches_the_cpu_pipeline(tset, order):
    # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a few grey levels.
    with loader(tset.manifest, order=order, initial_fill=16) as ld:
        cpu = list(ld)
    with loader(tset.manifest, order=order, initial_fill=16, device="cuda:0") as ld:
        gpu = list(ld)
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        assert b.images.is_cuda and b.fused.is_cuda
        assert torch.equal(a.source, b.source.cpu()) and torch.equal(a.dataset, b.dataset.cpu())
        diff = (a.images - b.images.cpu()).abs()
        assert diff.mean() < 1.5 / 127.5 and diff.max() < 32 / 127.5


def test_global_order_reads_records_ahead_off_the_training_thread(tset, monkeypatch):
    import threading

    readers = []
    original = RecordSet.read_batch

    def recording(self, keys):
        readers.append(threading.current_thread().name)
        return original(self, keys)

    monkeypatch.setattr(RecordSet, "read_batch", recording)
    with loader(tset.manifest) as ld:
        batches = list(ld)
    assert batches and readers and all(name.startswith("fftrain-records") for name in readers)
    assert not any(t.name.startswith("fftrain-records") for t in threading.enumerate())  # closed with the loader
