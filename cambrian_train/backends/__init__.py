"""Backends (cpu, cuda_fsdp, xla_spmd) registered in BACKENDS; ``build_backend`` picks one."""

from __future__ import annotations

from cambrian_train.backends import cpu as _cpu  # noqa: F401  (fills BACKENDS)
from cambrian_train.backends.base import Backend
from cambrian_train.config.schema import BackendConfig, MeshConfig
from cambrian_train.registry import BACKENDS


def build_backend(cfg: BackendConfig, mesh: MeshConfig) -> Backend:
    return BACKENDS.get(cfg.name)(cfg, mesh)
