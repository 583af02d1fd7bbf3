"""A text-only fine-tuning stage (``data.text``): its data, batch layout and validation loss.

``run.run_stage`` asks :func:`text_stage` for the stage's training dataset (data/text_data.py),
its row length (``data.text.max_input_length`` replaces the stage's ``max_length``) and a batch
layout with no image slots, so a text batch runs no vision tower (models/vlm.py). With the
stage's ``eval_after`` the validation loss (train/val_loss.py) is computed at the end of every
epoch (every ``ceil(train samples / global batch)`` steps) and after the last step, logged as
``val_loss`` (metrics.jsonl, wandb) and written to the stage's results; no generation
evaluation on ``data.test_path`` runs for a text stage.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from cambrian_train.config.schema import StageConfig, TrainConfig
from cambrian_train.data.packing import BatchShape
from cambrian_train.data.text_data import TextData, build_text_data
from cambrian_train.train.val_loss import ValidationSet, validation_loss

log = logging.getLogger(__name__)


@dataclass
class TextStage:
    stage: StageConfig  # max_length = the text row length
    data: TextData
    history: List[dict] = field(default_factory=list)  # one entry per validation

    @property
    def shape(self) -> BatchShape:
        """Rows of one sample, ``seq_len`` positions, no image slots."""
        return BatchShape(self.data.seq_len, 0, 1, packing=False, budget=False)

    def validator(
        self, model, backend, run_logger, total_steps: int, host_batch: int, collate_fn
    ) -> Optional[Callable[[int], None]]:
        """The ``after_step`` hook of ``train_stage``: validation at epoch ends and at the last
        step; None when the stage does not evaluate or there is no validation set."""
        if not self.stage.eval_after or self.data.val is None:
            if self.stage.eval_after:
                log.info("stage %s: no validation set, so no val_loss", self.stage.name)
            return None
        val = ValidationSet(
            self.data.val,
            host_batch,
            collate_fn,
            pad_id=collate_fn.keywords["pad_id"],
            rank=backend.data_parallel_rank,
            world_size=backend.data_parallel_size,
        )
        per_epoch = max(1, math.ceil(len(self.data.train) / self.stage.global_batch_size))

        def after_step(step: int) -> None:
            if step % per_epoch and step != total_steps:
                return
            values = validation_loss(model, backend, val)
            entry = {"step": step, "epoch": round(step / per_epoch, 4), **values}
            self.history.append(entry)
            run_logger.log(self.stage.name, step, {"val_loss": values["val_loss"]})
            log.info(
                "stage %s: step %d (epoch %.2f) val_loss %.4f over %d tokens",
                self.stage.name,
                step,
                entry["epoch"],
                values["val_loss"],
                values["val_tokens"],
            )

        return after_step

    def results(self) -> dict:
        """What the stage's results.json entry gets."""
        out = {"text_data": self.data.summary, "val_history": self.history}
        if self.history:
            out["val_loss"] = self.history[-1]["val_loss"]
            out["first_val_loss"] = self.history[0]["val_loss"]
        return out


def text_stage(cfg: TrainConfig, stage: StageConfig, tokenizer, llm_config) -> TextStage:
    """The text stage of ``stage`` under ``cfg.data.text`` (its data built or read from cache)."""
    max_positions = getattr(llm_config, "max_position_embeddings", None)
    data = build_text_data(cfg.data.text, cfg.data.train_path, tokenizer, max_positions)
    if stage.max_length != data.seq_len:
        log.info(
            "stage %s: rows of %d tokens (data.text.max_input_length) instead of max_length=%d",
            stage.name,
            data.seq_len,
            stage.max_length,
        )
    return TextStage(dataclasses.replace(stage, max_length=data.seq_len), data)
