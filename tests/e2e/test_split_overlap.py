"""`recordio_tools split-overlap` (the paper's Eq. 5 experiment): sizes, ratios, image sharing, ground truth."""

import json
import os

import pytest

from recordio_tools import cli
from recordio_tools.manifest import load_manifest, read_dataset_info
from recordio_tools.overlap_split import SplitError, planted_counts, split_dataset, split_layout
from recordio_tools.overlaps import read_overlaps
from recordio_tools.recordio import RecordReader, class_id_of, unpack
from recordio_tools.files import atomic_directory
from recordio_tools.shards import DatasetWriter


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


@pytest.mark.parametrize("r, naive, dail", [(0.0, 10572, 1322), (0.2, 12684, 1586), (0.4, 14796, 1850),
                                           (0.6, 16908, 2114)])
def test_counts_of_the_papers_casia_split(r, naive, dail):
    """FaceFusion Table 4: CASIA-WebFace, N = 10572, k = 8 (naive and DAIL columns)."""
    counts = planted_counts(10572, 8, r)
    assert counts["classes_naive"] == naive and counts["classes_dail"] == dail
    assert counts["conflicts"] == naive - 10572 and counts["classes_true"] == 10572


@pytest.mark.parametrize("r, conflicts", [(0.0, 0), (0.1, 8574), (0.2, 17148), (0.3, 25722), (0.4, 34296),
                                          (0.5, 42870)])
def test_conflicts_of_the_papers_ms1m_split(r, conflicts):
    """FaceFusion Table 5: MS1M, N = 85742, k = 2, the 'Conflicts' column."""
    assert planted_counts(85742, 2, r)["conflicts"] == conflicts


@pytest.mark.parametrize("n", [10, 57, 120, 1000])
@pytest.mark.parametrize("k", [2, 3, 5, 8])
@pytest.mark.parametrize("r", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_layout_is_cyclic_eq5(n, k, r):
    layout = split_layout(n, k, r)
    members = [set(layout.members(i)) for i in range(k)]
    assert set().union(*members) == set(range(n))  # S is the union of the subsets
    b = int(n * r / k + 1e-9)
    for i in range(k):  # s_i and s_{i+1 mod k} share the block of b; non-neighbours nothing (k > 2)
        shared = members[i] & members[(i + 1) % k]
        assert len(shared) == (2 * b if k == 2 else b)
        if k > 3:
            assert not members[i] & members[(i + 2) % k]
    counts = [sum(p in m for m in members) for p in range(n)]
    assert max(counts) <= 2 and counts.count(2) == k * b
    sizes = sorted(layout.subset_sizes)
    assert sizes[-1] - sizes[0] <= 1


def test_bad_arguments():
    with pytest.raises(SplitError, match="at least 2 subsets"):
        split_layout(100, 1, 0.2)
    with pytest.raises(SplitError, match="must be in \\[0, 1\\]"):
        split_layout(100, 2, 1.5)
    with pytest.raises(SplitError, match="cannot make 8 subsets"):
        split_layout(5, 8, 0.2)


@pytest.mark.parametrize("k, r", [(2, 0.3), (3, 0.2), (4, 0.5)])
def test_dealt_images_no_image_in_two_subsets(source, tmp_path, k, r):
    out = tmp_path / "out"
    summary = split_dataset(str(source), str(out), k, r, share_images=False, seed=1, progress=False)
    names = [s["name"] for s in summary["subsets"]]
    subsets = [_subset_images(out, n) for n in names]
    origin = summary["origin"]
    block = int(120 * r / k + 1e-9)
    assert summary["block"] == block > 0
    for i in range(k):
        shared = set(origin[i]) & set(origin[(i + 1) % k])
        assert len(shared) == (2 * block if k == 2 else block)
    offset = 0
    for i in range(k):
        info, images = subsets[i]
        assert info.num_classes == summary["planted"]["subset_sizes"][i] and info.class_offset == offset
        offset += info.num_classes
        assert set(images) == set(range(info.num_classes))  # every class has images
        for local, payloads in images.items():  # and they are its identity's
            assert {p.split(b"-")[0] for p in payloads} == {f"id{origin[i][local]}".encode()}
    all_payloads = [p for _, images in subsets for ps in images.values() for p in ps]
    assert len(all_payloads) == len(set(all_payloads)) == summary["images_out"]
    assert summary["images_out"] == 4 * 120


def test_shared_images_are_copied(source, tmp_path):
    out = tmp_path / "out"
    summary = split_dataset(str(source), str(out), 2, 0.25, share_images=True, seed=2, progress=False)
    (_, a), (_, b) = (_subset_images(out, s["name"]) for s in summary["subsets"])
    origin = summary["origin"]
    where_b = {label: local for local, label in enumerate(origin[1])}
    shared = [(local, where_b[label]) for local, label in enumerate(origin[0]) if label in where_b]
    assert len(shared) == 2 * summary["block"] == summary["planted"]["conflicts"] > 0
    for la, lb in shared:
        assert a[la] == b[lb] and len(a[la]) == 4


def test_ground_truth_and_manifest(source, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["split-overlap", str(source), "--out", str(out), "-k", "3", "-r", "0.2"]) == 0
    printed = capsys.readouterr().err
    assert "planted: 24 conflicting identities; classes: naive 144, DAIL (largest subset) 48, true identities 120" \
        in printed
    summary = json.loads((out / "split.json").read_text())
    overlaps = read_overlaps(str(out))
    origin = summary["origin"]
    expected = {}
    for s, labels in enumerate(origin):
        for local, label in enumerate(labels):
            expected.setdefault(label, set()).add((f"src_s{s}", local))
    expected = sorted(sorted(v) for v in expected.values() if len(v) > 1)
    got = sorted(sorted((m.dataset, m.local_label) for m in g) for g in overlaps.groups)
    assert got == expected and len(got) == 3 * summary["block"] == summary["planted"]["conflicts"]
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
