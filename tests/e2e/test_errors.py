"""One family of errors a user can cause; the entry points turn one into a line and exit status 2."""

import pytest

from fftrain.errors import UserError, one_line


def _user_facing_classes():
    from fftrain.training.checkpoint import CheckpointError
    from fftrain.config import ConfigError
    from fftrain.data.records import DataError, ShardTruncated
    from fftrain.commands.eval import EvalUsageError
    from fftrain.evaluation.export import OnnxParityError
    from fftrain.evaluation.merge_quality import RunResultsError
    from fftrain.training.output_lock import OutputLockedError
    from fftrain.commands.train import StartupRefused
    from fftrain.training.trainer import TrainingDiverged
    from recordio_tools.cli import UsageError
    from recordio_tools.images import ImageError
    from recordio_tools.manifest import ManifestError
    from recordio_tools.overlap_split import SplitError
    from recordio_tools.overlaps import OverlapsError
    from recordio_tools.recordio import RecordIOError
    from recordio_tools.relabel import RelabelError
    from recordio_tools.verification_bin import VerificationBinError

    return [CheckpointError, ConfigError, DataError, ShardTruncated, EvalUsageError, OnnxParityError, RunResultsError,
            OutputLockedError, StartupRefused, TrainingDiverged, UsageError, ImageError, ManifestError, SplitError,
            OverlapsError, RecordIOError, RelabelError, VerificationBinError]


def test_every_user_facing_error_is_a_user_error():
    import recordio_tools.errors

    assert UserError is recordio_tools.errors.UserError
    for cls in _user_facing_classes():
        assert issubclass(cls, UserError), cls


def test_one_line_joins_a_multi_line_message():
    assert one_line(ValueError("a\n  b\n\n")) == "a; b"


def test_fftrain_subcommand_user_error_is_one_line_exit_2(tmp_path, capsys):
    from fftrain.cli import main

    code = main(["fuse", "--checkpoint", str(tmp_path / "nope"), "--t1", "0.7", "--dry-run"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and str(tmp_path / "nope") in err[0], err


def test_recordio_tools_user_error_is_one_line_exit_2(tmp_path, capsys):
    from cli_helpers import run_cli

    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "nope"))
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("recordio_tools inspect: error: "), err


def test_a_bug_keeps_its_traceback(monkeypatch):
    from fftrain import cli

    def broken(args):
        raise KeyError("a bug")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["fuse"].set_defaults(run=broken)
    with pytest.raises(KeyError):
        cli.main(["fuse", "--checkpoint", "x", "--t1", "0.7", "--dry-run"])
