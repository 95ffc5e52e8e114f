"""`fftrain demo-report`: classes after fusion, merge precision/recall against planted overlaps, accuracy."""

import json

from fftrain.cli import main
from recordio_tools.overlaps import make_groups, write_overlaps

DATASETS = [("a", 0, 4), ("b", 4, 3)]


def _member(source_class, dataset):
    return {"source_class": source_class, "dataset": dataset, "old_fused_id": source_class, "local_label": 0}


def _run(tmp_path):
    """7 source classes (a: 0-3, b: 4-6); planted groups {0, 4} and {1, 5, 6}; the fusion merged {0, 4} and
    {1, 5} (right) and {2, 6} (wrong), and left 6 out of {1, 5, 6}."""
    synth = tmp_path / "synth"
    synth.mkdir()
    write_overlaps(str(synth / "overlaps.json"), DATASETS, make_groups(DATASETS, [[(0, 0), (1, 0)],
                                                                                 [(0, 1), (1, 1), (1, 2)]]))
    run = tmp_path / "run"
    (run / "fusion").mkdir(parents=True)
    (run / "logs").mkdir()
    (run / "config.yaml").write_text(f"data:\n  synth_dir: {synth}\n")
    merged = [{"members": [_member(0, "a"), _member(4, "b")]}, {"members": [_member(2, "a"), _member(6, "b")]},
              {"members": [_member(1, "a"), _member(5, "b")]}]
    (run / "fusion" / "fusion_report.json").write_text(json.dumps({"merged": merged}))
    rows = [{"step": 10, "classes": 7, "phase": "dail"}, {"step": 20, "classes": 4, "phase": "agnostic",
                                                           "verification/verification/accuracy": 0.9}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (run / "logs" / "rank0.log").write_text("12:00:00 final verification verification: accuracy 0.9100 ± 0.0200\n")
    return run


def test_report_lines(tmp_path, capsys):
    run = _run(tmp_path)
    assert main(["demo-report", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    # planted: 7 classes - (1 + 2) = 4 identities; true pairs {0,4}, {1,5}, {1,6}, {5,6}; predicted {0,4}, {2,6}, {1,5}
    assert out[1] == "classes after fusion: 7 source classes -> 4 (planted truth: 4 identities)"
    assert out[2] == "merge vs planted truth: precision 0.667, recall 0.500 (2 of 3 merged pairs correct, 4 planted pairs)"
    assert out[3] == "verification verification: 91.0 % ± 2.0 (step 20)"


def test_missing_run_and_missing_overlaps_are_one_line(tmp_path, capsys):
    assert main(["demo-report", str(tmp_path / "nope")]) == 2
    assert "nope: run folder not found" in capsys.readouterr().err
    run = _run(tmp_path)
    (run / "config.yaml").write_text("data:\n  synth_dir: /nonexistent/synth\n")
    assert main(["demo-report", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/nonexistent/synth/overlaps.json: planted overlaps not found" in err[0]
