"""`fftrain fuse`: run the fusion step on a saved checkpoint, to choose T1 before a long run.

    fftrain fuse --checkpoint runs/demo/checkpoints/step-00000600 --t1 0.7 --dry-run
    fftrain fuse --checkpoint CKPT --t1 0.65 --out fused/     # + label_map.json for `recordio_tools relabel`
    fftrain fuse --checkpoint CKPT --t1 auto --dry-run        # readiness, the valley's T1, estimated precision/recall

Reads the checkpoint's proxies, label map and class table in one process, computes the merge
with the same code the trainer runs at T2, prints the summary, and writes the report (JSON of
merged components, PNG histogram of each proxy's top-1 similarity to other datasets with T1
marked). Without --dry-run it also writes label_map.json (source class -> fused class, with the
dataset names and offsets) that `recordio_tools relabel` applies to the shards.
"""

from __future__ import annotations

import argparse
import json
import os


def add_fuse_parser(subparsers) -> argparse.ArgumentParser:
    from fftrain.config import FUSION_POLICIES, KNN_BACKENDS

    p = subparsers.add_parser("fuse", help="compute and report the fusion merge on a saved checkpoint",
                              description=__doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[2])
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a checkpoint folder (step-NNNNNNNN)")
    p.add_argument("--t1", type=_t1_value, default=0.7,
                   help="cosine threshold, pairs strictly above merge (default 0.7); 'auto': the valley of the "
                        "two-mode fit of the top-1 cross-dataset cosines, with its estimated precision and recall")
    p.add_argument("--t1-min", type=float, default=0.5, help="--t1 auto: lowest threshold (default 0.5)")
    p.add_argument("--t1-max", type=float, default=0.95, help="--t1 auto: highest threshold (default 0.95)")
    p.add_argument("--min-separation", type=float, default=3.0,
                   help="--t1 auto: least Ashman's D of the two modes that counts as a valley (default 3)")
    p.add_argument("--mutual-nn", action="store_true",
                   help="candidate pairs only between reciprocal nearest neighbours (fusion.mutual_nn)")
    p.add_argument("--knn-k", type=int, default=10, help="neighbours searched per proxy (default 10)")
    p.add_argument("--max-component", type=int, default=6, help="larger components are not merged (default 6)")
    p.add_argument("--same-dataset-policy", default="skip", choices=list(FUSION_POLICIES),
                   help="components chaining two classes of one dataset (default skip)")
    p.add_argument("--allow-same-dataset", action="store_true",
                   help="search all pairs of proxies, so classes of one dataset merge too (fusion.allow_same_dataset)")
    p.add_argument("--backend", default="auto", choices=list(KNN_BACKENDS), help="kNN backend")
    p.add_argument("--out", metavar="DIR", help="report folder (default: <run>/fuse/<checkpoint>-t1_<T1>, "
                   "beside the checkpoints folder)")
    p.add_argument("--dry-run", action="store_true", help="report only; do not write label_map.json")
    p.set_defaults(run=run_fuse)
    return p


def _t1_value(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _default_out(checkpoint: str, t1) -> str:
    checkpoint = os.path.abspath(checkpoint)
    run_dir = os.path.dirname(os.path.dirname(checkpoint))
    return os.path.join(run_dir, "fuse", f"{os.path.basename(checkpoint)}-t1_{t1 if t1 == 'auto' else f'{t1:.3f}'}")


def _readiness(threshold) -> str:
    """One line: does the top-1 histogram have the valley fusion needs (the T2 'auto' condition on the geometry)."""
    if threshold.mode == "fixed":
        return "readiness: not assessed with a fixed T1 (use --t1 auto)"
    if not threshold.merges:
        return f"readiness: not ready, no valley: {threshold.reason}"
    return (f"readiness: two modes with a valley; T1 {threshold.t1:.3f} ({threshold.reason}); estimated merge "
            f"precision {threshold.precision:.3f}, recall {threshold.recall:.3f}")


def run_fuse(args) -> int:
    from recordio_tools.files import atomic_directory, write_text_atomic
    from recordio_tools.shards import check_out

    from fftrain.config import FusionConfig
    from fftrain.fusion import SourceInfo, run_fusion
    from fftrain.training.checkpoint import load_proxies_and_labels

    saved = load_proxies_and_labels(args.checkpoint)  # a CheckpointError: one line on stderr, exit 2 (fftrain.cli)
    meta = saved.meta
    if meta.get("fused"):
        print(f"fftrain fuse: note: {args.checkpoint} is already fused; this merges the fused classes further")
    datasets = meta["datasets"]
    source_info = SourceInfo.from_counts([d["name"] for d in datasets], [d["num_classes"] for d in datasets])
    config = FusionConfig(t1=args.t1, knn_k=args.knn_k, max_component=args.max_component,
                          same_dataset_policy=args.same_dataset_policy, allow_same_dataset=args.allow_same_dataset,
                          backend=args.backend, t1_min=args.t1_min, t1_max=args.t1_max,
                          min_separation=args.min_separation, mutual_nn=args.mutual_nn)
    out = check_out(args.out or _default_out(args.checkpoint, args.t1), [args.checkpoint], "fftrain fuse")
    with atomic_directory(out, "fftrain fuse") as tmp:  # an existing --out only when an earlier fuse wrote it
        result = run_fusion(saved.proxies, [], class_dataset=saved.fused_dataset, label_map=saved.label_map,
                            source_info=source_info, config=config, report_dir=tmp)
        if not args.dry_run:
            body = {"format": "fftrain-label-map", "t1": result.threshold.to_dict()["t1"],
                    "checkpoint": os.path.abspath(args.checkpoint), "datasets": datasets,
                    "num_classes_fused": result.num_classes_new, "label_map": result.new_label_map.tolist()}
            write_text_atomic(os.path.join(tmp, "label_map.json"), json.dumps(body) + "\n")
    print(f"T1={args.t1}: {result.summary_line()}")
    print(_readiness(result.threshold))
    paths = {kind: path and os.path.join(out, os.path.basename(path)) for kind, path in result.report_paths.items()}
    print(f"report: {paths.get('json')}  histogram: {paths.get('png')}")
    if not args.dry_run:
        print(f"label map: {os.path.join(out, 'label_map.json')}")
    return 0
