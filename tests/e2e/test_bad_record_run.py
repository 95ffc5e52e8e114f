"""A training run that meets a corrupt record stops with one line naming it (shard, key), exit status 2."""

import os

from data_helpers import copy_with_a_bad_record
from train_helpers import run_main, settings


def test_training_run_with_a_zeroed_jpeg_exits_2_naming_it(synth, tmp_path, capsys):
    manifest, _, where = copy_with_a_bad_record(synth, tmp_path / "bad", seed=0)
    code, err, _ = run_main(capsys, settings(os.path.dirname(manifest), tmp_path / "run"))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"fftrain: error: {where}: JPEG header broken")
