"""One family of errors a user can cause; the entry points turn one into a line and exit status 2."""

import pytest

from fftrain.errors import UserError, one_line


#: exceptions that are not the user's doing: a bug (a tensor on the wrong device), a start-up that
#: torchrun's next restart round retries (exit 1, not 2), and the codec's internal framing error, which
#: every caller turns into a RecordIOError naming the file
NOT_USER_ERRORS = {"fftrain.distributed.comm.CommDeviceError", "fftrain.distributed.context.StartupTimeout",
                   "recordio_tools.recordio.FramingError"}


def _exception_classes() -> dict[str, type]:
    """Every exception class defined in the two packages (all their modules imported)."""
    import importlib
    import inspect
    import pkgutil

    import fftrain
    import recordio_tools

    found = {}
    for package in (fftrain, recordio_tools):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                    found[f"{module.__name__}.{name}"] = value
    return found


def test_every_user_facing_error_is_a_user_error():
    import recordio_tools.errors

    assert UserError is recordio_tools.errors.UserError
    classes = _exception_classes()
    assert len(classes) >= 25 and NOT_USER_ERRORS <= set(classes)  # the discovery found them all
    not_user = sorted(name for name, cls in classes.items() if not issubclass(cls, UserError))
    assert not_user == sorted(NOT_USER_ERRORS)


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
