"""`fftrain demo-report RUN`: what a demo run (or any run on a synthetic set with planted overlaps) did:
classes after fusion, pairwise merge precision and recall against the planted truth, the step T2 and the
threshold T1 the fusion used (and why, when they were 'auto'), verification accuracy.

    fftrain demo-report runs/demo                        # the planted truth: <data.synth_dir>/overlaps.json
    fftrain demo-report runs/x --overlaps data/split/overlaps.json --json
"""

from __future__ import annotations

import argparse
import json
import os

from fftrain.errors import UserError


class DemoReportError(UserError, ValueError):
    """A run folder or overlaps file the report cannot read."""


def add_demo_report_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo-report", help="a demo run's classes after fusion, merge precision/recall against the planted "
                            "truth, the T2 and T1 used, and verification accuracy",
        description="Reads RUN's metrics.jsonl, logs/rank0.log, newest checkpoint, fusion/fusion_report.json and "
                    "fusion/readiness.json, and "
                    "scores the fusion against the planted overlaps (pairwise over source classes).")
    p.add_argument("run_dir", metavar="RUN", help="the run's output_dir")
    p.add_argument("--overlaps", metavar="PATH", help="the planted truth, overlaps.json (default: the one in the "
                   "run's data.synth_dir, read from RUN/config.yaml)")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.set_defaults(run=run_demo_report)
    return p


def _overlaps_path(run_dir: str) -> str:
    import yaml

    config = os.path.join(run_dir, "config.yaml")
    try:
        with open(config, encoding="utf-8") as f:
            synth_dir = (yaml.safe_load(f) or {}).get("data", {}).get("synth_dir", "")
    except FileNotFoundError:
        raise DemoReportError(f"{config}: not found; pass --overlaps") from None
    except (yaml.YAMLError, AttributeError) as e:
        raise DemoReportError(f"{config}: cannot read data.synth_dir ({e}); pass --overlaps") from None
    path = os.path.join(synth_dir, "overlaps.json")
    if not os.path.isfile(path):
        raise DemoReportError(f"{path}: planted overlaps not found (data.synth_dir of {config}, relative to where the "
                              "run started); pass --overlaps")
    return path


def demo_report(run_dir: str, overlaps_path: str) -> dict:
    from fftrain.evaluation.merge_quality import FUSION_REPORT, merge_quality_of_run, read_run_results
    from recordio_tools.overlaps import read_overlaps

    results = read_run_results(run_dir)
    overlaps = read_overlaps(overlaps_path)
    groups = overlaps.source_class_groups()
    source_classes = sum(int(d["num_classes"]) for d in overlaps.datasets)
    quality = merge_quality_of_run(run_dir, overlaps_path)
    return {"run": run_dir, "steps": results["steps"], "source_classes": source_classes,
            "classes_after_fusion": results["classes"], "fused": results["fused"],
            "planted_identities": source_classes - sum(len(g) - 1 for g in groups),
            "merge": quality.to_dict(), "verification": results["verification"],
            "t1": _read_json(run_dir, FUSION_REPORT, "settings", "threshold"),
            "no_valley": _read_json(run_dir, FUSION_REPORT, "settings", "no_valley"),
            "t2": _read_json(run_dir, READINESS)}


READINESS = os.path.join("fusion", "readiness.json")


def _read_json(run_dir: str, name: str, *keys: str):
    """The JSON file `name` of the run, or the value under `keys` in it; None where the run has none
    (no fusion yet, a fixed T2, a report from before T1 decisions were recorded)."""
    path = os.path.join(run_dir, name)
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DemoReportError(f"{path}: cannot read ({e})") from None
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _t2_line(readiness: dict | None) -> str | None:
    """Which step the phase boundary came at and why (t2 'auto': the deciding readiness check)."""
    if not readiness or not readiness.get("checks"):
        return None
    step, last = readiness.get("fused_at_step"), readiness["checks"][-1]
    return (f"T2 auto: step {step} (checked from step {readiness.get('floor_step')} to the ceiling "
            f"{readiness.get('ceiling_step')}, {len(readiness['checks'])} checks): {last.get('reason')}")


NO_VALLEY_TRAINING = {"aware": "training stayed dataset-aware",
                      "agnostic": "training went dataset-agnostic over the unmerged classes"}


def _t1_line(threshold: dict | None, no_valley: str | None) -> str | None:
    """The threshold the fusion used, or why auto merged nothing."""
    if not threshold:
        return None
    if threshold.get("mode") == "fixed":
        return f"T1 {threshold['t1']:g} (fixed)"
    if not threshold.get("merges"):
        then = NO_VALLEY_TRAINING.get(no_valley, f"fusion.no_valley {no_valley}")
        return f"T1 auto: declined to merge ({then}), no valley: {threshold.get('reason')}"
    return (f"T1 auto: {threshold['t1']:.3f} ({threshold.get('reason')}); the fit's own estimate: merge "
            f"precision {threshold['precision']:.3f}, recall {threshold['recall']:.3f}")


def format_demo_report(report: dict) -> str:
    merge = report["merge"]

    def rate(value):
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"run {report['run']}: {report['steps']} steps",
             f"classes after fusion: {report['source_classes']} source classes -> {report['classes_after_fusion']} "
             f"(planted truth: {report['planted_identities']} identities)",
             f"merge vs planted truth: precision {rate(merge['precision'])}, recall {rate(merge['recall'])} "
             f"({merge['correct_pairs']} of {merge['predicted_pairs']} merged pairs correct, "
             f"{merge['true_pairs']} planted pairs)"]
    fusion = (_t2_line(report.get("t2")), _t1_line(report.get("t1"), report.get("no_valley")))
    lines += [line for line in fusion if line]
    for name, v in report["verification"].items():
        std = "" if v.get("std") is None else f" ± {100 * v['std']:.1f}"
        lines.append(f"verification {name}: {100 * v['accuracy']:.1f} %{std} (step {v.get('step')})")
    return "\n".join(lines)


def run_demo_report(args) -> int:
    from recordio_tools.overlaps import OverlapsError

    if not os.path.isdir(args.run_dir):
        raise DemoReportError(f"{args.run_dir}: run folder not found")
    try:
        report = demo_report(args.run_dir, args.overlaps or _overlaps_path(args.run_dir))
    except OverlapsError as e:
        raise DemoReportError(str(e)) from None
    print(json.dumps(report, indent=1) if args.json else format_demo_report(report))
    return 0
