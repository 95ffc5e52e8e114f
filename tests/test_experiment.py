"""benchmarks/experiment_overlap.py end to end at its small preset: data, split, three trained runs, table,
JSON, plot and the RESULTS.md section; FaceFusion finds the planted overlaps (recall and precision floors)."""

import json
import os
import subprocess
import sys

from conftest import REPO

# The small preset: 36 ids x 12 images, k=3 subsets at r=0.4 (6 shared ids per consecutive pair: 12 planted pairs),
# a shared identity's images copied into both subsets (--share-images), 60 steps x 32, momentum 0, fusion at step 48
# with T1=0.5. Measured on 2 cores: recall 0.92, precision 0.79 (11 of 12 pairs, 3 false); at T1=0.45 recall 0.83,
# precision 0.53. ~100-140 s. Floors with room for run-to-run noise (DALI threads and the thread count change the
# numerics):
RECALL_FLOOR = 0.5
PRECISION_FLOOR = 0.5


def test_small_experiment_end_to_end(tmp_path):
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "experiment_overlap.py"), "--preset", "small",
           "--out", str(tmp_path / "work"), "--json", str(tmp_path / "result.json"),
           "--plot", str(tmp_path / "plot.png"), "--copy-plot", "", "--results-md", str(results_md)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| r | method |" in proc.stdout

    (split,) = result["splits"]
    rows = {r["method"]: r for r in result["rows"]}
    assert sorted(rows) == ["dail", "fusion", "naive"]
    source_classes = split["source_classes"]
    assert source_classes == split["k"] * split["subset_size"] and split["true_pairs"] > 0
    # naive and DAIL keep one proxy per source class; FaceFusion merged some
    assert rows["naive"]["classes"] == rows["dail"]["classes"] == source_classes
    assert rows["naive"]["merge"]["recall"] == rows["dail"]["merge"]["recall"] == 0.0
    fusion = rows["fusion"]
    assert fusion["fused"] is True
    assert fusion["classes"] == source_classes - (fusion["merge"]["predicted_pairs"] and
                                                  source_classes - fusion["classes"])
    assert fusion["classes"] < source_classes
    assert fusion["merge"]["recall"] >= RECALL_FLOOR, fusion["merge"]
    assert fusion["merge"]["precision"] >= PRECISION_FLOOR, fusion["merge"]
    for r in rows.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["std"] is not None

    text = results_md.read_text()
    assert "## Experiment: naive vs DAIL vs FaceFusion" in text and "## Other\n\nkept" in text
    # a second write replaces the section instead of appending another
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from experiment_overlap import update_results_md

    update_results_md(str(results_md), "## Experiment: naive vs DAIL vs FaceFusion\n\nnew\n")
    text = results_md.read_text()
    assert text.count("## Experiment: naive vs DAIL vs FaceFusion") == 1 and "new" in text and "kept" in text
