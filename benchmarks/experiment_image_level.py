"""FaceFusion's controlled experiment at image level (issue item 6 of the replication): the real trainer on the
synthetic faces, the paper's Eq. 5 split, the methods of benchmarks/experiment_replication.py. It confirms the
direction; the feature-level experiment carries the statistics.

    python benchmarks/experiment_image_level.py --out benchmarks/out/image_level          # 8 runs, ~30 min on 2 cores
    python benchmarks/experiment_image_level.py --quick --out /tmp/il                      # the test's preset

Steps (each skipped when its output is already there, so an interrupted run resumes):
1. `recordio_tools synth --overlap 0`: six datasets of distinct persons. The largest (deepglint) is the one
   dataset that is split; two others (ms1m, asian_celeb), persons never trained on, are the held-out set.
2. `recordio_tools split-overlap` per ratio r (k subsets in a cycle, images dealt, r a fraction of N).
3. The geometry gate: FaceFusion with the product's `fusion.t1: auto` / `fusion.t2: auto` at the largest r. Its
   readiness checks and its T1 decision (fusion/readiness.json, fusion/fusion_report.json) say whether the proxies
   show a band between a duplicate mode and a non-duplicate mode. Without one, no method is compared (the gate's
   geometry is the result); with one, step 4 runs.
4. `fftrain/train.py` under torchrun (2 gloo ranks) per (r, method), configs/demo_cpu.yaml with `method=`, the
   GRL off (the paper's §4.5), fusion over cross-dataset pairs (the shipped scope); FaceFusion once per --t1 (the
   paper's 0.7 and the product's auto by default).
5. Each final checkpoint embeds every held-out image (fftrain.audit.embed, flip-summed): TAR@FAR 1e-3 / 1e-4
   over all pairs and rank-1 identification (benchmarks.lib.metrics.all_pairs_metrics); the fusion report is
   scored against the split's overlaps.json (fftrain.evaluation.merge_quality_of_run).
Output under --out: result.json and table.md, beside the data and the runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO, os.path.join(REPO, "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

METHODS = ("naive", "dail", "facefusion", "naive0", "interclass")
SPLIT_DATASET = "deepglint"
HELDOUT_DATASETS = ("ms1m", "asian_celeb")
PRESETS = {
    "default": dict(ids=1000, images_per_id=12, k=4, ratios="0,0.6", steps=300, methods="naive,dail,facefusion"),
    "quick": dict(ids=240, images_per_id=6, k=2, ratios="0.5", steps=24, methods="naive,facefusion"),
}


def _run(cmd: list[str], log_path: str | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if log_path:
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    else:
        proc = subprocess.run(cmd, cwd=REPO, env=env)
    if proc.returncode != 0:
        where = f"; see {log_path}" if log_path else ""
        raise SystemExit(f"experiment_image_level: {' '.join(cmd[:4])} ... exited {proc.returncode}{where}")


def _recordio(*args: str) -> list[str]:
    return [sys.executable, "-m", "recordio_tools", *args]


def make_data(args) -> tuple[str, dict[float, str]]:
    """The synthetic set, the held-out training set and one split per ratio; returns (heldout, {r: split})."""
    synth = os.path.join(args.out, "synth")
    if not os.path.exists(os.path.join(synth, "manifest.json")):
        _run(_recordio("synth", "--out", synth, "--ids", str(args.ids), "--overlap", "0", "--images-per-id",
                       str(args.images_per_id), "--seed", str(args.seed), "--quiet"))
    heldout = os.path.join(args.out, "heldout")
    if not os.path.exists(os.path.join(heldout, "manifest.json")):
        _run(_recordio("build", "--out", heldout, *(os.path.join(synth, d) for d in HELDOUT_DATASETS)))
    splits = {}
    for ratio in args.ratios:
        split = os.path.join(args.out, f"split_r{ratio:g}")
        if not os.path.exists(os.path.join(split, "manifest.json")):
            _run(_recordio("split-overlap", os.path.join(synth, SPLIT_DATASET), "--out", split, "-k", str(args.k),
                           "-r", str(ratio), "--seed", str(args.seed)), os.path.join(args.out, f"split_r{ratio:g}.log"))
        splits[ratio] = split
    return heldout, splits


def arms(args) -> list[tuple[str, str, float | str]]:
    """(label, method, t1): FaceFusion once per --t1 ('auto' or a number), labelled facefusion@T1 when there
    are several."""
    out = []
    for method in args.methods:
        if method == "facefusion" and len(args.t1) > 1:
            out += [(f"facefusion@{t1 if t1 == 'auto' else format(t1, 'g')}", method, t1) for t1 in args.t1]
        else:
            out.append((method, method, args.t1[0]))
    return out


def geometry_gate(args, split: str, ratio: float) -> dict:
    """FaceFusion with T2 and T1 'auto' at `ratio`: its readiness checks and T1 decision. open: a valley (a band
    between the modes) was found and the run merged at it."""
    run_dir = train(args, split, ratio, "facefusion@auto", "facefusion", "auto")
    with open(os.path.join(run_dir, "fusion", "readiness.json"), encoding="utf-8") as f:
        readiness = json.load(f)
    report_path = os.path.join(run_dir, "fusion", "fusion_report.json")
    decision = None
    if os.path.exists(report_path):
        with open(report_path, encoding="utf-8") as f:
            decision = json.load(f)["settings"]["threshold"]
    last = readiness["checks"][-1] if readiness["checks"] else {}
    return {"ratio": ratio, "run_dir": run_dir, "open": bool(decision and decision["mode"] == "valley"),
            "fused_at_step": readiness["fused_at_step"], "last_check": last, "decision": decision,
            "checks": readiness["checks"]}


def train(args, split: str, ratio: float, label: str, method: str, t1: float) -> str:
    run_dir = os.path.join(args.out, "runs", f"r{ratio:g}_{label}")
    final = os.path.join(run_dir, "checkpoints", f"step-{args.steps:08d}", "meta.json")
    if os.path.exists(final):
        return run_dir
    milestones = [round(args.steps * 0.75), round(args.steps * 0.9)]
    overrides = {
        "output_dir": run_dir, "seed": args.seed, "method": method,
        "data.manifest": os.path.join(split, "manifest.json"),
        "data.verification": "[]", "grl.weight": 0.0, "fusion.t1": t1, "fusion.t2": "auto" if t1 == "auto" else args.t2,
        "fusion.t2_ceiling": args.t2, "fusion.readiness_every": max(1, args.steps // 40),
        "fusion.allow_same_dataset": "false", "optim.total_steps": args.steps,
        "optim.lr_milestones": f"[{milestones[0]},{milestones[1]}]", "optim.warmup_steps": max(1, args.steps // 20),
        "checkpoint.every": 0, "log.eval_every": 0, "log.tensorboard": "false",
        "head.interclass_threshold": args.interclass_threshold if method == "interclass" else 0.0,
        "head.proxy_norm": args.proxy_norm,
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           os.path.join(REPO, "fftrain", "train.py"), "--config", os.path.join(REPO, "configs", "demo_cpu.yaml")]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    _run(cmd, run_dir + ".log")
    return run_dir


def heldout_embeddings(checkpoint: str, heldout: str, work_dir: str) -> tuple[np.ndarray, np.ndarray]:
    from fftrain.audit.embed import embed_training_set
    from fftrain.audit.inputs import load_checkpoint_view
    from fftrain.data.records import RecordSet
    from fftrain.distributed import single_process_context
    from recordio_tools.manifest import load_manifest

    view = load_checkpoint_view(checkpoint)
    manifest = load_manifest(os.path.join(heldout, "manifest.json"))
    os.makedirs(work_dir, exist_ok=True)
    out = embed_training_set(view.backbone.eval(), RecordSet(manifest), manifest.num_classes, view.embedding_size,
                             ctx=single_process_context(), work_dir=work_dir, progress=False)
    order = np.argsort(out.labels, kind="stable")  # rank-1 wants each person's images together
    return np.asarray(out.embeddings, np.float32)[order], out.labels[order]


def evaluate_run(run_dir: str, split: str, heldout: str, steps: int) -> dict:
    import torch

    from benchmarks.lib.metrics import all_pairs_metrics
    from fftrain.evaluation.merge_quality import merge_quality_of_run, read_run_results

    checkpoint = os.path.join(run_dir, "checkpoints", f"step-{steps:08d}")
    emb, labels = heldout_embeddings(checkpoint, heldout, os.path.join(run_dir, "heldout_embeddings"))
    emb_t = torch.nn.functional.normalize(torch.from_numpy(emb), dim=1)
    out = all_pairs_metrics(emb_t, torch.from_numpy(labels))
    out["heldout_images"], out["heldout_ids"] = len(labels), int(len(np.unique(labels)))
    quality = merge_quality_of_run(run_dir, os.path.join(split, "overlaps.json"))
    out["merge"] = quality.to_dict()
    out["classes"] = read_run_results(run_dir)["classes"]
    return out


def write_table(path: str, rows: list[dict], meta: dict) -> str:
    from recordio_tools.files import write_text_atomic

    lines = [f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}, {meta['date']}, "
             f"{meta['seconds'] / 60:.1f} min wall; seed {meta['seed']}", ""]
    lines += gate_lines(meta["gate"]) if meta["gate"] else ["Geometry gate: not run (--no-gate)."]
    if not rows:
        why = "--gate-only" if meta["gate"]["open"] else "no band between the modes"
        text = "\n".join(lines + ["", f"No method compared: {why}."]) + "\n"
        write_text_atomic(path, text)
        return text
    lines += ["", f"Held-out: {rows[0]['heldout_ids']} persons, {rows[0]['heldout_images']} images, "
              f"{rows[0]['num_negative_pairs']} negative pairs.", "",
              "| r | method | TAR@1e-3 | TAR@1e-4 | rank-1 | merge P | merge R | classes after | "
              "Table 4 (naive / DAIL / true) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        merge = row["merge"]
        p = "-" if merge.get("precision") is None else f"{merge['precision']:.3f}"
        r = "-" if merge.get("recall") is None else f"{merge['recall']:.3f}"
        c = row["counts"]
        lines.append(f"| {row['ratio']:g} | {row['method']} | {100 * row['tar@0.001']:.2f} | "
                     f"{100 * row['tar@0.0001']:.2f} | {100 * row['rank1']:.2f} | {p} | {r} | {row['classes']} | "
                     f"{c['classes_naive']} / {c['classes_dail']} / {c['classes_true']} |")
    lines += ["", "Differences (points, one seed: no interval):", "", "| comparison | TAR@1e-3 | TAR@1e-4 | rank-1 |",
              "|---|---|---|---|"]
    for name, d in meta["differences"].items():
        lines.append(f"| {name} | {d['tar@0.001']:+.2f} | {d['tar@0.0001']:+.2f} | {d['rank1']:+.2f} |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(path, text)
    return text


def gate_lines(gate: dict) -> list[str]:
    decision = gate["decision"] or {}
    verdict = "open" if gate["open"] else "closed"
    lines = [f"Geometry gate (FaceFusion, T2 and T1 auto, r={gate['ratio']:g}): **{verdict}**; boundary at step "
             f"{gate['fused_at_step']}; T1 decision: {decision.get('mode', 'none')} "
             f"({decision.get('reason', '-')})", "", "| check step | alignment | ready | reason |", "|---|---|---|---|"]
    lines += [f"| {c['step']} | {c['alignment']:.3f} | {c['ready']} | {c['reason']} |" for c in gate["checks"]]
    return lines


def differences(rows: list[dict]) -> dict:
    by = {(r["ratio"], r["method"]): r for r in rows}
    ratios = sorted({r["ratio"] for r in rows})
    out = {}

    def diff(name, a, b):
        if a in by and b in by:
            out[name] = {m: 100 * (by[a][m] - by[b][m]) for m in ("tar@0.001", "tar@0.0001", "rank1")}

    labels = list(dict.fromkeys(r["method"] for r in rows))
    fusions = [label for label in labels if label.startswith("facefusion")]
    for ratio in ratios:
        for fusion in fusions:
            for other in ("naive", "dail", "naive0", "interclass"):
                diff(f"{fusion}-{other}@r={ratio:g}", (ratio, fusion), (ratio, other))
    if len(ratios) > 1:
        for label in labels:
            diff(f"{label}:r={ratios[-1]:g}-r={ratios[0]:g}", (ratios[-1], label), (ratios[0], label))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the test's small preset (~2 min)")
    p.add_argument("--out", required=True, metavar="DIR", help="data, runs, result.json and table.md")
    p.add_argument("--ids", type=int, help="identities over the six synthetic datasets (default 1000; the split one "
                                            "gets ~40%%)")
    p.add_argument("--images-per-id", type=int, help="mean images per identity (default 12)")
    p.add_argument("--k", type=int, help="subsets (default 4)")
    p.add_argument("--ratios", help="comma-separated r (default 0,0.6)")
    p.add_argument("--steps", type=int, help="training steps per run (default 400)")
    p.add_argument("--methods", help=f"comma-separated, from {','.join(METHODS)} (default naive,dail,facefusion)")
    p.add_argument("--t1", default="0.7,auto", help="FaceFusion's merge threshold(s), one run each: numbers or 'auto' "
                                                   "(default 0.7, the paper's, and auto, the product's)")
    p.add_argument("--t2", type=float, default=0.5, help="fraction of steps before fusion (default 0.5, the demo's); "
                                                          "with T1 auto, T2 is auto with this as its ceiling")
    p.add_argument("--gate-only", action="store_true", help="stop after the geometry gate")
    p.add_argument("--no-gate", action="store_true",
                   help="compare the methods without the gate (the tests' runs, too short for any geometry)")
    p.add_argument("--interclass-threshold", type=float, default=0.4, help="the 'interclass' method's threshold")
    p.add_argument("--proxy-norm", type=float, default=0.0,
                   help="head.proxy_norm: 0 = the demo's plain SGD proxies (default); 1 = the feature-level "
                        "experiment's")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic set, the split and the training")
    p.add_argument("--nproc", type=int, default=2, help="gloo ranks per training run (default 2)")
    args = p.parse_args(argv)
    for name, value in PRESETS["quick" if args.quick else "default"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.ratios = [float(r) for r in str(args.ratios).split(",")]
    args.methods = [m.strip() for m in str(args.methods).split(",")]
    args.t1 = [t.strip() if t.strip() == "auto" else float(t) for t in str(args.t1).split(",")]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; available: {list(METHODS)}")
    if not all(0 <= r <= 1 for r in args.ratios):
        p.error(f"--ratios {args.ratios}: each must be in [0, 1]")
    return args


def main(argv=None) -> int:
    from bench_common import machine_info
    from benchmarks.lib.report import machine_line
    from recordio_tools.files import write_text_atomic
    from recordio_tools.overlap_split import planted_counts

    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    machine = machine_line(machine_info())
    heldout, splits = make_data(args)
    with open(os.path.join(args.out, "synth", SPLIT_DATASET, "dataset.json"), encoding="utf-8") as f:
        split_ids = int(json.load(f)["num_classes"])
    gate = None if args.no_gate else geometry_gate(args, splits[max(splits)], max(splits))
    if gate is not None:
        print(f"geometry gate at r={gate['ratio']:g}: {'open' if gate['open'] else 'closed'}: "
              f"{(gate['decision'] or {}).get('reason') or gate['last_check'].get('reason')}", flush=True)
    compare = gate is None or (gate["open"] and not args.gate_only)
    rows = []
    for ratio, split in (splits.items() if compare else ()):
        for label, method, t1 in arms(args):
            run_started = time.perf_counter()
            run_dir = train(args, split, ratio, label, method, t1)
            row = {"ratio": ratio, "method": label, "t1": t1, **evaluate_run(run_dir, split, heldout, args.steps),
                   "counts": {k: v for k, v in planted_counts(split_ids, args.k, ratio).items() if k != "subset_sizes"},
                   "seconds": time.perf_counter() - run_started}
            rows.append(row)
            print(f"r={ratio:g} {label:15s}: TAR@1e-3 {row['tar@0.001']:.4f} rank-1 {row['rank1']:.4f} "
                  f"classes {row['classes']} ({row['seconds']:.0f} s)", flush=True)
    meta = {"command": " ".join(["python benchmarks/experiment_image_level.py"] + (argv or sys.argv[1:])),
            "machine": machine, "date": datetime.date.today().isoformat(), "seconds": time.perf_counter() - started,
            "seed": args.seed, "split_ids": split_ids, "differences": differences(rows), "gate": gate}
    text = write_table(os.path.join(args.out, "table.md"), rows, meta)
    write_text_atomic(os.path.join(args.out, "result.json"),
                      json.dumps({"meta": meta, "args": vars(args), "gate": gate, "runs": rows}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
