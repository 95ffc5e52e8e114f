"""Fixed (the papers') against calibrated (auto) audit thresholds, side by side, from one embedding pass.

    python benchmarks/audit_calibration.py --synth /tmp/noisy --checkpoint RUN/checkpoints/step-00000300 \
        RUN/checkpoints/step-00001000 --json-out benchmarks/out/audit_calibration_noisy.json
    python benchmarks/audit_calibration.py --synth /tmp/demo_synth --checkpoint DEMO/checkpoints/step-00001000

For each checkpoint the training set and its verification.bin are embedded once (one process,
flip-summed, as `fftrain audit` does), then the audit's own analysis (`fftrain.audit.pipeline.analyse`,
the code `fftrain audit` runs) is run three times on those embeddings: with the paper's thresholds
(0.3 / 0.7 / 0.7), with 0.3 / 0.82 / 0.82 (the demo's T1, the earlier audit measurement's secondary
setting) and with the defaults (auto). Each is scored against the set's noise.json when it has
one (precision / recall of mislabeled images, duplicate identities inside one dataset, leaked verification
images and leaked training classes, as benchmarks/audit_detection.py scores them), and, planted or not,
the share of verification pairs flagged as leaked and the pairs flagged as duplicates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETTINGS = {"fixed (paper)": ("0.3", "0.7", "0.7"), "fixed (demo's T1)": ("0.3", "0.82", "0.82"),
            "calibrated (auto)": ("auto", "auto", "auto")}


def _pr(predicted: set, truth: set) -> dict:
    hit = len(predicted & truth)
    return {"predicted": len(predicted), "true": len(truth), "correct": hit,
            "precision": hit / len(predicted) if predicted else None, "recall": hit / len(truth) if truth else None}


def _audit_args(checkpoint: str, synth: str, intra: str, inter: str, leak: str, extra: list[str]):
    from fftrain.cli import build_parser

    return build_parser().parse_args(["audit", "--checkpoint", checkpoint, "--data", synth, "--out", "unused",
                                      "--intra-threshold", intra, "--inter-threshold", inter,
                                      "--leak-threshold", leak, *extra])


def _embed(checkpoint: str, synth: str, work: str, flip: bool):
    from fftrain.audit.embed import embed_training_set, embed_verification_bin
    from fftrain.audit.inputs import load_checkpoint_view, load_matching_manifest
    from fftrain.data.records import RecordSet
    from fftrain.distributed import single_process_context

    ctx = single_process_context()
    view = load_checkpoint_view(checkpoint)
    manifest = load_matching_manifest(synth, view)
    records = RecordSet(manifest)
    backbone = view.backbone.eval()
    train = embed_training_set(backbone, records, manifest.num_classes, view.embedding_size, ctx=ctx, work_dir=work,
                               flip=flip, progress=False)
    path = os.path.join(synth, "verification.bin")
    sets = [(path, *embed_verification_bin(backbone, path, ctx=ctx, flip=flip))]
    return view, manifest, records, train, sets


def _score(report: dict, extra: dict, manifest, records, train, truth: dict | None) -> dict:
    leak, entry = extra["leaks"][0], report["leakage"][0]
    inter = extra["inter"]
    out = {"thresholds": {k: {f: v.get(f) for f in ("value", "how", "far", "paper_far", "rate", "sample_far")}
                          for k, v in report["thresholds"].items()},
           "warnings": report["warnings"],
           "flagged": {"outlier_images": int(extra["intra"].outliers.size), "images": int(len(records)),
                       "duplicate_pairs_within": int(inter.within.sum()), "duplicate_pairs_across": int((~inter.within).sum()),
                       "leaked_pairs": entry["leaked_pairs"], "verification_pairs": entry["pairs"],
                       "leaked_pair_share": entry["leaked_pairs"] / max(1, entry["pairs"]),
                       "leaked_images": entry["leaked_images"]}}
    if truth is None:
        return out
    from fftrain.audit.report import dataset_local

    wrong = {(r["dataset"], r["shard"], int(r["key"])) for r in truth["mislabeled"]}
    found = set()
    for key in extra["intra"].outliers.tolist():
        shard, shard_key = records.shard_key_of(key)
        name, _ = dataset_local(manifest, int(train.labels[key]))
        found.add((name, os.path.basename(records.rec_paths[shard]), shard_key))
    within = {tuple(int(c) for c in p) for p, w in zip(inter.pairs, inter.within) if w}
    planted = {tuple(sorted(d["source_classes"])) for d in truth["duplicates"]}
    leaked_images = set(np.flatnonzero(leak.leaked_images).tolist())
    true_images = {i for item in truth["leaked"] for i in item["verification_images"]}
    leaked_classes = {int(c) for c in leak.nearest_class[leak.leaked_images]}
    true_classes = {item["source_class"] for item in truth["leaked"]}
    out["detection"] = {"mislabeled_images": _pr(found, wrong), "duplicates_within_dataset": _pr(within, planted),
                        "leaked_images": _pr(leaked_images, true_images),
                        "leaked_classes": _pr(leaked_classes, true_classes)}
    return out


def run_checkpoint(checkpoint: str, synth: str, extra_args: list[str], flip: bool = True,
                   matched_far: float | None = None) -> dict:
    from fftrain.audit.pipeline import analyse

    noise = os.path.join(synth, "noise.json")
    truth = json.load(open(noise, encoding="utf-8")) if os.path.exists(noise) else None
    with tempfile.TemporaryDirectory(prefix="audit-calibration-") as work:
        started = time.perf_counter()
        view, manifest, records, train, sets = _embed(checkpoint, synth, work, flip)
        result = {"checkpoint": os.path.abspath(checkpoint), "embed_s": time.perf_counter() - started,
                  "planted": truth is not None, "flip": flip}
        settings = {name: (*values, extra_args) for name, values in SETTINGS.items()}
        if matched_far is not None:
            settings[matched_name(matched_far)] = ("auto", "auto", "auto", [*extra_args, "--far", str(matched_far)])
        for name, (intra, inter, leak, more) in settings.items():
            args = _audit_args(checkpoint, synth, intra, inter, leak, more)
            report, extra = analyse(args, view, manifest, records, train, sets)
            result[name] = _score(report, extra, manifest, records, train, truth)
    return result


def matched_name(far: float) -> str:
    return f"calibrated (auto, FAR {far:g})"


KINDS = ("mislabeled_images", "duplicates_within_dataset", "leaked_images", "leaked_classes")
CALIBRATED, FIXED = "calibrated (auto)", ("fixed (paper)", "fixed (demo's T1)")
LEAK_SHARE, MARGIN = 0.05, 0.05


def _f1(pr: dict) -> float:
    p, r = pr["precision"] or 0.0, pr["recall"] or 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def criteria(results: list[dict]) -> list[dict]:
    """C1 on each set with nothing planted: the calibrated leak threshold flags at most 5 % of the
    verification pairs. C2 on each planted set, per checkpoint and kind: the calibrated precision and
    recall each at least the better fixed setting's (higher F1 of the kind) minus 0.05."""
    out = []
    for r in results:
        ckpt = os.path.basename(r["checkpoint"])
        if not r["planted"]:
            share = r[CALIBRATED]["flagged"]["leaked_pair_share"]
            out.append({"criterion": "C1", "checkpoint": ckpt, "leaked_pair_share": share, "met": share <= LEAK_SHARE})
            continue
        for kind in KINDS:
            ref_name = max(FIXED, key=lambda n: _f1(r[n]["detection"][kind]))
            ref, got = r[ref_name]["detection"][kind], r[CALIBRATED]["detection"][kind]
            met = all((got[m] or 0.0) >= (ref[m] or 0.0) - MARGIN for m in ("precision", "recall"))
            out.append({"criterion": "C2", "checkpoint": ckpt, "kind": kind, "reference": ref_name,
                        "reference_pr": [ref["precision"], ref["recall"]],
                        "calibrated_pr": [got["precision"], got["recall"]], "met": met})
    return out


def criteria_lines(items: list[dict]) -> list[str]:
    lines = []
    for c in items:
        verdict = "met" if c["met"] else "NOT met"
        if c["criterion"] == "C1":
            lines.append(f"C1 {c['checkpoint']}: {100 * c['leaked_pair_share']:.1f} % of pairs leaked: {verdict}")
        else:
            ref, got = (" / ".join(_fmt(v) for v in c[k]) for k in ("reference_pr", "calibrated_pr"))
            lines.append(f"C2 {c['checkpoint']} {c['kind']}: P / R {got} against {ref} ({c['reference']}): {verdict}")
    return lines


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(results: list[dict]) -> str:
    rows = ["| checkpoint | thresholds | intra / inter / leak | their FRR / FAR / FAR | outlier images | "
            "duplicate pairs within / across | leaked pairs | mislabeled P / R | duplicates P / R | "
            "leaked images P / R | leaked classes P / R |", "|---|---|---|---|---:|---:|---:|---|---|---|---|"]
    for r in results:
        for name in (n for n in r if n in SETTINGS or n.startswith("calibrated (auto, FAR")):
            s = r[name]
            t, f, d = s["thresholds"], s["flagged"], s.get("detection")
            pr = (lambda k: f"{_fmt(d[k]['precision'])} / {_fmt(d[k]['recall'])}") if d else (lambda k: "-")
            rows.append(f"| {os.path.basename(r['checkpoint'])} | {name} | {t['intra']['value']:.3f} / "
                        f"{t['inter']['value']:.3f} / {t['leak']['value']:.3f} | {t['intra']['far']:.2g} / "
                        f"{t['inter']['far']:.2g} / {t['leak']['far']:.2g} | {f['outlier_images']} | "
                        f"{f['duplicate_pairs_within']} / {f['duplicate_pairs_across']} | "
                        f"{f['leaked_pairs']} / {f['verification_pairs']} ({100 * f['leaked_pair_share']:.1f} %) | "
                        f"{pr('mislabeled_images')} | {pr('duplicates_within_dataset')} "
                        f"| {pr('leaked_images')} | {pr('leaked_classes')} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--synth", help="the set the checkpoints were trained on (noise.json: scored)")
    p.add_argument("--checkpoint", nargs="+", default=[])
    p.add_argument("--table-from", metavar="JSON", help="print the table of an earlier --json-out, nothing else")
    p.add_argument("--audit-args", default="", help="more `fftrain audit` options for both settings, one string")
    p.add_argument("--no-flip", action="store_true", help="embed the image only (as fftrain audit --no-flip)")
    p.add_argument("--matched-far", type=float, metavar="RATE",
                   help="also a calibrated row at --far RATE (e.g. the fixed 0.82's own leak FAR): a side row, "
                        "not scored by the criteria")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    if args.table_from:
        results = json.load(open(args.table_from, encoding="utf-8"))["results"]
        print(table(results))
        print("\n".join(criteria_lines(criteria(results))))
        return 0
    if not args.synth or not args.checkpoint:
        p.error("--synth and --checkpoint are needed (or --table-from)")
    extra = args.audit_args.split() + (["--no-flip"] if args.no_flip else [])
    results = [run_checkpoint(c, args.synth, extra, not args.no_flip, args.matched_far) for c in args.checkpoint]
    from bench_common import machine_info

    verdicts = criteria(results)
    print(table(results))
    print("\n".join(criteria_lines(verdicts)))
    if args.json_out:
        from recordio_tools.files import json_safe, write_json_atomic

        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        write_json_atomic(args.json_out, json_safe({"machine": machine_info(), "command": sys.argv,
                                                    "results": results, "table": table(results),
                                                    "criteria": verdicts}), indent=1)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
