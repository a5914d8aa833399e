"""The suite's own rules: test modules take shared helpers from helpers.py, fake_engine.py,
servers.py or conftest.py, never from one another (an import of a test module runs its tests'
module code again, and ties the modules' orders and names together)."""

import ast
import re
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


SOURCE = TESTS.parent / "src" / "bonito"
FLAG = re.compile(r"(?<!\()--[a-z][a-z-]*")
COMMAND = re.compile(r"`[^`]*`")
FLAGS_ALLOWED = {
    ("publish/export.py", "--private"): "the dataset card, written for the CLI user",
    ("adapt/adaptation.py", "--adapter"): "a piece of the model card's `bonito evaluate` command",
}
"""Flags the library may name bare, and why (suggested whole commands, in backticks or a
string of their own that starts with "bonito ", may)."""


def message_texts(path: Path) -> list[tuple[int, str]]:
    """The string literals of a module, f-strings whole ({} for each value), docstrings and
    other bare string statements left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    left_out = {
        id(part)
        for node in ast.walk(tree)
        for part in (
            node.values
            if isinstance(node, ast.JoinedStr)
            else [node.value]
            if isinstance(node, ast.Expr)
            else []
        )
    }
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and id(node) not in left_out:
            text = "".join(p.value if isinstance(p, ast.Constant) else "{}" for p in node.values)
            texts.append((node.lineno, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in left_out:
                texts.append((node.lineno, node.value))
    return texts


def test_library_messages_name_its_parameters():
    """The library's messages name its own parameters, a CLI flag only in parentheses after
    one ("max_tasks (--max-tasks) must be at least 1"); cli/ speaks of flags as it likes."""
    found = [
        f"{where}:{line}: {flag}"
        for path in sorted(SOURCE.rglob("*.py"))
        if (where := path.relative_to(SOURCE).as_posix()).split("/")[0] != "cli"
        for line, text in message_texts(path)
        if not text.startswith("bonito ")
        for flag in FLAG.findall(COMMAND.sub("", text))
        if (where, flag) not in FLAGS_ALLOWED
    ]
    assert not found, (
        f"{found}: a bare CLI flag in a library message; name the parameter, the flag after it "
        "in parentheses."
    )
