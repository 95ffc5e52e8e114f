"""`fftrain pseudo-label` as users run it: a trained checkpoint, a synthetic unlabeled collection
(`synth --unlabeled`), the dataset it writes, `recordio_tools build` with it as a seventh dataset,
and training through fusion on the result; bad input gets one line and exit status 2.

Slow: one short training run (module fixture) and one more on the built set.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fftrain.cli import main as fftrain_main
from train_helpers import metrics, torchrun_env, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(synthetic set with unlabeled/, checkpoint of a short run on it)."""
    from recordio_tools.synthetic import generate_unlabeled, tiny_config, generate

    root = tmp_path_factory.mktemp("pl")
    synth = root / "set"
    config = tiny_config(seed=0)
    generate(config, str(synth), progress=False)
    generate_unlabeled(config, str(synth / "unlabeled"), num_ids=30, overlap=0.5, images_per_id=6, progress=False)
    run = root / "run"
    train(synth, run, nproc=1, optim__total_steps=8, optim__lr_milestones="[6]", fusion__t2=1.0,
          data__verification="[]")
    return synth, run / "checkpoints" / "step-00000008"


def _run(capsys, *args) -> tuple[int, str]:
    code = fftrain_main(["pseudo-label", *map(str, args)])
    return code, capsys.readouterr().err


def test_pseudo_labels_images_and_trains_as_a_seventh_dataset(world, tmp_path, capsys):
    from recordio_tools.cli import main as tools_main
    from recordio_tools.manifest import load_manifest, read_dataset_info
    from recordio_tools.synthetic import DATASET_NAMES

    synth, checkpoint = world
    out = tmp_path / "pseudo"
    # an 8-step network does not separate identities into two modes; say there is no overlap
    code, err = _run(capsys, "--checkpoint", checkpoint, "--unlabeled", synth / "unlabeled", "--out", out,
                     "--overlap", "none", "--min-cluster-size", "2", "--truth", synth / "unlabeled" / "truth.json")
    assert code == 0, err
    info = read_dataset_info(str(out))
    weights = np.load(out / info.sample_weights, allow_pickle=False)
    assert weights.shape == (info.num_images,) and np.all((weights >= 0) & (weights <= 1))
    report = json.loads((out / "pseudo_label_report.json").read_text())
    assert report["written"] == info.num_images and report["classes"] == info.num_classes >= 2
    assert set(report["truth"]["clustering"]) >= {"pairwise", "bcubed", "nmi"}
    assert report["edge_threshold"]["how"].startswith("the backend's default")  # --overlap none: no reference pairs
    for png in ("max_cosine_hist.png", "cluster_sizes.png", "margin_hist.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assigned = np.load(out / "assignments.npz", allow_pickle=False)
    assert len(assigned["label"]) == report["num_samples"]

    train_set = tmp_path / "train"
    assert tools_main(["build", "--out", str(train_set), *[str(synth / n) for n in DATASET_NAMES], str(out)]) == 0
    manifest = load_manifest(str(train_set))
    assert manifest.datasets[-1].name == "pseudo" and manifest.datasets[-1].sample_weights
    run = tmp_path / "run"
    proc = train(synth, run, nproc=2, data__manifest=str(train_set), data__verification="[]", optim__total_steps=6,
                 optim__lr_milestones="[4]", fusion__t2=0.5)
    steps = metrics(run)
    assert [steps[s]["phase"] for s in (3, 4)] == ["dail", "agnostic"]
    assert all(np.isfinite(r["loss/cls"]) for r in steps.values())
    assert "fusion at step 3" in proc.stdout


def _embeddings_file(tmp_path, rows: np.ndarray) -> str:
    path = tmp_path / "emb.npy"
    np.save(path, rows.astype(np.float32), allow_pickle=False)
    return str(path)


def _proxies_like(checkpoint, n, rng, overlap: bool) -> np.ndarray:
    from fftrain.training.checkpoint import load_proxies_from_checkpoint

    proxies = torch.nn.functional.normalize(load_proxies_from_checkpoint(str(checkpoint)), dim=1).numpy()
    if overlap:  # every image a close copy of a labeled class
        return proxies[rng.integers(0, len(proxies), n)] + 0.02 * rng.standard_normal((n, proxies.shape[1]))
    return rng.standard_normal((n, proxies.shape[1]))  # no image near any class


@pytest.mark.parametrize("case", ["no_overlap", "all_overlap"])
def test_one_mode_of_scores_is_refused_with_a_hint(world, tmp_path, capsys, case):
    from recordio_tools.manifest import read_dataset_info

    synth, checkpoint = world
    n = read_dataset_info(str(synth / "unlabeled")).num_images
    rows = _proxies_like(checkpoint, n, np.random.default_rng(0), overlap=case == "all_overlap")
    out = tmp_path / "out"
    code, err = _run(capsys, "--checkpoint", checkpoint, "--unlabeled", synth / "unlabeled", "--out", out,
                     "--embeddings", _embeddings_file(tmp_path, rows))
    assert code == 2 and err.count("\n") == 1
    assert "one mode, not two" in err and "--overlap none" in err
    assert "fitted components at" in err and "Ashman's D" in err and "the checkpoint is at step 8 of 8" in err
    assert not out.exists()


def test_bad_input_gets_one_line_and_exit_2(world, tmp_path, capsys):
    synth, checkpoint = world
    empty, not_a_checkpoint = tmp_path / "empty", tmp_path / "not_a_checkpoint"
    empty.mkdir()
    not_a_checkpoint.mkdir()
    cases = {
        "no images to label": ["--unlabeled", empty],
        "embeddings are 64-d but checkpoint": ["--unlabeled", synth / "unlabeled", "--embeddings",
                                               _embeddings_file(tmp_path, np.ones((5, 64)))],
        "not a complete checkpoint": ["--unlabeled", synth / "unlabeled", "--checkpoint", not_a_checkpoint],
        "exists, is not empty and is not an output": ["--unlabeled", synth / "unlabeled",
                                                              "--out", synth / "ms1m"],
    }
    for message, args in cases.items():
        base = {"--checkpoint": checkpoint, "--out": tmp_path / "out"}
        for flag, value in zip(args[::2], args[1::2]):
            base[flag] = value
        code, err = _run(capsys, *[x for kv in base.items() for x in kv])
        assert code == 2 and message in err and err.count("\n") == 1, (message, err)
        assert not (tmp_path / "out").exists()
    assert (synth / "ms1m" / "dataset.json").exists()


def test_two_ranks_share_the_embedding_and_write_the_same_dataset(world, tmp_path, capsys):
    import subprocess
    import sys

    from repo_paths import REPO

    synth, checkpoint = world
    args = ["--checkpoint", str(checkpoint), "--unlabeled", str(synth / "unlabeled"), "--overlap", "none",
            "--min-cluster-size", "2", "--device", "cpu"]
    code, err = _run(capsys, *args, "--out", tmp_path / "one")
    assert code == 0, err
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "fftrain.cli", "pseudo-label", *args, "--out", str(tmp_path / "two")],
                          cwd=REPO, env=torchrun_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("shard-00000.rec", "shard-00000.idx"):  # same images, same cluster labels
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    # the ranks' forward batches start elsewhere, so embeddings differ in the last float32 bits
    np.testing.assert_allclose(np.load(tmp_path / "one" / "sample_weights.npy"),
                               np.load(tmp_path / "two" / "sample_weights.npy"), atol=1e-5)
