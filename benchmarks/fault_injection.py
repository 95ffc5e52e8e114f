"""Kill a rank at a random moment of a small torchrun run; check the restarted run ends as if nothing happened.

    python benchmarks/fault_injection.py --kills 20 --seed 0 --work /tmp/faults    # ~1 minute per kill on 2 cores
    python benchmarks/fault_injection.py --faults save@6:0,fusion@7:1              # chosen faults, one run each

One uninterrupted run is the reference. Each kill is one run under `torchrun --max-restarts=3` with one planned
fault (fftrain/training/faults.py: a rank SIGKILLs itself at a step, inside a checkpoint save, at the fusion step before
its kNN, inside the checkpoint written after fusion, or at an evaluation). Per kill: did the run finish (exit 0,
final checkpoint at the last step), are its final label map and every step's losses equal to the reference
(the last value logged for each step; rel 1e-5), and the wall time lost against the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from bench_common import machine_info, write_report  # noqa: E402
from watchdog import run_watched  # noqa: E402

from fftrain.training.faults import parse_faults  # noqa: E402

TOTAL_STEPS, FUSION_STEP, SAVE_EVERY, EVAL_EVERY, NPROC = 14, 7, 2, 5, 2


def run_config(synth: str, out_dir: str) -> list[str]:
    values = {"output_dir": out_dir, "data.synth_dir": synth, "data.synth_preset": "tiny", "data.batch_size": 16,
              "data.num_workers": 1, "data.verification": f"[{synth}/verification.bin]",
              "optim.total_steps": TOTAL_STEPS, "optim.warmup_steps": 2, "optim.lr_milestones": "[10]",
              "fusion.t2": FUSION_STEP / TOTAL_STEPS, "log.every": 1, "log.eval_every": EVAL_EVERY,
              "checkpoint.every": SAVE_EVERY, "checkpoint.keep_last": 3, "log.tensorboard": "false"}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def possible_faults() -> list[str]:
    """Every (moment, step) the small run passes through, on either rank."""
    moments = [f"step@{s}" for s in range(2, TOTAL_STEPS + 1)]
    moments += [f"save@{s}" for s in range(SAVE_EVERY, TOTAL_STEPS + 1, SAVE_EVERY)]
    moments += [f"fusion@{FUSION_STEP}", f"fusion_save@{FUSION_STEP}"]
    moments += [f"eval@{s}" for s in range(EVAL_EVERY, TOTAL_STEPS, EVAL_EVERY)] + [f"eval@{TOTAL_STEPS}"]
    return [f"{m}:{rank}" for m in moments for rank in range(NPROC)]


def train(synth: str, out_dir: str, fault: str | None, deadline_s: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", FFTRAIN_STARTUP_TIMEOUT_S="120")
    env.pop("FFTRAIN_FAULT", None)
    if fault:
        os.makedirs(os.path.join(out_dir, "faults"), exist_ok=True)
        env.update(FFTRAIN_FAULT=fault, FFTRAIN_FAULT_DIR=os.path.join(out_dir, "faults"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}",
           "--max-restarts=3", os.path.join(REPO, "fftrain", "train.py"), *run_config(synth, out_dir)]
    started = time.perf_counter()
    proc = run_watched(cmd, deadline_s=deadline_s, cwd=REPO, env=env)
    return {"returncode": proc.returncode, "wall_s": time.perf_counter() - started,
            "restarts": (proc.stdout + proc.stderr).count("resumed from"), "tail": (proc.stdout + proc.stderr)[-3000:]}


def outcome(out_dir: str) -> dict:
    """The losses per step (the last logged value of each step) and the final checkpoint's label map."""
    from fftrain.training.checkpoint import complete_checkpoints, load_proxies_and_labels

    losses = {}
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for row in map(json.loads, f):
            if "loss/cls" in row:
                losses[row["step"]] = (row["loss/cls"], row["loss/dom"])
    checkpoints = complete_checkpoints(os.path.join(out_dir, "checkpoints"))
    last_step, last = checkpoints[-1] if checkpoints else (0, None)
    label_map = load_proxies_and_labels(last).label_map if last is not None else None
    return {"losses": losses, "last_checkpoint_step": last_step, "label_map": label_map}


def same_losses(a: dict, b: dict, rel: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(abs(x - y) <= rel * max(abs(y), 1e-6)
                                        for step in a for x, y in zip(a[step], b[step]))


def one_kill(synth: str, work: str, fault: str, reference: dict, reference_wall: float, deadline_s: float) -> dict:
    out_dir = os.path.join(work, "kill-" + fault.replace("@", "-").replace(":", "-rank"))
    shutil.rmtree(out_dir, ignore_errors=True)
    run = train(synth, out_dir, fault, deadline_s)
    fired = os.path.exists(os.path.join(out_dir, "faults", fault))
    result = outcome(out_dir) if os.path.exists(os.path.join(out_dir, "metrics.jsonl")) else None
    finished = run["returncode"] == 0 and result is not None and result["last_checkpoint_step"] == TOTAL_STEPS
    equal_losses = finished and same_losses(result["losses"], reference["losses"])
    equal_map = finished and torch.equal(result["label_map"], reference["label_map"])
    row = {"fault": fault, "fired": fired, "finished": finished, "restarts": run["restarts"],
           "equal_losses": bool(equal_losses), "equal_label_map": bool(equal_map),
           "wall_s": round(run["wall_s"], 1), "time_lost_s": round(run["wall_s"] - reference_wall, 1)}
    if not (fired and finished and equal_losses and equal_map):
        row["tail"] = run["tail"]
    return row


def table(rows: list[dict]) -> str:
    lines = ["| fault (moment@step:rank) | fired | finished | restarts | losses equal | label map equal | time lost (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fault']} | {r['fired']} | {r['finished']} | {r['restarts']} | {r['equal_losses']} | "
                     f"{r['equal_label_map']} | {r['time_lost_s']} |")
    ok = sum(r["fired"] and r["finished"] and r["equal_losses"] and r["equal_label_map"] for r in rows)
    lines.append(f"\n{ok} of {len(rows)} kills recovered with equal losses and label map")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="random faults, one run each")
    parser.add_argument("--faults", default="", help="comma-separated MOMENT@STEP:RANK instead of random ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=os.path.join(REPO, "benchmarks", "out", "fault_injection"))
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds one run may take")
    parser.add_argument("--json", help="report path (default benchmarks/out/...)")
    args = parser.parse_args(argv)
    faults = [f"{m}@{s}:{r}" for m, s, r in parse_faults(args.faults)] if args.faults else \
        random.Random(args.seed).sample(possible_faults(), args.kills)

    from recordio_tools.synthetic import generate_synthetic_set

    os.makedirs(args.work, exist_ok=True)
    synth = os.path.join(args.work, "synth")
    if not os.path.exists(os.path.join(synth, "manifest.json")):
        generate_synthetic_set(synth, preset="tiny", seed=0, progress=False)
    reference_dir = os.path.join(args.work, "reference")
    shutil.rmtree(reference_dir, ignore_errors=True)
    reference_run = train(synth, reference_dir, None, args.deadline)
    if reference_run["returncode"] != 0:
        print(f"the uninterrupted reference run failed:\n{reference_run['tail']}", file=sys.stderr)
        return 1
    reference = outcome(reference_dir)
    rows = []
    for i, fault in enumerate(faults):
        rows.append(one_kill(synth, args.work, fault, reference, reference_run["wall_s"], args.deadline))
        print(f"[{i + 1}/{len(faults)}] {json.dumps({k: v for k, v in rows[-1].items() if k != 'tail'})}", flush=True)
    print(table(rows))
    write_report({"machine": machine_info(), "command": " ".join(sys.argv), "reference_wall_s":
                  round(reference_run["wall_s"], 1), "kills": rows}, args.json, "fault_injection")
    return 0 if all(r["finished"] and r["equal_losses"] and r["equal_label_map"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
