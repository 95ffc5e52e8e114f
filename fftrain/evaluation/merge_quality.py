"""How well a fusion found the planted identity overlaps, and what one finished run reports.

    q = merge_quality_of_run("runs/fusion_r40", "data/split_r40/overlaps.json")
    q.precision, q.recall          # pairwise, over source classes
    r = read_run_results("runs/fusion_r40")   # final accuracy ± std, classes, phase, fused

Pairwise scores: every two source classes in one merged fused class are a predicted pair; every
two source classes in one ground-truth group (one person in several datasets, `overlaps.json`)
are a true pair. precision = |predicted & true| / |predicted|, recall = |predicted & true| /
|true|. A run that never fused (or merged nothing) predicts no pair: recall 0 when there are true
pairs, precision undefined (None). With no true pairs recall is undefined (None).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Iterable

from fftrain.errors import UserError

FUSION_REPORT = os.path.join("fusion", "fusion_report.json")


class RunResultsError(UserError, ValueError):
    """A run folder without the files a finished run writes (metrics.jsonl, logs, checkpoints)."""


def group_pairs(groups: Iterable[Iterable[int]]) -> set[tuple[int, int]]:
    """All unordered pairs (a < b) of source classes that share a group."""
    pairs: set[tuple[int, int]] = set()
    for g in groups:
        members = sorted({int(c) for c in g})
        pairs.update(combinations(members, 2))
    return pairs


@dataclass(frozen=True)
class MergeQuality:
    predicted_pairs: int
    true_pairs: int
    correct_pairs: int
    merged_components: int
    """Fused classes holding two or more source classes."""

    @property
    def precision(self) -> float | None:
        return self.correct_pairs / self.predicted_pairs if self.predicted_pairs else None

    @property
    def recall(self) -> float | None:
        return self.correct_pairs / self.true_pairs if self.true_pairs else None

    def to_dict(self) -> dict:
        return {**asdict(self), "precision": self.precision, "recall": self.recall}


def merge_quality(predicted_groups: Iterable[Iterable[int]], true_groups: Iterable[Iterable[int]]) -> MergeQuality:
    """Pairwise precision / recall of `predicted_groups` (source classes merged into one fused class)
    against `true_groups` (source classes of one person). Singletons count for nothing."""
    predicted_groups = [list(g) for g in predicted_groups]
    predicted, true = group_pairs(predicted_groups), group_pairs(true_groups)
    merged = sum(1 for g in predicted_groups if len(set(g)) > 1)
    return MergeQuality(len(predicted), len(true), len(predicted & true), merged)


def merged_groups_from_report(report: dict | str) -> list[list[int]]:
    """Source classes of each merged component of a fusion report (dict, or path of fusion_report.json)."""
    if isinstance(report, str):
        with open(report, encoding="utf-8") as f:
            report = json.load(f)
    try:
        return [sorted(int(m["source_class"]) for m in comp["members"]) for comp in report["merged"]]
    except (KeyError, TypeError) as e:
        raise RunResultsError(f"fusion report without merged components' source classes ({e})") from None


def merge_quality_of_run(run_dir: str, overlaps_path: str) -> MergeQuality:
    """A run's fusion (its fusion/fusion_report.json; none = nothing merged) scored against overlaps.json."""
    from recordio_tools.overlaps import read_overlaps

    truth = read_overlaps(overlaps_path).source_class_groups()
    report = os.path.join(run_dir, FUSION_REPORT)
    predicted = merged_groups_from_report(report) if os.path.exists(report) else []
    return merge_quality(predicted, truth)


_FINAL_LINE = re.compile(r"final verification (?P<name>\S+): accuracy (?P<acc>[-+0-9.eE]+) ± (?P<std>[-+0-9.eE]+)")


def read_run_results(run_dir: str) -> dict:
    """What a finished run reports: {'steps', 'classes', 'phase', 'fused', 'verification': {name: {'accuracy',
    'std'}}}. Classes come from the newest checkpoint's meta.json (`num_classes_fused`), else from the last
    metrics row; verification from the final lines of logs/rank0.log (std) and metrics.jsonl (accuracy)."""
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(metrics_path):
        raise RunResultsError(f"{run_dir}: no metrics.jsonl; did the run start?")
    rows = []
    with open(metrics_path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    step_rows = [r for r in rows if "classes" in r]
    if not step_rows:
        raise RunResultsError(f"{run_dir}: metrics.jsonl has no step rows")
    last = step_rows[-1]
    out = {"steps": int(last["step"]), "classes": int(last["classes"]), "phase": last.get("phase"), "fused": None,
           "verification": {}}
    ckpt_root = os.path.join(run_dir, "checkpoints")
    if os.path.isdir(ckpt_root):
        done = sorted(d for d in os.listdir(ckpt_root)
                      if d.startswith("step-") and os.path.exists(os.path.join(ckpt_root, d, "meta.json")))
        if done:
            with open(os.path.join(ckpt_root, done[-1], "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)
            out.update(classes=int(meta["num_classes_fused"]), fused=bool(meta["fused"]),
                       checkpoint_step=int(meta["step"]))
    for r in rows:
        for key, value in r.items():
            if key.startswith("verification/") and key.endswith("/accuracy"):
                name = key[len("verification/"):-len("/accuracy")]
                out["verification"][name] = {"accuracy": float(value), "std": None, "step": int(r["step"])}
    log_path = os.path.join(run_dir, "logs", "rank0.log")
    if os.path.exists(log_path):
        with open(log_path, encoding="utf-8") as f:
            for line in f:
                m = _FINAL_LINE.search(line)
                if m:
                    entry = out["verification"].setdefault(m["name"], {"step": out["steps"]})
                    entry.update(accuracy=float(m["acc"]), std=float(m["std"]))
    return out


def proxy_pair_cosines(proxies, overlaps_path: str, source: str = "proxies") -> dict:
    """How separable the planted duplicates are in a checkpoint's class proxies (one proxy per source class,
    i.e. a run that has not fused; `load_proxies_from_checkpoint` reads them, `source` names them in errors):
    cosine quantiles of the true pairs and of the cross-dataset non-pairs, and, for thresholds T, the recall
    and the false pairs a fusion at T1 = T would get from these proxies."""
    import numpy as np
    import torch

    from recordio_tools.overlaps import read_overlaps

    weight = torch.nn.functional.normalize(proxies.float(), dim=1).numpy()
    overlaps = read_overlaps(overlaps_path)
    if weight.shape[0] != sum(d["num_classes"] for d in overlaps.datasets):
        raise RunResultsError(f"{source}: {weight.shape[0]} proxies, but the ground truth has "
                              f"{sum(d['num_classes'] for d in overlaps.datasets)} source classes (fused run?)")
    offsets = [d["class_offset"] for d in overlaps.datasets]
    dataset = np.searchsorted(offsets, np.arange(weight.shape[0]), side="right") - 1
    sims = weight @ weight.T
    true = sorted(group_pairs(overlaps.source_class_groups()))
    cross = dataset[:, None] != dataset[None, :]
    for a, b in true:
        cross[a, b] = cross[b, a] = False
    negatives = sims[np.triu(cross, 1)]
    positives = np.array([sims[a, b] for a, b in true], dtype=np.float64)
    q = (0.0, 0.1, 0.5, 0.9, 1.0)
    return {
        "true_pairs": len(true),
        "true_pair_cos": dict(zip(map(str, q), np.quantile(positives, q).round(4).tolist())) if true else {},
        "non_pair_cos": dict(zip(map(str, (0.5, 0.99, 0.999, 1.0)),
                                 np.quantile(negatives, (0.5, 0.99, 0.999, 1.0)).round(4).tolist())),
        "at_threshold": {f"{t:.1f}": {"recall": float((positives > t).mean()) if true else None,
                                      "false_pairs": int((negatives > t).sum())}
                         for t in (0.3, 0.4, 0.5, 0.6, 0.7)},
    }
