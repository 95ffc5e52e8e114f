"""How well `fftrain audit` finds the noise `recordio_tools synth` planted, and what cleaning does to fusion.

    recordio_tools synth --out data/noisy --noise-mislabel 0.02 --noise-duplicates 0.03 --noise-leaked-ids 15
    torchrun --nproc_per_node=2 fftrain/train.py --set output_dir=runs/noisy --set data.synth_dir=data/noisy
    fftrain audit --checkpoint runs/noisy/checkpoints/step-00001000 --data data/noisy \
        --verification data/noisy/verification.bin --out runs/noisy/audit --keep-embeddings
    python benchmarks/audit_detection.py --audit runs/noisy/audit --synth data/noisy --run runs/noisy

Scores against noise.json (and overlaps.json), each as precision / recall:
- mislabeled images: outliers.csv rows (dataset, shard, shard key) vs the wrongly filed images;
- duplicate identities inside one dataset: within-dataset pairs of duplicate_pairs.csv vs the planted pairs;
- leaked verification identities: leaked_<set>.csv images vs the images of leaked persons, and the
  training classes nearest to them vs the classes the persons were filed under;
- cross-dataset duplicates (the planted overlaps FaceFusion merges): across pairs vs overlaps.json pairs.
Fusion with and without cleaning, from the kept embeddings: the fusion step's merge (its twin, at
--t1) on the image centres of all images vs of the images the audit kept, scored pairwise against
overlaps.json; and the run's own fusion (its fusion report), for reference.
Retraining on the cleaned set (verification and fusion of a second run): benchmarks/audit_retrain.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pr(predicted: set, truth: set) -> dict:
    hit = len(predicted & truth)
    return {"predicted": len(predicted), "true": len(truth), "correct": hit,
            "precision": hit / len(predicted) if predicted else None, "recall": hit / len(truth) if truth else None}


def _rows(path: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def detection(audit_dir: str, synth_dir: str) -> dict:
    from fftrain.evaluation.merge_quality import group_pairs
    from recordio_tools.overlaps import read_overlaps

    truth = json.load(open(os.path.join(synth_dir, "noise.json"), encoding="utf-8"))
    wrong = {(r["dataset"], r["shard"], int(r["key"])) for r in truth["mislabeled"]}
    found = {(r["dataset"], os.path.basename(r["shard"]), int(r["shard_key"]))
             for r in _rows(os.path.join(audit_dir, "outliers.csv"))}
    pairs = _rows(os.path.join(audit_dir, "duplicate_pairs.csv"))
    within = {(int(r["class_a"]), int(r["class_b"])) for r in pairs if r["scope"] == "within"}
    across = {(int(r["class_a"]), int(r["class_b"])) for r in pairs if r["scope"] == "across"}
    planted_dups = {tuple(sorted(d["source_classes"])) for d in truth["duplicates"]}
    overlaps = group_pairs(read_overlaps(os.path.join(synth_dir, "overlaps.json")).source_class_groups())
    leaked_rows = _rows(os.path.join(audit_dir, "leaked_verification.csv"))
    leaked_images = {int(r["image"]) for r in leaked_rows}
    true_images = {i for leak in truth["leaked"] for i in leak["verification_images"]}
    leaked_classes = {int(r["nearest_class"]) for r in leaked_rows}
    true_classes = {leak["source_class"] for leak in truth["leaked"]}
    return {"mislabeled_images": _pr(found, wrong), "duplicates_within_dataset": _pr(within, planted_dups),
            "leaked_images": _pr(leaked_images, true_images), "leaked_classes": _pr(leaked_classes, true_classes),
            "overlaps_across_datasets": _pr(across, overlaps)}


def fusion_with_and_without_cleaning(audit_dir: str, synth_dir: str, t1: float) -> dict:
    from fftrain.audit.inter import fusion_twin
    from fftrain.config import FusionConfig
    from fftrain.audit.intra import class_centres
    from fftrain.evaluation.merge_quality import merge_quality
    from recordio_tools.manifest import load_manifest
    from recordio_tools.overlaps import read_overlaps

    report = json.load(open(os.path.join(audit_dir, "audit.json"), encoding="utf-8"))
    manifest = load_manifest(synth_dir)
    emb = np.load(os.path.join(audit_dir, "embeddings.npy"), mmap_mode="r")
    labels = np.load(os.path.join(audit_dir, "labels.npy"))
    outliers = np.array([int(r["key"]) for r in _rows(os.path.join(audit_dir, "outliers.csv"))], dtype=np.int64)
    truth = read_overlaps(os.path.join(synth_dir, "overlaps.json")).source_class_groups()
    table = manifest.class_dataset()
    settings = report["settings"]
    out = {}
    for name, keep in (("all images", np.ones(len(labels), bool)), ("outliers dropped", ~np.isin(np.arange(len(labels)), outliers))):
        sums = np.zeros((manifest.num_classes, emb.shape[1]))
        np.add.at(sums, labels[keep], np.asarray(emb[keep], dtype=np.float64))
        centres = class_centres(sums, np.bincount(labels[keep], minlength=manifest.num_classes))
        config = FusionConfig(t1=t1, knn_k=settings["knn_k"], max_component=settings["max_component"],
                              same_dataset_policy=settings["same_dataset_policy"], backend="auto")
        plan = fusion_twin(centres, table, None, config)
        out[name] = merge_quality([c.members for c in plan.components], truth).to_dict()
    return out


def accuracy_by_true_leakage(checkpoint: str, synth_dir: str) -> dict:
    """Verification accuracy on all pairs, on the pairs the ground truth says are not leaked, and on
    the leaked ones (what the audit's corrected figure estimates)."""
    from fftrain.audit.embed import embed_verification_bin
    from fftrain.training.checkpoint import load_backbone_from_checkpoint
    from fftrain.distributed import single_process_context
    from fftrain.evaluation.metrics import verification_metrics

    truth = json.load(open(os.path.join(synth_dir, "noise.json"), encoding="utf-8"))
    emb, issame = embed_verification_bin(load_backbone_from_checkpoint(checkpoint),
                                         os.path.join(synth_dir, "verification.bin"), ctx=single_process_context())
    leaked = np.zeros(len(issame), bool)
    leaked[[j for leak in truth["leaked"] for j in leak["verification_pairs"]]] = True
    out = {}
    for name, keep in (("all pairs", np.ones_like(leaked)), ("truly not leaked", ~leaked), ("truly leaked", leaked)):
        rows = emb.reshape(-1, 2, emb.shape[1])[keep].reshape(-1, emb.shape[1])
        m = verification_metrics(rows, issame[keep])
        out[name] = {"pairs": int(keep.sum()), "accuracy": m.accuracy, "std": m.std}
    return out


def _best_threshold(scores: np.ndarray, positive: np.ndarray, below: bool) -> dict:
    """The threshold maximising min(precision, recall) when the positives are the scores below (or above) it."""
    order = np.argsort(scores if below else -scores, kind="stable")
    hits = np.cumsum(positive[order])
    taken = np.arange(1, order.size + 1)
    precision, recall = hits / taken, hits / max(1, positive.sum())
    best = int(np.argmax(np.minimum(precision, recall)))
    return {"threshold": float(scores[order[best]]), "precision": float(precision[best]),
            "recall": float(recall[best])}


def threshold_diagnostics(audit_dir: str, synth_dir: str) -> dict:
    """Diagnostic, not a criterion: with the ground truth, the best any single threshold could do on these
    embeddings (is the miss the threshold's or the model's?)."""
    from fftrain.audit.embed import embed_verification_bin
    from fftrain.audit.intra import class_centres, intra_class
    from fftrain.training.checkpoint import load_backbone_from_checkpoint
    from fftrain.data.records import RecordSet
    from fftrain.distributed import single_process_context
    from recordio_tools.manifest import load_manifest

    report = json.load(open(os.path.join(audit_dir, "audit.json"), encoding="utf-8"))
    truth = json.load(open(os.path.join(synth_dir, "noise.json"), encoding="utf-8"))
    manifest = load_manifest(synth_dir)
    records = RecordSet(manifest)
    emb = np.load(os.path.join(audit_dir, "embeddings.npy"), mmap_mode="r")
    labels = np.load(os.path.join(audit_dir, "labels.npy"))
    sums = np.zeros((manifest.num_classes, emb.shape[1]))
    np.add.at(sums, labels, np.asarray(emb, dtype=np.float64))
    counts = np.bincount(labels, minlength=manifest.num_classes)
    intra = intra_class(emb, labels, sums, counts, np.zeros_like(sums), np.arange(manifest.num_classes),
                        threshold=0.3, loo_max_images=report["settings"]["loo_max_images"])
    wrong = {(r["dataset"], r["shard"], int(r["key"])) for r in truth["mislabeled"]}
    is_wrong = np.zeros(len(records), bool)
    for key in range(len(records)):
        shard, shard_key = records.shard_key_of(key)
        name = manifest.datasets[manifest.dataset_of_shard()[shard]].name
        is_wrong[key] = (name, os.path.basename(records.rec_paths[shard]), shard_key) in wrong
    defined = ~np.isnan(intra.cos_centre)
    out = {"mislabeled_images (cos to centre, below)": _best_threshold(intra.cos_centre[defined], is_wrong[defined], True)}
    centres = class_centres(sums, counts)
    table = manifest.class_dataset()
    a, b = np.triu_indices(manifest.num_classes, 1)
    same = table[a] == table[b]
    a, b = a[same], b[same]
    planted = {tuple(sorted(d["source_classes"])) for d in truth["duplicates"]}
    is_dup = np.array([(int(x), int(y)) in planted for x, y in zip(a, b)])
    out["duplicates_within_dataset (centre cos, above)"] = _best_threshold(np.einsum("ij,ij->i", centres[a], centres[b]),
                                                                            is_dup, False)
    verification = os.path.join(synth_dir, "verification.bin")
    vemb, _ = embed_verification_bin(load_backbone_from_checkpoint(report["checkpoint"]), verification,
                                     ctx=single_process_context())
    leaked = np.zeros(vemb.shape[0], bool)
    leaked[[i for leak in truth["leaked"] for i in leak["verification_images"]]] = True
    out["leaked_images (nearest centre cos, above)"] = _best_threshold((vemb @ centres.T).max(1), leaked, False)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audit", required=True, help="audit folder (written with --keep-embeddings)")
    p.add_argument("--synth", required=True, help="the synthetic set with noise.json and overlaps.json")
    p.add_argument("--run", help="the training run folder (its fusion report is scored too)")
    p.add_argument("--t1", type=float, nargs="+", default=[0.7, 0.82], help="fusion thresholds to score")
    p.add_argument("--json-out", help="write the figures as JSON")
    p.add_argument("--diagnostics", action="store_true",
                   help="also the best min(precision, recall) any one threshold reaches, from the ground truth")
    args = p.parse_args(argv)
    result = {"detection": detection(args.audit, args.synth),
              "fusion_centres": {str(t): fusion_with_and_without_cleaning(args.audit, args.synth, t) for t in args.t1}}
    report = json.load(open(os.path.join(args.audit, "audit.json"), encoding="utf-8"))
    result["timing"] = report["timing"]
    result["leakage"] = [{k: v for k, v in leak.items() if k in ("name", "leaked_images", "leaked_pairs", "pairs",
                                                                   "accuracy_full", "accuracy_unleaked")}
                         for leak in report["leakage"]]
    result["accuracy_by_true_leakage"] = accuracy_by_true_leakage(report["checkpoint"], args.synth)
    if args.diagnostics:
        result["threshold_diagnostics"] = threshold_diagnostics(args.audit, args.synth)
    if args.run:
        from fftrain.evaluation.merge_quality import merge_quality_of_run

        result["run_fusion"] = merge_quality_of_run(args.run, os.path.join(args.synth, "overlaps.json")).to_dict()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json_out:
        from recordio_tools.files import write_text_atomic

        write_text_atomic(args.json_out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
