"""Pairwise merge precision / recall against planted overlaps, and reading a run folder."""

import json

import pytest

from fftrain.evaluation.merge_quality import (RunResultsError, group_pairs, merge_quality, merge_quality_of_run,
                                              merged_groups_from_report, read_run_results)
from recordio_tools.overlaps import make_groups, write_overlaps


def test_group_pairs_counts_every_pair_once():
    assert group_pairs([[3, 1], [5], [7, 9, 8]]) == {(1, 3), (7, 8), (7, 9), (8, 9)}
    assert group_pairs([]) == set()


def test_perfect_and_empty_fusion():
    truth = [[0, 10], [2, 12, 22]]
    q = merge_quality([[12, 2, 22], [10, 0]], truth)
    assert (q.precision, q.recall, q.correct_pairs, q.true_pairs, q.merged_components) == (1.0, 1.0, 4, 4, 2)
    q = merge_quality([], truth)
    assert q.recall == 0.0 and q.precision is None and q.predicted_pairs == 0
    assert merge_quality([[0, 10]], []).recall is None


def test_partial_and_wrong_merges():
    truth = [[0, 10], [2, 12, 22]]
    # one right pair (0,10), the triple found as (2,12) only, plus a wrong component (3,13)
    q = merge_quality([[0, 10], [2, 12], [3, 13], [5]], truth)
    assert q.predicted_pairs == 3 and q.correct_pairs == 2 and q.true_pairs == 4
    assert q.precision == pytest.approx(2 / 3) and q.recall == pytest.approx(0.5)
    assert q.merged_components == 3
    # two persons chained into one component: 6 predicted pairs, 1 + 1 right
    q = merge_quality([[0, 10, 2, 12]], [[0, 10], [2, 12]])
    assert (q.predicted_pairs, q.correct_pairs) == (6, 2)
    assert q.to_dict()["precision"] == pytest.approx(1 / 3)


def _report(components):
    return {"merged": [{"fused_id": i, "members": [{"source_class": c, "dataset": "d", "local_label": c}
                                                   for c in comp]} for i, comp in enumerate(components)]}


def test_from_report_and_overlaps_file(tmp_path):
    table = [("a", 0, 4), ("b", 4, 4)]
    write_overlaps(str(tmp_path / "overlaps.json"), table, make_groups(table, [[(0, 1), (1, 0)], [(0, 3), (1, 2)]]))
    run = tmp_path / "run"
    assert merge_quality_of_run(str(run), str(tmp_path / "overlaps.json")).recall == 0.0   # never fused
    (run / "fusion").mkdir(parents=True)
    (run / "fusion" / "fusion_report.json").write_text(json.dumps(_report([[1, 4], [0, 7]])))
    assert merged_groups_from_report(str(run / "fusion" / "fusion_report.json")) == [[1, 4], [0, 7]]
    q = merge_quality_of_run(str(run), str(tmp_path / "overlaps.json"))
    assert (q.precision, q.recall) == (0.5, 0.5)
    with pytest.raises(Exception, match="source classes"):
        merged_groups_from_report({"merged": [{"members": [{}]}]})


def test_read_run_results(tmp_path):
    with pytest.raises(RunResultsError, match="no metrics.jsonl"):
        read_run_results(str(tmp_path))
    rows = [{"step": 5, "classes": 40, "phase": "dail", "loss/cls": 1.0},
            {"step": 10, "classes": 31, "phase": "agnostic", "loss/cls": 0.5},
            {"step": 10, "verification/verification/accuracy": 0.8}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "logs").mkdir()
    log = "07:31:11 final verification verification: accuracy 0.8000 ± 0.0450\n"
    (tmp_path / "logs" / "rank0.log").write_text(log)
    r = read_run_results(str(tmp_path))
    assert r["classes"] == 31 and r["phase"] == "agnostic" and r["steps"] == 10
    assert r["verification"]["verification"]["accuracy"] == 0.8
    assert r["verification"]["verification"]["std"] == pytest.approx(0.045)
    ckpt = tmp_path / "checkpoints" / "step-00000010"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"num_classes_fused": 30, "fused": True, "step": 10}))
    assert read_run_results(str(tmp_path))["classes"] == 30
