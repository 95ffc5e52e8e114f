"""fftrain from a non-editable install, used from a folder outside the checkout: `python -m fftrain`, the
packaged configs by name, `-m fftrain.train`, and the commands' help.

The package is built from a copy of the sources into a `--target` folder put first on PYTHONPATH, so it
wins over the editable install of the shared environment."""

import os
import shutil
import subprocess
import sys

import pytest

from repo_paths import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site")
    shutil.copy(REPO / "setup.py", source)
    for package in ("fftrain", "recordio_tools"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=600)
    outside = tmp_path_factory.mktemp("elsewhere")
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*args, timeout=300):
        return subprocess.run([sys.executable, *args], cwd=outside, env=env, capture_output=True, text=True,
                              timeout=timeout)

    return run, target


def test_the_installed_package_is_the_one_imported(installed):
    run, target = installed
    out = run("-c", "import fftrain, fftrain.configs as c; print(fftrain.__file__); print(c.packaged_configs())")
    assert out.returncode == 0, out.stderr
    where, names = out.stdout.splitlines()
    assert where.startswith(str(target))
    assert names == "['demo_cpu', 'six_datasets_r50']"


def test_python_m_fftrain_and_train_help_list_the_packaged_configs(installed):
    run, _ = installed
    out = run("-m", "fftrain", "train", "--help")
    assert out.returncode == 0, out.stderr
    assert "demo_cpu, six_datasets_r50" in " ".join(out.stdout.split())
    for command, flag in (("eval", "--ijb-target"), ("export", "--torch")):
        out = run("-m", "fftrain", command, "--help")
        assert out.returncode == 0 and flag in out.stdout, out.stderr


def test_a_packaged_config_by_name_loads_and_a_bad_key_is_one_line(installed):
    run, _ = installed
    out = run("-m", "fftrain.train", "--config", "six_datasets_r50", "--set", "optim.lrr=0.1")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "optim.lrr" in lines[0], out.stderr
    out = run("-m", "fftrain", "train", "--config", "six_datasets_r50", "--set", "data.manifest=/nonexistent/m.json",
              "--set", "device=cpu")
    assert out.returncode == 2 and "/nonexistent/m.json" in out.stderr, out.stderr


def test_the_user_path_from_the_install_with_a_real_checkpoint(installed, synth, tmp_path):
    """From the install, outside the checkout: the launcher trains 2 ranks through fusion, then the run's own
    checkpoint is exported (backbone.pth, ONNX), evaluated on an IJB-C layout set, and the run reported."""
    import json

    import torch

    from ijb_helpers import write_ijb_set
    from train_helpers import torchrun_settings

    run, _ = installed
    out_dir = tmp_path / "run"
    sets = torchrun_settings(synth, out_dir, **{"optim.total_steps": 8, "optim.lr_milestones": "[6]"})
    trained = run("-m", "fftrain", "train", "--nproc-per-node", "2", *sets, timeout=480)
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = out_dir / "checkpoints" / "step-00000008"

    exported = run("-m", "fftrain", "export", "--checkpoint", str(checkpoint), "--torch", str(tmp_path / "backbone.pth"),
                   "--onnx", str(tmp_path / "backbone.onnx"))
    assert exported.returncode == 0, exported.stderr
    state = torch.load(tmp_path / "backbone.pth", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())

    write_ijb_set(tmp_path / "ijb", "IJBC")
    report = tmp_path / "ijb.json"
    evaluated = run("-m", "fftrain", "eval", "--checkpoint", str(checkpoint), "--ijb", str(tmp_path / "ijb"),
                    "--ijb-target", "IJBC", "--json-out", str(report))
    assert evaluated.returncode == 0, evaluated.stderr
    assert set(json.loads(report.read_text())["ijb"]["tar_at_far"]) == {"1e-06", "1e-05", "0.0001", "0.001", "0.01",
                                                                        "0.1"}

    reported = run("-m", "fftrain", "demo-report", str(out_dir))
    assert reported.returncode == 0, reported.stderr
    assert "merge vs planted truth: precision" in reported.stdout and "verification " in reported.stdout, reported.stdout
