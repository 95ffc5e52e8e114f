"""Verification metrics: hand-computed cases, and insightface's protocol re-implemented the
straightforward way (loops over thresholds and folds) on random data."""

import numpy as np
import pytest

from fftrain.evaluation.metrics import (
    ACCURACY_THRESHOLDS, candidate_thresholds, far_key, kfold_accuracy, kfold_indices, l2_normalize,
    tar_at_far, threshold_accuracies, verification_metrics,
)


# --- insightface's calculate_roc / calculate_accuracy, written out plainly as the reference ----

def _reference_accuracy(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    return float(tp + tn) / dist.size


def _reference_roc(thresholds, e1, e2, issame, n_folds=10):
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    indices = np.arange(len(issame))
    accuracy = np.zeros(n_folds)
    for fold, test in enumerate(np.array_split(indices, n_folds)):  # = KFold(shuffle=False)
        train = np.setdiff1d(indices, test)
        acc_train = np.array([_reference_accuracy(t, dist[train], issame[train]) for t in thresholds])
        accuracy[fold] = _reference_accuracy(thresholds[np.argmax(acc_train)], dist[test], issame[test])
    return accuracy


def _reference_normalize(x):  # sklearn.preprocessing.normalize
    x = np.array(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0] = 1
    return x / norms[:, None]


def _random_pairs(rng, n_pairs, dim=16, noise=0.9):
    """Flip-summed-like embeddings [2N, D] with positives close and negatives random, float32."""
    issame = rng.random(n_pairs) < 0.5
    a = rng.standard_normal((n_pairs, dim))
    b = np.where(issame[:, None], a + noise * rng.standard_normal((n_pairs, dim)),
                 rng.standard_normal((n_pairs, dim)))
    emb = np.empty((2 * n_pairs, dim), dtype=np.float32)
    emb[0::2], emb[1::2] = a, b
    return emb, issame


# --- folds -------------------------------------------------------------------------------------

def test_kfold_indices_match_sklearn_kfold_layout():
    folds = kfold_indices(23, 10)
    assert [len(test) for _, test in folds] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert folds[0][1].tolist() == [0, 1, 2]
    assert folds[3][1].tolist() == [9, 10]
    assert folds[9][1].tolist() == [21, 22]
    for train, test in folds:
        assert sorted(train.tolist() + test.tolist()) == list(range(23))
    assert np.array_equal(np.concatenate([t for _, t in folds]), np.arange(23))


def test_kfold_indices_refuse_too_few_pairs():
    with pytest.raises(ValueError, match="9 pairs cannot be split into 10 folds"):
        kfold_indices(9, 10)


def test_l2_normalize_keeps_zero_rows():
    out = l2_normalize([[3.0, 4.0], [0.0, 0.0]])
    assert out.tolist() == [[0.6, 0.8], [0.0, 0.0]]


# --- hand-computed accuracy --------------------------------------------------------------------

def test_threshold_rule_is_strict():
    scores, issame = np.array([0.5, 0.6, 0.7]), np.array([True, True, False])
    # distances: same iff d < 0.6 -> [T, F, F]: 2 of 3 right
    assert threshold_accuracies(scores, issame, [0.6], higher_is_same=False).tolist() == [2 / 3]
    # similarities: same iff s > 0.6 -> [F, F, T]: none right
    assert threshold_accuracies(scores, issame, [0.6], higher_is_same=True).tolist() == [0.0]


def test_kfold_accuracy_hand_computed_two_folds():
    # fold 1 trains on the second half: accuracies 0.8, 0.6, 0.8, 0.6 -> first max, t=0.25;
    #   on the first half t=0.25 predicts [T,F,F,F,F] vs [T,T,F,F,F]: 0.8
    # fold 2 trains on the first half: 0.8, 1.0, 0.8, 0.6 -> t=0.6;
    #   on the second half t=0.6 predicts [T,F,F,T,F] vs [T,F,T,F,F]: 0.6
    dist = np.array([0.1, 0.5, 0.7, 1.5, 2.0, 0.2, 1.2, 0.9, 0.4, 3.0])
    issame = np.array([1, 1, 0, 0, 0, 1, 0, 1, 0, 0], dtype=bool)
    result = kfold_accuracy(dist, issame, [0.25, 0.6, 1.0, 1.6], higher_is_same=False, n_folds=2)
    assert result.accuracies.tolist() == [0.8, 0.6]
    assert result.thresholds.tolist() == [0.25, 0.6]
    assert result.accuracy == pytest.approx(0.7)
    assert result.std == pytest.approx(0.1)


def test_kfold_accuracy_exhaustive_thresholds_pick_midpoints():
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3, 0.6, 0.4])
    issame = np.array([1, 1, 0, 0, 1, 0, 1, 0], dtype=bool)
    assert candidate_thresholds([0.3, 0.4, 0.6, 0.7]) == pytest.approx([-0.7, 0.35, 0.5, 0.65, 1.7])
    result = kfold_accuracy(scores, issame, None, higher_is_same=True, n_folds=2)
    assert result.accuracies.tolist() == [1.0, 1.0]
    assert result.thresholds == pytest.approx([0.5, 0.5])


def test_accuracy_matches_insightface_reference_on_random_embeddings():
    rng = np.random.default_rng(0)
    emb, issame = _random_pairs(rng, 1003)  # 1003 % 10 = 3: uneven folds
    ref_emb = _reference_normalize(emb)
    expected = _reference_roc(ACCURACY_THRESHOLDS, ref_emb[0::2], ref_emb[1::2], issame)
    assert 0.6 < expected.mean() < 0.99  # an informative case, not a trivial one
    got = verification_metrics(emb, issame)
    assert got.fold_accuracies == expected.tolist()  # exactly: same thresholds, same ties
    assert got.accuracy == np.mean(expected)
    assert got.std == np.std(expected)


def test_accuracy_matches_reference_with_ties_on_the_grid():
    # embeddings on a coarse lattice: many distances equal to grid values exactly
    rng = np.random.default_rng(1)
    emb = rng.integers(-2, 3, size=(400, 4)).astype(np.float32)
    emb[emb.sum(1) == 0] += 1
    issame = rng.random(200) < 0.5
    ref_emb = _reference_normalize(emb)
    expected = _reference_roc(ACCURACY_THRESHOLDS, ref_emb[0::2], ref_emb[1::2], issame)
    assert verification_metrics(emb, issame).fold_accuracies == expected.tolist()


# --- TAR at FAR --------------------------------------------------------------------------------

def test_tar_at_far_hand_computed():
    neg = np.arange(1000) / 1000.0              # highest negatives 0.999, 0.998, ...
    pos = np.array([0.9985, 0.9995, 0.5, 1.0])  # two above the 2nd-highest negative 0.998
    scores = np.concatenate([pos, neg])
    issame = np.concatenate([np.ones(4, bool), np.zeros(1000, bool)])
    point = tar_at_far(scores, issame, 1e-3)    # 1 false accept allowed: threshold 0.998
    assert point.threshold == 0.998
    assert point.tar == 0.75
    assert point.achieved_far == 1e-3
    distance = tar_at_far(-scores, issame, 1e-3, higher_is_same=False)
    assert distance.tar == 0.75 and distance.threshold == -0.998


def test_tar_at_far_not_measurable_with_too_few_negatives():
    scores = np.concatenate([np.ones(10), np.zeros(3000)])
    issame = np.arange(3010) < 10
    point = tar_at_far(scores, issame, 1e-4)
    assert point.tar is None
    assert point.note == "TAR@FAR=0.0001 not measurable: 3000 negative pairs, needs >= 10000"
    assert tar_at_far(scores, issame, 1e-3).tar == 1.0  # 3000 * 1e-3 = 3 false accepts allowed


def test_tar_at_far_with_tied_negatives_stays_under_target():
    scores = np.concatenate([[0.5, 0.6], np.full(1000, 0.5)])
    issame = np.arange(1002) < 2
    point = tar_at_far(scores, issame, 1e-3)
    assert point.achieved_far == 0.0 and point.tar == 0.5


def test_tar_at_far_is_the_best_admissible_threshold():
    rng = np.random.default_rng(2)
    scores = np.round(rng.standard_normal(3000), 2)  # ties included
    issame = rng.random(3000) < 0.3
    scores[issame] += 1.5
    pos, neg = scores[issame], scores[~issame]
    for far in (1e-3, 3e-3, 0.1):
        best = max(np.mean(pos > t) for t in np.unique(scores) if np.mean(neg > t) <= far)
        assert tar_at_far(scores, issame, far).tar == best


def test_verification_metrics_on_separable_pairs():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((20, 8))
    emb = np.repeat(base, 2, axis=0)
    issame = np.arange(20) % 2 == 0
    emb[1::2][~issame] = rng.standard_normal((10, 8))  # negatives: a random partner
    out = verification_metrics(emb, issame).as_dict()
    assert out["accuracy"] == 1.0 and out["std"] == 0.0 and out["num_pairs"] == 20
    assert out[far_key(1e-3)] is None and out[far_key(1e-4)] is None
    assert len(out["notes"]) == 2
    assert far_key(1e-3) == "tar_far_1e-3" and far_key(1e-4) == "tar_far_1e-4"
