"""--out never destroys what the command did not write; killed runs leave nothing that lasts."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cli_helpers import make_dataset, make_tree, run_cli
from recordio_tools.files import OUTPUT_MARKER
from watchdog import children_of, is_alive
from repo_paths import REPO



def _snapshot(folder):
    """Every file under `folder` with its bytes."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def _refused(capsys, folder, *argv, match):
    before = _snapshot(folder)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert err.count("\n") == 1 and match in err, err
    assert _snapshot(folder) == before


def test_convert_into_its_input_tree_is_refused(tmp_path, capsys):
    make_tree(tmp_path / "imgs", {"alice": 2, "bob": 1})
    _refused(capsys, tmp_path, "convert", tmp_path / "imgs", "--out", tmp_path / "imgs", match="is the input")
    _refused(capsys, tmp_path, "convert", tmp_path / "imgs", "--out", tmp_path / "imgs" / "alice",
             match="lies inside the input")
    _refused(capsys, tmp_path, "convert", tmp_path / "imgs" / "alice", "--out", tmp_path / "imgs",
             match="holds the input")


def test_import_into_the_folder_of_its_rec_is_refused(tmp_path, capsys):
    make_dataset(tmp_path / "ds", "ds", [2, 1])
    for ext in ("rec", "idx"):  # an insightface-style folder: train.rec + train.idx among other files
        shutil.copyfile(tmp_path / "ds" / f"shard-00000.{ext}", tmp_path / "ds" / f"train.{ext}")
    rec = tmp_path / "ds" / "train.rec"
    _refused(capsys, tmp_path, "import", rec, "--out", tmp_path / "ds", match="holds the input")
    _refused(capsys, tmp_path, "import", tmp_path / "ds", "--out", tmp_path / "ds", match="is the input")


def test_split_overlap_into_the_folder_of_its_input_is_refused(tmp_path, capsys):
    make_dataset(tmp_path / "synth" / "ms1m", "ms1m", [3] * 6)
    _refused(capsys, tmp_path, "split-overlap", tmp_path / "synth" / "ms1m", "--out", tmp_path / "synth",
             match="holds the input")


@pytest.mark.parametrize("command", ["convert", "build"])
def test_folder_of_unrelated_files_is_refused_unless_overwrite(tmp_path, capsys, command):
    make_tree(tmp_path / "imgs", {"alice": 2, "bob": 1})
    make_dataset(tmp_path / "a", "a", [1, 2])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    source = tmp_path / ("imgs" if command == "convert" else "a")
    _refused(capsys, tmp_path, command, *((source, "--out", tmp_path / "mine") if command == "convert"
                                        else ("--out", tmp_path / "mine", source)),
             match="is not an output of recordio_tools; give a new --out folder, or pass --overwrite")
    args = (source, "--out", tmp_path / "mine") if command == "convert" else ("--out", tmp_path / "mine", source)
    code, _, err = run_cli(capsys, command, *args, "--overwrite")
    assert code == 0, err
    assert not (tmp_path / "mine" / "thesis.tex").exists() and (tmp_path / "mine" / OUTPUT_MARKER).exists()


def test_an_earlier_output_of_the_same_command_is_replaced_another_commands_is_not(tmp_path, capsys):
    make_tree(tmp_path / "imgs", {"alice": 2, "bob": 1})
    make_dataset(tmp_path / "a", "a", [1, 2])
    assert run_cli(capsys, "convert", tmp_path / "imgs", "--out", tmp_path / "out")[0] == 0
    assert run_cli(capsys, "convert", tmp_path / "imgs", "--out", tmp_path / "out", "--shards", "2")[0] == 0
    assert (tmp_path / "out" / "shard-00001.rec").exists()
    _refused(capsys, tmp_path, "import", tmp_path / "a" / "shard-00000.rec", "--out", tmp_path / "out",
             match="is an output of `recordio_tools convert`")


def test_stale_temporaries_of_dead_processes_are_removed_by_the_next_run(tmp_path, capsys):
    make_tree(tmp_path / "imgs", {"alice": 2})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.tmp-{dead.pid}"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "shard-00000.rec").write_bytes(b"x" * 1000)
    (tmp_path / f".out.old-{dead.pid}").mkdir()
    live = tmp_path / f".out.tmp-{os.getppid()}"  # a concurrent run still at work: left alone
    live.mkdir()
    assert run_cli(capsys, "convert", tmp_path / "imgs", "--out", tmp_path / "out")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "imgs", "out"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_convert_workers_exit_when_the_parent_is_killed(tmp_path):
    make_tree(tmp_path / "imgs", {f"id{i}": 40 for i in range(20)}, size=(400, 400))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "recordio_tools", "convert", str(tmp_path / "imgs"), "--out",
                             str(tmp_path / "out"), "--workers", "2"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(workers := children_of(proc.pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(workers) >= 2, "the workers never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while any(map(is_alive, workers)) and time.time() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in workers if is_alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "a convert worker outlived its parent"


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("command", ["convert", "import", "build"])
def test_disk_full_is_one_line_and_keeps_the_earlier_output(tmp_path, capsys, small_disk, command):
    make_tree(tmp_path / "small", {"alice": 1})
    make_tree(tmp_path / "big", {f"id{i}": 4 for i in range(6)}, size=(200, 200))
    out = small_disk / "out"
    if command == "convert":
        first, second = (tmp_path / "small", "--out", out), (tmp_path / "big", "--out", out)
    else:
        for name in ("small", "big"):
            assert run_cli(capsys, "convert", tmp_path / name, "--out", tmp_path / f"{name}_ds")[0] == 0
        if command == "import":
            first = (tmp_path / "small_ds" / "shard-00000.rec", "--out", out)
            second = (tmp_path / "big_ds" / "shard-00000.rec", "--out", out)
        else:  # big_ds needs a relabelled copy at offset 1, which fills the disk
            first = ("--out", out, tmp_path / "small_ds")
            second = ("--out", out, tmp_path / "small_ds", tmp_path / "big_ds")
    assert run_cli(capsys, command, *first)[0] == 0
    before = _snapshot(out)
    code, _, err = run_cli(capsys, command, *second)
    assert code == 2 and err == f"recordio_tools {command}: error: no space left on {out}; nothing was written " \
                                "there (partial output removed)\n", err
    assert sorted(p.name for p in small_disk.iterdir()) == ["out"]  # no partial or temporary folder
    assert _snapshot(out) == before


def test_a_copied_output_mark_does_not_make_a_folder_replaceable(tmp_path, capsys):
    make_tree(tmp_path / "imgs", {"alice": 2, "bob": 1})
    assert run_cli(capsys, "convert", tmp_path / "imgs", "--out", tmp_path / "conv")[0] == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    shutil.copyfile(tmp_path / "conv" / OUTPUT_MARKER, tmp_path / "mine" / OUTPUT_MARKER)
    _refused(capsys, tmp_path, "convert", tmp_path / "imgs", "--out", tmp_path / "mine",
             match="was not written in this folder (copied or unpacked from elsewhere)")
    (tmp_path / "conv" / "notes.txt").write_text("mine")  # an output the user added to
    _refused(capsys, tmp_path, "convert", tmp_path / "imgs", "--out", tmp_path / "conv",
             match="now also holds notes.txt, which it did not write")


@pytest.mark.parametrize("command", ["convert", "synth", "split-overlap", "relabel"])
def test_an_out_a_training_set_references_is_refused_even_with_overwrite(tmp_path, capsys, command):
    make_tree(tmp_path / "imgs", {"alice": 2, "bob": 1})
    assert run_cli(capsys, "convert", tmp_path / "imgs", "--out", tmp_path / "conv1")[0] == 0
    assert run_cli(capsys, "build", "--out", tmp_path / "train", tmp_path / "conv1")[0] == 0  # referenced in place
    make_dataset(tmp_path / "other", "other", [3] * 4)
    args = {"convert": (tmp_path / "imgs",), "synth": ("--tiny",), "split-overlap": (tmp_path / "other",),
            "relabel": (tmp_path / "train", "--from-overlaps", tmp_path / "nothing.json")}[command]
    _refused(capsys, tmp_path, command, *args, "--out", tmp_path / "conv1", "--overwrite",
             match=f"its shards are used by the training set {tmp_path / 'train' / 'manifest.json'}")
    code, _, err = run_cli(capsys, "verify", tmp_path / "train")
    assert code == 0, err
