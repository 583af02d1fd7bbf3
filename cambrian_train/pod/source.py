"""Pack a local source tree for ``cambrian-pod setup --source`` (copied with tpu-vm scp).

Left out: version-control and cache directories anywhere, and the repository's generated
top-level directories (data sets, runs, build output, virtualenvs).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

EXCLUDED_ANYWHERE = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
EXCLUDED_TOP = {"data", "runs", "outputs", "wandb", "build", "dist", ".venv", "venv"}


def _excluded(relative: Path) -> bool:
    parts = relative.parts
    if parts and parts[0] in EXCLUDED_TOP:
        return True
    return any(p in EXCLUDED_ANYWHERE or p.endswith(".egg-info") for p in parts)


def pack_source(source: Path, archive: Path) -> int:
    """Write ``source``'s files (relative paths) into the gzip tar ``archive``; returns the
    number of files. A missing directory or one without ``setup.py``/``pyproject.toml`` is a
    ValueError (it could not be installed with pip)."""
    source = source.expanduser().resolve()
    if not source.is_dir():
        raise ValueError(f"source {str(source)!r} is not a directory")
    if not (source / "setup.py").exists() and not (source / "pyproject.toml").exists():
        raise ValueError(f"source {str(source)!r} has no setup.py or pyproject.toml")
    archive.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(archive, "w:gz") as tar:
        for root, dirs, files in os.walk(source):
            here = Path(root).relative_to(source)
            dirs[:] = sorted(d for d in dirs if not _excluded(here / d))
            for name in sorted(files):
                path = Path(root) / name
                if _excluded(here / name) or not path.exists():  # skips dangling links
                    continue
                tar.add(path, arcname=str(here / name), recursive=False)
                count += 1
    return count
