"""Project rules that are cheap to check: lint, format, docstrings, the torch_xla seam."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "cambrian_train"


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_ruff_lint_and_format():
    ruff = [sys.executable, "-m", "ruff"]
    lint = subprocess.run([*ruff, "check", "."], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run(
        [*ruff, "format", "--check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_has_a_docstring(path):
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path} lacks a module docstring"


def test_torch_xla_only_imported_in_backends():
    offenders = []
    for path in _modules():
        if "backends" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "torch_xla" or n.startswith("torch_xla.") for n in names):
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"torch_xla imported outside backends/: {offenders}"


def test_config_imports_neither_models_nor_backends():
    """config/ sits at the bottom: importing its modules loads no model or backend code (the
    runtime pieces that backends need, sizing the mesh, live in backends/mesh.py)."""
    code = (
        "import sys, cambrian_train.config.schema, cambrian_train.config.validate, "
        "cambrian_train.config.store\n"
        "print(sorted(m for m in sys.modules if m.startswith(('cambrian_train.models', "
        "'cambrian_train.backends'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "[]", proc.stdout
