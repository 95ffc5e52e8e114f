"""`fftrain plan`: the memory model against the CPU peaks measured in benchmarks/RESULTS.md."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

from fftrain.cli import main
from fftrain.capacity import GIB, PlanInput, backbone_trace, fusion_parts, head_parts, max_classes, plan

MIB = 2**20

# benchmarks/RESULTS.md, "Partial-FC head": one process, D=512, batch 128, fp32, momentum 0.9 (peak MiB)
HEAD_PEAKS = [(100_000, 1.0, 757), (100_000, 0.1, 523), (500_000, 1.0, 3697), (500_000, 0.1, 2444),
              (1_000_000, 1.0, 7470), (1_000_000, 0.1, 4640), (2_000_000, 0.1, 9100)]
# "Training step", class-count sweep: iresnet_tiny, batch 64, D=512, fp32, whole step (peak MiB); the 500K row
# and the bf16-storage rows from "Capacity planner", "The training step with bf16 FC storage"
STEP_PEAKS = [(1_000_000, 1.0, "fp32", 7090), (1_000_000, 0.1, "fp32", 5066), (500_000, 0.1, "fp32", 2747),
              (500_000, 0.1, "bf16", 1660), (1_000_000, 0.1, "bf16", 2929)]


@pytest.mark.parametrize("classes,rate,measured", HEAD_PEAKS)
def test_head_memory_matches_the_measured_cpu_peak_within_10_percent(classes, rate, measured):
    inp = PlanInput(classes=classes, gpus=1, batch=128, embedding=512, sample_rate=rate, dtype="fp32", device="cpu")
    predicted = sum(head_parts(inp).values()) / MIB
    assert predicted == pytest.approx(measured, rel=0.10)


@pytest.mark.parametrize("classes,rate,storage,measured", STEP_PEAKS)
def test_training_step_memory_matches_the_measured_cpu_peak_within_10_percent(classes, rate, storage, measured):
    inp = PlanInput(classes=classes, gpus=1, batch=64, embedding=512, sample_rate=rate, dtype="fp32",
                    device="cpu", backbone="iresnet_tiny", fc_storage=storage)
    assert plan(inp).train_peak / MIB == pytest.approx(measured, rel=0.10)


def test_activation_memory_is_measured_and_scales_with_dtype():
    fp32, bf16 = backbone_trace("iresnet_tiny", 512, "fp32"), backbone_trace("iresnet_tiny", 512, "bf16")
    assert fp32["params"] == bf16["params"] > 1_000_000
    assert bf16["saved_per_image"] == pytest.approx(fp32["saved_per_image"] / 2, rel=0.1)


def test_max_classes_is_the_boundary_of_fits():
    inp = PlanInput(classes=1, gpus=8, gpu_memory_gib=80, backbone="iresnet_tiny", batch=128)
    best = max_classes(inp)
    assert plan(inp, best).fits and not plan(inp, int(best * 1.001) + 8).fits
    half = max_classes(PlanInput(classes=1, gpus=8, gpu_memory_gib=80, backbone="iresnet_tiny", batch=128,
                                 fc_storage="bf16"))
    assert half > best  # bf16 storage halves the shard the fusion step and the training step hold


def test_plan_cli_prints_every_part_and_the_verdict(capsys):
    assert main(["plan", "--classes", "29000000", "--gpus", "8", "--gpu-memory", "80", "--backbone",
                 "iresnet50", "--max-classes"]) == 0
    out = capsys.readouterr().out
    for part in ("fc weight (shard)", "logits + softmax", "gathered batch", "backbone activations (measured)",
                 "DALI buffers", "kNN or reshard working set", "fits", "largest class count that fits"):
        assert part in out
    assert main(["plan", "--classes", "29000000", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fits"] is True and report["peak"] < 80 * GIB


def test_plan_cli_refuses_bad_input_with_exit_2(capsys):
    assert main(["plan", "--classes", "0"]) == 2
    assert "--classes must be > 0" in capsys.readouterr().err
    assert main(["plan", "--classes", "10", "--backbone", "r51"]) == 2
    assert "unknown backbone 'r51'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["fp32", "bf16"])
def test_fusion_memory_matches_the_measured_cpu_peak_within_10_percent(tmp_path, storage):
    """benchmarks/bench_fusion_memory.py (its own processes: 2 gloo ranks, run_fusion end to end, three
    datasets, 2% of the classes merged, all into new classes on rank 0: 4% of its shard) at two sizes:
    the planner's working set above the shard."""
    out = tmp_path / "fusion_memory.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_fusion_memory.py"), "--modes", "fusion",
                    "--sizes", "30000", "60000", "--storages", storage, "--out", str(out)], check=True,
                   capture_output=True)
    for row in json.loads(out.read_text())["rows"]:
        inp = PlanInput(classes=row["n"], gpus=2, embedding=512, fc_storage=storage, device="cpu", datasets=3,
                        merged_fraction=0.04)
        predicted = fusion_parts(inp)["kNN or reshard working set"]
        assert predicted == pytest.approx(row["peak_above_bytes"], rel=0.10), row["n"]
