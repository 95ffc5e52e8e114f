"""The pseudo-label report: one JSON and three PNGs.

- pseudo_label_report.json: counts, the separation (both thresholds, the fitted Weibulls), the
  clustering settings and cluster sizes, the edge threshold (value, how chosen, impostor FAR), the
  estimated purity of the clusters and the low-purity ones not written, the uncertainty fit, timings,
  and, when ground truth is given, the measured errors.
- max_cosine_hist.png: the max-cosine histogram (density), Otsu's threshold, the two 95% bounds
  and the two fitted Weibulls weighted by their mixture shares.
- cluster_sizes.png: how many clusters have each size (log-log).
- margin_hist.png: the cluster-margin histogram, Otsu's threshold and the Weibull of the low mode.
"""

from __future__ import annotations

import json
import os

import numpy as np

from fftrain.pseudo_label.pipeline import PseudoLabelOptions, PseudoLabels, ashman_d

REPORT_JSON = "pseudo_label_report.json"
PNG_SCORES, PNG_SIZES, PNG_MARGINS = "max_cosine_hist.png", "cluster_sizes.png", "margin_hist.png"


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")


def plot_scores(path: str, result: PseudoLabels) -> None:
    fig, ax = _figure()
    scores = result.scores
    ax.hist(scores, bins=100, density=True, color="#8aa9cf", label=f"max cosine to a proxy (N={len(scores)})")
    sep = result.separation
    if sep is not None:
        grid = np.linspace(scores.min(), scores.max(), 400)
        mix = sep.mixture
        ax.plot(grid, (1 - mix.weight_high) * mix.low.dist.pdf(grid), color="#27ae60", label="Weibull, disjoint")
        ax.plot(grid, mix.weight_high * mix.high.dist.pdf(grid), color="#8e44ad", label="Weibull, overlapping")
        ax.axvline(sep.otsu_threshold, color="black", linewidth=1.2, label=f"Otsu {sep.otsu_threshold:.3f}")
        ax.axvline(sep.t_disjoint, color="#27ae60", linestyle="--", label=f"disjoint 95% bound {sep.t_disjoint:.3f}")
        ax.axvline(sep.t_overlap, color="#8e44ad", linestyle="--", label=f"overlap 5% bound {sep.t_overlap:.3f}")
    ax.set_xlabel("max cosine to the labeled class proxies")
    ax.set_ylabel("density")
    ax.set_title("overlap separation")
    ax.legend(fontsize=7, loc="best")
    _save(fig, path)


def plot_cluster_sizes(path: str, result: PseudoLabels) -> None:
    fig, ax = _figure()
    sizes = np.bincount(result.clusters[result.clusters >= 0]) if result.num_clusters else np.zeros(0, int)
    if sizes.size:
        values, counts = np.unique(sizes, return_counts=True)
        ax.plot(values, counts, "o-", markersize=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("cluster size (images)")
    ax.set_ylabel("clusters")
    ax.set_title(f"{result.num_clusters} clusters of {int((result.clusters >= 0).sum())} images")
    _save(fig, path)


def plot_margins(path: str, result: PseudoLabels) -> None:
    fig, ax = _figure()
    unc = result.uncertainty
    if unc is not None:
        margins = unc.margins[~np.isnan(unc.margins)]
        ax.hist(margins, bins=100, density=True, color="#8aa9cf", label=f"cluster margin (N={margins.size})")
        grid = np.linspace(margins.min(), margins.max(), 400)
        share = float((margins <= unc.otsu_threshold).mean())
        ax.plot(grid, share * unc.low.dist.pdf(grid), color="#d35400", label="Weibull of the low mode")
        ax.axvline(unc.otsu_threshold, color="black", label=f"Otsu {unc.otsu_threshold:.3f}")
    ax.set_xlabel("cosine to own cluster centre - to nearest other centre")
    ax.set_ylabel("density")
    ax.set_title("clustering uncertainty")
    ax.legend(fontsize=7, loc="best")
    _save(fig, path)


def build_report(result: PseudoLabels, options: PseudoLabelOptions, extra: dict | None = None) -> dict:
    sizes = np.bincount(result.clusters[result.clusters >= 0]) if result.num_clusters else np.zeros(0, int)
    sep = result.separation
    return {
        "format": "fftrain-pseudo-label-report", "version": 1,
        "options": dict(vars(options)),
        "num_samples": len(result.scores),
        "overlapping": int(result.overlap.sum()), "disjoint": int(result.disjoint.sum()),
        "rejected": int((~result.overlap & ~result.disjoint).sum()),
        "written": int((result.labels >= 0).sum()), "classes": result.num_classes,
        "separation": None if sep is None else {**sep.summary(), "ashman_d": ashman_d(sep)},
        "clusters": {"count": result.num_clusters, "images": int(sizes.sum()),
                     "sizes": {str(q): float(np.quantile(sizes, q)) for q in (0.0, 0.5, 0.9, 1.0)} if sizes.size
                     else None},
        "assigned_classes": result.assigned_classes.tolist(),
        "edge_threshold": None if result.edge is None else result.edge.to_dict(),
        "low_purity_clusters": result.low_purity,
        "purity": None if result.purity is None or not np.isfinite(result.purity).any() else
        {str(q): float(np.nanquantile(result.purity, q)) for q in (0.0, 0.1, 0.5, 1.0)},
        "uncertainty": None if result.uncertainty is None else result.uncertainty.summary(options.gamma),
        "timings": result.timings,
        **(extra or {}),
    }


def write_report(folder: str, report: dict, result: PseudoLabels) -> dict[str, str]:
    """Write the JSON and the PNGs into `folder` (a folder being built, renamed into place later)."""
    paths = {"json": os.path.join(folder, REPORT_JSON), "scores_png": os.path.join(folder, PNG_SCORES),
             "sizes_png": os.path.join(folder, PNG_SIZES), "margins_png": os.path.join(folder, PNG_MARGINS)}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, allow_nan=False, default=_json_default)
        f.write("\n")
    plot_scores(paths["scores_png"], result)
    plot_cluster_sizes(paths["sizes_png"], result)
    plot_margins(paths["margins_png"], result)
    return paths


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
