"""recordio_tools.files: the one atomic writer (files, JSON, writers that take a path, folders)."""

import json
import os

import pytest

from recordio_tools import files


def test_json_text_and_parents(tmp_path):
    path = tmp_path / "a" / "b.json"
    files.write_json_atomic(path, {"x": 1}, indent=1, make_parents=True)
    assert path.read_text() == json.dumps({"x": 1}, indent=1) + "\n"
    files.write_json_atomic(path, {"x": 2}, indent=1, newline=False)
    assert path.read_text() == json.dumps({"x": 2}, indent=1)
    with pytest.raises(ValueError):
        files.write_json_atomic(path, {"x": float("nan")}, allow_nan=False)
    assert path.read_text() == json.dumps({"x": 2}, indent=1)  # the old file, untouched
    assert os.listdir(path.parent) == ["b.json"]


def test_atomic_path_keeps_the_suffix_and_cleans_up(tmp_path):
    with files.atomic_path(tmp_path / "model.onnx") as tmp:
        assert tmp.endswith(".onnx") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert (tmp_path / "model.onnx").read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with files.atomic_path(tmp_path / "model.onnx") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("writer failed")
    assert (tmp_path / "model.onnx").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_replace_directory_and_atomic_directory(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "f").write_text("new")
    (out / "f").write_text("old")
    (tmp_path / "leftover").mkdir()
    (tmp_path / "leftover" / "x").write_text("from a killed run")
    files.replace_directory(work, out, old=tmp_path / "leftover")
    assert (out / "f").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out"]
    with pytest.raises(KeyError):
        with files.atomic_directory(str(out), "synth") as tmp:
            (open(os.path.join(tmp, "g"), "w")).close()
            raise KeyError("stop")
    assert sorted(os.listdir(out)) == ["f"] and sorted(os.listdir(tmp_path)) == ["out"]
    with files.atomic_directory(str(out), "synth") as tmp:
        (open(os.path.join(tmp, "g"), "w")).close()
    assert sorted(os.listdir(out)) == sorted(["g", files.OUTPUT_MARKER]) and files.output_owner(str(out)) == "synth"


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    (tmp_path / f".out.tmp-{dead}").mkdir()
    (tmp_path / f".out.tmp-{os.getpid()}").mkdir()
    assert files.remove_stale_temporaries(str(tmp_path), "out") == [f".out.tmp-{dead}"]
    assert os.listdir(tmp_path) == [f".out.tmp-{os.getpid()}"]


def _marked(tmp_path, name="out"):
    out = tmp_path / name
    with files.atomic_directory(str(out), "convert") as tmp:
        os.makedirs(os.path.join(tmp, "sub"))
        (open(os.path.join(tmp, "sub", "f"), "w")).close()
    return out


def test_an_output_mark_is_bound_to_its_folder_and_to_what_it_lists(tmp_path):
    out = _marked(tmp_path)
    assert files.output_owner(str(out)) == "convert"
    os.rename(out, tmp_path / "moved")  # a rename keeps the folder: still ours
    assert files.output_owner(str(tmp_path / "moved")) == "convert"
    copy = tmp_path / "copy"  # a copy of the mark (or an unpacked archive holding it) is not
    copy.mkdir()
    (copy / "thesis.tex").write_text("mine")
    (copy / files.OUTPUT_MARKER).write_bytes((tmp_path / "moved" / files.OUTPUT_MARKER).read_bytes())
    owner, why = files.mark_status(str(copy))
    assert owner is None and "not written in this folder" in why
    (tmp_path / "moved" / "sub" / "notes.txt").write_text("mine")  # a file the command did not write
    owner, why = files.mark_status(str(tmp_path / "moved"))
    assert owner is None and "sub/notes.txt" in why


def test_a_mark_that_is_not_ours_is_no_mark(tmp_path):
    out = _marked(tmp_path)
    for body in (b"\xff", b"[" * 100000, b'{"command": 1}', b'{"command": "convert"}'):
        (out / files.OUTPUT_MARKER).write_bytes(body)
        assert files.output_owner(str(out)) is None
