"""``cambrian-pod retry``: keep a training run going through preemptions.

Each attempt: make sure the queued resource is ACTIVE — if it is preempted (SUSPENDED), FAILED
or gone, delete it and re-create it from the options ``create`` recorded, wait, and run
``setup`` again from the recorded setup options — then ``run`` with ``resume=auto`` appended and
poll every worker's exit file. Exit code 0 on every worker: done. 75
(:data:`~cambrian_train.train.preempt.EXIT_RESUME`: "saved, resume me"), a worker whose process
vanished without an exit code, or the node disappearing: next attempt. Any other exit code: the
other workers are stopped and the code is reported (exit 5). After ``max_attempts`` attempts the
tool gives up (exit 6).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

from cambrian_train.pod import gcloud, ops, remote, state
from cambrian_train.pod.errors import (
    BAD_STATE,
    GAVE_UP,
    GCLOUD_FAILED,
    TRAINING_FAILED,
    PodError,
    UsageError,
)
from cambrian_train.pod.runner import Runner
from cambrian_train.train.preempt import EXIT_RESUME

log = logging.getLogger(__name__)

RESUME = "resume=auto"
_RESUME_OVERRIDE = re.compile(r"^[+~]{0,2}resume=")


@dataclass(frozen=True)
class RetryOptions:
    max_attempts: int = 20
    poll: float = 60.0  # seconds between exit-file (and provisioning) checks
    timeout: float = 6 * 3600.0  # seconds to wait for a re-created pod to become ACTIVE
    max_ssh_failures: int = 10  # consecutive failed status polls while the pod stays ACTIVE

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts {self.max_attempts} must be >= 1")
        if self.poll < 0 or self.timeout < 0:
            raise ValueError(f"poll {self.poll} and timeout {self.timeout} must be >= 0")
        if self.max_ssh_failures < 1:
            raise ValueError(f"max_ssh_failures {self.max_ssh_failures} must be >= 1")


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended: ``done``, ``resume`` (next attempt) or ``failed`` (with code)."""

    kind: str
    exit_code: Optional[int] = None
    reason: str = ""
    running: bool = False  # some worker still runs (to be stopped before going on)


def with_resume(overrides: tuple[str, ...]) -> tuple[str, ...]:
    """``overrides + (resume=auto,)``; a user ``resume=`` override is refused (it would be
    replaced silently)."""
    given = [o for o in overrides if _RESUME_OVERRIDE.match(o)]
    if given:
        raise UsageError(f"retry appends {RESUME} itself; drop the override {given[0]!r}")
    return (*overrides, RESUME)


def judge(workers: list[remote.WorkerStatus]) -> Optional[Outcome]:
    """The attempt's outcome from the workers' status, or None while it is still running."""
    if not workers:
        return Outcome("resume", reason="no worker answered the status check")
    running = any(w.running for w in workers)
    for w in workers:
        if w.exit_code is not None and w.exit_code not in (0, EXIT_RESUME):
            return Outcome("failed", w.exit_code, f"{w.host} exited with {w.exit_code}", running)
    lost = [w.host for w in workers if w.lost]
    if lost:
        reason = f"process gone without an exit code on {', '.join(lost)}"
        return Outcome("resume", reason=reason, running=running)
    if running:
        return None
    if all(w.exit_code == 0 for w in workers):
        return Outcome("done", 0)
    return Outcome("resume", EXIT_RESUME, f"exit code {EXIT_RESUME} (preempted, resumable)")


def ensure_active(
    runner: Runner, target: gcloud.Target, options: RetryOptions, sleep: Callable
) -> None:
    """ACTIVE as is; otherwise (re-)create as needed, wait for ACTIVE and run setup."""
    current = ops.describe_state(runner, target)
    if current == ops.ACTIVE:
        return
    if current is None or current in ops.DEAD_STATES:
        create_options = state.recorded_create(target.name)
        state.recorded_setup(target.name)  # fail before deleting anything if setup is unknown
        if current is not None:
            log.info("queued resource %s is %s: deleting it", target.name, current)
            ops.delete(runner, target)
        log.info("re-creating queued resource %s", target.name)
        ops.create(runner, target, create_options)
    ops.wait_active(runner, target, options.timeout, options.poll, sleep=sleep)
    ops.setup(runner, target, state.recorded_setup(target.name))


def watch(
    runner: Runner,
    target: gcloud.Target,
    session: str,
    options: RetryOptions,
    sleep: Callable,
) -> Outcome:
    """Poll the workers until the attempt ends (or the node goes away)."""
    failures = 0
    while True:
        sleep(options.poll)
        workers = ops.worker_status(runner, target, session, check=False)
        if workers is None:
            current = ops.describe_state(runner, target)
            if current != ops.ACTIVE:
                return Outcome("resume", reason=f"queued resource is {current or 'gone'}")
            failures += 1
            if failures >= options.max_ssh_failures:
                raise PodError(
                    f"{failures} status checks on {target.name!r} failed in a row while it is "
                    "ACTIVE",
                    GCLOUD_FAILED,
                )
            continue
        failures = 0
        outcome = judge(workers)
        if outcome is not None:
            return outcome


def retry(
    runner: Runner,
    target: gcloud.Target,
    spec: remote.RunSpec,
    options: RetryOptions,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run until success; returns 0, or raises :class:`PodError` (exit 5 failed, 6 gave up)."""
    if runner.dry_run:
        sleep = _no_sleep
    spec = replace(spec, overrides=with_resume(spec.overrides))
    started = False
    for attempt in range(1, options.max_attempts + 1):
        log.info("attempt %d of %d", attempt, options.max_attempts)
        try:
            ensure_active(runner, target, options, sleep)
        except PodError as err:
            if err.exit_code != BAD_STATE:
                raise
            log.warning("attempt %d: %s", attempt, err)
            continue
        # After an attempt ran, its finished session may linger a moment: replace it.
        ops.run(runner, target, replace(spec, force=spec.force or started))
        started = True
        outcome = watch(runner, target, spec.session, options, sleep)
        if outcome.kind == "done":
            log.info("training finished on every worker (attempt %d)", attempt)
            return 0
        if outcome.running:
            _stop_quietly(runner, target, spec)
        if outcome.kind == "failed":
            raise PodError(f"training failed: {outcome.reason}", TRAINING_FAILED)
        log.warning("attempt %d ended: %s; resuming", attempt, outcome.reason)
    raise PodError(f"gave up after {options.max_attempts} attempts", GAVE_UP)


def _stop_quietly(runner: Runner, target: gcloud.Target, spec: remote.RunSpec) -> None:
    """Stop what still runs of an ended attempt; an unreachable node needs no stopping."""
    try:
        ops.stop(runner, target, spec.session, spec.grace)
    except PodError as err:
        log.warning("could not stop session %s: %s", spec.session, err)


def _no_sleep(seconds: float) -> None:
    """Dry-run: nothing to wait for."""
