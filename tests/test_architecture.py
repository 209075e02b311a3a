"""docs/architecture.md names places in the code; each must exist.

Every backticked file path must be a file or folder of the repository (or of ``lightning_info/``,
whose layout the page describes), and every backticked code name (``SUIMethod``,
``_SOLVERS``, ``TrainingRecipe.replay``, ...) must be defined in the package: a module, a
top-level name, a class member or a parameter. Dotted names are resolved one part at a time, so a
renamed table or a moved method fails here. The "Where to add" recipes must also hold: each
dispatch table they name maps every member of its enum.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_info"
DOC = ROOT / "docs" / "architecture.md"
#: Names the page uses that are not this package's: Lightning, torchmetrics and torch.
EXTERNAL = {"EarlyStopping", "Metric", "eigvalsh", "pytorch_lightning", "lightning", "pytorch"}
_NAME = re.compile(r"^\.?[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\(\)|=)?$")


def _spans() -> list[str]:
    text = re.sub(r"```.*?```", "", DOC.read_text(), flags=re.S)  # code blocks: checked below
    return re.findall(r"`([^`\n]+)`", text)


def _defined_names() -> set[str]:
    """Modules, top-level names, class members and parameters of every package module."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        names.add(path.stem)
        names.update(path.relative_to(ROOT).parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.update(a.arg for a in [*node.args.args, *node.args.kwonlyargs])
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


def test_every_path_named_exists():
    paths = [s for s in _spans() if s.endswith((".py", "/")) and " " not in s]
    assert len(paths) > 20  # the page names its places
    missing = []
    for path in paths:
        if "*" in path:
            found = list(ROOT.glob(path)) or list(PACKAGE.glob(path))
        else:
            candidates = [ROOT / path, PACKAGE / path, *PACKAGE.glob(f"*/{path}")]
            found = [p for p in candidates if p.exists()]
        if not found:
            missing.append(path)
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_every_code_name_exists():
    defined = _defined_names() | EXTERNAL
    spans = [s for s in _spans() if _NAME.match(s) and not s.endswith(".py")]
    assert {"SUIMethod", "_SOLVERS", "EigenSolver", "_DISPATCH", "score_model"} <= set(spans)
    missing = [s for s in spans if not all(p in defined for p in s.strip(".()=").split(".") if p)]
    assert not missing, f"docs/architecture.md names code that does not exist: {missing}"


@pytest.mark.parametrize(
    ("module", "table", "enum", "skip"),
    [
        ("lightning_info.functional.sui", "_SOLVERS", "SUIMethod", {"AUTO"}),
        ("lightning_info.functional.dse", "_DISPATCH", "EigenSolver", set()),
        ("lightning_info.functional.jacobian", "_FORM_TO_LINEARIZATION", "JacobianForm", set()),
    ],
)
def test_recipes_dispatch_tables_cover_their_enums(module, table, enum, skip):
    """The recipe "one module + one enum member + one dispatch entry" holds for each table."""
    text = DOC.read_text()
    assert table in text
    assert enum in text
    entries = getattr(importlib.import_module(module), table)
    members = getattr(importlib.import_module("lightning_info.utilities.enums"), enum)
    assert {m.name for m in members} - skip == {m.name for m in entries}


def test_sui_recipe_code_block_names_real_places():
    """The SUI-method recipe's code block names the enum, the table and where they live."""
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert block is not None
    code = block.group(1)
    for path in re.findall(r"lightning_info/[\w/]+\.py", code):
        if "mymethod" not in path:
            assert (ROOT / path).is_file(), path
    from lightning_info.functional import sui
    from lightning_info.utilities import enums

    assert "SUIMethod" in code
    assert hasattr(enums, "SUIMethod")
    assert "_SOLVERS" in code
    assert isinstance(sui._SOLVERS, dict)
    # a new member needs nothing else to be accepted: the choices derive from the enum
    assert set(enums.SUI_METHOD_CHOICES) == {m.value for m in enums.SUIMethod} - {"converged"}
    assert set(sui._ENGINE_METHODS) == {m.value for m in sui._SOLVERS}
