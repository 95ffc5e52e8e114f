"""Smoke test of benchmarks/bench_train_step.py: the smallest run end to end, the JSON it writes."""

import importlib.util
import json

import pytest

from conftest import REPO


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_train_step", REPO / "benchmarks" / "bench_train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_memory_mode_and_sweep_write_json(tmp_path):
    bench = load_bench()
    out = tmp_path / "train_step.json"
    bench.main(["--modes", "memory", "--rounds", "1", "--classes", "1000", "--sweep-classes", "1000",
                "--sample-rates", "0.1", "--batch", "8", "--embedding-size", "64", "--warmup", "1",
                "--steps", "2", "--threads", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["benchmark"] == "train_step"
    assert {"cpu", "torch", "host"} <= set(report["machine"])
    (row,) = report["throughput"]
    assert "error" not in row, row
    assert row["mode"] == "memory" and row["classes_head"] == 1000 and row["steps_timed"] == 2
    assert row["images_per_s"] > 0 and row["cpu_ms_per_image"] > 0 and row["peak_bytes"] > 0
    assert row["head_held_bytes"] == 1000 * 64 * 4 * 2  # fp32 weight + momentum
    (row,) = report["sweep"]  # one subprocess per configuration: two in all keep this test short
    assert "error" not in row, row
    assert (row["mode"], row["classes"], row["sample_rate"], row["torch_threads"]) == ("memory", 1000, 0.1, 1)
    assert row["ms_per_step"] > 0 and row["cpu_ms_per_step"] > 0 and row["peak_bytes"] > 0


def test_oversized_configuration_is_skipped(tmp_path):
    bench = load_bench()
    out = tmp_path / "skip.json"
    report = bench.main(["--modes", "", "--sweep-classes", "1000000000", "--sample-rates", "0.1",
                         "--out", str(out)])
    (row,) = report["sweep"]
    assert row["error"].startswith("skipped: est.")
