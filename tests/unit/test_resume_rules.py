"""What a resume may change (fftrain.training.resume_rules), and a resumed run that keeps both configs."""

import numpy as np
import pytest

from fftrain.config import ConfigError, config_from_dict, config_to_dict
from fftrain.data.sharding import epoch_order, rank_batches
from fftrain.training.resume_rules import NEVER, check_resume, data_position, rule_of


def _meta(step=6, world_size=1, **config):
    return {"step": step, "world_size": world_size, "config": config_to_dict(config_from_dict(config))}


def _new(**config) -> dict:
    return config_to_dict(config_from_dict(config))


@pytest.mark.parametrize("key", ["seed", "head.m", "head.margin", "head.scale", "model.backbone",
                                 "model.embedding_size", "grl.hidden", "data.order", "data.augment",
                                 "data.synth_preset", "a.key.no.rule.names"])
def test_refused_keys(key):
    assert rule_of(key) == NEVER


def test_lr_schedule_and_execution_settings_may_change():
    meta = _meta(optim={"lr": 0.1})
    allowed = check_resume(meta, _new(optim={"lr": 0.05, "total_steps": 480_000, "lr_milestones": [100, 200]},
                                      data={"num_workers": 4, "reader": "torch"}, log={"every": 7}),
                           "ckpt", num_records=1000)
    assert allowed["optim.lr"] == (0.1, 0.05) and allowed["data.reader"] == ("dali", "torch")
    assert "optim.lr_milestones" in allowed and "log.every" in allowed


def test_seed_and_margin_changes_are_refused_naming_key_and_both_values():
    with pytest.raises(ConfigError, match=r"^cannot resume from ckpt: seed: the checkpoint has 0, this run 3 \(.*\); "
                                          r"head\.m: the checkpoint has 0\.5, this run 0\.4 \("):
        check_resume(_meta(), _new(seed=3, head={"m": 0.4}), "ckpt", num_records=1000)


def test_total_steps_below_the_checkpoint_is_refused():
    with pytest.raises(ConfigError, match=r"optim\.total_steps: 4 is below the checkpoint's step 6; nothing would "
                                          r"be trained"):
        check_resume(_meta(), _new(optim={"total_steps": 4, "lr_milestones": [2]}), "ckpt", num_records=1000)
    with pytest.raises(ConfigError, match=r"stop_at_step: 5 is before the checkpoint's step 6"):
        check_resume(_meta(), _new(stop_at_step=5), "ckpt", num_records=1000)


def test_another_training_set_size_is_refused():
    meta = {**_meta(), "num_records": 999}
    with pytest.raises(ConfigError, match=r"trained on 999 records, this training set has 1000"):
        check_resume(meta, _new(), "ckpt", num_records=1000)


def test_batch_change_continues_with_exactly_the_unread_images():
    n, seed = 1000, 0
    meta = _meta(step=4, world_size=2, data={"batch_size": 16})      # 4 steps x 32 images of epoch 0 read
    epoch, step = data_position(meta, n, global_batch=16, order="global")   # 1 rank x 16
    assert (epoch, step) == (0, 8)
    order = epoch_order(n, seed, 0)
    old = rank_batches(order, shard_id=0, num_shards=2, batch_size=16)[:4].ravel().tolist() + \
        rank_batches(order, shard_id=1, num_shards=2, batch_size=16)[:4].ravel().tolist()
    new = rank_batches(order, shard_id=0, num_shards=1, batch_size=16, start_step=step)
    assert sorted(old) == sorted(order[:128].tolist())          # the old run read the first 128 of the epoch
    np.testing.assert_array_equal(new[0], order[128:144])       # the new one goes on with the 129th
    # the same global batch: the step position as before; later epochs too
    assert data_position(_meta(step=70, world_size=2, data={"batch_size": 16}), n, 32, "global") == (2, 8)


def test_batch_change_that_cannot_continue_exactly_is_refused():
    meta = _meta(step=3, data={"batch_size": 16})  # 48 images read
    with pytest.raises(ConfigError, match=r"^data\.batch_size: the checkpoint stopped after 48 images of epoch 0 "
                                          r"\(global batch 16 = 16 x 1 ranks\); this run's global batch 20 does not "
                                          r"divide 48"):
        data_position(meta, 1000, 20, "global")
    with pytest.raises(ConfigError, match=r"data\.order=reader"):
        data_position(meta, 1000, 8, "reader")
    assert data_position(meta, 1000, 16, "reader") == (0, 3)
