"""Fusion step time (kNN, components, reshard) vs proxy count, next to a raw faiss search.

    python benchmarks/bench_fusion.py                                  # 10K..50K, world sizes 1 and 2
    python benchmarks/bench_fusion.py --sizes 10000 100000 --worlds 1 2 4 --backends faiss torch
    python benchmarks/bench_fusion.py --out benchmarks/out/my.json
    python benchmarks/bench_fusion.py --sizes 20000 40000 --worlds 1 --baseline-commit 1e3a23f   # before / after
    python benchmarks/bench_fusion.py --device cuda --sizes 390000 4000000 --worlds 1 --backends torch

For each proxy count N (D=512 by default, three equal "datasets", 1% of the classes planted as
cross-dataset duplicates so the component and reshard phases have work):
- raw: one faiss IndexFlatIP over all N proxies, searched by all N with k+1 neighbours, using
  every core of the host (the lower bound a fusion kNN is held to);
- fusion: `fftrain.fusion.run_fusion` (no report) on W gloo ranks on this host, each rank with
  (cores / W) threads; the phase times are the max over ranks.
- roofline: this machine's fp32 GEMM rate ([8192, D] x [D, 8192], all cores, the faster of torch's and
  numpy's BLAS); kNN/roofline =
  (the kNN's multiply-adds, every proxy against the other datasets' proxies, at that rate) / kNN seconds:
  1.0 is a kNN that does nothing but its score GEMMs at the BLAS's best rate.
With --baseline-commit REV each fusion configuration also runs REV's fftrain (git archive into a
temporary folder, first on PYTHONPATH), and every fusion run is then a fresh process (`--child`), both
codes alike; the `code` column says which.
The baseline and the measured configurations alternate, `--repeats` rounds per size (raw, then each
fusion configuration, then raw again, ...), so a change of the machine's load hits both alike; ratio =
the median over rounds of (fusion total / the raw run of the same round), with its range over rounds.
Times are the medians over rounds.
`--device cuda` (world 1 only: several GPUs need NCCL, not this host's gloo): the proxies and the
momentum sit on cuda:0 and the phases are timed with CUDA synchronised; the raw faiss baseline
stays on the CPU (skipped above 1M proxies: `--raw-max`). Prints a table and writes JSON (default
benchmarks/out/fusion_<host>_<yyyymmdd>.json). Times are seconds (faiss is imported before the
first timed run, and one search of the kNN's block shape warms it in every process that runs fusion).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from recordio_tools.files import write_json_atomic


def make_proxies(n: int, dim: int, seed: int, dup_fraction: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Random unit proxies, three datasets of ~n/3 classes, `dup_fraction` of them duplicated
    across datasets (cos ~0.98). Returns (proxies [n, dim] float32 with random norms, class_dataset)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    third = n // 3
    class_dataset = np.minimum(np.arange(n) // max(third, 1), 2).astype(np.int64)
    n_dup = int(n * dup_fraction)
    src = rng.choice(third, size=n_dup, replace=False)  # dataset 0
    dst = third + rng.choice(n - third, size=n_dup, replace=False)  # datasets 1 and 2
    noise = rng.standard_normal((n_dup, dim), dtype=np.float32)
    noise *= 0.2 / np.linalg.norm(noise, axis=1, keepdims=True)
    y = x[src] + noise
    x[dst] = y / np.linalg.norm(y, axis=1, keepdims=True)
    x *= rng.uniform(0.5, 2.0, size=(n, 1)).astype(np.float32)
    return x, class_dataset


def raw_faiss(x: np.ndarray, k: int, threads: int) -> float:
    import faiss

    faiss.omp_set_num_threads(threads)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    t = time.perf_counter()
    index = faiss.IndexFlatIP(xn.shape[1])
    index.add(xn)
    index.search(xn, k + 1)
    return time.perf_counter() - t


GEMM_ROWS = 8192


def gemm_roofline(dim: int, threads: int, repeats: int = 3) -> float:
    """FLOP/s of this machine's fp32 GEMM: the faster of torch's BLAS and numpy's (an OpenBLAS, the kind
    faiss-cpu links), best of `repeats` products of [8192, dim] x [dim, 8192] each: the rate a kNN's
    score blocks cannot beat."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(GEMM_ROWS, dim, generator=g), torch.randn(GEMM_ROWS, dim, generator=g)
    an, bn = a.numpy(), b.numpy()
    best = float("inf")
    for product in (lambda: a @ b.T, lambda: an @ bn.T):
        product()  # warm-up: page in, pick the kernel
        best = min([best] + [_timed(product) for _ in range(repeats)])
    return 2.0 * GEMM_ROWS * GEMM_ROWS * dim / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def knn_flops(class_dataset: np.ndarray, dim: int) -> float:
    """The multiply-adds (x2) the fusion kNN must do: every proxy against every proxy of another dataset."""
    counts = np.bincount(class_dataset).astype(np.float64)
    return 2.0 * dim * float((counts * (counts.sum() - counts)).sum())


def _fusion(group, rank, world, path, k, t1, backend, device="cpu"):
    from fftrain.distributed.class_sharding import shard_range
    from fftrain.config import FusionConfig
    from fftrain.fusion import run_fusion

    data = np.load(path, mmap_mode="r")
    cd = np.load(path.replace(".npy", "_cd.npy"))
    a, b = shard_range(data.shape[0], rank, world)
    w = torch.from_numpy(np.array(data[a:b])).to(device)
    if backend == "faiss" and device == "cpu":
        _warm_faiss(w.shape[1])
    mom = torch.zeros_like(w)
    sync = torch.cuda.synchronize if w.is_cuda else (lambda: None)
    sync()
    t = time.perf_counter()
    res = run_fusion(w, [mom], class_dataset=torch.from_numpy(cd), label_map=None, source_info=None,
                     config=FusionConfig(t1=t1, knn_k=k, max_component=6, backend=backend), group=group,
                     report_dir=None)
    sync()
    total = time.perf_counter() - t
    s = res.stats
    return {"knn_s": s["knn_s"], "components_s": s["components_s"], "reshard_s": s["reshard_s"], "total_s": total,
            "merged": s["num_components_merged"], "num_classes_new": res.num_classes_new}


def _warm_faiss(dim: int) -> None:
    """One search of the kNN's block shape before the timer (faiss imported, its BLAS threads and buffers
    made): a trainer's fusion readiness checks have searched the same proxies before its fusion."""
    import faiss

    from fftrain.fusion.knn import CHUNK_BYTES, chunk_rows

    keys = np.random.default_rng(0).standard_normal((chunk_rows(dim, CHUNK_BYTES["cpu"]), dim), dtype=np.float32)
    faiss.omp_set_num_threads(torch.get_num_threads())
    faiss.knn(keys[:keys.shape[0] // 2], keys, 10, metric=faiss.METRIC_INNER_PRODUCT)


def _worker(rank, world, init_file, threads, args, result_dir):
    import torch.distributed as dist

    torch.set_num_threads(threads)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = _fusion(dist.group.WORLD, rank, world, *args)
        torch.save(out, os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_fusion_world(world: int, threads: int, path: str, k: int, t1: float, backend: str,
                     device: str = "cpu") -> dict:
    if world == 1:
        torch.set_num_threads(threads)
        return _fusion(None, 0, 1, path, k, t1, backend, device)
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(world, os.path.join(tmp, "init"), max(1, threads // world),
                                          (path, k, t1, backend), tmp),
                           nprocs=world, join=True, start_method="spawn")
        per_rank = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(world)]
    out = {key: max(p[key] for p in per_rank) for key in ("knn_s", "components_s", "reshard_s", "total_s")}
    out.update(merged=per_rank[0]["merged"], num_classes_new=per_rank[0]["num_classes_new"])
    return out


_TIMES = ("knn_s", "components_s", "reshard_s", "total_s")
HERE = os.path.dirname(os.path.abspath(__file__))


def run_fusion_child(code_path: str, world: int, threads: int, path: str, k: int, t1: float, backend: str) -> dict:
    """`run_fusion_world` in a fresh process with `code_path`'s fftrain first on PYTHONPATH (this
    tree's when empty)."""
    args = json.dumps(dict(world=world, threads=threads, path=path, k=k, t1=t1, backend=backend))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (code_path, os.path.dirname(HERE)) if p))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", args], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure_size(n: int, a, tmp: str, codes: dict[str, str]) -> list[dict]:
    """One row per (backend, world): median times over `a.repeats` rounds, each round the raw faiss
    baseline then every configuration, and the median (and range) of the per-round ratios."""
    x, cd = make_proxies(n, a.dim, a.seed)
    path = os.path.join(tmp, f"proxies_{n}.npy")
    np.save(path, x)
    np.save(path.replace(".npy", "_cd.npy"), cd)
    with_raw = n <= a.raw_max
    if with_raw:
        import faiss  # noqa: F401  (its import is not the first round's cost)
    configs = [(code, backend, world) for code in codes for backend in a.backends for world in a.worlds]
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    raws, gemms = [], []
    for _ in range(a.repeats):
        gemms.append(gemm_roofline(a.dim, a.threads) if a.device == "cpu" else float("nan"))
        raws.append(raw_faiss(x, a.k, a.threads) if with_raw else float("nan"))
        for code, backend, world in configs:
            if len(codes) > 1:
                result = run_fusion_child(codes[code], world, a.threads, path, a.k, a.t1, backend)
            else:
                result = run_fusion_world(world, a.threads, path, a.k, a.t1, backend, a.device)
            runs[code, backend, world].append(result)
    del x
    rows = []
    for (code, backend, world), results in runs.items():
        ratios = [r["total_s"] / raw for r, raw in zip(results, raws)]
        roofline = [knn_flops(cd, a.dim) / gemm / r["knn_s"] for r, gemm in zip(results, gemms)]
        row = dict(n=n, dim=a.dim, world=world, backend=backend, code=code, device=a.device, threads=a.threads,
                   repeats=a.repeats, raw_faiss_s=statistics.median(raws), raw_faiss_runs_s=raws,
                   ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                   total_runs_s=[r["total_s"] for r in results],
                   merged=results[0]["merged"], num_classes_new=results[0]["num_classes_new"],
                   gemm_gflops=statistics.median(gemms) / 1e9, knn_gflop=knn_flops(cd, a.dim) / 1e9,
                   knn_roofline=statistics.median(roofline), knn_roofline_min=min(roofline),
                   knn_roofline_max=max(roofline))
        row.update({key: statistics.median(r[key] for r in results) for key in _TIMES})
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000, 50000], help="proxy counts N")
    p.add_argument("--dim", type=int, default=512, help="proxy dimension D")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2], help="gloo world sizes on this host")
    p.add_argument("--backends", nargs="+", default=["faiss"], choices=["faiss", "torch"], help="kNN backends")
    p.add_argument("--k", type=int, default=10, help="neighbours per proxy")
    p.add_argument("--t1", type=float, default=0.7, help="merge threshold (cosine)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="cores to use in all (raw and fusion)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the proxies sit (cuda: world 1)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds of baseline and fusion per size")
    p.add_argument("--raw-max", type=int, default=1_000_000, help="skip the raw faiss baseline above this N")
    p.add_argument("--baseline-commit", default=None, help="also run this git revision's fftrain, alternating")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/out/fusion_<host>_<date>.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        c = json.loads(a.child)
        print(json.dumps(run_fusion_world(c["world"], c["threads"], c["path"], c["k"], c["t1"], c["backend"])))
        return 0
    if a.device == "cuda" and a.worlds != [1]:
        p.error("--device cuda runs world size 1 only (--worlds 1)")
    if a.device == "cuda" and a.baseline_commit:
        p.error("--baseline-commit runs on the CPU")

    host = socket.gethostname()
    date = datetime.date.today().strftime("%Y%m%d")
    out_path = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", f"fusion_{host}_{date}.json")
    rows = []
    header = (f"{'N':>8} {'W':>2} {'backend':>7} {'code':>8} {'knn s':>8} {'comp s':>8} {'reshard s':>9} {'total s':>8} "
              f"{'raw faiss s':>11} {'ratio':>6} {'range':>11} {'merged':>7} {'kNN/roofline':>12} {'range':>11}")
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"this": ""}
        if a.baseline_commit:
            sys.path.insert(0, HERE)
            from bench_common import baseline_tree

            codes = {a.baseline_commit: baseline_tree(a.baseline_commit, tmp), "this": ""}
        for n in a.sizes:
            for row in measure_size(n, a, tmp, codes):
                rows.append(row)
                print(f"{n:>8} {row['world']:>2} {row['backend']:>7} {row['code'][:8]:>8} {row['knn_s']:>8.2f} {row['components_s']:>8.3f} "
                      f"{row['reshard_s']:>9.3f} {row['total_s']:>8.2f} {row['raw_faiss_s']:>11.2f} "
                      f"{row['ratio']:>6.2f} {row['ratio_min']:>5.2f}-{row['ratio_max']:<5.2f} {row['merged']:>7} "
                      f"{row['knn_roofline']:>12.2f} {row['knn_roofline_min']:>5.2f}-{row['knn_roofline_max']:<5.2f}",
                      flush=True)
    meta = dict(host=host, date=date, command=" ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
                cpu_count=os.cpu_count(), torch=torch.__version__)
    write_json_atomic(out_path, {"meta": meta, "rows": rows}, indent=1, newline=False, make_parents=True)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
