"""The local exchange's modules form no import cycle, and the exchange imports no Django, no
other app than the protocol core, and nothing of the simulation.

Two kinds of check, because they catch different things. The static ones read every
``import`` in the exchange's modules (top level, inside functions and under ``TYPE_CHECKING``
alike, as a layer checker would): the graph between the modules must have no cycle, and no
import may leave the allowed layers. The dynamic one imports each module first, in a fresh
interpreter, without the package's ``__init__`` (which would import the others in its own
order first): a top-level cycle through that module then fails as the partially initialised
import Python reports, and the import must not have loaded Django.
"""

from __future__ import annotations

import ast
import graphlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "apps.marketdata.exchange"
PACKAGE_DIR = ROOT / "apps" / "marketdata" / "exchange"
MODULES = sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__")


def _imports(module: str) -> set[str]:
    """Every dotted name an import statement anywhere in ``module`` reaches, absolute:
    ``from x import y`` gives both ``x`` and ``x.y`` (``y`` may be a module)."""
    path = PACKAGE_DIR / f"{module}.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = PACKAGE.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def _sibling(name: str) -> str | None:
    """The exchange module ``name`` is in or below, if any (None for the package itself)."""
    prefix = PACKAGE + "."
    if name.startswith(prefix):
        return name[len(prefix) :].split(".")[0]
    return None


def test_the_exchange_modules_import_each_other_without_a_cycle() -> None:
    assert {"venue", "session", "server", "sources", "config", "auth", "errors"} <= set(MODULES)
    graph = {
        module: {s for name in _imports(module) if (s := _sibling(name)) and s != module}
        for module in MODULES
    }
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle among the exchange's modules: {' -> '.join(exc.args[1])}")
    assert set(order) == set(MODULES)
    # The shape the layering promises: the venue depends on no session, source or server.
    assert graph["venue"] <= {"errors", "frames", "markets", "stats"}, graph["venue"]
    assert graph["config"] <= {"errors", "frames"}, graph["config"]
    assert graph["errors"] == set()


def test_the_exchange_imports_no_django_and_of_the_project_only_the_protocol_core() -> None:
    allowed = ("apps.marketdata.kalshi", PACKAGE)
    for module in MODULES:
        names = _imports(module)
        outside = sorted(
            n
            for n in names
            if n.split(".")[0] == "django"
            or (n.split(".")[0] == "apps" and not n.startswith(allowed) and n != "apps.marketdata")
        )
        assert not outside, (module, outside)


def test_marketdata_imports_nothing_from_the_simulation() -> None:
    """Simulation builds on market data, never the other way (the planted world lives here)."""
    offenders = []
    for path in sorted((ROOT / "apps" / "marketdata").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            named = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            if any(n == "apps.simulation" or n.startswith("apps.simulation.") for n in named):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


# The child imports one module first, with the package registered but its __init__ not run, then
# the package as users do; it prints whether Django got loaded along the way.
_CHILD = """
import importlib, sys, types
package, directory, module = sys.argv[1:4]
stub = types.ModuleType(package)
stub.__path__ = [directory]
sys.modules[package] = stub
importlib.import_module(f"{package}.{module}")
del sys.modules[package]
for name in [n for n in sys.modules if n.startswith(package + ".")]:
    del sys.modules[name]
importlib.import_module(f"{package}.{module}")
print("django" if "django" in sys.modules else "no django")
"""


@pytest.mark.parametrize("module", MODULES)
def test_each_exchange_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, PACKAGE, str(PACKAGE_DIR), module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no django", done.stdout
