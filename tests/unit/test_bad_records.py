"""A corrupt record mid-run is named (shard, key) and stops the run or is skipped, never reaching
DALI's parser (a JPEG with an intact header and a zeroed body); a cut-short shard gets the advice
that helps. On the tiny synthetic set with one planted bad record."""

import io
import logging
import os
import shutil
import stat

import numpy as np
import pytest
from PIL import Image

from data_helpers import copy_with_a_bad_record, encode_jpeg, identity_image
from fftrain.data import DataError, build_loader
from fftrain.data.read_spec import prepare
from fftrain.data.records import RecordSet, ShardTruncated
from recordio_tools.images import jpeg_structure_problem
from recordio_tools.manifest import load_manifest

BATCH, SEED = 16, 0


@pytest.fixture(scope="module")
def clean_set(synth):
    return synth  # the shared tiny set (seed 0)


@pytest.fixture
def bad_set(clean_set, tmp_path):
    """A copy with the 4th record of epoch 0's first batch zeroed after its first 20 bytes."""
    return copy_with_a_bad_record(clean_set, tmp_path / "bad", SEED)


def _first_batch(manifest, backend, **kw):
    options = {"num_threads": 1} if backend == "dali" else {"num_workers": 0}
    with build_loader(manifest, backend=backend, shard_id=0, num_shards=1, device="cpu", batch_size=BATCH,
                      seed=SEED, **options, **kw) as ld:
        return next(iter(ld))


def test_structure_check_passes_real_jpegs_and_names_broken_ones():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    for options in ({}, {"progressive": True}, {"optimize": True}, {"quality": 5}, {"subsampling": 0}):
        out = io.BytesIO()
        image.save(out, "JPEG", **options)
        assert jpeg_structure_problem(out.getvalue()) is None, options
    good = encode_jpeg(identity_image(1))
    zeroed = good[:20] + bytes(len(good) - 20)
    assert jpeg_structure_problem(zeroed) == "JPEG header broken: byte 20 is 0x00 where a marker must start"
    assert "without an end marker (EOI)" in jpeg_structure_problem(good[:-200] + bytes(200))
    assert "cut short" in jpeg_structure_problem(good[:100]) or "length" in jpeg_structure_problem(good[:100])
    assert jpeg_structure_problem(b"\x89PNG\r\n\x1a\n....") is None  # not a JPEG: not judged here


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_zeroed_jpeg_stops_naming_shard_and_key(bad_set, backend):
    manifest, _, where = bad_set
    with pytest.raises(DataError) as caught:
        _first_batch(manifest, backend)
    assert str(caught.value).startswith(f"{where}: JPEG header broken: byte 20 is 0x00 where a marker must start; "
                                        "run `recordio_tools verify ")


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_skip_trains_on_another_image_of_the_batch(bad_set, clean_set, backend, caplog):
    manifest, key, where = bad_set
    with caplog.at_level(logging.WARNING, logger="fftrain.data"):
        skipped = _first_batch(prepare(manifest, num_shards=1, batch_size=BATCH, device="cpu", on_bad_record="skip"),
                               backend)
    clean = _first_batch(str(clean_set / "manifest.json"), backend)
    assert skipped.images.shape == clean.images.shape == (BATCH, 3, 112, 112)
    # position 3 now holds position 4's record (image and label); every other position is unchanged
    assert skipped.source[3] == clean.source[4] and np.allclose(skipped.images[3], clean.images[4])
    keep = [i for i in range(BATCH) if i != 3]
    assert np.array_equal(skipped.source[keep], clean.source[keep])
    assert [r.getMessage() for r in caplog.records if where in r.getMessage()] != []
    assert "skipping a bad record (data.bad_records=skip)" in caplog.text


def test_cut_short_shard_at_start_names_it_and_says_what_helps(clean_set, tmp_path):
    root = tmp_path / "cut"
    shutil.copytree(clean_set, root)
    rec = root / "ms1m" / "shard-00000.rec"
    os.truncate(rec, rec.stat().st_size // 2)
    with pytest.raises(ShardTruncated, match=rf"^{rec}: \d+ bytes, but its index .*shard-00000\.idx has a record at "
                                             rf"byte \d+; the shard is shorter than its index says .*run "
                                             rf"`recordio_tools verify {root / 'ms1m'}`, then re-import that dataset"):
        RecordSet(load_manifest(str(root / "manifest.json")))


def test_shard_cut_short_mid_run_says_what_helps(clean_set, tmp_path):
    root = tmp_path / "cut"
    shutil.copytree(clean_set, root)
    records = RecordSet(load_manifest(str(root / "manifest.json")), on_bad_record="skip")
    last = len(records) - 1
    shard, _, _ = records.locate(last)
    os.truncate(records.rec_paths[shard], os.path.getsize(records.rec_paths[shard]) - 100)
    with pytest.raises(ShardTruncated, match=r"now ends at byte \d+, inside this record .*then re-import that "
                                             r"dataset .*rebuild the training set") as caught:
        records.read_batch(np.array([0, last]))  # never skipped: every record after the cut is gone
    assert "rerun recordio_tools build" not in str(caught.value)


def test_fusion_report_files_get_the_umask_mode(tmp_path):
    from fftrain.fusion.report import write_report

    umask = os.umask(0o022)
    try:
        paths = write_report(str(tmp_path / "fusion"), {"merged": []}, np.array([0.5, 0.9], dtype=np.float32), t1=0.7)
    finally:
        os.umask(umask)
    for path in paths.values():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def test_demo_says_where_and_how_much_it_generates(tmp_path, capsys):
    from fftrain.demo import ensure_synthetic_data

    folder = tmp_path / "synth"
    manifest = ensure_synthetic_data(str(folder), "tiny", 0)
    out = capsys.readouterr().out
    assert f"generating the synthetic demo set ('tiny' preset, ~1.1K training images + 80 verification images) " \
           f"into {folder} (data.synth_dir)" in out
    assert f"MiB to {folder}" in out and os.path.exists(manifest)
    ensure_synthetic_data(str(folder), "tiny", 0)
    assert capsys.readouterr().out == ""  # already there: nothing said, nothing generated
