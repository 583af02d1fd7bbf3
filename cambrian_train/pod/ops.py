"""The pod operations behind ``cambrian-pod``'s subcommands (``retry`` is in ``retry.py``).

Each takes a :class:`~cambrian_train.pod.runner.Runner` (which executes or, in dry-run mode,
prints) and a :class:`~cambrian_train.pod.gcloud.Target`; failures raise
:class:`~cambrian_train.pod.errors.PodError` with the tool's exit code.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Optional

from cambrian_train.pod import gcloud, remote, state
from cambrian_train.pod.errors import BAD_STATE, REFUSED, GcloudError, PodError
from cambrian_train.pod.runner import Runner, shorten
from cambrian_train.pod.source import pack_source

log = logging.getLogger(__name__)

ACTIVE = "ACTIVE"
# States from which a queued resource never becomes ACTIVE again by itself.
DEAD_STATES = ("FAILED", "SUSPENDING", "SUSPENDED", "DELETING")
FORWARDED_ENV = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY")
FORWARDED_PREFIX = "CAMBRIAN_"
POD_PREFIX = "CAMBRIAN_POD_"
_NOT_FOUND = re.compile(r"NOT_FOUND|not found", re.IGNORECASE)
DRY_STATUS = f"{remote.STATUS_TAG} host=worker-0 session=no pid=1 alive=no exit=0"


def describe_state(runner: Runner, target: gcloud.Target) -> Optional[str]:
    """The queued resource's state, or None when it does not exist."""
    result = runner(gcloud.describe_state_args(target), check=False, dry_stdout=ACTIVE)
    if result.returncode != 0:
        if _NOT_FOUND.search(result.stderr):
            return None
        args = gcloud.describe_state_args(target)
        raise GcloudError(shlex.join(args), result.returncode, result.stderr)
    value = result.stdout.strip()
    if not value:
        raise PodError(f"gcloud printed no state for queued resource {target.name!r}", BAD_STATE)
    return value


def create(runner: Runner, target: gcloud.Target, options: gcloud.CreateOptions) -> None:
    """Request the queued resource and record the options for ``retry``."""
    runner(gcloud.create_args(target, options))
    if not runner.dry_run:
        path = state.record(target.name, "create", options)
        log.info("requested %s; create options recorded in %s", target.name, path)


def wait_active(
    runner: Runner,
    target: gcloud.Target,
    timeout: float,
    poll: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Poll the state until ACTIVE; a dead state, a missing resource or the timeout raise."""
    deadline = clock() + timeout
    while True:
        current = describe_state(runner, target)
        if current == ACTIVE:
            log.info("queued resource %s is ACTIVE", target.name)
            return
        if current is None:
            raise PodError(f"queued resource {target.name!r} not found in {target.zone}", BAD_STATE)
        if current in DEAD_STATES:
            raise PodError(f"queued resource {target.name!r} is {current}", BAD_STATE)
        if clock() >= deadline:
            raise PodError(
                f"queued resource {target.name!r} still {current} after {timeout:g} s", BAD_STATE
            )
        log.info("queued resource %s is %s; next check in %g s", target.name, current, poll)
        sleep(poll)


def worker_status(
    runner: Runner, target: gcloud.Target, session: str, check: bool = True
) -> Optional[list[remote.WorkerStatus]]:
    """Every worker's session status; None when ssh failed and ``check`` is False."""
    result = runner(
        gcloud.ssh_args(target, remote.status_command(session)),
        check=check,
        dry_stdout=DRY_STATUS,
    )
    if result.returncode != 0:
        return None
    return remote.parse_status(result.stdout)


@dataclass(frozen=True)
class PodStatus:
    """``status``'s answer: the queued-resource state and, when ACTIVE, every worker's."""

    state: Optional[str]
    workers: list[remote.WorkerStatus]


def status(runner: Runner, target: gcloud.Target, session: str) -> PodStatus:
    current = describe_state(runner, target)
    workers = worker_status(runner, target, session) if current == ACTIVE else []
    return PodStatus(current, workers or [])


def setup(runner: Runner, target: gcloud.Target, options: remote.SetupOptions) -> None:
    """Copy or clone the code on every worker and install it into the venv; record options."""
    if options.source is not None:
        archive = Path.home() / ".cambrian" / f"pod-{target.name}-source.tar.gz"
        if not runner.dry_run:
            count = pack_source(Path(options.source), archive)
            log.info("packed %d files of %s into %s", count, options.source, archive)
        runner(gcloud.scp_args(target, str(archive), remote.SOURCE_ARCHIVE))
    runner(gcloud.ssh_args(target, remote.setup_command(options)), stream=True)
    if not runner.dry_run:
        state.record(target.name, "setup", options)


def forwarded_env(environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The W&B variables and ``CAMBRIAN_*`` (not ``CAMBRIAN_POD_*``) set locally, then ``extra``
    (``--env``) on top."""
    env = {k: v for k, v in environ.items() if k in FORWARDED_ENV or _cambrian_setting(k)}
    env.update(extra)
    return dict(sorted(env.items()))


def _cambrian_setting(name: str) -> bool:
    """``CAMBRIAN_*`` except this tool's own ``CAMBRIAN_POD_*`` (meaningless on a worker)."""
    return name.startswith(FORWARDED_PREFIX) and not name.startswith(POD_PREFIX)


def run(runner: Runner, target: gcloud.Target, spec: remote.RunSpec) -> None:
    """Start the trainer in tmux on every worker; an existing session refuses (exit 4).

    Dry-run prints the command with secret-looking variables (``*KEY*``, ...) masked."""
    masked = replace(spec, env=remote.mask_secrets(spec.env))
    shown = gcloud.ssh_args(target, remote.run_command(masked))
    args = gcloud.ssh_args(target, remote.run_command(spec))
    result = runner(args, check=False, display=shown)
    if result.returncode != 0:
        if remote.ALREADY_RUNS in result.stderr:
            raise PodError(result.stderr.strip(), REFUSED)
        raise GcloudError(shorten(shlex.join(shown)), result.returncode, result.stderr)
    log.info("started session %s on %s", spec.session, target.name)


def logs(
    runner: Runner, target: gcloud.Target, session: str, worker: str, lines: int, follow: bool
) -> None:
    command = remote.logs_command(session, lines, follow, prefix_host=worker == "all")
    runner(gcloud.ssh_args(target, command, worker=worker), stream=True)


def stop(runner: Runner, target: gcloud.Target, session: str, grace: int) -> list[str]:
    """SIGTERM the recorded process group on every worker, SIGKILL after ``grace`` s; returns
    the workers' report lines."""
    result = runner(gcloud.ssh_args(target, remote.stop_command(session, grace)))
    return [line for line in result.stdout.splitlines() if remote.STOP_TAG in line]


def delete(runner: Runner, target: gcloud.Target) -> None:
    runner(gcloud.delete_args(target))
    log.info("deleted queued resource %s", target.name)
