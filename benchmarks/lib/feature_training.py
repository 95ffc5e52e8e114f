"""Training on a feature-level world with the product's step: the method's run config from the trainer's own
`TrainConfig` (`method_config`), one run of `fftrain.training.step.train_step` on in-memory batches with the
trainer's fusion swap at T2 (`train_run`), what T2 looks like (proxy geometry, the T1 sweep of fusion's plan), the
held-out evaluation, and the world's and the loop's command-line flags (`add_world_args`)."""

from __future__ import annotations

import time

import numpy as np

from benchmarks.lib.metrics import all_pairs_metrics


METHODS = ("naive", "naive0", "dail", "facefusion", "interclass")


T1_SWEEP = (0.5, 0.6, 0.7, 0.8)



def build_backbone(input_dim: int, dim: int, width: int):
    from torch import nn

    return nn.Sequential(nn.Linear(input_dim, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, dim), nn.BatchNorm1d(dim))



def method_config(method: str, args, seed: int = 0):
    """The method's run config, the trainer's own (fftrain.config.TrainConfig): its phases, head, GRL, fusion
    and optimiser; what is not set here is the trainer's default (e.g. optim.grad_clip unless --grad-clip)."""
    from fftrain.config import config_from_dict

    steps = args.steps
    milestones = sorted({max(1, round(steps * f / 480)) for f in (80, 140, 200)})
    return config_from_dict({
        "method": method, "seed": seed,
        "model": {"embedding_size": args.dim},
        "head": {"scale": args.scale, "m": args.margin, "proxy_norm": args.proxy_norm,
                 "interclass_threshold": args.interclass_threshold if method == "interclass" else 0.0},
        "fusion": {"t1": args.t1, "t2": args.t2, "allow_same_dataset": args.scope == "all", "backend": "torch"},
        "grl": {"weight": args.grl_weight[method], "start_step": round(args.grl_start[method] * steps), "hidden": 64},
        "optim": {"lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4, "total_steps": steps,
                  "lr_milestones": milestones, "grad_clip": args.grad_clip}})



def proxy_geometry(weight, split: dict, label_map: np.ndarray) -> dict:
    """Figure 3 at T2: each class's cosine to its true duplicate (if any) and its top-1 cosine to a proxy of another
    subset that is not its duplicate."""
    import torch

    p = torch.nn.functional.normalize(weight.detach().float(), dim=1)
    sims = (p @ p.T).numpy()
    table = split["class_dataset"]
    twin = np.full(len(table), -1)
    for a, b in split["truth"]:
        twin[a], twin[b] = b, a
    other = table[None, :] != table[:, None]
    rows = np.arange(len(table))
    dup = sims[rows[twin >= 0], twin[twin >= 0]]
    masked = np.where(other, sims, -np.inf)
    masked[rows[twin >= 0], twin[twin >= 0]] = -np.inf
    top1 = masked.max(axis=1)
    norms = torch.linalg.vector_norm(weight.detach().float(), dim=1).numpy()
    return {"duplicate": dup, "top1_non_duplicate": top1, "proxy_norm_median": float(np.median(norms))}



def quantiles(values) -> dict:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return {}
    return {f"q{int(q * 100):02d}": float(np.quantile(values, q)) for q in (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)}



def train_run(world: dict, split: dict, method: str, seed: int, args, dynamics_only: bool = False,
              keep_model: bool = False) -> dict:
    """One training run of the product's step (fftrain.training.step) on in-memory batches; returns the metrics
    (and, for FaceFusion, what was seen at T2). A split may carry "weight" (a loss weight per entry of
    split["image"]; absent: all 1); keep_model adds out["model"] = (backbone, head) in eval mode."""
    import torch

    from fftrain.data.label_space import LabelSpace
    from fftrain.model.embedding import EmbeddingModel
    from fftrain.model.grl import DatasetClassifier
    from fftrain.training.step import (NonFiniteWatch, StepBatch, build_head, build_optimizer, step_settings,
                                       swap_in_fusion, train_step)
    from fftrain.evaluation.merge_quality import merge_quality

    cfg = method_config(method, args, seed)
    torch.manual_seed(seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    backbone = build_backbone(world["x"].shape[1], args.dim, args.width)
    model = EmbeddingModel.from_parts(backbone, DatasetClassifier(args.dim, args.k, hidden=cfg.grl.hidden,
                                                                  lam=cfg.grl.weight))
    optimizer = build_optimizer(model, cfg)
    head = build_head(cfg, split["num_classes"], group=None, device="cpu", compute_dtype=None, init_std=args.init_std)
    x_all = torch.from_numpy(world["x"])
    images, labels = torch.from_numpy(split["image"]), torch.from_numpy(split["label"])
    weights = torch.from_numpy(np.asarray(split["weight"], np.float32)) if "weight" in split else None
    space = LabelSpace(split["class_dataset"])
    fused = cfg.agnostic_from_start
    stop = cfg.t2_step if dynamics_only else cfg.optim.total_steps
    watch = NonFiniteWatch("cpu")
    gen = torch.Generator().manual_seed(seed)
    order, cursor = torch.randperm(len(images), generator=gen), 0
    out = {"method": method, "seed": seed}
    for step in range(stop):
        if step == cfg.t2_step:
            _raise_if_diverged(watch, method, seed)
            if cfg.merges:
                out["t2"] = at_boundary(head, split, space, cfg)
                out["rejected"] = len(swap_in_fusion(head, space, cfg.fusion, group=None).rejected)
            fused = True
        if cursor + args.batch > len(order):
            order, cursor = torch.randperm(len(images), generator=gen), 0
        idx = order[cursor:cursor + args.batch]
        cursor += args.batch
        dataset, fused_class = space.lookup(labels[idx])
        batch = StepBatch(x_all[images[idx]], fused_class, dataset, None if weights is None else weights[idx])
        train_step(model, head, optimizer, batch, step_settings(cfg, step),
                   class_dataset=None if fused else space.fused_dataset, watch=watch, step=step)
    _raise_if_diverged(watch, method, seed)
    if dynamics_only:
        out["t2"] = at_boundary(head, split, space, cfg)
        out["t2"]["alignment"] = proxy_alignment(backbone, head, x_all, images, labels)
        out["cpu_seconds"] = time.process_time() - cpu_started
        return out
    out.update(evaluate(backbone, world))
    groups = {}
    for source_class, f in enumerate(space.label_map.tolist()):
        groups.setdefault(f, []).append(source_class)
    quality = merge_quality([g for g in groups.values() if len(g) > 1], split["truth"])
    out["merge"] = quality.to_dict()
    out["classes"] = head.num_classes
    out["classes_in_softmax"] = (int(np.bincount(split["class_dataset"]).max()) if method == "dail"
                                 else head.num_classes)
    out["seconds"] = time.perf_counter() - started
    out["cpu_seconds"] = time.process_time() - cpu_started
    if keep_model:
        out["model"] = (backbone.eval(), head.eval())
    return out



def _raise_if_diverged(watch, method: str, seed: int) -> None:
    bad = watch.first_bad(None)
    if bad is not None:
        raise RuntimeError(f"{method} seed {seed}: non-finite loss at step {bad}")



def proxy_alignment(backbone, head, x_all, images, labels) -> dict:
    """Quantiles of each proxy's cosine to its class's mean embedding: whether the proxies have reached their
    classes, the precondition for Figure 3's two clusters."""
    import torch

    backbone.eval()
    with torch.no_grad():
        emb = torch.nn.functional.normalize(backbone(x_all[images]), dim=1)
    backbone.train()
    means = torch.zeros(head.num_classes, emb.shape[1]).index_add_(0, labels, emb)
    cos = torch.nn.functional.cosine_similarity(means, head.weight.detach(), dim=1)
    return quantiles(cos.numpy())



def at_boundary(head, split, space, cfg) -> dict:
    """What T2 looks like: proxy geometry (Figure 3) and, for the T1 sweep, the merge set at each T1 (fusion's
    plan only: nothing changes)."""
    import dataclasses

    from fftrain.fusion import plan_fusion

    geometry = proxy_geometry(head.weight, split, space.label_map.numpy())
    sweep = {}
    for t1 in T1_SWEEP:
        planned = plan_fusion(head.weight.data, class_dataset=space.fused_dataset, label_map=None,
                              config=dataclasses.replace(cfg.fusion, t1=t1))
        old_to_new = planned.old_to_new.numpy()
        merged = sorted(tuple(sorted(np.flatnonzero(old_to_new == i).tolist()))
                        for i in range(planned.plan.num_classes_new))
        sweep[str(t1)] = [list(g) for g in merged if len(g) > 1]
    return {"duplicate": geometry["duplicate"].tolist(), "top1_non_duplicate": geometry["top1_non_duplicate"].tolist(),
            "proxy_norm_median": geometry["proxy_norm_median"], "merges_by_t1": sweep}



def evaluate(backbone, world: dict) -> dict:
    """TAR@FAR over all pairs of held-out images and rank-1 identification (first image of each id = gallery)."""
    import torch

    backbone.eval()
    with torch.no_grad():
        emb = torch.nn.functional.normalize(backbone(torch.from_numpy(world["x_heldout"])), dim=1)
    backbone.train()
    return all_pairs_metrics(emb, torch.from_numpy(world["y_heldout"]))



def add_world_args(p) -> None:
    """The world's and the training loop's flags with fixed defaults (shared with other feature-level experiments)."""
    p.add_argument("--t1", type=float, default=0.7, help="FaceFusion's merge threshold (default 0.7, the paper's)")
    p.add_argument("--t2", type=float, default=0.21, help="fraction of steps before fusion (default 0.21)")
    p.add_argument("--scope", choices=("all", "cross"), default="all",
                   help="fusion candidates: all pairs of proxies (the paper's Eq. 4; default) or cross-subset only")
    p.add_argument("--latent", type=int, default=32, help="identity latent dimensions (default 32)")
    p.add_argument("--nuisance", type=int, default=8, help="per-image nuisance dimensions (default 8)")
    p.add_argument("--input-dim", type=int, default=128, help="rendering dimensions (default 128)")
    p.add_argument("--nuisance-scale", type=float, default=0.5, help="norm of the per-image nuisance (default 0.5)")
    p.add_argument("--render-gain", type=float, default=2.0,
                   help="std of the rendering's pre-activations (default 2: tanh often saturated)")
    p.add_argument("--family-size", type=int, default=4, help="identities per look-alike family (default 4)")
    p.add_argument("--family-sim", type=float, default=0.5, help="latent cosine of look-alikes (default 0.5)")
    p.add_argument("--sigma", type=float, default=0.6, help="per-image latent noise (default 0.6)")
    p.add_argument("--pixel-noise", type=float, default=0.1, help="rendering noise (default 0.1)")
    p.add_argument("--dim", type=int, default=64, help="embedding dimensions (default 64)")
    p.add_argument("--width", type=int, default=256, help="MLP width (default 256)")
    p.add_argument("--lr", type=float, default=0.1, help="backbone and head lr before the milestones (default 0.1)")
    p.add_argument("--scale", type=float, default=64.0, help="ArcFace s (default 64, the paper's)")
    p.add_argument("--margin", type=float, default=0.5, help="ArcFace m (default 0.5, the paper's)")
    p.add_argument("--proxy-norm", type=float, default=1.0,
                   help="proxies renormalised to this norm after each step; 0: plain SGD (default 1)")
    p.add_argument("--grad-clip", type=float, default=_trainer_grad_clip(),
                   help="max global grad norm of the backbone and dataset classifier, 0: none (default: the "
                        "trainer's, optim.grad_clip %(default)g; runs before 2026-12-05 had none)")
    p.add_argument("--init-std", type=float, default=0.01, help="proxy init std when --proxy-norm 0 (default 0.01)")
    p.add_argument("--interclass-threshold", type=float, default=0.4,
                   help="the 'interclass' method's cosine threshold (default 0.4)")
    p.add_argument("--grl-weight", default="0", metavar="W|METHOD=W,...",
                   help="gradient-reversal weight: one for every method, or per method, e.g. dail=0.1,facefusion=0.1 "
                        "(unnamed methods 0; default 0 for all: the paper's §4.5 setting)")
    p.add_argument("--grl-start", default="0", metavar="F|METHOD=F,...",
                   help="fraction of the steps before the GRL starts, for all or per method (default 0)")



def _trainer_grad_clip() -> float:
    from fftrain.config import OptimConfig

    return OptimConfig().grad_clip



def per_method(text: str, flag: str, *, low: float, high: float) -> dict[str, float]:
    """'0.1' (every method) or 'dail=0.1,facefusion=0.2' (the others 0) -> {method: value}."""
    if "=" not in text:
        values = dict.fromkeys(METHODS, _number(text, flag))
    else:
        values = dict.fromkeys(METHODS, 0.0)
        for item in text.split(","):
            method, _, number = item.partition("=")
            if method.strip() not in METHODS:
                raise ValueError(f"{flag}: unknown method {method.strip()!r}; available: {list(METHODS)}")
            values[method.strip()] = _number(number, flag)
    bad = {m: v for m, v in values.items() if not low <= v <= high}
    if bad:
        raise ValueError(f"{flag}: {bad} outside [{low:g}, {high:g}]")
    return values



def _number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not a number") from None
