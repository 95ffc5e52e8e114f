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


def _fusion_files(run, threshold: dict, no_valley="aware"):
    """The fusion report's T1 decision and the readiness checks of a t2 'auto' run that fused at step 15."""
    report = json.loads((run / "fusion" / "fusion_report.json").read_text())
    report["settings"] = {"threshold": threshold, "no_valley": no_valley}
    (run / "fusion" / "fusion_report.json").write_text(json.dumps(report))
    checks = [{"step": 10, "alignment": 0.4, "ready": False, "reason": "alignment 0.400: not yet plateaued; "
                                                                        "two modes with a valley"},
              {"step": 15, "alignment": 0.405, "ready": True, "reason": "alignment 0.405 (+0.005 since step 10): "
                                                                        "plateaued (gain < 0.01); two modes with a valley"}]
    (run / "fusion" / "readiness.json").write_text(json.dumps({"floor_step": 10, "ceiling_step": 18,
                                                               "fused_at_step": 15, "checks": checks}))


def test_auto_t2_and_t1_are_reported_with_their_reasons(tmp_path, capsys):
    run = _run(tmp_path)
    _fusion_files(run, {"mode": "valley", "t1": 0.6123, "merges": True, "reason": "valley 0.612; Ashman's D 4.20",
                        "precision": 0.95, "recall": 0.9})
    assert main(["demo-report", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[3] == ("T2 auto: step 15 (checked from step 10 to the ceiling 18, 2 checks): alignment 0.405 (+0.005 "
                      "since step 10): plateaued (gain < 0.01); two modes with a valley")
    assert out[4] == ("T1 auto: 0.612 (valley 0.612; Ashman's D 4.20); the fit's own estimate: merge precision "
                      "0.950, recall 0.900")
    assert out[5].startswith("verification ")


def test_auto_t1_that_declined_says_so_and_why(tmp_path, capsys):
    run = _run(tmp_path)
    reason = "one mode: fitted components at 0.389 (34.5%) and 0.398 (65.5%), Ashman's D 0.11"
    _fusion_files(run, {"mode": "no_valley", "t1": None, "merges": False, "reason": reason}, no_valley="agnostic")
    assert main(["demo-report", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[4] == ("T1 auto: declined to merge (training went dataset-agnostic over the unmerged classes), "
                      f"no valley: {reason}")
    assert main(["demo-report", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["t1"]["merges"] is False


def test_a_fixed_t1_is_one_line_and_an_unreadable_readiness_file_is_one_error(tmp_path, capsys):
    run = _run(tmp_path)
    _fusion_files(run, {"mode": "fixed", "t1": 0.82, "merges": True, "reason": "configured"})
    (run / "fusion" / "readiness.json").unlink()
    assert main(["demo-report", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[3] == "T1 0.82 (fixed)" and out[4].startswith("verification ")
    (run / "fusion" / "readiness.json").write_text("{not json")
    assert main(["demo-report", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "readiness.json: cannot read" in err[0]
