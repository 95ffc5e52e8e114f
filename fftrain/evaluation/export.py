"""Backbone to a plain state dict (`backbone.pth`) or to ONNX, checked against torch with onnxruntime.

    export_state_dict(backbone, "backbone.pth")         # torch.load(..., weights_only=True) -> {key: tensor}
    export_onnx(backbone, "model.onnx")                 # input [batch, 3, 112, 112] -> [batch, D]
    max_diff = check_onnx(backbone, "model.onnx")       # raises OnnxParityError above 1e-4

`backbone.pth` holds only the backbone's tensors under insightface arcface_torch's keys, so it loads
into their iresnet of the same depth as their own `backbone.pth` does. The ONNX graph takes `data`
(float32 RGB in [-1, 1], NCHW; arcface_torch's input name) and returns `embedding` (not
normalised); the batch axis is dynamic; the opset defaults to arcface_torch's 11. Exported with torch's TorchScript-based exporter
(`torch.onnx.export(..., dynamo=False)`): it needs neither network nor onnxscript, which the
default torch.export-based exporter of torch >= 2.9 requires (and which is not part of the
"export" extra). onnx and onnxruntime come with `pip install -e '.[export]'`.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import nn

from fftrain.errors import UserError

DEFAULT_OPSET = 11
TOLERANCE = 1e-4
"""Largest accepted |onnxruntime - torch| on an fp32 embedding."""
INPUT_NAME, OUTPUT_NAME = "data", "embedding"


class OnnxParityError(UserError, RuntimeError):
    """The exported graph's outputs differ from torch's beyond the tolerance."""


def _plain(model: nn.Module) -> nn.Module:
    from fftrain.evaluation.verification import _unwrap

    return _unwrap(model)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def export_state_dict(model: nn.Module, path: str | os.PathLike) -> str:
    """Write the backbone's state dict (detached CPU tensors only, no module or config objects) to
    `path` with torch.save, atomically; returns the path."""
    from recordio_tools.files import atomic_path

    path = os.fspath(path)
    state = {key: value.detach().cpu().clone() for key, value in _plain(model).state_dict().items()}
    with atomic_path(path, suffix="", make_parents=True) as tmp:
        torch.save(state, tmp)
    return path


def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                input_size: int = 112) -> str:
    """Write `model` (in eval mode) to `path` as ONNX with a dynamic batch axis; returns the path.

    Written under a temporary name in the same directory and renamed, so `path` is either the
    complete model or untouched.
    """
    from recordio_tools.files import atomic_path

    path = os.fspath(path)
    net = _plain(model)
    was_training = net.training
    net.eval()
    example = torch.randn(2, 3, input_size, input_size, device=_model_device(net))
    try:
        with atomic_path(path, suffix="", make_parents=True) as tmp, warnings.catch_warnings():
            # The tracer warns on the backbones' input-shape checks (constants in the graph; only
            # the batch axis is dynamic) and on the legacy exporter itself; neither is actionable.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(net, (example,), tmp, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    finally:
        net.train(was_training)
    return path


def _session(path: str):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("onnxruntime is needed to check an ONNX export; "
                          "install it with `pip install -e '.[export]'`") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_onnx(model: nn.Module, path: str | os.PathLike, batch_sizes=(1, 3), *,
               tolerance: float = TOLERANCE, seed: int = 0) -> float:
    """Run onnxruntime (CPU) and torch on the same random inputs of each batch size; return the
    largest absolute difference, and raise OnnxParityError when it exceeds `tolerance`."""
    path = os.fspath(path)
    session = _session(path)
    shape = session.get_inputs()[0].shape
    size = shape[2] if isinstance(shape[2], int) else 112
    net = _plain(model)
    was_training = net.training
    net.eval()
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    try:
        for b in batch_sizes:
            x = torch.rand(b, 3, size, size, generator=generator) * 2 - 1
            expected = net(x.to(_model_device(net))).float().cpu().numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            if got.shape != expected.shape:
                raise OnnxParityError(f"{path}: batch {b}: onnxruntime output {got.shape}, torch {expected.shape}")
            diff = float(np.max(np.abs(got - expected)))
            worst = max(worst, diff)
            if not diff <= tolerance:
                raise OnnxParityError(f"{path}: batch {b}: max |onnxruntime - torch| = {diff:.3g} "
                                      f"> tolerance {tolerance:g}")
    finally:
        net.train(was_training)
    return worst
