"""Every module of datajuicer_ray imports on its own, and the package's module-level imports form no cycle.

At run time: one interpreter imports each module with every ``datajuicer_ray`` module forgotten before it
(third-party packages stay loaded: cycles are ours, and torch need not be imported fifty times), so a module
that only works when something else imported its neighbours first fails here. A module whose third-party
package is not installed (vllm needs a GPU image) is skipped; a missing ``datajuicer_ray`` module is not.

Statically: the graph of every import of ours in the package and the benchmarks, ``if TYPE_CHECKING:`` blocks
and imports inside functions included (a cycle hidden from the interpreter is one refactoring away from a real
one), must have no cycle.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "datajuicer_ray"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))
BENCHMARKS = ROOT / "benchmarks"
OURS = set(MODULES) | {_module_name(p) for p in BENCHMARKS.rglob("*.py")}

_IMPORT_EACH = textwrap.dedent(
    """
    import importlib, json, sys, traceback

    results = {}
    for name in json.loads(sys.stdin.read()):
        for loaded in [m for m in sys.modules if m == "datajuicer_ray" or m.startswith("datajuicer_ray.")]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
            results[name] = ["ok", ""]
        except ModuleNotFoundError as err:
            ours = (err.name or "").split(".")[0] == "datajuicer_ray"
            results[name] = ["error" if ours else "missing", traceback.format_exc(limit=-3)]
        except BaseException:
            results[name] = ["error", traceback.format_exc(limit=-3)]
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def imported_alone() -> dict[str, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH],
        input=json.dumps(MODULES),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_module_is_found():
    assert {"datajuicer_ray", "datajuicer_ray.cli", "datajuicer_ray.report.html"} <= set(MODULES)
    assert len(MODULES) > 40


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_on_its_own(imported_alone, module):
    status, detail = imported_alone[module]
    if status == "missing":
        pytest.skip(f"a third-party package is not installed here: {detail.strip().splitlines()[-1]}")
    assert status == "ok", f"import {module} alone failed:\n{detail}"


# ----------------------------------------------------------------------------------------------
# the static graph


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> set[str]:
    """The modules of ours (package and benchmarks) that a file imports anywhere: at module level, under
    ``if TYPE_CHECKING:``, or lazily inside a function. A lazy cycle is still a cycle: it only moves the
    failure from import time to the first call, and it means two modules each own half of one concept."""
    module, is_package = _module_name(path), path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            found.add(target)
            # `from pkg import mod` imports the submodule pkg.mod
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in OURS)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first: only the module itself is an edge here.
    return {m for m in found if m in OURS and m != module}


def _import_graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for root in (PACKAGE, BENCHMARKS) for p in root.rglob("*.py")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(out)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle():
    """Imports anywhere in the package and the benchmarks, lazy ones included, form no cycle
    (report/html <-> inspect, vision/models <-> onnx_dinov2, bench_scorers <-> scorer_figures were ones)."""
    assert _cycles(_import_graph()) == []
