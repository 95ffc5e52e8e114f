"""`recordio_tools split-overlap` (the paper's Eq. 5 experiment): sizes, ratios, image sharing, ground truth."""

import json
import os

import pytest

from recordio_tools import cli
from recordio_tools.manifest import load_manifest, read_dataset_info
from recordio_tools.overlap_split import SplitError, split_dataset, split_layout
from recordio_tools.overlaps import read_overlaps
from recordio_tools.recordio import RecordReader, class_id_of, unpack
from recordio_tools.shards import DatasetWriter, atomic_directory


def _source(folder, num_ids=120, per_id=4, offset=7, one_image_ids=()):
    """A dataset folder whose 'JPEGs' name their identity and image (the split never decodes them)."""
    with atomic_directory(str(folder)) as tmp:
        writer = DatasetWriter(tmp, "src", 2, class_offset=offset)
        for j in range(per_id):
            for label in range(num_ids):
                if j == 0 or label not in one_image_ids:
                    writer.add(label, f"id{label}-img{j}".encode())
        writer.finish(num_ids)
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return _source(tmp_path_factory.mktemp("split") / "src")


def _subset_images(out, name):
    """{local label: set of payloads} of one subset folder."""
    info = read_dataset_info(str(out / name))
    images = {}
    for shard in info.shards:
        with RecordReader(os.path.join(out, name, shard.rec), os.path.join(out, name, shard.idx)) as reader:
            for _, payload in reader.items():
                header, body = unpack(payload)
                local = class_id_of(header) - info.class_offset
                assert 0 <= local < info.num_classes
                images.setdefault(local, set()).add(body)
    return info, images


@pytest.mark.parametrize("n", [10, 57, 120, 1000])
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("r", [0.0, 0.1, 0.25, 0.5, 0.7])
def test_layout_is_the_largest_fitting_window(n, k, r):
    try:
        layout = split_layout(n, k, r)
    except SplitError:
        assert n < 2 * k  # only tiny datasets cannot be split
        return
    assert layout.used <= n and layout.step >= 1
    assert layout.shared == round(r * layout.size)
    assert abs(layout.shared / layout.size - r) <= 0.5 / layout.size + 1e-9
    bigger = layout.size + 1
    assert bigger + (k - 1) * (bigger - round(r * bigger)) > n or bigger - round(r * bigger) < 1
    assert [b - a for a, b in layout.windows] == [layout.size] * k


def test_bad_arguments():
    with pytest.raises(SplitError, match="at least 2 subsets"):
        split_layout(100, 1, 0.2)
    with pytest.raises(SplitError, match="must be in \\[0, 1\\)"):
        split_layout(100, 2, 1.0)


@pytest.mark.parametrize("k, r", [(2, 0.3), (3, 0.2), (4, 0.5)])
def test_dealt_images_no_image_in_two_subsets(source, tmp_path, k, r):
    out = tmp_path / "out"
    summary = split_dataset(str(source), str(out), k, r, share_images=False, seed=1, progress=False)
    names = [s["name"] for s in summary["subsets"]]
    subsets = [_subset_images(out, n) for n in names]
    origin = summary["origin"]
    for i in range(k - 1):
        shared = set(origin[i]) & set(origin[i + 1])
        assert len(shared) == summary["shared_consecutive"]
        assert abs(len(shared) / summary["subset_size"] - r) <= 0.5 / summary["subset_size"] + 1e-9
    for i in range(k):
        info, images = subsets[i]
        assert info.num_classes == summary["subset_size"] and info.class_offset == i * summary["subset_size"]
        assert set(images) == set(range(info.num_classes))  # every class has images
        for local, payloads in images.items():  # and they are its identity's
            assert {p.split(b"-")[0] for p in payloads} == {f"id{origin[i][local]}".encode()}
    all_payloads = [p for _, images in subsets for ps in images.values() for p in ps]
    assert len(all_payloads) == len(set(all_payloads)) == summary["images_out"]
    assert summary["images_out"] == 4 * summary["identities_used"]


def test_shared_images_are_copied(source, tmp_path):
    out = tmp_path / "out"
    summary = split_dataset(str(source), str(out), 2, 0.25, share_images=True, seed=2, progress=False)
    (_, a), (_, b) = (_subset_images(out, s["name"]) for s in summary["subsets"])
    origin = summary["origin"]
    where_b = {label: local for local, label in enumerate(origin[1])}
    shared = [(local, where_b[label]) for local, label in enumerate(origin[0]) if label in where_b]
    assert len(shared) == summary["shared_consecutive"] > 0
    for la, lb in shared:
        assert a[la] == b[lb] and len(a[la]) == 4


def test_ground_truth_and_manifest(source, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["split-overlap", str(source), "--out", str(out), "-k", "3", "-r", "0.2", "--quiet"]) == 0
    summary = json.loads((out / "split.json").read_text())
    overlaps = read_overlaps(str(out))
    origin = summary["origin"]
    expected = {}
    for s, labels in enumerate(origin):
        for local, label in enumerate(labels):
            expected.setdefault(label, set()).add((f"src_s{s}", local))
    expected = sorted(sorted(v) for v in expected.values() if len(v) > 1)
    got = sorted(sorted((m.dataset, m.local_label) for m in g) for g in overlaps.groups)
    assert got == expected and len(got) == 2 * summary["shared_consecutive"]
    manifest = load_manifest(str(out))
    assert manifest.dataset_names == ["src_s0", "src_s1", "src_s2"]
    assert manifest.num_images == summary["images_out"]


def test_same_seed_same_split(source, tmp_path):
    a = split_dataset(str(source), str(tmp_path / "a"), 3, 0.3, seed=4, progress=False)
    b = split_dataset(str(source), str(tmp_path / "b"), 3, 0.3, seed=4, progress=False)
    assert a["origin"] == b["origin"]
    assert (tmp_path / "a/src_s1/shard-00000.rec").read_bytes() == (tmp_path / "b/src_s1/shard-00000.rec").read_bytes()


def test_identity_with_too_few_images_is_an_error(tmp_path, capsys):
    src = _source(tmp_path / "src", num_ids=20, per_id=3, offset=0, one_image_ids=range(20))
    out = tmp_path / "out"
    assert cli.main(["split-overlap", str(src), "--out", str(out), "-k", "2", "-r", "0.5", "--quiet"]) == 2
    assert "got no image" in capsys.readouterr().err and not out.exists()
    # sharing images works for the same data
    assert cli.main(["split-overlap", str(src), "--out", str(out), "-k", "2", "-r", "0.5", "--share-images",
                     "--quiet"]) == 0
