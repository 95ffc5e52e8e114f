"""The trainer as users run it: torchrun + fftrain/train.py with gloo on CPU, on the tiny synthetic set."""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from fftrain.training.checkpoint import complete_checkpoints, load_proxies_from_checkpoint, read_meta
from train_helpers import TRAIN, metrics, torchrun_env, torchrun_settings, train
from watchdog import children_of, communicate_within, kill_session, rank_of
from repo_paths import REPO

pytestmark = pytest.mark.slow  # every test here runs torchrun end to end


@pytest.mark.parametrize("nproc", [1, 2])
def test_trains_through_both_phases_and_verifies(synth, tmp_path, nproc):
    proc = train(synth, tmp_path, nproc=nproc)
    steps = metrics(tmp_path)
    assert sorted(steps) == list(range(1, 11))
    assert [steps[s]["phase"] for s in (5, 6)] == ["dail", "agnostic"]
    assert all(torch.isfinite(torch.tensor(r["loss/cls"])) for r in steps.values())
    assert (tmp_path / "fusion" / "fusion_report.json").exists()
    assert "fusion at step 5" in proc.stdout
    assert "final verification verification: accuracy" in proc.stdout
    final = read_meta(str(tmp_path / "checkpoints" / "step-00000010"))
    assert final["fused"] and final["world_size"] == nproc and final["num_classes_source"] == 180


def test_t2_auto_fuses_between_floor_and_ceiling_and_records_why(synth, tmp_path):
    proc = train(synth, tmp_path, nproc=2, **{"fusion.t2": "auto", "fusion.t2_floor": 0.2, "fusion.t2_ceiling": 0.6,
                                             "fusion.readiness_every": 1})
    readiness = json.loads((tmp_path / "fusion" / "readiness.json").read_text())
    fused_at = readiness["fused_at_step"]
    assert (readiness["floor_step"], readiness["ceiling_step"]) == (2, 6) and 2 <= fused_at <= 6
    checks = readiness["checks"]
    assert [c["step"] for c in checks] == list(range(2, fused_at + 1)) and checks[-1]["ready"]
    assert not any(c["ready"] for c in checks[:-1]) and all(c["reason"] for c in checks)
    assert all(0 < c["alignment"] <= 1 for c in checks)
    steps = metrics(tmp_path)
    assert [steps[s]["phase"] for s in (fused_at, fused_at + 1)] == ["dail", "agnostic"]
    assert f"step {fused_at}: fusion readiness: ready: {checks[-1]['reason']}" in proc.stdout
    assert f"fusion at step {fused_at}" in proc.stdout


@pytest.mark.parametrize("no_valley, after", [("aware", "dail"), ("agnostic", "agnostic")])
def test_t1_auto_without_a_valley_merges_nothing_as_configured(synth, tmp_path, no_valley, after):
    proc = train(synth, tmp_path, **{"fusion.t1": "auto", "fusion.min_separation": 1000, "fusion.no_valley": no_valley})
    steps = metrics(tmp_path)
    assert [steps[s]["phase"] for s in (5, 6, 10)] == ["dail", after, after]
    assert {r["classes"] for r in steps.values()} == {180}
    assert "fusion: T1 auto: no merge: one mode" in proc.stdout
    assert ("fusion declined, training stays dataset-aware" in proc.stdout) == (no_valley == "aware")
    report = json.loads((tmp_path / "fusion" / "fusion_report.json").read_text())
    assert report["settings"]["threshold"]["mode"] == "no_valley" and report["stats"]["num_components_merged"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("method, phases", [("naive", ["dail", "agnostic"]), ("naive0", ["agnostic", "agnostic"]),
                                            ("interclass", ["agnostic", "agnostic"])])
def test_methods_switch_phases_without_merging(synth, tmp_path, method, phases):
    """The paper's naive concatenation switches to agnostic at T2 over all 180 source classes; naive0 and
    inter-class filtering are agnostic from step 1; none of them writes a fusion report."""
    proc = train(synth, tmp_path, method=method, head__interclass_threshold=0.4 if method == "interclass" else 0)
    steps = metrics(tmp_path)
    assert [steps[s]["phase"] for s in (5, 6)] == phases and steps[1]["phase"] == phases[0]
    assert {r["classes"] for r in steps.values()} == {180}
    assert not (tmp_path / "fusion").exists()
    assert ("no merge" in proc.stdout) == (method == "naive")


def test_resume_gives_the_same_losses_as_not_stopping(synth, tmp_path):
    train(synth, tmp_path / "straight", nproc=2)
    train(synth, tmp_path / "stopped", nproc=2, stop_at_step=3)
    assert max(metrics(tmp_path / "stopped")) == 3
    train(synth, tmp_path / "stopped", nproc=2, stop_at_step=7)   # resumes before fusion, fuses at 5
    train(synth, tmp_path / "stopped", nproc=2)                    # resumes after fusion: must not fuse again
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "stopped")
    for step in range(1, 11):
        for key in ("loss/cls", "loss/dom"):
            assert resumed[step][key] == pytest.approx(straight[step][key], rel=1e-5, abs=1e-6), (step, key)
    log = (tmp_path / "stopped" / "logs" / "rank0.log").read_text()
    assert log.count("fusion at step 5:") == 1


def test_resume_on_fewer_ranks_reshards_the_fc(synth, tmp_path):
    train(synth, tmp_path, nproc=2, stop_at_step=4, checkpoint__every=0)
    saved = load_proxies_from_checkpoint(str(tmp_path / "checkpoints" / "step-00000004"))
    proc = train(synth, tmp_path, nproc=1, stop_at_step=5, checkpoint__every=0, **{"optim.lr": 1e-12})
    assert "saved on 2 rank(s)" in proc.stdout
    after = load_proxies_from_checkpoint(str(tmp_path / "checkpoints" / "step-00000005"))
    # lr ~ 0: one step moves nothing, so the one-rank head holds exactly the two-rank rows
    assert torch.allclose(after, saved, atol=1e-9)


def test_checkpoint_of_another_config_is_refused(synth, tmp_path):
    train(synth, tmp_path, nproc=1, stop_at_step=2)
    proc = train(synth, tmp_path, nproc=1, check=False, **{"model.embedding_size": 64})
    assert proc.returncode != 0
    assert "model.embedding_size: the checkpoint has 128, this run 64" in proc.stderr + proc.stdout


def test_non_finite_loss_stops_naming_the_step(synth, tmp_path):
    proc = train(synth, tmp_path, nproc=1, check=False, **{"optim.lr": 1e30, "optim.warmup_steps": 0,
                                                            "optim.grad_clip": 0.0, "checkpoint.every": 1})
    assert proc.returncode != 0
    text = proc.stderr + proc.stdout
    assert "non-finite loss at step" in text and "last good checkpoint:" in text
    for _, path in complete_checkpoints(str(tmp_path / "checkpoints")):
        weights = load_proxies_from_checkpoint(path)
        assert torch.isfinite(weights).all(), path


def _checkpoints_since_last_resume(log, resumes_expected: int) -> int:
    """Checkpoints the current restart round wrote; 0 until the round has resumed `resumes_expected` times, so a
    second kill never lands in the round the first one already ended."""
    text = log.read_text() if log.exists() else ""
    if text.count("resumed from") < resumes_expected:
        return 0
    return text.rsplit("resumed from", 1)[-1].count("checkpoint (") if resumes_expected else text.count("checkpoint (")


def test_sigkill_rank0_then_rank1_torchrun_restarts_from_the_last_checkpoint(synth, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=4",
           TRAIN, *torchrun_settings(synth, tmp_path, checkpoint__every=1, **{"optim.total_steps": 14})]
    proc = subprocess.Popen(cmd, cwd=REPO, env=torchrun_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    rng = random.Random(0)
    kills = []

    def killer():
        for victim_rank in (0, 1):  # rank 0 hosts the round's store: its death is the harder restart
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                if _checkpoints_since_last_resume(tmp_path / "logs" / "rank0.log", len(kills)) >= 2:
                    break
                time.sleep(0.2)
            time.sleep(rng.uniform(0.0, 1.5))  # lands in a step or in a save, at random
            victims = [pid for pid in children_of(proc.pid) if rank_of(pid) == victim_rank]
            if proc.poll() is not None or not victims:
                return
            os.kill(victims[0], signal.SIGKILL)
            kills.append(victim_rank)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        output = communicate_within(proc, deadline_s=480)
    finally:
        kill_session(proc.pid)
    thread.join()
    assert proc.returncode == 0, output[-4000:]
    assert kills == [0, 1], kills
    assert output.count("resumed from") >= 2
    checkpoints = complete_checkpoints(str(tmp_path / "checkpoints"))
    assert checkpoints[-1][0] == 14
    for _, path in checkpoints:
        assert read_meta(path)["step"] == int(path.rsplit("-", 1)[1])
        load_proxies_from_checkpoint(path)
    assert not [p for p in os.listdir(tmp_path / "checkpoints") if p.endswith(".tmp")]
    assert sorted(metrics(tmp_path))[-1] == 14


def test_fftrain_cli_on_a_trained_checkpoint(synth, tmp_path, capsys):
    from fftrain.cli import main

    train(synth, tmp_path, nproc=1, stop_at_step=4, **{"fusion.t2": 1.0})
    checkpoint = str(tmp_path / "checkpoints" / "step-00000004")
    assert main(["fuse", "--checkpoint", checkpoint, "--t1", "0.2", "--dry-run"]) == 0
    preview = tmp_path / "fuse" / "step-00000004-t1_0.200"
    assert (preview / "fusion_report.json").exists() and (preview / "fusion_top1_hist.png").exists()
    assert not (preview / "label_map.json").exists()
    capsys.readouterr()
    assert main(["fuse", "--checkpoint", checkpoint, "--t1", "auto", "--dry-run"]) == 0
    readiness = [line for line in capsys.readouterr().out.splitlines() if line.startswith("readiness: ")]
    auto = json.loads((tmp_path / "fuse" / "step-00000004-t1_auto" / "fusion_report.json").read_text())
    threshold = auto["settings"]["threshold"]
    assert len(readiness) == 1 and threshold["mode"] in ("valley", "no_valley") and threshold["reason"]
    assert ("estimated merge precision" in readiness[0]) == (threshold["mode"] == "valley")
    assert main(["fuse", "--checkpoint", checkpoint, "--t1", "0.2"]) == 0
    label_map = json.loads((preview / "label_map.json").read_text())
    assert len(label_map["label_map"]) == 180 and max(label_map["label_map"]) + 1 == label_map["num_classes_fused"]
    assert main(["eval", "--checkpoint", checkpoint, str(synth / "verification.bin"),
                 "--json-out", str(tmp_path / "eval.json")]) == 0
    (result,) = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert result["name"] == "verification" and result["num_pairs"] == 40
    assert len(result["fold_accuracies"]) == 10 and 0.0 <= result["accuracy"] <= 1.0
    assert main(["export", "--checkpoint", checkpoint, "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0
    assert "max |diff|" in capsys.readouterr().out


def test_missing_verification_file_fails_before_training(synth, tmp_path):
    proc = train(synth, tmp_path, nproc=1, check=False, **{"data.verification": "[/nonexistent/lfw.bin]"})
    assert proc.returncode != 0
    assert "data.verification: file not found: /nonexistent/lfw.bin" in proc.stderr + proc.stdout
    assert not (tmp_path / "checkpoints").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_agents_c10d_rendezvous_recover_from_a_killed_worker(synth, tmp_path):
    """Multi-node as two agents on one host: node 1's worker dies mid-run; both agents re-rendezvous."""
    endpoint = f"127.0.0.1:{_free_port()}"
    env = dict(torchrun_env(), FFTRAIN_FAULT="step@6:1", FFTRAIN_FAULT_DIR=str(tmp_path))
    procs = []
    try:
        for node in range(2):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=fftrain-test",
                   "--max-restarts=2", "--monitor-interval=1", TRAIN,
                   *torchrun_settings(synth, tmp_path / "run", checkpoint__every=2)]
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True, start_new_session=True))
        outputs = [communicate_within(p, deadline_s=480) for p in procs]
    finally:
        for p in procs:
            kill_session(p.pid)
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(o[-3000:] for o in outputs)
    assert (tmp_path / "step@6:1").exists(), "the planned fault never fired"
    log = (tmp_path / "run" / "logs" / "rank0.log").read_text()
    # the newest complete checkpoint before step 6 is the one written right after fusion at step 5
    assert "resumed from" in log and "step-00000005" in log.split("resumed from", 1)[1].splitlines()[0]
    assert complete_checkpoints(str(tmp_path / "run" / "checkpoints"))[-1][0] == 10
    assert sorted(metrics(tmp_path / "run"))[-1] == 10
