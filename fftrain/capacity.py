"""Capacity planner: per-GPU memory of every part of a run, and whether it fits.

The `fftrain plan` command (fftrain/commands/plan.py) prints it.

Two phases peak separately: a training step (backbone parameters, gradients, momentum and
activations; the FC shard; the sampled rows and logits; the gathered batch; DALI buffers) and the
fusion step at T2 (between steps: activations are free, the FC shard stays; the kNN walks the
shards in bounded chunks, so it adds a few 4 / 16 MiB blocks and the running top-k; the streaming reshard,
in place over the old shard as the trainer runs it, a few bounded chunks and the merged members).

Where the numbers come from:
- backbone activations: measured, not guessed. The backbone runs forward on fake tensors (torch's FakeTensorMode: no
  memory, no compute) at a small batch with autograd's saved-tensor hooks counting the bytes every
  op keeps for the backward; that count scales linearly with the batch. Peak during backward adds
  the largest transient (one layer's output gradient), also from the same trace.
- the fusion step's temporaries follow fftrain.fusion's code (see `fusion_parts`), checked against
  the peaks measured by benchmarks/bench_fusion_memory.py (tests/unit/test_plan.py, within 10%).
- the head's per-step tensors follow PartialFCHead's code (see `head_parts`); its constants were
  checked against the CPU peaks in benchmarks/RESULTS.md (tests/unit/test_plan.py, within 10%).
- CUDA context, NCCL buffers and the allocator's fragmentation are not measurable without a GPU:
  a fixed `--overhead-gib` (default 2.0) and a 5 % reserve, stated in the output.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

GIB = 2**30
_BYTES = {"fp32": 4, "bf16": 2}
IMAGE_SHAPE = (3, 112, 112)
#: float32 [global batch, sampled classes] tensors alive at the head's peak (cosines saved for the
#: backward, the margin logits, the softmax probabilities, their gradient, the scaled gradient in
#: the backward; some are freed before others are made): 3.5 fits the measured CPU peaks.
LOGIT_TENSORS = 3.5
RESERVE = 0.05


@dataclass(frozen=True)
class PlanInput:
    classes: int
    gpus: int = 8
    gpu_memory_gib: float = 80.0
    backbone: str = "iresnet50"
    batch: int = 128
    """Images per GPU per step."""
    embedding: int = 512
    sample_rate: float = 0.1
    dtype: str = "bf16"
    """Compute dtype of the backbone ('bf16' or 'fp32'); the head's cosine matmul follows it."""
    fc_storage: str = "fp32"
    """FC weight and momentum storage: 'fp32' (8·D B/class) or 'bf16' (4·D B/class)."""
    momentum: bool = True
    knn_k: int = 10
    knn_block_elems: int = 1 << 25
    datasets: int = 6
    """Source datasets (equal-sized here): the cross-dataset kNN searches one sub-index per dataset."""
    merged_fraction: float = 0.1
    """Share of the classes that fusion merges (members of merged classes wait in the reshard)."""
    dali_prefetch: int = 2
    overhead_gib: float = 2.0
    """CUDA context + NCCL communicators + cuDNN workspace: not measured here (no GPU)."""
    device: str = "cuda"
    """'cuda' adds the overhead, DALI's device buffers and DDP's gradient buckets; 'cpu' models the
    CPU benchmark runs (one process, no DDP, no DALI)."""


@dataclass
class Plan:
    inp: PlanInput
    train: dict[str, int] = field(default_factory=dict)
    fusion: dict[str, int] = field(default_factory=dict)

    @property
    def train_peak(self) -> int:
        return sum(self.train.values())

    @property
    def fusion_peak(self) -> int:
        return sum(self.fusion.values())

    @property
    def peak(self) -> int:
        return max(self.train_peak, self.fusion_peak)

    @property
    def usable(self) -> int:
        return int(self.inp.gpu_memory_gib * GIB * (1 - RESERVE))

    @property
    def fits(self) -> bool:
        return self.peak <= self.usable


# ---- the backbone, measured on fake tensors ---------------------------------------------------------

@functools.lru_cache(maxsize=None)
def backbone_trace(name: str, embedding: int, dtype: str) -> dict[str, int]:
    """{'params', 'saved_per_image', 'saved_fixed', 'transient_per_image'}: two traces (2 and 4 images)
    split what scales with the batch from what does not (autocast's low-precision weight copies)."""
    small, large = _trace(name, embedding, dtype, 2), _trace(name, embedding, dtype, 4)
    per_image = (large["saved"] - small["saved"]) // 2
    return {"params": small["params"], "saved_per_image": per_image,
            "saved_fixed": max(0, small["saved"] - 2 * per_image),
            "transient_per_image": (large["transient"] - small["transient"]) // 2}


def _trace(name: str, embedding: int, dtype: str, batch: int) -> dict[str, int]:
    """{'params': count, 'saved_per_image': bytes, 'transient_per_image': bytes} from a fake-tensor
    forward of `name` at `batch` images (CPU autocast for bf16) with saved-tensor hooks."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fftrain.model.backbones import build_backbone

    seen: dict[int, int] = {}
    keep = []
    largest = 0

    def pack(t: torch.Tensor):
        if not isinstance(t, torch.nn.Parameter) and id(t) not in seen:
            seen[id(t)] = t.numel() * t.element_size()
            keep.append(t)  # keeps ids unique while tracing
        return t

    def watch(_module, _inputs, output):
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel() * output.element_size())

    # fake tensors: shapes, dtypes and autocast behave as on the CPU, but nothing is allocated or computed
    with FakeTensorMode():
        model = build_backbone(name, embedding_size=embedding).train()
        params = sum(p.numel() for p in model.parameters())
        hooks = [m.register_forward_hook(watch) for m in model.modules()]
        x = torch.empty(batch, *IMAGE_SHAPE)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
        with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        for h in hooks:
            h.remove()
    # backward: an op's output gradient and its input gradient exist together (2 x the largest)
    return {"params": params, "saved": sum(seen.values()), "transient": 2 * largest}


# ---- the parts ----------------------------------------------------------------------------------------

def local_classes(inp: PlanInput, classes: int | None = None) -> int:
    return -(-(classes if classes is not None else inp.classes) // inp.gpus)


def sampled_rows(inp: PlanInput, n_local: int) -> int:
    """PartialFCHead keeps max(round(rate * local), positives); positives <= the global batch."""
    if inp.sample_rate >= 1.0:
        return n_local
    return min(n_local, max(round(inp.sample_rate * n_local), inp.batch * inp.gpus))


def head_parts(inp: PlanInput, classes: int | None = None) -> dict[str, int]:
    n_local = local_classes(inp, classes)
    d, store = inp.embedding, _BYTES[inp.fc_storage]
    s = sampled_rows(inp, n_local)
    global_batch = inp.batch * inp.gpus
    sampled = s < n_local
    parts = {
        "fc weight (shard)": n_local * d * store,
        "fc momentum (shard)": n_local * d * store if inp.momentum else 0,
        # the [S, D] rows used: their fp32 gradient, plus (when sampled) the gathered copy and the
        # optimizer's gathered weight and momentum rows
        "fc sampled rows + grad": s * d * 4 + (s * d * (store + 2 * 4) if sampled else 0),
        "logits + softmax (N x S)": int(LOGIT_TENSORS * global_batch * s * 4),
        "sampling scores": (n_local * 4 + s * 16) if sampled else 0,
        "gathered batch (+grad)": 3 * global_batch * d * 4,
    }
    if inp.fc_storage == "bf16":
        parts["fc sampled rows + grad"] += s * d * 4  # the fp32 working copy of the bf16 rows
    return parts


def backbone_parts(inp: PlanInput) -> dict[str, int]:
    trace = backbone_trace(inp.backbone, inp.embedding, inp.dtype)
    p = trace["params"]
    ddp = inp.device == "cuda" and inp.gpus > 1
    return {
        "backbone params + grads + momentum": 12 * p,
        "DDP gradient buckets": 4 * p if ddp else 0,
        "backbone activations (measured)": trace["saved_per_image"] * inp.batch + trace["saved_fixed"],
        "backward transient": trace["transient_per_image"] * inp.batch,
        "input batch": inp.batch * math.prod(IMAGE_SHAPE) * 4 * 2,  # the batch + its channels-last copy
    }


def dali_parts(inp: PlanInput) -> dict[str, int]:
    if inp.device != "cuda":
        return {}
    image = math.prod(IMAGE_SHAPE)
    # decoded uint8 + normalised float output per queued batch; nvJPEG scratch not measured (assumed)
    return {"DALI buffers": (inp.dali_prefetch + 1) * inp.batch * image * (1 + 4) + 64 * 2**20}


def fusion_parts(inp: PlanInput, classes: int | None = None) -> dict[str, int]:
    """The fusion step from the code's temporaries (fftrain.fusion on one rank, faiss backend). The kNN
    (fftrain/fusion/knn.py) holds one fp32 normalised key chunk, the next one in flight (in storage dtype,
    with more than one rank) and one query block (half a chunk), faiss's score block and BLAS's buffers,
    and the running top-k, packed (8 B a hit: the one part that grows with the shard). The streaming
    reshard (in place, the trainer's `run_fusion(..., in_place=True)`: the new rows are written over the
    old shard) runs while the kNN's result and the plan's tables are kept; it holds three chunk buffers
    and the merged classes' members (one buffer in storage dtype), then folds them a chunk of classes at
    a time (that part's rows gathered, and in fp32). `merged_fraction`: the share of this rank's classes
    that are members of merged classes (new ids follow a class's smallest member, so the ranks holding
    the first datasets get more). The two phases do not overlap."""
    from fftrain.fusion.knn import CHUNK_BYTES as KNN_CHUNK_BYTES
    from fftrain.fusion.knn import chunk_rows
    from fftrain.fusion.reshard import CHUNK_BYTES as RESHARD_CHUNK_BYTES

    total = classes if classes is not None else inp.classes
    n_local = local_classes(inp, classes)
    d, store = inp.embedding, _BYTES[inp.fc_storage]
    copies = 2 if inp.momentum else 1
    shard = n_local * d * store * copies
    key_bytes = KNN_CHUNK_BYTES[inp.device]
    key_rows = min(n_local, chunk_rows(d, key_bytes))
    in_flight = key_rows * d * _BYTES[inp.fc_storage] if inp.gpus > 1 else 0  # the next chunk, as received
    knn = ((key_rows + min(n_local, chunk_rows(d, key_bytes // 2))) * d * 4 + in_flight
           + n_local * inp.knn_k * 8                     # the running top-k, packed
           + _search_workspace(inp.device) + total * _KNN_TABLE_BYTES[inp.device])
    kept = n_local * inp.knn_k * 12 + total * _TABLE_BYTES_PER_CLASS[inp.device]  # the kNN's result, the tables
    chunk = min(RESHARD_CHUNK_BYTES[inp.device], shard)
    row_bytes = d * store * copies
    members = int(inp.merged_fraction * n_local)
    member_bytes = members * row_bytes
    fold_rows = min(members, max(1, chunk // (row_bytes + 16)))
    reshard = kept + member_bytes + max(3 * chunk,                       # the steps' chunk buffers
                                        fold_rows * (row_bytes + d * 4 * 4))  # one part gathered, folded in fp32
    return {"fc shard (weight + momentum)": shard, "kNN or reshard working set": max(knn, reshard)}


_KNN_TABLE_BYTES = {"cpu": 16, "cuda": 8}
"""Bytes per class of the whole label space during the kNN: the dataset table (on the device) and, on the
CPU, the label map beside it."""
_TABLE_BYTES_PER_CLASS = {"cpu": 176, "cuda": 16}
"""Bytes per class of the whole label space that fusion holds where it runs: on a GPU the old-to-new
map and the member counts (int64) on the device (the dataset table, label maps and the components'
arrays stay on the host); on the CPU all of them, torch and numpy, measured (the resident set as the
reshard starts, less the kNN's result, at 120K classes on 2 ranks)."""


def _search_workspace(device: str) -> int:
    """faiss-gpu's StandardGpuResources reserves 1.5 GiB of temporary memory on a large GPU. faiss-cpu
    scores a [512 x 4096] fp32 block (8 MiB, `fftrain.search.FAISS_CPU_BLAS_BLOCK`) through BLAS, whose
    packing buffers (one thread per rank here) add ~12 MiB: 20 MiB, the 12 fitted to the kNN's peaks
    bench_fusion_memory.py measures at 30K and 60K classes on 2 ranks (the rest is traced)."""
    return int(1.5 * GIB) if device == "cuda" else 20 * 2**20


def plan(inp: PlanInput, classes: int | None = None) -> Plan:
    result = Plan(inp)
    fixed = {"CUDA context + NCCL (assumed)": int(inp.overhead_gib * GIB)} if inp.device == "cuda" else {}
    backbone = backbone_parts(inp)
    state = {k: v for k, v in backbone.items() if k in ("backbone params + grads + momentum", "DDP gradient buckets")}
    result.train = {**fixed, **backbone, **head_parts(inp, classes), **dali_parts(inp)}
    result.fusion = {**fixed, **state, **fusion_parts(inp, classes)}
    return result


def max_classes(inp: PlanInput, *, with_fusion: bool = True) -> int:
    """The largest class count that fits (binary search over the class count; 0 if none fits).
    with_fusion=False: the training step alone (a run with fusion off, t2 >= 1)."""
    def fits(classes: int) -> bool:
        p = plan(inp, classes)
        return p.fits if with_fusion else p.train_peak <= p.usable

    lo, hi = 0, inp.gpus
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 40:
            return lo
    while hi - lo > max(1, lo // 10000):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def format_plan(p: Plan) -> str:
    inp = p.inp
    lines = [f"{inp.classes:,} classes on {inp.gpus} x {inp.gpu_memory_gib:g} GiB, {inp.backbone} batch "
             f"{inp.batch}/GPU, D={inp.embedding}, sample rate {inp.sample_rate:g}, {inp.dtype}, FC storage "
             f"{inp.fc_storage}; {local_classes(inp):,} classes per GPU", ""]
    for title, parts, total in (("training step", p.train, p.train_peak), ("fusion step (T2)", p.fusion, p.fusion_peak)):
        lines.append(f"{title}:")
        lines += [f"  {name:<38s} {value / GIB:9.2f} GiB" for name, value in parts.items() if value]
        lines.append(f"  {'total':<38s} {total / GIB:9.2f} GiB")
    verdict = "fits" if p.fits else "does NOT fit"
    lines.append(f"peak {p.peak / GIB:.2f} GiB of {p.usable / GIB:.2f} GiB usable ({inp.gpu_memory_gib:g} GiB less a "
                 f"{RESERVE:.0%} fragmentation reserve): {verdict}")
    return "\n".join(lines)


def as_dict(p: Plan) -> dict:
    return {"input": p.inp.__dict__, "train_bytes": p.train, "fusion_bytes": p.fusion, "train_peak": p.train_peak,
            "fusion_peak": p.fusion_peak, "peak": p.peak, "usable": p.usable, "fits": p.fits}
