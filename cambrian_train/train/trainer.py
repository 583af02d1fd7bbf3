"""The training loop of one stage: accumulation, clipping, schedule, logging.

Values are read back to the host only on logging steps (per-step losses are kept as tensors
until then), so the same loop serves eager CPU/GPU and lazily traced XLA.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

import torch
from tqdm import tqdm

from cambrian_train.backends.base import Backend
from cambrian_train.batch import Batch
from cambrian_train.config.schema import StageConfig
from cambrian_train.train.metrics import RunLogger
from cambrian_train.train.optim import build_optimizer, build_scheduler
from cambrian_train.train.preempt import Preempted, StopSignal
from cambrian_train.train.resume import Checkpointer
from cambrian_train.train.stage import ParamGroup, count_params, lr_scale

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    name: str
    steps: int
    first_loss: float
    final_loss: float
    seconds: float
    samples_per_s: float
    tokens_per_s: float
    skipped_steps: int
    resumed_from_step: int = 0


def _record_sizes(stream: Iterator[Batch], sizes: deque, cursor: Callable[[], dict]):
    """Pass host batches through, noting their real-token and sample counts and the data
    cursor just after each (read on the host, before any device transfer or prefetch, so
    throughput never costs a device sync and a checkpoint knows exactly what was consumed)."""
    for batch in stream:
        sizes.append((int(batch.attention_mask.sum()), batch.batch_size, cursor()))
        yield batch


@dataclass
class Persistence:
    """How a stage saves and resumes its training state (train/resume.py, train/preempt.py)."""

    checkpointer: Checkpointer
    save_every: int  # 0 = only when stopped
    stop: StopSignal
    restore_from: Optional[str] = None  # a step checkpoint to resume from


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


def planned_steps(stage: StageConfig, num_records: int) -> int:
    """Optimiser steps: ``max_steps``, or ceil(records × epochs / global batch)."""
    if stage.max_steps is not None:
        return stage.max_steps
    return max(1, math.ceil(num_records * stage.epochs / stage.global_batch_size))


def train_stage(
    stage: StageConfig,
    model: torch.nn.Module,
    groups: List[ParamGroup],
    backend: Backend,
    open_stream: Callable[[Optional[dict]], Iterator[Batch]],
    total_steps: int,
    run_logger: RunLogger,
    persistence: Optional[Persistence] = None,
) -> StageResult:
    """Run ``total_steps`` optimiser steps of ``stage`` on an already prepared model.

    ``open_stream(sampler_state)`` opens the host batch stream (from the start, or from a
    resumed cursor); its ``state_dict()``, where it has one (data/loader.py BatchStream), is the
    data cursor after the latest host batch drawn.
    With ``persistence``, the training state is saved every ``save_every`` steps and when a stop
    signal arrives (then :class:`Preempted` is raised), and ``restore_from`` resumes a stage.
    """
    scale = lr_scale(stage)
    if stage.base_batch_size is not None:
        log.info(
            "lr scaling: global batch %d vs base batch %d -> lr x %.4f",
            stage.global_batch_size,
            stage.base_batch_size,
            scale,
        )
    for g in groups:
        log.info("group %-18s lr %.3g  params %d", g.name, g.lr, sum(p.numel() for p in g.params))
    log.info(
        "stage %s: %d steps, trainable %d / %d params",
        stage.name,
        total_steps,
        count_params(model, trainable_only=True),
        count_params(model),
    )
    optimizer = build_optimizer(groups, stage)
    scheduler = build_scheduler(optimizer, stage, total_steps)
    params = [p for g in groups for p in g.params]
    counters = {"first_loss": float("nan"), "samples": 0, "tokens": 0, "skipped_steps": 0}
    start_step, sampler_state = 0, None
    if persistence is not None and persistence.restore_from:
        restored = persistence.checkpointer.restore(persistence.restore_from, model, optimizer)
        start_step, sampler_state = restored.step, restored.rank.sampler
        counters.update(restored.meta.get("counters", {}))
        scheduler.last_epoch = start_step - 1
        scheduler.step()  # the learning rates of step ``start_step``
    if stage.gradient_checkpointing:
        backend.enable_gradient_checkpointing(model)
    model.train()
    sizes: deque = deque()  # (tokens, samples, cursor) of each host batch, consumed in order
    stream = open_stream(sampler_state)
    cursor = getattr(stream, "state_dict", dict)
    batches = backend.device_stream(_record_sizes(stream, sizes, cursor))
    watch = CompileWatch(backend)
    consumed_cursor = sampler_state or {}

    show_bar = backend.is_main and run_logger.cfg.progress_bar
    bar = tqdm(total=total_steps, initial=start_step, desc=stage.name, disable=not show_bar)
    pending: List[torch.Tensor] = []
    first_loss, final_loss = counters["first_loss"], float("nan")
    skipped_total = torch.full(  # non-finite steps
        (), counters["skipped_steps"], dtype=torch.long, device=backend.device
    )
    skipped_run = torch.zeros((), dtype=torch.long, device=backend.device)  # ... in a row
    samples, tokens = counters["samples"], counters["tokens"]
    samples_before, tokens_before = samples, tokens  # from the run before a resume
    start = window_start = time.perf_counter()
    window_tokens = window_samples = 0
    for step in range(start_step, total_steps):
        step_loss = torch.zeros((), device=backend.device)
        for _ in range(stage.grad_accum_steps):
            batch = next(batches)
            n_tokens, n_samples, consumed_cursor = sizes.popleft()
            window_tokens += n_tokens
            window_samples += n_samples
            tokens += n_tokens
            samples += n_samples
            with backend.autocast():
                loss = model(batch)
            (loss / stage.grad_accum_steps).backward()
            step_loss += loss.detach() / stage.grad_accum_steps
        grad_norm = backend.clip_grad_norm(params, stage.grad_clip)
        finite = torch.isfinite(step_loss) & torch.isfinite(grad_norm)
        backend.step_if_finite(optimizer, params, finite)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        skipped_total = skipped_total + (~finite).long()
        skipped_run = torch.where(finite, torch.zeros_like(skipped_run), skipped_run + 1)
        backend.step_done()
        watch.after_step(step + 1)
        pending.append(step_loss)
        bar.update(1)
        last = step + 1 == total_steps
        stopping = persistence is not None and backend.any_process(persistence.stop.requested)
        is_log_step = (step + 1) % stage.log_every == 0 or last or step == start_step or stopping
        if backend.eager or is_log_step:  # eager backends have the flag already; XLA waits
            run = int(skipped_run)
            if run >= stage.max_nonfinite_steps:
                raise TrainingDiverged(
                    f"stage {stage.name}: {run} optimizer steps in a row had a non-finite loss "
                    f"or gradient (up to step {step + 1}); stopping (stages.{stage.name}."
                    f"max_nonfinite_steps={stage.max_nonfinite_steps})"
                )

        if is_log_step:
            # transfers of finished values (no new graph); the mean over data-parallel processes
            losses = [float(backend.reduce_mean(t)) for t in pending]
            first_step = step + 1 - len(losses)
            for k, value in enumerate(losses[:-1]):
                run_logger.log(stage.name, first_step + k + 1, {"loss": value})
            pending = []
            elapsed = time.perf_counter() - window_start
            metrics = {
                "loss": losses[-1],
                "grad_norm": float(grad_norm),
                "tokens_per_s": window_tokens / elapsed,
                "samples_per_s": window_samples / elapsed,
                **{f"lr/{g['name']}": float(g["lr"]) for g in optimizer.param_groups},
            }
            metrics["skipped_steps"] = int(skipped_total)
            if watch.count is not None:
                metrics["compiles"] = watch.count
            run_logger.log(stage.name, step + 1, metrics)
            if step + 1 - len(losses) == 0:
                first_loss = losses[0]
            final_loss = losses[-1]
            window_start, window_tokens, window_samples = time.perf_counter(), 0, 0
            lr = float(optimizer.param_groups[0]["lr"])
            bar.set_postfix(
                loss=f"{final_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{metrics['tokens_per_s']:.0f}"
            )
            if (step + 1) % stage.log_every == 0 or last:
                line = (
                    f"[{stage.name}] step {step + 1}/{total_steps} loss {final_loss:.4f} "
                    f"lr {lr:.2e} grad_norm {metrics['grad_norm']:.3f} "
                    f"tokens/s {metrics['tokens_per_s']:.0f}"
                )
                if show_bar:
                    bar.write(line)
                else:
                    log.info("%s", line)
        if persistence is not None and not last:
            due = persistence.save_every and (step + 1) % persistence.save_every == 0
            if due or stopping:
                meta = {
                    "total_steps": total_steps,
                    "counters": {
                        "first_loss": first_loss,
                        "samples": samples,
                        "tokens": tokens,
                        "skipped_steps": int(skipped_total),
                    },
                }
                path = persistence.checkpointer.save(
                    step + 1, model, optimizer, consumed_cursor, meta
                )
                if stopping:
                    bar.close()
                    raise Preempted(
                        f"stage {stage.name}: stopped by {persistence.stop.signal_name or 'a peer'}"
                        f" after step {step + 1}/{total_steps}; state saved to {path}",
                        path,
                    )
    bar.close()
    seconds = time.perf_counter() - start
    skipped = int(skipped_total)
    if skipped:
        log.warning(
            "stage %s: %d step(s) skipped: non-finite loss or gradient", stage.name, skipped
        )
    if stage.gradient_checkpointing:
        model.llm.gradient_checkpointing_disable()
    return StageResult(
        stage.name,
        total_steps,
        first_loss,
        final_loss,
        seconds,
        (samples - samples_before) / seconds,
        (tokens - tokens_before) / seconds,
        skipped,
        start_step,
    )
