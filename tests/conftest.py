import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("FFTRAIN_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "mxnet"

sys.path.insert(0, str(REPO / "tests"))  # the helpers (dist_harness, watchdog, ...) for tests in the tier folders
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it")
    config.addinivalue_line("markers", "slow: longer end-to-end runs")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: that matches a folder named gpu
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mxnet_fixtures() -> pathlib.Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"MXNet fixtures not found at {FIXTURES}; check out ../shared beside the repo "
                    "or set FFTRAIN_SHARED")
    return FIXTURES


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """The tiny synthetic six-dataset set (preset 'tiny', seed 0), made once per run; tests only read it."""
    from recordio_tools.synthetic import generate_synthetic_set

    out = tmp_path_factory.mktemp("synth") / "set"
    generate_synthetic_set(str(out), preset="tiny", seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """The tiny synthetic set with every kind of planted noise (the audit's tests read its ground truth)."""
    from recordio_tools import cli

    out = tmp_path_factory.mktemp("synth") / "noisy"
    assert cli.main(["synth", "--out", str(out), "--tiny", "--quiet", "--workers", "1", "--noise-mislabel", "0.05",
                     "--noise-duplicates", "0.1", "--noise-leaked-ids", "4"]) == 0
    return out
