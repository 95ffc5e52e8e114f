"""Sharded Partial-FC classification head: one proxy per class, split across the ranks.

    head = PartialFCHead(num_classes, 512, margin=build_margin("arcface"), group=ctx.group,
                         sample_rate=0.1, device=ctx.device)
    loss = head(embeddings, labels, dataset_ids, class_dataset=table)  # dataset-aware (DAIL)
    loss = head(embeddings, labels)                                     # dataset-agnostic
    (loss + other_losses).backward()
    head.step(lr)                  # the head's own SGD on the sampled rows; not in the backbone optimizer

One step, on every rank of `group` (None: a single process, nothing communicated):
all-gather embeddings [B, D] and labels [B] into the global batch [W*B]; keep the local classes
[start, end) that are positives of the global batch plus a uniform random sample of the others
(`sample_rate`; 1.0 keeps all); cosine logits of the global batch against those rows (matmul
in bf16 on CUDA, in the weight's dtype on the CPU); the margin on each positive; in dataset-aware
mode, -inf for every (sample, class) pair whose datasets differ; a softmax cross-entropy whose
row max and row sum are all-reduced, so it equals the softmax over all sampled classes of all
ranks.

Conventions:
- The returned loss is the mean over the global batch, the same value on every rank. Every rank
  must have the same local batch size B (drop the last partial batch). With `sample_weight`
  (per-sample loss weights, e.g. pseudo-label confidences) it is sum_i w_i L_i / (W*B).
- Embedding gradient: rank r's embeddings receive W * dL/dx_r. DDP averages the backbone
  gradients over the W ranks, so the backbone ends up with dL/dtheta of the global-mean loss.
- Proxy gradient: the sampled rows (`active_weight`, [S, D]) receive dL/dw exactly. Nothing
  allocates a gradient of the whole local shard. The head must not be wrapped in DDP.
- Optimizer (`step`): SGD with momentum and weight decay on the sampled rows only:
  buf[r] = momentum * buf[r] + (grad[r] + weight_decay * w[r]); w[r] -= lr * buf[r]. Rows not
  sampled this step are untouched (no decay, no momentum drift), as in insightface's Partial FC.
  One forward/backward per step(); no gradient accumulation across forwards.
- Storage `dtype=torch.bfloat16` (config head.fc_storage: bf16) halves that (2048 B at D=512): step()
  updates the rows in float32 and writes them back with stochastic rounding (unbiased: a step smaller
  than bf16's spacing still moves the row on average, where round-to-nearest would drop it), drawn
  from a generator seeded by (seed, rank, step counter), so runs repeat exactly.
- Memory held per class: weight + momentum = 2 * D * itemsize bytes (fp32, D=512: 4096 B);
  D * itemsize with momentum=0 (no buffer). Per step, on top: the gradient of the S rows used
  (4 * D * S bytes, freed by step()), about four float32 [W*B, S] tensors (cosines, logits,
  probabilities, their gradient) and, with sample_rate < 1, 4 bytes per local class of scores.
- Bad labels or dataset ids raise ValueError on every rank alike: they are checked after the
  labels are gathered (one host sync per step). With `defer_checks = True` (the trainer) the
  check stays on the device: the step computes with clamped labels, the first bad step's figures
  are kept, and `raise_deferred_errors()` (called at log steps, before checkpoints and fusion)
  raises the same error naming that step. No other host sync runs per step when
  round(sample_rate * local classes) >= the global batch (the positives then always fit).
- Sampling is a function of (seed, rank, step counter): heads built with the same seed pick the
  same rows at the same step. The counter advances on each training-mode forward and is saved in
  the state dict. Eval mode uses every class and does not advance it.

The fusion step rewrites the head through `weight`, `momentum_buffer`, `start`, `end`,
`num_classes` and `reset_classes`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fftrain.distributed.class_sharding import shard_range
from fftrain.distributed.collectives import all_gather_rows, all_gather_rows_with_grad
from fftrain.distributed import ProcessGroup, ReduceOp, all_reduce_, rank_of, world_size_of
from fftrain.head.margins import Margin

_MASK64 = (1 << 64) - 1
_INIT_BLOCK = 8192
ROUND_ROWS = 8192
"""Rows per chunk of the bf16-storage update: its fp32 temporaries are bounded by this, not the sampled rows."""
_SALT_INIT, _SALT_SAMPLE, _SALT_ROUND = 1, 2, 3


def _mix(*values: int) -> int:
    """A 63-bit seed from a sequence of integers (splitmix64 folded over them)."""
    h = 0
    for v in values:
        z = (h ^ (v & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        h = z ^ (z >> 31)
    return h >> 1


def init_proxies(start: int, end: int, embedding_size: int, *, seed: int, std: float,
                 device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Rows [start, end) of an N(0, std^2) proxy matrix that does not depend on the sharding:
    class c's row comes from block c // 8192, seeded by (seed, block), so any split of the
    classes over any number of ranks yields the same rows (on a given device type)."""
    device = torch.device(device)
    out = torch.empty(end - start, embedding_size, device=device, dtype=dtype)
    gen = torch.Generator(device=device)
    for block in range(start // _INIT_BLOCK, -(-end // _INIT_BLOCK)):
        lo, hi = max(start, block * _INIT_BLOCK), min(end, (block + 1) * _INIT_BLOCK)
        gen.manual_seed(_mix(_SALT_INIT, seed, block))
        rows = torch.randn(_INIT_BLOCK, embedding_size, generator=gen, device=device)
        first = block * _INIT_BLOCK
        out[lo - start:hi - start] = rows[lo - first:hi - first] * std
    return out


class _Cosine(torch.autograd.Function):
    """cos = x_unit @ (w / |w|)^T, matmuls in `compute_dtype` (an enclosing autocast does not
    override it), the result in float32 or wider.

    The rows of w are never normalised into a copy: forward is one matmul and a column rescale,
    backward two matmuls and one fused row update of the [S, D] gradient:
    dw_j = sum_i g_ij x_i / |w_j| - w_j * sum_i g_ij cos_ij / |w_j|^2.
    """

    @staticmethod
    def forward(ctx, x_unit, w, compute_dtype):
        out_dtype = torch.promote_types(w.dtype, torch.float32)
        inv_norm = torch.linalg.vector_norm(w, dim=1, dtype=out_dtype).clamp_min_(1e-12).reciprocal_()
        with torch.autocast(w.device.type, enabled=False):
            cos = F.linear(x_unit.to(compute_dtype), w.to(compute_dtype)).to(out_dtype).mul_(inv_norm)
        ctx.compute_dtype = compute_dtype
        ctx.save_for_backward(x_unit, w, inv_norm, cos)
        return cos

    @staticmethod
    def backward(ctx, grad):
        x_unit, w, inv_norm, cos = ctx.saved_tensors
        dtype = ctx.compute_dtype
        grad_scaled = grad * inv_norm
        grad_x = grad_w = None
        with torch.autocast(w.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_x = (grad_scaled.to(dtype) @ w.to(dtype)).to(x_unit.dtype)
            if ctx.needs_input_grad[1]:
                coef = (grad * cos).sum(dim=0).mul_(inv_norm).mul_(inv_norm).to(w.dtype)
                grad_w = (grad_scaled.t().to(dtype) @ x_unit.to(dtype)).to(w.dtype)
                grad_w.addcmul_(w, coef.unsqueeze(1), value=-1.0)
        return grad_x, grad_w, None


class _DistSoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits split by columns over the ranks of `group`.

    `target[i]` is the local column of row i's positive, -1 where another rank holds it. The row
    max and the row sum of exponentials are all-reduced; the backward is local: (p - onehot) / N.
    With `weight` ([N] or None), row i's loss counts weight[i] times: sum_i w_i L_i / N.
    """

    @staticmethod
    def forward(ctx, logits, target, group, weight=None):
        row_max = logits.max(dim=1).values
        all_reduce_(row_max, group, op=ReduceOp.MAX)
        probs = (logits - row_max.unsqueeze(1)).exp_()
        has_pos = target >= 0
        column = target.clamp_min(0).unsqueeze(1)
        pos_logit = torch.where(has_pos, logits.gather(1, column).squeeze(1) - row_max, 0.0)
        stats = all_reduce_(torch.stack([probs.sum(dim=1), pos_logit]), group)
        sum_exp, pos_logit = stats[0], stats[1]
        probs.div_(sum_exp.unsqueeze(1))
        ctx.save_for_backward(probs, target, weight)
        per_row = sum_exp.log() - pos_logit
        return per_row.mean() if weight is None else (per_row * weight).mean()

    @staticmethod
    def backward(ctx, grad):
        probs, target, weight = ctx.saved_tensors
        scale = grad / probs.shape[0]
        if weight is not None:
            scale = (scale * weight.to(probs.dtype)).unsqueeze(1)
        grad_logits = probs * scale
        has_pos = (target >= 0).to(probs.dtype).unsqueeze(1)
        grad_logits.scatter_add_(1, target.clamp_min(0).unsqueeze(1), -has_pos * scale)
        return grad_logits, None, None, None


def dist_softmax_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group: ProcessGroup | None,
                               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows (each weighted by `weight`, [N], when given); with group=None and no weight
    (every target then >= 0) it equals F.cross_entropy."""
    return _DistSoftmaxCrossEntropy.apply(logits, target, group, weight)


class PartialFCHead(nn.Module):
    """The sharded margin-softmax head (see the module docstring for every convention).

    Args:
        num_classes: fused classes over all ranks; at least the group's world size.
        embedding_size: D.
        margin: a `fftrain.head.margins.Margin` (e.g. `build_margin("arcface", scale=64, margin=0.5)`).
        group: the process group the classes are split over; None for a single process.
        sample_rate: fraction of the local classes used per training step, in (0, 1]; the
            positives of the global batch are always kept: max(#positives, round(rate * local)).
        seed: drives the proxy initialisation and the class sampling.
        momentum, weight_decay: of `step()`.
        init_std: proxies start as N(0, init_std^2).
        device, dtype: of the weight shard and the momentum buffer.
        compute_dtype: of the cosine matmul; None: bfloat16 on CUDA, `dtype` elsewhere. The margin
            and the softmax always run in float32 or wider.
        interclass_threshold: inter-class filtering (arcface_torch's defence against duplicate
            identities): negative logits whose cosine exceeds it are dropped from the softmax
            (-inf), never the positive. 0 (default) keeps every negative. arcface_torch zeroes
            such cosines instead (they still count e^0 in the sum); dropping is what the
            method's description says and leaves them no gradient.
        proxy_norm: > 0 renormalises each updated row to this norm after every `step()` (and the
            init to the same norm), so a proxy's angular step stays lr * grad / proxy_norm^2 instead
            of shrinking as |w| grows; 0 (default): plain SGD, init N(0, init_std^2).
    """

    def __init__(self, num_classes: int, embedding_size: int, *, margin: Margin,
                 group: ProcessGroup | None = None, sample_rate: float = 1.0, seed: int = 0,
                 momentum: float = 0.9, weight_decay: float = 5e-4, init_std: float = 0.01,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 compute_dtype: torch.dtype | None = None, interclass_threshold: float = 0.0,
                 proxy_norm: float = 0.0):
        super().__init__()
        if proxy_norm < 0:
            raise ValueError(f"proxy_norm must be >= 0 (0: off), got {proxy_norm}")
        self.proxy_norm = proxy_norm
        if proxy_norm > 0:
            init_std = proxy_norm / embedding_size ** 0.5
        if not 0.0 <= interclass_threshold <= 1.0:
            raise ValueError(f"interclass_threshold must be in [0, 1] (0: off), got {interclass_threshold}")
        self.interclass_threshold = interclass_threshold
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
        if not callable(margin):
            raise ValueError(f"margin must be a callable Margin, got {margin!r}")
        self.group = group
        self.rank, self.world_size = rank_of(group), world_size_of(group)
        self.embedding_size = embedding_size
        self.margin = margin
        self.sample_rate = sample_rate
        self.seed = seed
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.compute_dtype = compute_dtype
        self.sample_step = 0
        start, end = self._range_for(num_classes)
        weight = init_proxies(start, end, embedding_size, seed=seed, std=init_std, device=device, dtype=dtype)
        self.register_buffer("momentum_buffer", None)
        self._install(num_classes, weight, None)
        self._generator: torch.Generator | None = None
        self.defer_checks = False
        self._deferred: torch.Tensor | None = None
        self.track_alignment = False  # fusion.t2 'auto' reads the proxies' alignment (`read_alignment`)
        self._alignment: torch.Tensor | None = None

    def _range_for(self, num_classes: int) -> tuple[int, int]:
        if num_classes < self.world_size:
            raise ValueError(f"num_classes ({num_classes}) must be >= the world size ({self.world_size})")
        return shard_range(num_classes, self.rank, self.world_size)

    def _install(self, num_classes: int, weight: torch.Tensor, momentum_buffer: torch.Tensor | None) -> None:
        self.num_classes = num_classes
        self.start, self.end = self._range_for(num_classes)
        self.weight = nn.Parameter(weight, requires_grad=False)
        if momentum_buffer is None and self.momentum > 0:
            momentum_buffer = torch.zeros_like(weight)
        self.momentum_buffer = momentum_buffer
        self._active: torch.Tensor | None = None
        self._index: torch.Tensor | None = None

    @property
    def local_classes(self) -> int:
        return self.end - self.start

    def reset_classes(self, num_classes: int, local_weight: torch.Tensor,
                      local_momentum: torch.Tensor | None = None, *, copy: bool = True) -> None:
        """Replace the shard after a change of the class count (fusion, resharding).

        `local_weight` (and `local_momentum`, zeros when None) must be this rank's rows
        [shard_range(num_classes, rank, W)] of the new proxy matrix, shape [end - start, D].
        copy False: tensors already on the head's device and dtype are kept as they are (the
        in-place fusion's views of the old shard), not copied."""
        start, end = self._range_for(num_classes)
        expected = (end - start, self.embedding_size)
        for name, t in (("local_weight", local_weight), ("local_momentum", local_momentum)):
            if t is not None and tuple(t.shape) != expected:
                raise ValueError(f"{name} has shape {tuple(t.shape)}; rank {self.rank} of {self.world_size} "
                                 f"owns classes [{start}, {end}) of {num_classes}, so expected {expected}")
        like = self.weight
        weight = local_weight.detach().to(device=like.device, dtype=like.dtype, copy=copy)
        momentum = None
        if local_momentum is not None and self.momentum > 0:
            momentum = local_momentum.detach().to(device=like.device, dtype=like.dtype, copy=copy)
        self._install(num_classes, weight, momentum)

    def get_extra_state(self):
        return {"sample_step": self.sample_step}

    def set_extra_state(self, state) -> None:
        self.sample_step = int(state["sample_step"])

    def extra_repr(self) -> str:
        return (f"classes [{self.start}, {self.end}) of {self.num_classes}, D={self.embedding_size}, "
                f"sample_rate={self.sample_rate}, margin={self.margin}")


    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, dataset_ids: torch.Tensor | None = None,
                *, class_dataset: torch.Tensor | None = None,
                sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean margin-softmax loss over the global batch.

        Args:
            embeddings: [B, D] local batch, any float dtype, on the weight's device.
            labels: [B] fused class ids in [0, num_classes).
            dataset_ids: [B] dataset of each sample; only read in dataset-aware mode, where it
                must equal class_dataset[labels] (None: taken from there).
            class_dataset: [num_classes] dataset id of every class (the full table, the same on
                every rank): dataset-aware mode. None: dataset-agnostic mode (all classes).
            sample_weight: [B] loss weight of each sample (>= 0); the loss is then
                sum_i w_i L_i / (W*B) over the global batch. None: every weight 1. Every rank must
                pass one or none.
        """
        self._check_local(embeddings, labels, dataset_ids, class_dataset)
        aware = class_dataset is not None
        if aware:
            class_dataset = class_dataset.to(self.weight.device)
        labels_all, datasets_all = self._gather_labels(labels, dataset_ids, class_dataset)
        x_all = all_gather_rows_with_grad(embeddings, self.group, grad_scale=float(self.world_size))
        index = self._sample(labels_all) if self.training else None
        if self.training:
            self.sample_step += 1
        active = self.weight.detach() if index is None else self.weight.detach()[index]
        if active.dtype == torch.bfloat16:  # bf16 storage: the rows used are computed on (and graded) in fp32
            active = active.float()
        active.requires_grad_(torch.is_grad_enabled())
        target = self._target_columns(labels_all, index)
        cos = self._cosine(x_all, active)
        if self.training and self.track_alignment:
            self._note_alignment(cos, target)
        logits = self.margin(cos, target)
        if self.interclass_threshold > 0:
            logits = self._filter_interclass(logits, cos, target)
        if aware:
            logits = self._mask_other_datasets(logits, datasets_all, class_dataset, index)
        weight_all = None
        if sample_weight is not None:
            if tuple(sample_weight.shape) != tuple(labels.shape):
                raise ValueError(f"sample_weight must have shape {tuple(labels.shape)}, "
                                 f"got {tuple(sample_weight.shape)}")
            weight_all = all_gather_rows(sample_weight.detach().to(logits.device, logits.dtype), self.group)
        loss = dist_softmax_cross_entropy(logits, target, self.group, weight_all)
        self._active, self._index = (active, index) if active.requires_grad else (None, None)
        return loss

    def _note_alignment(self, cos: torch.Tensor, target: torch.Tensor) -> None:
        """Add this rank's positive cosines (each sample's class is on one rank) to the running sum, on the
        device: no host sync per step."""
        with torch.no_grad():
            local = target >= 0
            positive = cos.detach().gather(1, target.clamp_min(0).unsqueeze(1)).squeeze(1).float()
            step_sum = torch.stack([torch.where(local, positive, 0.0).sum(), local.sum().float()])
            self._alignment = step_sum if self._alignment is None else self._alignment + step_sum

    def read_alignment(self) -> float:
        """Mean cosine of a sample to its class proxy over the training steps since the last read (collective;
        NaN when none ran). Needs `track_alignment`."""
        total = self._alignment if self._alignment is not None else torch.zeros(2, device=self.weight.device)
        all_reduce_(total, self.group)
        self._alignment = None
        return float(total[0] / total[1]) if float(total[1]) > 0 else float("nan")

    def _gather_labels(self, labels, dataset_ids, class_dataset):
        """Checked global labels [W*B] and, in dataset-aware mode, the dataset of each (else None)."""
        labels = labels.long()
        aware = class_dataset is not None
        ids = torch.stack([labels, dataset_ids.to(labels)], 1) if aware and dataset_ids is not None else labels
        ids = all_gather_rows(ids, self.group)
        labels_all, datasets_all = (ids[:, 0], ids[:, 1]) if ids.dim() == 2 else (ids, None)
        self._check_global(labels_all, datasets_all, class_dataset)
        if self.defer_checks:  # bad labels are recorded, not raised: compute on in-range ones
            labels_all = labels_all.clamp(0, self.num_classes - 1)
        if aware and datasets_all is None:
            datasets_all = class_dataset[labels_all]
        return labels_all, datasets_all

    def _check_local(self, embeddings, labels, dataset_ids, class_dataset) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must be [B, {self.embedding_size}], got {tuple(embeddings.shape)}")
        batch = embeddings.shape[0]
        if batch == 0:
            raise ValueError("empty batch: embeddings has 0 rows")
        if embeddings.device != self.weight.device:
            raise ValueError(f"embeddings are on {embeddings.device}, the head's weight on {self.weight.device}")
        if tuple(labels.shape) != (batch,) or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integer class ids of shape ({batch},), "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        if class_dataset is None:
            return
        if tuple(class_dataset.shape) != (self.num_classes,):
            raise ValueError(f"class_dataset must have one entry per class, shape ({self.num_classes},), "
                             f"got {tuple(class_dataset.shape)}")
        if dataset_ids is not None and tuple(dataset_ids.shape) != (batch,):
            raise ValueError(f"dataset_ids must have shape ({batch},), got {tuple(dataset_ids.shape)}")

    def _check_global(self, labels_all, datasets_all, class_dataset) -> None:
        """One host sync; runs on the gathered batch, so every rank raises the same error."""
        if self.defer_checks:
            self._note_bad_labels(labels_all, datasets_all, class_dataset)
            return
        stats = [labels_all.min(), labels_all.max()]
        mismatch = None
        if class_dataset is not None and datasets_all is not None:
            mismatch = class_dataset[labels_all.clamp(0, self.num_classes - 1)] != datasets_all
            stats.append(mismatch.sum())
        low, high, *bad_datasets = torch.stack(stats).tolist()
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"label {low if low < 0 else high} out of range [0, {self.num_classes})")
        if bad_datasets and bad_datasets[0]:
            i = int(mismatch.nonzero()[0])
            sample_ds, label = int(datasets_all[i]), int(labels_all[i])
            if not bool((class_dataset == sample_ds).any()):
                raise ValueError(f"dataset id {sample_ds} (sample {i} of the global batch) has no classes "
                                 f"in class_dataset")
            raise ValueError(f"sample {i} of the global batch has dataset id {sample_ds} but its label "
                             f"{label} is a class of dataset {int(class_dataset[label])}")

    def _note_bad_labels(self, labels_all, datasets_all, class_dataset) -> None:
        """Device-side record of the first bad step: [step, kind, sample, label, dataset, -], kind 1 =
        label out of range, 2 = dataset mismatch; kind 0 = nothing bad so far."""
        in_range = (labels_all >= 0) & (labels_all < self.num_classes)
        bad = ~in_range
        if class_dataset is not None and datasets_all is not None:
            bad = bad | (class_dataset[labels_all.clamp(0, self.num_classes - 1)] != datasets_all)
        # a 1-element index, never a 0-d one: indexing with a 0-d tensor reads it on the host (a sync)
        i = bad.to(torch.uint8).argmax().unsqueeze(0)
        kind = torch.where(in_range.gather(0, i), 2, 1) * bad.any()
        dataset = datasets_all.gather(0, i).long() if datasets_all is not None else torch.zeros_like(i)
        row = torch.cat([torch.full_like(i, self.sample_step), kind, i, labels_all.gather(0, i), dataset,
                         torch.zeros_like(i)])
        if self._deferred is None or self._deferred.device != labels_all.device:
            self._deferred = torch.zeros(6, dtype=torch.long, device=labels_all.device)
        self._deferred = torch.where(self._deferred[1] == 0, row, self._deferred)

    def raise_deferred_errors(self, class_dataset: torch.Tensor | None = None) -> None:
        """Raise the error of the first bad batch since the last call (one host sync); see the module doc."""
        if self._deferred is None:
            return
        step, kind, i, label, dataset, _ = self._deferred.tolist()
        self._deferred = None
        where = f"training-mode forward {step} (sample counter)"
        if kind == 1:
            raise ValueError(f"label {label} out of range [0, {self.num_classes}) at {where}")
        if kind == 2:
            owner = f"a class of dataset {int(class_dataset[label])}" if class_dataset is not None else "another dataset's"
            raise ValueError(f"sample {i} of the global batch has dataset id {dataset} but its label {label} is "
                             f"{owner} at {where}")

    def _sample(self, labels_all: torch.Tensor) -> torch.Tensor | None:
        """Sorted local row indices to use this step, or None for all rows."""
        if self.sample_rate >= 1.0:
            return None
        n_local = self.local_classes
        local = labels_all - self.start
        inside = (local >= 0) & (local < n_local)
        device = self.weight.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        self._generator.manual_seed(_mix(_SALT_SAMPLE, self.seed, self.rank, self.sample_step))
        score = torch.rand(n_local, generator=self._generator, device=device)
        # positives get 2.0 (above every uniform draw) without a boolean-mask sync; amax is order-free
        score.scatter_reduce_(0, local.clamp(0, n_local - 1), torch.where(inside, 2.0, 0.0).to(score.dtype),
                              reduce="amax")
        k = max(round(self.sample_rate * n_local), 1)
        if k < labels_all.shape[0]:  # the positives might not fit in k: count them (a host sync)
            k = max(int((score > 1.0).sum()), k)
        k = min(n_local, k)
        if k == n_local:
            return None
        return score.topk(k, sorted=False).indices.sort().values

    def _target_columns(self, labels_all: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        local = labels_all - self.start
        inside = (local >= 0) & (local < self.local_classes)
        column = local if index is None else torch.searchsorted(index, local.clamp(0, self.local_classes - 1))
        return torch.where(inside, column, -1)

    def _cosine(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype or (torch.bfloat16 if x.device.type == "cuda" else w.dtype)
        return _Cosine.apply(F.normalize(x.to(w.dtype)), w, dtype)

    def _filter_interclass(self, logits, cos, target) -> torch.Tensor:
        """Drop negatives with cosine above the threshold (the positive column is kept)."""
        dirty = cos.detach() > self.interclass_threshold
        positive = torch.zeros_like(dirty).scatter_(1, target.clamp_min(0).unsqueeze(1), (target >= 0).unsqueeze(1))
        dirty &= ~positive  # no host sync: rows without a local positive scatter False
        return logits.masked_fill_(dirty, float("-inf"))

    def _mask_other_datasets(self, logits, datasets_all, class_dataset, index) -> torch.Tensor:
        local_table = class_dataset[self.start:self.end]
        class_ds = local_table if index is None else local_table[index]
        return logits.masked_fill_(datasets_all.unsqueeze(1) != class_ds.unsqueeze(0), float("-inf"))


    @property
    def active_weight(self) -> torch.Tensor | None:
        """The [S, D] leaf of the last training forward (its .grad after backward), else None."""
        return self._active

    def sampled_classes(self) -> torch.Tensor:
        """Global class ids of the rows used by the last forward (all local classes if none sampled)."""
        if self._index is None:
            return torch.arange(self.start, self.end, device=self.weight.device)
        return self._index + self.start

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """SGD with momentum and weight decay on the rows of the last forward; see the module doc."""
        active, index = self._active, self._index
        if active is None or active.grad is None:
            raise RuntimeError("PartialFCHead.step() needs a training-mode forward and backward() first")
        if self.weight.dtype == torch.bfloat16:
            self._step_stochastic_bf16(lr, active.grad, index)
            self._active = self._index = None
            return
        grad = active.grad.to(self.weight.dtype)
        if self.weight_decay:
            grad.add_(self.weight if index is None else self.weight[index], alpha=self.weight_decay)
        if self.momentum_buffer is not None:
            buf = self.momentum_buffer if index is None else self.momentum_buffer[index]
            buf.mul_(self.momentum).add_(grad)
            if index is not None:
                self.momentum_buffer.index_copy_(0, index, buf)
            grad = buf
        if index is None:
            self.weight.sub_(grad, alpha=lr)
        else:
            self.weight.index_add_(0, index, grad, alpha=-lr)
        if self.proxy_norm > 0:
            self._renormalise(index)
        self._active = self._index = None

    def _renormalise(self, index: torch.Tensor | None) -> None:
        if index is None:
            self.weight.copy_(F.normalize(self.weight, dim=1) * self.proxy_norm)
        else:
            self.weight.index_copy_(0, index, F.normalize(self.weight[index], dim=1) * self.proxy_norm)

    def _step_stochastic_bf16(self, lr: float, grad: torch.Tensor, index: torch.Tensor | None) -> None:
        """The same SGD as step(), computed in float32 on the used rows and stochastically rounded into
        the bf16 weight and momentum, ROUND_ROWS rows at a time: the update is built in the gradient's
        own storage and the rounding's fp32 temporaries stay bounded. The momentum is rounded first, all
        chunks in order, then the weight, so the draws are those of one pass over all rows."""
        update = grad.float()  # the forward's fp32 rows' gradient: no copy
        gen = torch.Generator(device=update.device)
        gen.manual_seed(_mix(_SALT_ROUND, self.seed, self.rank, self.sample_step))
        chunks = [(a, min(a + ROUND_ROWS, update.shape[0])) for a in range(0, update.shape[0], ROUND_ROWS)]
        chunks = [(a, b, slice(a, b) if index is None else index[a:b]) for a, b in chunks]
        for a, b, rows in chunks:
            if self.weight_decay:
                update[a:b].add_(self.weight[rows].float(), alpha=self.weight_decay)
            if self.momentum_buffer is not None:
                momentum = self.momentum_buffer[rows].float().mul_(self.momentum).add_(update[a:b])
                self.momentum_buffer[rows] = stochastic_round_bf16(momentum, gen)
                update[a:b] = momentum
        for a, b, rows in chunks:
            self.weight[rows] = stochastic_round_bf16(self.weight[rows].float().sub_(update[a:b], alpha=lr), gen)


def stochastic_round_bf16(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float32 -> bfloat16, rounding up with probability equal to the dropped fraction (unbiased).

    bf16 is the top 16 bits of float32: add uniform noise below them, then truncate (exact)."""
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, generator=generator, device=x.device, dtype=torch.int32)
    rounded = (bits + noise) & -65536  # clear the low 16 bits; the float is now exactly a bf16
    finite = torch.isfinite(x)
    return torch.where(finite, rounded.view(torch.float32), x).to(torch.bfloat16)
