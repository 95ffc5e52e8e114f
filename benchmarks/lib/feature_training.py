"""Training on a feature-level world with the product's step: the method's run config from the trainer's own
`TrainConfig` (`method_config`), one run of `fftrain.training.step.train_step` on in-memory batches with the
trainer's fusion swap at T2 (`train_run`), what T2 looks like (proxy geometry, the T1 sweep of fusion's plan), the
held-out evaluation, and the world's and the loop's command-line flags (`add_world_args`)."""

from __future__ import annotations

import time

import numpy as np

from benchmarks.lib.metrics import all_pairs_metrics


ARMS = {"naive": "naive", "naive0": "naive0", "dail": "dail", "facefusion": "facefusion",
        "facefusion_auto": "facefusion", "facefusion_auto_sgd": "facefusion", "interclass": "interclass",
        "peer": "naive0"}
"""Experiment arm -> the trainer's method. facefusion: fixed T1 / T2 (--t1 / --t2); facefusion_auto: the
product's fusion.t1 / fusion.t2 'auto'; facefusion_auto_sgd: the same with plain-SGD proxies (head.proxy_norm 0,
init N(0, 0.01^2)) whatever --proxy-norm says; peer: insightface arcface_torch's head (benchmarks/lib/peer.py) with
every source class in one softmax from step 0, as an arcface_torch user mixes datasets today."""
METHODS = tuple(ARMS)

T1_GRID = tuple(round(0.40 + 0.01 * i, 2) for i in range(56))
"""The fixed T1 values of the hindsight sweep at fusion time (0.40-0.95, step 0.01)."""



def build_backbone(input_dim: int, dim: int, width: int):
    from torch import nn

    return nn.Sequential(nn.Linear(input_dim, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, dim), nn.BatchNorm1d(dim))



def run_steps(args, split: dict) -> int:
    """Steps of a run: --passes over the split's images (so T2 lands after the same passes whatever N is), or
    --steps when no --passes is given."""
    passes = getattr(args, "passes", None)
    if passes:
        return max(1, round(passes * len(split["image"]) / args.batch))
    return args.steps


def method_config(arm: str, args, seed: int = 0, steps: int | None = None):
    """The arm's run config, the trainer's own (fftrain.config.TrainConfig): its phases, head, GRL, fusion
    and optimiser; what is not set here is the trainer's default (e.g. optim.grad_clip unless --grad-clip;
    every fusion.* of the auto arm but its readiness interval)."""
    from fftrain.config import config_from_dict

    steps = steps or args.steps
    method = ARMS[arm]
    milestones = sorted({max(1, round(steps * f / 480)) for f in (80, 140, 200)})
    fusion = {"t1": args.t1, "t2": args.t2, "allow_same_dataset": args.scope == "all", "backend": "torch",
              "mutual_nn": bool(getattr(args, "mutual_nn", False))}
    if arm.startswith("facefusion_auto"):
        every = max(1, round(steps * getattr(args, "readiness_every", 0.025)))
        fusion.update(t1="auto", t2="auto", readiness_every=every)
        if getattr(args, "no_valley", None):
            fusion["no_valley"] = args.no_valley
    return config_from_dict({
        "method": method, "seed": seed,
        "model": {"embedding_size": args.dim},
        "head": {"scale": args.scale, "m": args.margin,
                 "proxy_norm": 0.0 if arm == "facefusion_auto_sgd" else args.proxy_norm,
                 "interclass_threshold": args.interclass_threshold if method == "interclass" else 0.0},
        "fusion": fusion,
        "grl": {"weight": args.grl_weight[arm], "start_step": round(args.grl_start[arm] * steps), "hidden": 64},
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
    top1_all = np.where(other, sims, -np.inf).max(axis=1)
    norms = torch.linalg.vector_norm(weight.detach().float(), dim=1).numpy()
    return {"duplicate": dup, "top1_non_duplicate": top1, "top1_all": top1_all,
            "proxy_norm_median": float(np.median(norms))}



def quantiles(values) -> dict:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return {}
    return {f"q{int(q * 100):02d}": float(np.quantile(values, q)) for q in (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)}



def train_run(world: dict, split: dict, arm: str, seed: int, args, dynamics_only: bool = False,
              keep_model: bool = False) -> dict:
    """One training run of the product's step (fftrain.training.step) and phase boundary (`PhaseBoundary`:
    T2 and T1 fixed or auto, as the trainer) on in-memory batches; returns the metrics and, for FaceFusion,
    what was seen at the boundary. dynamics_only: stop at the boundary. A split may carry "weight" (a loss
    weight per entry of split["image"]; absent: all 1); keep_model adds out["model"] = (backbone, head)."""
    import torch

    from fftrain.data.label_space import LabelSpace
    from fftrain.model.embedding import EmbeddingModel
    from fftrain.model.grl import DatasetClassifier
    from fftrain.training.step import (NonFiniteWatch, PhaseBoundary, StepBatch, build_optimizer, step_settings,
                                       train_step)

    steps = run_steps(args, split)
    cfg = method_config(arm, args, seed, steps)
    torch.manual_seed(seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    backbone = build_backbone(world["x"].shape[1], args.dim, args.width)
    model = EmbeddingModel.from_parts(backbone, DatasetClassifier(args.dim, args.k, hidden=cfg.grl.hidden,
                                                                  lam=cfg.grl.weight))
    optimizer = build_optimizer(model, cfg)
    head = _build_head(arm, cfg, split, args)
    x_all = torch.from_numpy(world["x"])
    images, labels = torch.from_numpy(split["image"]), torch.from_numpy(split["label"])
    weights = torch.from_numpy(np.asarray(split["weight"], np.float32)) if "weight" in split else None
    space = LabelSpace(split["class_dataset"])
    boundary = PhaseBoundary(cfg)
    head.track_alignment = boundary.watches_alignment
    fused = cfg.agnostic_from_start
    watch = NonFiniteWatch("cpu")
    gen = torch.Generator().manual_seed(seed)
    order, cursor = torch.randperm(len(images), generator=gen), 0
    out = {"method": arm, "seed": seed, "steps": steps}
    peer_t2 = round(args.t2 * steps) if arm == "peer" else None
    for step in range(steps):
        if step == peer_t2:  # where the fixed arm fuses: would the peer's proxies be ready?
            out["t2"] = {**geometry_only(head, split, space, cfg), "passes": step * args.batch / len(images)}
        if not fused and boundary.due(head, space, step, group=None):
            _raise_if_diverged(watch, arm, seed)
            out["boundary"] = {"step": step, "passes": step * args.batch / len(images)}
            if cfg.merges:
                out["t2"] = at_boundary(head, split, space, cfg)
            if dynamics_only:
                break
            fused, result = boundary.cross(head, space, group=None)
            out["boundary"].update(_boundary_record(boundary, result, space, split, out.get("t2")))
        if cursor + args.batch > len(order):
            order, cursor = torch.randperm(len(images), generator=gen), 0
        idx = order[cursor:cursor + args.batch]
        cursor += args.batch
        dataset, fused_class = space.lookup(labels[idx])
        batch = StepBatch(x_all[images[idx]], fused_class, dataset, None if weights is None else weights[idx])
        train_step(model, head, optimizer, batch, step_settings(cfg, step),
                   class_dataset=None if fused else space.fused_dataset, watch=watch, step=step)
    _raise_if_diverged(watch, arm, seed)
    if dynamics_only:
        out["t2"]["alignment"] = proxy_alignment(backbone, head, x_all, images, labels)
        out["cpu_seconds"] = time.process_time() - cpu_started
        return out
    out.update(evaluate(backbone, world))
    out["merge"] = merge_quality(applied_groups(space), split["truth"]).to_dict()
    out["classes"] = head.num_classes
    out["classes_in_softmax"] = (int(np.bincount(split["class_dataset"]).max()) if not fused
                                 else head.num_classes)
    out["seconds"] = time.perf_counter() - started
    out["cpu_seconds"] = time.process_time() - cpu_started
    if keep_model:
        out["model"] = (backbone.eval(), head.eval())
    return out


def _build_head(arm: str, cfg, split: dict, args):
    from fftrain.training.step import build_head

    if arm != "peer":
        return build_head(cfg, split["num_classes"], group=None, device="cpu", compute_dtype=None,
                          init_std=args.init_std)
    from benchmarks.lib.peer import PeerHead, peer_source

    source = peer_source()
    if source.missing:
        raise PeerUnavailable(source.missing)
    return PeerHead(source, split["num_classes"], args.dim, scale=args.scale, margin=args.margin,
                    momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay, lr=cfg.optim.lr)


class PeerUnavailable(RuntimeError):
    """The peer's code could not be fetched: its arm is reported as not run."""


def applied_groups(space) -> list[list[int]]:
    """Source classes merged into one fused class by the label space's map (groups of two or more)."""
    return [g for g in _groups_of(space.label_map.numpy()) if len(g) > 1]


def merge_quality(groups, truth):
    from fftrain.evaluation.merge_quality import merge_quality as quality

    return quality(groups, truth)


def _boundary_record(boundary, result, space, split: dict, t2: dict | None) -> dict:
    """What the boundary decided: the readiness checks, the T1 decision, and the applied merge set against
    the best fixed T1 in hindsight at the same proxies."""
    record = {"declined": boundary.declined,
              "readiness": [c.to_dict() for c in boundary.readiness.checks] if boundary.readiness else None}
    if result is None:
        return record
    record["rejected"] = len(result.rejected)
    record["threshold"] = result.threshold.to_dict() if result.threshold is not None else None
    if t2 is not None:
        from fftrain.evaluation.merge_quality import group_pairs

        applied = group_pairs(applied_groups(space))
        best = group_pairs(t2["merges_at_best"])
        union = applied | best
        record["vs_best_fixed_t1"] = {"best_t1": float(t2["best_t1"]), "best_f1": t2["f1_by_t1"][t2["best_t1"]],
                                      "one_minus_jaccard": (1 - len(applied & best) / len(union)) if union else 0.0}
    return record


def f1_of(quality) -> float:
    p, r = quality.precision, quality.recall
    return 0.0 if not p or not r else 2 * p * r / (p + r)


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
    """What T2 looks like: proxy geometry (Figure 3) and fusion's plan (nothing changes) at every fixed T1 of
    T1_GRID: its merge set and pairwise F1 against the planted truth, and the best T1 in hindsight."""
    import dataclasses

    from fftrain.fusion import plan_fusion

    geometry = proxy_geometry(head.weight, split, space.label_map.numpy())
    merges, f1, predicted = {}, {}, {}
    for t1 in T1_GRID:
        planned = plan_fusion(head.weight.data, class_dataset=space.fused_dataset, label_map=None,
                              config=dataclasses.replace(cfg.fusion, t1=t1))
        old_to_new = planned.old_to_new.numpy()
        groups = [g for g in _groups_of(old_to_new) if len(g) > 1]
        quality = merge_quality(groups, split["truth"])
        merges[str(t1)], f1[str(t1)], predicted[str(t1)] = groups, f1_of(quality), quality.predicted_pairs
    # ties (e.g. no true pair at r = 0: F1 0 everywhere): the fewest merged pairs, then the T1 nearest the paper's
    best = max(f1, key=lambda t: (f1[t], -predicted[t], -abs(float(t) - 0.7)))
    return {"duplicate": geometry["duplicate"].tolist(), "top1_non_duplicate": geometry["top1_non_duplicate"].tolist(),
            "proxy_norm_median": geometry["proxy_norm_median"],
            "f1_by_t1": f1, "best_t1": best,
            "merges_at_best": merges[best]}


def geometry_only(head, split, space, cfg) -> dict:
    """The peer's proxies where the fixed arm would fuse: Figure 3's cosines and the auto T1's verdict."""
    import dataclasses

    from fftrain.fusion.threshold import choose_t1

    geometry = proxy_geometry(head.weight, split, space.label_map.numpy())
    decision = choose_t1(geometry["top1_all"], dataclasses.replace(cfg.fusion, t1="auto"))
    return {"duplicate": geometry["duplicate"].tolist(), "top1_non_duplicate": geometry["top1_non_duplicate"].tolist(),
            "proxy_norm_median": geometry["proxy_norm_median"], "auto_t1": decision.to_dict()}


def _groups_of(old_to_new: np.ndarray) -> list[list[int]]:
    order = np.argsort(old_to_new, kind="stable")
    cuts = np.flatnonzero(np.diff(old_to_new[order])) + 1
    return [g.tolist() for g in np.split(order, cuts)]


def evaluate(backbone, world: dict) -> dict:
    """TAR@FAR over all pairs of held-out images and rank-1 identification (first image of each id = gallery)."""
    import torch

    backbone.eval()
    with torch.no_grad():
        emb = torch.nn.functional.normalize(backbone(torch.from_numpy(world["x_heldout"])), dim=1)
    backbone.train()
    return all_pairs_metrics(emb, torch.from_numpy(world["y_heldout"]))



def add_world_args(p, defaults: bool = True) -> None:
    """The world's and the training loop's flags (shared with other feature-level experiments). defaults=False
    leaves the world-defining ones (WORLDS' keys) None, for the caller to fill from a named world."""
    from benchmarks.lib.worlds import WORLDS

    world = WORLDS["lookalike"] if defaults else dict.fromkeys(WORLDS["lookalike"])
    p.add_argument("--t1", type=float, default=0.7, help="FaceFusion's merge threshold (default 0.7, the paper's)")
    p.add_argument("--t2", type=float, default=0.21, help="fraction of steps before fusion (default 0.21)")
    p.add_argument("--scope", choices=("all", "cross"), default=_shipped_scope(),
                   help="fusion candidates: all pairs of proxies (the paper's Eq. 4) or cross-subset only (default: "
                        "the shipped fusion.allow_same_dataset, %(default)s; runs before 2026-12-05 used all)")
    p.add_argument("--latent", type=int, default=world["latent"],
                   help="identity latent dimensions (default: the world's)")
    p.add_argument("--nuisance", type=int, default=8, help="per-image nuisance dimensions (default 8)")
    p.add_argument("--input-dim", type=int, default=128, help="rendering dimensions (default 128)")
    p.add_argument("--nuisance-scale", type=float, default=0.5, help="norm of the per-image nuisance (default 0.5)")
    p.add_argument("--render-gain", type=float, default=2.0,
                   help="std of the rendering's pre-activations (default 2: tanh often saturated)")
    p.add_argument("--family-size", type=int, default=world["family_size"],
                   help="identities per look-alike family (default: the world's)")
    p.add_argument("--family-sim", type=float, default=world["family_sim"],
                   help="latent cosine of look-alikes (default: the world's)")
    p.add_argument("--sigma", type=float, default=0.6, help="per-image latent noise (default 0.6)")
    p.add_argument("--pixel-noise", type=float, default=0.1, help="rendering noise (default 0.1)")
    p.add_argument("--dim", type=int, default=world["dim"], help="embedding dimensions (default: the world's)")
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



def _shipped_scope() -> str:
    from fftrain.config import FusionConfig

    return "all" if FusionConfig().allow_same_dataset else "cross"


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
