"""Sharded, atomic training-state checkpoints and exact resume (``torch.distributed.checkpoint``).

Layout under the checkpoint root (``checkpoint.dir``, default ``<output_dir>/checkpoints``; a
local path or any fsspec URL such as ``gs://``)::

    <root>/<stage>/step-00000120/
        .metadata, __*_*.distcp   DCP shards: model.<param> (the trained parameters),
                                  optim.<param>.<key> (AdamW step / exp_avg / exp_avg_sq)
        rank-00000.pt ...         per process: sampler cursor and RNG states
        meta.json                 stage, step, planned steps, run counters, config digest
        config.yaml               the run's resolved config
        COMMITTED                 written last: only directories holding it count

Every process writes its shards (the backend chooses the planner: XLA SPMD planners on TPU,
DTensor shards under FSDP2), then the main process writes ``COMMITTED``. Local checkpoints are
written as ``step-N.partial`` and renamed after the commit, so a crash midway leaves the previous
checkpoint untouched and the partial one is ignored (and removed by the next save); a URL one is
written in place and counts only once ``COMMITTED`` is there. Every file operation goes through
storage.py, so transient storage errors are retried a bounded number of times (the DCP shards as
one collective save or load, which every process repeats together) and then stop the run with a
:class:`~cambrian_train.storage.StorageError` naming the URL; the previous checkpoint stays
complete. Loading reshards: DCP stores global shapes, so a run may resume on another device count.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from cambrian_train import storage

log = logging.getLogger(__name__)

COMMIT_FILE = "COMMITTED"
META_FILE = "meta.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# Test hook: crash (os._exit) inside a save after the shards are written, before the commit.
CRASH_ENV = "CAMBRIAN_TEST_CRASH_IN_SAVE"


@dataclass
class RankState:
    """What each process restores besides tensors."""

    sampler: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)


@dataclass
class Restored:
    path: str
    step: int
    meta: dict
    rank: RankState


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def committed_steps(stage_root: str) -> List[int]:
    """Steps of the complete checkpoints under ``<root>/<stage>``, ascending."""
    steps = []
    for name in storage.ls(stage_root):
        match = _STEP_DIR.match(name)
        if match and storage.exists(storage.join(stage_root, name, COMMIT_FILE)):
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_checkpoint(stage_root: str) -> Optional[str]:
    """The newest complete checkpoint directory of a stage, or None."""
    steps = committed_steps(stage_root)
    return storage.join(stage_root, step_dir_name(steps[-1])) if steps else None


def read_checkpoint_meta(path: str) -> dict:
    """``meta.json`` of a complete step checkpoint; ValueError naming the path otherwise."""
    if not storage.exists(storage.join(path, COMMIT_FILE)):
        raise ValueError(f"resume={path}: not a complete checkpoint (no {COMMIT_FILE} there)")
    return json.loads(storage.read_text(storage.join(path, META_FILE)))


def rng_state(backend) -> dict:
    """Host RNG states, and the accelerator's tagged with the backend that drew it."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "device": backend.device_rng_state(),
        "device_backend": backend.name,
    }


def set_rng_state(backend, state: dict) -> None:
    """Restore :func:`rng_state`. A device RNG state is only meaningful to the backend that saved
    it (XLA: a seed integer, CUDA: a byte tensor), so one from another backend is left out with a
    warning; checkpoints without the tag count as this backend's."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("device") is None:
        return
    saved_by = state.get("device_backend", backend.name)
    if saved_by != backend.name:
        log.warning(
            "resume: the device RNG state was saved by backend %s, not restored under %s (device "
            "random draws such as dropout differ from the saved run's)",
            saved_by,
            backend.name,
        )
        return
    backend.set_device_rng_state(state["device"])


def tensor_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Dict:
    """The tensors a checkpoint holds, keyed by stable names: the trained parameters and their
    optimiser state (the live tensors, so a load writes into them in place)."""
    state: Dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        state[f"model.{name}"] = param
        for key, value in optimizer.state.get(param, {}).items():
            if isinstance(value, torch.Tensor):
                state[f"optim.{name}.{key}"] = value
    return state


def config_digest(config_yaml: str) -> str:
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]


class Checkpointer:
    """Saves and restores one stage's training state through the backend's DCP planners."""

    def __init__(self, root: str, stage: str, backend, keep_last: int, config_yaml: str = ""):
        self.stage_root = storage.join(root, stage)
        self.stage = stage
        self.backend = backend
        self.keep_last = keep_last
        self.config_yaml = config_yaml

    # -- save ---------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        sampler_state: dict,
        meta: dict,
    ) -> str:
        """Write a complete checkpoint of ``step``; every process calls this."""
        final = storage.join(self.stage_root, step_dir_name(step))
        work = final if storage.is_url(final) else final + ".partial"
        if self.backend.is_main:
            storage.rm(work)
            storage.makedirs(work)
        self.backend.barrier()
        state = tensor_state(model, optimizer)
        with torch.no_grad():
            storage.retry(
                lambda: self.backend.dcp_save(state, work), "write checkpoint shards to", work
            )
        rank_state = {"sampler": sampler_state, "rng": rng_state(self.backend)}
        buffer = io.BytesIO()
        torch.save(rank_state, buffer)
        storage.write_bytes(
            storage.join(work, f"rank-{self.backend.rank:05d}.pt"), buffer.getvalue()
        )
        self.backend.barrier()
        if os.environ.get(CRASH_ENV) == str(step):
            log.error("%s=%s: crashing inside the save (test hook)", CRASH_ENV, step)
            os._exit(13)
        if self.backend.is_main:
            info = dict(
                meta,
                stage=self.stage,
                step=step,
                world_size=self.backend.world_size,
                config_digest=config_digest(self.config_yaml),
            )
            storage.write_text(storage.join(work, META_FILE), json.dumps(info, indent=2))
            if self.config_yaml:
                storage.write_text(storage.join(work, "config.yaml"), self.config_yaml)
            storage.write_text(storage.join(work, COMMIT_FILE), f"{step}\n")
            if work != final:
                storage.publish_dir(work, final, last=COMMIT_FILE)
            self._prune()
        self.backend.barrier()
        log.info("stage %s: training state of step %d saved to %s", self.stage, step, final)
        return final

    def _prune(self) -> None:
        """Keep the newest ``keep_last`` committed checkpoints; drop stale partial ones."""
        steps = committed_steps(self.stage_root)
        for step in steps[: -self.keep_last]:
            storage.rm(storage.join(self.stage_root, step_dir_name(step)))
        for name in storage.ls(self.stage_root):
            if name.endswith(".partial") or (_STEP_DIR.match(name) and int(name[5:]) not in steps):
                storage.rm(storage.join(self.stage_root, name))

    # -- load ---------------------------------------------------------------------------------
    def restore(
        self, path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> Restored:
        """Load ``path`` into the live model and optimiser (in place; any device count)."""
        meta = read_checkpoint_meta(path)
        if meta.get("stage") != self.stage:
            raise ValueError(
                f"resume={path}: checkpoint of stage {meta.get('stage')!r}, not {self.stage!r}"
            )
        if meta.get("config_digest") != config_digest(self.config_yaml):
            log.warning("resume: the config differs from the one %s was saved with", path)
        self.backend.prime_optimizer(
            optimizer, [p for g in optimizer.param_groups for p in g["params"]]
        )
        state = tensor_state(model, optimizer)
        with torch.no_grad():
            storage.retry(
                lambda: self.backend.dcp_load(state, path), "read checkpoint shards from", path
            )
        rank = self._rank_state(path, meta)
        set_rng_state(self.backend, rank.rng)
        log.info("stage %s: resumed from %s (step %d)", self.stage, path, meta["step"])
        return Restored(path, int(meta["step"]), meta, rank)

    def _rank_state(self, path: str, meta: dict) -> RankState:
        saved_world = int(meta.get("world_size", 1))
        rank = self.backend.rank
        if saved_world != self.backend.world_size:
            log.warning(
                "resume: saved by %d process(es), resumed by %d: the data order restarts at the "
                "saved epoch's position spread over the new processes",
                saved_world,
                self.backend.world_size,
            )
            states = [self._read_rank(path, r) for r in range(saved_world)]
            consumed = sum(s["sampler"].get("position", 0) for s in states)
            sampler = dict(states[0]["sampler"])
            sampler["position"] = consumed // self.backend.world_size
            # packed streams: samples drawn but not yet packed, shared out over the new ranks
            carry = [i for s in states for i in s["sampler"].get("carry", [])]
            sampler["carry"] = carry[rank :: self.backend.world_size]
            return RankState(sampler, states[min(rank, saved_world - 1)]["rng"])
        state = self._read_rank(path, rank)
        return RankState(state["sampler"], state["rng"])

    @staticmethod
    def _read_rank(path: str, rank: int) -> dict:
        data = storage.read_bytes(storage.join(path, f"rank-{rank:05d}.pt"))
        return torch.load(io.BytesIO(data), weights_only=False)
