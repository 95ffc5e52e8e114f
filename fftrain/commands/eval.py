"""`fftrain eval`: verification accuracy of a checkpoint on insightface .bin pair sets, and IJB-B/C.

    fftrain eval --checkpoint runs/r50/ckpt-480000 --data-dir val/                 # the six usual sets
    fftrain eval --checkpoint CKPT val/lfw.bin val/cfp_fp.bin --dao --json-out eval.json
    torchrun --nproc_per_node=8 -m fftrain eval --checkpoint CKPT --data-dir val/   # spread over ranks

    fftrain eval --checkpoint CKPT --ijb /data/IJB_release/IJBC --ijb-target IJBC --ijb-save out/   # TAR@FAR
    torchrun --nproc_per_node=8 -m fftrain eval --checkpoint CKPT --ijb DIR --ijb-target IJBC

`--dao` without `--dao-proxies` takes the class proxies from the checkpoint.
"""

from __future__ import annotations

import argparse
import os

from recordio_tools.files import json_safe, write_json_atomic

from fftrain.errors import UserError, report_user_error


class EvalUsageError(UserError, ValueError):
    """Bad arguments or inputs found by eval/export; printed as one line."""


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="verification accuracy on insightface .bin pair sets",
        description="10-fold accuracy ± std (insightface's protocol: flip-summed embeddings, squared "
                    "L2 thresholds 0..4 step 0.01) and TAR at FAR 1e-3 / 1e-4 on insightface .bin pair "
                    "files. Under torchrun the images are split over the ranks.")
    p.add_argument("bins", nargs="*", metavar="BIN", help=".bin pair files to evaluate")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint directory")
    p.add_argument("--data-dir", metavar="DIR",
                   help="directory holding <target>.bin files (those of --targets that exist are used)")
    p.add_argument("--targets", default=",".join(_targets()),
                   help="comma-separated file stems looked up in --data-dir (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward, per rank (default: 64; "
                   "each forward also runs the mirrored images, so 2x this many)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                   help="auto: cuda:<local rank> when CUDA is there, else the CPU")
    p.add_argument("--dao", action="store_true",
                   help="also report the DAO-calibrated score's accuracy (class proxies as anchors) "
                        "beside the cosine's under the same protocol")
    p.add_argument("--dao-proxies", metavar="NPY",
                   help="[C, D] float array of class proxies (.npy) for --dao; default: the checkpoint's")
    p.add_argument("--dao-k", type=int, default=10, help="nearest proxies per embedding (default: 10)")
    p.add_argument("--dao-tau", type=float, default=1.0, help="temperature tau (default: 1.0)")
    p.add_argument("--json-out", metavar="PATH", help="write the results as JSON (atomically)")
    _add_ijb_arguments(p)
    p.set_defaults(run=run_eval)
    return p


def _add_ijb_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ijb", metavar="DIR", help="IJB-B/C folder in insightface's layout (DIR/loose_crop, DIR/meta): "
                   "1:1 template verification, TAR at FAR 1e-6 .. 1e-1 as insightface's eval_ijbc.py computes it")
    p.add_argument("--ijb-target", default="IJBC", choices=["IJBC", "IJBB"], help="default: %(default)s")
    p.add_argument("--ijb-no-flip", action="store_true", help="image feature f(img), not f(img) + f(mirrored img)")
    p.add_argument("--ijb-no-norm-score", action="store_true",
                   help="L2-normalise each image feature before pooling (default: keep its norm)")
    p.add_argument("--ijb-no-detector-score", action="store_true",
                   help="do not weight each image feature by its detector score")
    p.add_argument("--ijb-save", metavar="DIR", help="write img_feats.npy (flip sums, before norm and detector "
                   "weighting, in the 5-point file's order), faceness_scores.npy, scores.npy (pair file's order) "
                   "and roc.png there")
    p.add_argument("--ijb-roc", metavar="PNG", help="ROC plot (default: roc.png in --ijb-save, else beside "
                   "--json-out)")


def _ijb_roc_path(args) -> str | None:
    if args.ijb_roc:
        return args.ijb_roc
    if args.ijb_save:
        return os.path.join(args.ijb_save, "roc.png")
    if args.json_out:
        return os.path.splitext(args.json_out)[0] + "_roc.png"
    return None


def _targets() -> tuple[str, ...]:
    from fftrain.evaluation.verification import VERIFICATION_TARGETS

    return VERIFICATION_TARGETS


def load_backbone(checkpoint: str):
    """The checkpoint's backbone (CPU, eval mode); a missing or bad checkpoint is an EvalUsageError."""
    from fftrain.training.checkpoint import CheckpointError, load_backbone_from_checkpoint

    if not os.path.isdir(checkpoint):
        raise EvalUsageError(f"{checkpoint}: checkpoint directory not found")
    try:
        return load_backbone_from_checkpoint(checkpoint)
    except CheckpointError as e:
        raise EvalUsageError(str(e)) from None


def _load_proxies(args):
    import numpy as np

    if args.dao_proxies:
        try:
            proxies = np.load(args.dao_proxies, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise EvalUsageError(f"{args.dao_proxies}: cannot read proxies ({e})") from None
        if proxies.ndim != 2:
            raise EvalUsageError(f"{args.dao_proxies}: expected a [C, D] array, got shape {proxies.shape}")
        return proxies
    from fftrain.training.checkpoint import CheckpointError, load_proxies_from_checkpoint

    try:
        return load_proxies_from_checkpoint(args.checkpoint)
    except CheckpointError as e:
        raise EvalUsageError(str(e)) from None


def _bin_paths(args) -> list[str]:
    paths = list(args.bins)
    if args.ijb and not paths and not args.data_dir:
        return []
    if args.data_dir:
        if not os.path.isdir(args.data_dir):
            raise EvalUsageError(f"{args.data_dir}: --data-dir not found")
        for stem in filter(None, (t.strip() for t in args.targets.split(","))):
            candidate = os.path.join(args.data_dir, f"{stem}.bin")
            if os.path.isfile(candidate):
                paths.append(candidate)
    if not paths:
        where = f" (none of {args.targets} found in {args.data_dir})" if args.data_dir else ""
        raise EvalUsageError(f"no .bin files to evaluate{where}; pass BIN paths or --data-dir")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise EvalUsageError(f"{missing[0]}: verification file not found")
    return paths


def fail(command: str, e: Exception) -> int:
    return report_user_error(f"fftrain {command}", e)


def run_eval(args) -> int:
    from fftrain.distributed import destroy_distributed, init_distributed
    from fftrain.evaluation.verification import evaluate_bin, format_table
    from recordio_tools.verification_bin import VerificationBinError

    try:
        if args.batch_size < 1:
            raise EvalUsageError(f"--batch-size {args.batch_size}: must be >= 1")
        if args.dao_k < 1:
            raise EvalUsageError(f"--dao-k {args.dao_k}: must be >= 1")
        paths = _bin_paths(args)
        ijb_meta = _read_ijb(args) if args.ijb else None
        model = load_backbone(args.checkpoint)
        proxies = _load_proxies(args) if args.dao else None
    except (UserError, VerificationBinError) as e:
        return fail("eval", e)

    ctx = init_distributed(args.device)
    try:
        model = model.to(ctx.device)
        results = []
        for path in paths:
            # proxies are the whole anchor set on every rank here (proxy_group=None)
            results.append(evaluate_bin(model, path, device=ctx.device, batch_size=args.batch_size,
                                        group=ctx.group, proxies=proxies, dao_k=args.dao_k,
                                        dao_tau=args.dao_tau))
        ijb = _evaluate_ijb(args, model, ijb_meta, ctx) if ijb_meta is not None else None
        if ctx.is_main:
            if results:
                print(format_table(results))
            if args.json_out:
                body = {"checkpoint": os.path.abspath(args.checkpoint), "world_size": ctx.world_size,
                        "results": results}
                if ijb is not None:
                    body["ijb"] = ijb
                write_json_atomic(args.json_out, json_safe(body), indent=2, allow_nan=False, make_parents=True)
                print(f"wrote {args.json_out}")
    except (UserError, VerificationBinError) as e:
        return fail("eval", e)
    finally:
        destroy_distributed(ctx)
    return 0


def _read_ijb(args):
    from fftrain.evaluation.ijb import check_save_dir, read_ijb_meta

    if args.ijb_save:
        check_save_dir(args.ijb_save)
    return read_ijb_meta(args.ijb, args.ijb_target)


def _evaluate_ijb(args, model, meta, ctx) -> dict:
    """TAR at the six FARs on every rank; rank 0 prints them and writes the ROC and the --ijb-save arrays."""
    from fftrain.evaluation.ijb import evaluate_ijb, format_ijb, save_arrays, save_roc

    result, img_feats, scores, roc = evaluate_ijb(
        model, meta, device=ctx.device, group=ctx.group, batch_size=args.batch_size, flip=not args.ijb_no_flip,
        norm_score=not args.ijb_no_norm_score, detector_score=not args.ijb_no_detector_score,
        progress=ctx.is_main)
    if ctx.is_main:
        print(format_ijb(result))
        if args.ijb_save:
            save_arrays(args.ijb_save, img_feats, meta.faceness, scores)
            print(f"wrote img_feats.npy, faceness_scores.npy, scores.npy in {args.ijb_save}")
        roc_path = _ijb_roc_path(args)
        if roc_path:
            save_roc(roc, result, roc_path)
            print(f"wrote {roc_path}")
    return result
