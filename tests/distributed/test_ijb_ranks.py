"""IJB-B/C evaluation spread over two gloo ranks gives the single-process features, scores and TARs."""

import numpy as np
import torch

from fftrain.evaluation.ijb import evaluate_ijb, read_ijb_meta
from fftrain.model.backbones import build_backbone
from ijb_helpers import write_ijb_set


def _evaluate(ctx, root):
    torch.manual_seed(0)
    model = build_backbone("iresnet_tiny", embedding_size=16)
    result, img_feats, scores, _ = evaluate_ijb(model, read_ijb_meta(root, "IJBB"), device="cpu", group=ctx.group,
                                                batch_size=4)
    return result, img_feats, scores


def test_two_ranks_give_the_single_process_result(tmp_path):
    from dist_harness import run_distributed

    write_ijb_set(str(tmp_path), "IJBB", identities=3, templates_per_identity=2, seed=1)
    torch.manual_seed(0)
    model = build_backbone("iresnet_tiny", embedding_size=16)
    single, single_feats, single_scores, _ = evaluate_ijb(model, read_ijb_meta(str(tmp_path), "IJBB"), device="cpu",
                                                          batch_size=4)
    ranks = run_distributed(_evaluate, world_size=2, args=(str(tmp_path),))
    for result, img_feats, scores in ranks:
        np.testing.assert_allclose(img_feats, single_feats, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scores, single_scores, rtol=1e-6, atol=1e-6)
        assert result["tar_at_far"] == single["tar_at_far"]


def _evaluate_or_error(ctx, root):
    from fftrain.evaluation.ijb import IjbError

    try:
        _evaluate(ctx, root)
    except IjbError as e:
        return str(e)
    return None


def test_a_missing_image_on_one_rank_is_the_same_error_on_every_rank(tmp_path):
    """The last image is in rank 1's share only: rank 0 must not wait for it at the gather."""
    from dist_harness import run_distributed

    truth = write_ijb_set(str(tmp_path), "IJBB", identities=3, templates_per_identity=2, seed=1)
    missing = tmp_path / "loose_crop" / truth["images"][-1]
    missing.unlink()
    errors = run_distributed(_evaluate_or_error, world_size=2, args=(str(tmp_path),))
    assert errors[0] == errors[1] and errors[0].startswith(f"{missing}: image listed in")
