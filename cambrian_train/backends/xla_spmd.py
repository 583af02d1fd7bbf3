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
import os
import socket
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch_xla
import torch_xla.core.xla_model as xm
import torch_xla.debug.metrics as met
import torch_xla.distributed.parallel_loader as pl
import torch_xla.distributed.spmd as xs
import torch_xla.distributed.xla_backend  # noqa: F401  (registers the xla:// init method)
import torch_xla.experimental.distributed_checkpoint as xla_dcp
import torch_xla.runtime as xr
import torch_xla.utils.checkpoint as xla_checkpoint
from torch import nn

from cambrian_train.backends.base import Backend, dcp_storage
from cambrian_train.backends.sharding import has_adapter_names, plan_sharding, sharding_rules
from cambrian_train.backends.xla_attention import register_flash_attention
from cambrian_train.batch import Batch
from cambrian_train.models.weights import (
    move_materialized,
    parameter_locations,
    read_tensors,
)
from cambrian_train.registry import BACKENDS

log = logging.getLogger(__name__)
AXES = ("data", "fsdp", "tensor")


def _flatten(batch: Batch) -> dict:
    """Batch → {name: tensor} for the device loader (absent optional fields left out)."""
    flat = {
        f.name: getattr(batch, f.name)
        for f in dataclasses.fields(batch)
        if getattr(batch, f.name) is not None
    }
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
        _init_process_group()

    def device_count(self) -> int:
        return xr.global_runtime_device_count()

    def configure_mesh(self) -> None:
        count = self.mesh.num_devices
        shape = (self.mesh.data, self.mesh.fsdp, self.mesh.tensor)
        if self.local_devices % self.mesh.tensor:
            raise ValueError(
                f"mesh.tensor={self.mesh.tensor} does not divide the {self.local_devices} devices "
                "of a host"
            )
        # device ids in process order: host h owns ids [h*local, (h+1)*local), so the batch rows
        # of host h's minibatch land on host h's devices (input_sharding below)
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
        """This host's share of a global micro-batch (per-device batch x data-parallel size)."""
        data_parallel = self.mesh.data * self.mesh.fsdp
        if per_device_batch_size % self.mesh.tensor:
            raise ValueError(
                f"per_device_batch_size={per_device_batch_size} with mesh.tensor="
                f"{self.mesh.tensor}: the input batch is sharded over all devices, so the "
                "per-device batch must be a multiple of mesh.tensor"
            )
        return per_device_batch_size * data_parallel // self.world_size

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Parameters onto the device, sharded from the rule table. Deferred (meta) LLM
        parameters are created from the checkpoint already sharded: each tensor is read on
        the host once (one at a time) and only its shards are transferred, so no device and no
        host ever holds more than its shards plus one tensor."""
        names = [name for name, _ in model.named_parameters()]
        rules = sharding_rules(self.mesh.tensor > 1, adapters=has_adapter_names(names))
        plan = plan_sharding(model.named_parameters(), rules)
        move_materialized(model, self.device)
        loaded = set()
        for deferred in model.deferred_weights:
            loaded |= self._load_sharded(model, deferred, plan)
        model.deferred_weights = []
        for name, param in model.named_parameters():
            if id(param) not in loaded and any(axis is not None for axis in plan[name]):
                xs.mark_sharding(param, self.spmd_mesh, plan[name])
        split = sum("tensor" in spec for spec in plan.values())
        if self.mesh.tensor > 1:
            log.info(
                "tensor parallel: %d LLM matrices split over tensor=%d", split, self.mesh.tensor
            )
        return model

    def _load_sharded(self, model: nn.Module, deferred, plan: dict) -> set:
        """Create ``deferred``'s parameters sharded from its checkpoint; returns their ids."""
        module = model.get_submodule(deferred.prefix)
        loaded = set()
        state = deferred.state_to_load(model)  # checkpoint name -> meta parameter
        where = parameter_locations(module)
        names = {id(p): n for n, p in model.named_parameters()}  # the plan's name of each
        for name, tensor in read_tensors(deferred.checkpoint_dir, sorted(state)):
            meta = state[name]
            spec = plan[names[id(meta)]]
            host = tensor.to(meta.dtype)
            if any(axis is not None for axis in spec):
                sharding = xs.ShardingSpec(self.spmd_mesh, _one_axis(spec))
                value = xm.send_cpu_data_to_device(host, self.device, input_sharding=sharding)[0]
                if _one_axis(spec) != tuple(spec):  # reshard on the device, one tensor at a time
                    xs.clear_sharding(value)
                    xs.mark_sharding(value, self.spmd_mesh, spec)
            else:
                value = host.to(self.device)
            param = nn.Parameter(value, requires_grad=meta.requires_grad)
            loaded.add(id(param))
            for sub, attr in where[id(meta)]:
                sub._parameters[attr] = param
        torch_xla.sync()
        log.info(
            "loaded %d tensors of model.%s from %s (sharded on transfer)",
            len(state),
            deferred.prefix,
            deferred.checkpoint_dir,
        )
        return loaded

    def input_sharding(self, batch: Batch) -> dict:
        """Per-key specs for a host batch: every tensor's batch dimension over all mesh axes,
        as a per-host minibatch (``minibatch=True``): each host transfers only its own rows and
        the runtime assembles the global batch from the hosts' shards (host order = row order).
        Over all axes because minibatch sharding must cover every device; with ``mesh.tensor``
        > 1 XLA regathers activations along ``tensor`` where the LLM's layers need them."""
        return {
            key: xs.ShardingSpec(
                self.spmd_mesh, (AXES,) + (None,) * (value.ndim - 1), minibatch=True
            )
            for key, value in _flatten(batch).items()
        }

    def device_stream(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        first = next(batches)
        flat = (_flatten(b) for b in _chain(first, batches))
        loader = pl.MpDeviceLoader(
            _Iterable(flat), self.device, input_sharding=self.input_sharding(first)
        )
        return (_unflatten(dict(b)) for b in loader)

    def enable_gradient_checkpointing(self, model: nn.Module) -> None:
        # torch_xla's checkpoint: reentrant is the only mode it has
        model.set_gradient_checkpointing(
            True, functools.partial(xla_checkpoint.checkpoint, use_reentrant=True)
        )

    def micro_step_done(self) -> None:
        torch_xla.sync()

    def step_done(self) -> None:
        torch_xla.sync()

    def compile_count(self) -> Optional[int]:
        data = met.metric_data("CompileTime")
        return int(data[0]) if data else 0

    def training_attention(self) -> Optional[str]:
        """torch_xla's Pallas flash kernel on TPU (``backend.attention`` auto or flash)."""
        choice = self.cfg.attention
        if choice == "sdpa" or (choice == "auto" and xr.device_type() != "TPU"):
            return None
        if xr.device_type() != "TPU":
            raise RuntimeError(
                f"backend.attention=flash needs a TPU; this runtime's devices are "
                f"{xr.device_type()} (set backend.attention=auto)"
            )
        return register_flash_attention(self.spmd_mesh, self.mesh.tensor > 1)

    def device_kind(self) -> str:
        """ "TPU v4", "TPU v5litepod", "TPU v5p", "TPU v6e" (from the TPU VM's accelerator type,
        e.g. v5litepod-16: the SPMD virtual device has no kind of its own), or "CPU"."""
        if xr.device_type() != "TPU":
            return xr.device_type() or "CPU"
        from torch_xla._internal import tpu

        try:
            return f"TPU {tpu.get_tpu_type()}"
        except OSError:  # no TPU metadata: the kind stays unknown (no MFU, a warning)
            return "TPU"

    def largest_graph(self) -> Optional[int]:
        data = met.metric_data("TensorsGraphSize")  # (count, sum, recent samples)
        return int(max(value for _, value in data[2])) if data and data[2] else 0

    def transfer_count(self) -> Optional[int]:
        data = met.metric_data("TransferFromDeviceTime")
        return int(data[0]) if data else 0

    def dcp_save(self, state, path: str) -> None:
        """One checkpoint from all hosts: DCP coordinates them over the ``xla://`` process
        group (each host writes the shards its devices hold; rank 0 writes the metadata)."""
        torch_xla.sync()
        dcp.save(state, storage_writer=dcp_storage(path, True), planner=xla_dcp.SPMDSavePlanner())

    def dcp_load(self, state, path: str) -> None:
        dcp.load(state, storage_reader=dcp_storage(path, False), planner=xla_dcp.SPMDLoadPlanner())
        torch_xla.sync()

    def barrier(self) -> None:
        dist.barrier()  # gloo, host-side: it waits for the hosts, not for the devices

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
        value = torch.tensor([int(flag)])  # a host tensor over gloo: no device graph involved
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _one_axis(spec: tuple) -> tuple:
    """``spec`` with only its first sharded dimension kept: what the tensor is split by on its
    way to the devices (torch_xla 2.9's transfer cannot slice a tensor split on two dimensions
    of a 3-axis mesh); ``mark_sharding`` then gives it the whole spec on the device."""
    first = next(k for k, axis in enumerate(spec) if axis is not None)
    return tuple(axis if k == first else None for k, axis in enumerate(spec))


def _init_process_group() -> None:
    """torch.distributed over gloo with torch_xla's ``xla://`` rendezvous (rank = host index,
    world = host count; TCP store on host 0 at MASTER_ADDR, discovered on TPU pods): what
    distributed checkpoints and host barriers use. One host gets a free local port."""
    if dist.is_initialized():
        return
    if xr.process_count() == 1 and "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group("gloo", init_method="xla://")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chain(first, rest):
    yield first
    yield from rest


class _Iterable:
    """MpDeviceLoader wants an object with ``__iter__`` (and tries ``len``)."""

    def __init__(self, items):
        self._items = items

    def __iter__(self):
        return iter(self._items)
