"""DAO score calibration: the formula against a direct numpy computation and a hand case."""

import math

import numpy as np
import pytest

from fftrain.evaluation.dao import dao_scores, evaluate_dao, proxy_topk_similarities
from fftrain.search import top_k, unit_rows


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _direct_dao(emb1, emb2, proxies, k, tau):
    """DAO(f1, f2) = e^{tau <f1,f2>} (1 / sum_k e^{tau s1_k} + 1 / sum_k e^{tau s2_k}), plainly."""
    e1, e2, p = _unit(emb1), _unit(emb2), _unit(proxies)
    s1 = -np.sort(-(e1 @ p.T), axis=1)[:, :k]
    s2 = -np.sort(-(e2 @ p.T), axis=1)[:, :k]
    cos = np.sum(e1 * e2, axis=1)
    return np.exp(tau * cos) * (1 / np.exp(tau * s1).sum(1) + 1 / np.exp(tau * s2).sum(1))


@pytest.mark.parametrize("k,tau", [(10, 1.0), (3, 5.0)])
def test_dao_matches_direct_formula(k, tau):
    rng = np.random.default_rng(0)
    emb1, emb2 = rng.standard_normal((50, 8)), rng.standard_normal((50, 8))
    proxies = rng.standard_normal((40, 8))
    got = dao_scores(emb1, emb2, proxies, k=k, tau=tau)
    assert got.shape == (50,)
    np.testing.assert_allclose(got, _direct_dao(emb1, emb2, proxies, k, tau), rtol=1e-5)


def test_dao_hand_case():
    # f1 = e0, f2 = e1 (cosine 0); proxies = the basis: top-1 similarity 1 on each side
    proxies = np.eye(4)
    got = dao_scores(np.eye(4)[:1], np.eye(4)[1:2], proxies, k=1, tau=1.0)
    assert got[0] == pytest.approx(2 / math.e, rel=1e-7)
    # k=2: each side also sees a proxy at cosine 0 -> e^0 * 2 / (e + 1)
    got = dao_scores(np.eye(4)[:1], np.eye(4)[1:2], proxies, k=2, tau=1.0)
    assert got[0] == pytest.approx(2 / (math.e + 1), rel=1e-7)


def test_dao_needs_k_proxies():
    with pytest.raises(ValueError, match="k=10 nearest proxies requested but the anchor set has only 4 proxies"):
        dao_scores(np.eye(4)[:1], np.eye(4)[1:2], np.eye(4), k=10)


def test_the_proxy_search_is_the_search_modules_on_unit_rows_with_either_backend():
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((30, 16)).astype(np.float32)
    proxies = rng.standard_normal((100, 16)).astype(np.float32)
    dao_topk = proxy_topk_similarities(queries, proxies, k=5)
    faiss_sims, _ = top_k(unit_rows(queries), unit_rows(proxies), 5, backend="faiss")
    torch_sims, _ = top_k(unit_rows(queries), unit_rows(proxies), 5, backend="torch", max_block_elems=7 * 100)
    assert np.array_equal(dao_topk, faiss_sims.numpy().astype(np.float64))
    np.testing.assert_allclose(torch_sims.numpy(), faiss_sims.numpy(), atol=1e-5)


def test_evaluate_dao_reports_both_scores():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((40, 8))
    issame = np.arange(40) % 2 == 0
    b = np.where(issame[:, None], a + 0.1 * rng.standard_normal((40, 8)), rng.standard_normal((40, 8)))
    out = evaluate_dao(a, b, issame, rng.standard_normal((30, 8)), k=10, tau=1.0)
    assert out["dao_accuracy"] == 1.0 and out["dao_cosine_accuracy"] == 1.0
    assert set(out) == {"dao_accuracy", "dao_std", "dao_cosine_accuracy", "dao_cosine_std", "dao_k", "dao_tau"}
