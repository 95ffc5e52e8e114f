"""`recordio_tools synth`: the tiny preset's layout, labels, ground truth, pairs file and determinism."""

import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from recordio_tools import cli
from recordio_tools.manifest import load_manifest, read_dataset_info
from recordio_tools.overlaps import read_overlaps
from recordio_tools.recordio import RecordReader, class_id_of, read_index, unpack
from recordio_tools.synthetic import (DATASET_NAMES, SynthConfig, allocate_ids, generate, make_plan, tiny_config)
from recordio_tools.verification_bin import read_verification_bin


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "tiny"
    assert cli.main(["synth", "--out", str(out), "--tiny", "--seed", "3", "--quiet"]) == 0
    return out


def _records(folder):
    info = read_dataset_info(str(folder))
    for shard in info.shards:
        with RecordReader(os.path.join(folder, shard.rec), os.path.join(folder, shard.idx)) as reader:
            for _, payload in reader.items():
                yield unpack(payload)


def test_counts_and_labels_per_dataset(tiny):
    config = tiny_config()
    offset = 0
    for name in DATASET_NAMES:
        info = read_dataset_info(str(tiny / name))
        assert info.name == name and info.num_classes == config.min_ids and info.class_offset == offset
        labels = np.array([class_id_of(h) for h, _ in _records(tiny / name)])
        assert len(labels) == info.num_images
        assert labels.min() >= offset and labels.max() < offset + info.num_classes
        per_class = np.bincount(labels - offset, minlength=info.num_classes)
        assert per_class.min() >= 2 and 4 <= per_class.mean() <= 8
        offset += info.num_classes


def test_images_are_112_rgb_jpegs(tiny):
    header, jpeg = next(_records(tiny / "celeba"))
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.size == (112, 112) and img.mode == "RGB"


def test_manifest_and_combined_index(tiny):
    manifest = load_manifest(str(tiny))
    assert manifest.dataset_names == list(DATASET_NAMES)
    assert manifest.num_classes == 180
    entries = read_index(manifest.index_path())
    assert len(entries) == manifest.num_images
    # the combined index addresses the .rec files concatenated: every record lands in its dataset's range
    recs = manifest.rec_paths()
    ends = np.cumsum([os.path.getsize(r) for r in recs])
    dataset_of_shard = manifest.dataset_of_shard()
    offsets = manifest.class_offsets()
    for _, offset in entries[::37]:
        shard = int(np.searchsorted(ends, offset, side="right"))
        local = offset - (ends[shard - 1] if shard else 0)
        with RecordReader(recs[shard]) as reader:
            header, _ = unpack(reader.read_at(int(local)))
        d = dataset_of_shard[shard]
        assert offsets[d] <= class_id_of(header) < offsets[d] + manifest.datasets[d].num_classes


def test_overlap_ground_truth(tiny):
    overlaps = read_overlaps(str(tiny))  # checks source class = offset + local, no class twice
    assert overlaps.groups
    shared = dict.fromkeys(DATASET_NAMES, 0)
    for group in overlaps.groups:
        names = [m.dataset for m in group]
        assert len(set(names)) == len(names) >= 2
        for m in group:
            shared[m.dataset] += 1
    # ~12% of 30 identities per dataset
    assert all(2 <= n <= 8 for n in shared.values()), shared
    assert len(overlaps.label_map()) == 180


def test_plan_groups_are_the_same_person_and_verification_is_held_out():
    plan = make_plan(tiny_config(seed=3))
    where = {}
    for d, ds in enumerate(plan.datasets):
        for local, person in enumerate(ds.persons):
            where.setdefault(person, []).append((d, local))
    assert sorted(sorted(g) for g in plan.groups) == sorted(sorted(v) for v in where.values() if len(v) > 1)
    training = set(where)
    assert not training & set(plan.verification_persons)
    assert {p for a, b, _ in plan.pairs for p in (a, b)} <= set(plan.verification_persons)
    assert all((a == b) == same for a, b, same in plan.pairs)


def test_verification_bin(tiny):
    images, issame = read_verification_bin(tiny / "verification.bin")
    assert len(issame) == 40 and len(images) == 80 and sum(issame) == 20
    assert Image.open(io.BytesIO(images[0])).size == (112, 112)


def test_summary_files(tiny):
    summary = json.loads((tiny / "synth.json").read_text())
    assert summary["config"]["seed"] == 3 and summary["num_classes"] == 180
    assert [d["name"] for d in summary["datasets"]] == list(DATASET_NAMES)
    assert (tiny / "README.md").exists()


def _digest(folder):
    """SHA-256 over every file's name and bytes, the output mark (it holds the folder's identity) left out."""
    from recordio_tools.files import OUTPUT_MARKER

    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for f in sorted(name for name in files if name != OUTPUT_MARKER):
            h.update(f.encode())
            with open(os.path.join(root, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    small = dict(ids=30, min_ids=5, images_per_id=3, verification_pairs=6, verification_ids=4, shards=2)
    generate(SynthConfig(seed=5, workers=1, **small), str(tmp_path / "a"), progress=False)
    generate(SynthConfig(seed=5, workers=2, **small), str(tmp_path / "b"), progress=False)
    generate(SynthConfig(seed=6, workers=1, **small), str(tmp_path / "c"), progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_allocation_follows_the_paper_with_a_floor():
    sizes = allocate_ids(600, 40, [94.0, 10.5, 10.2, 180.9, 85.7, 8.6])
    assert sum(sizes) == 600 and min(sizes) == 40
    assert sizes[3] > sizes[0] > sizes[4] > sizes[1]  # DeepGlint > Asian-Celeb > MS1M > the floored ones


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["synth", "--out", str(tmp_path / "x"), "--ids", "100", "--min-ids", "40"]) == 2
    assert "ids=100 must be at least 6 x min-ids=40" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_preset_entry_point_used_by_the_demo(tmp_path):
    from recordio_tools.synthetic import generate_synthetic_set, synthetic_manifest_path

    out = str(tmp_path / "s")
    generate_synthetic_set(out, preset="tiny", seed=1, progress=False, ids=12, min_ids=2, images_per_id=2,
                           verification_pairs=2, verification_ids=2)
    assert load_manifest(synthetic_manifest_path(out)).num_classes == 12
    with pytest.raises(ValueError, match="unknown synthetic preset 'huge'; available: \\['default', 'tiny'\\]"):
        generate_synthetic_set(out, preset="huge")
