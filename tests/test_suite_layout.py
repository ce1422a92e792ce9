"""The suite's own shape: what tests share lives in tests/fixtures/ (and the data modules
beside it), so no test module imports another, and no test builds a flow record but
through the one builder (tests/fixtures/records.py)."""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent
RECORD_BUILDER = TESTS / "fixtures" / "records.py"


def _test_modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if p.name.startswith("test_"))


def _imported(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_test_module_imports_another():
    def is_test_module(name: str) -> bool:
        return name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_")

    imports = {str(p.relative_to(TESTS)): sorted(n for n in _imported(p) if is_test_module(n))
               for p in TESTS.rglob("*.py")}
    assert {path: names for path, names in imports.items() if names} == {}


def test_flow_records_are_built_only_by_the_one_builder():
    def builds_records(path: Path) -> bool:
        return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "FlowRecord"
                   for node in ast.walk(ast.parse(path.read_text())))

    assert [str(p.relative_to(TESTS)) for p in sorted(TESTS.rglob("*.py")) if p != RECORD_BUILDER
            and builds_records(p)] == []


# Waiting lives in tests/fixtures/wait.py (until, until_async, steady); these may keep a clock loop.
OWN_CLOCK = {
    "fixtures/wait.py": "the helpers themselves",
    "web_screenshots.py": "a script, not a test: it publishes for a while, it waits for nothing",
}


def _is_sleep(statement: ast.stmt) -> bool:
    """``time.sleep(...)``, ``asyncio.sleep(...)`` or ``await asyncio.sleep(...)`` alone."""
    call = statement.value if isinstance(statement, ast.Expr) else None
    call = call.value if isinstance(call, ast.Await) else call
    return isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "sleep"


def _deadline_loops(source: str) -> list[int]:
    """Lines of a ``time.monotonic()`` deadline loop: a ``while`` whose test reads the clock,
    a ``while`` whose whole body is a sleep (a poll with no deadline), or a name ``deadline`` assigned; also in programs embedded as strings (run with ``-c``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.While) and any(
                isinstance(n, ast.Attribute) and n.attr == "monotonic" for n in ast.walk(node.test)):
            found.append(node.lineno)
        elif isinstance(node, ast.While) and len(node.body) == 1 and _is_sleep(node.body[0]):
            found.append(node.lineno)  # a poll with no deadline at all: it waits for the test's timeout
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
                isinstance(n, ast.Name) and n.id == "deadline" and isinstance(n.ctx, ast.Store)
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                for n in ast.walk(target)):
            found.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "time.monotonic" in node.value:
            try:
                found += [node.lineno + line - 1 for line in _deadline_loops(textwrap.dedent(node.value))]
            except SyntaxError:
                pass
    return found


def test_waits_go_through_the_one_until_helper():
    loops = {str(p.relative_to(TESTS)): _deadline_loops(p.read_text()) for p in sorted(TESTS.rglob("*.py"))}
    assert {path: lines for path, lines in loops.items() if lines and path not in OWN_CLOCK} == {}
