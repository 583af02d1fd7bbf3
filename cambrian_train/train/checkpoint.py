"""End-of-stage checkpoints: trained weights as safetensors, plus the connector on its own.

Layout of ``<run>/<stage>/checkpoint/``: ``trainable.safetensors`` (every parameter the stage
trained), ``connector.safetensors`` (connector + image newline, what the next stage starts from),
``state.json`` (step, stage, tensor checksums), ``config.yaml`` (the run's resolved config, so the
directory alone says how to rebuild the model). Paths are local or fsspec URLs (storage.py). A
checkpoint is written into ``checkpoint.tmp`` and published under the final name (a rename; on a
URL a copy with ``state.json`` last), so a crash never leaves a half checkpoint that reads as
complete, and a failed write leaves the previous checkpoint in place.
"""

from __future__ import annotations

import hashlib
import json
from typing import Dict, Set

import torch

from cambrian_train import storage

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
    out_dir: str,
    state: dict,
    config_yaml: str = "",
) -> str:
    """Write the full (unsharded) ``state_dict``'s trained and connector tensors to ``out_dir``
    (a local path or URL); ``state.json`` is written last."""
    out_dir = str(out_dir)
    tmp = out_dir.rstrip("/") + ".tmp"
    storage.rm(tmp)
    storage.makedirs(tmp)
    trained = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k in trainable}
    connector = connector_tensors(state_dict)
    storage.save_safetensors(trained, storage.join(tmp, TRAINABLE_FILE))
    storage.save_safetensors(connector, storage.join(tmp, CONNECTOR_FILE))
    if config_yaml:
        storage.write_text(storage.join(tmp, CONFIG_FILE), config_yaml)
    state = dict(state, connector_digest=tensors_digest(connector))
    storage.write_text(storage.join(tmp, STATE_FILE), json.dumps(state, indent=2))
    return storage.publish_dir(tmp, out_dir, last=STATE_FILE)


def resolve_connector_file(path: str) -> str:
    """Accept a connector file, a checkpoint dir, or a stage dir holding ``checkpoint/``
    (local paths or URLs)."""
    nested = storage.join(path, "checkpoint")
    for candidate in (
        path,
        storage.join(path, CONNECTOR_FILE),
        storage.join(nested, CONNECTOR_FILE),
    ):
        if storage.isfile(candidate):
            return candidate
    raise ValueError(f"init_from={path}: no {CONNECTOR_FILE} there (nor in {nested})")


def load_connector(model, path: str) -> str:
    """Load connector + newline weights into ``model``; returns their digest."""
    tensors = storage.load_safetensors(resolve_connector_file(path))
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
