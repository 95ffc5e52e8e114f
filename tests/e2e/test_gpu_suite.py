"""benchmarks/gpu_suite.py's CPU dry run: every part runs at tiny sizes beside its baseline and the report is
complete; a part that crashes or runs past its limit (pytest's included) is recorded and the next part runs."""

import json

import pytest
import torch

import gpu_suite


@pytest.mark.slow
def test_gpu_suite_dry_run_on_the_cpu_writes_json_and_markdown(tmp_path):
    out = tmp_path / "suite.json"
    # the budget (and so each part's limit) is 5x the default: this test may share a loaded machine
    assert gpu_suite.main(["--device", "cpu", "--small", "--budget-s", "550", "--pytest-args",
                           "tests/unit/test_gpu_paths.py", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert {name: part["status"] for name, part in parts.items()} == {
        "train_step": "ok", "head": "ok", "fusion": "ok", "tests": "exit 0"}
    train = [r for r in parts["train_step"]["rows"] if "head" in r and "kind" not in r]
    assert {(r["head"], r["compile"]) for r in train} == {("partial_fc", False), ("dense", False)}
    assert all(r["images_per_s"] > 0 and r["vs_dense"] > 0 for r in train)
    assert next(r for r in train if r["head"] == "partial_fc")["predicted_gib"] > 0
    head = {(r["head"], r["classes"], r["storage"]): r for r in parts["head"]["rows"] if r.get("kind") == "summary"}
    assert set(head) == {("partial_fc", 20000, "fp32"), ("partial_fc", 20000, "bf16"), ("dense", 10000, "fp32"),
                         ("partial_fc", 10000, "fp32"), ("partial_fc", 10000, "bf16")}  # dense capped at 0.1 GiB
    assert head["partial_fc", 10000, "bf16"]["time_vs_dense"] > 0
    fusion = [r for r in parts["fusion"]["rows"] if r.get("kind") != "summary" and "knn_s" in r]
    assert {(r["n"], r["method"], r["precision"]) for r in fusion} >= {
        (1000, m, p) for m, p in gpu_suite.FUSION_VARIANTS}
    assert all(r["merge_set_equals_exact_fp32"] for r in fusion)
    assert next(r for r in fusion if r["method"] == "fusion")["merged"] == 10
    summary = [r for r in parts["fusion"]["rows"] if r.get("kind") == "summary"]
    assert all(r["vs_plain_fp32"] > 0 for r in summary)
    table = out.with_suffix(".md").read_text()
    for heading in ("## train_step: ok", "## head: ok", "## fusion: ok", "## tests: exit 0"):
        assert heading in table


def test_a_part_past_its_limit_or_crashing_is_recorded(tmp_path):
    late = gpu_suite.run_part_in_child("fusion", ["--device", "cpu", "--small"], 0.5, str(tmp_path / "f.json"))
    assert late["status"] == "timed out after 0 s" and late["rows"] == []
    if not torch.cuda.is_available():
        crashed = gpu_suite.run_part_in_child("head", ["--device", "cuda"], 60, str(tmp_path / "h.json"))
        assert crashed["status"] == "failed (exit 2)" and "torch.cuda.is_available() is False" in crashed["log_tail"]


def test_a_pytest_run_past_its_limit_is_killed_and_recorded():
    args = gpu_suite.parse_args(["--device", "cpu", "--pytest-args", "tests/unit/test_gpu_paths.py"])
    result = gpu_suite.run_tests(args, budget_s=0.5)
    assert result["status"] == "timed out" and result["seconds"] < 30


def test_gpu_suite_refuses_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert gpu_suite.main(["--device", "cuda"]) == 2
    assert "--device cuda but torch.cuda.is_available() is False" in capsys.readouterr().err


def test_the_suite_and_what_its_parts_import_need_no_yaml_pil_faiss_or_dali():
    """The lent GPU machine has torch, numpy and scipy only: import everything the parts use there."""
    import subprocess
    import sys

    from repo_paths import REPO

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('yaml', 'PIL', 'faiss', 'nvidia'):\n"
            "            raise ImportError('the GPU machine has no ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import gpu_suite, fftrain.fusion, fftrain.head.partial_fc, fftrain.model.backbones\n"
            "import fftrain.capacity\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": f"{REPO}:{REPO}/benchmarks", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
