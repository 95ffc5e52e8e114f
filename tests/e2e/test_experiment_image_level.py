"""benchmarks/experiment_image_level.py end to end on its --quick preset, one method: the synthetic set, the Eq. 5
split, a real torchrun training run, the held-out all-pairs metrics and the merge score, then a resumed call that
reuses every step's output."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from recordio_tools.overlap_split import planted_counts


def _run(out, *flags):
    return subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "experiment_image_level.py"), "--quick",
                           "--methods", "facefusion", "--t1", "0.7", "--steps", "12", "--nproc", "1", "--out", str(out),
                           *(flags or ("--no-gate",))], capture_output=True, text=True, cwd=REPO, timeout=900)


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "result.json").read_text())
    (row,) = report["runs"]
    split_ids = report["meta"]["split_ids"]
    assert row["counts"] == {k: v for k, v in planted_counts(split_ids, 2, 0.5).items() if k != "subset_sizes"}
    assert row["counts"]["classes_true"] <= row["classes"] <= row["counts"]["classes_naive"]
    persons = row["heldout_ids"]
    assert row["num_negative_pairs"] > 0 and persons >= 40  # two held-out datasets, never trained on
    assert 0.0 <= row["tar@0.0001"] <= row["tar@0.001"] <= 1.0 and 0.0 <= row["rank1"] <= 1.0
    assert row["merge"]["true_pairs"] == row["counts"]["conflicts"]  # scored against the split's planted conflicts
    assert "| 0.5 | facefusion |" in (tmp_path / "table.md").read_text()
    train_log = tmp_path / "runs" / "r0.5_facefusion.log"
    trained_at = train_log.stat().st_mtime_ns
    again = _run(tmp_path)  # every step's output is there: nothing is trained again, the figures are the same
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert json.loads((tmp_path / "result.json").read_text())["runs"][0]["tar@0.001"] == row["tar@0.001"]
    assert train_log.stat().st_mtime_ns == trained_at


@pytest.mark.slow
def test_geometry_gate_runs_the_product_readiness(tmp_path):
    """The gate is FaceFusion with T2 and T1 auto (readiness checks from the floor to at most the ceiling, then the
    T1 decision); with --gate-only nothing else trains, whatever the gate says."""
    proc = _run(tmp_path, "--gate-only", "--steps", "40")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "result.json").read_text())
    gate, runs = report["gate"], report["runs"]
    steps = [c["step"] for c in gate["checks"]]
    assert runs == [] and steps and 4 <= steps[0] and steps[-1] == gate["fused_at_step"] <= 20
    assert gate["open"] == (gate["decision"] is not None and gate["decision"]["mode"] == "valley")
    assert "Geometry gate (FaceFusion, T2 and T1 auto, r=0.5)" in (tmp_path / "table.md").read_text()
    assert sorted(os.listdir(tmp_path / "runs")) == ["r0.5_facefusion@auto", "r0.5_facefusion@auto.log"]
