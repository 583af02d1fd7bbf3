"""What the server says about its model: the web page's model panel and ``GET /v1/models``.

Towers (name, source, checkpoint, tokens per image), connector, LLM (checkpoint, depth, width,
parameter count), the prompt settings (template, length, images per prompt), and two digests in
the format of ``train/checkpoint.py``'s ``tensors_digest``: the connector's (cheap, at start-up;
equal to the ``connector_digest`` of the run's ``state.json`` when nothing changed it) and all
weights' — hashing every tensor takes a while on a large model, so it runs in a background
thread and reads "computing" until done.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from cambrian_train.data.dataset import ImageTextEncoder
from cambrian_train.train.checkpoint import connector_state, tensors_digest


def _short(path: str) -> str:
    """A checkpoint as people name it: the last two parts of a local path, a hub name as is."""
    path = path.removeprefix("local-dir:").rstrip("/")
    if os.path.isabs(path):
        return "/".join(path.split("/")[-2:])
    return path


@dataclass
class ModelInfo:
    model_id: str
    path: str
    towers: List[str]
    connector: str
    llm: str
    prompt: str
    num_params: int
    connector_digest: str
    created: int = field(default_factory=lambda: int(time.time()))
    weights_digest: Optional[str] = None  # set by the background thread

    def as_dict(self) -> Dict[str, object]:
        return {
            "path": self.path,
            "towers": self.towers,
            "connector": self.connector,
            "llm": self.llm,
            "prompt": self.prompt,
            "num_params": self.num_params,
            "connector_digest": self.connector_digest,
            "weights_digest": self.weights_digest,
        }

    def markdown(self) -> str:
        towers = "".join(f"\n  - {t}" for t in self.towers) or " none"
        digest = self.weights_digest or "computing…"
        return (
            f"**{self.model_id}** — `{self.path}`\n\n"
            f"- **towers**:{towers}\n"
            f"- **connector**: {self.connector}\n"
            f"- **LLM**: {self.llm}\n"
            f"- **prompt**: {self.prompt}\n"
            f"- **parameters**: {self.num_params / 1e6:,.1f} M\n"
            f"- **connector digest**: `{self.connector_digest}`\n"
            f"- **weights digest**: `{digest}`"
        )


def describe(model, encoder: ImageTextEncoder, path: str, model_id: str) -> ModelInfo:
    """The model's description; call :func:`start_weights_digest` for the full digest."""
    cfg = model.cfg
    towers = [
        f"{name}: {t.source} `{_short(t.checkpoint)}`, {t.image_size}px → {t.num_tokens} tokens"
        for name, t in cfg.towers.items()
    ]
    conn = cfg.connector
    connector = f"{conn.name}, {cfg.image_token_len} tokens per image"
    if conn.name == "sva" and conn.insert.count:
        ins = conn.insert
        connector += f", in-LLM SVA start {ins.start} stride {ins.stride} count {ins.count}"
    llm = (
        f"{cfg.llm.source} `{_short(cfg.llm.checkpoint)}` ({model.llm.config.model_type}, "
        f"{cfg.llm.num_layers} layers, width {cfg.llm.hidden_size}, {cfg.llm.dtype})"
    )
    prompt = (
        f"template {encoder.template.name}, up to {encoder.max_length} tokens, "
        f"{encoder.max_images} image(s) of {encoder.slot_len} tokens, "
        f"aspect ratio {encoder.aspect_ratio}"
    )
    return ModelInfo(
        model_id=model_id,
        path=path,
        towers=towers,
        connector=connector,
        llm=llm,
        prompt=prompt,
        num_params=sum(p.numel() for p in model.parameters()),
        connector_digest=tensors_digest(connector_state(model)),
    )


def start_weights_digest(info: ModelInfo, model) -> threading.Thread:
    """Hash every tensor of ``model`` in a background thread into ``info.weights_digest``."""

    def work():
        info.weights_digest = tensors_digest(model.state_dict())

    thread = threading.Thread(target=work, name="cambrian-digest", daemon=True)
    thread.start()
    return thread
