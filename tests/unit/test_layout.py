"""The code's shape: who may import whom, and no import cycles.

The ERP workers depend on the contract (``contract/``) and the Pleo client (``pleo/``) only, never
on producer internals; nothing a production process imports reaches the development tools
(``devtools/``: the simulator, the demo).
"""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contract", "pleo", "producer", "consumers", "devtools")


@functools.cache
def loaded_by(module: str) -> frozenset[str]:
    """First-party modules a fresh interpreter holds after ``import module``.

    Asked once per module and process: two tests check ``consumers.tasks``, and a fresh
    interpreter importing it loads the same modules each time.
    """
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return frozenset(m for m in json.loads(out) if m.split(".")[0] in PACKAGES)


@pytest.mark.parametrize("module", ["consumers", "consumers.tasks"])
def test_the_workers_import_only_the_contract_the_pleo_client_and_themselves(module: str) -> None:
    """``import consumers`` (and the worker's task module) loads nothing of the producer's."""
    outside = {
        m for m in loaded_by(module) if m.split(".")[0] not in {"contract", "pleo", "consumers"}
    }
    assert outside == set()


@pytest.mark.parametrize(
    "module", ["producer.tasks", "consumers.tasks", "producer.webhook", "producer.enqueue_api"]
)
def test_production_processes_never_load_the_development_tools(module: str) -> None:
    """A worker, the webhook receiver or the enqueue API never imports the simulator or demo."""
    assert {m for m in loaded_by(module) if m.startswith("devtools")} == set()


def first_party_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules a file imports when it is loaded (module level, not lazily inside a function).

    ``from package import module`` counts as importing that module, not the package's
    ``__init__`` (which only re-exports).
    """
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & modules
            found.update(submodules or {node.module})
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found & modules


def module_graph() -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports at load time."""
    paths = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    names = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in paths
    }
    return {name: first_party_imports(path, set(names)) for name, path in names.items()}


def test_there_is_no_import_cycle() -> None:
    """No module, through the modules it imports at load time, comes back to itself."""
    graph = module_graph()
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_contract_and_the_pleo_client_import_no_side() -> None:
    """The shared packages never import the producer, the workers or the tools."""
    graph = module_graph()
    leaks = {
        (name, dep)
        for name, deps in graph.items()
        if name.split(".")[0] in {"contract", "pleo"}
        for dep in deps
        if dep.split(".")[0] not in {"contract", "pleo"}
    }
    assert leaks == set()


def test_the_python_api_of_earlier_releases_still_imports() -> None:
    """Services written against the README's Python API before the one contract keep working."""
    from contract.settings import Settings
    from producer.config import ITEMS_QUEUE, PRODUCER_QUEUE, PRODUCER_TASK
    from producer.config import Settings as OldSettings
    from producer.triggers import enqueue

    assert OldSettings is Settings
    assert (PRODUCER_TASK, PRODUCER_QUEUE, ITEMS_QUEUE) == (
        "producer.enqueue_export_job",
        "pleo-export-producer",
        "pleo-export-items",
    )
    assert callable(enqueue)


def test_nothing_in_the_project_imports_the_compatibility_module() -> None:
    """``producer/config.py`` is for other services only: our own code uses the contract."""
    graph = module_graph()
    assert {name for name, deps in graph.items() if "producer.config" in deps} == set()


def test_no_module_but_the_key_layout_spells_a_redis_key() -> None:
    """Keys come from ``contract/keys.py`` functions: no literal key or suffix anywhere else."""
    spelled = re.compile(r"""["'](pleo-export:\S|unacked(_index)?["'])|job_key\(""")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for pkg in ("contract", "pleo", "producer", "consumers")
        for path in (ROOT / pkg).rglob("*.py")
        if path != ROOT / "contract" / "keys.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if spelled.search(line)
    ]
    assert found == []


def test_the_ledgers_redis_is_opened_one_way() -> None:
    """``ledger_client(settings)``, never ``redis_client(settings.ledger_url)``: only the former
    knows the Sentinel master (a worker step that skipped it crashed on a sentinel:// URL)."""
    callers = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("contract", "consumers", "producer", "pleo", "devtools")
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"redis_client\([^)]*ledger_url", line) and path.name != "store.py"
    ]
    assert callers == []
