"""`fftrain audit`: label noise inside classes, duplicate identities across classes, test-set leakage.

    fftrain audit --checkpoint runs/demo/checkpoints/step-00001000 --data data/synth \\
        --verification data/synth/verification.bin --out runs/demo/audit
    torchrun --nproc_per_node=8 -m fftrain.cli audit --checkpoint CKPT --data /data/train \\
        --verification val/lfw.bin val/cfp_fp.bin --out audit/ --write-clean /data/train_clean

Embeds every training image once with the checkpoint's backbone (the ranks share the images),
then: intra-class noise (each image's cosine to its class centre), inter-class noise (class
centres above a threshold, within and across datasets, as components), identity leakage (each
verification image's nearest training centre; the accuracy recomputed without leaked pairs),
and per-dataset genuine / impostor distributions with their EER. Writes audit.json, CSV lists,
PNG plots to --out and prints a one-screen summary.

The three thresholds default to auto: calibrated on the checkpoint's own impostor and genuine
scores (fftrain/audit/calibrate.py), never laxer than the papers' values, each reported with the
FAR (or FRR) it implies beside the paper's value and its rate; the summary's first line warns when
the papers' 0.7 lets more than 1% of this model's impostors through.
"""

from __future__ import annotations

import argparse
import os
import shutil

from fftrain.audit.inputs import AuditError
from fftrain.config import FUSION_POLICIES, KNN_BACKENDS
from fftrain.errors import EXIT_USER_ERROR, UserError, one_line, report_user_error
from fftrain.audit.pipeline import (DEFAULT_CALIBRATION_PAIRS, DEFAULT_CALIBRATION_PROBES, DEFAULT_FAR, DEFAULT_INTER,
                                    DEFAULT_INTRA, DEFAULT_INTRA_FRR, DEFAULT_LEAK, make_work_dir, prepare, run, work_dir)
from fftrain.calibration.thresholds import parse_rate, parse_threshold


def add_audit_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("audit", help="label noise, duplicate identities and test-set leakage of a training set",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a checkpoint folder (step-NNNNNNNN)")
    p.add_argument("--data", required=True, metavar="MANIFEST",
                   help="the training set (manifest.json or its folder) the checkpoint was trained on")
    p.add_argument("--verification", nargs="+", default=[], metavar="BIN", help="insightface .bin pair files")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="report folder; replaced as a whole at the end (refused if it holds anything but an audit)")
    p.add_argument("--intra-threshold", type=parse_threshold, default=DEFAULT_INTRA, metavar="COS|auto",
                   help="an image below this cosine to its class centre is an outlier (default auto: the cosine below "
                        "which --intra-frr of this model's genuine own-centre cosines lie; the paper's 0.3, ArcFace "
                        "TPAMI, is reported beside it)")
    p.add_argument("--inter-threshold", type=parse_threshold, default=DEFAULT_INTER, metavar="COS|auto",
                   help="two class centres above this cosine are one person (default auto: the cosine at impostor FAR "
                        "--far among this model's centre pairs, never below the paper's 0.7, WebFace260M)")
    p.add_argument("--leak-threshold", type=parse_threshold, default=DEFAULT_LEAK, metavar="COS|auto",
                   help="a verification image above this cosine to a training centre is leaked (default auto: the "
                        "cosine at which --far of training images match another identity's centre, never below the "
                        "paper's 0.7)")
    p.add_argument("--far", type=parse_rate, default=DEFAULT_FAR,
                   help=f"impostor false-accept rate of the auto inter and leak thresholds (default {DEFAULT_FAR:g})")
    p.add_argument("--intra-frr", type=parse_rate, default=DEFAULT_INTRA_FRR,
                   help=f"genuine fraction below the auto intra threshold (default {DEFAULT_INTRA_FRR:g})")
    p.add_argument("--calibration-pairs", type=int, default=DEFAULT_CALIBRATION_PAIRS,
                   help=f"class-centre pairs sampled for the inter impostors (default {DEFAULT_CALIBRATION_PAIRS}; "
                        "all pairs when fewer)")
    p.add_argument("--calibration-probes", type=int, default=DEFAULT_CALIBRATION_PROBES,
                   help=f"training images searched for the leak impostors (default {DEFAULT_CALIBRATION_PROBES})")
    p.add_argument("--loo-max-images", type=int, default=20,
                   help="classes of at most this many images compare an image with the others' mean (default 20)")
    p.add_argument("--knn-k", type=int, default=10, help="neighbours searched per class centre (default 10)")
    p.add_argument("--max-component", type=int, default=6,
                   help="larger components are reported, not merged (default 6, as fusion)")
    p.add_argument("--same-dataset-policy", default="skip", choices=list(FUSION_POLICIES),
                   help="fusion twin: components chaining two classes of one dataset (default skip, as fuse)")
    p.add_argument("--allow-same-dataset", action="store_true",
                   help="fusion twin: search all pairs, so classes of one dataset merge too (as fuse)")
    p.add_argument("--backend", default="auto", choices=list(KNN_BACKENDS), help="kNN backend")
    p.add_argument("--pairs-per-dataset", type=int, default=5000,
                   help="genuine and impostor pairs sampled per dataset for the distributions and EER (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair sampling (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward (default 64; x2 with the flip)")
    p.add_argument("--chunk", type=int, default=1024, help="images decoded and embedded per chunk (default 1024)")
    p.add_argument("--no-flip", action="store_true", help="embed the image only, not image + mirror (half the time)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="auto: cuda when available")
    p.add_argument("--keep-embeddings", action="store_true",
                   help="keep embeddings.npy (float16, unit rows, row = combined-index key) and labels.npy in --out")
    p.add_argument("--write-clean", metavar="OUT",
                   help="also write a cleaned training set to OUT (outliers dropped, duplicates merged, leaked removed)")
    p.add_argument("--clean-merge", default="within", choices=["within", "all"],
                   help="--write-clean merges duplicate classes within one dataset only (default; FaceFusion "
                        "handles the cross-dataset ones) or all")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_audit)
    return p


def run_audit(args) -> int:
    from fftrain.distributed import all_gather_object, barrier, destroy_distributed, init_distributed

    ctx = init_distributed(args.device)
    try:
        try:
            prepared = prepare(args, ctx)
            error = None
        except UserError as e:
            prepared, error = None, one_line(e)
        errors = [e for e in all_gather_object(error, ctx.group) if e]
        if errors:  # every rank met the same check: rank 0 says it
            return report_user_error("fftrain audit", AuditError(errors[0])) if ctx.is_main else EXIT_USER_ERROR
        work = work_dir(args.out, all_gather_object(os.getpid(), ctx.group)[0])  # rank 0's
        if ctx.is_main:
            make_work_dir(args.out, os.getpid())
        barrier(ctx.group)
        try:
            run(args, ctx, work, *prepared)
        except UserError as e:  # a record or image found bad mid-pass: the rank that met it says it
            shutil.rmtree(work, ignore_errors=True)
            return report_user_error("fftrain audit", e)
        except BaseException:
            if ctx.is_main:
                shutil.rmtree(work, ignore_errors=True)
            raise
    finally:
        destroy_distributed(ctx)
    return 0
