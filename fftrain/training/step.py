"""The one training step, and the fusion swap at T2: what `Trainer` and the feature-level experiments run.

    settings = step_settings(cfg, step)                        # lr, GRL weight, clipping of this step
    out = train_step(model, head, optimizer, batch, settings, class_dataset=None if fused else labels.fused_dataset,
                     watch=watch, step=step)
    ...
    result = swap_in_fusion(head, labels, cfg.fusion, group=group)   # at T2: merge, then the agnostic phase

`model` maps images to (embeddings, dataset logits through the gradient reversal): an `EmbeddingModel`,
or its DDP wrapper. The head is the sharded Partial-FC head with its own SGD (`head.step`). Nothing here
reads files or builds a process group; the only collectives are the ones the head, DDP and fusion make
on the group they were handed.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fftrain.config import FusionConfig, TrainConfig
from fftrain.distributed import ProcessGroup, ReduceOp, all_reduce_
from fftrain.head.margins import build_margin
from fftrain.head.partial_fc import PartialFCHead
from fftrain.training.lr_schedule import lr_at

NO_BAD_STEP = 2**62


@dataclass(frozen=True)
class StepSettings:
    """What one step needs besides the modules and the batch."""

    lr: float
    dom_weight: float
    """Weight of the dataset classifier's loss: 1 from grl.start_step (the reversal's strength is the
    classifier's `lam`), 0 before, so the classifier runs every step (DDP needs every parameter used)."""
    grad_clip: float
    """Max global grad norm of the model's parameters; 0: no clipping."""
    dtype: torch.dtype = torch.float32
    """Autocast dtype of the forward (float32: no autocast)."""


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The SGD of the replicated model (backbone and dataset classifier); the head has its own."""
    return torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                           weight_decay=cfg.optim.weight_decay)


def build_margin_from(cfg: TrainConfig):
    head = cfg.head
    if head.margin == "combined":
        return build_margin("combined", scale=head.scale, m1=head.m1, m2=head.m2, m3=head.m3)
    return build_margin(head.margin, scale=head.scale, margin=head.m)


def build_head(cfg: TrainConfig, num_classes: int, *, group: ProcessGroup | None, device: torch.device | str,
               compute_dtype: torch.dtype, init_std: float = 0.01) -> PartialFCHead:
    """The sharded head of `num_classes` classes with the run's margin and its own SGD (cfg.optim's
    momentum and weight decay). init_std: the proxies' init when head.proxy_norm is 0."""
    return PartialFCHead(num_classes, cfg.model.embedding_size, margin=build_margin_from(cfg), group=group,
                         sample_rate=cfg.head.sample_rate, seed=cfg.seed, momentum=cfg.optim.momentum,
                         weight_decay=cfg.optim.weight_decay, init_std=init_std, device=device,
                         compute_dtype=compute_dtype,
                         dtype=torch.bfloat16 if cfg.head.fc_storage == "bf16" else torch.float32,
                         interclass_threshold=cfg.head.interclass_threshold, proxy_norm=cfg.head.proxy_norm)


def step_settings(cfg: TrainConfig, step: int, dtype: torch.dtype = torch.float32) -> StepSettings:
    """The settings of step `step` of a run with config `cfg`."""
    return StepSettings(lr=lr_at(step, cfg.optim), dom_weight=1.0 if step >= cfg.grl.start_step else 0.0,
                        grad_clip=cfg.optim.grad_clip, dtype=dtype)


@dataclass
class StepBatch:
    """One local batch: images (or features) and, per sample, its fused class, its dataset and an
    optional loss weight."""

    images: torch.Tensor
    fused: torch.Tensor
    dataset: torch.Tensor
    sample_weight: torch.Tensor | None = None


class NonFiniteWatch:
    """The first step whose loss was not finite, kept on the device (no host sync per step); read with
    `first_bad` at the moments the caller chooses (one collective)."""

    def __init__(self, device: torch.device | str):
        self.bad_step = torch.full((), NO_BAD_STEP, dtype=torch.long, device=device)

    def note(self, step: int, *losses: torch.Tensor) -> None:
        finite = torch.isfinite(losses[0])
        for loss in losses[1:]:
            finite = finite & torch.isfinite(loss)
        self.bad_step = torch.where(~finite, torch.minimum(self.bad_step, torch.full_like(self.bad_step, step)),
                                    self.bad_step)

    def first_bad(self, group: ProcessGroup | None) -> int | None:
        """The first bad step over every rank of `group` (collective), or None."""
        first = self.bad_step.clone()
        all_reduce_(first, group, op=ReduceOp.MIN)
        value = int(first)
        return None if value == NO_BAD_STEP else value


def _autocast(dtype: torch.dtype, device: torch.device):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_step(model, head, optimizer: torch.optim.Optimizer, batch: StepBatch, settings: StepSettings, *,
               class_dataset: torch.Tensor | None, watch: NonFiniteWatch, step: int) -> dict:
    """One optimiser step of the model and the head. class_dataset: the dataset of every fused class in
    the dataset-aware phase (the softmax of a sample runs over its own dataset's classes), None in the
    agnostic phase. Returns the two losses (detached, on the device) and the lr."""
    for group in optimizer.param_groups:
        group["lr"] = settings.lr
    with _autocast(settings.dtype, batch.images.device):
        embeddings, dataset_logits = model(batch.images)
    loss_cls = head(embeddings.float(), batch.fused, batch.dataset, class_dataset=class_dataset,
                    sample_weight=batch.sample_weight)
    loss_dom = F.cross_entropy(dataset_logits.float(), batch.dataset)
    watch.note(step, loss_cls, loss_dom)
    optimizer.zero_grad(set_to_none=True)
    (loss_cls + settings.dom_weight * loss_dom).backward()
    if settings.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    optimizer.step()
    head.step(settings.lr)
    return {"loss_cls": loss_cls.detach(), "loss_dom": loss_dom.detach(), "lr": settings.lr}


class PhaseBoundary:
    """Where the dataset-aware phase ends and what happens there, for the trainer and the experiments:
    the step T2 (fixed), or with fusion.t2 'auto' the first due check at which the proxies are ready (or
    the ceiling); then fusion (or naive's plain switch), and with fusion.t1 'auto' and no valley either
    staying dataset-aware (no_valley 'aware': declined for the rest of the run) or going agnostic unmerged.

        boundary = PhaseBoundary(cfg)
        head.track_alignment = boundary.watches_alignment
        if not fused and boundary.due(head, labels, step, group=group):     # collective at readiness checks
            fused, result = boundary.cross(head, labels, group=group)        # collective
    """

    def __init__(self, cfg: TrainConfig):
        from fftrain.fusion.readiness import ReadinessWatch

        self.cfg = cfg
        self.declined = False
        """t1 'auto' found no valley and no_valley is 'aware' (not saved: a resume past T2 decides again)."""
        self.readiness = None
        """t2 'auto': the watch and its checks (not saved: a resume watches anew)."""
        if cfg.fusion.t2_auto and cfg.t2_step is not None and cfg.merges:
            self.readiness = ReadinessWatch(floor_step=cfg.t2_floor_step, ceiling_step=cfg.t2_step,
                                            every=cfg.fusion.readiness_every, plateau=cfg.fusion.alignment_plateau)
        self.last_check = None

    @property
    def watches_alignment(self) -> bool:
        return self.readiness is not None

    def due(self, head, labels, step: int, *, group: ProcessGroup | None) -> bool:
        """Whether the boundary is at `step` (the caller asks only while dataset-aware). At a readiness
        check (t2 'auto') this is collective and `last_check` holds the verdict for the log."""
        self.last_check = None
        if self.declined or self.cfg.t2_step is None:
            return False
        if self.readiness is None:
            return step >= self.cfg.t2_step
        if not self.readiness.due(step):
            return False
        self.last_check = readiness_check(head, labels, self.cfg.fusion, self.readiness, step, group=group)
        return self.last_check.ready

    def cross(self, head, labels, *, group: ProcessGroup | None, source_info=None,
              report_dir: str | None = None):
        """The boundary (collective): returns (agnostic from here, the `FusionResult` or None when the
        method does not merge)."""
        if not self.cfg.merges:  # the paper's naive concatenation: agnostic over every source class
            return True, None
        result = swap_in_fusion(head, labels, self.cfg.fusion, group=group, source_info=source_info,
                                report_dir=report_dir)
        declined = result.threshold is not None and not result.threshold.merges
        if declined and self.cfg.fusion.no_valley == "aware":
            self.declined = True
            return False, result
        return True, result


def readiness_check(head, labels, fusion: FusionConfig, watch, step: int, *, group: ProcessGroup | None):
    """fusion.t2 'auto' at a due step (collective): the alignment since the last check and the proxies'
    top-1 geometry, judged by `watch` (a `fftrain.fusion.ReadinessWatch`). Returns its `ReadinessCheck`."""
    from fftrain.fusion import proxy_geometry

    alignment = head.read_alignment()
    geometry = proxy_geometry(head.weight.data, class_dataset=labels.fused_dataset, config=fusion, group=group)
    return watch.observe(step, alignment, geometry)


def swap_in_fusion(head, labels, fusion: FusionConfig, *, group: ProcessGroup | None, source_info=None,
                   report_dir: str | None = None):
    """FaceFusion on the live head (collective): the head keeps this rank's rows of the fused classes
    (weight and momentum), the label space `labels` sends each source class to its fused class.
    Returns the `FusionResult`."""
    from fftrain.fusion import run_fusion

    states = [head.momentum_buffer] if head.momentum_buffer is not None else []
    result = run_fusion(head.weight.data, states, class_dataset=labels.fused_dataset, label_map=labels.label_map,
                        source_info=source_info, config=fusion, group=group, report_dir=report_dir, in_place=True)
    head.reset_classes(result.num_classes_new, result.new_local_weight, result.new_states[0] if states else None,
                       copy=False)  # views of the old shard's storage: fusion holds no second shard
    labels.swap_label_map(result.new_label_map)
    return result
