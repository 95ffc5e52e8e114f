"""The fuzz tier: every target file of tests/fuzz_harness.py mutated by hypothesis; each case must end in
exit 0 or one line and exit 2, with no traceback, no allocation above the bound and nothing outside --out
changed. A fixed small budget here; the long run is marked slow (and benchmarks/bench_fuzz.py times it)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz_harness import TARGETS, Mutation, build_workspace, json_paths, mutations, run_case

FAST_BUDGET = 8  # cases per target in the fast tier
SLOW_BUDGET = 300


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("fuzz"))


def _check_target(workspace, name: str, budget: int) -> None:
    target = TARGETS[name]
    paths = json_paths((workspace / target.file).read_text()) if target.kind == "json" else None

    @settings(max_examples=budget, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(mutation=mutations(target.kind, paths))
    def case(mutation):
        outcome = run_case(workspace, target, mutation)
        assert outcome.ok, f"{name} {mutation}: {outcome.problem()}"

    case()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_inputs_end_cleanly(workspace, name):
    _check_target(workspace, name, FAST_BUDGET)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_inputs_end_cleanly_long(workspace, name):
    _check_target(workspace, name, SLOW_BUDGET)


@pytest.mark.parametrize("name,mutation", [  # the cases of the issue, named
    ("manifest-train-start", Mutation("replace", path=("datasets", 0, "num_classes"), value=10 ** 12)),
    ("manifest-verify", Mutation("replace", path=("datasets", 0, "num_classes"), value=10 ** 12)),
    ("manifest-verify", Mutation("replace", path=("datasets", 0, "num_images"), value=float("nan"))),
    ("manifest-inspect", Mutation("replace", path=("datasets", 0, "num_images"), value=float("nan"))),
    ("sibling-manifest-relabel", Mutation("replace", path=("datasets", 0, "num_images"), value=float("nan"))),
    ("label-map-relabel", Mutation("replace", path=("label_map", 4), value=10 ** 12)),
    ("label-map-relabel", Mutation("replace", path=("label_map", 4), value=10 ** 30)),
    ("manifest-verify", Mutation("duplicate-key", value="fftrain-manifest")),
    ("manifest-verify", Mutation("deep", path=("datasets",))),
    ("config-yaml", Mutation("token", position=0.2, value=".inf")),
    ("config-yaml", Mutation("duplicate-key", position=0.2)),
    ("verification-bin", Mutation("truncate", position=0.5)),
])
def test_named_hostile_inputs_are_refused(workspace, name, mutation):
    outcome = run_case(workspace, TARGETS[name], mutation)
    assert outcome.ok and outcome.code in (1, 2), outcome.problem()  # verify: 1, problems listed


@pytest.mark.parametrize("name,mutation", [
    ("meta-json-fuse", Mutation("replace", path=("num_classes_fused",), value=10 ** 12)),
    ("meta-json-fuse", Mutation("replace", path=("world_size",), value="1")),
    ("meta-json-fuse", Mutation("delete", path=("world_size",))),
    ("meta-json-fuse", Mutation("replace", path=("datasets",), value="ab")),
    ("state-json-fuse", Mutation("deep", path=("entries",))),
    ("dcp-metadata-fuse", Mutation("insert", position=1e-05, data=b"BM")),  # BINBYTES claiming 2.4 GB
])
def test_named_hostile_checkpoint_files_are_refused(workspace, name, mutation):
    outcome = run_case(workspace, TARGETS[name], mutation)
    assert outcome.ok and outcome.code == 2, outcome.problem()
