"""End-of-stage checkpoints: trained weights as safetensors, plus the connector on its own.

Layout of ``<run>/<stage>/checkpoint/``: ``trainable.safetensors`` (every parameter the stage
trained), ``connector.safetensors`` (connector + image newline, what the next stage starts from),
``state.json`` (step, stage, tensor checksums), ``config.yaml`` (the run's resolved config, so the
directory alone says how to rebuild the model). A checkpoint is written into a temporary
directory and renamed into place, so a crash never leaves a half checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Set

import torch
from safetensors.torch import load_file, save_file

CONNECTOR_FILE = "connector.safetensors"
TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"


def connector_tensors(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The connector and newline entries of a model state dict, as contiguous CPU tensors."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in state_dict.items()
        if k.startswith("connector.") or k == "image_newline"
    }


def connector_state(model) -> Dict[str, torch.Tensor]:
    """Connector and newline tensors of an unsharded model, keyed as in its state dict."""
    return connector_tensors(model.state_dict())


def tensors_digest(tensors: Dict[str, torch.Tensor]) -> str:
    """Order-independent sha256 of named tensors (to prove which weights a stage started from)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_stage_checkpoint(
    state_dict: Dict[str, torch.Tensor],
    trainable: Set[str],
    out_dir: Path,
    state: dict,
    config_yaml: str = "",
) -> Path:
    """Write the full (unsharded) ``state_dict``'s trained and connector tensors."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trained = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k in trainable}
    connector = connector_tensors(state_dict)
    save_file(trained, str(tmp / TRAINABLE_FILE))
    save_file(connector, str(tmp / CONNECTOR_FILE))
    state = dict(state, connector_digest=tensors_digest(connector))
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    if config_yaml:
        (tmp / CONFIG_FILE).write_text(config_yaml)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)
    return out_dir


def resolve_connector_file(path: str) -> Path:
    """Accept a connector file, a checkpoint dir, or a stage dir holding ``checkpoint/``."""
    p = Path(path)
    for candidate in (p, p / CONNECTOR_FILE, p / "checkpoint" / CONNECTOR_FILE):
        if candidate.is_file():
            return candidate
    raise ValueError(f"init_from={path}: no {CONNECTOR_FILE} there (nor in {p / 'checkpoint'})")


def load_connector(model, path: str) -> str:
    """Load connector + newline weights into ``model``; returns their digest."""
    tensors = load_file(str(resolve_connector_file(path)))
    expected = set(connector_state(model))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(
            f"init_from={path}: connector tensors do not match this model "
            f"(missing {missing[:5]}, unexpected {extra[:5]})"
        )
    own = model.state_dict()
    for name, value in tensors.items():
        if own[name].shape != value.shape:
            raise ValueError(
                f"init_from={path}: {name} has shape {tuple(value.shape)}, model expects "
                f"{tuple(own[name].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    return tensors_digest(tensors)
