"""Every run path goes through cambrian_train/storage.py (DESIGN §5b: every path may be a URL).

Checked on the source: only storage.py imports fsspec; no module wraps a configured path
(``output_dir``, ``init_from``, ``resume``, ``checkpoint.dir``, the CLIs' ``--model`` /
``--out``) in ``Path(...)`` or resolves one (storage's local mirrors and downloads are local
paths); the modules that read and write run files do no file I/O of their own (no ``open``,
``Path``, ``shutil``, ``os`` file calls, pathlib reads or writes).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "cambrian_train"
PATH_FIELDS = {"output_dir", "init_from", "resume", "checkpoint", "dir", "out", "model"}
# modules whose every file operation goes through storage.py
STORAGE_ONLY = [
    "run.py",
    "train/checkpoint.py",
    "train/resume.py",
    "eval/runner.py",
]
FILE_METHODS = {
    "read_text",
    "write_text",
    "read_bytes",
    "write_bytes",
    "mkdir",
    "exists",
    "is_file",
    "is_dir",
    "unlink",
    "resolve",
    "iterdir",
    "rename",
}
OS_FILE_CALLS = {"rename", "replace", "remove", "unlink", "makedirs", "mkdir", "listdir"}


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text())


def _calls(tree: ast.AST):
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _names_a_path_field(node: ast.AST) -> bool:
    """Whether ``node`` mentions a configured path (a storage call's local result is fine)."""
    if isinstance(node, ast.Call) and ast.unparse(node.func).startswith("storage."):
        return False
    return any(
        (isinstance(n, ast.Attribute) and n.attr in PATH_FIELDS)
        or (isinstance(n, ast.Name) and n.id in {"output_dir", "init_from"})
        for n in ast.walk(node)
    )


def test_only_storage_imports_fsspec():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "fsspec" for n in names):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == ["cambrian_train/storage.py"]


def test_configured_paths_are_never_wrapped_in_path_or_resolved():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for call in _calls(_tree(path)):
            func = call.func
            wraps = isinstance(func, ast.Name) and func.id == "Path"
            resolves = isinstance(func, ast.Attribute) and func.attr == "resolve"
            target = call.args if wraps else [func.value] if resolves else []
            if any(_names_a_path_field(arg) for arg in target):
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("module", STORAGE_ONLY)
def test_run_file_modules_do_their_io_through_storage(module):
    offenders = []
    for call in _calls(_tree(PACKAGE / module)):
        func = call.func
        if isinstance(func, ast.Name) and func.id in {"open", "Path"}:
            offenders.append(call)
        elif isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if owner == "shutil" or (owner == "os" and func.attr in OS_FILE_CALLS):
                offenders.append(call)
            elif func.attr in FILE_METHODS and owner not in {"storage", "os"}:
                offenders.append(call)
    assert not offenders, [f"{c.lineno}: {ast.unparse(c)}" for c in offenders]
