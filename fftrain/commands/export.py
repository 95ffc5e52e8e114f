"""`fftrain export`: a checkpoint's backbone to ONNX (dynamic batch), checked with onnxruntime.

    fftrain export --checkpoint CKPT --onnx model.onnx
"""

from __future__ import annotations

import argparse

from fftrain.commands.eval import EvalUsageError, fail, load_backbone


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="backbone to ONNX (dynamic batch), checked with onnxruntime",
        description="Export the checkpoint's backbone to ONNX: input 'input' [batch, 3, S, S] float32 RGB "
                    "in [-1, 1], output 'embedding' [batch, D] (not normalised). The file is then run "
                    "with onnxruntime against torch on the same random inputs.")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint directory")
    p.add_argument("--onnx", required=True, metavar="PATH", help="output .onnx file (written atomically)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument("--input-size", type=int, default=None,
                   help="image side in pixels (default: the backbone's input_size, else 112)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted |onnxruntime - torch| per output value (default: %(default)g)")
    p.set_defaults(run=run_export)
    return p


def run_export(args) -> int:
    from fftrain.evaluation.export import OnnxParityError, check_onnx, export_onnx

    try:
        model = load_backbone(args.checkpoint).to("cpu")
        size = args.input_size or int(getattr(model, "input_size", 112))
        path = export_onnx(model, args.onnx, opset=args.opset, input_size=size)
        print(f"wrote {path} (opset {args.opset}, input [batch, 3, {size}, {size}], dynamic batch)")
        if not args.no_check:
            diff = check_onnx(model, path, batch_sizes=(1, 3), tolerance=args.tolerance)
            print(f"onnxruntime vs torch: max |diff| = {diff:.2e} on batches 1 and 3 (tolerance {args.tolerance:g})")
    except (EvalUsageError, OnnxParityError, ImportError) as e:
        return fail("export", e)
    return 0
