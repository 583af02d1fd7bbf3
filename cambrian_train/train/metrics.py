"""Run logging: stdout lines, wandb (offline without an account), and the loss-curve PNG.

``metrics.jsonl`` and ``loss_curve.png`` belong in ``output_dir`` (a local path or a URL). For a
URL they are written in its local mirror (storage.py: also wandb's directory) and uploaded whole:
the PNG when drawn, ``metrics.jsonl`` every ``SYNC_INTERVAL_S`` and at the end of each stage and
run; a run resumed on another machine starts from the uploaded ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional

from cambrian_train import storage
from cambrian_train.config.schema import LoggerConfig

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
SYNC_INTERVAL_S = 60.0  # between uploads of metrics.jsonl to a URL output_dir


class RunLogger:
    """Collects per-stage metric history; mirrors it to wandb and ``metrics.jsonl``."""

    def __init__(
        self, cfg: LoggerConfig, output_dir: str, run_name: str, config: dict, active=True
    ):
        self.cfg = cfg
        self.output_dir = str(output_dir)
        self.local_dir = Path(storage.local_mirror(output_dir))  # output_dir itself when local
        self.active = active  # only the main process writes
        self.history: Dict[str, List[dict]] = {}
        self._wandb = None
        self._jsonl = None
        self._synced = time.monotonic()
        if not active:
            return
        self.local_dir.mkdir(parents=True, exist_ok=True)
        if storage.is_url(self.output_dir):
            self._fetch_metrics()
        if cfg.wandb:
            self._wandb = self._init_wandb(run_name, config)
        self._jsonl = open(self.local_dir / METRICS_FILE, "a")

    def _fetch_metrics(self) -> None:
        """The URL's ``metrics.jsonl`` (an earlier attempt's) replaces the local copy."""
        local, remote = self.local_dir / METRICS_FILE, storage.join(self.output_dir, METRICS_FILE)
        local.unlink(missing_ok=True)
        if storage.exists(remote):
            storage.download(remote, local)

    def sync(self) -> None:
        """Upload ``metrics.jsonl`` when ``output_dir`` is a URL (whole, replacing the old)."""
        self._synced = time.monotonic()
        if self._jsonl is None or not storage.is_url(self.output_dir):
            return
        self._jsonl.flush()
        storage.upload(self.local_dir / METRICS_FILE, storage.join(self.output_dir, METRICS_FILE))

    def _init_wandb(self, run_name: str, config: dict):
        import wandb

        mode = self.cfg.wandb_mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            name=self.cfg.run_name or run_name,
            dir=str(self.local_dir),
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
        if time.monotonic() - self._synced > SYNC_INTERVAL_S:
            self.sync()

    def summary(self, values: Dict[str, object]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update(values)

    def plot_losses(self) -> Optional[str]:
        """Write one loss curve per stage into ``loss_curve.png``; returns its path (also syncs
        ``metrics.jsonl``)."""
        if not self.active or not self.history:
            return None
        self.sync()
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
        local = self.local_dir / LOSS_CURVE_FILE
        fig.savefig(local, dpi=100)
        plt.close(fig)
        path = storage.join(self.output_dir, LOSS_CURVE_FILE)
        if storage.is_url(path):
            storage.upload(local, path)
        return path

    def close(self) -> None:
        if self._jsonl is not None:
            self.sync()
            self._jsonl.close()
            self._jsonl = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
