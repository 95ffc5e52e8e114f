"""`recordio_tools inspect`: .rec files, dataset folders and training sets, as text and JSON."""

import json

import pytest

from cli_helpers import make_dataset, run_cli


def test_inspect_insightface_rec(mxnet_fixtures, capsys):
    rec = mxnet_fixtures / "insightface_ms1m_style" / "train.rec"
    code, out, err = run_cli(capsys, "inspect", rec)
    assert code == 0, err
    assert "layout        insightface" in out
    assert "records       37 (30 images, 6 identity records)" in out
    assert "images/class  5 / 5 / 5" in out and "labels        0..5" in out
    report = json.loads(run_cli(capsys, "inspect", rec, "--json")[1])
    assert (report["layout"], report["images"], report["classes"], report["label_range"]) == ("insightface", 30, 6,
                                                                                             [0, 5])
    assert report["images_per_class"] == {"min": 5, "median": 5.0, "max": 5}


def test_inspect_plain_rec_without_index(mxnet_fixtures, tmp_path, capsys):
    rec = tmp_path / "plain.rec"
    rec.write_bytes((mxnet_fixtures / "plain_dali_ready" / "train.rec").read_bytes())
    report = json.loads(run_cli(capsys, "inspect", rec, "--json")[1])
    assert (report["layout"], report["records"], report["classes"]) == ("unknown (no .idx)", 16, 4)


def test_inspect_dataset(tmp_path, capsys):
    make_dataset(tmp_path / "ds", "casia", [1, 4, 2], class_offset=5, num_shards=2)
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "ds")
    assert code == 0
    assert "classes       3 (offset 5, labels 5..7)" in out and "images/class  1 / 2 / 4" in out
    report = json.loads(run_cli(capsys, "inspect", tmp_path / "ds" / "dataset.json", "--json")[1])
    assert report["scanned"]["label_range"] == [5, 7] and report["num_images"] == 7
    assert "scanned" not in json.loads(run_cli(capsys, "inspect", tmp_path / "ds", "--json", "--no-scan")[1])


def test_inspect_training_set_table(tmp_path, capsys):
    make_dataset(tmp_path / "a", "alpha", [2, 2])
    make_dataset(tmp_path / "b", "beta", [1, 3, 1])
    assert run_cli(capsys, "build", "--out", tmp_path / "train", tmp_path / "a", tmp_path / "b")[0] == 0
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "train")
    assert code == 0
    assert "2 datasets, 5 classes, 9 images, 9 entries" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert rows["alpha"][:4] == ["alpha", "2", "4", "0"] and rows["beta"][:4] == ["beta", "3", "5", "2"]
    assert rows["beta"][-1] == "2..4"
    report = json.loads(run_cli(capsys, "inspect", tmp_path / "train" / "manifest.json", "--json")[1])
    assert [d["class_offset"] for d in report["datasets"]] == [0, 2]


def test_inspect_unknown_path_is_one_line(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("hello")
    code, _, err = run_cli(capsys, "inspect", tmp_path / "x.txt")
    assert code == 2 and "x.txt: expected a .rec file" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_missing_path_is_one_line(tmp_path, capsys, command):
    code, _, err = run_cli(capsys, command, tmp_path / "nothing")
    assert code == 2 and err == f"recordio_tools {command}: error: {tmp_path / 'nothing'}: not found\n"
