"""benchmarks/experiment_pseudo_label_retrain.py: its world extends the replication's, the arms' training sets follow
the pseudo-labels, the per-sample weights reach the loss, and the --quick preset end to end (JSON with intervals,
table, PNG; the labeled-only arm is the replication's loop on the replication's world)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO

import experiment_pseudo_label_retrain as PR
import experiment_replication as ER
from benchmarks.lib.feature_training import train_run
from benchmarks.lib.worlds import make_world, world_kwargs
from fftrain.pseudo_label import PseudoLabels


def _args(*extra):
    return PR.parse_args(["--quick", *extra])


def test_world_is_the_replication_world_plus_an_unlabeled_collection():
    args = _args("--ids", "40", "--unlabeled-ids", "30", "--unlabeled-images", "4", "--overlap", "0.4")
    world = PR.make_pl_world(3, args)
    reference = make_world(3, **world_kwargs(args))
    for key in ("x", "y", "x_heldout", "y_heldout"):
        np.testing.assert_array_equal(world[key], reference[key])
    person, overlap = world["person_unlabeled"], world["overlap_unlabeled"]
    assert world["x_unlabeled"].shape == (30 * 4, args.input_dim)
    assert len(np.unique(person)) == 30 and np.bincount(np.unique(person, return_inverse=True)[1]).tolist() == [4] * 30
    assert len(np.unique(person[overlap])) == 12 and (person[overlap] < 40).all() and (person[~overlap] >= 40).all()
    # overlapping identities are new renderings of labeled latents: no unlabeled image repeats a labeled one
    assert not (world["x_unlabeled"][:, None, :] == world["x"][None, :, :]).all(-1).any()
    # ... yet closer to their identity's labeled images than to others' (the same latent)
    means = np.stack([world["x"][world["y"] == c].mean(0) for c in range(40)])
    xo = world["x_unlabeled"][overlap]
    nearest = np.argmin(((xo[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (nearest == person[overlap]).mean() > 0.5


def _pseudo_labels(clusters, overlap, nearest, weights):
    clusters, overlap = np.asarray(clusters), np.asarray(overlap, bool)
    n = len(clusters)
    return PseudoLabels(scores=np.zeros(n), nearest_class=np.asarray(nearest), overlap=overlap, disjoint=~overlap,
                        clusters=clusters, labels=clusters.copy(), weights=np.asarray(weights, np.float32),
                        p_wrong=np.zeros(n), num_clusters=int(clusters.max()) + 1,
                        assigned_classes=np.zeros(0, np.int64), separation=None, uncertainty=None)


def test_arm_splits_follow_the_pseudo_labels():
    args = _args("--ids", "6", "--images-per-id", "2", "--unlabeled-ids", "4", "--unlabeled-images", "2",
                 "--overlap", "0.5", "--heldout-ids", "4", "--heldout-images", "2")
    world = PR.make_pl_world(0, args)
    world["person_unlabeled"] = np.array([2, 2, 5, 5, 6, 6, 7, 7])  # two labeled persons, two new ones
    world["overlap_unlabeled"] = world["person_unlabeled"] < 6
    # sample 4-5 (person 6) split into clusters 0 and 1, person 7 is cluster 2, person 2's images cluster 3;
    # person 5 called overlapping (nearest class 5), sample 1 dropped (-1)
    sep = _pseudo_labels([3, -1, -1, -1, 0, 1, 2, 2], [0, 0, 1, 1, 0, 0, 0, 0], [2, 2, 5, 5, 0, 0, 1, 1],
                         [0.5, 0, 0, 0, 0.9, 0.8, 1.0, 0.7])
    pl = {"sep": sep, "all": sep}
    disjoint = PR.arm_data(pl, "disjoint", 6)
    assert disjoint["index"].tolist() == [0, 4, 5, 6, 7] and disjoint["label"].tolist() == [9, 6, 7, 8, 8]
    assert disjoint["weight"] is None and disjoint["dataset"] == 0
    both = PR.arm_data(pl, "both", 6)
    assert both["index"].tolist() == [0, 4, 5, 6, 7, 2, 3] and both["label"].tolist()[-2:] == [5, 5]
    soft = PR.arm_data(pl, "disjoint_soft_ff", 6)
    combined, split = PR.arm_world_and_split(world, soft)
    n_labeled = len(world["y"])
    assert len(combined["x"]) == n_labeled + 8 and split["num_classes"] == 6 + 4
    assert split["image"][n_labeled:].tolist() == [n_labeled + i for i in (0, 4, 5, 6, 7)]
    assert split["class_dataset"].tolist() == [0] * 6 + [1] * 4  # the clusters are the second dataset
    np.testing.assert_allclose(split["weight"], [1.0] * n_labeled + [0.5, 0.9, 0.8, 1.0, 0.7])
    # true pairs: cluster 3 (person 2) with labeled class 2; clusters 0 and 1 (both person 6) with each other
    assert sorted(map(tuple, split["truth"])) == [(2, 9), (6, 7)]
    assert PR.arm_world_and_split(world, disjoint)[1]["class_dataset"].tolist() == [0] * 10


def test_sample_weights_reach_the_loss():
    args = _args("--ids", "30", "--images-per-id", "4", "--heldout-ids", "20", "--heldout-images", "3",
                 "--steps", "15", "--batch", "32")
    world = make_world(0, **world_kwargs(args))
    split = PR.labeled_split(world)
    plain = train_run(world, split, "naive0", 0, args)
    ones = train_run(world, {**split, "weight": np.ones(len(split["image"]), np.float32)}, "naive0", 0, args)
    half = train_run(world, {**split, "weight": np.full(len(split["image"]), 0.25, np.float32)}, "naive0", 0, args)
    for metric in ("tar@0.001", "rank1"):
        assert ones[metric] == pytest.approx(plain[metric], abs=2e-3)
    assert (half["tar@0.001"], half["rank1"]) != (plain["tar@0.001"], plain["rank1"])


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "experiment_pseudo_label_retrain.py"),
                           "--quick", "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "result.json").read_text())
    assert (tmp_path / "tar_by_arm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| arm | paper | TAR@1e-3 |" in (tmp_path / "table.md").read_text()
    args = report["args"]
    assert args["arms"] == list(PR.ARMS)
    runs = {(r["arm"], r["seed"]): r for r in report["runs"]}
    assert len(runs) == len(PR.ARMS) * args["seeds"]
    for name, diff in report["summary"]["diffs"]["tar@0.001"].items():
        assert diff["n"] == args["seeds"] and diff["lo"] <= diff["mean"] <= diff["hi"], name
    assert {c["criterion"].split()[0] for c in report["criteria"]} == {"P1", "P2", "P3", "P4", "P5", "F1", "F2",
                                                                         "F3", "S1", "S2"}
    for seed in range(args["seeds"]):
        q = report["pseudo_labels"][seed]
        assert 0 <= q["weibull"]["fpr"] <= 1 and 0 <= q["weibull"]["fnr"] <= 1 and 0 < q["disjoint"]["pairwise_f"] <= 1
        assert runs["all", seed]["images"] > runs["disjoint", seed]["images"] > runs["labeled", seed]["images"]
        assert runs["disjoint_soft", seed]["mean_weight"] < 1 == runs["disjoint", seed]["mean_weight"]
        assert runs["disjoint_soft_ff", seed]["classes"] <= runs["disjoint_soft", seed]["classes"]  # fusion merged
        assert runs["all_soft_ff", seed]["merge"]["predicted_pairs"] > 0
    # the baseline arm is the replication's loop on the replication's world, one dataset, agnostic from step 0
    rargs = ER.parse_args(["--quick", "--ids", str(args["ids"]), "--images-per-id", str(args["images_per_id"]),
                           "--heldout-ids", str(args["heldout_ids"]), "--heldout-images", str(args["heldout_images"]),
                           "--steps", str(args["steps"]), "--batch", str(args["batch"])])
    rargs.k = args["k"]  # the dataset classifier's width: its gradient counts in the clipped norm, as in the trainer
    world = make_world(0, **world_kwargs(rargs))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the experiment's workers: the same reduction order
    try:
        again = train_run(world, PR.labeled_split(world), "naive0", 0, rargs)
    finally:
        torch.set_num_threads(threads)
    for metric in ("tar@0.001", "tar@0.0001", "rank1"):
        assert again[metric] == runs["labeled", 0][metric]
