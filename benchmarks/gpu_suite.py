"""One call that checks and measures a lent GPU: the `gpu` tests, then the figures, as JSON + markdown.

    python benchmarks/gpu_suite.py                          # on the GPU machine (< 8 min on one H100/H200)
    python benchmarks/gpu_suite.py --device cpu --small     # dry run on a CPU: every part, tiny sizes (~2 min)
    python benchmarks/gpu_suite.py --skip-tests --only train_step --out /tmp/suite.json

Needs only torch (the GPU machine cannot install packages): what needs DALI, faiss, numpy or pytest
is skipped when missing and the report says so. Parts, in order, each under its own time budget:

1. tests: `python -m pytest -m gpu tests/` (skipped without pytest).
2. train_step: iresnet50 112x112, bf16 autocast, backbone + Partial-FC head (100K classes, sample
   rate 0.1) + SGD + head.step on synthetic images already on the device, batch 128 and 256,
   channels-last on/off, torch.compile on/off (compile only at batch 128, channels-last: it takes
   minutes). images/s over a window synchronised once at each end; peak = max_memory_allocated.
3. head: PartialFCHead alone with the per-GPU shard of a 100M-identity run on 8 GPUs (12.5M
   classes), global batch 1024, sample rate 0.1, bf16 matmul: step time and peak memory.
4. fusion: run_fusion with the torch kNN backend on 390K and 4M proxies (D=512, 1 % planted
   duplicates): kNN, components and reshard times. A size whose predicted kNN time (from the
   previous size, quadratic) exceeds the time left is skipped, with the prediction stated.
Each peak sits beside `fftrain plan`'s prediction for the same configuration (without the assumed
CUDA-context overhead, which max_memory_allocated does not count). Targets (issue 16): >= 8,000 img/s
per H100-class GPU for iresnet50 bf16 training, the 12.5M-class shard within 80 GB, fusion of 390K
proxies under 2 s and of 4M under 60 s.

Writes `--out` (default benchmarks/out/gpu_suite_<host>_<date>.json) and the same path with `.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

from recordio_tools.files import write_text_atomic

TARGETS = {"train_images_per_s": 8000.0, "head_peak_gib": 80.0, "fusion_390k_s": 2.0, "fusion_4m_s": 60.0}


def _have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def sizes(small: bool) -> dict:
    if small:
        return {"backbone": "iresnet_tiny", "batches": [4], "train_classes": 2000, "steps": 2, "warmup": 1,
                "head_classes": 20000, "head_batch": 64, "fusion_sizes": [1000, 4000], "embedding": 512}
    return {"backbone": "iresnet50", "batches": [128, 256], "train_classes": 100_000, "steps": 20, "warmup": 5,
            "head_classes": 12_500_000, "head_batch": 1024, "fusion_sizes": [390_000, 4_000_000], "embedding": 512}


class Clock:
    """The suite's time budget: parts ask how much is left before they start something long."""

    def __init__(self, budget_s: float):
        self.start, self.budget = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ---- 1. the gpu tests ---------------------------------------------------------------------------------

def run_tests(args) -> dict:
    if not _have("pytest"):
        return {"skipped": "pytest is not installed here"}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", *args.pytest_args]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(30, int(args.tests_budget)))
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "seconds": round(time.perf_counter() - started, 1),
            "summary": tail[-1] if tail else "", "output_tail": "\n".join(tail[-40:])}


# ---- 2. the training step -----------------------------------------------------------------------------

def _train_parts(backbone: str, classes: int, embedding: int, device: torch.device, channels_last: bool):
    from fftrain.model.backbones import build_backbone
    from fftrain.head.margins import build_margin
    from fftrain.head.partial_fc import PartialFCHead

    model = build_backbone(backbone, embedding_size=embedding).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    head = PartialFCHead(classes, embedding, margin=build_margin("arcface", scale=64.0, margin=0.5), sample_rate=0.1,
                         device=device, compute_dtype=dtype)
    head.defer_checks = True  # as in the trainer: no host sync per step
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return model, head, optimizer


def measure_train_step(backbone: str, batch: int, classes: int, embedding: int, device: torch.device, *,
                       channels_last: bool, compile_model: bool, steps: int, warmup: int) -> dict:
    _reset_peak(device)
    model, head, optimizer = _train_parts(backbone, classes, embedding, device, channels_last)
    forward = torch.compile(model) if compile_model else model
    images = torch.randn(batch, 3, 112, 112, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            embeddings = forward(images)
        loss = head(embeddings.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        head.step(0.01)
        return loss

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warm_s = time.perf_counter() - started
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    _sync(device)
    elapsed = time.perf_counter() - t0
    head.raise_deferred_errors()
    row = {"backbone": backbone, "batch": batch, "classes": classes, "channels_last": channels_last,
           "compile": compile_model, "steps": steps, "ms_per_step": 1000 * elapsed / steps,
           "images_per_s": batch * steps / elapsed, "warmup_s": warm_s, "loss": float(loss),
           "peak_gib": _peak_gib(device)}
    del model, head, optimizer, forward
    return row


def predicted_train_gib(backbone: str, batch: int, classes: int, embedding: int, dtype: str) -> float:
    from fftrain.training.capacity import PlanInput, backbone_parts, head_parts

    inp = PlanInput(classes=classes, gpus=1, batch=batch, embedding=embedding, sample_rate=0.1, dtype=dtype,
                    backbone=backbone, device="cuda", overhead_gib=0.0)
    return (sum(backbone_parts(inp).values()) + sum(head_parts(inp).values())) / 2**30


def run_train_steps(args, s: dict, device: torch.device, clock: Clock) -> list[dict]:
    dtype = "bf16" if device.type == "cuda" else "fp32"
    configs = [(b, cl, False) for b in s["batches"] for cl in (True, False)]
    if not args.no_compile:
        configs.append((s["batches"][0], True, True))
    rows = []
    for batch, channels_last, compile_model in configs:
        if clock.left() < args.reserve_s:
            rows.append({"batch": batch, "channels_last": channels_last, "compile": compile_model,
                         "skipped": "suite time budget spent"})
            continue
        try:
            row = measure_train_step(s["backbone"], batch, s["train_classes"], s["embedding"], device,
                                     channels_last=channels_last, compile_model=compile_model, steps=s["steps"],
                                     warmup=s["warmup"])
        except Exception as e:  # a failed configuration is a result too (e.g. compile without a compiler)
            row = {"batch": batch, "channels_last": channels_last, "compile": compile_model,
                   "error": f"{type(e).__name__}: {e}"[:500]}
        row["predicted_gib"] = predicted_train_gib(s["backbone"], batch, s["train_classes"], s["embedding"], dtype)
        rows.append(row)
        print(f"train_step {row}", flush=True)
    return rows


# ---- 3. the head alone at the 100M/8 shard ------------------------------------------------------------

def run_head(s: dict, device: torch.device, steps: int = 5) -> dict:
    from fftrain.head.margins import build_margin
    from fftrain.head.partial_fc import PartialFCHead
    from fftrain.training.capacity import PlanInput, head_parts

    classes, batch, d = s["head_classes"], s["head_batch"], s["embedding"]
    predicted = sum(head_parts(PlanInput(classes=classes, gpus=1, batch=batch, embedding=d, sample_rate=0.1,
                                         device="cuda")).values()) / 2**30
    row = {"classes": classes, "global_batch": batch, "sample_rate": 0.1, "predicted_gib": predicted}
    _reset_peak(device)
    try:
        head = PartialFCHead(classes, d, margin=build_margin("arcface", scale=64.0, margin=0.5), sample_rate=0.1,
                             device=device)
        head.defer_checks = True
        x = torch.randn(batch, d, device=device, requires_grad=True)
        labels = torch.randint(0, classes, (batch,), device=device)
        for i in range(steps + 1):
            if i == 1:
                _sync(device)
                t0 = time.perf_counter()
            loss = head(x, labels)
            loss.backward()
            head.step(0.01)
        _sync(device)
        row.update(ms_per_step=1000 * (time.perf_counter() - t0) / steps, peak_gib=_peak_gib(device), loss=float(loss))
        del head, x
    except torch.cuda.OutOfMemoryError as e:
        row["error"] = f"out of memory: {str(e)[:300]}"
    print(f"head {row}", flush=True)
    return row


# ---- 4. fusion with the torch kNN -----------------------------------------------------------------------

def _planted_proxies(n: int, d: int, device: torch.device, seed: int = 0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    datasets = torch.arange(n) % 3
    w = torch.empty(n, d, device=device)
    for a in range(0, n, 1 << 20):  # generated in blocks: a [4M, 512] randn on the CPU would take minutes
        b = min(n, a + (1 << 20))
        w[a:b] = torch.randn(b - a, d, generator=gen).to(device)
    dup = torch.randperm(n, generator=gen)[: max(1, n // 100)]
    partner = (dup + 1) % n  # a neighbouring class of the next dataset
    w[partner.to(device)] = w[dup.to(device)] + 0.05 * torch.randn(len(dup), d, generator=gen).to(device)
    return w, datasets


def run_fusion_sizes(s: dict, device: torch.device, clock: Clock, reserve_s: float) -> list[dict]:
    if not _have("numpy"):
        return [{"skipped": "numpy is not installed here (fusion's components step uses it)"}]
    from fftrain.config import FusionConfig
    from fftrain.fusion import run_fusion
    from fftrain.training.capacity import PlanInput, fusion_parts

    rows, last = [], None
    for n in s["fusion_sizes"]:
        predicted_s = None if last is None else last["knn_s"] * (n / last["n"]) ** 2
        predicted_gib = sum(fusion_parts(PlanInput(classes=n, gpus=1, embedding=s["embedding"],
                                                   device="cuda")).values()) / 2**30
        row = {"n": n, "dim": s["embedding"], "backend": "torch", "predicted_gib": predicted_gib}
        if predicted_s is not None and predicted_s > clock.left() - reserve_s:
            row["skipped"] = (f"predicted kNN {predicted_s:.0f} s (quadratic from {last['n']:,} proxies) exceeds the "
                              f"{clock.left() - reserve_s:.0f} s left")
            rows.append(row)
            continue
        _reset_peak(device)
        try:
            w, datasets = _planted_proxies(n, s["embedding"], device)
            momentum = torch.zeros_like(w)
            _sync(device)
            t0 = time.perf_counter()
            result = run_fusion(w, [momentum], class_dataset=datasets, label_map=None, source_info=None,
                                config=FusionConfig(t1=0.7, knn_k=10, backend="torch"))
            _sync(device)
            st = result.stats
            row.update(total_s=time.perf_counter() - t0, knn_s=st["knn_s"], components_s=st["components_s"],
                       reshard_s=st["reshard_s"], merged=st["num_components_merged"],
                       knn_backend=st.get("knn_backend"), peak_gib=_peak_gib(device))
            last = row
            del w, momentum, result
        except torch.cuda.OutOfMemoryError as e:
            row["error"] = f"out of memory: {str(e)[:300]}"
        rows.append(row)
        print(f"fusion {row}", flush=True)
    return rows


# ---- report ---------------------------------------------------------------------------------------------

def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU suite: {m.get('gpu', 'no GPU')} ({m['host']}, {report['date']}, torch {m['torch']})", "",
             f"Command: `{report['command']}`; device {report['device']}; {report['seconds']:.0f} s in all.", ""]
    tests = report["tests"]
    lines += ["## gpu tests", "", tests.get("skipped") or f"`{tests['command']}`: {tests['summary']}", ""]
    lines += ["## training step (backbone + head + optimizer, synthetic input on the device)", "",
              "| backbone | batch | channels-last | compile | images/s | ms/step | peak GiB | planner GiB |",
              "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in report["train_step"]:
        note = r.get("skipped") or r.get("error")
        lines.append(f"| {r.get('backbone', '')} | {r['batch']} | {r['channels_last']} | {r['compile']} | "
                     + (f"{note} | | | |" if note else
                        f"{r['images_per_s']:.0f} | {r['ms_per_step']:.1f} | {_fmt(r['peak_gib'], '.2f')} | "
                        f"{r['predicted_gib']:.2f} |"))
    h = report["head"]
    lines += ["", "## Partial-FC head alone", "",
              "| classes | global batch | sample rate | ms/step | peak GiB | planner GiB |", "|---:|---:|---:|---:|---:|---:|",
              f"| {h['classes']:,} | {h['global_batch']} | {h['sample_rate']} | "
              + (f"{h['error']} | | {h['predicted_gib']:.2f} |" if "error" in h else
                 f"{h['ms_per_step']:.1f} | {_fmt(h['peak_gib'], '.2f')} | {h['predicted_gib']:.2f} |")]
    lines += ["", "## fusion, torch kNN backend", "",
              "| proxies | kNN s | components s | reshard s | total s | merged | peak GiB | planner GiB |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["fusion"]:
        note = r.get("skipped") or r.get("error")
        if "n" not in r:
            lines.append(f"| {note} | | | | | | | |")
        elif note:
            lines.append(f"| {r['n']:,} | {note} | | | | | | {r['predicted_gib']:.2f} |")
        else:
            lines.append(f"| {r['n']:,} | {r['knn_s']:.2f} | {r['components_s']:.2f} | {r['reshard_s']:.2f} | "
                         f"{r['total_s']:.2f} | {r['merged']} | {_fmt(r['peak_gib'], '.2f')} | {r['predicted_gib']:.2f} |")
    lines += ["", "Targets: " + ", ".join(f"{k} {v:g}" for k, v in TARGETS.items()),
              "Skipped here: " + ("; ".join(report["skipped"]) or "nothing"), ""]
    return "\n".join(lines)


def machine() -> dict:
    info = {"host": socket.gethostname(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cores": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--small", action="store_true", help="tiny sizes (the CPU dry run)")
    p.add_argument("--budget-s", type=float, default=450.0, help="the whole suite's time budget (default 7.5 min)")
    p.add_argument("--reserve-s", type=float, default=30.0, help="no new measurement starts with less than this left")
    p.add_argument("--tests-budget", type=float, default=120.0, help="seconds at most for the gpu tests")
    p.add_argument("--pytest-args", nargs="*", default=["tests/"], help="what pytest collects (default tests/)")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile configuration")
    p.add_argument("--only", nargs="*", choices=("train_step", "head", "fusion"), default=None)
    p.add_argument("--out", default=None, help="JSON path; the markdown table goes beside it (.md)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: --device cuda but torch.cuda.is_available() is False (use --device cpu --small)",
              file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    clock, s = Clock(args.budget_s), sizes(args.small)
    only = set(args.only or ("train_step", "head", "fusion"))
    skipped = [f"{name}: not installed, so nothing of it is measured" for name in ("nvidia.dali", "faiss")
               if not _have(name)]
    skipped.append("DALI input pipeline and faiss kNN: not part of this suite (their wheels cannot travel to the "
                   "GPU machine); the training step feeds synthetic images from device memory")
    tests = {"skipped": "--skip-tests"} if args.skip_tests else run_tests(args)
    print(f"tests: {tests.get('skipped') or tests['summary']}", flush=True)
    report = {"date": datetime.date.today().isoformat(), "command": " ".join(["gpu_suite.py", *(argv or sys.argv[1:])]),
              "device": str(device), "machine": machine(), "sizes": s, "targets": TARGETS, "tests": tests,
              "train_step": run_train_steps(args, s, device, clock) if "train_step" in only else [],
              "head": run_head(s, device) if "head" in only and clock.left() > args.reserve_s else
              {"classes": s["head_classes"], "global_batch": s["head_batch"], "sample_rate": 0.1, "predicted_gib": 0.0,
               "error": "not run (--only or time budget)"},
              "fusion": run_fusion_sizes(s, device, clock, args.reserve_s) if "fusion" in only else [],
              "skipped": skipped}
    report["seconds"] = args.budget_s - clock.left()
    out = os.path.abspath(args.out or os.path.join(REPO, "benchmarks", "out",
                                                   f"gpu_suite_{socket.gethostname()}_{report['date']}.json"))
    for path, text in ((out, json.dumps(report, indent=1, default=str)), (os.path.splitext(out)[0] + ".md", markdown(report))):
        write_text_atomic(path, text, make_parents=True)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
