"""relabel --in-place rewrites only shards the training set owns; a set fused in place passes verify/inspect."""

import hashlib
import json

from cli_helpers import make_dataset, read_dataset, run_cli


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != ".relabel.lock"}  # the (empty) lock relabel takes


def _two_sets_sharing_datasets(tmp_path, capsys):
    """data/a, data/b (offsets that fit, so build references them in place) used by data/train1 and data/train2."""
    data = tmp_path / "data"
    make_dataset(data / "a", "a", [2, 2])
    make_dataset(data / "b", "b", [2, 2], class_offset=2, seed=1)
    for name in ("train1", "train2"):
        assert run_cli(capsys, "build", "--out", data / name, data / "a", data / "b")[0] == 0
    label_map = tmp_path / "label_map.json"
    label_map.write_text(json.dumps({"format": "fftrain-label-map", "num_classes_fused": 3, "label_map": [0, 1, 0, 2],
                                     "datasets": [{"name": "a", "num_classes": 2}, {"name": "b", "num_classes": 2}]}))
    return data, label_map


def test_in_place_refuses_referenced_shards_naming_the_other_sets(tmp_path, capsys):
    data, label_map = _two_sets_sharing_datasets(tmp_path, capsys)
    before = {name: _digest(data / name) for name in ("a", "b", "train1")}
    code, _, err = run_cli(capsys, "relabel", data / "train1", "--label-map", label_map, "--in-place")
    assert code == 2 and err.count("\n") == 1, err
    assert f"in {data / 'a'}, {data / 'b'} (also used by {data / 'train2' / 'manifest.json'})" in err
    assert "--copy-referenced" in err
    assert {name: _digest(data / name) for name in ("a", "b", "train1")} == before
    assert run_cli(capsys, "verify", data / "train2")[0] == 0


def test_copy_referenced_then_fused_set_passes_verify_and_inspect(tmp_path, capsys):
    data, label_map = _two_sets_sharing_datasets(tmp_path, capsys)
    before = {name: _digest(data / name) for name in ("a", "b")}
    code, out, err = run_cli(capsys, "relabel", data / "train1", "--label-map", label_map, "--in-place",
                             "--copy-referenced")
    assert code == 0, err
    assert {name: _digest(data / name) for name in ("a", "b")} == before  # the sources are untouched
    assert sorted(label for label, _ in read_dataset(data / "train1" / "b")) == [0, 0, 2, 2]
    assert run_cli(capsys, "verify", data / "train2")[0] == 0
    code, out, err = run_cli(capsys, "verify", data / "train1")  # fused ids are valid labels of a fused set
    assert code == 0, out + err
    code, out, err = run_cli(capsys, "inspect", data / "train1")
    assert code == 0 and "fused in place: 3 fused classes" in out and "warning" not in out, out
    # fusing again: the same map is a no-op, another map an error
    code, out, _ = run_cli(capsys, "relabel", data / "train1", "--label-map", label_map, "--in-place")
    assert code == 0 and "nothing to do" in out
    other = tmp_path / "other.json"
    other.write_text(label_map.read_text().replace("[0, 1, 0, 2]", "[0, 1, 2, 0]"))
    code, _, err = run_cli(capsys, "relabel", data / "train1", "--label-map", other, "--in-place")
    assert code == 2 and "already fused" in err


def test_the_trainer_reads_a_set_fused_in_place_as_its_fused_classes(tmp_path, capsys):
    import torch

    from fftrain.data.read_spec import prepare

    data, label_map = _two_sets_sharing_datasets(tmp_path, capsys)
    assert run_cli(capsys, "relabel", data / "train1", "--label-map", label_map, "--in-place",
                   "--copy-referenced")[0] == 0
    prepared = prepare(str(data / "train1"), num_shards=1, batch_size=2, device=torch.device("cpu"))
    assert prepared.labels.num_source_classes == 3 and prepared.manifest.dataset_names == ["fused"]
    assert len(prepared.records) == 8
