"""Sharded, atomic training-state checkpoints and exact resume (``torch.distributed.checkpoint``).

Layout under the checkpoint root (``checkpoint.dir``, default ``<output_dir>/checkpoints``; a
local path or any fsspec URL such as ``gs://``)::

    <root>/<stage>/step-00000120/
        .metadata, __*_*.distcp   DCP shards: model.<param> (the trained parameters),
                                  optim.<param>.<key> (AdamW step / exp_avg / exp_avg_sq)
        rank-00000.pt ...         per process: sampler cursor and RNG states
        meta.json                 stage, step, planned steps, run counters, config digest,
                                  the run's storage locations (absolute, as saved)
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

A restore compares the saved ``config.yaml`` with the resuming run's config and warns, naming
each differing field with both values, when they differ in more than run control (how the run is
started, stored, logged and kept: :data:`RUN_CONTROL_FIELDS`, :data:`LOCATION_FIELDS`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

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
    """What :meth:`Checkpointer.restore` read. ``rank.rng`` is not applied by it: the trainer
    sets the random state right before the first resumed step."""

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
    """Hash of the config text (in meta.json; equal digests skip the field-by-field comparison)."""
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]


# -- config comparison on resume ---------------------------------------------------------------
# Run control: fields that say how a run is started, stored, logged and kept, not what it trains
# or reports. A resume leaves them out when it compares its config with the checkpoint's, so
# ``resume=auto``, another logger or a new keep_last do not read as "the config differs".
# Dotted paths of TrainConfig (config/schema.py); a path covers everything below it and ``*``
# stands for one key (a stage name).
RUN_CONTROL_FIELDS = (
    "resume",  # how this run starts: null / auto / a checkpoint
    "name",  # a label: the default wandb run name, results.json's "name"
    "logger",  # wandb on/off, mode, project, entity, run name; the progress bar
    "stages.*.log_every",  # how often metrics are logged
    "checkpoint.save_every",  # how often the training state is saved
    "checkpoint.keep_last",  # how many of those saves are kept
    "backend.compile_warmup_steps",  # the recompile check (train/progress.py) ...
    "backend.on_recompile",  # ... and what a recompile after warm-up does
    "backend.peak_tflops",  # only the logged MFU's denominator
    "data.num_workers",  # loader processes: the batches and their order do not depend on them
    "variants",  # repro/'s variant runs, each of which runs with none of these
    "only_variants",
    "variant_seeds",
    "variant_quick",
)
# Storage locations: compared as locations (local paths made absolute against the directory the
# run started in, which meta.json records at save time; URLs without trailing or doubled
# slashes), so a run resumed from the same output_dir, spelt another way, does not differ.
LOCATION_FIELDS = ("output_dir", "checkpoint.dir")
# differences the warning names before "and N more"
SHOWN_DIFFERENCES = 5
_ABSENT = object()


class ConfigDifference(NamedTuple):
    path: str  # dotted, e.g. stages.finetune.lr
    saved: Any  # the checkpoint's value (``_ABSENT`` if it has none)
    current: Any  # the resuming run's

    def __str__(self) -> str:
        return f"{self.path}: {_show(self.saved)} -> {_show(self.current)}"


def _show(value: Any, limit: int = 80) -> str:
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, str):
        text = value if value else "''"
    else:
        text = json.dumps(value, default=str)  # null, true, 0.001, [0.9, 0.999], {...}
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_config(config_yaml: str) -> dict:
    """A config's YAML text as a dict ({} for none or a text that is not a mapping)."""
    if not config_yaml:
        return {}
    try:  # OmegaConf's YAML reading: the text is OmegaConf's (1e-05 is a float, not a string)
        parsed = OmegaConf.create(config_yaml)
    except (OmegaConfBaseException, ValueError, yaml.YAMLError):
        return {}
    return OmegaConf.to_container(parsed, resolve=False) if isinstance(parsed, DictConfig) else {}


def _flatten(config: Mapping, prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _get(config: Mapping, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(config, Mapping) or key not in config:
            return None
        config = config[key]
    return config


def is_run_control(path: str) -> bool:
    """Whether a dotted config path is (under) one of :data:`RUN_CONTROL_FIELDS`."""
    keys = path.split(".")
    for pattern in RUN_CONTROL_FIELDS:
        parts = pattern.split(".")
        if len(parts) <= len(keys) and all(
            fnmatch.fnmatchcase(key, part) for key, part in zip(keys, parts)
        ):
            return True
    return False


def normalised_location(path: Any) -> Any:
    """A storage location in one spelling: a local path absolute (``file://`` dropped, ``.``,
    ``..`` and trailing ``/`` resolved), a URL with a lower-case scheme and single slashes."""
    if not isinstance(path, str) or not path:
        return path
    if storage.is_url(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme.lower()}://" + re.sub("/{2,}", "/", rest).rstrip("/")
    return storage.absolute(path)


def config_locations(config: Mapping) -> Dict[str, Any]:
    """The :data:`LOCATION_FIELDS` of a parsed config, normalised (relative paths against the
    current directory)."""
    return {path: normalised_location(_get(config, path)) for path in LOCATION_FIELDS}


def config_differences(
    saved: Mapping,
    current: Mapping,
    saved_locations: Optional[Mapping[str, Any]] = None,
) -> List[ConfigDifference]:
    """The fields in which two parsed configs differ, in config order, without run control
    (:data:`RUN_CONTROL_FIELDS`); :data:`LOCATION_FIELDS` are compared normalised, the saved
    ones as ``saved_locations`` recorded them at save time where given. Lists are compared
    whole; a field only one side has is :data:`_ABSENT` on the other."""
    saved_flat, current_flat = _flatten(saved), _flatten(current)
    recorded = dict(config_locations(saved), **(saved_locations or {}))
    for path, location in config_locations(current).items():
        if path in current_flat:
            current_flat[path] = location
        if path in saved_flat:
            saved_flat[path] = recorded.get(path)
    differences = []
    for path in [*current_flat, *(p for p in saved_flat if p not in current_flat)]:
        if is_run_control(path):
            continue
        before, after = saved_flat.get(path, _ABSENT), current_flat.get(path, _ABSENT)
        if before != after:
            differences.append(ConfigDifference(path, before, after))
    return differences


def describe_differences(
    differences: List[ConfigDifference], shown: int = SHOWN_DIFFERENCES
) -> str:
    """``a.b: 1 -> 2; c: x -> y`` for the first ``shown`` differences, then ``; and N more``."""
    text = "; ".join(str(d) for d in differences[:shown])
    rest = len(differences) - shown
    return f"{text}; and {rest} more" if rest > 0 else text


class Checkpointer:
    """Saves and restores one stage's training state through the backend's DCP planners."""

    def __init__(self, root: str, stage: str, backend, keep_last: int, config_yaml: str = ""):
        self.stage_root = storage.join(root, stage)
        self.stage = stage
        self.backend = backend
        self.keep_last = keep_last
        self.config_yaml = config_yaml
        # where this run stores things, resolved against the directory it started in
        self.locations = config_locations(parse_config(config_yaml))

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
                locations=self.locations,
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
            self._compare_config(path, meta)
        self.backend.prime_optimizer(
            optimizer, [p for g in optimizer.param_groups for p in g["params"]]
        )
        state = tensor_state(model, optimizer)
        with torch.no_grad():
            storage.retry(
                lambda: self.backend.dcp_load(state, path), "read checkpoint shards from", path
            )
        rank = self._rank_state(path, meta)  # its random state: see Restored
        log.info("stage %s: resumed from %s (step %d)", self.stage, path, meta["step"])
        return Restored(path, int(meta["step"]), meta, rank)

    def _compare_config(self, path: str, meta: dict) -> None:
        """Warn when this run's config differs from the checkpoint's beyond run control."""
        saved_file = storage.join(path, "config.yaml")
        if not storage.exists(saved_file):
            log.warning(
                "resume: %s holds no config.yaml; its config cannot be compared with this run's",
                path,
            )
            return
        differences = config_differences(
            parse_config(storage.read_text(saved_file)),
            parse_config(self.config_yaml),
            meta.get("locations"),
        )
        if differences:
            log.warning(
                "resume: the config differs from the one %s was saved with: %s",
                path,
                describe_differences(differences),
            )

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
