"""Single-GPU checks of the CUDA paths (no NCCL): the head, the backbone under bf16 autocast and
fusion's torch kNN on cuda against the CPU. Marked `gpu`: skipped without CUDA; benchmarks/gpu_suite.py
runs them first on a lent GPU."""

import pytest
import torch
import torch.nn.functional as F

from fftrain.model.backbones import build_backbone
from fftrain.head.margins import build_margin
from fftrain.head.partial_fc import PartialFCHead

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)


def _heads(compute_dtype, sample_rate=1.0):
    margin = build_margin("arcface", scale=64.0, margin=0.5)
    return [PartialFCHead(1000, 128, margin=margin, seed=3, sample_rate=sample_rate, device=device,
                          compute_dtype=compute_dtype) for device in ("cpu", CUDA)]


@pytest.mark.parametrize("compute_dtype,tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_head_on_cuda_matches_the_cpu(compute_dtype, tolerance):
    cpu, cuda = _heads(compute_dtype)
    # init_proxies promises the same rows per device type only: start both from the CPU rows
    cuda.reset_classes(1000, cpu.weight.detach().to(CUDA))
    gen = torch.Generator().manual_seed(0)
    x, labels = torch.randn(64, 128, generator=gen), torch.randint(0, 1000, (64,), generator=gen)
    losses = []
    for head, device in ((cpu, "cpu"), (cuda, CUDA)):
        loss = head(x.to(device), labels.to(device))
        loss.backward()
        head.step(0.1)
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=tolerance)
    torch.testing.assert_close(cuda.weight.cpu(), cpu.weight, rtol=tolerance, atol=tolerance * 1e-2)


def test_deferred_checks_on_cuda_raise_without_a_sync_per_step():
    _, head = _heads(None, sample_rate=0.1)   # 100 sampled rows >= the 8 labels: no count of the positives
    head.defer_checks = True
    x = torch.randn(8, 128, device=CUDA, requires_grad=True)
    good = torch.arange(1, 9, device=CUDA)
    bad = torch.tensor([1, 2, 3, 4000, 5, 6, 7, 8], device=CUDA)
    head(x, good).backward()                  # forward 0 builds the generator and the deferred record
    head.step(0.1)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")   # a stream sync inside raises
    try:
        for labels in (good, bad, good):      # forwards 1, 2, 3
            head(x, labels).backward()
            head.step(0.1)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    with pytest.raises(ValueError, match=r"label 4000 out of range \[0, 1000\) at training-mode forward 2"):
        head.raise_deferred_errors()


def test_backbone_bf16_autocast_channels_last_matches_fp32():
    torch.manual_seed(0)
    model = build_backbone("iresnet50", embedding_size=512).to(CUDA).eval()
    images = torch.randn(8, 3, 112, 112, device=CUDA)
    with torch.no_grad():
        fp32 = model(images).float()
        model = model.to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(images.contiguous(memory_format=torch.channels_last)).float()
    assert F.cosine_similarity(bf16, fp32, dim=1).min() > 0.99


def test_fusion_torch_knn_on_cuda_merges_what_the_cpu_merges():
    from fftrain.config import FusionConfig
    from fftrain.fusion import run_fusion

    gen = torch.Generator().manual_seed(1)
    w = torch.randn(3000, 64, generator=gen)
    w[1::300] = w[0::300] + 0.01 * torch.randn(10, 64, generator=gen)   # class 300i+1 duplicates 300i
    datasets = torch.arange(3000) % 3
    results = [run_fusion(w.to(device), [torch.zeros_like(w).to(device)], class_dataset=datasets, label_map=None,
                          source_info=None, config=FusionConfig(t1=0.7, backend="torch")) for device in ("cpu", CUDA)]
    assert results[1].stats["knn_backend"] == "torch" and results[1].stats["knn_device"] == "cuda:0"
    assert torch.equal(results[0].new_label_map.cpu(), results[1].new_label_map.cpu())
    assert results[0].num_classes_new == 3000 - 10


def test_fusion_knn_on_cuda_defaults_to_bf16_and_merges_what_the_cpu_merges():
    """fusion.knn_precision 'auto' on CUDA with the torch backend: bf16 scores on tensor cores, re-scored in fp32;
    the merge set equals the CPU's exact fp32 one."""
    from fftrain.config import FusionConfig
    from fftrain.fusion import plan_fusion
    from fftrain.search import resolve_precision

    gen = torch.Generator().manual_seed(4)
    base = F.normalize(torch.randn(2000, 512, generator=gen), dim=1)
    scale = 0.9 + 0.2 * torch.rand(400, 1, generator=gen)  # twin cosines ~0.67-0.74: on both sides of T1
    twins = F.normalize(base[:400] + scale * torch.randn(400, 512, generator=gen) / 512 ** 0.5, dim=1)
    weight = torch.cat([base, twins])
    table = torch.cat([torch.zeros(2000), torch.ones(400)]).long()
    config = FusionConfig(t1=0.7, backend="torch")
    assert resolve_precision(config.knn_precision, "torch", CUDA) is torch.bfloat16
    on_gpu = plan_fusion(weight.to(CUDA), class_dataset=table, label_map=None, config=config)
    on_cpu = plan_fusion(weight, class_dataset=table, label_map=None, config=config)
    assert 50 < 2400 - on_cpu.plan.num_classes_new < 350
    assert torch.equal(on_gpu.old_to_new.cpu(), on_cpu.old_to_new)
