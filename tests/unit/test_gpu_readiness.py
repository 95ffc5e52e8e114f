"""CPU checks of the fixes made for the GPU paths: host-sync-free head checks, the deterministic
reshard merge, the vectorised augmentation, free-memory kNN blocks, fp16 refused, bf16 autocast
against fp32 and torch.compile on the CPU."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fftrain.config import ConfigError, GRLConfig, ModelConfig, load_config
from fftrain.data.augment import color_matrix, step_params
from fftrain.fusion.knn import distributed_knn
from fftrain.search import block_elems_for
from fftrain.fusion.reshard import _segment_sum
from fftrain.head.margins import build_margin
from fftrain.model.embedding import EmbeddingModel
from fftrain.head.partial_fc import PartialFCHead
from repo_paths import REPO

D = 16


def _head(**kw):
    return PartialFCHead(40, D, margin=build_margin("arcface", scale=16.0, margin=0.3), seed=1, **kw)


# ---- the head without host syncs -------------------------------------------------------------------

def test_deferred_label_check_gives_the_same_loss_and_raises_later_naming_the_forward():
    x, labels = torch.randn(6, D, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 5, 9, 13, 22, 39])
    eager, deferred = _head(sample_rate=0.5), _head(sample_rate=0.5)
    deferred.defer_checks = True
    assert torch.equal(eager(x, labels), deferred(x, labels))
    deferred.raise_deferred_errors()                      # nothing bad: no error
    deferred(x, torch.tensor([0, 5, 40, 13, 22, 39]))     # out of range: computed on clamped labels
    deferred(x, torch.tensor([0, 5, -3, 13, 22, 39]))     # a later bad batch does not replace the first
    with pytest.raises(ValueError, match=r"label 40 out of range \[0, 40\) at training-mode forward 1"):
        deferred.raise_deferred_errors()
    deferred.raise_deferred_errors()                      # reported once


def test_deferred_dataset_mismatch_is_reported_with_the_sample():
    head = _head()
    head.defer_checks = True
    table = torch.arange(40) % 3
    labels = torch.tensor([0, 1, 2])
    head(torch.randn(3, D), labels, (table[labels] + torch.tensor([0, 1, 0])) % 3, class_dataset=table)
    with pytest.raises(ValueError, match=r"sample 1 of the global batch has dataset id 2 but its label 1 is a "
                                         r"class of dataset 1"):
        head.raise_deferred_errors(table)


def test_sampling_keeps_every_positive_without_counting_them_when_they_fit():
    head = _head(sample_rate=0.5)   # k = 20 >= the 6 labels of the batch: no host sync
    labels = torch.tensor([0, 5, 9, 13, 22, 39])
    head(torch.randn(6, D), labels)
    rows = head.sampled_classes()
    assert len(rows) == 20 and set(labels.tolist()) <= set(rows.tolist())


# ---- the reshard merge -----------------------------------------------------------------------------

def test_segment_sum_equals_index_add_in_row_order():
    gen = torch.Generator().manual_seed(3)
    values, slot = torch.randn(50, 7, generator=gen), torch.randint(0, 9, (50,), generator=gen)
    expected = torch.zeros(9, 7).index_add_(0, slot, values)
    assert torch.equal(_segment_sum(values, slot, 9), expected)
    assert _segment_sum(values[:0], slot[:0], 4).shape == (4, 7)


# ---- augmentation ----------------------------------------------------------------------------------

def _reference_colors(seed, epoch, step, n):
    """The per-sample loop the vectorised code replaced (draws in the same order)."""
    from fftrain.data.augment import COLOR_P, GREY_P, HUE_DEG, SAT_RANGE, VALUE_RANGE
    from fftrain.data.sharding import step_rng

    rng = step_rng(seed, epoch, step)
    rng.random(n), rng.random(n), rng.uniform(0.4, 0.9, n)  # mirror, blur, scale
    hue, sat, val = rng.uniform(-HUE_DEG, HUE_DEG, n), rng.uniform(*SAT_RANGE, n), rng.uniform(*VALUE_RANGE, n)
    recolor, grey = rng.random(n) < COLOR_P, rng.random(n) < GREY_P
    hue, sat, val = np.where(recolor, hue, 0.0), np.where(recolor, sat, 1.0), np.where(recolor, val, 1.0)
    sat = np.where(grey, 0.0, sat)
    colors = np.broadcast_to(np.eye(3, dtype=np.float32), (n, 3, 3)).copy()
    for i in np.flatnonzero(recolor | grey):
        colors[i] = color_matrix(hue[i], sat[i], val[i])
    return colors


@pytest.mark.parametrize("world", [1, 2, 8])
def test_colour_matrices_are_bit_identical_to_the_per_sample_loop(world):
    batch = 64
    expected = _reference_colors(5, 2, 7, world * batch)
    for rank in range(world):
        params = step_params(5, 2, 7, shard_id=rank, num_shards=world, batch_size=batch, image_size=112, strong=True)
        assert np.array_equal(params.color, expected[rank * batch:(rank + 1) * batch])


# ---- kNN blocks ------------------------------------------------------------------------------------

def test_knn_block_follows_free_memory_and_keeps_one_row():
    assert block_elems_for(free_bytes=12 * 4000 * 4, n_keys=100) == 4000
    assert block_elems_for(free_bytes=0, n_keys=100) == 100
    assert block_elems_for(free_bytes=1 << 50, n_keys=10) == 1 << 31


def test_knn_with_tiny_blocks_equals_one_block():
    x = F.normalize(torch.randn(300, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    whole = distributed_knn(x, 5, None, backend="torch", max_block_elems=1 << 30)
    tiny = distributed_knn(x, 5, None, backend="torch", max_block_elems=300)   # one query row per block
    auto = distributed_knn(x, 5, None, backend="torch")                        # from free memory
    for got in (tiny, auto):
        assert torch.equal(got[1], whole[1])   # same neighbours; a GEMM's rounding depends on its shape
        torch.testing.assert_close(got[0], whole[0], rtol=0, atol=1e-6)


# ---- dtypes ----------------------------------------------------------------------------------------

def test_fp16_is_refused_at_config_time():
    with pytest.raises(ConfigError, match=r"dtype: 'fp16' is not supported: it needs loss scaling"):
        load_config(None, ["dtype=fp16"])


def test_bf16_head_matches_fp32_within_tolerance():
    """bf16 cosine matmul (8-bit mantissa) against fp32: loss within 2 %, gradients cos > 0.99."""
    gen = torch.Generator().manual_seed(4)
    x, labels = torch.randn(32, D, generator=gen), torch.randint(0, 40, (32,), generator=gen)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        head = _head(compute_dtype=dtype)
        xi = x.clone().requires_grad_()
        loss = head(xi, labels)
        loss.backward()
        out[dtype] = (loss.item(), xi.grad.flatten(), head.active_weight.grad.flatten())
    (l32, gx32, gw32), (l16, gx16, gw16) = out[torch.float32], out[torch.bfloat16]
    assert l16 == pytest.approx(l32, rel=0.02)
    assert F.cosine_similarity(gx16, gx32, dim=0) > 0.99 and F.cosine_similarity(gw16, gw32, dim=0) > 0.99


def test_bf16_autocast_backbone_matches_fp32_within_tolerance():
    """CPU autocast bf16 of the backbone: embeddings cos > 0.99 to fp32, input gradients cos > 0.95."""
    torch.manual_seed(0)
    model = EmbeddingModel(ModelConfig(backbone="iresnet_tiny", embedding_size=64), GRLConfig(), 3).eval()
    images = torch.randn(4, 3, 112, 112)
    results = []
    for enabled in (False, True):
        x = images.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            embeddings, _ = model(x)
        embeddings.float().pow(2).sum().backward()
        results.append((embeddings.float().detach(), x.grad.flatten()))
    (e32, g32), (e16, g16) = results
    assert e16.dtype == torch.float32  # EmbeddingModel hands the head fp32
    assert F.cosine_similarity(e16, e32, dim=1).min() > 0.99
    assert F.cosine_similarity(g16, g32, dim=0) > 0.95


@pytest.mark.slow
def test_torch_compile_runs_on_the_cpu_and_matches_eager():
    torch.manual_seed(0)
    model = EmbeddingModel(ModelConfig(backbone="iresnet_tiny", embedding_size=64), GRLConfig(), 3)
    images = torch.randn(4, 3, 112, 112)
    eager, _ = model(images)
    compiled_model = torch.compile(model)
    compiled, _ = compiled_model(images)
    compiled.sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)


# ---- bf16 FC storage ----------------------------------------------------------------------------------

def _train_head(dtype, *, momentum=0.9, nearest=False, steps=200, lr=0.02):
    """The head alone on fixed, class-clustered embeddings; proxies of norm ~4, so bf16's spacing there
    (2^-6) is far above one step's change: the loss curve."""
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(50, D, generator=gen), dim=1)
    labels = torch.arange(50).repeat(4)
    x = centres[labels] + 0.3 * torch.randn(200, D, generator=gen)
    head = PartialFCHead(50, D, margin=build_margin("arcface", scale=16.0, margin=0.2), seed=2, sample_rate=0.5,
                         momentum=momentum, weight_decay=5e-4, dtype=dtype, init_std=1.0)
    curve = []
    for _ in range(steps):
        loss = head(x, labels)
        loss.backward()
        if nearest:  # the naive bf16 update (no momentum): fp32 arithmetic, rounded to nearest
            w = head.weight.float()
            w[head._index] -= lr * (head.active_weight.grad + 5e-4 * w[head._index])
            head.weight.data, head._active = w.to(dtype), None
        else:
            head.step(lr)
        curve.append(loss.item())
    return torch.tensor(curve)


def test_bf16_storage_with_stochastic_rounding_tracks_fp32():
    """Stated tolerance: every point of the loss curve within 2 % of fp32's. Round-to-nearest bf16
    falls behind its fp32 run (both without momentum): that loss of small steps is what the
    stochastic rounding prevents."""
    fp32, bf16 = _train_head(torch.float32), _train_head(torch.bfloat16)
    assert fp32[-1] < 0.7 * fp32[0]                              # it learns
    assert ((bf16 - fp32).abs() / fp32).max() < 0.02
    plain, nearest = _train_head(torch.float32, momentum=0.0), _train_head(torch.bfloat16, momentum=0.0, nearest=True)
    assert nearest[-1] - plain[-1] > 0.05 * plain[-1]


def test_bf16_storage_holds_two_bytes_per_value_and_steps_are_repeatable():
    a, b = (PartialFCHead(40, D, margin=build_margin("arcface"), dtype=torch.bfloat16) for _ in range(2))
    assert a.weight.dtype == a.momentum_buffer.dtype == torch.bfloat16
    x, labels = torch.randn(8, D, generator=torch.Generator().manual_seed(1)), torch.arange(8)
    for head in (a, b):
        head(x, labels).backward()
        head.step(0.1)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.momentum_buffer, b.momentum_buffer)


@pytest.mark.parametrize("sample_rate", [1.0, 0.3])
def test_the_bf16_update_in_chunks_gives_the_bits_of_one_pass(monkeypatch, sample_rate):
    from fftrain.head import partial_fc

    def trained(round_rows):
        monkeypatch.setattr(partial_fc, "ROUND_ROWS", round_rows)
        head = PartialFCHead(300, D, margin=build_margin("arcface"), sample_rate=sample_rate, dtype=torch.bfloat16)
        g = torch.Generator().manual_seed(2)
        for _ in range(3):
            head(torch.randn(16, D, generator=g), torch.randint(0, 300, (16,), generator=g)).backward()
            head.step(0.1)
        return head.weight, head.momentum_buffer

    one_pass, chunked = trained(10**6), trained(7)  # 7 rows: many chunks, a short last one
    assert torch.equal(one_pass[0], chunked[0]) and torch.equal(one_pass[1], chunked[1])


# ---- errors and packaging --------------------------------------------------------------------------

def test_an_unexpected_error_goes_to_the_rank_log_with_a_hint(synth, tmp_path, monkeypatch, capsys):
    from fftrain.training import trainer as trainer_module
    from fftrain.commands.train import run_training

    def broken(self):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(trainer_module.Trainer, "_train", broken)
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"data.synth_dir={synth}", "data.synth_preset=tiny",
                             "data.batch_size=8", "data.reader=torch", "data.num_workers=1", "device=cpu",
                             f"data.verification=[{synth}/verification.bin]", "log.tensorboard=false"])
    with pytest.raises(RuntimeError, match="a bug, not a user error"):
        run_training(cfg)
    log = (tmp_path / "run" / "logs" / "rank0.log").read_text()
    assert "unexpected error on rank 0" in log and "Traceback" in log and "a bug, not a user error" in log
    err = capsys.readouterr().err
    assert "its traceback is in" in err and "rank0.log" in err and "--local-ranks-filter" in err


def test_faiss_cpu_is_an_extra_that_the_launch_scripts_install():
    import pathlib

    repo = REPO
    setup = (repo / "setup.py").read_text()
    assert '"cpu": ["faiss-cpu' in setup and '"gpu": ["faiss-gpu' in setup
    assert "faiss-cpu>=1.8\",\n" not in setup.split("extras_require")[0]   # not a hard requirement
    assert ".[cpu,test,export]" in (repo / "launch" / "bootstrap.sh").read_text()
