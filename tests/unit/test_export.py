"""ONNX export of a backbone: dynamic batch axis, onnxruntime parity with torch, the command."""

import argparse
import os

import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install -e '.[export]'")
onnx = pytest.importorskip("onnx", reason="onnx not installed: pip install -e '.[export]'")

from fftrain.model.backbones import build_backbone  # noqa: E402
from fftrain.evaluation.export import OnnxParityError, check_onnx, export_onnx  # noqa: E402
from checkpoint_helpers import stub_backbone_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = build_backbone("iresnet_tiny", embedding_size=32)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert export_onnx(model, path) == str(path)
    assert model.training  # the mode is restored after exporting in eval mode
    return model, path


def test_onnx_matches_torch_on_two_batch_sizes(exported):
    model, path = exported
    assert check_onnx(model, path, batch_sizes=(1, 3)) < 1e-4
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))
    assert graph.input[0].name == "data" and graph.output[0].name == "embedding"
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 112, 112]
    assert os.listdir(path.parent) == ["tiny.onnx"]  # no temporary file left


def test_parity_check_catches_a_different_model(exported):
    model, path = exported
    other = build_backbone("iresnet_tiny", embedding_size=32)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.fc.bias.add_(1e-2)
    with pytest.raises(OnnxParityError, match=r"batch 1: max \|onnxruntime - torch\| = .* > tolerance 0.0001"):
        check_onnx(other, path)


def test_export_command(tmp_path, monkeypatch, capsys):
    from fftrain.commands.export import add_export_parser

    stub_backbone_checkpoint(monkeypatch, build_backbone("iresnet_tiny", embedding_size=16))
    parser = argparse.ArgumentParser(prog="fftrain")
    add_export_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "model.onnx"
    args = parser.parse_args(["export", "--checkpoint", str(tmp_path), "--onnx", str(out)])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (opset 11, input 'data' [batch, 3, 112, 112], dynamic batch)" in printed
    assert "onnxruntime vs torch: max |diff| =" in printed
    assert out.is_file()


def test_onnx_opset_is_selectable(tmp_path):
    model = build_backbone("iresnet_tiny", embedding_size=16)
    path = export_onnx(model, tmp_path / "m17.onnx", opset=17)
    assert onnx.load(path).opset_import[0].version == 17
    assert check_onnx(model, path, batch_sizes=(2,)) < 1e-4


def test_torch_export_is_a_plain_state_dict_of_the_iresnet(tmp_path, monkeypatch, capsys):
    """backbone.pth: tensors only (weights_only load), the keys of an iresnet18 of the same depth,
    and that iresnet built fresh with those weights gives the trained model's outputs."""
    from fftrain.commands.export import add_export_parser

    torch.manual_seed(1)
    trained = build_backbone("iresnet18", embedding_size=32).eval()
    stub_backbone_checkpoint(monkeypatch, trained)
    parser = argparse.ArgumentParser(prog="fftrain")
    add_export_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "backbone.pth"
    args = parser.parse_args(["export", "--checkpoint", str(tmp_path), "--torch", str(out)])
    assert args.run(args) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    state = torch.load(out, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = build_backbone("iresnet18", embedding_size=32)
    assert list(state) == list(fresh.state_dict())
    fresh.load_state_dict(state)
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), trained(x))


def test_export_needs_an_output(tmp_path, capsys):
    from fftrain.commands.export import add_export_parser

    parser = argparse.ArgumentParser(prog="fftrain")
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--checkpoint", str(tmp_path)])
    assert args.run(args) == 2
    assert "nothing to export: give --torch PATH and/or --onnx PATH" in capsys.readouterr().err
