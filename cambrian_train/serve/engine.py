"""The server's one generator worker: a queue of requests, batched where decoding allows.

Every request (a web-page message or an HTTP completion) becomes a :class:`Job` on one queue; a
single worker thread takes the oldest job plus every waiting job that may share its batch (up to
``max_batch_size``), collates their prompts left-padded and streams them together through
``stream_generate_batch``, so the model never runs two generations at once. Jobs share a batch
when their decoding is the same function of the logits:

- greedy jobs (temperature 0) with the same stop strings, whatever their token limits (greedy
  batched rows equal batch-size-1 rows: tests/unit/test_generate.py);
- sampled jobs without a seed with the same temperature, top-k, top-p and stop strings;
- a sampled job with a seed runs alone, from a generator seeded with it, so the same seed gives
  the same text however busy the server is.

Each row keeps its own ``max_new_tokens``. A reader that goes away cancels its job: its row stops
at the next step, and the batch ends early once every row is done. An exception inside a batch
fails that batch's jobs with a :class:`GenerationError` and the worker goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

import torch

from cambrian_train.data.dataset import ImageTextEncoder
from cambrian_train.infer.chat import ChatOptions, collate_prompts, turn_end
from cambrian_train.infer.generate import stream_generate_batch
from cambrian_train.serve.prompts import Prompt, RequestError

log = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """Generation failed inside the server (not the request's fault)."""


def batch_key(options: ChatOptions) -> Optional[tuple]:
    """Jobs with equal keys may share a batch; None: the job runs alone."""
    stop = tuple(options.stop)
    if options.temperature == 0:
        return ("greedy", stop)
    if options.seed is not None:
        return None
    return ("sampled", options.temperature, options.top_k, options.top_p, stop)


@dataclass(eq=False)  # jobs are compared by identity (the queue removes them)
class Job:
    """One queued request; the worker writes its events, one reader consumes them."""

    prompt: Prompt
    options: ChatOptions
    events: queue.Queue[tuple] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finish_reason: Optional[str] = None  # "stop" | "length", once done
    num_tokens: int = 0  # tokens generated, once done

    def stream(self, timeout: float) -> Iterator[str]:
        """The answer's text deltas as they are generated; GenerationError when generation
        failed or no event came within ``timeout`` seconds. Leaving early cancels the job."""
        try:
            while True:
                try:
                    kind, value = self.events.get(timeout=timeout)
                except queue.Empty:
                    raise GenerationError(f"no answer within {timeout:g} s") from None
                if kind == "text":
                    yield value
                elif kind == "done":
                    self.finish_reason, self.num_tokens = value
                    return
                else:
                    raise GenerationError(value)
        finally:
            self.cancelled.set()  # a no-op once done; frees the row of a reader that left

    def result(self, timeout: float) -> str:
        return "".join(self.stream(timeout))


@dataclass
class EngineStats:
    batches: int = 0
    rows: int = 0
    largest_batch: int = 0
    failed_batches: int = 0


class Engine:
    """Owns the model; :meth:`submit` queues a checked prompt and returns its :class:`Job`."""

    def __init__(
        self,
        model,
        encoder: ImageTextEncoder,
        device="cpu",
        max_batch_size: int = 8,
        max_queue: int = 64,
        batch_window_s: float = 0.0,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
        if max_queue < 1:
            raise ValueError(f"max_queue={max_queue} must be >= 1")
        self.model = model
        self.encoder = encoder
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.batch_window_s = batch_window_s
        self.eos_ids, self.template_stop = turn_end(encoder)
        self.stats = EngineStats()
        self._pending: List[Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    def submit(self, prompt: Prompt, options: ChatOptions) -> Job:
        job = Job(prompt, options)
        with self._cond:
            if self._stopping:
                raise GenerationError("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise RequestError(
                    f"the server is busy ({len(self._pending)} requests queued, --max-queue "
                    f"{self.max_queue}); retry shortly",
                    status=503,
                    code="server_busy",
                )
            self._pending.append(job)
            self._cond.notify()
        return job

    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="cambrian-generate", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the running batch, fail the queued jobs, end the worker."""
        with self._cond:
            self._stopping = True
            pending, self._pending = self._pending, []
            self._cond.notify_all()
        for job in pending:
            job.events.put(("error", "the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)

    def _take_batch(self) -> Optional[List[Job]]:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
        if self.batch_window_s > 0:
            time.sleep(self.batch_window_s)  # let requests arriving together share the batch
        with self._cond:
            first = self._pending.pop(0)
            key, jobs = batch_key(first.options), [first]
            if key is not None:
                for job in list(self._pending):
                    if len(jobs) == self.max_batch_size:
                        break
                    if batch_key(job.options) == key:
                        self._pending.remove(job)
                        jobs.append(job)
            return jobs

    def _loop(self) -> None:
        while True:
            try:
                jobs = self._take_batch()
            except Exception:  # a bug here must not end the worker: log it, keep serving
                log.exception("taking the next batch failed")
                continue
            if jobs is None:
                return
            live = [job for job in jobs if not job.cancelled.is_set()]
            if live:
                self._run(live)

    def _run(self, jobs: List[Job]) -> None:
        stats = self.stats
        stats.batches += 1
        stats.rows += len(jobs)
        stats.largest_batch = max(stats.largest_batch, len(jobs))
        done = [False] * len(jobs)
        opts = jobs[0].options
        try:
            batch = collate_prompts(self.encoder, [job.prompt.sample for job in jobs])
            steps = stream_generate_batch(
                self.model,
                batch.to(self.device),
                self.encoder.tokenizer,
                [job.options.max_new_tokens for job in jobs],
                temperature=opts.temperature,
                top_k=opts.top_k,
                top_p=opts.top_p,
                seed=opts.seed if len(jobs) == 1 else None,
                stop=list(opts.stop) + self.template_stop,
                eos_token_id=self.eos_ids,
                cancelled=lambda: [job.cancelled.is_set() for job in jobs],
            )
            for step in steps:
                for i, (job, row) in enumerate(zip(jobs, step)):
                    if row.text:
                        job.events.put(("text", row.text))
                    if row.finish_reason is not None and not done[i]:
                        done[i] = True
                        job.events.put(("done", (row.finish_reason, row.num_tokens)))
        except Exception as err:  # the worker outlives any one batch
            stats.failed_batches += 1
            log.exception("generation of a batch of %d failed", len(jobs))
            for job, finished in zip(jobs, done):
                if not finished:
                    job.events.put(("error", f"generation failed: {type(err).__name__}: {err}"))
