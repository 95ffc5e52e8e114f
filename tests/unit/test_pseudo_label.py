"""fftrain.pseudo_label on samples and planted feature-level worlds with known truth.

Bounds below were written from the method's design (the Weibull rule must cut the overlapping
samples left among the disjoint ones; the graph backend must not lose to thresholded components);
the worlds are `planted.planted_world` with fixed seeds, small enough for a few seconds each.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fftrain.pseudo_label import PseudoLabelError, PseudoLabelOptions, pseudo_label
from fftrain.pseudo_label.clustering import canonical_labels, cluster, drop_small, knn_graph
from fftrain.calibration.evt import FitError, fit_weibull, fit_weibull_mixture, otsu_threshold
from fftrain.pseudo_label.metrics import bcubed_scores, clustering_scores, pairwise_scores
from benchmarks.lib.planted import planted_world
from fftrain.pseudo_label.separation import error_rates, max_cosine, separate_overlap
from fftrain.pseudo_label.uncertainty import cluster_margins, fit_uncertainty

# ---- EVT ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,scale", [(0.8, 2.0), (2.5, 0.3), (9.0, 1.5)])
def test_weibull_fit_recovers_known_parameters(shape, scale):
    x = stats.weibull_min(shape, scale=scale).rvs(20000, random_state=np.random.default_rng(0))
    fit = fit_weibull(x)
    assert fit.shape == pytest.approx(shape, rel=0.03)
    assert fit.scale == pytest.approx(scale, rel=0.02)
    ref_shape, _, ref_scale = stats.weibull_min.fit(x, floc=0)  # scipy's unweighted MLE: the same optimum
    assert fit.shape == pytest.approx(ref_shape, rel=1e-4) and fit.scale == pytest.approx(ref_scale, rel=1e-4)


def test_weighted_fit_equals_fit_on_repeated_samples():
    rng = np.random.default_rng(1)
    x = stats.weibull_min(3.0, scale=1.0).rvs(300, random_state=rng)
    counts = rng.integers(1, 4, size=x.size)
    weighted, repeated = fit_weibull(x, counts.astype(float)), fit_weibull(np.repeat(x, counts))
    assert weighted.shape == pytest.approx(repeated.shape, rel=1e-8)
    assert weighted.scale == pytest.approx(repeated.scale, rel=1e-8)


def test_mixture_recovers_both_components_and_the_weight():
    rng = np.random.default_rng(2)
    low = stats.weibull_min(4.0, loc=0.1, scale=0.25).rvs(6000, random_state=rng)
    high = stats.weibull_min(8.0, loc=0.1, scale=0.6).rvs(2000, random_state=rng)
    values = np.concatenate([low, high])
    mix = fit_weibull_mixture(values)
    assert mix.converged
    assert mix.weight_high == pytest.approx(0.25, abs=0.02)
    # the fit is of values - shift, shift just below the minimum, not 0.1: compare the distributions
    for fitted, true in ((mix.low, stats.weibull_min(4.0, loc=0.1, scale=0.25)),
                         (mix.high, stats.weibull_min(8.0, loc=0.1, scale=0.6))):
        assert fitted.dist.mean() == pytest.approx(true.mean(), abs=0.01)
        assert fitted.dist.std() == pytest.approx(true.std(), rel=0.1)


def test_otsu_splits_two_modes_between_them():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0.2, 0.05, 3000), rng.normal(0.7, 0.05, 1000)])
    assert 0.32 < otsu_threshold(values) < 0.58


def test_fits_refuse_degenerate_input():
    with pytest.raises(FitError, match="all 5 values are equal"):
        otsu_threshold(np.full(5, 0.3))
    with pytest.raises(FitError, match="at least 2"):
        otsu_threshold(np.array([0.1]))
    with pytest.raises(FitError, match="finite"):
        fit_weibull_mixture(np.array([0.1, 0.2, np.nan, 0.4]))


# ---- separation -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_separation_on_a_planted_world(overlap):
    world = planted_world(num_labeled=400, num_unlabeled_ids=200, overlap=overlap, images_per_id=12, seed=11)
    scores, nearest = max_cosine(world.embeddings, world.proxies)
    sep = separate_overlap(scores)
    otsu = error_rates(sep.otsu_overlap, world.overlap)
    weibull = error_rates(sep.weibull_overlap, world.overlap, sep.weibull_rejected)
    assert otsu["fpr"] <= 0.01 and weibull["fpr"] <= 0.01
    assert weibull["fnr"] <= 0.02 and weibull["fnr"] < otsu["fnr"]
    assert weibull["rejected"] <= 0.10
    assert sep.mixture.weight_high == pytest.approx(world.overlap.mean(), abs=0.05)
    found = sep.weibull_overlap & world.overlap  # the nearest proxy of a found overlap is its own class
    assert (nearest[found] == world.labeled_class[found]).mean() >= 0.98


def test_error_rates_count_rejected_apart():
    truth = np.array([1, 1, 0, 0], bool)
    r = error_rates(np.array([1, 0, 1, 0], bool), truth, rejected=np.array([0, 0, 1, 0], bool))
    assert r == {"fpr": 0.0, "fnr": 0.5, "rejected": 0.25, "true_overlap": 2, "true_disjoint": 2}


# ---- clustering -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def disjoint_world():
    world = planted_world(num_labeled=50, num_unlabeled_ids=150, overlap=0.0, images_per_id=12, seed=12)
    return world, knn_graph(world.embeddings, k=20)


def test_knn_graph_excludes_self_and_matches_brute_force(disjoint_world):
    world, graph = disjoint_world
    assert not (graph.ids == np.arange(len(graph.ids))[:, None]).any()
    sims = world.embeddings @ world.embeddings.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(graph.sims[:, 0], sims.max(axis=1), atol=1e-5)


@pytest.mark.parametrize("backend", ["infomap", "leiden"])
def test_graph_backends_beat_or_match_the_threshold_baseline(disjoint_world, backend):
    world, graph = disjoint_world  # each backend at its default threshold
    found = clustering_scores(cluster(graph, backend=backend), world.identity)
    baseline = clustering_scores(cluster(graph, backend="components"), world.identity)
    assert found["pairwise"]["f"] >= 0.9
    assert found["pairwise"]["f"] >= baseline["pairwise"]["f"]
    assert found["bcubed"]["f"] >= 0.9 and found["nmi"] >= 0.95


def test_cluster_labels_are_canonical_and_small_ones_drop():
    assert canonical_labels(np.array([7, 3, 7, 9, 3])).tolist() == [0, 1, 0, 2, 1]
    assert drop_small(np.array([0, 1, 0, 2, 1, 1]), 2).tolist() == [0, 1, 0, -1, 1, 1]
    assert drop_small(np.array([0, 1, 2]), 2).tolist() == [-1, -1, -1]


def test_metrics_on_a_hand_checked_example():
    truth = np.array([0, 0, 0, 1, 1])
    predicted = np.array([0, 0, 1, 1, 1])
    # predicted pairs: (0,1), (2,3), (2,4), (3,4): 2 correct of 4; true pairs: 3 + 1 = 4, 2 found
    assert pairwise_scores(predicted, truth) == pytest.approx({"precision": 0.5, "recall": 0.5, "f": 0.5})
    # BCubed precision: (1 + 1 + 1/3 + 2/3 + 2/3) / 5; recall: (2/3 + 2/3 + 1/3 + 1 + 1) / 5
    b = bcubed_scores(predicted, truth)
    assert b["precision"] == pytest.approx((3 + 2 / 3) / 5) and b["recall"] == pytest.approx((2 + 5 / 3) / 5)
    perfect = clustering_scores(truth, truth)
    assert perfect["pairwise"]["f"] == perfect["bcubed"]["f"] == pytest.approx(1.0)
    assert perfect["nmi"] == pytest.approx(1.0)


# ---- uncertainty ----------------------------------------------------------------------------


def test_margin_uncertainty_flags_wrong_assignments():
    world = planted_world(num_labeled=50, num_unlabeled_ids=150, overlap=0.0, images_per_id=12, noise=1.05,
                          seed=13)
    labels = drop_small(cluster(knn_graph(world.embeddings, k=20), backend="components", threshold=0.45), 2)
    margins = cluster_margins(world.embeddings, labels)
    unc = fit_uncertainty(margins)
    kept = labels >= 0
    majority = {c: np.bincount(world.identity[labels == c]).argmax() for c in np.unique(labels[kept])}
    wrong = np.array([kept[i] and world.identity[i] != majority[labels[i]] for i in range(len(labels))])
    assert wrong.sum() >= 10  # the world is hard enough to make mistakes
    assert np.nanmean(unc.p_wrong[wrong]) > np.nanmean(unc.p_wrong[kept & ~wrong]) + 0.2
    w = unc.weights(1.0)
    assert np.all((w >= 0) & (w <= 1)) and np.all(w[~kept] == 0)
    np.testing.assert_allclose(unc.weights(2.0)[kept], w[kept] ** 2)


def test_margins_with_one_cluster_use_minus_one_as_the_other():
    x = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], np.float32)
    m = cluster_margins(x, np.array([0, 0, -1]))
    assert np.isnan(m[2]) and np.all(m[:2] > 1.0)


# ---- the pipeline ---------------------------------------------------------------------------


def test_pipeline_discards_or_assigns_the_overlapping_part():
    world = planted_world(num_labeled=300, num_unlabeled_ids=120, overlap=0.5, images_per_id=10, seed=14)
    discard = pseudo_label(world.embeddings, world.proxies, PseudoLabelOptions())
    assert (discard.labels[discard.overlap] == -1).all()
    assert discard.num_classes == discard.num_clusters and len(discard.assigned_classes) == 0
    assert np.all(discard.weights[discard.labels < 0] == 0)
    assign = pseudo_label(world.embeddings, world.proxies, PseudoLabelOptions(overlapping="assign"))
    hit = assign.labels[assign.overlap] - assign.num_clusters
    assert (hit >= 0).all() and np.all(assign.weights[assign.overlap] == 1.0)
    assigned_class = assign.assigned_classes[hit]
    assert (assigned_class == world.labeled_class[assign.overlap]).mean() >= 0.98


@pytest.mark.parametrize("overlap,mode", [(0.0, "none"), (1.0, "all")])
def test_one_mode_only_is_refused_with_a_hint(overlap, mode):
    world = planted_world(num_labeled=300, num_unlabeled_ids=100, overlap=overlap, images_per_id=8, seed=15)
    with pytest.raises(PseudoLabelError, match="one mode, not two.*--overlap none .* or --overlap all"):
        pseudo_label(world.embeddings, world.proxies, PseudoLabelOptions())
    result = pseudo_label(world.embeddings, world.proxies, PseudoLabelOptions(overlap=mode, overlapping="assign"))
    assert result.separation is None and (result.labels >= 0).any()


def test_pipeline_bad_input():
    proxies = np.eye(4, dtype=np.float32)
    with pytest.raises(PseudoLabelError, match="no unlabeled samples"):
        pseudo_label(np.zeros((0, 4), np.float32), proxies, PseudoLabelOptions())
    with pytest.raises(PseudoLabelError, match="embeddings are 3-d but the class proxies are 4-d"):
        pseudo_label(np.ones((5, 3), np.float32), proxies, PseudoLabelOptions())
    with pytest.raises(PseudoLabelError, match="nothing to write"):
        pseudo_label(np.eye(4, dtype=np.float32), proxies, PseudoLabelOptions(overlap="all"))
    with pytest.raises(ValueError, match="backend='kmeans'; available"):
        PseudoLabelOptions(backend="kmeans")


def test_edge_threshold_is_calibrated_on_the_overlapping_images():
    world = planted_world(num_labeled=300, num_unlabeled_ids=120, overlap=0.5, images_per_id=10, noise=1.2, seed=14)
    result = pseudo_label(world.embeddings, world.proxies, PseudoLabelOptions(backend="components"))
    edge = result.edge
    assert edge.how.startswith("auto") and edge.samples >= 1000 and edge.value >= 0.55 and edge.far <= 1e-4
    # read against the truth: pairs of two different people of the whole set rarely pass the chosen edge
    x, ident = world.embeddings, world.identity
    a, b = np.random.default_rng(0).integers(0, len(x), (2, 200_000))
    impostor = np.einsum("ij,ij->i", x[a], x[b])[ident[a] != ident[b]]
    assert (impostor > edge.value).mean() < 1e-3
    given = pseudo_label(world.embeddings, world.proxies, PseudoLabelOptions(backend="components", threshold=0.6))
    assert given.edge.value == 0.6 and given.edge.how == "given"


def test_without_overlapping_images_the_backend_default_is_kept_and_said():
    world = planted_world(num_labeled=300, num_unlabeled_ids=60, overlap=0.0, images_per_id=8, seed=15)
    result = pseudo_label(world.embeddings, world.proxies, PseudoLabelOptions(overlap="none"))
    assert result.edge.value == 0.45 and result.edge.how.startswith("the backend's default: only 0 impostor")


def test_a_cluster_of_two_people_has_low_purity_and_is_not_written():
    from fftrain.pseudo_label.pipeline import _drop_impure

    rng = np.random.default_rng(0)
    people = np.linalg.qr(rng.standard_normal((16, 3)))[0].T  # three orthogonal persons
    ident = np.repeat([0, 1, 2], 10)
    emb = people[ident] + 0.05 * rng.standard_normal((30, 16))
    clusters = np.where(ident == 2, 1, 0)  # persons 0 and 1 in cluster 0, person 2 alone in cluster 1
    kept, purity, dropped = _drop_impure(emb, clusters, 0.5, 1.0, 0.5, 0)
    assert [d["size"] for d in dropped] == [20] and dropped[0]["purity"] == pytest.approx(90 / 190)
    assert np.array_equal(kept, np.where(ident == 2, 0, -1)) and purity.tolist() == [1.0]
