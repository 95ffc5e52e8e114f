"""`fftrain export`: a checkpoint's backbone as a plain state dict (`backbone.pth`, what arcface_torch
users load into their own iresnet) and/or as ONNX (input `data`, dynamic batch), checked with onnxruntime.

    fftrain export --checkpoint CKPT --torch backbone.pth
    fftrain export --checkpoint CKPT --onnx model.onnx [--opset 17]
"""

from __future__ import annotations

import argparse

from fftrain.commands.eval import EvalUsageError, fail, load_backbone


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    from fftrain.evaluation.export import DEFAULT_OPSET

    p = subparsers.add_parser(
        "export", help="backbone to a plain state dict (backbone.pth) and/or ONNX (dynamic batch)",
        description="Export the checkpoint's backbone. --torch: its state dict, tensors only (load it with "
                    "torch.load(path, weights_only=True); the keys are insightface arcface_torch's, so it loads "
                    "into their iresnet of the same depth). --onnx: input 'data' [batch, 3, S, S] float32 RGB in "
                    "[-1, 1], output 'embedding' [batch, D] (not normalised), dynamic batch; the file is then run "
                    "with onnxruntime against torch on the same random inputs.")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint directory")
    p.add_argument("--torch", dest="torch_out", metavar="PATH",
                   help="output backbone.pth: the backbone's plain state dict (written atomically)")
    p.add_argument("--onnx", metavar="PATH", help="output .onnx file (written atomically)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help="ONNX opset (default: %(default)s, arcface_torch's)")
    p.add_argument("--input-size", type=int, default=None,
                   help="image side in pixels (default: the backbone's input_size, else 112)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted |onnxruntime - torch| per output value (default: %(default)g)")
    p.set_defaults(run=run_export)
    return p


def run_export(args) -> int:
    from fftrain.evaluation.export import OnnxParityError, check_onnx, export_onnx, export_state_dict

    try:
        if not args.torch_out and not args.onnx:
            raise EvalUsageError("nothing to export: give --torch PATH and/or --onnx PATH")
        model = load_backbone(args.checkpoint).to("cpu")
        if args.torch_out:
            path = export_state_dict(model, args.torch_out)
            print(f"wrote {path} ({len(model.state_dict())} tensors; torch.load(path, weights_only=True))")
        if args.onnx:
            size = args.input_size or int(getattr(model, "input_size", 112))
            path = export_onnx(model, args.onnx, opset=args.opset, input_size=size)
            print(f"wrote {path} (opset {args.opset}, input 'data' [batch, 3, {size}, {size}], dynamic batch)")
            if not args.no_check:
                diff = check_onnx(model, path, batch_sizes=(1, 3), tolerance=args.tolerance)
                print(f"onnxruntime vs torch: max |diff| = {diff:.2e} on batches 1 and 3 "
                      f"(tolerance {args.tolerance:g})")
    except (EvalUsageError, OnnxParityError, ImportError) as e:
        return fail("export", e)
    return 0
