"""benchmarks/audit_retrain.py: the verification images' persons from the synthetic plan, TAR over all pairs
against a brute-force search, the ground truth mapped through a cleaned set's clean_map.json, and the
comparison refusing to run before the trainings are done."""

from __future__ import annotations

import json

import numpy as np
import pytest

import audit_retrain as AR


def test_verification_persons_follow_the_plan_and_the_bin(noisy):
    from fftrain.evaluation.verification import load_bin

    _, issame = load_bin(str(noisy / "verification.bin"), cache=False)
    persons = AR.verification_identities(str(noisy), issame)
    assert persons.size == 2 * len(issame)
    assert np.array_equal(persons[0::2] == persons[1::2], issame)
    truth = json.loads((noisy / "noise.json").read_text())
    for leak in truth["leaked"]:  # every image of a leaked person, and only those, is listed as leaked
        person = persons[leak["verification_images"][0]]
        assert sorted(np.flatnonzero(persons == person).tolist()) == sorted(leak["verification_images"])
    with pytest.raises(ValueError, match="does not match"):
        AR.verification_identities(str(noisy), ~issame)


def _tar_brute_force(scores, same, far):
    """The largest genuine fraction above any threshold whose impostor fraction above it is <= far."""
    best = None
    for t in np.concatenate([[-np.inf], scores[~same]]):
        if np.mean(scores[~same] > t) <= far:
            tar = float(np.mean(scores[same] > t))
            best = tar if best is None else max(best, tar)
    return best


def test_tar_over_all_pairs_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    persons = np.repeat(np.arange(12), 4)
    centres = rng.standard_normal((12, 6))
    emb = centres[persons] + 0.9 * rng.standard_normal((persons.size, 6))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    got = AR.all_pairs_tar(emb, persons, fars=(1e-1, 1e-2))
    i, j = np.triu_indices(persons.size, 1)
    scores = np.einsum("ij,ij->i", emb[i], emb[j])
    same = persons[i] == persons[j]
    assert got["genuine_pairs"] == 12 * 6 and got["impostor_pairs"] == i.size - 72
    for far, key in ((1e-1, "tar_far_1e-1"), (1e-2, "tar_far_1e-2")):
        assert got[key] == pytest.approx(_tar_brute_force(scores, same, far))
    assert 0 < got["tar_far_1e-2"] < got["tar_far_1e-1"] < 1  # the case separates the two points


def test_ground_truth_follows_the_clean_map_and_scores_the_cleaned_run(noisy, tmp_path):
    from recordio_tools.overlaps import read_overlaps

    groups = read_overlaps(str(noisy / "overlaps.json")).source_class_groups()
    num = json.loads((noisy / "manifest.json").read_text())["num_classes"]
    clean_class = np.arange(num) + 1000  # renumbered ...
    clean_class[groups[0][0]] = -1  # ... one member of the first group removed ...
    clean_class[groups[1][0]] = clean_class[groups[1][1]]  # ... two of the second merged by the cleaning
    clean_map = tmp_path / "clean_map.json"
    clean_map.write_text(json.dumps({"clean_class": clean_class.tolist()}))
    mapped = AR.mapped_truth(str(noisy / "overlaps.json"), str(clean_map))
    assert mapped[0] == sorted(clean_class[c] for c in groups[0][1:])
    assert mapped[1] == sorted({clean_class[c] for c in groups[1]})
    assert mapped[2:] == [sorted(clean_class[c] for c in g) for g in groups[2:]]
    run = tmp_path / "run"
    (run / "fusion").mkdir(parents=True)
    predicted = [mapped[2], [mapped[3][0], 5]]  # one right group, one wrong pair
    (run / "fusion" / "fusion_report.json").write_text(json.dumps(
        {"merged": [{"members": [{"source_class": int(c)} for c in g]} for g in predicted]}))
    got = AR.run_fusion(str(run), mapped)
    right = len(mapped[2]) * (len(mapped[2]) - 1) // 2
    assert got["merged_components"] == 2 and got["predicted_pairs"] == right + 1
    assert got["correct_pairs"] == right
    assert AR.run_fusion(str(tmp_path / "no_fusion"), mapped)["predicted_pairs"] == 0


def test_comparison_before_the_trainings_names_the_missing_steps(tmp_path, capsys):
    assert AR.main(["--work", str(tmp_path), "--thresholds", "0.7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "synth, train noisy, audit t0.7, train clean_t0.7" in err
    assert AR.main(["--work", str(tmp_path), "--print-commands", "--thresholds", "0.7", "0.82"]) == 0
    out = capsys.readouterr().out
    assert out.count("--write-clean") == 2 and f"data.manifest={tmp_path}/clean_t0.82/manifest.json" in out


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_tiny_pipeline_end_to_end(tmp_path):
    """--tiny --run-all: synth, train, audit --write-clean, retrain, compare (a few minutes on 2 cores)."""
    work = tmp_path / "work"
    out = tmp_path / "r.json"
    assert AR.main(["--work", str(work), "--tiny", "--nproc", "1", "--thresholds", "0.7", "--run-all",
                    "--json-out", str(out), "--md-out", str(tmp_path / "r.md")]) == 0
    c = json.loads(out.read_text())["comparisons"]["t0.7"]
    assert c["cleaned"]["images"] < c["noisy"]["images"] and c["cleaning"]["outliers_dropped"] > 0
    for run in (c["noisy"], c["cleaned"]):
        assert run["trainer_verification"]["verification"]["accuracy"] == pytest.approx(
            run["accuracy"]["all pairs"]["accuracy"], abs=1e-4)  # the trainer's figure, recomputed here
        assert run["tar_all_pairs"]["all images"]["images"] == 80
    table = (tmp_path / "r.md").read_text()
    assert "| training images | 1127 |" in table and "TAR at FAR 1e-3" in table
