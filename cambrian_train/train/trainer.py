"""The training loop of one stage: a short loop around the step function (train/step.py).

Beside it: reporting and the divergence check (train/progress.py), preemption (train/preempt.py)
and training-state checkpoints (train/resume.py). Device values are read back only on logging
steps, and the processes agree on a stop signal only there (on one process the flag is a host
value, checked every step), so no step waits for the host on any backend.
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
from cambrian_train.models.llm import causal_attention
from cambrian_train.train.metrics import RunLogger
from cambrian_train.train.optim import build_optimizer, build_scheduler
from cambrian_train.train.preempt import Preempted, StopSignal
from cambrian_train.train.progress import StepLog, TrainingDiverged  # noqa: F401 (re-exported)
from cambrian_train.train.resume import Checkpointer, set_rng_state
from cambrian_train.train.stage import ParamGroup, count_params, lr_scale
from cambrian_train.train.step import TrainStep

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
        samples = batch.batch_size
        if batch.packed:  # segments per row: their highest id
            samples = int(batch.segment_ids.max(dim=1).values.sum())
        sizes.append((int(batch.attention_mask.sum()), samples, cursor()))
        yield batch


@dataclass
class Persistence:
    """How a stage saves and resumes its training state (train/resume.py, train/preempt.py)."""

    checkpointer: Checkpointer
    save_every: int  # 0 = only when stopped
    stop: StopSignal
    restore_from: Optional[str] = None  # a step checkpoint to resume from


def planned_steps(
    stage: StageConfig,
    num_records: int,
    num_tokens: Optional[int] = None,
    row_length: Optional[int] = None,
) -> int:
    """Optimiser steps: ``max_steps``, or ceil(records × epochs / global batch); for packed
    rows (``num_tokens``: the data's true token count) ceil(tokens × epochs / (global batch ×
    ``row_length``)), which takes the rows as full: rows left partly empty make the pass over
    the data a little shorter than ``epochs`` (the logs count samples)."""
    if stage.max_steps is not None:
        return stage.max_steps
    if num_tokens is not None:
        per_step = stage.global_batch_size * row_length
        return max(1, math.ceil(num_tokens * stage.epochs / per_step))
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
    after_step: Optional[Callable[[int], None]] = None,
) -> StageResult:
    """Run ``total_steps`` optimiser steps of ``stage`` on an already prepared model.

    ``open_stream(sampler_state)`` opens the host batch stream (from the start, or from a
    resumed cursor); its ``state_dict()``, where it has one (data/loader.py BatchStream), is the
    data cursor after the latest host batch drawn.
    With ``persistence``, the training state is saved every ``save_every`` steps and when a stop
    signal arrives (then :class:`Preempted` is raised), and ``restore_from`` resumes a stage.
    ``after_step(step)`` runs after every optimiser step (a text stage's validation loss at
    epoch ends, run.py), on every process.
    """
    _describe(stage, model, groups, total_steps)
    optimizer = build_optimizer(groups, stage)
    scheduler = build_scheduler(optimizer, stage, total_steps)
    params = [p for g in groups for p in g.params]
    start_step, sampler_state, counters = 0, None, {}
    if persistence is not None and persistence.restore_from:
        restored = persistence.checkpointer.restore(persistence.restore_from, model, optimizer)
        start_step, sampler_state = restored.step, restored.rank.sampler
        counters = restored.meta.get("counters", {})
        scheduler.last_epoch = start_step - 1
        scheduler.step()  # the learning rates of step ``start_step``
    if stage.gradient_checkpointing:
        backend.enable_gradient_checkpointing(model)
    model.train()
    train_step = TrainStep(
        model, optimizer, params, backend, stage.grad_accum_steps, stage.grad_clip
    )
    report = StepLog(stage, backend, run_logger, total_steps, counters)
    sizes: deque = deque()  # (tokens, samples, cursor) of each host batch, consumed in order
    stream = open_stream(sampler_state)
    batches = backend.device_stream(
        _record_sizes(stream, sizes, getattr(stream, "state_dict", dict))
    )
    cursor = sampler_state or {}
    if persistence is not None and persistence.restore_from:
        # the random streams continue from the saved step only now, after everything a fresh
        # stage also does before its first step (opening the stream draws from them)
        set_rng_state(backend, restored.rank.rng)

    def micro_batches() -> Iterator[Batch]:
        nonlocal cursor
        while True:
            waiting = time.perf_counter()
            batch = next(batches)
            report.waited(time.perf_counter() - waiting)
            tokens, samples, cursor = sizes.popleft()
            report.consumed(tokens, samples, batch.input_ids.numel())  # rows × L positions
            if report.flops_per_step is None:  # shapes are metadata: no device read
                seq_len = batch.input_ids.shape[1]
                num_images = batch.image_mask.numel() / batch.batch_size  # slots per row
                report.count_flops(model, stage, seq_len, num_images)
            yield batch

    feed = micro_batches()
    show_bar = backend.is_main and run_logger.cfg.progress_bar
    bar = tqdm(total=total_steps, initial=start_step, desc=stage.name, disable=not show_bar)
    start = time.perf_counter()
    # the LLM attends causally without a padding mask for the whole stage, so activation
    # recomputation in the backward runs the same attention as the forward (models/llm.py)
    with causal_attention(model.llm, backend.training_attention()):
        for step in range(start_step + 1, total_steps + 1):
            transfers = backend.transfer_count()
            out = train_step(feed)
            report.record(out)
            scheduler.step()
            backend.step_done()
            if transfers is not None:
                transfers = backend.transfer_count() - transfers
            report.after_step(step, transfers or 0)
            bar.update(1)
            last = step == total_steps
            is_log_step = step % stage.log_every == 0 or last or step == start_step + 1
            stopping = persistence is not None and _stop_agreed(backend, persistence, is_log_step)
            if is_log_step or stopping:
                lrs = {g["name"]: float(g["lr"]) for g in optimizer.param_groups}
                report.flush(step, out, lrs)
                bar.set_postfix(loss=f"{report.final_loss:.4f}")
                if step % stage.log_every == 0 or last:
                    (bar.write if show_bar else log.info)(report.line)
            if after_step is not None:
                after_step(step)
            if persistence is not None and not last:
                due = persistence.save_every and step % persistence.save_every == 0
                if due or stopping:
                    meta = {"total_steps": total_steps, "counters": report.counters()}
                    path = persistence.checkpointer.save(step, model, optimizer, cursor, meta)
                    if stopping:
                        bar.close()
                        by = persistence.stop.signal_name or "a peer"
                        raise Preempted(
                            f"stage {stage.name}: stopped by {by} after step {step}/"
                            f"{total_steps}; state saved to {path}",
                            path,
                        )
    bar.close()
    seconds = time.perf_counter() - start
    skipped = int(report.skipped_total)
    if skipped:
        log.warning(
            "stage %s: %d step(s) skipped: non-finite loss or gradient", stage.name, skipped
        )
    if stage.gradient_checkpointing:
        model.set_gradient_checkpointing(False)
    return StageResult(
        stage.name,
        total_steps,
        report.first_loss,
        report.final_loss,
        seconds,
        (report.samples - report.samples_before) / seconds,
        (report.tokens - report.tokens_before) / seconds,
        skipped,
        start_step,
    )


def _stop_agreed(backend: Backend, persistence: Persistence, is_log_step: bool) -> bool:
    """Whether every process stops after this step. With several processes they agree only on
    logging steps (agreement is a collective); one process reads its own flag every step."""
    if backend.world_size == 1:
        return persistence.stop.requested
    return is_log_step and backend.any_process(persistence.stop.requested)


def _describe(stage: StageConfig, model, groups: List[ParamGroup], total_steps: int) -> None:
    if stage.base_batch_size is not None:
        log.info(
            "lr scaling: global batch %d vs base batch %d -> lr x %.4f",
            stage.global_batch_size,
            stage.base_batch_size,
            lr_scale(stage),
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
