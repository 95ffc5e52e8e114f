"""Hostile-input fuzzing, shared by the fuzz tier (tests/fuzz/) and benchmarks/bench_fuzz.py.

A *workspace* holds small real inputs: two datasets (`a` referenced in place, `b` copied by `build`), the
training set `train`, a second set `train2` beside it that references `a` too, a label map, a YAML config
and a verification .bin. A *target* names one of those files and the command that reads it; a *mutation*
(drawn by hypothesis, see `mutations`) changes the file's bytes. `run_case` applies one mutation, runs the
command in this process and says what happened::

    workspace = build_workspace(tmp_path)
    outcome = run_case(workspace, TARGETS["manifest"], Mutation("replace", path=("num_classes",), value=10**12))
    assert outcome.ok, outcome.problem()

A case is fine when the command exits 0 or 2 (the one-line refusal), raised no other exception (which would
be a traceback), peaked below `ALLOCATION_BOUND` of traced memory (numpy and Python allocations), and left
every file outside its --out as it was (the mutated file is restored after each case).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pathlib
import shutil
import traceback
import tracemalloc
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

ALLOCATION_BOUND = 256 << 20  # the workspace is a few hundred KiB: anything near this was ordered by a file
HOSTILE_VALUES = (float("nan"), float("inf"), -1, 0, 10 ** 12, 10 ** 30, 2 ** 63, -(2 ** 63) - 1, 1.5, True, None,
                  "", "x" * 300, "../../etc/passwd", [], {}, [1, 2], {"a": 1})
HOSTILE_INTS = (0, 1, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 63 - 1, 2 ** 64 - 1)
HOSTILE_TEXT = ("NaN", "Infinity", "-Infinity", "1e400", "100000000000000000000000000000", "-1", "null", "[", "{",
                '"x"', "[" * 2000 + "]" * 2000, "1" * 5000)
HOSTILE_YAML = (".inf", ".nan", "-.inf", "1e400", "1000000000000000000000000000000", "[", "{a: 1, a: 2}",
                "!!python/object/apply:os.system ['true']", "&a [*a]", "[" * 500 + "]" * 500, "~", "''",
                "yes", "0x7fffffffffffffffff")


@dataclass(frozen=True)
class Mutation:
    """One change to a file: `op` with its arguments (see `mutate`)."""

    op: str
    path: tuple = ()
    value: Any = None
    position: float = 0.0  # where in the file, as a fraction of its length
    data: bytes = b""


@dataclass
class Target:
    """A file of the workspace and the command that reads it (`run(workspace) -> exit status`)."""

    name: str
    file: str  # relative to the workspace
    kind: str  # "json", "yaml", "text" or "bytes"
    run: Callable[[pathlib.Path], int]
    outputs: tuple[str, ...] = ()  # folders the command may write (relative)
    codes: tuple[int, ...] = (0, 2)  # fine exit statuses (verify: 1 = problems found and listed)


@dataclass
class Outcome:
    code: int | None
    error: str = ""  # the traceback of an exception that escaped the command
    peak_bytes: int = 0
    changed: list[str] = field(default_factory=list)  # files outside the outputs that changed
    stderr: str = ""
    codes: tuple[int, ...] = (0, 2)

    @property
    def ok(self) -> bool:
        return (self.code in self.codes and not self.error and self.peak_bytes <= ALLOCATION_BOUND and not self.changed
                and (self.code == 0 or self.stderr.strip().count("\n") == 0))

    def problem(self) -> str:
        return (f"exit {self.code}; peak {self.peak_bytes / 2**20:.1f} MiB; changed {self.changed}; stderr "
                f"{self.stderr[-500:]!r}; {self.error[-2000:]}")


# ---- the workspace -------------------------------------------------------------------------------

def _dataset(folder: pathlib.Path, name: str, counts: list[int], shards: int, seed: int) -> None:
    from PIL import Image

    from recordio_tools.files import atomic_directory
    from recordio_tools.shards import DatasetWriter

    rng = np.random.default_rng(seed)
    with atomic_directory(str(folder), "convert") as tmp:
        writer = DatasetWriter(tmp, name, shards)
        for label, count in enumerate(counts):
            for _ in range(count):
                out = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(out, "JPEG")
                writer.add(label, out.getvalue())
        writer.finish()


def _verification_bin(path: pathlib.Path, pairs: int) -> None:
    from PIL import Image

    from recordio_tools.verification_bin import write_verification_bin

    rng = np.random.default_rng(7)
    images = []
    for _ in range(2 * pairs):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(out, "JPEG")
        images.append(out.getvalue())
    write_verification_bin(path, images, [i % 2 == 0 for i in range(pairs)])


def _checkpoint(root: pathlib.Path) -> str:
    """A one-process checkpoint of 7 classes in 3 dimensions, its state.json holding optimizer settings."""
    import torch

    from fftrain.distributed import single_process_context
    from fftrain.training.checkpoint import ShardedRows, save_checkpoint

    classes, dim = 7, 3
    replicated = {"model": {"w": torch.ones(2)}, "label_map": torch.arange(classes),
                  "optim": {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": ["w"], "foreach": None}]}}
    meta = {"num_classes_fused": classes, "num_classes_source": classes, "embedding_size": dim,
            "datasets": [{"name": "a", "num_classes": 3}, {"name": "b", "num_classes": 4}]}
    with contextlib.redirect_stderr(io.StringIO()):
        return save_checkpoint(str(root / "run" / "checkpoints"), 4, ctx=single_process_context(),
                               replicated=replicated,
                               sharded={"fc_weight": ShardedRows(torch.randn(classes, dim), classes)}, meta=meta,
                               rank_state={"torch_rng": torch.get_rng_state()}, keep_last=2)


def build_workspace(root: pathlib.Path) -> pathlib.Path:
    """The inputs every target reads (see the module doc); returns `root`."""
    from recordio_tools import cli

    _dataset(root / "a", "a", [2, 1, 2], shards=2, seed=1)
    _dataset(root / "b", "b", [1, 2], shards=1, seed=2)
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["build", "--out", str(root / "train"), str(root / "a"), str(root / "b")]) == 0
        assert cli.main(["build", "--out", str(root / "train2"), str(root / "a")]) == 0
    label_map = {"format": "fftrain-label-map", "datasets": [{"name": "a", "num_classes": 3},
                                                             {"name": "b", "num_classes": 2}],
                 "num_classes_fused": 4, "label_map": [0, 1, 2, 0, 3]}
    (root / "map.json").write_text(json.dumps(label_map))
    with contextlib.redirect_stderr(io.StringIO()):  # refused (train references `a`); leaves its lock file
        assert cli.main(["relabel", str(root / "train"), "--label-map", str(root / "map.json"), "--in-place"]) == 2
    (root / "config.yaml").write_text("optim:\n  lr: 0.1\n  total_steps: 10\n  lr_milestones: [8]\n  warmup_steps: 2\n"
                                      "head:\n  scale: 64.0\n"
                                      "data:\n  batch_size: 8\n")
    _verification_bin(root / "v.bin", pairs=10)
    _checkpoint(root)
    return root


# ---- the commands --------------------------------------------------------------------------------

def _recordio_tools(*argv) -> int:
    from recordio_tools import cli

    return cli.main([str(a) for a in argv])


def _library(call) -> int:
    """0 when `call()` returns, 2 when it raises the one-line UserError (printed as the CLIs print it)."""
    from recordio_tools.errors import UserError, report_user_error

    try:
        call()
    except UserError as e:
        return report_user_error("fuzz", e)
    return 0


def _load_config(root: pathlib.Path) -> int:
    from fftrain.config import load_config

    return _library(lambda: load_config(str(root / "config.yaml")))


def _load_bin(root: pathlib.Path) -> int:
    from fftrain.evaluation.verification import check_pair_count, load_bin

    def call():
        _, issame = load_bin(str(root / "v.bin"), part=(0, 1), cache=False)
        check_pair_count(root / "v.bin", len(issame))

    return _library(call)


def _verify(*argv) -> Callable[[pathlib.Path], int]:
    return lambda root: _recordio_tools("verify", *[root / a for a in argv])


def _startup_check(root: pathlib.Path) -> int:
    """What `fftrain train` checks of the data at start (the data loader's `prepare`, no training)."""
    import torch

    from fftrain.data.read_spec import prepare

    return _library(lambda: prepare(str(root / "train"), num_shards=1, batch_size=2, device=torch.device("cpu")))


CHECKPOINT = "run/checkpoints/step-00000004"


def _fuse(root: pathlib.Path) -> int:
    from fftrain import cli

    return cli.main(["fuse", "--checkpoint", str(root / CHECKPOINT), "--t1", "0.7", "--dry-run", "--backend", "torch",
                     "--out", str(root / "out")])


def _resume_point(root: pathlib.Path) -> int:
    """What `fftrain train --resume auto` reads of the run folder at start."""
    from fftrain.distributed import single_process_context
    from fftrain.training.checkpoint import read_meta, resolve_resume

    def call():
        path = resolve_resume("auto", str(root / "run" / "checkpoints"), single_process_context())
        if path:
            read_meta(path)

    with contextlib.redirect_stderr(io.StringIO()):
        return _library(call)


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("manifest-verify", "train/manifest.json", "json", _verify("train"), codes=(0, 1, 2)),
    Target("manifest-inspect", "train/manifest.json", "json", lambda r: _recordio_tools("inspect", r / "train")),
    Target("manifest-train-start", "train/manifest.json", "json", _startup_check),
    Target("sibling-manifest-relabel", "train2/manifest.json", "json",
           lambda r: _recordio_tools("relabel", r / "train", "--label-map", r / "map.json", "--in-place")),
    Target("dataset-json-verify", "a/dataset.json", "json", _verify("a"), codes=(0, 1, 2)),
    Target("dataset-json-build", "b/dataset.json", "json",
           lambda r: _recordio_tools("build", "--out", r / "out", r / "b"), outputs=("out",)),
    Target("index-verify", "a/shard-00000.idx", "text", _verify("a"), codes=(0, 1, 2)),
    Target("index-train-start", "train/train.idx", "text", _startup_check),
    Target("record-verify", "a/shard-00001.rec", "bytes", _verify("a"), codes=(0, 1, 2)),
    Target("record-build", "b/shard-00000.rec", "bytes",
           lambda r: _recordio_tools("build", "--out", r / "out", r / "b"), outputs=("out",)),
    Target("label-map-relabel", "map.json", "json",
           lambda r: _recordio_tools("relabel", r / "train", "--label-map", r / "map.json", "--out", r / "out"),
           outputs=("out",)),
    Target("config-yaml", "config.yaml", "yaml", _load_config),
    Target("verification-bin", "v.bin", "bytes", _load_bin),
    Target("meta-json-fuse", f"{CHECKPOINT}/meta.json", "json", _fuse, outputs=("out",)),
    Target("meta-json-resume", f"{CHECKPOINT}/meta.json", "json", _resume_point),
    Target("state-json-fuse", f"{CHECKPOINT}/state.json", "json", _fuse, outputs=("out",)),
    Target("dcp-metadata-fuse", f"{CHECKPOINT}/.metadata", "bytes", _fuse, outputs=("out",)),
]}


# ---- mutations -----------------------------------------------------------------------------------

def _json_paths(value, prefix=()) -> list[tuple]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            paths.extend(_json_paths(child, prefix + (key,)))
    elif isinstance(value, list):
        for i, child in enumerate(value[:8]):
            paths.extend(_json_paths(child, prefix + (i,)))
    return paths


def json_paths(text: str) -> list[tuple]:
    return _json_paths(json.loads(text))


def _set(body, path: tuple, value, delete: bool = False):
    if not path:
        return value
    node = body
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return body


def _json_text(body) -> str:
    return json.dumps(body)  # NaN and Infinity written as the bare tokens Python's json accepts


def mutate(original: bytes, kind: str, mutation: Mutation) -> bytes:
    """`original` with `mutation` applied (ops: replace, delete, duplicate-key, deep, token, flip, truncate,
    insert, overwrite-int)."""
    op, at = mutation.op, int(mutation.position * len(original))
    if kind == "json" and op in ("replace", "delete", "duplicate-key", "deep"):
        body = json.loads(original)
        if op == "replace":
            return _json_text(_set(body, mutation.path, mutation.value)).encode()
        if op == "delete":
            return _json_text(_set(body, mutation.path, None, delete=True)).encode() if mutation.path else b""
        if op == "deep":
            return _json_text(_set(body, mutation.path, "@DEEP@")).replace('"@DEEP@"', "[" * 100000 + "]" * 100000
                                                                            ).encode()
        text = _json_text(body)  # duplicate-key: the first key of the top object given again
        if isinstance(body, dict) and body:
            key = next(iter(body))
            return ("{" + json.dumps(key) + ": " + json.dumps(mutation.value) + ", " + text[1:]).encode()
        return text.encode()
    if kind == "yaml" and op == "token":
        lines = original.decode().splitlines()
        i = at % len(lines)
        head = lines[i].split(":", 1)[0]
        return "\n".join(lines[:i] + [f"{head}: {mutation.value}"] + lines[i + 1:]).encode() + b"\n"
    if kind == "yaml" and op == "duplicate-key":
        lines = original.decode().splitlines()
        i = at % len(lines)
        return "\n".join(lines[:i + 1] + [lines[i]] + lines[i + 1:]).encode() + b"\n"
    if op == "token":  # text files: a number replaced by a hostile token
        text = original.decode("latin1")
        start = at
        while start < len(text) and not text[start].isdigit():
            start += 1
        end = start
        while end < len(text) and text[end].isdigit():
            end += 1
        return (text[:start] + str(mutation.value) + text[end:]).encode("latin1")
    if op == "flip":
        data = bytearray(original)
        if data:
            data[min(at, len(data) - 1)] ^= 1 << (mutation.value or 0) % 8
        return bytes(data)
    if op == "truncate":
        return original[:at]
    if op == "insert":
        return original[:at] + mutation.data + original[at:]
    if op == "overwrite-int":
        width = 8 if mutation.value > 2 ** 32 - 1 else 4
        raw = int(mutation.value).to_bytes(width, "little")
        return original[:at] + raw + original[at + width:]
    return original


def mutations(kind: str, paths: list[tuple] | None = None):
    """A hypothesis strategy of mutations fit for a file of `kind` (`paths`: the JSON file's value paths)."""
    from hypothesis import strategies as st

    position = st.floats(0, 1, allow_nan=False)
    byte_level = st.one_of(
        st.builds(Mutation, op=st.just("flip"), position=position, value=st.integers(0, 7)),
        st.builds(Mutation, op=st.just("truncate"), position=position),
        st.builds(Mutation, op=st.just("insert"), position=position, data=st.binary(min_size=1, max_size=16)),
        st.builds(Mutation, op=st.just("overwrite-int"), position=position, value=st.sampled_from(HOSTILE_INTS)))
    if kind == "json":
        path = st.sampled_from(paths)
        value = st.one_of(st.sampled_from(HOSTILE_VALUES), st.integers(), st.text(max_size=8))
        return st.one_of(
            st.builds(Mutation, op=st.just("replace"), path=path, value=value),
            st.builds(Mutation, op=st.just("delete"), path=path),
            st.builds(Mutation, op=st.just("deep"), path=path),
            st.builds(Mutation, op=st.just("duplicate-key"), value=value),
            byte_level)
    if kind == "yaml":
        return st.one_of(st.builds(Mutation, op=st.just("token"), position=position,
                                   value=st.sampled_from(HOSTILE_YAML)),
                         st.builds(Mutation, op=st.just("duplicate-key"), position=position), byte_level)
    if kind == "text":
        return st.one_of(st.builds(Mutation, op=st.just("token"), position=position,
                                   value=st.sampled_from(HOSTILE_TEXT)), byte_level)
    return byte_level


# ---- one case ------------------------------------------------------------------------------------

def _snapshot(root: pathlib.Path, skip: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for here, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(here, root)
        if rel_dir.split(os.sep)[0] in skip:
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(here, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return found


def run_case(root: pathlib.Path, target: Target, mutation: Mutation) -> Outcome:
    """Apply `mutation` to the target's file, run its command, restore the file; what happened."""
    path = root / target.file
    original = path.read_bytes()
    before = _snapshot(root, target.outputs)
    path.write_bytes(mutate(original, target.kind, mutation))
    stderr = io.StringIO()
    outcome = Outcome(code=None, codes=target.codes)
    tracemalloc.start()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
            outcome.code = target.run(root)
    except SystemExit as e:  # argparse
        outcome.code = e.code if isinstance(e.code, int) else 2
    except BaseException:  # noqa: BLE001 - anything escaping the command is a traceback the user would see
        outcome.error = traceback.format_exc()
    finally:
        outcome.peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        path.write_bytes(original)
    outcome.stderr = stderr.getvalue()
    after = _snapshot(root, target.outputs)
    outcome.changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    for output in target.outputs:
        shutil.rmtree(root / output, ignore_errors=True)
    return outcome
