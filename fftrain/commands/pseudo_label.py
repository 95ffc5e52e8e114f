"""`fftrain pseudo-label`: an unlabeled face collection -> a pseudo-labeled dataset folder.

    fftrain pseudo-label --checkpoint runs/r50/checkpoints/step-00480000 --unlabeled data/unlabeled --out data/pseudo
    # ranks share the embedding:
    torchrun --nproc_per_node=8 -m fftrain.cli pseudo-label --checkpoint CKPT --unlabeled DIR --out DIR
    recordio_tools build --out data/train data/{six datasets} data/pseudo     # one more dataset, like any other

--unlabeled is a dataset folder (dataset.json + shards; its labels are ignored) or a folder of image
files (any layout, searched recursively; `recordio_tools convert --unlabeled` makes the same into
a dataset folder). Every image is embedded with the checkpoint's backbone (flip-summed), compared
with the checkpoint's class proxies (max cosine), split into overlapping / disjoint identities
(Otsu and a two-Weibull mixture; --separation picks which decides), the disjoint part is clustered
on a faiss kNN graph (--backend), and each clustered image gets the loss weight (1 - p-(x))^gamma
from its cluster margin. `--embeddings FILE.npy` skips the backbone (rows in image order).

--out is written as a whole (built under a temporary name, renamed at the end) and holds: shards
with the cluster labels, dataset.json naming sample_weights.npy (one weight per record, in record
order), assignments.npz (per input image: score, nearest class, overlap/disjoint, label, weight,
p-(x)), pseudo_label_report.json and three PNGs (see fftrain/pseudo_label/report.py). An existing
--out is replaced only when an earlier pseudo-label run wrote it.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from fftrain.calibration.thresholds import parse_rate, parse_threshold
from fftrain.errors import report_user_error
from fftrain.pseudo_label.collection import (UnlabeledImages, check_out, embed_share, load_embeddings_file,
                                               score_against_truth, write_dataset)
from fftrain.pseudo_label.pipeline import (OVERLAP_MODES, OVERLAPPING, RULES, OneModeError, PseudoLabelError,
                                           PseudoLabelOptions)


def add_pseudo_label_parser(subparsers) -> argparse.ArgumentParser:
    from fftrain.pseudo_label.clustering import BACKENDS, DEFAULT_RESOLUTION, DEFAULT_THRESHOLDS, KNN_INDEXES

    d = PseudoLabelOptions()
    p = subparsers.add_parser("pseudo-label", help="cluster an unlabeled collection into a weighted dataset",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a checkpoint folder (step-NNNNNNNN)")
    p.add_argument("--unlabeled", required=True, metavar="DATASET", help="dataset folder or image folder")
    p.add_argument("--out", required=True, metavar="DIR", help="the pseudo-labeled dataset folder to write")
    p.add_argument("--name", default="pseudo", help="dataset name in dataset.json (default pseudo)")
    p.add_argument("--embeddings", metavar="FILE.npy", help="precomputed [N, D] embeddings, one row per image")
    p.add_argument("--overlapping", default=d.overlapping, choices=OVERLAPPING,
                   help="overlapping images: discard (default) or assign to a class per nearest labeled class")
    p.add_argument("--separation", default=d.rule, choices=RULES, help="rule that decides (default weibull)")
    p.add_argument("--overlap", default=d.overlap, choices=OVERLAP_MODES,
                   help="auto: separate (default); none: no image is of a labeled identity; all: every one is")
    p.add_argument("--backend", default=d.backend, choices=BACKENDS, help="graph clustering (default infomap)")
    p.add_argument("--knn-k", type=int, default=d.knn_k, help=f"neighbours per image (default {d.knn_k})")
    p.add_argument("--knn-index", default=d.knn_index, choices=KNN_INDEXES,
                   help="faiss index: flat (exact), ivf, or auto (flat up to 20K images)")
    p.add_argument("--threshold", type=parse_threshold, default=d.threshold, metavar="COS|auto",
                   help="kNN edges of cosine at or below this are dropped (default auto: the cosine at impostor FAR "
                        "--edge-far among pairs of overlapping images assigned to different labeled classes, never "
                        "below the backend's default: " + ", ".join(f"{b} {t}" for b, t in DEFAULT_THRESHOLDS.items())
                        + ")")
    p.add_argument("--edge-far", type=parse_rate, default=d.edge_far,
                   help=f"impostor false-accept rate of the auto edge threshold (default {d.edge_far:g})")
    p.add_argument("--min-purity", type=float, default=d.min_purity,
                   help=f"clusters of lower estimated pairwise precision are reported, not written (default "
                        f"{d.min_purity}; 0 writes every cluster)")
    p.add_argument("--resolution", type=float, default=DEFAULT_RESOLUTION,
                   help=f"leiden CPM resolution (default {DEFAULT_RESOLUTION})")
    p.add_argument("--min-cluster-size", type=int, default=d.min_cluster_size,
                   help=f"smaller clusters are not written (default {d.min_cluster_size})")
    p.add_argument("--gamma", type=float, default=d.gamma, help="weight = (1 - p-(x))^gamma (default 1)")
    p.add_argument("--shards", type=int, default=1, help="output shards (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward (default 64)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--truth", metavar="FILE.json", help="ground truth (recordio_tools synth --unlabeled) to score")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run_pseudo_label)
    return p


def _options(args) -> PseudoLabelOptions:
    try:
        return PseudoLabelOptions(rule=args.separation, overlap=args.overlap, overlapping=args.overlapping,
                                  backend=args.backend, knn_k=args.knn_k, knn_index=args.knn_index,
                                  threshold=args.threshold, edge_far=args.edge_far, min_purity=args.min_purity,
                                  resolution=args.resolution,
                                  min_cluster_size=args.min_cluster_size, gamma=args.gamma, seed=args.seed)
    except ValueError as e:
        raise PseudoLabelError(f"bad option: {e}") from None


def _fail(e: Exception) -> int:
    return report_user_error("fftrain pseudo-label", e)


def run_pseudo_label(args) -> int:
    from fftrain.training.checkpoint import CheckpointError, load_proxies_from_checkpoint, read_meta
    from recordio_tools.manifest import ManifestError
    from recordio_tools.recordio import RecordIOError

    try:
        options = _options(args)
        if args.shards < 1 or args.batch_size < 1:
            raise PseudoLabelError(f"--shards {args.shards} and --batch-size {args.batch_size} must be >= 1")
        check_out(args.out, [args.unlabeled, args.checkpoint, args.embeddings])
        meta = read_meta(args.checkpoint)
        images = UnlabeledImages(args.unlabeled)
        embeddings = None
        if args.embeddings:
            embeddings = load_embeddings_file(args.embeddings, len(images), meta["embedding_size"], args.checkpoint)
    except (PseudoLabelError, CheckpointError, ManifestError, RecordIOError) as e:
        return _fail(e)
    if embeddings is None:
        embeddings = _embed_all(args, images)
        if embeddings is None:
            return 0  # not rank 0: rank 0 goes on alone
        if isinstance(embeddings, Exception):
            return _fail(embeddings)
    try:
        return _label_and_write(args, options, images, embeddings, load_proxies_from_checkpoint(args.checkpoint))
    except (PseudoLabelError, ManifestError, RecordIOError) as e:
        return _fail(e)


def _readiness(checkpoint: str) -> str:
    """Where the checkpoint stands in its run: step of total, phase."""
    from fftrain.training.checkpoint import read_meta

    meta = read_meta(checkpoint)
    total = (meta.get("config") or {}).get("optim", {}).get("total_steps")
    where = f"step {meta.get('step')}" + (f" of {total}" if total else "")
    return f"the checkpoint is at {where} ({meta.get('phase', '?')} phase)"


def _embed_all(args, images):
    """All embeddings on rank 0 (None on the others), or the user error that stopped the embedding."""
    from fftrain.training.checkpoint import load_backbone_from_checkpoint
    from fftrain.distributed import all_gather_object, destroy_distributed, init_distributed

    ctx = init_distributed(args.device)
    try:
        backbone = load_backbone_from_checkpoint(args.checkpoint).to(ctx.device)
        try:
            share, error = embed_share(images, backbone, ctx, args.batch_size), None
        except PseudoLabelError as e:
            share, error = None, str(e)
        parts = all_gather_object((share, error), ctx.group)
    finally:
        destroy_distributed(ctx)
    errors = [e for _, e in parts if e]
    if errors:
        return PseudoLabelError(errors[0]) if ctx.is_main else None
    if not ctx.is_main:
        return None
    return np.concatenate([s for s, _ in parts if s is not None and len(s)])


def _label_and_write(args, options, images, embeddings, proxies) -> int:
    from fftrain.pseudo_label.pipeline import pseudo_label
    from fftrain.pseudo_label.report import build_report

    proxies = proxies.numpy() if hasattr(proxies, "numpy") else np.asarray(proxies)
    try:
        result = pseudo_label(embeddings, proxies, options)
    except OneModeError as e:
        raise OneModeError(f"{e}; {_readiness(args.checkpoint)}") from None
    extra = {"checkpoint": os.path.abspath(args.checkpoint), "unlabeled": os.path.abspath(args.unlabeled)}
    if args.truth:
        extra["truth"] = score_against_truth(args.truth, result)
    report = build_report(result, options, extra)
    write_dataset(args.out, args.name, images, result, report, args.shards)
    sep = report["separation"]
    print(f"edge threshold: {result.edge.describe()}")
    if result.low_purity:
        print(f"low purity: {len(result.low_purity)} clusters ({sum(c['size'] for c in result.low_purity)} images) "
              f"estimated below {options.min_purity} pairwise precision were not written (listed in the report)")
    print(f"pseudo-label: {report['num_samples']} images: {report['overlapping']} overlapping "
          f"({options.overlapping}), {report['disjoint']} disjoint, {report['rejected']} rejected; "
          f"{result.num_clusters} clusters; wrote {report['written']} images in {result.num_classes} classes to "
          f"{args.out}" + (f" (Otsu {sep['otsu_threshold']:.3f}, Weibull bounds {sep['t_disjoint']:.3f} / "
                           f"{sep['t_overlap']:.3f})" if sep else ""))
    return 0
