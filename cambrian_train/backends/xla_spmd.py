"""The PyTorch/XLA SPMD backend (TPU pods; CPU with ``PJRT_DEVICE=CPU CPU_NUM_DEVICES=N``).

The only module of the package that imports ``torch_xla`` (a test enforces it). One process per
host drives all of that host's devices as one SPMD program: parameters are sharded over the mesh
from the rule table in backends/sharding.py (FSDPv2 style), input batches are sharded along the
data and fsdp axes as they are transferred (``MpDeviceLoader``), and every optimiser step ends
with ``torch_xla.sync()``. Learning rates are tensors so the schedule never changes the graph.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import torch_xla
import torch_xla.core.xla_model as xm
import torch_xla.debug.metrics as met
import torch_xla.distributed.parallel_loader as pl
import torch_xla.distributed.spmd as xs
import torch_xla.experimental.distributed_checkpoint as xla_dcp
import torch_xla.runtime as xr
import torch_xla.utils.checkpoint as xla_checkpoint
from torch import nn

from cambrian_train.backends.base import Backend, dcp_storage, single_process_ok
from cambrian_train.backends.sharding import FSDP_RULES, plan_sharding
from cambrian_train.batch import Batch
from cambrian_train.registry import BACKENDS

log = logging.getLogger(__name__)
AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def _flatten(batch: Batch) -> dict:
    flat = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    pixels = flat.pop("pixel_values")
    flat.update({f"pixel_values.{k}": v for k, v in pixels.items()})
    return flat


def _unflatten(flat: dict) -> Batch:
    pixels = {k.split(".", 1)[1]: flat.pop(k) for k in list(flat) if k.startswith("pixel_values.")}
    return Batch(pixel_values=pixels, **flat)


@BACKENDS.register("xla_spmd")
class XlaSpmdBackend(Backend):
    name = "xla_spmd"

    def start(self) -> None:
        xr.use_spmd()
        self.rank, self.world_size = xr.process_index(), xr.process_count()
        self._device = torch_xla.device()
        self.local_devices = xr.addressable_runtime_device_count()

    def device_count(self) -> int:
        return xr.global_runtime_device_count()

    def configure_mesh(self) -> None:
        count = self.mesh.num_devices
        shape = (self.mesh.data, self.mesh.fsdp, self.mesh.tensor)
        self.spmd_mesh = xs.Mesh(np.arange(count), shape, AXES)
        log.info(
            "XLA SPMD: %d devices (%d on this host, host %d of %d), mesh %s=%s",
            count,
            self.local_devices,
            self.rank,
            self.world_size,
            AXES,
            shape,
        )

    @property
    def device(self) -> torch.device:
        return self._device

    def host_batch_size(self, per_device_batch_size: int) -> int:
        return per_device_batch_size * self.local_devices

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        plan = plan_sharding(model.named_parameters(), FSDP_RULES)
        for name, param in model.named_parameters():
            if any(axis is not None for axis in plan[name]):
                xs.mark_sharding(param, self.spmd_mesh, plan[name])
        return model

    def _input_sharding(self, batch: Batch) -> dict:
        return {
            key: xs.ShardingSpec(self.spmd_mesh, (BATCH_AXES,) + (None,) * (value.ndim - 1))
            for key, value in _flatten(batch).items()
        }

    def device_stream(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        first = next(batches)
        flat = (_flatten(b) for b in _chain(first, batches))
        loader = pl.MpDeviceLoader(
            _Iterable(flat), self.device, input_sharding=self._input_sharding(first)
        )
        return (_unflatten(dict(b)) for b in loader)

    def enable_gradient_checkpointing(self, model: nn.Module) -> None:
        model.llm._set_gradient_checkpointing(
            enable=True,
            gradient_checkpointing_func=functools.partial(
                xla_checkpoint.checkpoint,
                use_reentrant=True,  # the only mode torch_xla has
            ),
        )

    def micro_step_done(self) -> None:
        torch_xla.sync()

    def step_done(self) -> None:
        torch_xla.sync()

    def compile_count(self) -> Optional[int]:
        data = met.metric_data("CompileTime")
        return int(data[0]) if data else 0

    def transfer_count(self) -> Optional[int]:
        data = met.metric_data("TransferFromDeviceTime")
        return int(data[0]) if data else 0

    def dcp_save(self, state, path: str) -> None:
        torch_xla.sync()
        with single_process_ok():
            dcp.save(
                state, storage_writer=dcp_storage(path, True), planner=xla_dcp.SPMDSavePlanner()
            )

    def dcp_load(self, state, path: str) -> None:
        with single_process_ok():
            dcp.load(
                state, storage_reader=dcp_storage(path, False), planner=xla_dcp.SPMDLoadPlanner()
            )
        torch_xla.sync()

    def prime_optimizer(self, optimizer, params) -> None:
        if not all(p in optimizer.state for p in params):
            xla_dcp.prime_optimizer(optimizer)  # zero gradients sharded like their parameters
            optimizer.zero_grad(set_to_none=True)

    def device_rng_state(self):
        return xm.get_rng_state()

    def set_device_rng_state(self, state) -> None:
        xm.set_rng_state(state)

    def any_process(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        payloads = xm.rendezvous("cambrian_any_process", bytes([int(flag)]))
        return any(p and p[0] for p in payloads)


def _chain(first, rest):
    yield first
    yield from rest


class _Iterable:
    """MpDeviceLoader wants an object with ``__iter__`` (and tries ``len``)."""

    def __init__(self, items):
        self._items = items

    def __iter__(self):
        return iter(self._items)
