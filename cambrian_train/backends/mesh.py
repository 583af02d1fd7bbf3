"""Sizing a run from the runtime's devices: the resolved mesh and the derived per-device batches.

``Backend.setup`` calls :func:`resolve_mesh` once the runtime is up (the device count is known
only then); ``run.run`` calls :func:`resolve_batches` on the resolved mesh. Both raise
:class:`~cambrian_train.config.validate.ConfigError` naming the offending fields. The checks that
need no devices stay in config/validate.py, which imports nothing of backends or models.
"""

from __future__ import annotations

import dataclasses

from cambrian_train.config.schema import MeshConfig, TrainConfig
from cambrian_train.config.validate import ConfigError, batch_errors, raise_errors, trained_stages


def resolve_mesh(mesh: MeshConfig, device_count: int) -> MeshConfig:
    """Size an ``auto`` mesh (num_devices 0 = all devices, fsdp 0 = what the other axes leave)
    and check it against the devices the runtime has."""
    num = mesh.num_devices or device_count
    fsdp = mesh.fsdp
    if fsdp == 0:
        if num % (mesh.data * mesh.tensor):
            raise ConfigError(
                f"mesh.data={mesh.data} x mesh.tensor={mesh.tensor} does not divide the "
                f"{num} devices"
            )
        fsdp = num // (mesh.data * mesh.tensor)
    resolved = dataclasses.replace(mesh, num_devices=num, fsdp=fsdp)
    if resolved.data * resolved.fsdp * resolved.tensor != num or num != device_count:
        raise ConfigError(
            f"mesh {mesh.name} (data={resolved.data} x fsdp={resolved.fsdp} x tensor="
            f"{resolved.tensor}, num_devices={num}) does not fit the {device_count} devices "
            "of this run"
        )
    return resolved


def resolve_batches(cfg: TrainConfig, mesh: MeshConfig) -> TrainConfig:
    """Check the batch identity on the resolved mesh and fill in derived per-device batches."""
    dp = mesh.data * mesh.fsdp
    raise_errors(batch_errors(cfg, dp))
    stages = dict(cfg.stages)
    for name, st in trained_stages(cfg):
        stages[name] = dataclasses.replace(
            st,
            per_device_batch_size=st.per_device_batch_size
            or st.global_batch_size // (st.grad_accum_steps * dp),
        )
    return dataclasses.replace(cfg, stages=stages, mesh=mesh)
