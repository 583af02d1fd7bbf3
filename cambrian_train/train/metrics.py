"""Run logging: stdout lines, wandb (offline without an account), and the loss-curve PNG."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

from cambrian_train.config.schema import LoggerConfig

log = logging.getLogger(__name__)


class RunLogger:
    """Collects per-stage metric history; mirrors it to wandb and ``metrics.jsonl``."""

    def __init__(
        self, cfg: LoggerConfig, output_dir: Path, run_name: str, config: dict, active=True
    ):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.active = active  # only the main process writes
        self.history: Dict[str, List[dict]] = {}
        self._wandb = None
        if active and cfg.wandb:
            self._wandb = self._init_wandb(run_name, config)
        self._jsonl = open(self.output_dir / "metrics.jsonl", "a") if active else None

    def _init_wandb(self, run_name: str, config: dict):
        import wandb

        mode = self.cfg.wandb_mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            name=self.cfg.run_name or run_name,
            dir=str(self.output_dir),
            mode=mode,
            config=config,
            reinit="finish_previous",
        )
        log.info("wandb %s run in %s", mode, run.dir)
        return run

    def log(self, stage: str, step: int, metrics: Dict[str, float]) -> None:
        row = {"stage": stage, "step": step, **metrics}
        self.history.setdefault(stage, []).append(row)
        if not self.active:
            return
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._wandb is not None:
            self._wandb.log({f"{stage}/{k}": v for k, v in metrics.items()})

    def summary(self, values: Dict[str, object]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update(values)

    def plot_losses(self, path: Optional[Path] = None) -> Optional[Path]:
        """Write one loss curve per stage into a PNG; returns its path."""
        if not self.active or not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        stages = list(self.history)
        fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
        for ax, stage in zip(axes[0], stages):
            rows = [r for r in self.history[stage] if "loss" in r]
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
            ax.set_title(f"{stage} loss")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("loss")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = path or self.output_dir / "loss_curve.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
