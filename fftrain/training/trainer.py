"""The training loop: phases, the fusion hook, checkpoints, logging, verification.

Phases (docs/ARCHITECTURE.md): 'dail' (dataset-aware softmax) for steps [0, T2), then at
T2 (`cfg.t2_step`) the fusion call rewrites the label map and the FC shards, then 'agnostic'
(softmax over all fused classes). With fusion off (t2 >= 1) the run stays 'dail'. The
gradient-reversal dataset classifier is weighted in from `grl.start_step`. `method` changes the
phases (config.py): 'naive' switches to 'agnostic' at the boundary without merging, 'naive0' and
'interclass' are 'agnostic' from step 0, 'dail' never leaves 'dail'.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from fftrain.training.checkpoint import (FC_MOMENTUM, FC_WEIGHT, MODEL, OPTIMIZER, ShardedRows, check_compatible,
                                         load_checkpoint, model_and_optimizer_state, save_checkpoint,
                                         set_model_and_optimizer_state)
from fftrain.config import TrainConfig, config_to_dict
from fftrain.distributed import DistContext, ReduceOp, all_reduce_, broadcast_, comm_device
from fftrain.errors import UserError
from fftrain.training.faults import fault_point
from fftrain.training.startup import StartPoint, start_point
from fftrain.training.step import (NonFiniteWatch, PhaseBoundary, StepBatch, build_head, build_optimizer,
                                   step_settings, train_step)
from fftrain.model.embedding import EmbeddingModel
from fftrain.training.resume_rules import data_position
from fftrain.training.run_log import MetricsWriter, Throughput, format_duration, get_logger


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class TrainState:
    """What changes as training goes on, besides the weights."""

    step: int = 0
    fused: bool = False
    """True once fusion has run: the label map is many-to-one and the softmax is agnostic."""


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    name = cfg.dtype if cfg.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]  # fp16 is refused by the config


class Trainer:
    """Owns the model, the sharded head, the optimizers and the loader for one run on one rank."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, data, start: StartPoint | None = None):
        """`data` is a `fftrain.data.TrainingData` (loader factory + label space + manifest); `start` the
        start point resolved at start-up (`fftrain.training.startup`; None: resolved here, for callers
        that build the data themselves)."""
        self.cfg, self.ctx, self.data = cfg, ctx, data
        self.log = get_logger()
        self.checkpoint_root = os.path.join(cfg.output_dir, "checkpoints")
        self.dtype = compute_dtype(cfg, ctx.device)
        self.state = TrainState(fused=cfg.agnostic_from_start)
        torch.manual_seed(cfg.seed + ctx.rank)
        if ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed-size 112x112 inputs: pick the fastest kernels once
        self.watch = NonFiniteWatch(ctx.device)
        self.boundary = PhaseBoundary(cfg)

        start = start if start is not None else start_point(cfg, ctx)
        resume_path, resume_meta = start.resume_path, start.resume_meta
        num_fused = resume_meta["num_classes_fused"] if resume_meta else data.num_source_classes

        self.model = EmbeddingModel(cfg.model, cfg.grl, data.num_datasets).to(ctx.device)
        if cfg.model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if start.pretrained is not None:
            self.model.backbone.load_state_dict(start.pretrained)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
                    if ctx.group is not None else self.model)
        self.forward_model = torch.compile(self.ddp) if cfg.model.compile else self.ddp
        self.optimizer = build_optimizer(self.model, cfg)
        self.head = build_head(cfg, num_fused, group=ctx.group, device=ctx.device, compute_dtype=self.dtype)
        self.head.defer_checks = True  # no host sync per step; raised at log steps (check_deferred)
        self.head.track_alignment = self.boundary.watches_alignment
        self.labels = data.labels  # the run's label space; the loader reads the same object
        if resume_path:
            self._restore(resume_path, resume_meta)
        position = (data_position(resume_meta, data.num_records, cfg.data.batch_size * ctx.world_size, cfg.data.order)
                    if resume_path else (0, 0))
        self.loader = data.make_loader(position=position)
        self.metrics = MetricsWriter(cfg.output_dir, ctx.is_main, cfg.log.tensorboard,
                                     resume_step=resume_meta["step"] if resume_meta else None)
        self.last_checkpoint = resume_path

    # ---- phases --------------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        return "agnostic" if self.state.fused else "dail"

    def fusion_due(self) -> bool:
        """The phase boundary is now (`PhaseBoundary.due`: collective at t2 'auto' readiness checks)."""
        if self.state.fused:
            return False
        due = self.boundary.due(self.head, self.labels, self.state.step, group=self.ctx.group)
        check = self.boundary.last_check
        if check is not None:
            self.log.info(f"step {self.state.step}: fusion readiness: {'ready' if check.ready else 'waiting'}: "
                          f"{check.reason}")
        return due

    def _write_readiness(self) -> None:
        """Rank 0: every readiness check of this process (t2 'auto'), beside the fusion report."""
        readiness = self.boundary.readiness
        if readiness is None or not self.ctx.is_main:
            return
        from recordio_tools.files import write_text_atomic

        folder = os.path.join(self.cfg.output_dir, "fusion")
        os.makedirs(folder, exist_ok=True)
        body = {"floor_step": readiness.floor_step, "ceiling_step": readiness.ceiling_step,
                "fused_at_step": self.state.step, "checks": [c.to_dict() for c in readiness.checks]}
        write_text_atomic(os.path.join(folder, "readiness.json"), json.dumps(body, indent=1) + "\n")

    def on_phase_boundary(self) -> None:
        """The phase boundary: merge cross-dataset duplicates, rewrite label map and FC shards, go agnostic
        (`PhaseBoundary.cross`)."""
        from fftrain.fusion import SourceInfo

        fault_point("fusion", self.state.step, self.ctx.rank)
        self._write_readiness()
        source_info = SourceInfo.from_manifest(self.data.manifest) if self.cfg.merges else None
        fused, result = self.boundary.cross(self.head, self.labels, group=self.ctx.group, source_info=source_info,
                                            report_dir=os.path.join(self.cfg.output_dir, "fusion"))
        if result is None:
            self.state.fused = True
            self.log.info(f"step {self.state.step}: method {self.cfg.method}, dataset-agnostic from here, no merge")
            return
        if not fused:
            self.log.info(f"step {self.state.step}: fusion declined, training stays dataset-aware: "
                          f"{result.threshold.reason}")
            return
        self.state.fused = True
        self.log.info(f"fusion at step {self.state.step}: {result.summary_line()}")
        self.save(reason="fusion")

    # ---- one step ------------------------------------------------------------------------------

    def train_step(self, batch) -> dict:
        """One step of `fftrain.training.step` on a loader batch (the loader already delivers
        channels-last images when the model wants them)."""
        step = self.state.step
        step_batch = StepBatch(batch.images, batch.fused, batch.dataset, self.data.sample_weight(batch))
        values = train_step(self.forward_model, self.head, self.optimizer, step_batch,
                            step_settings(self.cfg, step, self.dtype),
                            class_dataset=None if self.state.fused else self.labels.fused_dataset,
                            watch=self.watch, step=step)
        self.state.step += 1
        return values

    def check_deferred(self) -> None:
        """The per-step checks kept on the device, raised here (one host sync, collective): a bad label
        (ValueError from the head) or a non-finite loss (TrainingDiverged). Called at log steps and
        before every checkpoint, fusion and evaluation, so nothing written ever holds a diverged state."""
        self.head.raise_deferred_errors(self.labels.fused_dataset)
        bad_step = self.watch.first_bad(self.ctx.group)
        if bad_step is not None:
            raise TrainingDiverged(
                f"non-finite loss at step {bad_step}; the weights after it are discarded (detected at step "
                f"{self.state.step}, nothing was saved since); last good checkpoint: {self.last_checkpoint or 'none'}")

    # ---- the loop ------------------------------------------------------------------------------

    def train(self) -> dict:
        """The whole run; the loader (DALI pipeline) is closed here, while the process group still exists,
        not at interpreter exit, where a crash in its teardown would make torchrun restart a finished job."""
        try:
            return self._train()
        finally:
            self.loader.close()

    def _fusion_plan(self) -> str:
        """When the phase boundary comes, for the start line."""
        watch = self.boundary.readiness
        if watch is None:
            return f"fusion at step {self.cfg.t2_step}"
        return (f"fusion when the proxies are ready, checked every {watch.every} steps from step "
                f"{watch.floor_step}, at step {watch.ceiling_step} at the latest")

    def _train(self) -> dict:
        cfg = self.cfg
        total = cfg.optim.total_steps
        global_batch = cfg.data.batch_size * self.ctx.world_size
        self.log.info(f"training {total} steps from step {self.state.step}: {self.ctx.world_size} rank(s) x "
                      f"{cfg.data.batch_size} images, {self.head.num_classes} classes, phase {self.phase}, "
                      f"{self._fusion_plan()}")
        throughput = Throughput(self.state.step, total)
        data_wait = 0.0
        batches = iter(self.loader)
        stop = min(total, cfg.stop_at_step or total)
        while self.state.step < stop:
            if self.fusion_due():
                self.check_deferred()
                self.on_phase_boundary()
            fault_point("step", self.state.step + 1, self.ctx.rank)
            started = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - started
            values = self.train_step(batch)
            step = self.state.step
            if step % cfg.log.every == 0 or step == total:
                self.check_deferred()
                data_wait = self._log_step(values, throughput, global_batch, data_wait)
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < stop:
                self.save(reason="periodic")
            if cfg.log.eval_every and step % cfg.log.eval_every == 0 and step < total:
                self.check_deferred()
                self.evaluate()
        if self.state.step < total:
            self.save(reason="stop_at_step")
            self.log.info(f"stopped at step {self.state.step} (stop_at_step); resume with --resume auto")
            self.metrics.close()
            return {}
        if self.last_checkpoint is None or not self.last_checkpoint.endswith(f"{total:08d}"):
            self.save(reason="final")
        results = self.evaluate()
        self.metrics.close()
        return results

    def _log_step(self, values: dict, throughput: Throughput, global_batch: int, data_wait: float) -> float:
        step, total = self.state.step, self.cfg.optim.total_steps
        summary = torch.stack([values["loss_cls"], values["loss_dom"]]).float()
        all_reduce_(summary, self.ctx.group)
        summary /= self.ctx.world_size
        wait = torch.tensor([data_wait / max(self.cfg.log.every, 1) * 1000.0],
                            device=comm_device(self.ctx.group, self.ctx.device))
        all_reduce_(wait, self.ctx.group, op=ReduceOp.MAX)
        images_per_s, eta = throughput.report(step, global_batch)
        mem = (torch.cuda.max_memory_allocated(self.ctx.device) / 2**30 if self.ctx.device.type == "cuda"
               else _process_rss_gib())
        epoch = step / self.data.steps_per_epoch
        self.log.info(f"step {step:>6d}/{total} | ep {epoch:5.2f} | {self.phase:8s} | classes {self.head.num_classes} | "
                      f"loss cls {summary[0]:.4f} dom {summary[1]:.4f} | lr {values['lr']:.5f} | "
                      f"{images_per_s:7.1f} img/s | data {wait.item():6.1f} ms | mem {mem:5.2f} GiB | "
                      f"eta {format_duration(eta)}")
        self.metrics.write(step, {"loss/cls": summary[0].item(), "loss/dom": summary[1].item(), "lr": values["lr"],
                                  "throughput/images_per_s": images_per_s, "data_ms_max": wait.item(),
                                  "mem_gib": mem, "epoch": epoch, "classes": self.head.num_classes,
                                  "phase": self.phase})
        return 0.0

    # ---- verification --------------------------------------------------------------------------

    def evaluate(self) -> dict:
        if not self.cfg.data.verification:
            return {}
        from fftrain.evaluation.verification import evaluate_bin

        fault_point("eval", self.state.step, self.ctx.rank)
        self._sync_buffers()
        self.model.eval()
        results = {}
        for path in self.cfg.data.verification:
            r = evaluate_bin(self.model.backbone, path, device=self.ctx.device, group=self.ctx.group,
                             batch_size=self.cfg.data.batch_size)
            results[r["name"]] = r
            self.log.info(f"verification {r['name']} @ step {self.state.step}: acc {r['accuracy']:.4f} "
                          f"± {r['std']:.4f} ({r['num_pairs']} pairs)")
            self.metrics.write(self.state.step, {f"verification/{r['name']}/accuracy": r["accuracy"]})
        self.model.train()
        return results

    def _sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics everywhere: each rank's last training forward updated its own,
        so without this the ranks would evaluate (and export) slightly different networks."""
        for buffer in self.model.buffers():
            broadcast_(buffer.data, 0, self.ctx.group)

    # ---- checkpoints ---------------------------------------------------------------------------

    def _shape_meta(self) -> dict:
        cfg = self.cfg
        return {"backbone": cfg.model.backbone, "embedding_size": cfg.model.embedding_size,
                "num_classes_source": self.data.num_source_classes, "num_datasets": self.data.num_datasets,
                "datasets": [{"name": d.name, "num_classes": d.num_classes} for d in self.data.manifest.datasets]}

    def _state_templates(self) -> tuple[dict, dict]:
        model_sd, optim_sd = model_and_optimizer_state(self.ddp, self.optimizer)
        replicated = {MODEL: model_sd, OPTIMIZER: optim_sd, **self.labels.checkpoint_state()}
        sharded = {FC_WEIGHT: ShardedRows(self.head.weight.data, self.head.num_classes)}
        if self.head.momentum_buffer is not None:
            sharded[FC_MOMENTUM] = ShardedRows(self.head.momentum_buffer, self.head.num_classes)
        return replicated, sharded

    def save(self, reason: str) -> str:
        self.check_deferred()
        replicated, sharded = self._state_templates()
        meta = {**self._shape_meta(), "num_classes_fused": self.head.num_classes, "fused": self.state.fused,
                "phase": self.phase, "sample_step": self.head.sample_step, "reason": reason,
                "num_records": self.data.num_records,
                "config": config_to_dict(self.cfg)}
        rank_state = {"torch_rng": torch.get_rng_state()}
        if self.ctx.device.type == "cuda":
            rank_state["cuda_rng"] = torch.cuda.get_rng_state(self.ctx.device)
        path = save_checkpoint(self.checkpoint_root, self.state.step, ctx=self.ctx, replicated=replicated,
                               sharded=sharded, meta=meta, rank_state=rank_state,
                               keep_last=self.cfg.checkpoint.keep_last)
        self.last_checkpoint = path
        self.log.info(f"checkpoint ({reason}) step {self.state.step} -> {path}")
        return path

    def _restore(self, path: str, meta: dict) -> None:
        check_compatible(meta, self._shape_meta(), path)
        replicated, sharded = self._state_templates()  # the head was built with the meta's fused class count
        rank_state = load_checkpoint(path, ctx=self.ctx, replicated=replicated, sharded=sharded)
        set_model_and_optimizer_state(self.ddp, self.optimizer, replicated[MODEL], replicated[OPTIMIZER])
        self.labels.load_checkpoint_state(replicated)
        self.head.sample_step = meta["sample_step"]
        self.state = TrainState(step=meta["step"], fused=meta["fused"])
        if "torch_rng" in rank_state:
            torch.set_rng_state(rank_state["torch_rng"])
        if "cuda_rng" in rank_state and self.ctx.device.type == "cuda":
            torch.cuda.set_rng_state(rank_state["cuda_rng"], self.ctx.device)
        self.log.info(f"resumed from {path}: step {self.state.step}, phase {self.phase}, "
                      f"{meta['num_classes_fused']} classes, saved on {meta['world_size']} rank(s)")


def _process_rss_gib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except OSError:
        return math.nan
