"""The suite's own rules: test modules take shared helpers from helpers.py, fake_engine.py,
servers.py or conftest.py, never from one another (an import of a test module runs its tests'
module code again, and ties the modules' orders and names together)."""

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def imported_modules(path: Path) -> set[str]:
    """The top-level names of the modules a file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_module_imports_another():
    modules = {path.stem for path in TESTS.glob("test_*.py")}
    found = {
        (path.stem, name)
        for path in TESTS.glob("*.py")
        for name in imported_modules(path) & modules
        if name != path.stem
    }
    assert not found, (
        f"{sorted(found)}: (module, test module it imports); "
        "move what they share into tests/helpers.py (or a fixture in conftest.py)."
    )
