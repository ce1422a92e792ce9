"""Issue 19: the contract and the runtime are the bottom layer with one door.

    connstats.probe.contract   imports nothing else of connstats
    connstats.probe.runtime    imports nothing else of connstats but the contract
    connstats.sink, .cli       reach the probe only through those two; the CLI may also
                               import the probe's composition root (compose.py) to run it

The rules are checked on the source (every import statement, also those inside functions
and under ``TYPE_CHECKING``) and on what a sink, alerts or web-page process really loads.
No module of connstats imports itself back through others (no import circle, counting
the imports inside functions, which is how a circle used to be hidden).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Collection

import pytest

CONTRACT = "connstats.probe.contract"
RUNTIME = "connstats.probe.runtime"
BOTTOM = (CONTRACT, RUNTIME)
# the operator commands whose job is the kernel side itself: doctor tries to load the
# classifier and a tc filter, reset removes what an earlier probe left behind
KERNEL_TOOLS = {"connstats.cli.doctor", "connstats.cli.reset"}


def _package_dir(name: str) -> Path:
    module = __import__(name, fromlist=["_"])
    assert hasattr(module, "__path__") and module.__file__, f"{name} is not a package with an __init__.py"
    return Path(module.__file__).parent


def _modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` (a package) -> its source file."""
    root = _package_dir(package)
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([package, *parts])] = path
    return found


def _imports(module: str, path: Path, modules: Collection[str] = ()) -> set[str]:
    """The connstats modules that ``module`` imports anywhere in its source. ``from P import
    n`` is P.n when that is one of ``modules`` (a submodule), else P."""
    tree = ast.parse(path.read_text())
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            submodules = {f"{target}.{alias.name}" for alias in node.names
                          if node.module is None or f"{target}.{alias.name}" in modules}
            found.update(submodules)
            if not submodules or len(submodules) < len(node.names):
                found.add(target)
    return {name for name in found if name == "connstats" or name.startswith("connstats.")}


def _outside(imported: set[str], allowed: tuple[str, ...]) -> list[str]:
    return sorted(name for name in imported if not any(name == a or name.startswith(a + ".") for a in allowed))


def test_the_contract_and_the_runtime_are_packages_of_their_own():
    assert [hasattr(__import__(name, fromlist=["_"]), "__path__") for name in BOTTOM] == [True, True]


@pytest.mark.parametrize("package, allowed", [(CONTRACT, (CONTRACT,)), (RUNTIME, BOTTOM)])
def test_the_bottom_layer_imports_nothing_else_of_connstats(package, allowed):
    strays = {module: _outside(_imports(module, path), allowed) for module, path in _modules(package).items()}
    assert {module: names for module, names in strays.items() if names} == {}


def test_sink_reaches_the_probe_only_through_contract_and_runtime():
    strays = {module: _outside({n for n in _imports(module, path) if n.startswith("connstats.probe")}, BOTTOM)
              for module, path in _modules("connstats.sink").items()}
    assert {module: names for module, names in strays.items() if names} == {}


def test_cli_reaches_the_probe_only_through_contract_runtime_and_the_composition_root():
    strays = {}
    for module, path in _modules("connstats.cli").items():
        allowed = (*BOTTOM, "connstats.probe.compose")
        if module in KERNEL_TOOLS:
            allowed += ("connstats.probe.kernel",)
        strays[module] = _outside({n for n in _imports(module, path) if n.startswith("connstats.probe")}, allowed)
    assert {module: names for module, names in strays.items() if names} == {}


def _loaded(module: str) -> list[str]:
    """The modules a fresh interpreter holds after ``import module``."""
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("process", [
    "connstats.sink.compose",  # the sink: consumer, stores, its metrics
    "connstats.sink.web.compose",  # the web page
    "connstats.sink.alerts.compose",  # the alert engine
])
def test_a_sink_process_loads_nothing_of_the_probe_but_contract_and_runtime(process):
    loaded = _loaded(process)
    probe_insides = [name for name in loaded
                     if name.startswith("connstats.probe.") and not name.startswith(tuple(b + "." for b in BOTTOM))
                     and name not in BOTTOM]
    kernel_side = [name for name in loaded if name.split(".")[0] in ("bcc", "pyroute2")
                   or name.startswith("connstats.") and name.rsplit(".", 1)[-1] in ("kernel", "tc", "devices", "totals")]
    assert (probe_insides, kernel_side) == ([], [])


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle of ``graph`` (module -> the modules it imports) once, as the
    modules in it, sorted: its strongly connected parts of more than one module, or a
    module importing itself (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    part = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        part.append(member)
                        if member == node:
                            break
                    if len(part) > 1 or node in graph.get(node, ()):
                        circles.append(sorted(part))
    return sorted(circles)


def _import_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports, anywhere in its source."""
    modules = {name: path for package in packages for name, path in _modules(package).items()}
    return {module: {n for n in _imports(module, path, modules) if n in modules} for module, path in modules.items()}


def test_circles_are_found_also_through_an_import_inside_a_function(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}, "f": set()}
    assert _circles(graph) == [["a", "b", "c"], ["d"]]
    source = tmp_path / "a.py"
    source.write_text("from . import b\n\n\ndef late():\n    from .c import x\n")
    assert _imports("connstats.p.a", source, {"connstats.p.b", "connstats.p.c"}) == {"connstats.p.b", "connstats.p.c"}


def test_no_module_of_connstats_imports_itself_back():
    assert _circles(_import_graph(("connstats.probe", "connstats.sink", "connstats.cli"))) == []
