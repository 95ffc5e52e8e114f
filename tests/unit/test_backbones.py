"""Backbones: shapes, insightface key compatibility, parameter counts, channels_last, gradient
checkpointing, autocast, the registry and pretrained loading. CPU, about half a minute.

Run: pytest tests/unit/test_backbones.py
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator

import pytest
import torch

from fftrain.model.backbones import available_backbones, build_backbone, load_pretrained
from fftrain.model.backbones.pretrained import PretrainedError

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def faces(batch: int = 2, size: int = 112) -> torch.Tensor:
    return torch.rand(batch, 3, size, size) * 2 - 1


# ---- the insightface layout, written out from arcface_torch backbones/{iresnet,mobilefacenet}.py

def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}{n}": (() if n == "num_batches_tracked" else (c,)) for n in BN}


def insightface_iresnet_spec(layers, embedding_size=512) -> dict[str, tuple[int, ...]]:
    """Key -> shape of insightface's IResNet(IBasicBlock, layers, num_features=embedding_size)."""
    spec = {"conv1.weight": (64, 3, 3, 3), **_bn("bn1.", 64), "prelu.weight": (64,)}
    cin = 64
    for stage, (n, c) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}."
            spec.update({**_bn(p + "bn1.", cin), p + "conv1.weight": (c, cin, 3, 3), **_bn(p + "bn2.", c),
                         p + "prelu.weight": (c,), p + "conv2.weight": (c, c, 3, 3), **_bn(p + "bn3.", c)})
            if i == 0:
                spec.update({p + "downsample.0.weight": (c, cin, 1, 1), **_bn(p + "downsample.1.", c)})
            cin = c
    spec.update({**_bn("bn2.", 512), "fc.weight": (embedding_size, 512 * 7 * 7), "fc.bias": (embedding_size,),
                 **_bn("features.", embedding_size)})
    return spec


def insightface_mbf_spec(blocks=(1, 4, 6, 2), scale=2, embedding_size=512) -> dict[str, tuple[int, ...]]:
    """Key -> shape of insightface's MobileFaceNet(num_features, blocks, scale)."""
    spec: dict[str, tuple[int, ...]] = {}

    def conv_bn(p, cin, cout, k, groups=1, prelu=True):  # ConvBlock / LinearBlock
        spec[p + "layers.0.weight"] = (cout, cin // groups, k, k)
        spec.update(_bn(p + "layers.1.", cout))
        if prelu:
            spec[p + "layers.2.weight"] = (cout,)

    def depthwise(p, cin, cout, hidden):
        conv_bn(p + "layers.0.", cin, hidden, 1)
        conv_bn(p + "layers.1.", hidden, hidden, 3, groups=hidden)
        conv_bn(p + "layers.2.", hidden, cout, 1, prelu=False)

    def residual(p, c, n, hidden):
        for i in range(n):
            depthwise(f"{p}layers.{i}.", c, c, hidden)

    c1, c2 = 64 * scale, 128 * scale
    conv_bn("layers.0.", 3, c1, 3)
    if blocks[0] == 1:
        conv_bn("layers.1.", c1, c1, 3, groups=64)
    else:
        residual("layers.1.", c1, blocks[0], 128)
    depthwise("layers.2.", c1, c1, 128)
    residual("layers.3.", c1, blocks[1], 128)
    depthwise("layers.4.", c1, c2, 256)
    residual("layers.5.", c2, blocks[2], 256)
    depthwise("layers.6.", c2, c2, 512)
    residual("layers.7.", c2, blocks[3], 256)
    conv_bn("conv_sep.", c2, 512, 1)
    conv_bn("features.layers.0.", 512, 512, 7, groups=512, prelu=False)
    spec["features.layers.2.weight"] = (embedding_size, 512)
    spec.update(_bn("features.layers.3.", embedding_size))
    return spec


@pytest.fixture(scope="module")
def built() -> Iterator[Callable[[str], torch.nn.Module]]:
    """name -> a default-built backbone, shared by this module's tests that only read it (building
    the deep ones is most of their cost); freed when the module is done."""
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            cache[name] = build_backbone(name)
        return cache[name]

    yield get
    cache.clear()


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


INSIGHTFACE = {
    "iresnet18": lambda: insightface_iresnet_spec((2, 2, 2, 2)),
    "iresnet34": lambda: insightface_iresnet_spec((3, 4, 6, 3)),
    "iresnet50": lambda: insightface_iresnet_spec((3, 4, 14, 3)),
    "iresnet100": lambda: insightface_iresnet_spec((3, 13, 30, 3)),
    "iresnet200": lambda: insightface_iresnet_spec((6, 26, 60, 6)),
    "mobilefacenet": lambda: insightface_mbf_spec(),
    "mobilefacenet_large": lambda: insightface_mbf_spec((2, 8, 12, 4), scale=4),
}


def test_registry_lists_everything():
    assert set(available_backbones()) == set(INSIGHTFACE) | {"iresnet_tiny"}
    assert available_backbones() == sorted(available_backbones())


@pytest.mark.parametrize("name", sorted(INSIGHTFACE))
def test_state_dict_matches_insightface(name, built):
    assert shapes(built(name)) == INSIGHTFACE[name]()  # same keys, same shapes (and order is theirs)


def test_iresnet50_key_details(built):
    sd = built("iresnet50").state_dict()
    assert "layer3.13.bn3.running_var" in sd and "layer3.14.bn3.running_var" not in sd
    assert sd["fc.weight"].shape == (512, 512 * 7 * 7)
    assert "features.weight" in sd and "layer1.1.downsample.0.weight" not in sd


@pytest.mark.parametrize("name, millions", [("iresnet50", 43.6), ("iresnet100", 65.2)])
def test_published_parameter_counts(name, millions, built):
    model = built(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions
    assert not model.features.weight.requires_grad  # fixed unit scale of the embedding BN
    assert torch.all(model.features.weight == 1)


@pytest.mark.parametrize("name", ["iresnet_tiny", "mobilefacenet"])
def test_output_shape_at_112(name):
    model = build_backbone(name, embedding_size=128)
    out = model(faces())
    assert out.shape == (2, 128) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()  # every trainable parameter receives a gradient
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["iresnet18", "iresnet50"])
def test_deep_iresnets_run(name):
    # The 112x112 forward of the deep nets is slow on CPU; the layers are the same at 32x32, and
    # the other depths differ only in block counts (checked above).
    model = build_backbone(name, embedding_size=64, input_size=32).eval()
    with torch.no_grad():
        assert model(faces(1, 32)).shape == (1, 64)


def test_mobilefacenet_large_runs(built):
    with torch.no_grad():
        assert built("mobilefacenet_large").eval()(faces(1)).shape == (1, 512)


def test_insightface_aliases(built):
    assert shapes(build_backbone("mbf")) == shapes(built("mobilefacenet"))


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match=re.escape(f"unknown backbone 'r51'; available: {available_backbones()}")):
        build_backbone("r51")


def test_wrong_input_size_is_named():
    with pytest.raises(ValueError, match=re.escape("expected input of shape [B, 3, 112, 112], got [2, 3, 96, 96]")):
        build_backbone("iresnet_tiny")(faces(2, 96))


@pytest.mark.parametrize("name", ["iresnet_tiny", "mobilefacenet"])
def test_channels_last_gives_the_same_output(name):
    model = build_backbone(name).eval()
    x = faces()
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["iresnet_tiny", "mobilefacenet"])
def test_grad_checkpoint_same_gradients_and_bn_stats(name):
    plain = build_backbone(name)
    ckpt = copy.deepcopy(plain)
    ckpt.grad_checkpoint = True
    x = faces()
    for model in (plain, ckpt):
        model(x).square().sum().backward()
    for (k, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, msg=k)
    # The recomputation in backward must not update BatchNorm running statistics a second time.
    torch.testing.assert_close(ckpt.state_dict(), plain.state_dict())


@pytest.mark.slow
def test_torch_compile_with_grad_checkpoint():
    # aot_eager: traced through dynamo and AOT autograd (where checkpointing is resolved), no C++
    # toolchain needed. About 10 s of CPU.
    plain = build_backbone("iresnet_tiny")
    ckpt = copy.deepcopy(plain)
    ckpt.grad_checkpoint = True
    compiled = torch.compile(ckpt, backend="aot_eager", fullgraph=True)
    x = faces()
    torch.testing.assert_close(compiled(x), plain(x))
    compiled(x).sum().backward()
    plain(x).sum().backward()
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad)
    torch.testing.assert_close(ckpt.state_dict(), plain.state_dict())


def test_autocast_head_stays_fp32():
    model = build_backbone("iresnet_tiny").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(faces()).dtype == torch.float32
        model.fp32_head = False
        assert model(faces()).dtype == torch.bfloat16


def test_dropout_is_applied_in_training_only():
    model = build_backbone("iresnet_tiny", dropout=0.5)
    x = faces()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))


# ---- load_pretrained

@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "backbone", "state_dict_backbone",
                                  "module_prefix"])
def test_load_pretrained_round_trip(tmp_path, wrap):
    src = build_backbone("iresnet_tiny")
    src(faces())  # move the BN statistics away from their initial values
    state = src.state_dict()
    if wrap == "module_prefix":
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    else:
        obj = state if wrap == "bare" else {wrap: state, "epoch": torch.tensor(3)}
    torch.save(obj, tmp_path / "backbone.pth")
    dst = load_pretrained(build_backbone("iresnet_tiny"), tmp_path / "backbone.pth")
    torch.testing.assert_close(dst.state_dict(), state)
    assert not dst.features.weight.requires_grad
    x = faces()
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x), src.eval()(x))


def test_load_pretrained_names_shape_mismatch(tmp_path):
    torch.save(build_backbone("iresnet_tiny").state_dict(), tmp_path / "backbone.pth")
    model = build_backbone("iresnet_tiny", embedding_size=256)
    with pytest.raises(ValueError, match=re.escape(
            "backbone.pth: does not fit IResNet: shape mismatch for fc.weight: checkpoint [512, 2048] vs "
            "model [256, 2048]")):
        load_pretrained(model, tmp_path / "backbone.pth")


def test_load_pretrained_names_missing_and_unexpected_keys(tmp_path):
    state = build_backbone("iresnet_tiny").state_dict()
    del state["layer4.0.bn3.weight"]
    state["head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match=re.escape(
            "missing keys (1): layer4.0.bn3.weight; unexpected keys (1): head.weight")):
        load_pretrained(build_backbone("iresnet_tiny"), tmp_path / "backbone.pth")


def test_load_pretrained_tolerates_missing_batch_counters(tmp_path):
    src = build_backbone("iresnet_tiny")
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    dst = load_pretrained(build_backbone("iresnet_tiny"), tmp_path / "old.pth")
    torch.testing.assert_close(dst.fc.weight, src.fc.weight)


def test_load_pretrained_refuses_pickled_modules(tmp_path):
    torch.save(build_backbone("iresnet_tiny"), tmp_path / "whole.pth")
    with pytest.raises(ValueError, match="not a plain state dict"):
        load_pretrained(build_backbone("iresnet_tiny"), tmp_path / "whole.pth")


def test_load_pretrained_missing_file(tmp_path):
    with pytest.raises(PretrainedError, match="nope.pth: no such checkpoint file"):
        load_pretrained(build_backbone("iresnet_tiny"), tmp_path / "nope.pth")
