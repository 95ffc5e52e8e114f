"""`fftrain audit`: each computation against a small brute-force reference, the leakage-corrected
accuracy, the cleaned label space, the synthetic set's planted noise, and bad input (one line, exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fftrain.audit.clean import clean_label_space
from fftrain.audit.distributions import equal_error_rate, sample_pairs
from fftrain.audit.inter import fusion_twin, inter_class
from fftrain.audit.intra import class_centres, intra_class
from fftrain.audit.leakage import leakage, nearest_centres
from fftrain.evaluation.metrics import verification_metrics


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# intra-class


def test_intra_class_cosines_match_a_loop_with_leave_one_out_for_small_classes():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 3, 3])
    emb = _unit(rng.standard_normal((labels.size, 8)))
    sums = np.zeros((4, 8))
    np.add.at(sums, labels, emb)
    counts = np.bincount(labels, minlength=4)
    proxies = _unit(rng.standard_normal((4, 8)))
    got = intra_class(emb.astype(np.float16), labels, sums, counts, proxies, np.arange(4), threshold=0.3,
                      loo_max_images=3, chunk=4)
    for i, c in enumerate(labels):
        members = [j for j in np.flatnonzero(labels == c) if counts[c] > 3 or j != i]
        if not members:
            assert np.isnan(got.cos_centre[i])  # class 2: one image, nothing to compare with
            continue
        centre = emb[members].mean(0)
        want = emb[i] @ centre / np.linalg.norm(centre)
        assert got.cos_centre[i] == pytest.approx(want, abs=2e-3)  # float16 rows
        assert got.cos_proxy[i] == pytest.approx(emb[i] @ proxies[c], abs=2e-3)
    assert got.leave_one_out.tolist() == (counts[labels] <= 3).tolist()
    assert got.outliers.tolist() == np.flatnonzero(got.cos_centre < 0.3).tolist()


def test_an_image_of_another_person_is_an_outlier_of_its_class():
    rng = np.random.default_rng(1)
    people = _unit(rng.standard_normal((3, 16)))
    labels = np.repeat([0, 1, 2], 6)
    emb = _unit(people[labels] + 0.2 * rng.standard_normal((18, 16)))
    emb[4] = _unit(people[2:3] + 0.2 * rng.standard_normal((1, 16)))[0]  # filed under 0, shows person 2
    sums = np.zeros((3, 16))
    np.add.at(sums, labels, emb)
    got = intra_class(emb, labels, sums, np.bincount(labels), people, np.arange(3), threshold=0.3,
                      loo_max_images=20)
    assert got.outliers.tolist() == [4]
    assert np.allclose(class_centres(sums, np.bincount(labels)), _unit(sums))


# ---------------------------------------------------------------------------------------------
# inter-class


def _planted_centres(seed=0):
    rng = np.random.default_rng(seed)
    class_dataset = np.repeat([0, 1, 2], [10, 8, 6])
    centres = _unit(rng.standard_normal((24, 32)))
    for a, b in [(1, 7), (2, 12), (12, 19), (15, 17)]:  # within 0, across 0-1, across 1-2, within 1
        centres[b] = _unit(centres[a:a + 1] + 0.1 * rng.standard_normal((1, 32)))[0]
    return centres.astype(np.float32), class_dataset


def test_inter_class_pairs_equal_all_pairs_above_the_threshold():
    centres, class_dataset = _planted_centres()
    got = inter_class(centres, class_dataset, threshold=0.7, knn_k=30, max_component=6, backend="torch")
    sims = centres @ centres.T
    want = sorted((a, b) for a in range(24) for b in range(a + 1, 24) if sims[a, b] > 0.7)
    assert got.pairs.tolist() == [list(p) for p in want]
    assert got.within.tolist() == [class_dataset[a] == class_dataset[b] for a, b in want]
    assert [c.members for c in got.plan.components] == [[1, 7], [2, 12, 19], [15, 17]]
    counts = np.zeros((3, 3), int)
    for a, b in want:
        counts[class_dataset[a], class_dataset[b]] += 1
        if class_dataset[a] != class_dataset[b]:
            counts[class_dataset[b], class_dataset[a]] += 1
    assert got.counts.tolist() == counts.tolist()
    faiss = inter_class(centres, class_dataset, threshold=0.7, knn_k=30, max_component=6, backend="faiss")
    assert faiss.pairs.tolist() == got.pairs.tolist()


def test_fusion_twin_is_the_fusion_step():
    from fftrain.config import FusionConfig
    from fftrain.fusion import run_fusion

    centres, class_dataset = _planted_centres(1)
    config = FusionConfig(t1=0.7, knn_k=10, max_component=6, same_dataset_policy="skip", backend="torch")
    twin = fusion_twin(centres, class_dataset, None, config)
    step = run_fusion(torch.from_numpy(centres), [], class_dataset=torch.from_numpy(class_dataset), label_map=None,
                      source_info=None, config=config)
    assert [c.members for c in twin.components] == [c.members for c in step.components] == [[2, 12, 19]]
    assert twin.old_to_new.tolist() == step.old_to_new.tolist()


# ---------------------------------------------------------------------------------------------
# leakage


def test_nearest_centres_and_the_accuracy_without_leaked_pairs():
    rng = np.random.default_rng(2)
    dim = 64  # random unit vectors of 64 dimensions are far below 0.7 from each other (std 0.125)
    centres = _unit(rng.standard_normal((5, dim))).astype(np.float32)
    n_pairs = 40
    persons = _unit(rng.standard_normal((2 * n_pairs, dim)))
    issame = np.arange(n_pairs) % 2 == 0
    persons[1::2][issame] = persons[0::2][issame]
    emb = _unit(persons + 0.12 * rng.standard_normal(persons.shape))
    leaked_pairs = [3, 8, 11, 20]
    for j in leaked_pairs:  # the first image of these pairs is a training person
        emb[2 * j] = _unit(centres[j % 5][None] + 0.02 * rng.standard_normal((1, dim)))[0]
    emb = emb.astype(np.float32)
    sims, ids = nearest_centres(emb, centres, 2)
    brute = emb @ centres.T
    assert ids[:, 0].tolist() == brute.argmax(1).tolist()
    assert np.allclose(sims[:, 0], brute.max(1), atol=1e-5)
    got = leakage("v", emb, issame, centres, threshold=0.7)
    assert np.flatnonzero(got.leaked_pairs).tolist() == leaked_pairs
    assert got.leaked_images.sum() == 4 and got.nearest_class[2 * 3] == 3
    keep = np.setdiff1d(np.arange(n_pairs), leaked_pairs)
    rows = np.stack([emb[2 * keep], emb[2 * keep + 1]], 1).reshape(-1, dim)
    want = verification_metrics(rows, issame[keep])
    assert got.unleaked["num_pairs"] == 36 and got.unleaked["accuracy"] == pytest.approx(want.accuracy)
    assert got.full["accuracy"] == pytest.approx(verification_metrics(emb, issame).accuracy)


def test_too_few_unleaked_pairs_give_no_figure_and_a_note():
    centres = np.eye(4, dtype=np.float32)
    emb = np.repeat(centres[:2], 10, axis=0)  # every image is a training centre
    got = leakage("all_leaked", emb, np.ones(10, bool), centres, threshold=0.7)
    assert got.unleaked is None and "not reported" in got.notes[0]


# ---------------------------------------------------------------------------------------------
# distributions


def test_eer_matches_a_threshold_sweep():
    rng = np.random.default_rng(3)
    genuine, impostor = rng.normal(0.6, 0.15, 700), rng.normal(0.1, 0.15, 900)
    eer, at = equal_error_rate(genuine, impostor)
    sweep = min(np.concatenate([genuine, impostor]), key=lambda t: abs(np.mean(impostor >= t) - np.mean(genuine < t)))
    assert at == sweep
    assert eer == pytest.approx((np.mean(impostor >= sweep) + np.mean(genuine < sweep)) / 2)
    assert 0.03 < eer < 0.1
    assert equal_error_rate(np.array([0.9]), np.array([0.1]))[0] == 0.0
    assert equal_error_rate(np.zeros(0), np.array([0.1])) == (None, None)


def test_sampled_pairs_are_two_images_of_one_class_or_of_two():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(20), rng.integers(1, 6, 20))
    ids = np.arange(labels.size)
    (ga, gb), (ia, ib) = sample_pairs(labels, ids, 500, rng)
    assert ga.size == 500 and np.all(labels[ga] == labels[gb]) and np.all(ga != gb)
    assert ia.size > 450 and np.all(labels[ia] != labels[ib])


# ---------------------------------------------------------------------------------------------
# the cleaned label space


def test_clean_label_space_merges_removes_and_renumbers_per_dataset():
    class_dataset = np.array([0, 0, 0, 0, 1, 1, 1])
    new_dataset, new_local = clean_label_space(class_dataset, [[1, 3], [2, 5]], removed=[6])
    # 0 -> (0,0); {1,3} -> (0,1); {2,5} -> dataset of 2 = 0, local 2; 4 -> (1,0); 6 removed
    assert new_dataset.tolist() == [0, 0, 0, 0, 1, 0, -1]
    assert new_local.tolist() == [0, 1, 2, 1, 0, 2, -1]
    _, removed_group = clean_label_space(class_dataset, [[1, 3]], removed=[3])
    assert removed_group.tolist() == [0, -1, 1, -1, 0, 1, 2]


# ---------------------------------------------------------------------------------------------
# planted noise in the synthetic set


def test_planted_noise_ground_truth_matches_the_records(noisy):
    from recordio_tools.recordio import RecordReader, class_id_of, unpack
    from recordio_tools.synthetic import (_NOISE_IMAGES, STYLES, _latent, make_plan, plant_noise, render_person,
                                          tiny_config)

    truth = json.loads((noisy / "noise.json").read_text())
    summary = json.loads((noisy / "synth.json").read_text())
    assert summary["noise"] == {"file": "noise.json", "mislabeled_images": len(truth["mislabeled"]),
                                "duplicate_pairs": len(truth["duplicates"]), "leaked_ids": 4}
    assert len(truth["mislabeled"]) == sum(round(0.05 * d["num_images"]) for d in summary["datasets"])
    config = tiny_config(noise_mislabel=0.05, noise_duplicates=0.1, noise_leaked_ids=4)
    plan = make_plan(config)
    noise = plant_noise(plan)
    for dup in truth["duplicates"]:
        d = [x.name for x in plan.datasets].index(dup["dataset"])
        a, b = dup["local_labels"]
        assert plan.datasets[d].persons[a] == plan.datasets[d].persons[b]
    for leak in truth["leaked"]:
        d = [x.name for x in plan.datasets].index(leak["dataset"])
        person = plan.datasets[d].persons[leak["local_label"]]
        assert person in plan.verification_persons and leak["verification_pairs"]
        assert all(person in plan.pairs[j][:2] for j in leak["verification_pairs"])
    # the first wrong image of a class is the true person rendered from the noise stream
    first = {}
    for row in truth["mislabeled"]:
        first.setdefault((row["dataset"], row["source_class"]), row)
    row = sorted(first.values(), key=lambda r: r["source_class"])[0]
    d = [x.name for x in plan.datasets].index(row["dataset"])
    local = row["source_class"] - plan.datasets[d].class_offset
    wrong = noise.wrong[(d, local)]
    rng = np.random.default_rng([config.seed, _NOISE_IMAGES, d, local])
    knobs = (config.jpeg_quality, config.identity_spread, config.image_drift)
    jpeg = render_person(_latent(config.seed, plan.datasets[d].persons[wrong[0]]), 1, STYLES[row["dataset"]], rng,
                         *knobs)[0]
    found = {}
    for r in truth["mislabeled"]:
        folder = noisy / r["dataset"]
        with RecordReader(str(folder / r["shard"]), str(folder / r["shard"].replace(".rec", ".idx"))) as reader:
            header, image = unpack(reader.read(r["key"]))
        assert class_id_of(header) == r["source_class"] != r["true_source_class"]
        found[(r["dataset"], r["shard"], r["key"])] = image
    assert jpeg in found.values()


def test_noise_options_off_leave_the_plan_untouched():
    from recordio_tools.synthetic import make_plan, plant_noise, tiny_config

    plan = make_plan(tiny_config())
    before = [list(d.persons) for d in plan.datasets]
    assert not plant_noise(plan).active
    assert [d.persons for d in plan.datasets] == before


def test_calibration_impostors_of_each_statistic():
    from fftrain.audit.calibrate import centre_pair_impostors, identity_groups, intra_threshold, nearest_other_identity

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 8)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    everything = centre_pair_impostors(centres, np.arange(6), max_pairs=100, seed=0)
    a, b = np.triu_indices(6, 1)
    assert np.allclose(np.sort(everything), np.sort(np.einsum("ij,ij->i", centres[a], centres[b])), atol=1e-6)
    assert centre_pair_impostors(centres, np.arange(6), max_pairs=10, seed=0).size == 10
    groups = identity_groups(6, np.array([[0, 1]]))
    assert groups[0] == groups[1] and len(set(groups.tolist())) == 5
    labels = np.array([0, 2])  # an image of class 0 is class 1's person too: class 1 is not its impostor
    images = centres[[1, 3]]
    got = nearest_other_identity(images, labels, centres, np.ones(6, bool), groups, probes=10, seed=0)
    sims = images @ centres.T
    assert got[0] == pytest.approx(sims[0, 2:].max()) and got[1] == pytest.approx(np.delete(sims[1], 2).max())
    other = rng.normal(0.0, 0.2, 5000)  # an image against another class's centre
    clean = rng.normal(0.7, 0.05, 2000)
    noisy = np.concatenate([clean, rng.normal(0.0, 0.2, 200), [np.nan]])
    intra = intra_threshold("auto", noisy, other, frr=0.01)
    assert intra.how.startswith("auto: label noise estimated at") and 0.3 < intra.value < 0.6
    assert intra.model["weight"] == pytest.approx(200 / 2200, abs=0.025)  # ~100 noise scores below the median and intra.far < 1e-2
    assert intra.sample_far == pytest.approx(np.mean(noisy[:-1] < intra.value))
    no_noise = intra_threshold("auto", clean, other, frr=0.01)
    assert no_noise.value == pytest.approx(np.quantile(clean, 0.01), abs=0.005) and "no label noise" in no_noise.how


def test_the_noise_sample_is_another_identity_of_the_images_own_dataset():
    from fftrain.audit.calibrate import other_class_scores

    rng = np.random.default_rng(1)
    centres = rng.standard_normal((8, 4)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    class_dataset = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    groups = np.array([0, 0, 2, 3, 4, 5, 6, 7])  # classes 0 and 1 are one person
    labels = np.repeat(np.arange(8), 50)
    images = centres[labels]
    got = other_class_scores(images, labels, centres, class_dataset, np.ones(8, bool), groups, probes=400, seed=0)
    sims = centres @ centres.T
    allowed = {c: {o for o in range(8) if groups[o] != groups[c] and (class_dataset[o] == class_dataset[c]
                                                                        or class_dataset[c] == 2)} for c in range(8)}
    for c, score in zip(labels, got):  # probes=400 takes every image, in key order
        assert any(abs(score - sims[c, o]) < 1e-5 for o in allowed[c])
    assert got.size == 400 and np.allclose(got[:50], sims[0, 2], atol=1e-5)  # class 0's only other identity


# ---------------------------------------------------------------------------------------------
# the command: bad input is one line and exit 2, before any work


@pytest.fixture(scope="module")
def checkpoint(noisy, tmp_path_factory):
    from audit_helpers import make_checkpoint
    from recordio_tools.manifest import load_manifest

    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), load_manifest(str(noisy)), embedding_size=32)


def _audit(capsys, *argv):
    from fftrain.cli import main

    capsys.readouterr()
    code = main(["audit", *map(str, argv), "--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_checkpoint_of_another_embedding_size_is_refused(noisy, checkpoint, tmp_path, capsys):
    import shutil

    other = tmp_path / "ckpt"
    shutil.copytree(checkpoint, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["embedding_size"] = 64
    (other / "meta.json").write_text(json.dumps(meta))
    code, out, err = _audit(capsys, "--checkpoint", other, "--data", noisy, "--out", tmp_path / "a")
    # refused by the audit's own check or, first, by the checkpoint loader's size check: one line either way
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(other) in err and ("embedding_size=64" in err or "[180, 64]" in err)
    assert not (tmp_path / "a").exists()


def test_a_manifest_that_does_not_match_the_checkpoint_is_refused(checkpoint, tmp_path, capsys):
    from cli_helpers import make_dataset
    from recordio_tools.manifest import write_manifest

    info = make_dataset(tmp_path / "other", "other", [2, 3])
    write_manifest(str(tmp_path / "train"), [info], [str(tmp_path / "other")])
    code, out, err = _audit(capsys, "--checkpoint", checkpoint, "--data", tmp_path / "train", "--out", tmp_path / "a")
    assert code == 2 and err.count("\n") == 1 and "does not match checkpoint" in err
    assert "('other', 2)" in err and not (tmp_path / "a").exists()


def test_a_verification_set_with_no_pairs_is_refused(noisy, checkpoint, tmp_path, capsys):
    from recordio_tools.verification_bin import write_verification_bin

    write_verification_bin(tmp_path / "empty.bin", [], [])
    code, out, err = _audit(capsys, "--checkpoint", checkpoint, "--data", noisy, "--verification",
                            tmp_path / "empty.bin", "--out", tmp_path / "a")
    assert code == 2 and err.strip() == f"fftrain audit: error: {tmp_path / 'empty.bin'}: verification file holds no pairs"


def test_an_out_folder_the_audit_did_not_write_is_refused(noisy, checkpoint, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, out, err = _audit(capsys, "--checkpoint", checkpoint, "--data", noisy, "--out", tmp_path / "mine")
    assert code == 2 and "not an audit folder" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_a_weak_model_is_warned_about_in_the_first_line_and_thresholds_are_calibrated(noisy, checkpoint, tmp_path,
                                                                                       capsys):
    code, out, err = _audit(capsys, "--checkpoint", checkpoint, "--data", noisy, "--verification",
                            noisy / "verification.bin", "--out", tmp_path / "a", "--pairs-per-dataset", "200")
    assert code == 0, err
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    first = out.splitlines()[0]
    assert first.startswith("WARNING: this model cannot separate identities at the papers' thresholds")
    for name in ("inter", "leak"):  # an untrained network: most impostors lie above 0.7
        t = report["thresholds"][name]
        assert t["paper"] == 0.7 and t["paper_far"] > 0.01 and f"{name} 0.7 has impostor FAR" in first
        assert t["value"] > 0.7 and t["how"].startswith("auto: impostor FAR 0.0001") and t["target"] == 1e-4
        assert t["far"] == pytest.approx(1e-4) and t["model"]["family"] in t["how"]  # read off the fitted tail
        assert f"{name:<5} {t['value']:.3f}" in out
    leak = report["leakage"][0]
    assert leak["leaked_pairs"] <= 0.05 * leak["pairs"] and report["warnings"] == [first[len("WARNING: "):]]


# ---------------------------------------------------------------------------------------------
# end to end on the tiny noisy set, and the fusion twin against `fftrain fuse --dry-run`


@pytest.mark.slow
def test_audit_end_to_end_agrees_with_fuse_dry_run(noisy, tmp_path, capsys):
    from audit_helpers import make_checkpoint
    from fftrain.cli import main
    from recordio_tools.manifest import load_manifest

    manifest = load_manifest(str(noisy))
    rng = torch.Generator().manual_seed(0)
    proxies = torch.randn(manifest.num_classes, 64, generator=rng)
    for a, b in [(3, 40), (41, 100), (100, 170), (5, 9)]:  # across, across (a chain), within one dataset
        proxies[b] = proxies[a] + 0.05 * torch.randn(64, generator=rng)
    ckpt = make_checkpoint(tmp_path / "ckpt", manifest, proxies=proxies, embedding_size=64)
    assert main(["fuse", "--checkpoint", ckpt, "--t1", "0.7", "--dry-run", "--out", str(tmp_path / "fuse")]) == 0
    fuse = json.loads((tmp_path / "fuse" / "fusion_report.json").read_text())
    code, out, err = _audit(capsys, "--checkpoint", ckpt, "--data", noisy, "--verification", noisy / "verification.bin",
                            "--out", tmp_path / "audit", "--write-clean", tmp_path / "clean", "--pairs-per-dataset",
                            "300", "--inter-threshold", "0.7")
    assert code == 0, err
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    twin = report["fusion_twin"]["proxies"]
    fused = sorted(sorted(m["source_class"] for m in c["members"]) for c in fuse["merged"])
    assert twin["components"] == fused == [[3, 40], [41, 100, 170]]
    assert twin["num_candidate_pairs"] == fuse["stats"]["num_candidate_pairs"]
    for name in ("outliers.csv", "duplicate_pairs.csv", "leaked_verification.csv", "intra_class.png",
                 "genuine_impostor.png", "leakage.png"):
        assert (tmp_path / "audit" / name).exists(), name
    assert not (tmp_path / "audit" / "embeddings.npy").exists()
    assert "intra-class" in out and "leakage verification" in out and len(out.splitlines()) < 25
    intra, inter = report["thresholds"]["intra"], report["thresholds"]["inter"]
    assert intra["how"].startswith("auto: genuine lower tail 0.01") and "ArcFace" in intra["source"]
    assert intra["paper"] == 0.3 and 0 <= intra["far"] <= 0.01 and intra["rate"] == "frr"
    assert inter["value"] == 0.7 and inter["how"] == "given" and inter["target"] is None
    clean = json.loads((tmp_path / "clean" / "manifest.json").read_text())["audit_clean"]
    assert clean["images_out"] == clean["images_in"] - clean["outliers_dropped"] - clean["images_of_removed_classes"]
    from fftrain.data.records import RecordSet

    records = RecordSet(load_manifest(str(tmp_path / "clean")))
    assert len(records) == clean["images_out"]


# ---------------------------------------------------------------------------------------------
# the embedding pass: two gloo ranks share the images and give what one process gives


def _embed(ctx, manifest_dir, work):
    from fftrain.audit.embed import embed_training_set
    from fftrain.model.backbones import build_backbone
    from fftrain.data.records import RecordSet
    from recordio_tools.manifest import load_manifest

    torch.manual_seed(0)
    backbone = build_backbone("iresnet_tiny", embedding_size=16).eval()
    records = RecordSet(load_manifest(manifest_dir))
    out = embed_training_set(backbone, records, records.num_classes, 16, ctx=ctx, work_dir=work, chunk=50,
                             progress=False)
    return np.asarray(out.embeddings, dtype=np.float32), out.labels, out.class_sums, out.class_counts


@pytest.mark.slow
def test_ranks_share_the_embedding_pass(noisy, tmp_path):
    from dist_harness import run_distributed
    from fftrain.distributed import single_process_context
    from recordio_tools.manifest import read_dataset_info, write_manifest

    info = read_dataset_info(str(noisy / "asian_celeb"))  # the first dataset of the tiny set: 185 images
    write_manifest(str(tmp_path / "one"), [info], [str(noisy / "asian_celeb")])
    (tmp_path / "w1").mkdir()
    (tmp_path / "w2").mkdir()
    ref = _embed(single_process_context(), str(tmp_path / "one"), str(tmp_path / "w1"))
    got = run_distributed(_embed, 2, args=(str(tmp_path / "one"), str(tmp_path / "w2")))
    assert ref[0].shape == (185, 16) and np.allclose(np.linalg.norm(ref[0], axis=1), 1, atol=2e-3)
    for emb, labels, sums, counts in got:
        assert np.allclose(emb, ref[0], atol=1e-3) and np.array_equal(labels, ref[1])
        assert np.allclose(sums, ref[2], atol=1e-2) and np.array_equal(counts, ref[3])
    assert ref[3].sum() == 185


# ---------------------------------------------------------------------------------------------
# the cleaned training set


def _two_dataset_set(tmp_path):
    from cli_helpers import make_dataset
    from recordio_tools.manifest import load_manifest, write_manifest

    a = make_dataset(tmp_path / "a", "a", [3, 2, 2], class_offset=0, num_shards=2)
    b = make_dataset(tmp_path / "b", "b", [2, 3], class_offset=3, seed=1)
    write_manifest(str(tmp_path / "train"), [a, b], [str(tmp_path / "a"), str(tmp_path / "b")])
    return load_manifest(str(tmp_path / "train"))


@pytest.mark.parametrize("merge_across", [False, True])
def test_write_clean_set_drops_merges_and_removes(tmp_path, merge_across):
    from fftrain.audit.clean import write_clean_set
    from fftrain.data.records import RecordSet
    from recordio_tools.manifest import load_manifest

    manifest = _two_dataset_set(tmp_path)
    records = RecordSet(manifest)
    source = [records.read(k) for k in range(len(records))]
    # a: classes 0 1 2, b: 3 4; 0~2 inside a, 1~3 across (moves into a), 4 removed
    components = [[0, 2]] + ([[1, 3]] if merge_across else [])
    summary = write_clean_set(str(tmp_path / "clean"), manifest, records, drop_keys=np.array([1]),
                              components=components, removed_classes=[4], record={"note": "test"}, progress=False)
    new_dataset, new_local = clean_label_space(manifest.class_dataset(), components, [4])
    clean = RecordSet(load_manifest(str(tmp_path / "clean")))
    offsets = clean.manifest.class_offsets()
    want = sorted((offsets[new_dataset[c]] + new_local[c], bytes(j)) for k, (j, c) in enumerate(source)
                  if k != 1 and new_local[c] >= 0)
    got = sorted((c, bytes(j)) for j, c in (clean.read(k) for k in range(len(clean))))
    assert got == want
    assert summary["images_out"] == len(want) == summary["images_in"] - 1 - summary["images_of_removed_classes"]
    assert [d.num_classes for d in clean.manifest.datasets] == ([2, 0] if merge_across else [2, 1])
    body = json.loads((tmp_path / "clean" / "manifest.json").read_text())["audit_clean"]
    assert body["note"] == "test" and body["removed_classes"] == [4] and body["merged_components"] == components
    clean_map = json.loads((tmp_path / "clean" / "clean_map.json").read_text())["clean_class"]
    assert clean_map[4] == -1 and clean_map[0] == clean_map[2]


def test_write_clean_refuses_a_folder_it_did_not_write(tmp_path):
    from fftrain.audit.clean import write_clean_set
    from fftrain.audit.inputs import AuditError
    from fftrain.data.records import RecordSet

    manifest = _two_dataset_set(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.txt").write_text("keep")
    with pytest.raises(AuditError, match="not a cleaned set written by fftrain audit"):
        write_clean_set(str(tmp_path / "mine"), manifest, RecordSet(manifest), drop_keys=np.array([], int),
                        components=[], removed_classes=[], record={}, progress=False)
    assert (tmp_path / "mine" / "x.txt").read_text() == "keep"
