"""The hardware seam: everything device-, mesh- or rank-specific sits behind :class:`Backend`.

Models and data never mention devices; the trainer calls only these methods.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import warnings
from typing import Dict, Iterable, Iterator, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader

from cambrian_train.backends.mesh import resolve_mesh
from cambrian_train.batch import Batch
from cambrian_train.config.schema import BackendConfig, MeshConfig
from cambrian_train.fileutil import is_url, local_path
from cambrian_train.models.weights import materialize_meta

log = logging.getLogger(__name__)


class Backend(abc.ABC):
    name: str = ""

    def __init__(self, cfg: BackendConfig, mesh: MeshConfig):
        self.cfg = cfg
        self.mesh = mesh
        self.rank = 0
        self.world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where batches and parameters live."""

    @property
    def data_parallel_rank(self) -> int:
        return self.rank

    @property
    def data_parallel_size(self) -> int:
        return self.world_size

    def setup(self) -> None:
        """Start the runtime, size the mesh from its devices, then build the backend's mesh.

        Called once, before any model is built; a mesh that does not fit is a ConfigError.
        """
        self.start()
        self.mesh = resolve_mesh(self.mesh, self.device_count())
        self.configure_mesh()

    def start(self) -> None:
        """Initialise the runtime (process groups, SPMD mode)."""

    def device_count(self) -> int:
        """Devices of the whole run."""
        return 1

    def configure_mesh(self) -> None:
        """Build whatever the backend needs from the resolved ``self.mesh``."""

    def host_batch_size(self, per_device_batch_size: int) -> int:
        """Samples this process loads per micro-step (SPMD: one host feeds several devices)."""
        return per_device_batch_size

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move/shard/wrap a model whose trainable parameters are already marked, allocating
        and loading its deferred (meta-device) weights (models/weights.py)."""
        materialize_meta(model, self.device)
        model = model.to(self.device)
        self.load_deferred(model)
        return model

    def load_deferred(self, model: nn.Module) -> None:
        """Read ``model.deferred_weights`` into the placed (possibly sharded) parameters: each
        process reads only the slices its shards cover."""
        for deferred in getattr(model, "deferred_weights", []):
            state = deferred.state_to_load(model)
            with torch.no_grad():
                self.dcp_load_hf(state, deferred.checkpoint_dir)
            log.info(
                "loaded %d tensors of model.%s from %s",
                len(state),
                deferred.prefix,
                deferred.checkpoint_dir,
            )
        model.deferred_weights = []

    def dcp_load_hf(self, state: Dict[str, torch.Tensor], checkpoint_dir: str) -> None:
        """Load HF safetensors into ``state``'s tensors in place (any sharding)."""
        with single_process_ok():
            dcp.load(state, storage_reader=HuggingFaceStorageReader(checkpoint_dir))

    def training_attention(self) -> Optional[str]:
        """The attention function the LLM trains with (a name registered as segment-aware in
        models/llm.py), or None for the causal SDPA every backend has."""
        return None

    def move_batch(self, batch: Batch) -> Batch:
        return batch.to(self.device)

    def device_stream(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """Host batches → device batches (XLA shards them on the way)."""
        return (self.move_batch(b) for b in batches)

    def enable_gradient_checkpointing(self, model: nn.Module) -> None:
        """Recompute decoder-layer activations in the backward pass."""
        model.set_gradient_checkpointing(True)

    def compile_count(self) -> Optional[int]:
        """Graph compilations so far, where the backend compiles (XLA); None elsewhere."""
        return None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def clip_grad_norm(self, params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(list(params), max_norm)

    def gathered(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Context in which the model's own (root) parameters are whole, for calls that bypass
        ``model.forward`` (generation)."""
        return contextlib.nullcontext()

    def sum_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of a 0-dim device tensor over data-parallel processes, staying on the device.
        Identity where one program sees the global batch (one process, or XLA SPMD)."""
        return value

    # the number of ranks over which the backend's own gradient reduction averages (FSDP: all)
    gradient_average_size = 1

    def scale_gradients(self, params: Iterable[nn.Parameter], factor: torch.Tensor) -> None:
        """Multiply every gradient by the 0-dim device tensor ``factor`` in place."""
        for p in params:
            if p.grad is not None:
                p.grad.mul_(factor)

    def micro_step_done(self) -> None:
        """End of one micro-batch's forward and backward (XLA cuts the graph here, so the
        compiled graphs do not grow with the accumulation count)."""

    def device_kind(self) -> str:
        """The accelerator's model name (train/mfu.py maps it to a peak TFLOP/s)."""
        return self.device.type

    def largest_graph(self) -> Optional[int]:
        """IR nodes of the largest recent compiled graph where the backend traces (XLA)."""
        return None

    def transfer_count(self) -> Optional[int]:
        """Device→host transfers so far where the runtime counts them (XLA); None elsewhere."""
        return None

    def full_state_dict(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """Unsharded CPU tensors of the whole model (complete on the main process)."""
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def step_done(self) -> None:
        """End of an optimiser step (XLA cuts the graph here)."""

    def barrier(self) -> None:
        """Wait for all processes."""

    # -- training-state checkpoints (train/resume.py) ------------------------------------------
    def dcp_save(self, state: Dict[str, torch.Tensor], path: str) -> None:
        """Write this process's part of ``state`` (sharded tensors stay sharded) to ``path``."""
        with single_process_ok():
            dcp.save(state, storage_writer=dcp_storage(path, write=True))

    def dcp_load(self, state: Dict[str, torch.Tensor], path: str) -> None:
        """Read ``path`` into the tensors of ``state`` in place, resharding as needed."""
        with single_process_ok():
            dcp.load(state, storage_reader=dcp_storage(path, write=False))

    def prime_optimizer(self, optimizer: torch.optim.Optimizer, params: list) -> None:
        """Create the optimiser state (a step with zero gradients) so a load can fill it."""
        if all(p in optimizer.state for p in params):
            return
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def device_rng_state(self) -> Optional[object]:
        """The accelerator's RNG state (None where the host RNG is all there is)."""
        return None

    def set_device_rng_state(self, state: object) -> None:
        """Restore what :meth:`device_rng_state` returned."""

    def any_process(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process (all processes call it together)."""
        return flag

    def shutdown(self) -> None:
        """Release the runtime."""


def dcp_storage(path: str, write: bool):
    """DCP storage for a local path or an fsspec URL (gs://...)."""
    if is_url(path):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

        return FsspecWriter(path) if write else FsspecReader(path)
    path = local_path(path)
    return dcp.FileSystemWriter(path) if write else dcp.FileSystemReader(path)


@contextlib.contextmanager
def single_process_ok():
    """DCP warns when no process group exists; one process is a valid checkpoint writer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        yield
