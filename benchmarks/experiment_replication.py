"""FaceFusion's controlled experiment (§4.5-4.6, Eq. 5, Table 4, Figures 3-4) in a feature-level world, trained with
the product's own training step and phase boundary (fftrain.training.step: `train_step`, `PhaseBoundary`), head,
fusion (fixed T1/T2 and the shipped `fusion.t1/t2: auto`) and shipped defaults; with insightface arcface_torch's
head as a standing peer arm.

    python benchmarks/experiment_replication.py                         # the default: calibrated world, N 1200, k 4
    python benchmarks/experiment_replication.py --quick --out /tmp/q    # the test's preset (~1-2 min)
    python benchmarks/experiment_replication.py --world lookalike --arms facefusion_auto,naive --seeds 31,32,33
    python benchmarks/experiment_replication.py --ids 800 --k 3 --ratios 0,0.6 --seeds 31,32,33,34,35

Worlds (`--world`; benchmarks/lib/worlds.py WORLDS): 'calibrated' is set to real data's geometry before any method
ran (see WORLDS and benchmarks/RESULTS.md); 'lookalike' is the earlier stress world (look-alike families in a 32-d
identity space, 64-d embeddings, 10 images per identity). Identities are unit latent vectors; an image is a noisy
nonlinear rendering of its identity: x = A2 tanh(A1 [z + sigma*eps, nuisance]) + nu*eta. The backbone is a small
MLP (BatchNorm, ReLU) from the rendering to a `--dim`-d embedding.

Per seed, one world; per ratio r, Eq. 5's split into k subsets (`split_layout`: subset i sharing floor(N*r/k)
identities with subset i+1; a shared identity's images dealt between its two subsets, or copied with
--share-images). Per arm, one run with the same seed, data order and initialisation; steps = --passes over the
images / --batch, so T2 lands after the same passes whatever N is. Arms (benchmarks/lib/feature_training.py ARMS):
naive (dataset-aware until T2, then agnostic over every source class), dail (dataset-aware throughout), facefusion
(fixed T1 --t1 0.7, T2 --t2 0.21: the paper's), facefusion_auto (the product's fusion.t1/t2 'auto' with their
shipped bounds; departs from the shipped config only in the readiness interval, --readiness-every of the run
instead of 1000 steps), interclass (agnostic from step 0 with inter-class filtering), peer (arcface_torch's
PartialFC_V2 + CombinedMarginLoss fetched at run time into a cache outside the repository, agnostic over every
source class from step 0, as arcface_torch users mix datasets today; benchmarks/lib/peer.py says where it departs).
The GRL is off for every arm (the paper's §4.5/4.6 setting) unless --grl-weight.

Metrics: TAR@FAR 1e-3 / 1e-4 over all pairs of held-out images, rank-1; merge precision / recall against the planted
truth; at the boundary of the FaceFusion runs the Figure 3 cosines, the readiness checks, the auto T1 with its
estimated precision / recall, and fusion's plan at every fixed T1 in 0.40-0.95 (the best in hindsight by pairwise
F1). Paired differences over seeds with 95% t-intervals; "no change" by two one-sided tests (90% interval inside
+-0.5 points). Output under --out: result.json (`criteria`: items with "met"), table.md, tar_vs_r.png, fig3_t2.png.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO, os.path.join(REPO, "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from benchmarks.lib.feature_training import (ARMS, PeerUnavailable, add_world_args, per_method, quantiles,  # noqa: E402
                                             train_run)
from benchmarks.lib.report import machine_line, write_with_criteria  # noqa: E402
from benchmarks.lib.stats import equivalent, mean_or_none, paired  # noqa: E402
from benchmarks.lib.worlds import WORLDS, make_split, make_world, world_kwargs  # noqa: E402

PRESETS = {
    "default": dict(world="calibrated", ids=1200, k=4, ratios="0,0.5", seeds="31,32,33,34,35", passes=20.0,
                    batch=256, heldout_ids=400, heldout_images=8,
                    arms="naive,dail,facefusion,facefusion_auto,facefusion_auto_sgd,interclass,peer"),
    "quick": dict(world="lookalike", ids=160, k=4, ratios="0,0.4", seeds="1,2", passes=12.0, batch=128,
                  heldout_ids=100, heldout_images=6, arms="naive,dail,facefusion,facefusion_auto"),
}
EQUIVALENCE_BOUND = 0.005
"""Two one-sided tests of 'no change': the 90% interval of a paired TAR difference inside +-0.5 points."""
AUTO, FIXED = "facefusion_auto", "facefusion"


# ---------------------------------------------------------------------------------------------
# Statistics and output


def summarise(runs: list[dict], ratios: list[float], arms: list[str], seeds: list[int], counts: dict) -> dict:
    key = {(r["ratio"], r["method"], r["seed"]): r for r in runs}

    def series(metric, ratio, arm):
        return [key[ratio, arm, s][metric] for s in seeds]

    table = []
    for ratio in ratios:
        for arm in arms:
            rows = [key[ratio, arm, s] for s in seeds]
            merge = [r["merge"] for r in rows]
            table.append({"ratio": ratio, "method": arm, **{
                m: float(np.mean([r[m] for r in rows])) for m in ("tar@0.001", "tar@0.0001", "rank1")},
                "precision": mean_or_none([q["precision"] for q in merge]),
                "precision_min": min((q["precision"] for q in merge if q["precision"] is not None), default=None),
                "recall": mean_or_none([q["recall"] for q in merge]),
                "false_pairs": float(np.mean([q["predicted_pairs"] - q["correct_pairs"] for q in merge])),
                "classes": float(np.mean([r["classes_in_softmax"] for r in rows])),
                "boundary_passes": mean_or_none([r.get("boundary", {}).get("passes") for r in rows]),
                "declined": sum(bool(r.get("boundary", {}).get("declined")) for r in rows),
                "table4": counts[ratio]})
    diffs, equiv = {}, {}
    for metric in ("tar@0.001", "tar@0.0001", "rank1"):
        d = diffs[metric] = {}
        for ratio in ratios:
            for a, b in itertools.combinations(arms, 2):
                if AUTO in (a, b) or (FIXED in (a, b) and AUTO not in arms):
                    lead = AUTO if AUTO in (a, b) else FIXED
                    other = b if a == lead else a
                    d[f"{lead}-{other}@r={ratio}"] = paired(series(metric, ratio, lead), series(metric, ratio, other))
        if len(ratios) > 1:
            for arm in arms:
                d[f"{arm}:r={ratios[-1]}-r={ratios[0]}"] = paired(series(metric, ratios[-1], arm),
                                                                   series(metric, ratios[0], arm))
    if len(ratios) > 1 and AUTO in arms:
        equiv["flat"] = equivalent(series("tar@0.001", ratios[-1], AUTO), series("tar@0.001", ratios[0], AUTO),
                                   EQUIVALENCE_BOUND)
    if ratios[0] == 0 and AUTO in arms and "naive" in arms:
        equiv["equal_at_0"] = equivalent(series("tar@0.001", 0, AUTO), series("tar@0.001", 0, "naive"),
                                         EQUIVALENCE_BOUND)
    return {"table": table, "diffs": diffs, "equivalence": equiv}


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if x["lo"] is None:
        return f"{x['mean'] * 100:+.2f} pt (1 seed)"
    return f"{x['mean'] * 100:+.2f} pt [{x['lo'] * 100:+.2f}, {x['hi'] * 100:+.2f}]"


def check_criteria(summary: dict, runs: list[dict], ratios: list[float], arms: list[str], world: str) -> list[dict]:
    """The issue's criteria, fixed before the runs (benchmarks/RESULTS.md, 'Fusion readiness'), on TAR@FAR=1e-3
    for FaceFusion-auto; the look-alike world checks merges only."""
    d = summary["diffs"]["tar@0.001"]
    table = {(row["ratio"], row["method"]): row for row in summary["table"]}
    auto_runs = [r for r in runs if r["method"] == AUTO]
    out = []

    def add(name, met, detail):
        out.append({"criterion": name, "met": bool(met), "detail": detail})

    if not auto_runs:
        return out
    if world == "lookalike":
        for ratio in [r for r in ratios if r > 0]:
            rows = [r for r in auto_runs if r["ratio"] == ratio]
            merged = [r for r in rows if not r["boundary"].get("declined")]
            low = [r for r in merged if (r["merge"]["precision"] or 1.0) < 0.9]
            row = table[ratio, AUTO]
            meets = (row["precision"] or 0) >= 0.95 and (row["recall"] or 0) >= 0.85 and not any(
                r["boundary"].get("declined") for r in rows)
            add(f"look-alike world r={ratio}: auto meets the merge criteria or refuses with its reason",
                meets or len(merged) < len(rows), f"{len(rows) - len(merged)} of {len(rows)} runs refused; merge "
                f"precision {row['precision']}, recall {row['recall']}")
            add(f"look-alike world r={ratio}: auto never merges with precision below 0.9", not low,
                f"runs that merged: {len(merged)}; lowest precision {row['precision_min']}")
        return out + _hindsight(auto_runs)
    for ratio in ratios:
        row = table[ratio, AUTO]
        if ratio > 0:
            add(f"auto merge precision >= 0.95 and recall >= 0.85 at r={ratio}",
                (row["precision"] or 0) >= 0.95 and (row["recall"] or 0) >= 0.85,
                f"precision {row['precision']} (lowest seed {row['precision_min']}), recall {row['recall']}")
        else:
            classes = row["table4"]["classes_true"]
            add("auto false merges at r=0 under 1% of classes", row["false_pairs"] < 0.01 * classes,
                f"{row['false_pairs']:.1f} false pairs / {classes} classes")
    for ratio in ratios:
        x = d.get(f"{AUTO}-dail@r={ratio}")
        if x:
            add(f"auto above dail at r={ratio}", x["lo"] is not None and x["lo"] > 0, _fmt(x))
    for ratio in [r for r in ratios if r >= 0.4]:
        x = d.get(f"{AUTO}-naive@r={ratio}")
        if x:
            add(f"auto above naive at r={ratio}", x["lo"] is not None and x["lo"] > 0, _fmt(x))
    eq = summary["equivalence"]
    if "equal_at_0" in eq:
        e = eq["equal_at_0"]
        add("auto equal to naive at r=0 (TOST: 90% interval inside +-0.5 pt)", e["met"], _fmt_equiv(e))
    naive = d.get(f"naive:r={ratios[-1]}-r={ratios[0]}")
    if naive:
        add("naive falls with r (TAR(r_max) - TAR(0), 95% interval below 0)",
            naive["hi"] is not None and naive["hi"] < 0, _fmt(naive))
    if "flat" in eq:
        e = eq["flat"]
        add(f"auto flat in r (TOST: 90% interval of TAR(r={ratios[-1]}) - TAR(r={ratios[0]}) inside +-0.5 pt, "
            f">= 5 seeds)", e["met"] and e["n"] >= 5, _fmt_equiv(e))
    return out + _hindsight(auto_runs)


def _hindsight(auto_runs: list[dict]) -> list[dict]:
    gaps = [r["boundary"]["vs_best_fixed_t1"]["one_minus_jaccard"] for r in auto_runs
            if r.get("boundary", {}).get("vs_best_fixed_t1")]
    if not gaps:
        return []
    worst = max(gaps)
    return [{"criterion": "auto T1's merge set within 2% (1 - Jaccard) of the best fixed T1 in hindsight, every run",
             "met": bool(worst <= 0.02), "detail": f"worst {worst:.4f}, median {float(np.median(gaps)):.4f} over "
             f"{len(gaps)} runs; {sum(g <= 0.02 for g in gaps)} within 2%"}]


def _fmt_equiv(e) -> str:
    if e["lo90"] is None:
        return f"{e['mean'] * 100:+.2f} pt (1 seed)"
    return f"{e['mean'] * 100:+.2f} pt, 90% [{e['lo90'] * 100:+.2f}, {e['hi90'] * 100:+.2f}] over {e['n']} seeds"


def write_markdown(path: str, summary: dict, criteria: list[dict], boundaries: list[dict], meta: dict) -> str:
    lines = [f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}, {meta['date']}, "
             f"{meta['seconds'] / 60:.1f} min wall, {meta['cpu_seconds'] / 60:.1f} CPU-min in the runs; world "
             f"{meta['world']}; seeds {meta['seeds']}; {meta['steps']} steps ({meta['passes']:g} passes); TAR over "
             f"{meta['negatives']} negative pairs; arms not run: {meta['not_run'] or 'none'}",
             "", "| r | arm | TAR@1e-3 | TAR@1e-4 | rank-1 | merge P (lowest) | merge R | boundary (passes) | "
             "declined | classes in softmax | Table 4 (naive / DAIL / true) |", "|---" * 11 + "|"]
    for row in summary["table"]:
        t4 = row["table4"]
        p = "-" if row["precision"] is None else f"{row['precision']:.3f} ({row['precision_min']:.3f})"
        r = "-" if row["recall"] is None else f"{row['recall']:.3f}"
        b = "-" if row["boundary_passes"] is None else f"{row['boundary_passes']:.2f}"
        lines.append(f"| {row['ratio']} | {row['method']} | {row['tar@0.001'] * 100:.2f} | "
                     f"{row['tar@0.0001'] * 100:.2f} | {row['rank1'] * 100:.2f} | {p} | {r} | {b} | "
                     f"{row['declined']} | "
                     f"{row['classes']:.0f} | {t4['classes_naive']} / {t4['classes_dail']} / {t4['classes_true']} |")
    lines += ["", "Paired differences (mean over seeds, 95% t-interval), points:", "",
              "| comparison | TAR@1e-3 | TAR@1e-4 |", "|---|---|---|"]
    for name, x in summary["diffs"]["tar@0.001"].items():
        lines.append(f"| {name} | {_fmt(x)} | {_fmt(summary['diffs']['tar@0.0001'][name])} |")
    if boundaries:
        lines += ["", "At the boundary (FaceFusion and peer runs; Figure 3 analogue), proxy cosines:", "",
                  "| r | arm | seed | passes | duplicates q05 / q50 | top-1 non-duplicate q50 / q99 | "
                  "auto T1 (est. P / R) "
                  "| best fixed T1 (F1) | auto vs best 1-J |", "|---|---|---|---|---|---|---|---|---|"]
        for t in boundaries:
            dq, nq = t["duplicate_q"], t["top1_q"]
            dup = f"{dq['q05']:.3f} / {dq['q50']:.3f}" if dq else "-"
            lines.append(f"| {t['ratio']} | {t['arm']} | {t['seed']} | {t['passes']} | {dup} | {nq['q50']:.3f} / "
                         f"{nq['q99']:.3f} | {t['auto_t1']} | {t['best']} | {t['gap']} |")
    return write_with_criteria(path, lines, criteria)


def boundary_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for r in sorted((r for r in runs if "t2" in r), key=lambda r: (r["ratio"], r["method"], r["seed"])):
        t, b = r["t2"], r.get("boundary", {})
        decision = (b.get("threshold") or t.get("auto_t1"))
        auto = "-"
        if decision and decision["mode"] == "valley":
            auto = f"{decision['t1']:.3f} ({decision['precision']:.3f} / {decision['recall']:.3f})"
        elif decision and decision["mode"] == "no_valley":
            auto = f"no valley: {decision['reason'][:60]}"
        best = f"{float(t['best_t1']):.2f} ({t['f1_by_t1'][t['best_t1']]:.3f})" if "best_t1" in t else "-"
        gap = b.get("vs_best_fixed_t1", {}).get("one_minus_jaccard")
        passes = b.get("passes", t.get("passes"))  # the peer's geometry: at the fixed T2, no boundary of its own
        rows.append({"ratio": r["ratio"], "arm": r["method"], "seed": r["seed"],
                     "passes": "-" if passes is None else f"{passes:.2f}",
                     "duplicate_q": quantiles(t["duplicate"]), "top1_q": quantiles(t["top1_non_duplicate"]),
                     "auto_t1": auto, "best": best, "gap": "-" if gap is None else f"{gap:.4f}",
                     "duplicate": t["duplicate"], "top1_non_duplicate": t["top1_non_duplicate"], "decision": decision})
    return rows


def plot(out_dir: str, summary: dict, ratios, arms, boundaries) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("tar@0.001", "tar@0.0001")):
        for arm in arms:
            rows = [row for row in summary["table"] if row["method"] == arm]
            ax.plot([r["ratio"] for r in rows], [r[metric] * 100 for r in rows], marker="o", label=arm)
        ax.set_xlabel("overlap ratio r")
        ax.set_ylabel(f"TAR@FAR={metric.split('@')[1]} (%)")
        ax.set_xticks(ratios)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("FaceFusion Figure 4, feature level (mean over seeds)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "tar_vs_r.png"), dpi=100)
    plt.close(fig)
    shown = [t for t in boundaries if t["ratio"] == ratios[-1]]
    panels = [next((t for t in shown if t["arm"] == arm), None) for arm in (AUTO, FIXED, "peer")]
    panels = [t for t in panels if t is not None]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    bins = np.linspace(-0.2, 1.0, 61)
    for ax, t in zip(axes[0], panels):
        ax.hist(t["top1_non_duplicate"], bins=bins, alpha=0.6, label="top-1 non-duplicate")
        if len(t["duplicate"]):
            ax.hist(t["duplicate"], bins=bins, alpha=0.6, label="true duplicate")
        decision = t["decision"]
        if decision and decision.get("t1") is not None and decision["mode"] != "fixed":
            ax.axvline(decision["t1"], color="C3", lw=1.5, label=f"auto T1 {decision['t1']:.2f}")
        ax.axvline(0.7, color="k", ls="--", lw=1, label="paper's T1 0.7")
        ax.set_title(f"{t['arm']}, r={t['ratio']}, seed {t['seed']}, at {t['passes']} passes", fontsize=9)
        ax.set_xlabel("proxy cosine at the boundary")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "fig3_t2.png"), dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Driver


def _job(job):
    """One (seed, ratio, arm) run in a worker process (1 torch thread)."""
    import torch

    torch.set_num_threads(1)
    args, seed, ratio, arm = job
    world = make_world(seed, **world_kwargs(args))
    split = make_split(world, args.k, ratio, seed, args.share_images)
    try:
        out = train_run(world, split, arm, seed, args)
    except PeerUnavailable as exc:
        return {"method": arm, "seed": seed, "ratio": ratio, "not_run": str(exc)}
    out["ratio"] = ratio
    return out


def _numbers(text: str, flag: str, kind=float) -> list:
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: {text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise SystemExit(f"{flag}: empty")
    return values


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the test's small preset")
    p.add_argument("--world", choices=sorted(WORLDS), help="the world (default calibrated; quick lookalike)")
    p.add_argument("--ids", type=int, help="training identities N (default 1200; quick 160)")
    p.add_argument("--k", type=int, help="subsets (default 4)")
    p.add_argument("--ratios", help="comma-separated overlap ratios r, fractions of N (default 0,0.5)")
    p.add_argument("--seeds", help="comma-separated seeds, each its own world, split and init (default 31,32,33,34,35: "
                                   "the criteria seeds; 1 and 2 are the pilot seeds)")
    p.add_argument("--passes", type=float, help="passes over the training images per run (default 20; T2 0.21 of it)")
    p.add_argument("--steps", type=int, help="steps per run instead of --passes")
    p.add_argument("--arms", "--methods", dest="arms", help=f"comma-separated, from {','.join(ARMS)}")
    p.add_argument("--fusion", choices=("fixed", "auto", "both"), default="both",
                   help="which FaceFusion arms run: fixed T1/T2, auto, or both (default)")
    p.add_argument("--mutual-nn", action="store_true", help="fusion.mutual_nn for the FaceFusion arms")
    p.add_argument("--no-valley", choices=("aware", "agnostic"),
                   help="auto arms: fusion.no_valley (default: the shipped one, aware)")
    p.add_argument("--readiness-every", type=float, default=0.025,
                   help="auto arm: steps between readiness checks, a fraction of the run (default 0.025)")
    p.add_argument("--share-images", action="store_true",
                   help="a shared identity's images go to both subsets (the paper's Table 5 S'); default: dealt")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "out", "replication"), metavar="DIR",
                   help="output folder for result.json, table.md and the PNGs")
    p.add_argument("--workers", type=int, default=2, help="parallel runs, one torch thread each (default 2)")
    p.add_argument("--batch", type=int, help="images per step (default 256; quick 128)")
    p.add_argument("--images-per-id", type=int, help="training images per identity (default: the world's)")
    p.add_argument("--heldout-ids", type=int, help="held-out identities for verification (default 400)")
    p.add_argument("--heldout-images", type=int, help="images per held-out identity (default 8)")
    add_world_args(p, defaults=False)
    args = p.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "default"]
    for name, value in preset.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    for name, value in WORLDS[args.world].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.steps:
        args.passes = None
    args.ratios = _numbers(args.ratios, "--ratios")
    args.seeds = _numbers(args.seeds, "--seeds", int)
    args.arms = [m.strip() for m in str(args.arms).split(",") if m.strip()]
    drop = {"fixed": {AUTO, AUTO + "_sgd"}, "auto": {FIXED}, "both": set()}[args.fusion]
    args.arms = [a for a in args.arms if a not in drop]
    bad = [m for m in args.arms if m not in ARMS]
    if bad:
        p.error(f"--arms: unknown {bad}; available: {list(ARMS)}")
    if args.t2 <= 0 or args.t2 >= 1:
        p.error(f"--t2 {args.t2}: must be in (0, 1)")
    try:
        args.grl_weight = per_method(args.grl_weight, "--grl-weight", low=0.0, high=math.inf)
        args.grl_start = per_method(args.grl_start, "--grl-start", low=0.0, high=1.0)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv=None) -> int:
    import multiprocessing

    from bench_common import machine_info

    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    jobs = [(args, s, r, m) for s in args.seeds for r in args.ratios for m in args.arms]
    started = time.perf_counter()
    print(f"{len(jobs)} runs on {args.workers} worker(s): world {args.world}, ids {args.ids}, k {args.k}, ratios "
          f"{args.ratios}, seeds {args.seeds}, passes {args.passes}, arms {args.arms}", flush=True)
    ctx = multiprocessing.get_context("spawn")
    results = []
    with ctx.Pool(args.workers) as pool:
        for out in pool.imap_unordered(_job, jobs):
            results.append(out)
            b = out.get("boundary", {})
            where = f", boundary at {b['passes']:.2f} passes" if "passes" in b else ""
            merge = out.get("merge") or {}
            print(f"  r={out['ratio']} {out['method']:15s} seed {out['seed']}: "
                  + (f"not run: {out['not_run']}" if "not_run" in out else
                     f"TAR@1e-3 {out['tar@0.001']:.4f}, merge P {merge.get('precision')} R {merge.get('recall')}"
                     f"{where} ({out.get('seconds', 0):.0f} s)"), flush=True)
    seconds = time.perf_counter() - started
    not_run = sorted({f"{r['method']}: {r['not_run']}" for r in results if "not_run" in r})
    runs = [r for r in results if "not_run" not in r]
    arms = [a for a in args.arms if any(r["method"] == a for r in runs)]
    from recordio_tools.overlap_split import planted_counts

    counts = {r: {k: v for k, v in planted_counts(args.ids, args.k, r).items() if k != "subset_sizes"}
              for r in args.ratios}
    summary = summarise(runs, args.ratios, arms, args.seeds, counts)
    criteria = check_criteria(summary, runs, args.ratios, arms, args.world)
    boundaries = boundary_rows(runs)
    meta = {"command": " ".join(["python benchmarks/experiment_replication.py"] + (argv or sys.argv[1:])),
            "machine": machine_line(machine_info()), "date": datetime.date.today().isoformat(), "seconds": seconds,
            "world": args.world, "seeds": args.seeds, "steps": runs[0]["steps"],
            "passes": args.passes or 0.0, "negatives": runs[0]["num_negative_pairs"],
            "cpu_seconds": sum(r.get("cpu_seconds", 0.0) for r in results), "not_run": not_run}
    text = write_markdown(os.path.join(args.out, "table.md"), summary, criteria, boundaries, meta)
    plot(args.out, summary, args.ratios, arms, boundaries)
    slim = [{k: v for k, v in r.items() if k != "t2"} for r in runs]
    report = {"meta": meta, "args": {k: v for k, v in vars(args).items()}, "summary": summary, "criteria": criteria,
              "boundaries": [{k: v for k, v in t.items() if k not in ("duplicate", "top1_non_duplicate")}
                             for t in boundaries], "runs": slim}
    from recordio_tools.files import write_text_atomic

    write_text_atomic(os.path.join(args.out, "result.json"), json.dumps(report, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
