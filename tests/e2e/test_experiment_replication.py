"""benchmarks/experiment_replication.py: the Eq. 5 split of its feature-level world, and the --quick preset end to
end (JSON, markdown table, both PNGs, class counts against the planted Table 4 columns, paired statistics)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

import experiment_replication as ER
from benchmarks.lib.feature_training import method_config, train_run
from benchmarks.lib.stats import equivalent, paired
from benchmarks.lib.worlds import make_split, make_world, world_kwargs
from recordio_tools.overlap_split import planted_counts


def _world(ids=96, per_id=6):
    args = ER.parse_args(["--quick", "--ids", str(ids), "--images-per-id", str(per_id)])
    return make_world(0, **world_kwargs(args))


@pytest.mark.parametrize("share_images", [False, True])
def test_split_of_the_world_follows_eq5(share_images):
    world = _world()
    split = make_split(world, 4, 0.5, seed=3, share_images=share_images)
    counts = planted_counts(96, 4, 0.5)
    assert split["num_classes"] == counts["classes_naive"] == 96 + 4 * 12
    assert len(split["truth"]) == counts["conflicts"] == 48
    assert np.bincount(split["class_dataset"]).max() == counts["classes_dail"]
    person_of = {}
    for image, label in zip(split["image"], split["label"]):
        person_of.setdefault(int(label), set()).add(int(world["y"][image]))
    assert all(len(p) == 1 for p in person_of.values()) and len(person_of) == split["num_classes"]
    for a, b in split["truth"]:  # the two classes of a conflict are one person, in neighbouring subsets
        assert person_of[a] == person_of[b]
        assert (split["class_dataset"][b] - split["class_dataset"][a]) % 4 in (1, 3)
    # images dealt: each image once (a shared person's images split between its two classes); shared: twice
    assert len(split["image"]) == len(world["y"]) + (48 * 6 if share_images else 0)
    if not share_images:
        assert len(set(split["image"].tolist())) == len(world["y"])


def test_paired_interval():
    d = paired([0.5, 0.6, 0.7], [0.4, 0.5, 0.5])
    assert d["mean"] == pytest.approx(2 / 15) and d["lo"] < d["mean"] < d["hi"] and d["n"] == 3
    # t(0.975, 2) = 4.303: half width 4.303 * std / sqrt(3)
    assert d["hi"] - d["mean"] == pytest.approx(4.3027 * np.std([0.1, 0.1, 0.2], ddof=1) / np.sqrt(3), rel=1e-3)


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "experiment_replication.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "result.json").read_text())
    for png in ("tar_vs_r.png", "fig3_t2.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| r | arm | TAR@1e-3 |" in (tmp_path / "table.md").read_text()
    args = report["args"]
    rows = {(row["ratio"], row["method"]): row for row in report["summary"]["table"]}
    assert len(report["runs"]) == len(args["ratios"]) * len(args["arms"]) * len(args["seeds"])
    assert {r["seed"] for r in report["runs"]} == set(args["seeds"])
    for ratio in args["ratios"]:
        counts = planted_counts(args["ids"], args["k"], ratio)
        assert rows[ratio, "naive"]["classes"] == counts["classes_naive"]  # nothing merged
        assert rows[ratio, "dail"]["classes"] == counts["classes_dail"]  # one subset's softmax
        assert rows[ratio, "facefusion"]["classes"] <= counts["classes_naive"]
        for arm in args["arms"]:
            assert 0.0 <= rows[ratio, arm]["tar@0.001"] <= 1.0
    diff = report["summary"]["diffs"]["tar@0.001"][f"facefusion_auto-dail@r={args['ratios'][-1]}"]
    assert diff["n"] == len(args["seeds"]) and diff["lo"] <= diff["mean"] <= diff["hi"]
    assert report["criteria"] and all(isinstance(c["met"], bool) for c in report["criteria"])
    auto = [r for r in report["runs"] if r["method"] == "facefusion_auto"]
    assert all(r["boundary"]["readiness"] for r in auto)  # the auto arm watched the proxies before its boundary


def test_auto_arm_runs_the_product_boundary():
    """facefusion_auto runs the trainer's PhaseBoundary: readiness checks from the floor, then the boundary with a
    T1 decision, and the applied merge set set against the best fixed T1 of the same proxies."""
    args = ER.parse_args(["--quick", "--ids", "64", "--images-per-id", "4", "--heldout-ids", "16", "--heldout-images",
                          "4", "--steps", "40", "--batch", "32", "--readiness-every", "0.1"])
    world = make_world(0, **world_kwargs(args))
    split = make_split(world, args.k, 0.5, 0, False)
    out = train_run(world, split, "facefusion_auto", 0, args)
    boundary = out["boundary"]
    steps = [c["step"] for c in boundary["readiness"]]
    assert steps[0] == 4 and all(b - a == 4 for a, b in zip(steps, steps[1:])) and steps[-1] == boundary["step"] <= 20
    assert boundary["threshold"]["mode"] in ("valley", "no_valley")
    gap = boundary["vs_best_fixed_t1"]
    assert 0.40 <= gap["best_t1"] <= 0.95 and 0.0 <= gap["one_minus_jaccard"] <= 1.0
    assert out["classes_in_softmax"] == (np.bincount(split["class_dataset"]).max() if boundary["declined"]
                                         else out["classes"])


def test_equivalence_is_two_one_sided():
    inside = equivalent([0.501, 0.499, 0.502, 0.500, 0.498], [0.5] * 5, 0.005)
    assert inside["met"] and -0.005 < inside["lo90"] < inside["hi90"] < 0.005
    wide = equivalent([0.51, 0.49, 0.52, 0.50, 0.48], [0.5] * 5, 0.005)  # mean 0, interval too wide: not shown
    assert not wide["met"] and wide["mean"] == pytest.approx(0.0, abs=1e-12)
    assert not equivalent([0.5], [0.5], 0.005)["met"]  # one seed proves nothing


def test_seed_and_ratio_lists():
    args = ER.parse_args(["--seeds", "31,32,33", "--ratios", "0,0.5", "--fusion", "auto"])
    assert args.seeds == [31, 32, 33] and args.ratios == [0.0, 0.5]
    assert "facefusion" not in args.arms and "facefusion_auto" in args.arms
    assert (args.world, args.dim, args.latent, args.images_per_id) == ("calibrated", 512, 128, 20)
    stress = ER.parse_args(["--world", "lookalike", "--dim", "96"])
    assert (stress.dim, stress.latent, stress.family_size) == (96, 32, 4)


def test_grl_weight_and_start_per_method():
    args = ER.parse_args(["--quick", "--steps", "100", "--grl-weight", "dail=0.1,facefusion=0.2",
                          "--grl-start", "dail=0.5"])
    dail, fusion, naive = (method_config(m, args).grl for m in ("dail", "facefusion", "naive"))
    assert (dail.weight, dail.start_step) == (0.1, 50)
    assert (fusion.weight, fusion.start_step) == (0.2, 0)
    assert naive.weight == 0.0
    every = ER.parse_args(["--quick", "--grl-weight", "0.3"])
    assert set(every.grl_weight.values()) == {0.3}
    for bad in (["--grl-weight", "dial=0.1"], ["--grl-start", "1.5"], ["--grl-weight", "x"]):
        with pytest.raises(SystemExit):
            ER.parse_args(["--quick"] + bad)


def _short_run(*flags):
    args = ER.parse_args(["--quick", "--ids", "64", "--images-per-id", "4", "--heldout-ids", "16", "--heldout-images",
                          "4", "--steps", "12", "--batch", "32", *flags])
    world = make_world(0, **world_kwargs(args))
    split = make_split(world, args.k, 0.5, 0, False)
    return np.asarray(train_run(world, split, "facefusion", 0, args, dynamics_only=True)["t2"]["duplicate"])


def test_grl_changes_training_only_from_its_start_step():
    """The duplicates' proxy cosines at T2 (a continuous readout of the whole run to T2). Without clipping: the
    trainer's clipping norm counts the dataset classifier's gradient, which it has at weight 0 (the classifier
    trains, its reversed gradient is 0) and not before a later start step (its loss weighted 0)."""
    off = _short_run("--grad-clip", "0")
    never = _short_run("--grad-clip", "0", "--grl-weight", "facefusion=1.0", "--grl-start", "facefusion=0.5")
    on = _short_run("--grad-clip", "0", "--grl-weight", "facefusion=1.0", "--grl-start", "dail=0.5")  # from step 0
    np.testing.assert_array_equal(never, off)
    assert np.abs(on - off).max() > 1e-4
