"""Backends (cpu, cuda_fsdp, xla_spmd) registered in BACKENDS; ``build_backend`` picks one."""

from __future__ import annotations

import importlib

from cambrian_train.backends import cpu as _cpu  # noqa: F401  (fills BACKENDS)
from cambrian_train.backends.base import Backend
from cambrian_train.config.schema import BackendConfig, MeshConfig
from cambrian_train.registry import BACKENDS

# Backends with heavy or optional dependencies register when first asked for.
LAZY = {
    "xla_spmd": "cambrian_train.backends.xla_spmd",
    "cuda_fsdp": "cambrian_train.backends.cuda_fsdp",
}


def load_backend_module(name: str) -> None:
    """Import the module that registers backend ``name`` (torch_xla only for xla_spmd)."""
    if name in LAZY and name not in BACKENDS:
        importlib.import_module(LAZY[name])


def build_backend(cfg: BackendConfig, mesh: MeshConfig) -> Backend:
    load_backend_module(cfg.name)
    return BACKENDS.get(cfg.name)(cfg, mesh)
