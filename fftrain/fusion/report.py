"""What the fusion did, for a person to audit: a JSON report and the top-1 similarity histogram.

    report = build_report(plan=plan, label_map=label_map, source_info=SourceInfo.from_manifest(m),
                          class_dataset=class_dataset, neighbours=neighbours, top1=top1, censored=censored,
                          settings=settings, stats=plan.stats)
    paths = write_report(out_dir, report, top1, t1=0.7)
    # -> {"json": out_dir/fusion_report.json, "png": out_dir/fusion_top1_hist.png}

JSON: the settings and counts; every merged component (new fused id; its members with dataset
name, local label, source class and old fused id; the cosines between members); merged
components per dataset pair; the largest components; the components left unmerged with their
reasons; refused edges ('split' policy); a summary of the top-1 similarities. Cosines between
members come from the kNN lists: a pair neither of whose lists holds the other is `null`
(below both k-th neighbours).

PNG (the paper's Figure 3): histogram of each proxy's top-1 cosine to a proxy of another
dataset, T1 marked. With the default kNN (other datasets only) that value is exact; where the
k neighbours held no other dataset, the k-th cosine (an upper bound) is used and counted as
"censored" in the JSON.

Both files are written to a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

REPORT_JSON = "fusion_report.json"
REPORT_PNG = "fusion_top1_hist.png"


@dataclass(frozen=True)
class SourceInfo:
    """Names the source classes: dataset `d` owns source classes [offsets[d], offsets[d] + counts[d])."""

    names: tuple[str, ...]
    offsets: tuple[int, ...]
    counts: tuple[int, ...]

    def __post_init__(self):
        if not len(self.names) == len(self.offsets) == len(self.counts):
            raise ValueError(f"SourceInfo: {len(self.names)} names, {len(self.offsets)} offsets, "
                             f"{len(self.counts)} counts; they must match")
        expected = 0
        for name, off, cnt in zip(self.names, self.offsets, self.counts):
            if off != expected:
                raise ValueError(f"SourceInfo: dataset {name!r} has offset {off}, expected {expected}")
            expected += cnt

    @classmethod
    def from_counts(cls, names, counts) -> "SourceInfo":
        counts = [int(c) for c in counts]
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist() if counts else []
        return cls(tuple(names), tuple(offsets), tuple(counts))

    @classmethod
    def from_manifest(cls, manifest) -> "SourceInfo":
        """From a `recordio_tools.manifest.Manifest`."""
        return cls(tuple(manifest.dataset_names), tuple(int(d.class_offset) for d in manifest.datasets),
                   tuple(int(d.num_classes) for d in manifest.datasets))

    @property
    def num_classes(self) -> int:
        return sum(self.counts)

    def class_dataset(self) -> np.ndarray:
        """Dataset index of every source class, [num_classes] int64."""
        return np.repeat(np.arange(len(self.names), dtype=np.int64), self.counts)

    def describe(self, source_class: int) -> tuple[int, str, int]:
        """(dataset index, dataset name, local label) of a source class."""
        d = int(np.searchsorted(np.asarray(self.offsets), source_class, side="right")) - 1
        return d, self.names[d], int(source_class) - self.offsets[d]


def _atomic_write(path: str, write) -> None:
    """`write(file)` into memory, then to `path` atomically with the umask's mode (not mkstemp's 0600)."""
    from recordio_tools.files import write_bytes_atomic

    buffer = io.BytesIO()
    write(buffer)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())


def top1_other_dataset(sims: np.ndarray, ids: np.ndarray, query_ids: np.ndarray, class_dataset: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per query: best cosine to a class of another dataset among its kNN hits, and whether it
    is censored (no other-dataset hit: the last finite cosine is returned as an upper bound;
    NaN when there is none)."""
    sims = np.asarray(sims, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    table = np.asarray(class_dataset, dtype=np.int64)
    if sims.shape[0] == 0:
        return np.zeros(0, np.float32), np.zeros(0, bool)
    other = (ids >= 0) & (table[np.where(ids >= 0, ids, 0)] != table[np.asarray(query_ids)][:, None])
    found = other.any(axis=1)
    first = np.argmax(other, axis=1)
    best = sims[np.arange(sims.shape[0]), first]
    finite = np.isfinite(sims)
    last = np.where(finite.any(axis=1),
                    sims[np.arange(sims.shape[0]), np.maximum(finite.sum(axis=1) - 1, 0)], np.nan)
    return np.where(found, best, last).astype(np.float32), ~found


def _pair_cos(neighbours: dict[int, dict[int, float]], a: int, b: int):
    c = neighbours.get(a, {}).get(b)
    if c is None:
        c = neighbours.get(b, {}).get(a)
    return None if c is None else round(float(c), 6)


def build_report(*, plan, label_map, source_info: SourceInfo, class_dataset, neighbours: dict,
                 top1: np.ndarray, censored: np.ndarray, settings: dict, stats: dict,
                 num_largest: int = 20) -> dict:
    """The report as plain data (see the module doc). `neighbours`: old fused id -> {id: cosine}
    for the members of every component; `top1`/`censored`: [C_old] from `top1_other_dataset`."""
    table = np.asarray(class_dataset, dtype=np.int64)
    lm = np.asarray(label_map, dtype=np.int64) if label_map is not None else np.arange(table.shape[0])
    order = np.argsort(lm, kind="stable")
    bounds = np.searchsorted(lm[order], np.arange(table.shape[0] + 1))

    def sources_of(f: int) -> list[int]:
        return order[bounds[f]:bounds[f + 1]].tolist()

    def members(ids: list[int]) -> list[dict]:
        out = []
        for f in ids:
            for c in sources_of(f):
                _, name, local = source_info.describe(c)
                out.append({"old_fused_id": int(f), "source_class": int(c), "dataset": name,
                            "local_label": local})
        return out

    def pairwise(ids: list[int]) -> list:
        return [[int(a), int(b), _pair_cos(neighbours, a, b)]
                for i, a in enumerate(ids) for b in ids[i + 1:]]

    def dataset_name(f: int) -> str:
        return source_info.names[int(table[f])]

    merged, per_pair = [], Counter()
    for comp in plan.components:
        merged.append({"fused_id": comp.new_id, "size": len(comp.members), "members": members(comp.members),
                       "pairwise_cos": pairwise(comp.members)})
        names = sorted({dataset_name(f) for f in comp.members})
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                per_pair[f"{a}+{b}"] += 1
    candidates_per_pair = Counter()
    for comp in plan.components:
        for a, b, _ in comp.edges:
            candidates_per_pair["+".join(sorted((dataset_name(a), dataset_name(b))))] += 1
    skipped = [{"reasons": r.reasons, "size": len(r.members), "members": members(r.members),
                "pairwise_cos": pairwise(r.members) if len(r.members) <= 50 else None,
                "edges": [[a, b, round(c, 6)] for a, b, c in r.edges]} for r in plan.rejected]
    largest = sorted(plan.components, key=lambda c: (-len(c.members), c.new_id))[:num_largest]
    finite = top1[np.isfinite(top1)]
    t1 = settings.get("t1")
    return {
        "settings": settings,
        "stats": stats,
        "merged_per_dataset_pair": dict(sorted(per_pair.items())),
        "merged_edges_per_dataset_pair": dict(sorted(candidates_per_pair.items())),
        "largest": [{"fused_id": c.new_id, "size": len(c.members),
                     "datasets": [dataset_name(f) for f in c.members]} for c in largest],
        "merged": merged,
        "skipped": skipped,
        "refused_edges": [[a, b, round(c, 6)] for a, b, c in plan.refused_edges],
        "top1_other_dataset": {
            "count": int(top1.shape[0]),
            "censored": int(np.asarray(censored).sum()),
            "above_t1": int((finite > t1).sum()) if t1 is not None else None,
            "quantiles": {str(q): float(np.quantile(finite, q)) for q in (0.01, 0.5, 0.9, 0.99, 0.999)}
            if finite.size else {},
        },
    }


def plot_top1_hist(path: str, top1: np.ndarray, t1: float, *, dataset_of=None, names=None,
                   bins: int = 100) -> None:
    """PNG histogram of the top-1 other-dataset cosines, T1 marked; one outline per dataset when
    `dataset_of` ([N] dataset index of each value) and `names` are given (at most 8)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.asarray(top1, dtype=np.float64)
    keep = np.isfinite(values)
    values = values[keep]
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo = min(float(values.min()) if values.size else 0.0, t1 - 0.05)
    edges = np.linspace(lo, 1.0, bins + 1)
    ax.hist(values, bins=edges, color="#8aa9cf", label=f"all proxies (N={values.size})")
    if dataset_of is not None and names is not None and len(names) <= 8:
        ds = np.asarray(dataset_of)[keep]
        for d, name in enumerate(names):
            if np.any(ds == d):
                ax.hist(values[ds == d], bins=edges, histtype="step", linewidth=1.0, label=name)
    above = int((values > t1).sum())
    ax.axvline(t1, color="#c0392b", linestyle="--", linewidth=1.5, label=f"T1 = {t1:g} ({above} above)")
    ax.set_xlabel("top-1 cosine to a proxy of another dataset")
    ax.set_ylabel("proxies")
    ax.set_yscale("log")
    ax.set_title("FaceFusion: proxy similarity across datasets")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()

    def write(f):
        fig.savefig(f, format="png")

    _atomic_write(path, write)


def write_report(report_dir: str, report: dict, top1: np.ndarray, *, t1: float, dataset_of=None,
                 names=None) -> dict[str, str]:
    """Write the JSON and the PNG atomically into `report_dir`; returns their paths."""
    os.makedirs(report_dir, exist_ok=True)
    json_path = os.path.join(report_dir, REPORT_JSON)
    png_path = os.path.join(report_dir, REPORT_PNG)
    data = json.dumps(report, indent=1, allow_nan=False, default=_json_default).encode()
    _atomic_write(json_path, lambda f: f.write(data))
    plot_top1_hist(png_path, top1, t1, dataset_of=dataset_of, names=names)
    return {"json": json_path, "png": png_path}


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
