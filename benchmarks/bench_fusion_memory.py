"""Fusion's peak memory above the FC shard it starts from, as a multiple of the shard.

    python benchmarks/bench_fusion_memory.py                                   # reshard + run_fusion, 2 ranks
    python benchmarks/bench_fusion_memory.py --modes reshard --sizes 30000 120000 400000
    python benchmarks/bench_fusion_memory.py --baseline-commit e8f6697         # alternate with that commit's code
    python benchmarks/bench_fusion_memory.py --out benchmarks/out/my.json

Every measurement is a fresh process tree: W gloo ranks on this host (CPU, one thread each), each
building its shard of N classes x D (weight and SGD momentum in the storage dtype, `--storages`,
config head.fc_storage), 1% of the classes planted as cross-dataset duplicates (as in
bench_fusion.py). Then each rank returns its freed memory to the OS, resets its resident-set
high-water mark (/proc/self/clear_refs, 5) and runs
- mode 'fusion': `fftrain.fusion.run_fusion` end to end (faiss kNN, components, reshard, no report);
- mode 'reshard': `reshard_merge` alone, with the merge map of the planted duplicates;
both in place (over the old shard, as the trainer fuses) where the measured code has `in_place`.
Peak above the shard = VmHWM - the resident set just before (the shard, the tables, the libraries,
faiss imported);
reported as a multiple of the rank's shard bytes (weight + momentum) and in bytes per local class,
the max over ranks. The results (new weight and momentum) count: the caller holds the old shard until
it swaps them in. Memory does not depend on the machine's load, times do (so none are taken).
The ranks run with glibc's MALLOC_MMAP_THRESHOLD_ fixed (`--mmap-threshold`, default 1 MiB): blocks
above it are mapped and unmapped on their own, so the high-water mark follows the live tensors
(glibc's default threshold rises to 32 MiB after the first large free, and freed blocks below it stay
in the heap, which inflates the peak at small sizes by tens of MiB, more than at large ones).
With --baseline-commit REV the same measurements alternate with REV's fftrain (git archive into a
temporary folder, put first on PYTHONPATH), so before and after come from one run.
Prints a table and writes JSON (default benchmarks/out/fusion_memory_<host>_<yyyymmdd>.json).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_high_water() -> int:
    """Give freed heap back to the OS, reset VmHWM; the resident bytes now (the new baseline)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def planted_problem(n: int, dim: int, seed: int):
    """(proxies [n, dim] float32 with random norms, class_dataset [n], old_to_new [n], c_new)."""
    import numpy as np

    sys.path.insert(0, HERE)
    from bench_fusion import make_proxies

    x, class_dataset = make_proxies(n, dim, seed)
    # the merge map bench_fusion's plant produces: each duplicate joins the class it copies
    rng = np.random.default_rng(seed)
    rng.standard_normal((n, dim), dtype=np.float32)  # same draws as make_proxies, to recover its pairs
    third = n // 3
    n_dup = int(n * 0.01)
    src = rng.choice(third, size=n_dup, replace=False)
    dst = third + rng.choice(n - third, size=n_dup, replace=False)
    root = np.arange(n)
    root[dst] = src
    roots, old_to_new = np.unique(root, return_inverse=True)  # new ids ordered by smallest member
    return x, class_dataset, old_to_new.astype(np.int64), int(roots.size)


def _rank_main(rank: int, world: int, init_file: str, a: dict, result_dir: str) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from fftrain.distributed.class_sharding import shard_range
    from fftrain.fusion import run_fusion
    from fftrain.fusion.reshard import reshard_merge

    dtype = torch.bfloat16 if a["storage"] == "bf16" else torch.float32
    x, cd, old_to_new, c_new = planted_problem(a["n"], a["dim"], a["seed"])
    lo, hi = shard_range(a["n"], rank, world)
    weight = torch.from_numpy(np.ascontiguousarray(x[lo:hi])).to(dtype)
    momentum = (torch.from_numpy(np.ascontiguousarray(x[lo:hi][:, ::-1])) * 0.01).to(dtype)
    cd, old_to_new = torch.from_numpy(cd), torch.from_numpy(old_to_new)
    del x
    shard_bytes = 2 * weight.numel() * weight.element_size()
    import faiss  # noqa: F401  (a library, like torch: part of the baseline, not of fusion's working set)

    dist.barrier()
    base = _reset_high_water()
    if a["mode"] == "fusion":
        settings = dict(t1=0.7, knn_k=10, backend="faiss")
        if "config" in inspect.signature(run_fusion).parameters:  # the FusionConfig interface (a baseline may predate it)
            from fftrain.config import FusionConfig

            settings = {"config": FusionConfig(**settings)}
        if "in_place" in inspect.signature(run_fusion).parameters:  # the trainer's way, where the code has it
            settings["in_place"] = True
        res = run_fusion(weight, [momentum], class_dataset=cd, label_map=None, source_info=None,
                         group=dist.group.WORLD, report_dir=None, **settings)
        merged = res.num_classes_new
    else:
        in_place = {"in_place": True} if "in_place" in inspect.signature(reshard_merge).parameters else {}
        new_w, _ = reshard_merge(weight, [momentum], old_to_new, c_new, dist.group.WORLD, **in_place)
        merged = c_new
    peak = _status_kib("VmHWM") * 1024 - base
    with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"peak_above": peak, "shard_bytes": shard_bytes, "n_local": hi - lo, "c_new": merged}, f)
    dist.barrier()
    dist.destroy_process_group()


def measure(mode: str, n: int, storage: str, world: int, dim: int, seed: int, pythonpath: str,
            mmap_threshold: int = 0) -> dict:
    """One measurement in a fresh process tree (the child runs this file with --child)."""
    args = dict(mode=mode, n=n, storage=storage, world=world, dim=dim, seed=seed)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pythonpath, REPO) if p))
    if mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(args)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} N={n} {storage} failed:\n{out.stderr[-3000:]}")
    ranks = json.loads(out.stdout.strip().splitlines()[-1])
    worst = max(ranks, key=lambda r: r["peak_above"] / r["shard_bytes"])
    return dict(args, peak_above_bytes=worst["peak_above"], shard_bytes=worst["shard_bytes"],
                multiple=worst["peak_above"] / worst["shard_bytes"], bytes_per_class=worst["peak_above"] / worst["n_local"],
                c_new=worst["c_new"], ranks=ranks)


def _child(spec: str) -> None:
    import torch.multiprocessing as mp

    a = json.loads(spec)
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank_main, args=(a["world"], os.path.join(tmp, "init"), a, tmp), nprocs=a["world"],
                           join=True, start_method="spawn")
        ranks = [json.load(open(os.path.join(tmp, f"rank{r}.json"))) for r in range(a["world"])]
    print(json.dumps(ranks))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--modes", nargs="+", default=["reshard", "fusion"], choices=["reshard", "fusion"])
    p.add_argument("--sizes", type=int, nargs="+", default=[30000, 120000], help="class counts N (all ranks)")
    p.add_argument("--storages", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--world", type=int, default=2, help="gloo ranks")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mmap-threshold", type=int, default=2**20,
                   help="glibc MALLOC_MMAP_THRESHOLD_ of the ranks (0: glibc's default)")
    p.add_argument("--baseline-commit", default=None, help="also measure this git revision's fftrain, alternating")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/out/fusion_memory_<host>_<date>.json)")
    a = p.parse_args(argv)
    if a.child:
        _child(a.child)
        return 0
    host, date = socket.gethostname(), datetime.date.today().strftime("%Y%m%d")
    out_path = a.out or os.path.join(HERE, "out", f"fusion_memory_{host}_{date}.json")
    head = sorted(subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.split()) or ["?"]
    rows = []
    print(f"{'mode':>7} {'N':>8} {'storage':>7} {'code':>10} {'shard MiB':>9} {'peak above MiB':>14} "
          f"{'x shard':>7} {'B/class':>8}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        codes = [(head[0] + (" (worktree)"), "")]
        if a.baseline_commit:
            sys.path.insert(0, HERE)
            from bench_common import baseline_tree

            codes.insert(0, (a.baseline_commit, baseline_tree(a.baseline_commit, tmp)))
        for mode in a.modes:
            for n in a.sizes:
                for storage in a.storages:
                    for code, path in codes:
                        row = dict(measure(mode, n, storage, a.world, a.dim, a.seed, path, a.mmap_threshold), code=code,
                                   load_average_1min=round(os.getloadavg()[0], 2))
                        rows.append(row)
                        print(f"{mode:>7} {n:>8} {storage:>7} {code[:10]:>10} {row['shard_bytes'] / 2**20:>9.1f} "
                              f"{row['peak_above_bytes'] / 2**20:>14.1f} {row['multiple']:>7.2f} "
                              f"{row['bytes_per_class']:>8.0f}", flush=True)
    sys.path.insert(0, HERE)
    from bench_common import machine_info
    from recordio_tools.files import write_json_atomic

    meta = dict(machine_info(), date=date, command=" ".join(["bench_fusion_memory.py"] + (argv or sys.argv[1:])))
    write_json_atomic(out_path, {"meta": meta, "rows": rows}, indent=1, newline=False, make_parents=True)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
