"""The layout shows the design (STYLE: thin entry points, pure rules, one place for each idea), checked from
the modules' own imports and text."""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

GENERATION = Path(__file__).resolve().parent.parent / "generation"
# The read side answers questions; it must work without the write side existing.
READ_SIDE = {"rules", "expressions", "selectors", "health", "chart", "results"}
WRITE_SIDE = {"services", "pages", "undo", "runlog"}
MAX_LINES = 450
REPEAT = 6  # lines


def modules():
    """{dotted name relative to generation: path} for every module but the migrations."""
    return {
        ".".join(path.relative_to(GENERATION).with_suffix("").parts): path
        for path in sorted(GENERATION.rglob("*.py"))
        if "migrations" not in path.parts
    }


def imports(name, path):
    """(imported module relative to generation, or the absolute name outside it; the names imported)."""
    package = name.split(".")[:-1] if not path.name == "__init__.py" else name.split(".")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
                for alias in node.names:  # `from . import rules` imports a module
                    module = f"{target}.{alias.name}".lstrip(".")
                    found.append((module, None) if module in modules() else (target.lstrip("."), alias.name))
            elif node.module.startswith("generation"):
                found += [(node.module.removeprefix("generation").lstrip("."), alias.name) for alias in node.names]
            else:
                found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
    return found


def test_every_module_is_seen():
    assert {"rules", "expressions", "services", "pages", "selectors", "health", "admin.statuses"} <= set(modules())


def test_rules_import_nothing_from_django_or_the_project():
    for module, _name in imports("rules", GENERATION / "rules.py"):
        assert module in ("dataclasses", "enum"), f"rules.py imports {module}"


@pytest.mark.parametrize("name", sorted(READ_SIDE))
def test_the_read_side_never_imports_the_write_side(name):
    checked = 0
    for module, _name in imports(name, modules()[name]):
        assert module.split(".")[0] not in WRITE_SIDE, f"{name} imports {module}"
        checked += 1
    assert checked


def test_no_module_imports_another_modules_private_names():
    seen = 0
    for name, path in modules().items():
        for module, imported in imports(name, path):
            if imported is not None and module in modules():
                seen += 1
                assert not imported.startswith("_"), f"{name} imports {module}.{imported}"
    assert seen > 30


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_450_lines(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


def _code_lines(path):
    """(line number, stripped text) of the lines that carry code: not blank, not comments, not imports, not a
    lone bracket (a block of imports or closing brackets repeats by nature)."""
    lines, in_import = [], False
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        text = raw.strip()
        if in_import:
            in_import = not text.endswith(")")
            continue
        if text.startswith(("import ", "from ")):
            in_import = text.endswith("(")
            continue
        if text and not text.startswith("#") and text not in (")", "]", "}", "),", "],", "},"):
            lines.append((number, text))
    return lines


def test_no_block_of_six_lines_is_repeated_within_generation():
    where = defaultdict(list)
    for name, path in modules().items():
        lines = _code_lines(path)
        for i in range(len(lines) - REPEAT + 1):
            block = tuple(text for _, text in lines[i:i + REPEAT])
            where[block].append(f"{name}:{lines[i][0]}")
    repeated = {block: places for block, places in where.items() if len(places) > 1}
    assert not repeated, "\n".join(f"{places}: {block[0]!r} ..." for block, places in repeated.items())
