"""Step time and peak memory of the Partial-FC head alone against the class count.

    python benchmarks/bench_partial_fc.py                                 # CPU, 10K .. 2M classes
    python benchmarks/bench_partial_fc.py --device cuda --classes 100000,1000000,4000000,8000000
    python benchmarks/bench_partial_fc.py --classes 10000,100000 --max-gb 4 --out /tmp/pfc.json

One step = forward (cosine logits, ArcFace s=64 m=0.5, softmax cross-entropy), backward (to the
embeddings and the proxies) and the optimizer update (SGD momentum 0.9, wd 5e-4). Variants:
`pfc@1.0` and `pfc@0.1` (PartialFCHead, no process group, sample_rate 1.0 / 0.1) and `dense`
(an nn.Parameter [C, D] with the same normalised-cosine logits, F.cross_entropy and
torch.optim.SGD), measured in the same run. Each (classes, variant) runs in a fresh subprocess,
so its peak memory is its own: CPU: peak RSS minus the RSS before the head was built; CUDA:
torch.cuda.max_memory_allocated minus the memory allocated before. Times are medians over the
timed steps: wall clock and the process's CPU time (all threads; on a shared CPU the one that
load does not inflate); the time ratio compares CPU time on the CPU, wall time on CUDA. A configuration whose
estimated peak exceeds --max-gb is skipped. Prints a table; writes JSON (default
benchmarks/out/partial_fc_<host>_<date>.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from bench_common import machine_info, write_report

VARIANTS = ("dense", "pfc@1.0", "pfc@0.1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="10000,30000,100000,300000,1000000,2000000",
                   help="comma-separated class counts")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {VARIANTS}")
    p.add_argument("--embedding-size", type=int, default=512, help="D")
    p.add_argument("--batch", type=int, default=128, help="samples per step")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=5, help="timed steps at most (after 1 warm-up step)")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="stop timing a configuration after this many seconds (2 timed steps at least)")
    p.add_argument("--max-gb", type=float, default=16.0, help="skip configurations estimated above this (GiB)")
    p.add_argument("--out", default=None, help="JSON path; default benchmarks/out/partial_fc_<host>_<date>.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def estimate_bytes(variant: str, classes: int, dim: int, batch: int) -> int:
    """Peak fitted to CPU measurements: fp32 weight + momentum (8 D per class), the gradient of
    the rows used (4 D), about four [B, rows] float tensors, and for dense the normalised weight
    and its backward (16 D more)."""
    state = 8 * dim * classes
    if variant == "dense":
        return state + (20 * dim + 16 * batch) * classes
    rows = classes if variant == "pfc@1.0" else classes // 10
    return state + 8 * classes + (4 * dim + 16 * batch) * rows


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_one(cfg: dict) -> dict:
    """One configuration in this process: build, warm up, time; peak memory of this head."""
    import torch
    import torch.nn.functional as F

    from fftrain.head.margins import ArcFace
    from fftrain.head.partial_fc import PartialFCHead

    device = torch.device(cfg["device"])
    cuda = device.type == "cuda"
    C, D, B = cfg["classes"], cfg["embedding_size"], cfg["batch"]
    margin = ArcFace(64.0, 0.5)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, D, device=device, generator=gen, requires_grad=True)

    def labels():
        return torch.randint(0, C, (B,), device=device, generator=gen)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    sync()
    base = torch.cuda.memory_allocated(device) if cuda else rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    if cfg["variant"] == "dense":
        weight = torch.nn.Parameter(torch.randn(C, D, device=device, generator=gen) * 0.01)
        opt = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=5e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            y = labels()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                cos = F.linear(F.normalize(x), F.normalize(weight))
            target = margin(cos.float(), y)
            F.cross_entropy(target, y).backward()
            opt.step()

        held = lambda: weight.numel() * 4 + sum(s["momentum_buffer"].numel() * 4 for s in opt.state.values())
    else:
        head = PartialFCHead(C, D, margin=margin, sample_rate=float(cfg["variant"].split("@")[1]),
                             device=device)

        def step():
            head(x, labels()).backward()
            head.step(0.1)

        held = lambda: head.weight.numel() * 4 + head.momentum_buffer.numel() * 4
    step()
    sync()
    times, cpu_times = [], []
    start = time.perf_counter()
    while len(times) < cfg["repeats"] and (len(times) < 2 or time.perf_counter() - start < cfg["max_seconds"]):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        x.grad = None
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated(device) - base if cuda else peak_rss_bytes() - base
    median = lambda v: 1000 * sorted(v)[len(v) // 2]
    return {**cfg, "ms_per_step": median(times), "cpu_ms_per_step": median(cpu_times),
            "steps_timed": len(times), "peak_bytes": peak, "held_bytes_per_class": held() / C}


def run_subprocess(cfg: dict) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", json.dumps(cfg)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {**cfg, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    dense = {r["classes"]: r for r in rows if r["variant"] == "dense" and "ms_per_step" in r}
    lines = ["| classes | variant | ms/step | CPU ms/step | peak MiB | held B/class | time vs dense "
             "| peak vs dense |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "ms_per_step" not in r:
            lines.append(f"| {r['classes']:,} | {r['variant']} | {r.get('error', 'skipped')} | | | | | |")
            continue
        d = dense.get(r["classes"])
        key = "cpu_ms_per_step" if r["device"] == "cpu" else "ms_per_step"
        ratio_t = f"{r[key] / d[key]:.2f}" if d else "-"
        ratio_m = f"{r['peak_bytes'] / d['peak_bytes']:.2f}" if d else "-"
        lines.append(f"| {r['classes']:,} | {r['variant']} | {r['ms_per_step']:.0f} | {r['cpu_ms_per_step']:.0f} | "
                     f"{r['peak_bytes'] / 2**20:.0f} | {r['held_bytes_per_class']:.0f} | {ratio_t} | {ratio_m} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; available: {list(VARIANTS)}")
    rows = []
    for classes in (int(c) for c in args.classes.split(",")):
        for variant in variants:
            cfg = {"classes": classes, "variant": variant, "embedding_size": args.embedding_size,
                   "batch": args.batch, "device": args.device, "repeats": args.repeats,
                   "max_seconds": args.max_seconds}
            est = estimate_bytes(variant, classes, args.embedding_size, args.batch)
            if est > args.max_gb * 2**30:
                rows.append({**cfg, "error": f"skipped: est. {est / 2**30:.1f} GiB > --max-gb"})
            else:
                rows.append(run_subprocess(cfg))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    report = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
              "machine": machine_info(), "results": rows}
    print()
    print(table(rows))
    write_report(report, args.out, "partial_fc")


if __name__ == "__main__":
    main()
