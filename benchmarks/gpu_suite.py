"""One command that measures a lent GPU, every figure beside a baseline run in the same process, as JSON + markdown.

    python benchmarks/gpu_suite.py --out $OUT/gpu_suite.json          # the GPU machine (about 8 min on one H100/H200)
    python benchmarks/gpu_suite.py --device cpu --small               # CPU dry run: every part, tiny sizes
    python benchmarks/gpu_suite.py --only fusion --out /tmp/suite.json

Needs torch, numpy and scipy only (the GPU machine has no package registry); pytest is used when present.
Each part runs in its own child process under its own time limit (a crash, an out-of-memory or a hang in one
part cannot stop the next one) and appends its rows to the report as it measures them; the JSON and the
markdown are rewritten after every row and every part, so a run cut short keeps what it measured.

Parts, in order (each baseline alternates with what it is the baseline of, `--rounds` rounds, and every
ratio is the median over rounds of the per-round ratio):
1. train_step: iresnet50 112x112, bf16 autocast, channels-last, batch 128, synthetic images on the device,
   SGD on the backbone; the head is fftrain's PartialFCHead (100K classes, sample rate 0.1, deferred label
   checks, head.step) against a dense FC of the same classes (nn.Parameter, normalised linear, the same
   ArcFace margin, F.cross_entropy, SGD) on the same backbone; eager, then torch.compile of the backbone.
   Then host syncs per steady partial_fc step: counted with torch.cuda.set_sync_debug_mode("warn") and
   checked with "error". Peak memory of the partial_fc step beside `fftrain plan`'s prediction.
2. head: PartialFCHead alone at the per-GPU shard of 100M classes on 8 GPUs (12.5M classes), global batch
   1024, sample rate 0.1, fp32 and bf16 storage, against the dense FC at the largest class count that fits
   (halved from 12.5M until one step runs), the PartialFCHead measured at that count too (same-size ratio).
3. fusion: kNN over 390K and 4M planted proxies (D=512, 1 % cross-dataset duplicates, k=10, T1=0.7):
   `run_fusion` (torch backend) in exact fp32 and TF32 against a plain torch matmul + topk all-pairs search
   in the same precision, and the plain search in bf16; the TF32/bf16 candidates above T1 - margin are
   re-scored in exact fp32, and every merge set (the connected components of the pairs above T1) is compared
   with the exact fp32 one. A measurement whose predicted time (quadratic from the smaller size) does not
   fit in the time left is skipped with the prediction stated.
4. tests: `pytest -m gpu` on the GPU test files (skipped without pytest; the part's time limit applies).
Targets (issue 26): >= 8,000 img/s per H100-class GPU for iresnet50 bf16 training, the 12.5M-class shard
fitting with bf16 storage, fusion of 390K proxies under 2 s on one GPU.

Writes `--out` (default benchmarks/out/gpu_suite_<host>_<date>.json) and the same path with `.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

from recordio_tools.files import write_text_atomic  # noqa: E402  (standard library only)

PARTS = ("train_step", "head", "fusion", "tests")
TARGETS = {"train_images_per_s": 8000.0, "head_12.5M_bf16_fits_gib": 80.0, "fusion_390k_s": 2.0}
GPU_TEST_FILES = ["tests/unit/test_gpu_paths.py", "tests/e2e/test_step_host_syncs.py",
                  "tests/distributed/test_partial_fc.py"]
# seconds each part may take at most (the suite's budget caps them further)
# seconds each part may take at most, at the default --budget-s (a larger or smaller budget scales them)
PART_BUDGET_S = {"train_step": 240.0, "head": 90.0, "fusion": 150.0, "tests": 90.0}
SMALL_PART_BUDGET_S = {"train_step": 40.0, "head": 20.0, "fusion": 25.0, "tests": 25.0}
DEFAULT_BUDGET_S, SMALL_BUDGET_S = 480.0, 110.0


def sizes(small: bool) -> dict:
    if small:
        return {"backbone": "iresnet_tiny", "batch": 4, "train_classes": 2000, "steps": 2, "warmup": 1,
                "head_classes": 20000, "head_batch": 64, "head_steps": 2, "fusion_sizes": [1000, 4000],
                "embedding": 512, "knn_block_elems": 1 << 20, "dense_max_gib": 0.1}
    return {"backbone": "iresnet50", "batch": 128, "train_classes": 100_000, "steps": 10, "warmup": 3,
            "head_classes": 12_500_000, "head_batch": 1024, "head_steps": 5, "fusion_sizes": [390_000, 4_000_000],
            "embedding": 512, "knn_block_elems": 1 << 30, "dense_max_gib": None}


# ---- shared pieces ------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _timed(step, device: torch.device, steps: int) -> float:
    """Seconds per step over a window synchronised once at each end."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerators, denominators))


class DenseFC(torch.nn.Module):
    """The baseline head: every class's proxy as one nn.Parameter, normalised linear, the same margin,
    F.cross_entropy; trained by torch.optim.SGD."""

    def __init__(self, classes: int, embedding: int, margin, device: torch.device):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(classes, embedding, device=device) * 0.01)
        self.margin = margin

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        cos = F.linear(F.normalize(x), F.normalize(self.weight)).float()
        return F.cross_entropy(self.margin(cos, labels), labels)


def _margin():
    from fftrain.head.margins import build_margin

    return build_margin("arcface", scale=64.0, margin=0.5)


def _plan_input(**kw):
    from fftrain.capacity import PlanInput

    return PlanInput(gpus=1, device="cuda", overhead_gib=0.0, **kw)


# ---- 1. the training step -----------------------------------------------------------------------------

def run_train_step(args, s: dict, device: torch.device, emit) -> None:
    from fftrain.head.partial_fc import PartialFCHead
    from fftrain.model.backbones import build_backbone
    from fftrain.capacity import backbone_parts, head_parts

    cuda = device.type == "cuda"
    batch, classes, d = s["batch"], s["train_classes"], s["embedding"]
    dtype = torch.bfloat16 if cuda else torch.float32
    plan = _plan_input(classes=classes, batch=batch, embedding=d, backbone=s["backbone"],
                       dtype="bf16" if cuda else "fp32")
    predicted_gib = (sum(backbone_parts(plan).values()) + sum(head_parts(plan).values())) / 2**30
    _reset_peak(device)
    model = build_backbone(s["backbone"], embedding_size=d).to(device).to(memory_format=torch.channels_last)
    backbone_opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    head = PartialFCHead(classes, d, margin=_margin(), sample_rate=0.1, device=device, compute_dtype=dtype)
    head.defer_checks = True  # as in the trainer: the label check stays on the device
    images = torch.randn(batch, 3, 112, 112, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    forward = model

    def pfc_step():
        with autocast:
            embeddings = forward(images)
        loss = head(embeddings.float(), labels)
        backbone_opt.zero_grad(set_to_none=True)
        loss.backward()
        backbone_opt.step()
        head.step(0.01)

    for _ in range(s["warmup"]):
        pfc_step()
    _sync(device)
    pfc_peak = _peak_gib(device)
    head.raise_deferred_errors()
    dense = DenseFC(classes, d, _margin(), device)
    dense_opt = torch.optim.SGD(dense.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def dense_step():
        with autocast:
            embeddings = forward(images)
            loss = dense(embeddings.float(), labels)
        backbone_opt.zero_grad(set_to_none=True)
        dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        backbone_opt.step()
        dense_opt.step()

    modes = [False, True] if args.compile_model else [False]
    for compiled in modes:
        forward = torch.compile(model) if compiled else model
        started = time.perf_counter()
        for _ in range(s["warmup"]):
            pfc_step()
            dense_step()
        _sync(device)
        warm_s = time.perf_counter() - started
        times = {"partial_fc": [], "dense": []}
        for _ in range(args.rounds):  # alternating windows: a change of clock or load hits both alike
            times["partial_fc"].append(_timed(pfc_step, device, s["steps"]))
            times["dense"].append(_timed(dense_step, device, s["steps"]))
        head.raise_deferred_errors()
        for variant, per_step in times.items():
            row = {"backbone": s["backbone"], "batch": batch, "classes": classes, "head": variant,
                   "channels_last": True, "compile": compiled, "dtype": str(dtype).removeprefix("torch."),
                   "images_per_s": batch / statistics.median(per_step),
                   "ms_per_step": 1000 * statistics.median(per_step), "rounds": args.rounds,
                   "warmup_s": warm_s,
                   "vs_dense": _median_ratio(times["dense"], per_step)}  # img/s ratio = inverse time ratio
            if variant == "partial_fc" and not compiled:
                row.update(peak_gib=pfc_peak, predicted_gib=predicted_gib)
            emit(row)
    forward = model
    emit(count_host_syncs(pfc_step, device))


def count_host_syncs(step, device: torch.device) -> dict:
    """Host syncs of one steady step: counted under sync debug mode "warn", then checked under "error"."""
    row = {"kind": "host_syncs", "head": "partial_fc"}
    if device.type != "cuda":
        row["skipped"] = "needs CUDA (tests/e2e/test_step_host_syncs.py counts them on the CPU)"
        return row
    step()
    torch.cuda.synchronize(device)
    previous = torch.cuda.get_sync_debug_mode()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            step()
            torch.cuda.set_sync_debug_mode(previous)
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
        row.update(syncs_per_step=len(syncs), first=syncs[:3])
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
            row["error_mode"] = "no error"
        except RuntimeError as e:
            row["error_mode"] = str(e).splitlines()[0][:300]
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return row


# ---- 2. the head alone at the 100M/8 shard ------------------------------------------------------------

def _head_step(kind: str, classes: int, storage: str, s: dict, device: torch.device):
    """(step function, objects to free) for one head configuration."""
    from fftrain.head.partial_fc import PartialFCHead

    batch, d = s["head_batch"], s["embedding"]
    x = torch.randn(batch, d, device=device, requires_grad=True)
    labels = torch.randint(0, classes, (batch,), device=device)
    if kind == "dense":
        dense = DenseFC(classes, d, _margin(), device)
        opt = torch.optim.SGD(dense.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

        def step():
            with autocast:
                loss = dense(x, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step, [dense, opt]
    head = PartialFCHead(classes, d, margin=_margin(), sample_rate=0.1, device=device,
                         dtype=torch.bfloat16 if storage == "bf16" else torch.float32)
    head.defer_checks = True

    def step():
        head(x, labels).backward()
        head.step(0.01)
    return step, [head]


def _dense_bytes(classes: int, d: int, batch: int) -> int:
    """Weight, its gradient and momentum, the normalised and bf16 copies, about four [B, C] fp32 tensors."""
    return classes * d * (4 * 4 + 2) + 4 * 4 * batch * classes


def _measure_head(kind, classes, storage, s, device) -> dict:
    _reset_peak(device)
    step, keep = _head_step(kind, classes, storage, s, device)
    try:
        step()
        seconds = _timed(step, device, s["head_steps"])
        return {"ms_per_step": 1000 * seconds, "peak_gib": _peak_gib(device)}
    finally:
        del step, keep
        if device.type == "cuda":
            torch.cuda.empty_cache()


def largest_dense(s: dict, device: torch.device, emit) -> int | None:
    classes = s["head_classes"]
    while classes >= 1000:
        if device.type != "cuda":  # no out-of-memory error on the CPU: its cap decides
            if _dense_bytes(classes, s["embedding"], s["head_batch"]) / 2**30 <= s["dense_max_gib"]:
                return classes
        else:
            try:
                _measure_head("dense", classes, "fp32", s, device)
                return classes
            except Exception as e:
                if not _is_oom(e):
                    raise
        emit({"kind": "dense_search", "classes": classes, "fits": False})
        classes //= 2
    return None


def run_head(args, s: dict, device: torch.device, emit) -> None:
    from fftrain.capacity import head_parts

    big = s["head_classes"]
    dense_classes = largest_dense(s, device, emit)
    configs = [("partial_fc", big, "fp32"), ("partial_fc", big, "bf16")]
    if dense_classes is not None:
        configs += [("dense", dense_classes, "fp32"), ("partial_fc", dense_classes, "fp32"),
                    ("partial_fc", dense_classes, "bf16")]
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    peaks: dict[tuple, float | None] = {}
    for _ in range(args.rounds):  # one configuration at a time (they do not fit together), alternating
        for config in configs:
            kind, classes, storage = config
            try:
                measured = _measure_head(kind, classes, storage, s, device)
            except Exception as e:
                if not _is_oom(e):
                    raise
                emit({"head": kind, "classes": classes, "storage": storage, "error": f"out of memory: {str(e)[:200]}"})
                continue
            times[config].append(measured["ms_per_step"])
            peaks[config] = measured["peak_gib"]
            emit({"kind": "round", "head": kind, "classes": classes, "storage": storage, **measured})
    dense_ms = times.get(("dense", dense_classes, "fp32"), [])
    for config in configs:
        kind, classes, storage = config
        if not times[config]:
            continue
        row = {"kind": "summary", "head": kind, "classes": classes, "storage": storage, "global_batch": s["head_batch"],
               "sample_rate": 0.1 if kind == "partial_fc" else 1.0, "rounds": len(times[config]),
               "ms_per_step": statistics.median(times[config]), "peak_gib": peaks[config],
               "dense_largest_classes": dense_classes}
        if kind == "partial_fc":
            row["predicted_gib"] = sum(head_parts(_plan_input(classes=classes, batch=s["head_batch"],
                                                              embedding=s["embedding"], fc_storage=storage)
                                                  ).values()) / 2**30
        if dense_ms and len(dense_ms) == len(times[config]):
            row["time_vs_dense"] = _median_ratio(times[config], dense_ms)
        emit(row)


# ---- 3. fusion's kNN against a plain all-pairs search ---------------------------------------------------

def planted_proxies(n: int, d: int, device: torch.device, seed: int = 0):
    """[n, d] proxies (three datasets by class id mod 3), 1 % of them duplicated into the next class."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    datasets = torch.arange(n) % 3
    w = torch.empty(n, d, device=device)
    for a in range(0, n, 1 << 20):  # generated in blocks: a [4M, 512] randn on the CPU would take minutes
        b = min(n, a + (1 << 20))
        w[a:b] = torch.randn(b - a, d, generator=gen).to(device)
    dup = torch.randperm(n, generator=gen)[: max(1, n // 100)]
    partner = (dup + 1) % n
    w[partner.to(device)] = w[dup.to(device)] + 0.05 * torch.randn(len(dup), d, generator=gen).to(device)
    return w, datasets


@contextlib.contextmanager
def matmul_precision(precision: str):
    """fp32: exact (TF32 off); tf32: TF32 tensor cores for fp32 matmuls; bf16: the caller casts."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


RESCORE_MARGIN = {"fp32": 0.0, "tf32": 0.01, "bf16": 0.03}


def plain_knn_pairs(w: torch.Tensor, datasets: torch.Tensor, k: int, t1: float, precision: str,
                    block_elems: int) -> torch.Tensor:
    """The baseline: normalise, all-pairs matmul + topk in blocks of queries, in `precision`; cross-dataset
    candidates above T1 - margin re-scored in exact fp32; pairs [P, 2] (i < j) above T1."""
    import torch.nn.functional as F

    n = w.shape[0]
    unit = F.normalize(w, dim=1)
    keys = unit.to(torch.bfloat16) if precision == "bf16" else unit
    chunk = max(1, block_elems // n)
    ds = datasets.to(w.device)
    found = []
    with matmul_precision(precision):
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            scores = keys[a:b] @ keys.T
            scores.diagonal(offset=a).fill_(float("-inf"))
            value, index = scores.topk(k, dim=1)
            rows = torch.arange(a, b, device=w.device).unsqueeze(1).expand_as(index)
            keep = (value.float() > t1 - RESCORE_MARGIN[precision]) & (ds[rows] != ds[index])
            found.append(torch.stack([rows[keep], index[keep]], 1))
    pairs = torch.cat(found)
    if precision != "fp32":  # exact fp32 re-score of the candidates near T1
        exact = (unit[pairs[:, 0]] * unit[pairs[:, 1]]).sum(1)
        pairs = pairs[exact > t1]
    return torch.unique(torch.sort(pairs, dim=1).values, dim=0)


def partition_of_pairs(pairs: torch.Tensor, n: int):
    """Component label of every class (numpy), from merge pairs (scipy's connected components)."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    p = pairs.cpu().numpy()
    graph = coo_matrix((np.ones(len(p)), (p[:, 0], p[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def same_partition(a, b) -> bool:
    """Whether two labelings group the classes alike (whatever the ids)."""
    import numpy as np

    if len(a) != len(b):
        return False
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def _run_fusion(w, datasets, precision: str, device: torch.device) -> dict:
    from fftrain.config import FusionConfig
    from fftrain.fusion import run_fusion

    weight, momentum = w.clone(), torch.zeros_like(w)  # fusion may rewrite its inputs: the proxies stay intact
    shard_bytes = 2 * weight.numel() * weight.element_size()
    _sync(device)
    _reset_peak(device)
    before = _allocated(device)
    t0 = time.perf_counter()
    with matmul_precision(precision):
        result = run_fusion(weight, [momentum], class_dataset=datasets, label_map=None, source_info=None,
                            config=FusionConfig(t1=0.7, knn_k=10, backend="torch"))
    _sync(device)
    total = time.perf_counter() - t0
    peak = _peak_gib(device)
    st = result.stats
    out = {"seconds": st["knn_s"], "total_s": total, "components_s": st["components_s"],
           "reshard_s": st["reshard_s"], "merged": st["num_components_merged"],
           "labels": result.new_label_map.cpu().numpy(),
           # what the planner models: the shard (weight + momentum) plus fusion's working set
           "peak_gib": None if peak is None else peak - before / 2**30 + shard_bytes / 2**30}
    del weight, momentum, result
    return out


def _run_plain(w, datasets, precision: str, s: dict, device: torch.device) -> dict:
    _sync(device)
    t0 = time.perf_counter()
    pairs = plain_knn_pairs(w, datasets, 10, 0.7, precision, s["knn_block_elems"])
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "pairs": len(pairs), "labels": partition_of_pairs(pairs, w.shape[0])}


FUSION_VARIANTS = (("plain", "fp32"), ("fusion", "fp32"), ("plain", "tf32"), ("fusion", "tf32"), ("plain", "bf16"))


def run_fusion_sizes(args, s: dict, device: torch.device, emit, deadline: float) -> None:
    from fftrain.capacity import fusion_parts

    last: dict[tuple, tuple[int, float]] = {}
    for n in s["fusion_sizes"]:
        w, datasets = planted_proxies(n, s["embedding"], device)
        predicted_gib = sum(fusion_parts(_plan_input(classes=n, embedding=s["embedding"])).values()) / 2**30
        seconds: dict[tuple, list[float]] = {}
        reference = None
        for round_ in range(args.rounds):
            for variant in FUSION_VARIANTS:
                if variant in last:
                    prev_n, prev_s = last[variant]
                    predicted_s = prev_s * (n / prev_n) ** 2
                    if predicted_s > deadline - time.perf_counter() - args.reserve_s:
                        if round_ == 0:
                            emit({"n": n, "method": variant[0], "precision": variant[1], "skipped":
                                  f"predicted {predicted_s:.0f} s (quadratic from {prev_n:,}) exceeds the "
                                  f"{deadline - time.perf_counter() - args.reserve_s:.0f} s left"})
                        continue
                method, precision = variant
                out = (_run_fusion(w, datasets, precision, device) if method == "fusion"
                       else _run_plain(w, datasets, precision, s, device))
                seconds.setdefault(variant, []).append(out["seconds"])
                if variant == ("plain", "fp32") and reference is None:
                    reference = out["labels"]
                if round_ == 0:
                    row = {"n": n, "dim": s["embedding"], "method": method, "precision": precision,
                           "knn_s": out["seconds"], "merge_set_equals_exact_fp32":
                               None if reference is None else same_partition(out["labels"], reference)}
                    if method == "fusion":
                        row.update(total_s=out["total_s"], components_s=out["components_s"],
                                   reshard_s=out["reshard_s"], merged=out["merged"], peak_gib=out["peak_gib"],
                                   predicted_gib=predicted_gib if precision == "fp32" else None)
                    else:
                        row["pairs_above_t1"] = out["pairs"]
                    emit(row)
        for (method, precision), values in seconds.items():
            last[method, precision] = (n, statistics.median(values))
            baseline = seconds.get(("plain", precision)) or seconds.get(("plain", "fp32"))
            row = {"n": n, "kind": "summary", "method": method, "precision": precision, "rounds": len(values),
                   "knn_s": statistics.median(values)}
            if baseline and len(baseline) == len(values):
                row["vs_plain_same_precision" if ("plain", precision) in seconds else "vs_plain_fp32"] = \
                    _median_ratio(values, baseline)
            if ("plain", "fp32") in seconds and len(seconds["plain", "fp32"]) == len(values):
                row["vs_plain_fp32"] = _median_ratio(values, seconds["plain", "fp32"])
            emit(row)
        del w


# ---- 4. the gpu tests -----------------------------------------------------------------------------------

def run_tests(args, budget_s: float) -> dict:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"status": "skipped: pytest is not installed here", "rows": []}
    # -o addopts= : pytest.ini's --timeout needs the pytest-timeout plugin, which may be missing there
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           *args.pytest_args]
    code, seconds, tail = _run_child(cmd, budget_s)
    summary = tail.strip().splitlines()[-1] if tail.strip() else ""
    return {"status": "timed out" if code is None else f"exit {code}", "seconds": seconds,
            "command": " ".join(cmd[1:]), "rows": [{"summary": summary}], "log_tail": tail[-4000:]}


# ---- the parent: one child process per part -------------------------------------------------------------

def _run_child(cmd: list[str], timeout_s: float) -> tuple[int | None, float, str]:
    """(exit code or None when killed at the time limit, seconds, output tail)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                    [REPO, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
        try:
            code = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: pytest's own children too
            proc.wait()
            code = None
        log.seek(0)
        tail = log.read()[-8000:]
    return code, round(time.perf_counter() - started, 1), tail


def run_part_in_child(name: str, argv: list[str], budget_s: float, part_path: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--part", name, "--part-out", part_path,
           "--part-budget-s", str(budget_s)]
    code, seconds, tail = _run_child(cmd, budget_s)
    rows = json.loads(open(part_path).read())["rows"] if os.path.exists(part_path) else []
    status = ("ok" if code == 0 else f"timed out after {budget_s:.0f} s" if code is None else f"failed (exit {code})")
    return {"status": status, "seconds": seconds, "rows": rows, "log_tail": tail[-4000:] if code != 0 else ""}


def run_one_part(args, device: torch.device) -> int:
    """In the child: run part `args.part`, rewriting `args.part_out` after every row."""
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        write_text_atomic(args.part_out, json.dumps({"rows": rows}, default=str), make_parents=True)
        print(f"{args.part} {row}", flush=True)

    started = time.perf_counter()
    s = sizes(args.small)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.part == "train_step":
        run_train_step(args, s, device, emit)
    elif args.part == "head":
        run_head(args, s, device, emit)
    elif args.part == "fusion":
        run_fusion_sizes(args, s, device, emit, deadline=started + args.part_budget_s)
    write_text_atomic(args.part_out, json.dumps({"rows": rows}, default=str), make_parents=True)
    return 0


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v).replace("|", "/").replace("\n", " ")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU suite: {m.get('gpu', 'no GPU')} ({m['host']}, {report['date']}, torch {m['torch']}, "
             f"driver {m.get('driver', '-')})", "",
             f"Command: `{report['command']}`; device {report['device']}; {report.get('seconds', 0):.0f} s so far.", ""]
    for name in PARTS:
        part = report["parts"].get(name)
        if part is None:
            continue
        lines += [f"## {name}: {part['status']} ({part.get('seconds', 0)} s)", ""]
        rows = part["rows"]
        keys = list(dict.fromkeys(k for r in rows for k in r if k != "first"))
        if rows:
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
        if part.get("log_tail"):
            lines += ["", "```", *part["log_tail"].strip().splitlines()[-15:], "```"]
        lines.append("")
    lines += ["Targets: " + ", ".join(f"{k} {v:g}" for k, v in TARGETS.items()), ""]
    return "\n".join(lines)


def machine() -> dict:
    info = {"host": socket.gethostname(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cores": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        with contextlib.suppress(Exception):
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--small", action="store_true", help="tiny sizes (the CPU dry run)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="the whole suite's time budget; each part's limit scales with it (default 480 s; 110 s "
                        "with --small)")
    p.add_argument("--reserve-s", type=float, default=10.0, help="no new measurement starts with less than this left")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating rounds per baseline (default 3; 2 with --small)")
    p.add_argument("--pytest-args", nargs="*", default=GPU_TEST_FILES, help="what pytest collects")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--compile", dest="compile_model", action="store_true", default=None,
                   help="also measure torch.compile of the backbone (default: on CUDA only)")
    p.add_argument("--no-compile", dest="compile_model", action="store_false")
    p.add_argument("--only", nargs="*", choices=PARTS, default=None)
    p.add_argument("--out", default=None, help="JSON path; the markdown table goes beside it (.md)")
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # the child process of one part
    p.add_argument("--part-out", help=argparse.SUPPRESS)
    p.add_argument("--part-budget-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compile_model is None:
        args.compile_model = args.device == "cuda"
    if args.rounds is None:
        args.rounds = 2 if args.small else 3
    if args.budget_s is None:
        args.budget_s = SMALL_BUDGET_S if args.small else DEFAULT_BUDGET_S
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: --device cuda but torch.cuda.is_available() is False (use --device cpu --small)",
              file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if args.part:
        return run_one_part(args, device)
    started = time.perf_counter()
    date = datetime.date.today().isoformat()
    out = os.path.abspath(args.out or os.path.join(REPO, "benchmarks", "out",
                                                   f"gpu_suite_{socket.gethostname()}_{date}.json"))
    report = {"date": date, "command": " ".join(["python benchmarks/gpu_suite.py", *argv]), "device": str(device),
              "machine": machine(), "sizes": sizes(args.small), "targets": TARGETS, "parts": {}}

    def write() -> None:
        report["seconds"] = time.perf_counter() - started
        write_text_atomic(out, json.dumps(report, indent=1, default=str), make_parents=True)
        write_text_atomic(os.path.splitext(out)[0] + ".md", markdown(report), make_parents=True)

    budgets, default = (SMALL_PART_BUDGET_S, SMALL_BUDGET_S) if args.small else (PART_BUDGET_S, DEFAULT_BUDGET_S)
    scale = args.budget_s / default
    child_argv = [a for a in argv if a != "--skip-tests"]
    only = [p for p in PARTS if p in (args.only or PARTS) and not (p == "tests" and args.skip_tests)]
    with tempfile.TemporaryDirectory() as tmp:
        for name in only:
            left = args.budget_s - (time.perf_counter() - started)
            budget = min(budgets[name] * scale, left)
            if budget < args.reserve_s:
                report["parts"][name] = {"status": f"skipped: {left:.0f} s of the suite's budget left", "rows": []}
            elif name == "tests":
                report["parts"][name] = run_tests(args, budget)
            else:
                report["parts"][name] = run_part_in_child(name, child_argv, budget, os.path.join(tmp, f"{name}.json"))
            print(f"{name}: {report['parts'][name]['status']}", flush=True)
            write()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
