"""Verification on .bin files: a planted model with a known answer, the MXNet-era fixture, a
malicious pickle, two gloo ranks against one process, and the `fftrain eval` command."""

import io
import json
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fftrain.evaluation.verification import (
    clear_cache, embed_pairs, evaluate_bin, format_table, load_bin,
)
from recordio_tools.verification_bin import VerificationBinError, write_verification_bin

LEVELS = [20 + 22 * i for i in range(10)]  # grey levels 20..218
# Each identity is a face whose left half has grey level a and right half level b.
IDENTITIES = [(0, 5), (1, 6), (2, 7), (3, 8), (4, 9), (0, 7), (1, 8), (2, 9), (3, 5), (4, 6)]


class HalfCode(nn.Module):
    """Embedding = a bump per grey level, read from the mean of the image's left half.

    A face and its mirror image give orthogonal embeddings; with the flip-sum both give
    bump(a) + bump(b), so only flip-summed embeddings match a face with its mirror.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("centres", torch.tensor(LEVELS, dtype=torch.float32) / 127.5 - 1)

    def forward(self, x):
        m = x[:, 0, :, 8:48].mean(dim=(1, 2))
        return torch.exp(-(((m[:, None] - self.centres) / 0.05) ** 2))


def _face(a, b):
    img = np.empty((112, 112, 3), np.uint8)
    img[:, :56], img[:, 56:] = LEVELS[a], LEVELS[b]
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="JPEG", quality=95)
    return out.getvalue()


def _planted_bin(path):
    """20 pairs: a face and its mirror (same), or faces of two identities (different)."""
    images, issame = [], []
    for i, (a, b) in enumerate(IDENTITIES):
        images += [_face(a, b), _face(b, a)]
        issame.append(True)
        c, d = IDENTITIES[(i + 3) % len(IDENTITIES)]
        images += [_face(a, b), _face(c, d)]
        issame.append(False)
    write_verification_bin(path, images, issame)
    return path


@pytest.fixture
def planted(tmp_path):
    clear_cache()
    return _planted_bin(tmp_path / "planted.bin")


def test_planted_model_scores_exactly(planted):
    result = evaluate_bin(HalfCode(), planted, device="cpu", batch_size=7)
    assert result["name"] == "planted" and result["num_pairs"] == 20
    assert result["accuracy"] == 1.0 and result["std"] == 0.0
    assert result["fold_accuracies"] == [1.0] * 10
    assert 0.0 < result["best_threshold"] <= 1.0  # positives at ~0, negatives at 1 or 2
    assert result["tar_far_1e-3"] is None and result["tar_far_1e-4"] is None  # 10 negatives
    assert result["notes"] == ["TAR@FAR=0.001 not measurable: 10 negative pairs, needs >= 1000",
                               "TAR@FAR=0.0001 not measurable: 10 negative pairs, needs >= 10000"]


def test_flip_sum_is_what_matches_a_mirrored_face(planted):
    from fftrain.evaluation.metrics import verification_metrics

    images, issame = load_bin(planted)
    assert images.shape == (40, 3, 112, 112) and images.dtype == np.uint8
    model = HalfCode().train()
    summed = embed_pairs(model, images, device="cpu", batch_size=16)
    plain = embed_pairs(model, images, device="cpu", batch_size=16, flip=False)
    assert model.training  # mode restored
    assert verification_metrics(summed, issame).accuracy == 1.0
    assert verification_metrics(plain, issame).accuracy <= 0.75


def test_decoded_images_are_cached(planted):
    first = load_bin(planted)
    assert load_bin(planted)[0] is first[0]
    assert load_bin(planted, part=(1, 2))[0].shape[0] == 20


def test_mxnet_fixture_with_tiny_backbone(mxnet_fixtures):
    from fftrain.model.backbones import build_backbone

    torch.manual_seed(0)
    model = build_backbone("iresnet_tiny", embedding_size=32)
    result = evaluate_bin(model, mxnet_fixtures / "lfw_style.bin", device="cpu", batch_size=16)
    assert result["name"] == "lfw_style" and result["num_pairs"] == 20
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["std"] <= 0.5
    assert 0.0 <= result["best_threshold"] < 4.0
    assert len(result["fold_accuracies"]) == 10


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Payload(str(marker)), b"x"], [True]), protocol=2))
    with pytest.raises(VerificationBinError, match="refusing to load global posix.mkdir"):
        evaluate_bin(HalfCode(), path, device="cpu")
    assert not marker.exists()


def _two_rank_eval(ctx, path, proxies):
    shard = np.array_split(proxies, ctx.world_size)[ctx.rank]
    return evaluate_bin(HalfCode(), path, device="cpu", batch_size=8, group=ctx.group,
                        proxies=shard, proxy_group=ctx.group, dao_k=3)


def test_two_ranks_give_the_single_process_result(planted):
    from dist_harness import run_distributed

    proxies = np.random.default_rng(0).standard_normal((11, len(LEVELS))).astype(np.float32)
    single = evaluate_bin(HalfCode(), planted, device="cpu", proxies=proxies, dao_k=3)
    ranks = run_distributed(_two_rank_eval, world_size=2, args=(str(planted), proxies))
    for result in ranks:
        assert result.keys() == single.keys()
        for key, value in single.items():
            if isinstance(value, float):
                assert result[key] == pytest.approx(value, rel=1e-9), key
            else:
                assert result[key] == value, key
    assert single["dao_accuracy"] == 1.0


def test_format_table():
    rows = [{"name": "lfw", "num_pairs": 6000, "accuracy": 0.99583, "std": 0.00321,
             "tar_far_1e-3": 0.98, "tar_far_1e-4": None, "notes": ["TAR@FAR=0.0001 not measurable"],
             "dao_accuracy": 0.996, "dao_cosine_accuracy": 0.9955}]
    table = format_table(rows).splitlines()
    assert table[0].split(" | ")[0].strip() == "name"
    assert "99.58 ± 0.32" in table[2] and "98.00" in table[2] and "n/a" in table[2]
    assert "99.60 (99.55)" in table[2]
    assert table[3] == "note: lfw: TAR@FAR=0.0001 not measurable"


def test_eval_command(planted, tmp_path, monkeypatch, capsys):
    import argparse

    from fftrain.commands.eval import add_eval_parser

    fake = types.ModuleType("fftrain.training.checkpoint")
    fake.load_backbone_from_checkpoint = lambda directory: HalfCode()
    fake.load_proxies_from_checkpoint = lambda directory: np.eye(len(LEVELS), dtype=np.float32)
    fake.CheckpointError = type("CheckpointError", (ValueError,), {})
    monkeypatch.setitem(sys.modules, "fftrain.training.checkpoint", fake)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    parser = argparse.ArgumentParser(prog="fftrain")
    add_eval_parser(parser.add_subparsers(dest="command"))
    out_json = tmp_path / "out" / "eval.json"
    args = parser.parse_args(["eval", "--checkpoint", str(tmp_path), "--data-dir", str(tmp_path),
                              "--targets", "lfw,planted", "--device", "cpu", "--dao", "--dao-k", "2",
                              "--json-out", str(out_json)])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "planted" in printed and "100.00 ± 0.00" in printed and "lfw" not in printed.split("\n")[2]
    saved = json.loads(out_json.read_text())
    assert saved["results"][0]["accuracy"] == 1.0 and saved["results"][0]["tar_far_1e-3"] is None
    assert "dao_accuracy" in saved["results"][0]
    assert os.listdir(out_json.parent) == ["eval.json"]

    args = parser.parse_args(["eval", "--checkpoint", str(tmp_path), str(tmp_path / "missing.bin")])
    assert args.run(args) == 2
    assert "missing.bin: verification file not found" in capsys.readouterr().err
