"""The CUDA backend: ``torchrun`` processes, FSDP2 (``fully_shard``) over a device mesh.

One process per GPU. Every decoder layer, every tower, every in-LLM SVA layer and the connector
are their own FSDP2 units and the whole model the root unit, so parameters are all-gathered a
unit at a time. bf16 mixed precision keeps float32 master weights and reduces gradients in
float32. Without CUDA the same code runs on CPU with the gloo process group, which is how the
tests exercise it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Dict, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.experimental import implicit_replication

from cambrian_train.backends.base import Backend
from cambrian_train.batch import Batch
from cambrian_train.models.llm import is_quantized
from cambrian_train.models.weights import materialize_meta, move_materialized
from cambrian_train.registry import BACKENDS

log = logging.getLogger(__name__)


@BACKENDS.register("cuda_fsdp")
class CudaFsdpBackend(Backend):
    name = "cuda_fsdp"

    def start(self) -> None:
        self.cuda = torch.cuda.is_available()
        if not dist.is_initialized():
            if "RANK" not in os.environ:
                os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
                os.environ.setdefault("MASTER_PORT", "29511")
            dist.init_process_group("nccl" if self.cuda else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.cuda:
            torch.cuda.set_device(local_rank)
            self._device = torch.device("cuda", local_rank)
        else:
            self._device = torch.device("cpu")

    @property
    def device(self) -> torch.device:
        return self._device

    def device_count(self) -> int:
        return self.world_size

    def device_stream(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """On CUDA: each host batch pinned and copied without blocking, one batch ahead, so
        the copy of batch k+1 overlaps step k (the copies are ordered on the current stream
        before any kernel that reads them). Elsewhere: plain copies."""
        if not self.cuda:
            yield from super().device_stream(batches)
            return
        ahead = None
        for host in batches:
            moved = host.map(lambda t: t.pin_memory().to(self.device, non_blocking=True))
            if ahead is not None:
                yield ahead
            ahead = moved
        if ahead is not None:
            yield ahead

    def configure_mesh(self) -> None:
        if self.mesh.tensor != 1:
            raise ValueError(f"mesh.tensor={self.mesh.tensor}: cuda_fsdp shards with FSDP only")
        if self.mesh.data > 1:  # HSDP: replicate across data, shard within fsdp
            shape, names = (self.mesh.data, self.mesh.fsdp), ("data", "fsdp")
        else:
            shape, names = (self.mesh.fsdp,), ("fsdp",)
        self.device_mesh = init_device_mesh(self.device.type, shape, mesh_dim_names=names)
        log.info(
            "FSDP2 on %d %s processes, mesh %s=%s", self.world_size, self.device.type, names, shape
        )

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """FSDP2 units from inside out; a unit whose parameters are still on the meta device
        (deferred weights) is allocated just before its ``fully_shard``, so one process holds
        one whole unit at most, then only its shards; the checkpoint is read into the shards."""
        move_materialized(model, self.device)
        if is_quantized(model):
            return self._prepare_quantized(model)
        policy = MixedPrecisionPolicy()
        if self.cfg.dtype == "bfloat16":
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        shard = dict(mesh=self.device_mesh, mp_policy=policy)
        for unit in model.shard_units():
            materialize_meta(unit, self.device)
            fully_shard(unit, **shard)
        materialize_meta(model, self.device)  # the root unit: embeddings, head, final norm
        fully_shard(model, **shard)
        self.load_deferred(model)
        if self.cfg.compile:
            for unit in model.compile_units():
                unit.compile()
        return model

    def _prepare_quantized(self, model: nn.Module) -> nn.Module:
        """QLoRA / int8: the quantised base is whole on this GPU (bitsandbytes placed it), the
        rest was moved there; nothing is sharded, so one process is the whole run."""
        if self.world_size > 1:
            raise ValueError(
                f"model.llm.quantization with {self.world_size} processes: a quantised base is "
                "not sharded by FSDP2 here; run it on one GPU (torchrun --nproc_per_node 1), or "
                "shard a bf16 base with LoRA (model.llm.quantization=null)"
            )
        materialize_meta(model, self.device)
        self.load_deferred(model)  # towers with deferred weights
        self.unsharded = True
        return model

    @contextlib.contextmanager
    def gathered(self, model: nn.Module):
        if getattr(self, "unsharded", False):
            yield
            return
        model.unshard()
        try:
            yield
        finally:
            model.reshard()

    def clip_grad_norm(self, params, max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def sum_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)  # enqueued on the device: no host wait
        return value

    @property
    def gradient_average_size(self) -> int:
        return self.world_size  # FSDP2 reduce-scatters (and HSDP all-reduces) with a mean

    def scale_gradients(self, params, factor: torch.Tensor) -> None:
        with implicit_replication():  # a plain 0-dim factor against DTensor gradients
            super().scale_gradients(params, factor)

    def full_state_dict(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)

    def barrier(self) -> None:
        dist.barrier()

    def any_process(self, flag: bool) -> bool:
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def device_kind(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.cuda else "cpu"

    def device_rng_state(self):
        return torch.cuda.get_rng_state() if self.cuda else None

    def set_device_rng_state(self, state) -> None:
        if self.cuda and state is not None:
            torch.cuda.set_rng_state(state)

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
