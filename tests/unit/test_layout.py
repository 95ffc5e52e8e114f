"""The floor plan's rules, checked on the source: no import circle, torch.distributed in one place,
the RecordIO framing defined once."""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("fftrain", "recordio_tools")


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: pathlib.Path, known: set[str], everywhere: bool) -> set[str]:
    """Modules of the two packages `name` imports: at module level, or `everywhere` (inside functions too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in (ast.walk(tree) if everywhere else tree.body):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def _import_graph(everywhere: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(name, path, set(modules), everywhere) for name, path in modules.items()}
    for name in modules:  # importing a.b.c imports the packages a and a.b first
        parent = name.rpartition(".")[0]
        if parent:
            graph[name].add(parent)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _is_package_to_child(a: str, b: str) -> bool:
    return b.startswith(a + ".")


@pytest.mark.parametrize("everywhere", [False, True], ids=["module-level", "in-functions-too"])
def test_no_import_circle(everywhere):
    graph = _import_graph(everywhere)
    # a package's __init__ re-exporting its own submodules is not a circle: Python imports the
    # package first and the submodule sees it partially initialised, which is how packages work
    for name in graph:
        graph[name] = {t for t in graph[name] if not _is_package_to_child(name, t) and not _is_package_to_child(t, name)}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_circle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _imports_torch_distributed(path: pathlib.Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if any(n == "torch.distributed" or n.startswith("torch.distributed.") for n in names):
            return True
    return False


def test_torch_distributed_only_in_the_distributed_package_and_the_checkpoint():
    allowed = ("fftrain/distributed/", "fftrain/training/checkpoint/")
    offenders = [str(path.relative_to(REPO)) for path in _modules().values()
                 if _imports_torch_distributed(path) and not str(path.relative_to(REPO)).startswith(allowed)]
    assert offenders == []


def test_recordio_framing_defined_once():
    definers = []
    for path in _modules().values():
        text = path.read_text()
        if "= 0xCED7230A" in text or 'struct.pack("<I", MAGIC)' in text:  # the magic word, or its bytes
            definers.append(str(path.relative_to(REPO)))
    assert sorted(set(definers)) == ["recordio_tools/recordio.py"]


#: the layers of docs/ARCHITECTURE.md, bottom up: a module may import its own layer and the ones below.
#: fftrain/training/ sits wholly above evaluation: its run services on one layer, the trainer on the next
LAYERS = [
    ("recordio_tools", "fftrain", "fftrain.errors"),
    ("fftrain.distributed",),
    ("fftrain.config", "fftrain.configs", "fftrain.demo"),
    ("fftrain.data", "fftrain.model", "fftrain.head", "fftrain.calibration", "fftrain.search"),
    ("fftrain.evaluation",),
    ("fftrain.fusion", "fftrain.training.checkpoint", "fftrain.training.faults", "fftrain.training.run_log",
     "fftrain.training.lr_schedule", "fftrain.training.resume_rules", "fftrain.training.output_lock",
     "fftrain.capacity", "fftrain.training.read_lease", "fftrain.training"),
    ("fftrain.training.trainer", "fftrain.training.startup", "fftrain.audit", "fftrain.pseudo_label"),
    ("fftrain.commands", "fftrain.cli", "fftrain.train", "fftrain.__main__"),
]
#: the one upward import: the config checks `model.backbone` against the backbone registry
ALLOWED_UPWARD = {("fftrain.config", "fftrain.model.backbones")}


def _layer_of(module: str) -> int:
    best, rank = "", None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, i
    assert rank is not None, f"{module} is in no layer"
    return rank


def test_imports_go_down_the_layers():
    upward = sorted(f"{a} -> {b}" for a, targets in _import_graph(everywhere=True).items() for b in targets
                    if _layer_of(b) > _layer_of(a) and (a, b) not in ALLOWED_UPWARD)
    assert upward == []


def test_the_layer_check_sees_function_level_imports_and_orders_the_layers():
    graph = _import_graph(everywhere=True)
    assert "fftrain.evaluation.verification" in graph["fftrain.training.trainer"]  # imported inside a method
    assert _layer_of("recordio_tools.recordio") < _layer_of("fftrain.distributed.comm") < _layer_of("fftrain.head")
    assert _layer_of("fftrain.evaluation.verification") < _layer_of("fftrain.training.checkpoint.dcp_io")
    assert _layer_of("fftrain.training.checkpoint.dcp_io") < _layer_of("fftrain.training.trainer")
    assert _layer_of("fftrain.training.trainer") < _layer_of("fftrain.commands.train")
    assert _layer_of("fftrain.calibration.thresholds") < _layer_of("fftrain.fusion.components")


def test_the_training_folder_sits_wholly_above_evaluation():
    training = [name for name in _modules() if name.startswith("fftrain.training")]
    assert min(_layer_of(name) for name in training) > _layer_of("fftrain.evaluation")


def test_no_test_module_imports_another():
    """Shared test code lives in tests/ helper modules or conftest, so each tier runs alone (scripts that
    tests hand to a subprocess count too)."""
    import re

    importing = re.compile(r"^\s*(?:from|import)\s+(?:tests\.)?(?:\w+\.)?test_\w+", re.MULTILINE)
    offenders = sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").rglob("*.py")
                       if importing.search(path.read_text()))
    assert offenders == []
