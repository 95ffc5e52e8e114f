"""The audit's files: audit.json (every figure), CSV lists, PNG plots, and the one-screen summary.

    outliers.csv          key, dataset, shard, shard_key, source_class, local_label, cos_centre, cos_proxy, leave_one_out
    duplicate_pairs.csv   class_a, dataset_a, local_a, class_b, dataset_b, local_b, cosine, scope, component
    leaked_<set>.csv      image, pair, issame, nearest_class, dataset, local_label, cosine
    intra_class.png       per dataset: cosine of each image to its class centre, threshold marked
    genuine_impostor.png  per dataset: genuine / impostor similarity histograms with the EER (Vec2Face Fig. 4)
    leakage.png           per verification set: cosine of each image to its nearest training centre
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np

from fftrain.audit.intra import HIST_BINS

THRESHOLD_SOURCES = {
    "intra": "image vs its identity's feature below 0.3 is an outlier: ArcFace (Deng et al., TPAMI 2022), "
             "as used by Vec2Face (ICLR 2025) appendix A.3",
    "inter": "two identities above 0.7 are one person: WebFace260M's merge rule (Zhu et al., 2023), "
             "as used by Vec2Face appendix A.3",
    "leak": "a test identity above 0.7 to a training identity is leakage: Vec2Face appendix A.8 after WebFace260M",
}


WEAK_MODEL_FAR = 1e-2


def threshold_entry(kind: str, choice) -> dict:
    """A calibration.thresholds.Threshold as the report records it, with the paper's value's source."""
    return dict(choice.to_dict(), source=f"{choice.how}; paper's value {choice.paper}: {THRESHOLD_SOURCES[kind]}")


def warnings(chosen: dict, limit: float = WEAK_MODEL_FAR) -> list[str]:
    """At most one line: the tests whose paper value lets more than `limit` of this model's impostors through."""
    weak = [chosen[n] for n in ("inter", "leak") if chosen[n].paper_far is not None and chosen[n].paper_far > limit]
    if not weak:
        return []
    return ["this model cannot separate identities at the papers' thresholds: "
            + "; ".join(f"{c.name} {c.paper} has impostor FAR {c.paper_far:.2g} ({c.statistic})" for c in weak)
            + f" (> {limit:g}); the thresholds used are below"]


def threshold_lines(thresholds: dict) -> list[str]:
    out = ["thresholds (this model's own scores; paper's value beside):"]
    for name in ("intra", "inter", "leak"):
        t = thresholds[name]
        rate = t["rate"].upper()
        line = f"  {name:<5} {t['value']:.3f}  {t['how']}; {rate} {_rate(t['far'])}"
        if t["paper"] is not None and t["paper"] != t["value"]:
            line += f"  (paper {t['paper']}: {rate} {_rate(t['paper_far'])})"
        if t.get("sample_far") is not None:
            line += f"  [{_rate(t['sample_far'])} of the sample {'above' if t['rate'] == 'far' else 'below'}]"
        out.append(line)
    return out


def _rate(value) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _csv_text(header: list[str], rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: str, header: list[str], rows) -> None:
    from recordio_tools.files import write_text_atomic

    write_text_atomic(path, _csv_text(header, rows))


def _save_png(path: str, fig) -> None:
    from recordio_tools.files import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes_atomic(path, buf.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_intra(path: str, per_dataset: list[dict], threshold: float) -> None:
    plt = _pyplot()
    centres = (HIST_BINS[:-1] + HIST_BINS[1:]) / 2
    fig, ax = plt.subplots(figsize=(7, 4))
    for d in per_dataset:
        counts = np.asarray(d["hist_counts"], float)
        if counts.sum():
            ax.plot(centres, counts / counts.sum(), label=f"{d['dataset']} ({d['outliers']} below)")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold}")
    ax.set_xlabel("cosine of an image to its class centre")
    ax.set_ylabel("fraction of images")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_png(path, fig)
    plt.close(fig)


def plot_distributions(path: str, per_dataset: list[dict], pairs: int) -> None:
    plt = _pyplot()
    centres = (HIST_BINS[:-1] + HIST_BINS[1:]) / 2
    cols = 3
    rows = max(1, (len(per_dataset) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, d in zip(axes.flat, per_dataset):
        for key, colour in (("genuine_hist", "tab:green"), ("impostor_hist", "tab:red")):
            counts = np.asarray(d[key], float)
            if counts.sum():
                ax.fill_between(centres, counts / counts.sum(), alpha=0.5, color=colour, label=key.split("_")[0])
        eer = "n/a" if d["eer"] is None else f"{100 * d['eer']:.2f}%"
        ax.set_title(f"{d['dataset']}: EER {eer}", fontsize=9)
        ax.set_xlabel("cosine")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(per_dataset):]:
        ax.axis("off")
    fig.suptitle(f"genuine / impostor similarity, {pairs} sampled pairs of each per dataset", fontsize=10)
    fig.tight_layout()
    _save_png(path, fig)
    plt.close(fig)


def plot_leakage(path: str, sets: list[tuple[str, np.ndarray]], threshold: float) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, cos in sets:
        ax.hist(cos, bins=HIST_BINS, histtype="step", label=f"{name} ({int((cos > threshold).sum())} above)")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold}")
    ax.set_xlabel("cosine of a verification image to its nearest training class centre")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_png(path, fig)
    plt.close(fig)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def summary_lines(report: dict) -> list[str]:
    """The one-screen stdout summary."""
    t = report["thresholds"]
    intra, inter, timing = report["intra_class"], report["inter_class"], report["timing"]
    lines = [f"WARNING: {w}" for w in report.get("warnings", [])]
    lines += [f"audit of {report['images']} images, {report['classes']} classes in {len(report['datasets'])} datasets "
             f"({timing['embed_train_s']:.1f} s embedding, {timing['analysis_s']:.1f} s analysis = "
             f"{100 * timing['analysis_fraction_of_embedding']:.1f}% of it)",
             *threshold_lines(t),
             f"intra-class (cos to centre < {t['intra']['value']:.3f}): {intra['outliers']} outlier images"]
    for d, dist in zip(intra["per_dataset"], report["distributions"]["per_dataset"]):
        lines.append(f"  {d['dataset']:<14} {d['outliers']:>6} / {d['images']:<7} noise {_pct(d['noise_rate']):>7}"
                     f"   EER {_pct(dist['eer']):>7}")
    lines.append(f"inter-class (centres > {t['inter']['value']:.3f}): {inter['pairs_within']} pairs within datasets, "
                 f"{inter['pairs_across']} across, {inter['num_components']} components "
                 f"({inter['num_rejected']} over the size guard)")
    twin = report["fusion_twin"]["proxies"]
    lines.append(f"fusion twin on the checkpoint's proxies (as fftrain fuse --dry-run --t1 {t['inter']['value']:.3f}): "
                 f"{twin['num_components_merged']} components, {twin['num_classes_merged']} classes")
    for leak in report["leakage"]:
        unleaked = leak["accuracy_unleaked"]
        lines.append(f"leakage {leak['name']}: {leak['leaked_images']} / {leak['images']} images, "
                     f"{leak['leaked_pairs']} / {leak['pairs']} pairs above {t['leak']['value']:.3f}; accuracy "
                     f"{_pct(leak['accuracy_full']['accuracy'])} all pairs, "
                     f"{_pct(unleaked['accuracy'] if unleaked else None)} on the {leak['pairs'] - leak['leaked_pairs']} "
                     "not leaked")
    lines.append(f"genuine/impostor: {report['distributions']['pairs_per_dataset']} sampled pairs of each per dataset")
    lines.append(f"files: {report['out']}")
    return lines


def dataset_local(manifest, source_class: int) -> tuple[str, int]:
    offsets = manifest.class_offsets()
    d = int(np.searchsorted(offsets, source_class, side="right") - 1)
    return manifest.datasets[d].name, int(source_class - offsets[d])


def outlier_rows(keys, records, manifest, labels, intra) -> list[list]:
    rows = []
    for key in keys.tolist():
        shard, shard_key = records.shard_key_of(key)
        name, local = dataset_local(manifest, int(labels[key]))
        rows.append([key, name, os.path.relpath(records.rec_paths[shard], manifest.root),
                     "" if shard_key is None else shard_key, int(labels[key]), local,
                     f"{intra.cos_centre[key]:.4f}", f"{intra.cos_proxy[key]:.4f}", int(intra.leave_one_out[key])])
    return rows


def duplicate_rows(inter, manifest) -> list[list]:
    component_of = {}
    for c in inter.plan.components:
        for m in c.members:
            component_of[m] = c.new_id
    rows = []
    for (a, b), cos, within in zip(inter.pairs.tolist(), inter.cos.tolist(), inter.within.tolist()):
        da, la = dataset_local(manifest, a)
        db, lb = dataset_local(manifest, b)
        rows.append([a, da, la, b, db, lb, f"{cos:.4f}", "within" if within else "across",
                     component_of.get(a, "")])
    return rows
