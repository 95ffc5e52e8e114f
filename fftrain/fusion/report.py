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
dataset with the two fitted modes (duplicates, distinct identities), the valley between them and
T1. With the default kNN (other datasets only) that value is exact; where the k neighbours held no
other dataset, the k-th cosine (an upper bound) is used and counted as "censored" in the JSON.

Both files are written to a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from fftrain.fusion.threshold import FIT_SAMPLE

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


@dataclass(frozen=True)
class Top1Histogram:
    """What the fusion figure draws, computed apart from the drawing (`top1_histogram`)."""

    values: np.ndarray
    """The finite top-1 cosines."""
    edges: np.ndarray
    classes: int
    """Every proxy, censored or NaN included."""
    t1: float | None
    """The threshold used (None: nothing merged)."""
    t1_kind: str
    """'fixed', 'auto' or 'no merge'."""
    valley: float | None
    curve_x: np.ndarray | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    """The fitted modes as expected proxies per bin at curve_x (None without a fit)."""
    separated: bool = False
    """The fit's verdict: two separate modes (Ashman's D and weights, `fftrain.calibration.modes`)."""


def top1_histogram(top1, t1: float, *, threshold: dict | None = None, bins: int = 60) -> Top1Histogram:
    """The histogram, the two fitted modes (the T1 decision's fit when it made one, else a fit of
    these cosines), the valley and the T1 marked. `threshold`: `T1Decision.to_dict()`; None: a fixed `t1`."""
    values = np.asarray(top1, dtype=np.float64).ravel()
    classes = int(values.size)
    values = values[np.isfinite(values)]
    decision = threshold or {"mode": "fixed", "t1": t1, "merges": True}
    kind = "auto" if decision.get("mode") == "valley" else "fixed"
    kind = kind if decision.get("merges", True) else "no merge"
    used = None if kind == "no merge" else float(t1)
    modes = _modes(decision.get("modes"), values)
    valley = decision.get("valley") if decision.get("modes") else (modes.valley if modes is not None else None)
    marks = [m for m in (used, valley) if m is not None and np.isfinite(m)]
    lo = min([float(values.min()) if values.size else 0.0] + [m - 0.05 for m in marks])
    hi = max([1.0] + [m + 0.02 for m in marks])
    edges = np.linspace(lo, hi, bins + 1)
    hist = Top1Histogram(values, edges, classes, used, kind, valley)
    if modes is None or not values.size:
        return hist
    x = np.linspace(lo, hi, 400)
    per_bin = values.size * (edges[1] - edges[0])
    w = modes.mixture.weight_high
    return replace(hist, curve_x=x, low=per_bin * (1 - w) * modes.mixture.low.dist.pdf(x),
                               high=per_bin * w * modes.mixture.high.dist.pdf(x), separated=modes.separated)


def _modes(fitted: dict | None, values: np.ndarray):
    """The two-Weibull fit: rebuilt from the decision's dict, or fitted here; None when it cannot be."""
    try:
        from fftrain.calibration.evt import FitError
        from fftrain.calibration.modes import TwoModes, fit_two_modes
    except ImportError:  # scipy missing: the histogram alone
        return None
    if fitted:
        return TwoModes.from_dict(fitted)
    if values.size > FIT_SAMPLE:
        values = np.random.default_rng(0).choice(values, FIT_SAMPLE, replace=False)
    try:
        return fit_two_modes(np.clip(values, -1.0, 1.0))
    except FitError:
        return None


def top1_figure(hist: Top1Histogram, datasets: int | None = None):
    """One panel: the histogram, the fitted modes, the valley and T1 as labelled vertical lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(hist.values, bins=hist.edges, color="#b8cde6", edgecolor="#8aa9cf", label=f"proxies (N={hist.values.size})")
    low, high = (("distinct identities", "duplicates") if hist.separated else
                 ("lower component", "higher component (one mode: not separate)"))
    if hist.curve_x is not None:
        ax.plot(hist.curve_x, hist.low, color="#34495e", linewidth=1.4, label=f"fitted mode: {low}")
        ax.plot(hist.curve_x, hist.high, color="#27ae60", linewidth=1.4, label=f"fitted mode: {high}")
    if hist.valley is not None:
        # above the T1 line: an auto T1 is usually the valley itself
        ax.axvline(hist.valley, color="#2c3e50", linestyle=":", linewidth=1.8, zorder=4,
                   label=f"valley {hist.valley:.3f}")
    if hist.t1 is not None:
        above = int((hist.values > hist.t1).sum())
        ax.axvline(hist.t1, color="#c0392b", linestyle="--", linewidth=1.5,
                   label=f"T1 = {hist.t1:.3f} ({hist.t1_kind}): {above} above")
    ax.set_xlim(hist.edges[0], hist.edges[-1])
    ax.set_xlabel("top-1 cosine of a proxy to a proxy of another dataset")
    ax.set_ylabel("proxies per bin")
    of = "" if datasets is None else f" of {datasets} datasets"
    used = "T1 auto: no valley, nothing merged" if hist.t1 is None else f"T1 = {hist.t1:.3f} ({hist.t1_kind})"
    ax.set_title(f"Fusion: {hist.classes} classes{of}; {used}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_top1_hist(path: str, top1: np.ndarray, t1: float, *, names=None, threshold: dict | None = None,
                   bins: int = 60) -> None:
    """PNG of `top1_figure`: the top-1 other-dataset cosines, their fitted modes, the valley and T1.
    `threshold`: the fusion's `T1Decision.to_dict()` (None: `t1` fixed); `names` gives the number of
    datasets in the title."""
    hist = top1_histogram(top1, t1, threshold=threshold, bins=bins)
    fig = top1_figure(hist, None if names is None else len(names))

    def write(f):
        fig.savefig(f, format="png")

    _atomic_write(path, write)


def write_report(report_dir: str, report: dict, top1: np.ndarray, *, t1: float, names=None) -> dict[str, str]:
    """Write the JSON and the PNG atomically into `report_dir`; returns their paths. The PNG draws the
    T1 decision of the report's settings (`settings.threshold`) when it has one."""
    os.makedirs(report_dir, exist_ok=True)
    json_path = os.path.join(report_dir, REPORT_JSON)
    png_path = os.path.join(report_dir, REPORT_PNG)
    data = json.dumps(report, indent=1, allow_nan=False, default=_json_default).encode()
    _atomic_write(json_path, lambda f: f.write(data))
    threshold = (report.get("settings") or {}).get("threshold")
    plot_top1_hist(png_path, top1, t1, names=names, threshold=threshold)
    return {"json": json_path, "png": png_path}


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
