"""Every bad setting or input is refused at start: one line naming the key, exit status 2, and
nothing written to output_dir. In-process through fftrain.commands.train.main, plus one torchrun run."""

import os
import pathlib
import subprocess
import sys

import pytest

from recordio_tools.verification_bin import write_verification_bin
from train_helpers import run_main, settings
from watchdog import run_watched
from repo_paths import REPO


def _bin(path, pairs: int, good_images: bool = True) -> str:
    from data_helpers import encode_jpeg, identity_image

    images = [encode_jpeg(identity_image(i)) if good_images else b"not a jpeg" for i in range(2 * pairs)]
    write_verification_bin(str(path), images, [i % 2 == 0 for i in range(pairs)])
    return str(path)


BAD_SETTINGS = [
    ({"seed": -1}, "seed: must be >= 0"),
    ({"optim.weight_decay": -1}, "optim.weight_decay: must be >= 0"),
    ({"head.m": -1}, "head.m: must be >= 0"),
    ({"model.backbone": "iresnet51"}, "model.backbone: unknown backbone 'iresnet51'; available: ["),
    ({"optim.momentum": 5}, "optim.momentum: must be in [0, 1)"),
    ({"grl.hidden": 0}, "grl.hidden: must be >= 1"),
    ({"log.every": 0}, "log.every: must be >= 1"),
    ({"log.eval_every": -1}, "log.eval_every: must be >= 0"),
    ({"optim.lr_milestones": "[8, 12]"}, "optim.lr_milestones: [12] at or past optim.total_steps=10"),
    ({"optim.warmup_steps": 50}, "optim.warmup_steps: 50 warm-up steps do not fit in optim.total_steps=10"),
    ({"data.batch_size": 5000}, "data.batch_size: "),
    ({"nope.key": 1}, "unknown key 'nope'"),
    ({"model.pretrained": "/nonexistent/backbone.pth"},
     "model.pretrained: /nonexistent/backbone.pth: no such checkpoint file"),
]


@pytest.mark.parametrize("extra, message", BAD_SETTINGS, ids=[next(iter(e)) for e, _ in BAD_SETTINGS])
def test_bad_setting_is_one_line_exit_2_and_nothing_written(synth, tmp_path, capsys, extra, message):
    out_dir = tmp_path / "run"
    code, err, out = run_main(capsys, settings(synth, out_dir, **extra))
    assert code == 2
    assert len(err) == 1 and err[0].startswith("fftrain: error: ") and message in err[0], err
    assert "Traceback" not in out and "error" not in out
    assert not out_dir.exists()


@pytest.mark.parametrize("kind, message", [
    ("missing", "data.verification: file not found: "),
    ("few_pairs", ": 4 pairs; the 10-fold protocol needs at least 10"),
    ("not_a_pickle", "data.verification: "),
    ("bad_images", "data.verification: "),
])
def test_bad_verification_file_is_refused_before_training(synth, tmp_path, capsys, kind, message):
    path = tmp_path / f"{kind}.bin"
    if kind == "few_pairs":
        _bin(path, 4)
    elif kind == "not_a_pickle":
        path.write_bytes(b"\x80\x04garbage")
    elif kind == "bad_images":
        _bin(path, 12, good_images=False)
    out_dir = tmp_path / "run"
    code, err, _ = run_main(capsys, settings(synth, out_dir, **{"data.verification": f"[{path}]"}))
    assert code == 2 and len(err) == 1 and message in err[0] and str(path) in err[0], err
    assert not out_dir.exists()


def test_missing_manifest_is_refused_naming_the_file(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, err, _ = run_main(capsys, ["--set", f"output_dir={out_dir}", "--set", f"data.manifest={tmp_path}/m.json"])
    assert code == 2 and len(err) == 1 and f"{tmp_path}/m.json" in err[0], err
    assert not out_dir.exists()


@pytest.mark.slow
def test_torchrun_start_up_refusal_is_printed_once_and_writes_nothing(synth, tmp_path):
    out_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=0",
           str(REPO / "fftrain" / "train.py"), *settings(synth, out_dir, **{"data.batch_size": 1000})]
    proc = run_watched(cmd, deadline_s=300, cwd=REPO, env=env)
    text = proc.stdout + proc.stderr
    ours = [line for line in text.splitlines() if line.startswith("fftrain: error")]
    assert len(ours) == 1 and ours[0].startswith("fftrain: error: data.batch_size: "), text[-3000:]
    assert "2 ranks x 1000 images" in ours[0]
    # the failing worker exits 2 (torchrun itself exits 1); the other exits 2 too, or is ended by torchrun's
    # SIGTERM first when it is slower to reach the agreed refusal
    assert "exitcode  : 2" in text and "Traceback" not in text.split("fftrain: error", 1)[0], text[-3000:]
    assert not out_dir.exists()


def test_plain_python_run_exits_2_with_one_line(synth, tmp_path):
    out_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "fftrain" / "train.py"), *settings(synth, out_dir, **{"optim.momentum": 5})]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["fftrain: error: optim.momentum: must be in [0, 1), got 5.0"]
    assert not out_dir.exists()


def test_train_help_lists_every_config_key_with_its_default(capsys):
    from fftrain.commands.train import main as train_main
    from fftrain.config import describe_keys

    with pytest.raises(SystemExit):
        train_main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    for key, _, _ in describe_keys():
        assert any(line.strip().startswith(f"{key} = ") for line in lines), key
    assert any(line.strip().startswith("optim.lr = 0.005 ") and "learning rate" in line for line in lines)
    assert any(line.strip().startswith("data.bad_records = stop ") for line in lines)


def test_pretrained_weights_of_another_network_are_refused_at_start(synth, tmp_path, capsys):
    import torch

    from fftrain.model.backbones import build_backbone

    weights = tmp_path / "other.pth"
    torch.save(build_backbone("iresnet_tiny", embedding_size=64).state_dict(), weights)  # the demo net is 128-d
    out_dir = tmp_path / "run"
    code, err, _ = run_main(capsys, settings(synth, out_dir, **{"model.pretrained": str(weights)}))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"fftrain: error: model.pretrained: {weights}: does not fit") and "shape mismatch" in err[0]
    assert not out_dir.exists()


def test_the_lock_is_taken_before_the_resume_point_is_read(synth, tmp_path, capsys):
    """A second trainer on a folder whose checkpoints the first is pruning is told the folder is in use,
    not that its checkpoints are damaged: `--resume auto` is resolved after the lock."""
    import json
    import socket

    from fftrain.training.output_lock import LOCK_FILE

    out_dir = tmp_path / "run"
    damaged = out_dir / "checkpoints" / "step-00000004"
    damaged.mkdir(parents=True)
    (damaged / "meta.json").write_text("{")  # mid-prune, as the other trainer sees it
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": 0.0, "run_id": "", "since": "earlier"}
    (out_dir / LOCK_FILE).write_text(json.dumps(holder))
    code, err, _ = run_main(capsys, settings(synth, out_dir) + ["--resume", "auto"])
    assert code == 2 and len(err) == 1 and "is in use by another trainer" in err[0], err
    assert (out_dir / LOCK_FILE).exists() and (damaged / "meta.json").read_text() == "{"


def test_a_bad_resume_path_is_refused_before_the_demo_set_is_generated(tmp_path, capsys):
    synth_dir, out_dir = tmp_path / "synth", tmp_path / "run"
    code, err, out = run_main(capsys, ["--resume", str(tmp_path / "no_such_checkpoint"),
                                       "--set", f"output_dir={out_dir}", "--set", f"data.synth_dir={synth_dir}"])
    assert code == 2 and len(err) == 1 and str(tmp_path / "no_such_checkpoint") in err[0], err
    assert "generating the synthetic demo set" not in out
    assert not synth_dir.exists() and not out_dir.exists()


@pytest.mark.slow
def test_resume_keeps_the_first_config_and_refuses_a_changed_seed(synth, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert run_main(capsys, settings(synth, out_dir, stop_at_step=2, **{"data.batch_size": 8}))[0] == 0
    first_config = (out_dir / "config.yaml").read_text()
    code, err, _ = run_main(capsys, settings(synth, out_dir, seed=1))
    assert code == 2 and len(err) == 1 and "seed: the checkpoint has 0, this run 1" in err[0], err
    code, err, out = run_main(capsys, settings(synth, out_dir, stop_at_step=3, **{"data.batch_size": 16,
                                                                                   "optim.lr": 0.05}))
    assert code == 0, err
    assert "changed settings: " in out and "data.batch_size 8 -> 16" in out and "optim.lr 0.1 -> 0.05" in out
    assert (out_dir / "config.yaml").read_text() == first_config
    resumed = (out_dir / "config-resume-00000002.yaml").read_text()
    assert "batch_size: 16" in resumed and "lr: 0.05" in resumed
