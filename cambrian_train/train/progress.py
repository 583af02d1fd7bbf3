"""What the training loop reports between and on logging steps, without syncing in the step.

:class:`StepLog` keeps each step's loss and finite flag as device tensors and reads them only on
logging steps (one batch of device→host transfers, no new graph): per-step losses, gradient
norm, throughput, skipped (non-finite) steps, and the divergence check — ``max_nonfinite_steps``
skipped steps in a row stop the run with :class:`TrainingDiverged`. :class:`CompileWatch` checks
the XLA compile count after warm-up; both also count the device→host transfers made inside step
functions (``d2h_in_steps``), which must be zero on every backend that reports transfers.
"""

from __future__ import annotations

import logging
import math
import time
from typing import List, Optional

import torch

from cambrian_train.backends.base import Backend
from cambrian_train.config.schema import StageConfig
from cambrian_train.train.flops import model_flops
from cambrian_train.train.metrics import RunLogger
from cambrian_train.train.mfu import mfu, peak_tflops
from cambrian_train.train.step import StepOutput

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the model holds the last good state."""


class CompileWatch:
    """Watches the backend's graph-compile count: after ``compile_warmup_steps`` it must stay
    constant; growth means shapes or Python values change between steps (XLA recompiles)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.mode = backend.cfg.on_recompile
        self.warmup = backend.cfg.compile_warmup_steps
        self.count = backend.compile_count()
        self.baseline: Optional[int] = None

    def after_step(self, step: int) -> None:
        self.count = self.backend.compile_count()
        if self.count is None or self.mode == "off":
            return
        if step == self.warmup:
            self.baseline = self.count
        elif self.baseline is not None and self.count > self.baseline:
            message = (
                f"{self.count - self.baseline} graph compilation(s) after warm-up, at step {step}: "
                "a shape or Python value changes between steps"
            )
            if self.mode == "error":
                raise RuntimeError(message + " (backend.on_recompile=error)")
            log.warning("%s", message)
            self.baseline = self.count


class StepLog:
    """Per-stage reporting state: pending device values, window counters, run totals."""

    def __init__(
        self,
        stage: StageConfig,
        backend: Backend,
        run_logger: RunLogger,
        total_steps: int,
        counters: dict,
    ):
        self.stage = stage
        self.backend = backend
        self.run_logger = run_logger
        self.total_steps = total_steps
        self.first_loss = counters.get("first_loss", float("nan"))
        self.final_loss = float("nan")
        self.samples = self.samples_before = counters.get("samples", 0)
        self.tokens = self.tokens_before = counters.get("tokens", 0)
        device = backend.device
        self.skipped_total = torch.full((), counters.get("skipped_steps", 0), device=device)
        self.skipped_run = torch.zeros((), device=device)  # non-finite steps in a row
        self.pending: List[torch.Tensor] = []
        self.window_start = time.perf_counter()
        self.window_tokens = self.window_samples = 0
        self.d2h_in_steps = 0  # device→host transfers inside step functions since the last log
        self.watch = CompileWatch(backend)
        self.line = None  # the last interval's summary line
        self.flops_per_step: Optional[float] = None  # model FLOPs of one global step
        self.peak = _peak(backend)  # TFLOP/s of one device, None where unknown
        self.window_positions = 0  # sequence positions (padding included) in the window
        self.window_wait = 0.0  # seconds the loop waited for its next batch in the window

    def consumed(self, tokens: int, samples: int, positions: int) -> None:
        """A host micro-batch went into the step (counts read on the host before transfer):
        real tokens, samples, and sequence positions (samples x length)."""
        self.window_tokens += tokens
        self.window_samples += samples
        self.window_positions += positions
        self.tokens += tokens
        self.samples += samples

    def waited(self, seconds: float) -> None:
        """The loop spent ``seconds`` waiting for a batch (loader, collate, transfer)."""
        self.window_wait += seconds

    def count_flops(self, model, stage: StageConfig, seq_len: int, num_images: int) -> None:
        """Model FLOPs of one global step (train/flops.py), once, from the first batch's shape;
        a model the analytic count does not cover only loses the TFLOP/s and MFU figures."""
        try:
            breakdown = model_flops(
                model, stage.global_batch_size, seq_len, num_images, train_llm=stage.train_llm
            )
        except ValueError as err:
            log.warning("no model FLOPs in the logs: %s", err)
            self.flops_per_step = float("nan")
            return
        self.flops_per_step = breakdown.total
        log.info("model FLOPs per optimiser step: %.4g (%s)", breakdown.total, stage.name)

    def record(self, out: StepOutput) -> None:
        """Fold a step's outputs into the device-side counters, before the step's graph is cut
        (so every step's graph is the same and nothing is read)."""
        not_finite = (~out.finite).float()
        self.skipped_total = self.skipped_total + not_finite
        self.skipped_run = (self.skipped_run + 1.0) * not_finite
        self.pending.append(out.loss)

    def after_step(self, step: int, transfers_in_step: int) -> None:
        """Step ``step`` (1-based) is done: note its transfers, watch the compile count."""
        self.d2h_in_steps += transfers_in_step
        self.watch.after_step(step)

    def counters(self) -> dict:
        """What a checkpoint keeps to continue the run's totals (reads the skip count)."""
        return {
            "first_loss": self.first_loss,
            "samples": self.samples,
            "tokens": self.tokens,
            "skipped_steps": int(self.skipped_total),
        }

    def flush(self, step: int, out: StepOutput, lrs: dict) -> None:
        """A logging step: read the pending values, check divergence, write the metrics."""
        stage = self.stage
        run = int(self.skipped_run)
        if run >= stage.max_nonfinite_steps:
            raise TrainingDiverged(
                f"stage {stage.name}: {run} optimizer steps in a row had a non-finite loss or "
                f"gradient (up to step {step}); stopping "
                f"(stages.{stage.name}.max_nonfinite_steps={stage.max_nonfinite_steps})"
            )
        losses = [float(t) for t in self.pending]
        first = step - len(losses) + 1
        for k, value in enumerate(losses[:-1]):
            self.run_logger.log(stage.name, first + k, {"loss": value})
        elapsed = time.perf_counter() - self.window_start
        metrics = {
            "loss": losses[-1],
            "grad_norm": float(out.grad_norm),
            "step_s": elapsed / len(losses),
            "tokens_per_s": self.window_tokens / elapsed,  # real (non-pad) tokens, this host
            "positions_per_s": self.window_positions / elapsed,  # padding included
            "samples_per_s": self.window_samples / elapsed,
            "padding_fraction": 1.0 - self.window_tokens / max(1, self.window_positions),
            # of the interval's wall time, spent waiting for input: > 0.05 means data-bound
            "data_wait_fraction": self.window_wait / elapsed,
            **{f"lr/{name}": lr for name, lr in lrs.items()},
            "skipped_steps": int(self.skipped_total),
        }
        if self.flops_per_step is not None and math.isfinite(self.flops_per_step):
            devices = self.backend.device_count()
            achieved = self.flops_per_step * len(losses) / elapsed / devices  # per device
            metrics["model_tflops_per_device"] = achieved / 1e12
            if self.peak is not None:
                metrics["mfu"] = mfu(self.flops_per_step, elapsed / len(losses), devices, self.peak)
        if self.watch.count is not None:
            metrics["compiles"] = self.watch.count
        if self.backend.transfer_count() is not None:
            metrics["d2h_in_steps"] = self.d2h_in_steps
            metrics["largest_graph"] = self.backend.largest_graph()
        self.run_logger.log(stage.name, step, metrics)
        if first == 1:
            self.first_loss = losses[0]
        self.final_loss = losses[-1]
        self.pending, self.d2h_in_steps = [], 0
        self.window_start, self.window_tokens, self.window_samples = time.perf_counter(), 0, 0
        self.window_positions, self.window_wait = 0, 0.0
        lr = next(iter(lrs.values()), float("nan"))
        self.line = (
            f"[{stage.name}] step {step}/{self.total_steps} loss {self.final_loss:.4f} "
            f"lr {lr:.2e} grad_norm {metrics['grad_norm']:.3f} "
            f"tokens/s {metrics['tokens_per_s']:.0f}"
        )


def _peak(backend: Backend) -> Optional[float]:
    """``backend.peak_tflops``, else the table's value for the device kind; None on CPU."""
    if backend.cfg.peak_tflops is not None:
        return backend.cfg.peak_tflops
    kind = backend.device_kind()
    if kind.lower() == "cpu":
        return None
    try:
        return peak_tflops(kind)
    except ValueError as err:  # an unknown chip costs the MFU figure, not the run
        log.warning("no MFU in the logs: %s", err)
        return None
