"""benchmarks/gpu_suite.py's CPU dry run: every part runs at tiny sizes and the report is complete."""

import json

import pytest

import gpu_suite


@pytest.mark.slow
def test_gpu_suite_dry_run_on_the_cpu_writes_json_and_markdown(tmp_path):
    out = tmp_path / "suite.json"
    assert gpu_suite.main(["--device", "cpu", "--small", "--no-compile", "--pytest-args", "tests/unit/test_gpu_paths.py",
                           "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "skipped" in report["tests"]["summary"] or report["tests"].get("skipped")
    assert {(r["batch"], r["channels_last"]) for r in report["train_step"]} == {(4, True), (4, False)}
    for row in report["train_step"] + [report["head"]] + report["fusion"]:
        assert "error" not in row and "skipped" not in row, row
        assert row["predicted_gib"] > 0
    assert [r["n"] for r in report["fusion"]] == [1000, 4000] and all(r["merged"] > 0 for r in report["fusion"])
    table = out.with_suffix(".md").read_text()
    for heading in ("## gpu tests", "## training step", "## Partial-FC head alone", "## fusion, torch kNN backend"):
        assert heading in table


def test_gpu_suite_refuses_cuda_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert gpu_suite.main(["--device", "cuda"]) == 2
    assert "--device cuda but torch.cuda.is_available() is False" in capsys.readouterr().err
