"""The FaceFusion step: find proxies of one identity across datasets and merge their classes.

    result = run_fusion(head.weight, [head.momentum_buffer], class_dataset=class_dataset,
                        label_map=label_map, source_info=SourceInfo.from_manifest(manifest),
                        config=cfg.fusion, group=ctx.group, report_dir=run_dir)
    # every rank: result.new_local_weight is its shard of result.num_classes_new classes
    planned = plan_fusion(weight, class_dataset=..., label_map=..., config=cfg.fusion)   # steps 1-4 only

Called once, at step T2, on every rank of the group collectively (docs/ARCHITECTURE.md, "Fusion
protocol"). Steps: (1) exact kNN of the L2-normalised proxies across the shards (`knn`), by
default restricted to other datasets; (2) candidate pairs with cosine > t1, gathered to every
rank; (3) deterministic components with the guards; (4) contiguous new ids ordered by smallest
source class (`components`); (5) all-to-all reshard of the weight and optimizer state with the
merge rule (`reshard`); (6) JSON + PNG report on rank 0 (`report`). `plan_fusion` is steps 1-4 and
changes nothing (a dry run, the audit's twin, a T1 sweep); `apply_fusion` is step 5.

The inputs are plain tensors: the caller (the trainer, `fftrain fuse`) swaps the results into the
head, its optimizer state and the label map (the label space derives the fused classes' datasets).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fftrain.config import FusionConfig
from fftrain.distributed.class_sharding import shard_range
from fftrain.distributed import ProcessGroup, broadcast_object, gather_object, rank_of, world_size_of
from fftrain.fusion.components import (Component, FusionPlan, Rejected, build_plan, candidate_pairs, gather_edges,
                                       gather_pairs, mutual_pairs, top1_edges)
from fftrain.fusion.knn import distributed_knn, resolve_backend
from fftrain.fusion.report import SourceInfo, build_report, top1_other_dataset, write_report
from fftrain.fusion.reshard import reshard_merge
from fftrain.fusion.threshold import FIT_SAMPLE, T1Decision, choose_t1


@dataclass
class FusionResult:
    new_local_weight: torch.Tensor
    """This rank's rows of shard_range(num_classes_new, rank, W), same dtype/device as the input."""
    new_states: list[torch.Tensor]
    """The optimizer state tensors, resharded and merged the same way (mean of members)."""
    new_class_dataset: torch.Tensor
    """int64 [C_new]: dataset of the smallest source class of each new fused class."""
    new_label_map: torch.Tensor
    """int64 [C_src]: source class -> new fused id (old_to_new composed with the old label map)."""
    num_classes_new: int
    components: list[Component]
    """Merged groups (members are old fused ids), by new id."""
    stats: dict
    """Counts and per-phase seconds (this rank's wall clock, waits for other ranks included)."""
    old_to_new: torch.Tensor
    """int64 [C_old]: old fused id -> new fused id."""
    rejected: list[Rejected] = field(default_factory=list)
    report_paths: dict = field(default_factory=dict)
    """{'json': ..., 'png': ...} on rank 0 when a report was written, else empty."""
    threshold: T1Decision | None = None
    """The T1 used and why; `threshold.merges` False: t1 'auto' found no valley and nothing merged."""

    def summary_line(self) -> str:
        s = self.stats
        secs = sum(s.get(k, 0.0) for k in ("knn_s", "components_s", "reshard_s", "report_s"))
        return (f"{s['num_classes_old']} -> {self.num_classes_new} classes: {s['num_components_merged']} components "
                f"merged ({s['num_classes_merged']} classes, largest {s['largest_component']}), "
                f"{s['num_rejected']} left unmerged, {s['num_candidate_pairs']} candidate pairs, {secs:.1f} s"
                f" (kNN: {s.get('knn_backend', '?')} on {s.get('knn_device', '?')})"
                + (f"; {self.threshold.line()}" if self.threshold is not None and self.threshold.mode != "fixed"
                   else ""))


def _elapsed(started: float, device: torch.device) -> float:
    """Seconds since `started`, with CUDA work finished (phase times would otherwise leak into the next)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


@dataclass
class PlannedFusion:
    """What the plan decided (steps 1-4), and the kNN hits the report reads; nothing is changed yet."""

    plan: FusionPlan
    old_to_new: torch.Tensor
    """int64 [C_old]: old fused id -> new fused id."""
    new_label_map: torch.Tensor
    """int64 [C_src]: source class -> new fused id."""
    sims: torch.Tensor
    ids: torch.Tensor
    """This rank's kNN hits: [n_local, k] cosines and global fused ids."""
    start: int
    """Global fused id of this rank's first row."""
    class_dataset: torch.Tensor
    label_map: torch.Tensor
    """The inputs' tables, on the CPU."""
    timings: dict
    threshold: T1Decision | None = None
    """The T1 used and why (fixed, the valley of the auto fit, or no merge without a valley)."""


def _tables(local_weight: torch.Tensor, class_dataset, label_map, group) -> tuple[torch.Tensor, torch.Tensor, int]:
    world, rank = world_size_of(group), rank_of(group)
    table = torch.as_tensor(class_dataset, dtype=torch.int64).cpu()
    num_old = int(table.shape[0])
    start, end = shard_range(num_old, rank, world)
    if local_weight.dim() != 2 or local_weight.shape[0] != end - start:
        raise ValueError(f"rank {rank}: local_weight has shape {tuple(local_weight.shape)}, expected "
                         f"[{end - start}, D] (shard_range({num_old}, {rank}, {world}) = [{start}, {end}))")
    lm = (torch.arange(num_old, dtype=torch.int64) if label_map is None
          else torch.as_tensor(label_map, dtype=torch.int64).cpu())
    return table, lm, start


def plan_fusion(local_weight: torch.Tensor, *, class_dataset, label_map, config: FusionConfig,
                group: ProcessGroup | None = None) -> PlannedFusion:
    """Steps 1-4 (collective, changes nothing): kNN of the normalised proxies, candidate pairs above
    config.t1 gathered to every rank, components with the guards, new ids. Arguments as `run_fusion`."""
    device = local_weight.device
    table, lm, start = _tables(local_weight, class_dataset, label_map, group)
    timings = {}
    t = time.perf_counter()
    sims, ids = distributed_knn(local_weight, config.knn_k, group, normalize=True, backend=config.backend,
                                precision=config.knn_precision,
                                groups=None if config.allow_same_dataset else table.to(device))
    timings["knn_s"] = _elapsed(t, device)
    timings["knn_backend"], timings["knn_device"] = resolve_backend(config.backend, device), str(device)

    t = time.perf_counter()
    threshold = decide_t1(sims, ids, start, table, config, group)
    timings["t1_s"] = _elapsed(t, device)
    t = time.perf_counter()
    pairs, cos = candidate_pairs(sims, ids, start, table.numpy(), threshold.t1, config.allow_same_dataset)
    pairs, cos = gather_pairs(pairs, cos, group)
    if config.mutual_nn:
        edges = top1_edges(sims, ids, start, table.numpy(), threshold.t1, config.allow_same_dataset)
        pairs, cos = mutual_pairs(gather_edges(edges, group), pairs, cos)
    plan = build_plan(pairs, cos, class_dataset=table.numpy(), label_map=lm.numpy(),
                      max_component=config.max_component, same_dataset_policy=config.same_dataset_policy,
                      allow_same_dataset=config.allow_same_dataset)
    old_to_new = torch.from_numpy(plan.old_to_new)
    new_label_map = old_to_new[lm]
    timings["components_s"] = _elapsed(t, device)
    return PlannedFusion(plan=plan, old_to_new=old_to_new, new_label_map=new_label_map, sims=sims, ids=ids,
                         start=start, class_dataset=table, label_map=lm, timings=timings, threshold=threshold)


def proxy_geometry(local_weight: torch.Tensor, *, class_dataset, config: FusionConfig,
                   group: ProcessGroup | None = None) -> T1Decision:
    """The two-mode verdict on the proxies' top-1 cross-dataset cosines (collective; the kNN of
    `plan_fusion`, nothing else): what `fusion.t2: auto` watches. The same fit as `fusion.t1: auto`."""
    table = torch.as_tensor(class_dataset, dtype=torch.int64).cpu()
    start = shard_range(int(table.shape[0]), rank_of(group), world_size_of(group))[0]
    sims, ids = distributed_knn(local_weight, config.knn_k, group, normalize=True, backend=config.backend,
                                precision=config.knn_precision, groups=table.to(local_weight.device))
    return decide_t1(sims, ids, start, table, dataclasses.replace(config, t1="auto"), group, quiet=True)


def decide_t1(sims: torch.Tensor, ids: torch.Tensor, start: int, table: torch.Tensor, config: FusionConfig,
              group: ProcessGroup | None, quiet: bool = False) -> T1Decision:
    """The threshold of this fusion (collective when t1 is 'auto': a bounded sample of every rank's
    top-1 cross-dataset cosines is fitted on rank 0, the decision broadcast; printed on rank 0)."""
    if not config.t1_auto:
        return choose_t1(None, config)
    s = sims.detach().float().cpu().numpy()
    q = np.arange(start, start + s.shape[0], dtype=np.int64)
    top1, censored = top1_other_dataset(s, ids.detach().cpu().numpy(), q, table.numpy())
    top1 = top1[~censored]
    stride = max(1, -(-top1.size * world_size_of(group) // FIT_SAMPLE))  # the fit's cost stays bounded
    parts = gather_object(top1[::stride], group)
    decision = choose_t1(np.concatenate(parts), config) if parts is not None else None
    decision = broadcast_object(decision, group)
    if rank_of(group) == 0 and not quiet:
        print(f"fusion: {decision.line()}", flush=True)
    return decision


def apply_fusion(planned: PlannedFusion, local_weight: torch.Tensor, optimizer_states: list[torch.Tensor],
                 group: ProcessGroup | None = None, *, in_place: bool = False
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Step 5 (collective): this rank's rows of the fused classes, weight and states merged by the plan
    (in_place: written over the inputs' first rows and returned as views of them, `reshard_merge`)."""
    t = time.perf_counter()
    new_w, new_states = reshard_merge(local_weight, list(optimizer_states), planned.old_to_new,
                                      planned.plan.num_classes_new, group, in_place=in_place)
    planned.timings["reshard_s"] = _elapsed(t, local_weight.device)
    return new_w, new_states


def run_fusion(local_weight: torch.Tensor, optimizer_states: list[torch.Tensor], *, class_dataset,
               label_map, source_info: SourceInfo | None, config: FusionConfig,
               group: ProcessGroup | None = None, report_dir: str | None = None,
               in_place: bool = False) -> FusionResult:
    """Fuse the classes whose proxies match across datasets; every rank of `group` must call.

    local_weight: [n_local, D] this rank's rows of shard_range(C_old, rank, W) (unnormalised is
      fine: the search normalises one bounded block at a time). optimizer_states: tensors with the
      same leading size.
    class_dataset: [C_old] int64 dataset of each fused class. label_map: [C_src] int64 source ->
      fused (None: identity). Both identical on every rank.
    source_info: names the source classes for the report (None: no report).
    config: t1 (cosine threshold, strictly greater merges), knn_k, the guards (max_component,
      same_dataset_policy, allow_same_dataset, see `fftrain.fusion.components`) and the kNN backend.
    report_dir: where rank 0 writes fusion_report.json and fusion_top1_hist.png (rank 0's value
      decides for all ranks; None: no report).
    in_place: the new weight and states are written over the inputs (contiguous) and returned as views
      of their first rows, so fusion allocates no second shard (the trainer's choice: it swaps them in).
    The weight and states come back on the input's device and dtype; the tables (label map,
    dataset table, old_to_new) on the CPU.
    """
    planned = plan_fusion(local_weight, class_dataset=class_dataset, label_map=label_map, config=config, group=group)
    new_w, new_states = apply_fusion(planned, local_weight, optimizer_states, group, in_place=in_place)
    plan = planned.plan
    t = time.perf_counter()
    paths = {}
    want_report = broadcast_object(report_dir is not None and source_info is not None, group)
    if want_report:
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "t2"}
        threshold = planned.threshold.to_dict()
        settings.update(t1_config=config.t1, t1=threshold["t1"], threshold=threshold, world_size=world_size_of(group))
        paths = _report(planned, source_info, group, report_dir, settings)
    planned.timings["report_s"] = time.perf_counter() - t

    stats = dict(plan.stats, **planned.timings)
    return FusionResult(new_local_weight=new_w, new_states=new_states,
                        new_class_dataset=torch.from_numpy(plan.new_class_dataset),
                        new_label_map=planned.new_label_map, num_classes_new=plan.num_classes_new,
                        components=plan.components, stats=stats, old_to_new=planned.old_to_new,
                        rejected=plan.rejected, report_paths=paths, threshold=planned.threshold)


def _report(planned: PlannedFusion, source_info, group, report_dir, settings):
    """Gather what the report needs to rank 0 and write it there (collective)."""
    plan, sims, ids, start = planned.plan, planned.sims, planned.ids, planned.start
    table, lm, stats = planned.class_dataset, planned.label_map, plan.stats
    s = sims.detach().float().cpu().numpy()
    j = ids.detach().cpu().numpy()
    q = np.arange(start, start + s.shape[0], dtype=np.int64)
    top1, censored = top1_other_dataset(s, j, q, table.numpy())
    wanted = {m for c in plan.components for m in c.members} | {m for r in plan.rejected for m in r.members}
    local = q[np.isin(q, np.fromiter(wanted, dtype=np.int64, count=len(wanted)))].tolist()
    neighbours = {f: {int(b): float(c) for b, c in zip(j[f - start], s[f - start]) if b >= 0} for f in local}
    parts = gather_object((top1, censored, neighbours), group)
    if parts is None:
        return {}
    top1 = np.concatenate([p[0] for p in parts])
    censored = np.concatenate([p[1] for p in parts])
    merged_nb = {}
    for p in parts:
        merged_nb.update(p[2])
    report = build_report(plan=plan, label_map=lm.numpy(), source_info=source_info, class_dataset=table.numpy(),
                          neighbours=merged_nb, top1=top1, censored=censored, settings=settings, stats=stats)
    marked = settings["t1"] if settings["t1"] is not None else 1.0  # no merge: the mark at the top
    return write_report(report_dir, report, top1, t1=marked, names=list(source_info.names))
