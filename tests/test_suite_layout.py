"""The suite's own shape: what tests share lives in tests/fixtures/ (and the data modules
beside it), so no test module imports another, and no test builds a flow record but
through the one builder (tests/fixtures/records.py)."""
from __future__ import annotations

import ast
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
