"""The trainer's phase-boundary hook: run FaceFusion on the live head and swap the results in.

Collective: every rank calls it at the same step. After it returns, the head holds this rank's
rows of the fused classes (weight and momentum), the data's label map sends each source class to
its fused class, and the trainer's class->dataset table has one row per fused class.
"""

from __future__ import annotations

import os

from .fusion import FusionResult, SourceInfo, run_fusion


def fuse_running_head(trainer) -> FusionResult:
    cfg, head = trainer.cfg.fusion, trainer.head
    states = [head.momentum_buffer] if head.momentum_buffer is not None else []
    result = run_fusion(head.weight.data, states, class_dataset=trainer.class_dataset_fused,
                        label_map=trainer.data.labels.label_map, source_info=SourceInfo.from_manifest(trainer.data.manifest),
                        t1=cfg.t1, knn_k=cfg.knn_k, max_component=cfg.max_component,
                        same_dataset_policy=cfg.same_dataset_policy, allow_same_dataset=cfg.allow_same_dataset,
                        group=trainer.ctx.group, backend=cfg.backend,
                        report_dir=os.path.join(trainer.cfg.output_dir, "fusion"))
    head.reset_classes(result.num_classes_new, result.new_local_weight, result.new_states[0] if states else None)
    trainer.data.labels.swap_label_map(result.new_label_map)
    trainer.class_dataset_fused = result.new_class_dataset.to(trainer.ctx.device)
    return result
