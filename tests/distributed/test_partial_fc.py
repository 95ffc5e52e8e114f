"""PartialFCHead against a single-process reference written from the formula with F.cross_entropy.

Each world size (no group, and gloo groups of 1, 2 and 4 ranks) is one spawn that runs every
scenario; the parent compares the results with the reference in float64. A tiny linear
"backbone" x = inp @ P checks the gradient convention the way DDP sees it: the rank-average of
dP equals dL/dP of the global-mean loss.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dist_harness import run_distributed
from fftrain.distributed.class_sharding import shard_ranges
from fftrain.distributed import DistContext, all_reduce_
from fftrain.head.margins import ArcFace, CombinedMargin, CosFace
from fftrain.head.partial_fc import PartialFCHead, init_proxies
from partial_fc_helpers import D, make_problem

ATOL, RTOL = 1e-10, 1e-9
MARGINS = {"arcface": ArcFace(scale=8.0, margin=0.4), "cosface": CosFace(scale=8.0, margin=0.3),
           "combined": CombinedMargin(scale=8.0, m1=0.9, m2=0.2, m3=0.1)}


def reference(problem, margin, *, aware=False, classes=None, W=None, interclass=0.0):
    """Loss and gradients (x, P, W) of the global-mean loss, from the formula."""
    P = problem["P"].clone().requires_grad_()
    W = (problem["W"] if W is None else W).clone().requires_grad_()
    x = problem["inp"] @ P
    x.retain_grad()
    labels, table = problem["labels"], problem["class_dataset"]
    cols = torch.arange(len(W)) if classes is None else classes
    target = torch.searchsorted(cols, labels)
    assert torch.equal(cols[target], labels)
    cos = F.normalize(x) @ F.normalize(W[cols]).T
    cos_y = cos.gather(1, target[:, None])
    theta = torch.acos(cos_y)
    if isinstance(margin, ArcFace):
        pos = torch.cos(theta + margin.margin)
    elif isinstance(margin, CosFace):
        pos = cos_y - margin.margin
    else:
        pos = torch.cos(margin.m1 * theta + margin.m2) - margin.m3
    onehot = F.one_hot(target, len(cols)).bool()
    logits = margin.scale * torch.where(onehot, pos, cos)
    if interclass:
        logits = logits.masked_fill((cos.detach() > interclass) & ~onehot, -math.inf)
    if aware:
        other = table[cols][None, :] != table[labels][:, None]
        logits = logits.masked_fill(other & ~onehot, -math.inf)
    loss = F.cross_entropy(logits, target)
    loss.backward()
    return {"loss": loss.item(), "x": x.grad, "P": P.grad, "W": W.grad}


SCENARIOS = [
    dict(name="arcface", seed=1, C=11, B=3, margin="arcface"),
    dict(name="cosface", seed=2, C=11, B=3, margin="cosface"),
    dict(name="combined", seed=3, C=11, B=3, margin="combined"),
    dict(name="dail", seed=4, C=13, B=4, margin="arcface", aware=True),
    dict(name="dail_derived_ids", seed=4, C=13, B=4, margin="arcface", aware=True, pass_ids=False),
    dict(name="no_positives_off_rank0", seed=5, C=11, B=3, margin="arcface", label_pool=[0, 1, 2]),
    dict(name="batch_of_one", seed=6, C=11, B=1, margin="cosface", aware=True),
    dict(name="dail_two_datasets", seed=10, C=13, B=4, margin="arcface", aware=True, label_datasets=(0, 1)),
    dict(name="sampled", seed=7, C=40, B=3, margin="arcface", sample_rate=0.5),
    dict(name="sampled_dail", seed=8, C=40, B=3, margin="cosface", sample_rate=0.3, aware=True),
    dict(name="interclass", seed=11, C=13, B=4, margin="arcface", interclass=0.3),
    dict(name="interclass_dail", seed=12, C=13, B=4, margin="cosface", interclass=0.2, aware=True),
    dict(name="interclass_sampled", seed=13, C=40, B=3, margin="arcface", sample_rate=0.5, interclass=0.25),
]
_DAIL, _INTRUDER, _SAMPLED = ([s["name"] for s in SCENARIOS].index(n)
                               for n in ("dail", "dail_two_datasets", "sampled"))


def _local(problem, ctx, batch):
    rows = slice(ctx.rank * batch, (ctx.rank + 1) * batch)
    return problem["inp"][rows], problem["labels"][rows]


def _head(ctx, problem, margin, sample_rate=1.0, seed=0, interclass=0.0):
    head = PartialFCHead(len(problem["W"]), D, margin=margin, group=ctx.group, sample_rate=sample_rate,
                         seed=seed, dtype=torch.float64, momentum=0.0, weight_decay=0.0,
                         interclass_threshold=interclass)
    head.weight.data.copy_(problem["W"][head.start:head.end])
    return head


def _step(ctx, head, problem, batch, aware, pass_ids=True):
    """One forward/backward; this rank's loss and gradients, dP averaged as DDP would."""
    inp, labels = _local(problem, ctx, batch)
    P = problem["P"].clone().requires_grad_()
    x = inp @ P
    x.retain_grad()
    table = problem["class_dataset"] if aware else None
    ids = table[labels] if aware and pass_ids else None
    loss = head(x, labels, ids, class_dataset=table)
    loss.backward()
    dP = all_reduce_(P.grad.clone(), ctx.group) / ctx.world_size
    return {"loss": loss.item(), "x": x.grad, "P": dP, "rows": head.sampled_classes(),
            "W": head.active_weight.grad.clone()}


def _run_scenarios(ctx: DistContext, problems):
    out = {}
    for spec, problem in zip(SCENARIOS, problems):
        head = _head(ctx, problem, MARGINS[spec["margin"]], spec.get("sample_rate", 1.0),
                     interclass=spec.get("interclass", 0.0))
        out[spec["name"]] = _step(ctx, head, problem, spec["B"], spec.get("aware", False),
                                  spec.get("pass_ids", True))
    out["mode_switch"] = _mode_switch(ctx, problems[_DAIL])
    out["intruder"] = _intruder(ctx, problems[_INTRUDER])
    out["same_seed"] = _same_seed(ctx, problems[_SAMPLED])
    out["errors"] = _errors(ctx, problems[_DAIL])
    return out


def _mode_switch(ctx, problem):
    head = _head(ctx, problem, MARGINS["arcface"])
    batch = SCENARIOS[_DAIL]["B"]
    return [_step(ctx, head, problem, batch, aware) for aware in (True, False, True)]


def intruder_problem(problem):
    """The batch holds datasets 0 and 1 only; a class of dataset 2 becomes parallel to sample 0."""
    W = problem["W"].clone()
    intruder = int((problem["class_dataset"] == 2).nonzero()[0])
    x0 = problem["inp"][0] @ problem["P"]
    W[intruder] = x0 / x0.norm() * W[intruder].norm()
    return W, intruder


def _intruder(ctx, problem):
    W, _ = intruder_problem(problem)
    moved, batch = dict(problem, W=W), SCENARIOS[_INTRUDER]["B"]
    return {aware: [_step(ctx, _head(ctx, p, MARGINS["arcface"]), p, batch, aware) for p in (problem, moved)]
            for aware in (True, False)}


def _same_seed(ctx, problem):
    heads = [_head(ctx, problem, MARGINS["arcface"], sample_rate=0.5, seed=s) for s in (3, 3, 4)]
    batch = SCENARIOS[_SAMPLED]["B"]
    rows = [[_step(ctx, h, problem, batch, False)["rows"] for _ in range(2)] for h in heads]
    return {"rows": rows}


def _errors(ctx, problem):
    """Bad data on the last rank only: every rank must raise the same error (no hang)."""
    head = _head(ctx, problem, MARGINS["arcface"])
    C, last = len(problem["W"]), ctx.rank == ctx.world_size - 1
    inp, labels = _local(problem, ctx, SCENARIOS[_DAIL]["B"])
    table = problem["class_dataset"]
    ids = table[labels]
    cases = {
        "label_high": (labels.clone().index_fill_(0, torch.tensor([1]), C) if last else labels, None, None),
        "label_negative": (labels.clone().index_fill_(0, torch.tensor([0]), -1) if last else labels, None, None),
        "dataset_without_classes": (labels, ids.clone().fill_(7) if last else ids, table),
    }
    messages = {}
    for name, (lab, ds, tab) in cases.items():
        try:
            head(inp @ problem["P"], lab, ds, class_dataset=tab)
            messages[name] = None
        except ValueError as e:
            messages[name] = str(e)
    return messages


def _problems():
    return [make_problem(s["seed"], s["C"], 4 * s["B"], label_pool=s.get("label_pool"),
                         label_datasets=s.get("label_datasets")) for s in SCENARIOS]


def _assemble(results, C):
    """Per-rank results -> global loss, x grad / W, dP, and the [C, D] proxy gradient."""
    world = len(results)
    losses = [r["loss"] for r in results]
    assert max(losses) - min(losses) <= 1e-12, losses
    W_grad = torch.zeros(C, D, dtype=torch.float64)
    for r in results:
        W_grad[r["rows"]] = r["W"]
    x = torch.cat([r["x"] for r in results]) / world
    for r in results[1:]:
        torch.testing.assert_close(r["P"], results[0]["P"], atol=1e-12, rtol=0)
    return {"loss": losses[0], "x": x, "P": results[0]["P"], "W": W_grad}


def _assert_matches(got, ref, what):
    assert got["loss"] == pytest.approx(ref["loss"], rel=RTOL, abs=ATOL), what
    for key in ("x", "P", "W"):
        torch.testing.assert_close(got[key], ref[key], atol=ATOL, rtol=RTOL, msg=f"{what}: d{key}")


def _run(world_size, problems):
    """Each scenario's per-rank results; world_size None: in this process, with no group."""
    if world_size is None:
        return [_run_scenarios(DistContext(0, 0, 1, torch.device("cpu"), None), problems)]
    return run_distributed(_run_scenarios, world_size, args=(problems,))


@pytest.fixture(scope="module", params=[None, 1, 2, 4], ids=["nogroup", "w1", "w2", "w4"])
def world(request):
    """(world size, problems, per-rank results) for one spawn of every scenario."""
    problems = _problems()
    trim = [dict(p) for p in problems]
    batch = [s["B"] for s in SCENARIOS]
    world_size = request.param or 1
    for p, b in zip(trim, batch):
        for key in ("inp", "labels"):
            p[key] = p[key][:world_size * b]
    return world_size, trim, _run(request.param, trim)


@pytest.mark.parametrize("spec", [s for s in SCENARIOS if "sample_rate" not in s], ids=lambda s: s["name"])
def test_full_softmax_matches_reference(world, spec):
    _, problems, results = world
    problem = problems[SCENARIOS.index(spec)]
    got = _assemble([r[spec["name"]] for r in results], len(problem["W"]))
    ref = reference(problem, MARGINS[spec["margin"]], aware=spec.get("aware", False),
                    interclass=spec.get("interclass", 0.0))
    _assert_matches(got, ref, spec["name"])


@pytest.mark.parametrize("spec", [s for s in SCENARIOS if "sample_rate" in s], ids=lambda s: s["name"])
def test_sampled_softmax_matches_reference_on_sampled_classes(world, spec):
    world_size, problems, results = world
    problem = problems[SCENARIOS.index(spec)]
    per_rank = [r[spec["name"]] for r in results]
    C = len(problem["W"])
    for (start, end), r in zip(shard_ranges(C, world_size), per_rank):
        positives = problem["labels"][(problem["labels"] >= start) & (problem["labels"] < end)].unique()
        assert set(positives.tolist()) <= set(r["rows"].tolist())
        assert len(r["rows"]) == min(end - start, max(len(positives), round(spec["sample_rate"] * (end - start))))
    classes = torch.cat([r["rows"] for r in per_rank])
    assert torch.equal(classes, classes.sort().values)
    assert len(classes) < C
    got = _assemble(per_rank, C)
    ref = reference(problem, MARGINS[spec["margin"]], aware=spec.get("aware", False), classes=classes,
                    interclass=spec.get("interclass", 0.0))
    W_ref = torch.zeros(C, D, dtype=torch.float64)
    W_ref[classes] = ref["W"][classes]
    _assert_matches(got, dict(ref, W=W_ref), spec["name"])


def test_mode_can_change_between_steps(world):
    _, problems, results = world
    problem = problems[_DAIL]
    for step, aware in enumerate((True, False, True)):
        got = _assemble([r["mode_switch"][step] for r in results], len(problem["W"]))
        _assert_matches(got, reference(problem, MARGINS["arcface"], aware=aware), f"step {step}")
    aware_loss = _assemble([r["mode_switch"][0] for r in results], len(problem["W"]))["loss"]
    agnostic_loss = _assemble([r["mode_switch"][1] for r in results], len(problem["W"]))["loss"]
    assert agnostic_loss > aware_loss + 1e-3


def test_dataset_aware_ignores_other_datasets_however_close(world):
    _, problems, results = world
    problem = problems[_INTRUDER]
    C = len(problem["W"])
    base, moved = (_assemble([r["intruder"][True][i] for r in results], C) for i in (0, 1))
    _, intruder = intruder_problem(problem)
    assert not (problem["class_dataset"][problem["labels"]] == 2).any()
    _assert_matches(moved, base, "intruder, dataset-aware")
    assert torch.count_nonzero(moved["W"][intruder]) == 0
    agnostic = [_assemble([r["intruder"][False][i] for r in results], C)["loss"] for i in (0, 1)]
    assert agnostic[1] > agnostic[0] + 1e-3


def test_sampling_is_a_function_of_seed_and_step(world):
    _, _, results = world
    rows = [[torch.cat([r["same_seed"]["rows"][h][step] for r in results]) for step in (0, 1)]
            for h in range(3)]
    assert torch.equal(rows[0][0], rows[1][0]) and torch.equal(rows[0][1], rows[1][1])
    assert not torch.equal(rows[0][0], rows[0][1])
    assert not torch.equal(rows[0][0], rows[2][0])


def test_bad_labels_on_one_rank_raise_on_every_rank(world):
    world_size, problems, results = world
    C = len(problems[_DAIL]["W"])
    expected = {"label_high": f"label {C} out of range [0, {C})",
                "label_negative": f"label -1 out of range [0, {C})",
                "dataset_without_classes": "dataset id 7 (sample "}
    for r in results:
        for name, text in expected.items():
            assert r["errors"][name] is not None and text in r["errors"][name], (name, r["errors"][name])


# ---- single process: API, optimizer, errors ------------------------------------------------

def _single(C=11, **kw):
    kw = dict(dict(margin=ArcFace(scale=8.0, margin=0.4), dtype=torch.float64), **kw)
    return PartialFCHead(C, D, **kw)


def _check_sgd_steps(head, lr, mu, wd, rho=0.0, steps=3, atol=1e-14):
    """`steps` forward/backward/step rounds against SGD with momentum and weight decay on the sampled
    rows only (then renormalised to `rho` when > 0), computed here from the head's own gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, D, generator=g, dtype=torch.float64)
    labels = torch.tensor([1, 7, 7, 30, 39])
    buf = torch.zeros(head.num_classes, D, dtype=torch.float64)
    for _ in range(steps):
        w0 = head.weight.detach().clone()
        head(x, labels).backward()
        rows = head.sampled_classes()
        assert set(labels.tolist()) <= set(rows.tolist())
        buf[rows] = mu * buf[rows] + head.active_weight.grad + wd * w0[rows]
        expected = w0.clone()
        expected[rows] = w0[rows] - lr * buf[rows]
        if rho:
            expected[rows] = torch.nn.functional.normalize(expected[rows], dim=1) * rho
        head.step(lr)
        torch.testing.assert_close(head.weight.detach(), expected, atol=atol, rtol=0)
        torch.testing.assert_close(head.momentum_buffer, buf, atol=atol, rtol=0)
    return rows


def test_step_updates_only_sampled_rows_with_momentum_and_decay():
    lr = 0.5
    head = _single(C=40, sample_rate=0.25, momentum=0.9, weight_decay=0.01)
    rows = _check_sgd_steps(head, lr, mu=0.9, wd=0.01)
    assert len(rows) == 10
    with pytest.raises(RuntimeError, match=r"step\(\) needs a training-mode forward and backward"):
        head.step(lr)


@pytest.mark.parametrize("sample_rate", [1.0, 0.25])
def test_proxy_norm_renormalises_updated_rows_only(sample_rate):
    rho = 2.0
    head = _single(C=40, sample_rate=sample_rate, momentum=0.9, weight_decay=0.01, proxy_norm=rho)
    norms = torch.linalg.vector_norm(head.weight.detach(), dim=1)
    assert abs(norms.mean().item() - rho) < 0.5  # init N(0, rho^2 / D): norm about rho
    _check_sgd_steps(head, 0.5, mu=0.9, wd=0.01, rho=rho, atol=1e-13)
    with pytest.raises(ValueError, match="proxy_norm must be >= 0"):
        _single(proxy_norm=-1.0)


def test_no_dense_gradient_of_the_shard():
    head = _single(C=40, sample_rate=0.1)
    head(torch.randn(2, D, dtype=torch.float64), torch.tensor([3, 4])).backward()
    assert head.weight.grad is None
    assert tuple(head.active_weight.grad.shape) == (4, D)


def test_eval_uses_all_classes_and_keeps_the_step_counter():
    head = _single(C=40, sample_rate=0.1).eval()
    with torch.no_grad():
        head(torch.randn(2, D, dtype=torch.float64), torch.tensor([3, 4]))
    assert head.sample_step == 0 and head.active_weight is None


def test_sample_step_travels_in_the_state_dict():
    head = _single(C=40, sample_rate=0.5)
    for _ in range(3):
        head(torch.randn(2, D, dtype=torch.float64), torch.tensor([3, 4]))
    other = _single(C=40, sample_rate=0.5)
    other.load_state_dict(head.state_dict())
    assert other.sample_step == 3
    x, y = torch.randn(2, D, dtype=torch.float64), torch.tensor([3, 4])
    head(x, y), other(x, y)
    assert torch.equal(head.sampled_classes(), other.sampled_classes())


def test_init_does_not_depend_on_the_sharding():
    C = 20000
    full = init_proxies(0, C, 4, seed=5, std=0.01, device="cpu", dtype=torch.float32)
    for world_size in (3, 7):
        parts = [init_proxies(s, e, 4, seed=5, std=0.01, device="cpu", dtype=torch.float32)
                 for s, e in shard_ranges(C, world_size)]
        assert torch.equal(torch.cat(parts), full)


def test_reset_classes_replaces_shard_and_state():
    head = _single(C=11)
    new = torch.randn(20, D, dtype=torch.float64)
    head.reset_classes(20, new, torch.ones(20, D))
    assert (head.num_classes, head.start, head.end) == (20, 0, 20)
    assert torch.equal(head.weight.detach(), new) and torch.equal(head.momentum_buffer, torch.ones(20, D).double())
    head.reset_classes(15, torch.zeros(15, D))
    assert torch.count_nonzero(head.momentum_buffer) == 0
    with pytest.raises(ValueError, match=r"local_weight has shape \(14, 8\); rank 0 of 1 owns classes "
                                         r"\[0, 15\) of 15, so expected \(15, 8\)"):
        head.reset_classes(15, torch.zeros(14, D))


@pytest.mark.parametrize("labels, ids, message", [
    ([0, 11], None, r"label 11 out of range \[0, 11\)"),
    ([-1, 3], None, r"label -1 out of range \[0, 11\)"),
    ([0, 1], [9, 9], r"dataset id 9 \(sample 0 of the global batch\) has no classes in class_dataset"),
    ([0, 1], "swap", r"sample 0 of the global batch has dataset id \d but its label 0 is a class of dataset \d"),
])
def test_bad_labels_and_datasets(labels, ids, message):
    head = _single()
    table = torch.tensor([0, 1] * 5 + [2])
    labels = torch.tensor(labels)
    if ids == "swap":
        ids = 1 - table[labels]
    elif ids is not None:
        ids = torch.tensor(ids)
    aware = ids is not None
    with pytest.raises(ValueError, match=message):
        head(torch.randn(2, D, dtype=torch.float64), labels, ids, class_dataset=table if aware else None)


def test_bad_shapes_and_arguments():
    head = _single()
    x = torch.randn(3, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"embeddings must be \[B, 8\], got \(3, 9\)"):
        head(torch.randn(3, D + 1), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must be integer class ids of shape \(3,\), got torch.float32"):
        head(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"class_dataset must have one entry per class, shape \(11,\), got \(10,\)"):
        head(x, torch.tensor([0, 1, 2]), class_dataset=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="empty batch"):
        head(x[:0], torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\], got 0.0"):
        _single(sample_rate=0.0)


def test_bf16_compute_dtype_stays_close_to_the_reference():
    problem = make_problem(9, 200, 16)
    head = PartialFCHead(200, D, margin=MARGINS["arcface"], compute_dtype=torch.bfloat16, momentum=0.0,
                         weight_decay=0.0)
    head.weight.data.copy_(problem["W"].float())
    x = (problem["inp"] @ problem["P"]).float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = head(x, problem["labels"])
    loss.backward()
    ref = reference(problem, MARGINS["arcface"])
    assert loss.dtype == torch.float32 and head.active_weight.grad.dtype == torch.float32
    assert loss.item() == pytest.approx(ref["loss"], rel=2e-2)
    torch.testing.assert_close(head.active_weight.grad.double(), ref["W"], atol=2e-3, rtol=5e-2)


@pytest.mark.gpu
def test_cuda_bf16_matches_fp32_reference():
    problem = make_problem(9, 1000, 64)
    head = PartialFCHead(1000, D, margin=MARGINS["arcface"], device="cuda", momentum=0.0, weight_decay=0.0)
    head.weight.data.copy_(problem["W"].float())
    x = (problem["inp"] @ problem["P"]).float().cuda()
    loss = head(x, problem["labels"].cuda())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference(problem, MARGINS["arcface"])["loss"], rel=2e-2)


def test_interclass_filtering_drops_only_close_negatives():
    """The filter must matter in the scenarios above (else they test nothing), and a duplicate
    identity's proxy placed on the sample stops receiving gradient while the positive keeps its own."""
    spec = SCENARIOS[[s["name"] for s in SCENARIOS].index("interclass")]
    problem = make_problem(spec["seed"], spec["C"], 4 * spec["B"])
    margin = MARGINS[spec["margin"]]
    plain, filtered = reference(problem, margin), reference(problem, margin, interclass=spec["interclass"])
    assert filtered["loss"] < plain["loss"]
    W = problem["W"].clone()
    x0 = problem["inp"][0] @ problem["P"]
    twin = (int(problem["labels"][0]) + 1) % spec["C"]
    W[twin] = x0 / x0.norm()  # cosine 1 with sample 0: a second label of its identity
    one = dict(problem, inp=problem["inp"][:1], labels=problem["labels"][:1])
    got = reference(one, margin, W=W, interclass=0.9)
    assert got["W"][twin].abs().max() == 0 and got["W"][int(problem["labels"][0])].abs().max() > 0
    assert reference(one, margin, W=W)["W"][twin].abs().max() > 0
    with pytest.raises(ValueError, match="interclass_threshold must be in \\[0, 1\\]"):
        PartialFCHead(4, D, margin=margin, interclass_threshold=1.5)
