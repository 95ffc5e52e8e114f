"""The audit from parsed options to the report folder (`fftrain audit`, fftrain/commands/audit.py).

`prepare` does every check that can fail on the user's input before any work; `run` embeds the
training set and the verification sets (all ranks share the images), then on rank 0 computes every
figure (`analyse`), writes the outputs into a work folder and publishes it as `--out` in one rename.
`args` is the namespace fftrain/commands/audit.py parses (its option names are the settings).
"""

from __future__ import annotations

import os
import time

import numpy as np

from fftrain.audit.inputs import AuditError
from fftrain.calibration.thresholds import AUTO

DEFAULT_INTRA = DEFAULT_INTER = DEFAULT_LEAK = AUTO
DEFAULT_FAR, DEFAULT_INTRA_FRR = 1e-4, 1e-2
DEFAULT_CALIBRATION_PAIRS, DEFAULT_CALIBRATION_PROBES = 1_000_000, 20_000


def _check_args(args) -> None:
    for name in ("intra_threshold", "inter_threshold", "leak_threshold"):
        value = getattr(args, name)
        if value != AUTO and not -1.0 <= value <= 1.0:
            raise AuditError(f"--{name.replace('_', '-')} {value}: a cosine threshold must lie in [-1, 1] (or auto)")
    for name in ("far", "intra_frr"):
        if not 0.0 < getattr(args, name) < 1.0:
            raise AuditError(f"--{name.replace('_', '-')} {getattr(args, name)}: a rate must lie in (0, 1)")
    for name in ("knn_k", "pairs_per_dataset", "batch_size", "chunk", "loo_max_images", "calibration_pairs",
                 "calibration_probes"):
        if getattr(args, name) < 1:
            raise AuditError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.max_component < 2:
        raise AuditError(f"--max-component {args.max_component}: must be >= 2")


def work_dir(out: str, pid: int) -> str:
    """The work folder of the audit run by process `pid` (rank 0's): `.OUT.tmp-PID` beside --out, so two
    audits with one --out never share one, and the next run removes it only once `pid` is gone."""
    out = os.path.abspath(out)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.tmp-{pid}")


def make_work_dir(out: str, pid: int) -> str:
    """Create this run's work folder, after removing those of audits no longer running."""
    from recordio_tools.files import remove_stale_temporaries

    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    remove_stale_temporaries(os.path.dirname(out), os.path.basename(out))
    work = work_dir(out, pid)
    os.makedirs(work)
    return work


def _check_out(out: str) -> None:
    out = os.path.abspath(out)
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "audit.json")):
        raise AuditError(f"{out}: exists and is not an audit folder (no audit.json); give a new or empty folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise AuditError(f"{out}: exists and is not a folder")


def prepare(args, ctx):
    """Everything that can fail on bad input, before any work (rank 0 checks, the others follow)."""
    from fftrain.data.records import DataError, RecordSet

    from fftrain.audit.clean import check_clean_target
    from fftrain.audit.inputs import check_verification_files, load_checkpoint_view, load_matching_manifest

    _check_args(args)
    checkpoint = load_checkpoint_view(args.checkpoint)
    manifest = load_matching_manifest(args.data, checkpoint)
    try:
        records = RecordSet(manifest)
    except DataError as e:
        raise AuditError(str(e)) from None
    bins = check_verification_files(args.verification)
    _check_out(args.out)
    if args.write_clean:
        check_clean_target(args.write_clean, manifest)
    return checkpoint, manifest, records, bins


def run(args, ctx, work, checkpoint, manifest, records, bins) -> None:
    from fftrain.audit.embed import EMBEDDINGS_FILE, LABELS_FILE, embed_training_set, embed_verification_bin

    backbone = checkpoint.backbone.to(ctx.device)
    flip = not args.no_flip
    train = embed_training_set(backbone, records, manifest.num_classes, checkpoint.embedding_size, ctx=ctx,
                               work_dir=work, batch_size=args.batch_size, chunk=args.chunk, flip=flip,
                               progress=not args.quiet)
    t = time.perf_counter()
    sets = [(path, *embed_verification_bin(backbone, path, ctx=ctx, batch_size=args.batch_size, flip=flip))
            for path in bins]
    embed_verification_s = time.perf_counter() - t
    if not ctx.is_main:
        return
    t = time.perf_counter()
    report, extra = analyse(args, checkpoint, manifest, records, train, sets)
    report["timing"] = {"embed_train_s": train.seconds, "embed_verification_s": embed_verification_s,
                        "analysis_s": time.perf_counter() - t, "world_size": ctx.world_size, "flip": flip}
    t_out = time.perf_counter()
    _write_outputs(extra["settings"], work, manifest, records, train, report, extra)
    report["timing"]["analysis_s"] = time.perf_counter() - t
    report["timing"]["analysis_phases_s"] = dict(extra["phases"], outputs_s=time.perf_counter() - t_out)
    timing = report["timing"]
    timing["embed_ms_per_image"] = 1000 * train.seconds / max(1, len(records))
    timing["analysis_ms_per_image"] = 1000 * timing["analysis_s"] / max(1, len(records))
    timing["analysis_fraction_of_embedding"] = timing["analysis_s"] / max(train.seconds, 1e-9)
    from recordio_tools.files import json_safe, write_json_atomic

    write_json_atomic(os.path.join(work, "audit.json"), json_safe(report), indent=2, allow_nan=False)
    if not args.keep_embeddings:
        for name in (EMBEDDINGS_FILE, LABELS_FILE):
            os.remove(os.path.join(work, name))
    from recordio_tools.files import replace_directory

    # --out (absent, empty or an earlier audit, checked at start) is replaced by the finished work folder
    replace_directory(work, args.out)
    if args.write_clean:
        from fftrain.audit.clean import write_clean_set

        t = time.perf_counter()
        clean = write_clean_set(args.write_clean, manifest, records, drop_keys=extra["outlier_keys"],
                                components=extra["clean_components"], removed_classes=extra["leaked_classes"],
                                record=extra["clean_record"], progress=not args.quiet)
        print(f"cleaned set: {args.write_clean}: {clean['images_out']} of {clean['images_in']} images, "
              f"{clean['classes_out']} of {clean['classes_in']} classes ({time.perf_counter() - t:.1f} s)")
    from fftrain.audit.report import summary_lines

    print("\n".join(summary_lines(report)))


def twin_config(args):
    """The fusion settings of the audit's twin: the trainer's FusionConfig, T1 = --inter-threshold."""
    from fftrain.config import ConfigError, FusionConfig

    try:
        return FusionConfig(t1=args.inter_threshold, knn_k=args.knn_k, max_component=args.max_component,
                            same_dataset_policy=args.same_dataset_policy,
                            allow_same_dataset=getattr(args, "allow_same_dataset", False), backend=args.backend)
    except ConfigError as e:
        raise AuditError(f"--inter-threshold {args.inter_threshold}: the fusion twin's T1 ({e})") from None


def analyse(args, checkpoint, manifest, records, train, sets) -> tuple[dict, dict]:
    """Every figure of the report from the embeddings (one process)."""
    from fftrain.audit.distributions import dataset_distributions
    from fftrain.audit.inter import fusion_twin
    from fftrain.audit.intra import class_centres, intra_class, per_dataset_summary, with_threshold
    from fftrain.audit.leakage import leakage
    from fftrain.audit.report import threshold_entry, warnings

    phases, clock = {}, [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        phases[name] = now - clock[0]
        clock[0] = now

    names = manifest.dataset_names
    class_dataset = manifest.class_dataset()
    image_dataset = class_dataset[train.labels]
    centres = class_centres(train.class_sums, train.class_counts)
    proxies = checkpoint.proxies.numpy()
    proxies = proxies / np.maximum(np.linalg.norm(proxies, axis=1, keepdims=True), 1e-12)
    intra = intra_class(train.embeddings, train.labels, train.class_sums, train.class_counts, proxies,
                        checkpoint.label_map, threshold=-np.inf, loo_max_images=args.loo_max_images)
    lap("intra_s")
    args, chosen, calibration, inter = _thresholds(args, train, centres, intra, class_dataset)
    intra = with_threshold(intra, args.intra_threshold)
    lap("calibration_and_inter_s")  # the inter-class search runs inside the calibration (its pairs group identities)
    twin = twin_config(args)
    twin_proxies = fusion_twin(proxies, checkpoint.fused_dataset, checkpoint.label_map, twin)
    twin_centres = fusion_twin(centres, class_dataset, None, twin)
    lap("fusion_twin_s")
    leaks = [leakage(os.path.splitext(os.path.basename(path))[0], emb, issame, centres,
                     threshold=args.leak_threshold) for path, emb, issame in sets]
    lap("leakage_s")
    distributions = dataset_distributions(train.embeddings, train.labels, image_dataset, names,
                                          pairs=args.pairs_per_dataset, seed=args.seed)
    lap("distributions_s")
    has_images = train.class_counts > 0
    agreement = np.einsum("ij,ij->i", centres[has_images], proxies[checkpoint.label_map[has_images]])
    leaked_classes = sorted({int(c) for leak in leaks for c in leak.nearest_class[leak.leaked_images]})
    report = {
        "format": "fftrain-audit", "version": 1,
        "checkpoint": os.path.abspath(checkpoint.path), "manifest": os.path.join(manifest.root, "manifest.json"),
        "out": os.path.abspath(args.out), "images": int(len(records)), "classes": int(manifest.num_classes),
        "datasets": [{"name": d.name, "num_classes": d.num_classes, "num_images": d.num_images,
                      "class_offset": d.class_offset} for d in manifest.datasets],
        "thresholds": {name: threshold_entry(name, choice) for name, choice in chosen.items()},
        "calibration": dict(calibration, far=args.far, intra_frr=args.intra_frr),
        "warnings": warnings(chosen),
        "settings": {"loo_max_images": args.loo_max_images, "knn_k": args.knn_k, "max_component": args.max_component,
                     "same_dataset_policy": args.same_dataset_policy, "backend": args.backend,
                     "pairs_per_dataset": args.pairs_per_dataset, "seed": args.seed,
                     "centre": "mean of the L2-normalised (flip-summed) image embeddings of a class"},
        "intra_class": {
            "outliers": int(intra.outliers.size),
            "images_with_cosine": int(np.count_nonzero(~np.isnan(intra.cos_centre))),
            "per_dataset": per_dataset_summary(intra, image_dataset, names),
            "proxy_view": {"outliers_by_proxy": int(np.count_nonzero(intra.cos_proxy < args.intra_threshold)),
                           "both_views": int(np.count_nonzero(intra.cos_proxy[intra.outliers] < args.intra_threshold)),
                           "centre_vs_proxy_cos_median": float(np.median(agreement)) if agreement.size else None,
                           "centre_vs_proxy_cos_min": float(agreement.min()) if agreement.size else None},
        },
        "inter_class": {
            "pairs_within": int(inter.within.sum()), "pairs_across": int((~inter.within).sum()),
            "num_components": len(inter.plan.components), "num_rejected": len(inter.plan.rejected),
            "components": [_component(c.members, c.edges, manifest) for c in inter.plan.components],
            "rejected": [dict(_component(r.members, r.edges, manifest), reasons=r.reasons) for r in inter.plan.rejected],
            "pairs_per_dataset_pair": {"datasets": names, "counts": inter.counts.tolist()},
        },
        "fusion_twin": {"proxies": _twin(twin_proxies, checkpoint.label_map, manifest),
                        "centres": _twin(twin_centres, None, manifest)},
        "leakage": [_leak_entry(leak, bins_path, class_dataset, names)
                    for leak, (bins_path, _, _) in zip(leaks, sets)],
        "leaked_training_classes": leaked_classes,
        "distributions": {"pairs_per_dataset": args.pairs_per_dataset, "per_dataset": distributions},
    }
    clean_components = [c.members for c in inter.plan.components
                        if args.clean_merge == "all" or len(set(class_dataset[c.members].tolist())) == 1]
    lap("report_s")
    extra = {"settings": args, "phases": phases, "intra": intra, "inter": inter, "leaks": leaks,
             "outlier_keys": intra.outliers,
             "leaked_classes": leaked_classes, "clean_components": clean_components,
             "clean_record": {"checkpoint": os.path.abspath(checkpoint.path), "merge": args.clean_merge,
                              "thresholds": report["thresholds"], "audit": os.path.abspath(args.out)}}
    return report, extra


def _thresholds(args, train, centres, intra, class_dataset):
    """(args with the three thresholds as numbers, {name: Threshold}, calibration samples, the inter-class
    result at the chosen inter threshold)."""
    import argparse

    from fftrain.audit.calibrate import calibrate
    from fftrain.audit.inter import inter_class

    found = []

    def duplicate_pairs(t):
        found.append(inter_class(centres, class_dataset, threshold=t, knn_k=args.knn_k,
                                 max_component=args.max_component, backend=args.backend))
        return found[-1].pairs

    chosen, calibration = calibrate(args, train, centres, intra.cos_centre, class_dataset, duplicate_pairs)
    resolved = argparse.Namespace(**vars(args))
    for name, choice in chosen.items():
        setattr(resolved, f"{name}_threshold", choice.value)
    return resolved, chosen, calibration, found[-1]


def _component(members, edges, manifest) -> dict:
    from fftrain.audit.report import dataset_local

    return {"source_classes": [int(m) for m in members],
            "members": [dict(zip(("dataset", "local_label"), dataset_local(manifest, int(m)))) for m in members],
            "edges": [[int(a), int(b), round(float(c), 4)] for a, b, c in edges]}


def _twin(plan, label_map, manifest) -> dict:
    """A fusion plan's stats and merged components as source classes (fused ids mapped back)."""
    lm = np.arange(manifest.num_classes) if label_map is None else np.asarray(label_map)
    members = [sorted(np.flatnonzero(np.isin(lm, c.members)).tolist()) for c in plan.components]
    return dict({k: v for k, v in plan.stats.items()}, components=members)


def _leak_entry(leak, path, class_dataset, names) -> dict:
    from fftrain.audit.leakage import per_dataset_counts

    return {"name": leak.name, "file": os.path.abspath(path), "images": int(leak.leaked_images.size),
            "pairs": int(leak.leaked_pairs.size), "leaked_images": int(leak.leaked_images.sum()),
            "leaked_pairs": int(leak.leaked_pairs.sum()),
            "per_training_dataset": per_dataset_counts(leak, class_dataset, names),
            "accuracy_full": leak.full, "accuracy_unleaked": leak.unleaked, "notes": leak.notes}


def _write_outputs(args, work, manifest, records, train, report, extra) -> None:
    from fftrain.audit.report import (duplicate_rows, outlier_rows, plot_distributions, plot_intra, plot_leakage, write_csv)

    intra, inter, leaks = extra["intra"], extra["inter"], extra["leaks"]
    files = {"outliers": "outliers.csv", "duplicate_pairs": "duplicate_pairs.csv"}
    write_csv(os.path.join(work, files["outliers"]),
              ["key", "dataset", "shard", "shard_key", "source_class", "local_label", "cos_centre", "cos_proxy",
               "leave_one_out"], outlier_rows(intra.outliers, records, manifest, train.labels, intra))
    write_csv(os.path.join(work, files["duplicate_pairs"]),
              ["class_a", "dataset_a", "local_a", "class_b", "dataset_b", "local_b", "cosine", "scope", "component"],
              duplicate_rows(inter, manifest))
    from fftrain.audit.report import dataset_local

    for leak in leaks:
        name = f"leaked_{leak.name}.csv"
        files[f"leaked_{leak.name}"] = name
        rows = []
        for image in np.flatnonzero(leak.leaked_images).tolist():
            c = int(leak.nearest_class[image])
            rows.append([image, image // 2, int(leak.issame[image // 2]), c, *dataset_local(manifest, c), f"{leak.nearest_cos[image]:.4f}"])
        write_csv(os.path.join(work, name), ["image", "pair", "issame", "nearest_class", "dataset", "local_label",
                                             "cosine"], rows)
    plot_intra(os.path.join(work, "intra_class.png"), report["intra_class"]["per_dataset"], args.intra_threshold)
    plot_distributions(os.path.join(work, "genuine_impostor.png"), report["distributions"]["per_dataset"],
                       args.pairs_per_dataset)
    files.update(intra_plot="intra_class.png", distributions_plot="genuine_impostor.png")
    if leaks:
        plot_leakage(os.path.join(work, "leakage.png"), [(l.name, l.nearest_cos) for l in leaks], args.leak_threshold)
        files["leakage_plot"] = "leakage.png"
    if args.keep_embeddings:
        files.update(embeddings="embeddings.npy", labels="labels.npy")
    report["files"] = files
