"""The shell that ``cambrian-pod`` runs on each TPU VM worker (built here, sent by gcloud ssh).

Per session ``S`` every worker keeps, under ``~/.cambrian/``:

* ``S.sh`` — the wrapper tmux runs: it starts ``cambrian-train`` in its own process group
  (``setsid``), writes that process's pid to ``S.pid``, tees its output to ``S.log`` and, when it
  exits, writes its exit code to ``S.exit``;
* so ``stop`` signals exactly the recorded process group (never a name match), ``status`` reads
  whether it is alive, and ``retry`` polls ``S.exit``.

Commands sent over ssh are POSIX sh (the login shell runs them); the wrapper is bash. Every value
from the user is quoted with :func:`shlex.quote`; ``~/`` paths become ``"$HOME"/...``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Optional

STATE = '"$HOME/.cambrian"'
SOURCE_ARCHIVE = "/tmp/cambrian-pod-source.tar.gz"  # where setup --source copies the archive
STATUS_TAG = "cambrian-status"
STOP_TAG = "cambrian-stop"
ALREADY_RUNS = "already runs on"  # in run's refusal message, so the caller can recognise it
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
HEREDOC = "CAMBRIAN_WRAPPER_EOF"  # delimiter of the here-document that writes the wrapper

_SESSION = re.compile(r"^[A-Za-z0-9_-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXTRAS = re.compile(r"^[A-Za-z0-9_,-]*$")


def check_session(session: str) -> str:
    """Session names become file and tmux names: letters, digits, ``_`` and ``-`` only."""
    if not _SESSION.match(session):
        raise ValueError(f"session {session!r} must be letters, digits, '_' or '-'")
    return session


def check_env_name(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise ValueError(f"environment variable name {name!r} is not a valid shell name")
    return name


def remote_path(path: str) -> str:
    """A worker path as a shell word: ``~/x y`` -> ``"$HOME"/'x y'``; absolute paths quoted."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    if path.startswith("/"):
        return shlex.quote(path)
    raise ValueError(f"worker path {path!r} must start with '~/' or '/'")


def _file(session: str, suffix: str) -> str:
    """``"$HOME/.cambrian"/S.suffix`` (the session is validated, so it needs no quoting)."""
    return f"{STATE}/{check_session(session)}.{suffix}"


def mask_secrets(env: dict[str, str]) -> dict[str, str]:
    """The same environment with values of secret-looking names (``*KEY*``, ...) as ``***``."""
    return {
        k: ("***" if any(m in k.upper() for m in SECRET_MARKERS) else v) for k, v in env.items()
    }


@dataclass(frozen=True)
class RunSpec:
    """What ``run`` starts on every worker."""

    session: str = "cambrian"
    workdir: str = "~/cambrian-train"  # cwd of the trainer: relative output_dir resolves here
    venv: str = "~/.cambrian/venv"
    env: dict[str, str] = field(default_factory=dict)  # exported after PJRT_DEVICE=TPU
    overrides: tuple[str, ...] = ()
    force: bool = False  # stop a running session first instead of refusing
    grace: int = 300  # seconds between SIGTERM and SIGKILL when --force stops a session

    def __post_init__(self):
        check_session(self.session)
        remote_path(self.workdir)
        remote_path(self.venv)
        for name in self.env:
            check_env_name(name)
        if self.grace < 0:
            raise ValueError(f"grace {self.grace} must be >= 0 seconds")


def train_command(spec: RunSpec) -> str:
    """``<venv>/bin/cambrian-train backend=xla_spmd OVERRIDES...``, each word quoted."""
    words = [remote_path(spec.venv) + "/bin/cambrian-train", "backend=xla_spmd"]
    return " ".join(words + [shlex.quote(o) for o in spec.overrides])


def wrapper_script(spec: RunSpec) -> str:
    """The bash script tmux runs: trainer in its own process group, pid/log/exit files."""
    s = spec.session
    log, pid, code = _file(s, "log"), _file(s, "pid"), _file(s, "exit")
    exports = [
        "export PJRT_DEVICE=TPU",
        # this worker's index, so only worker 0 writes Hydra's files (cli.py): the TPU VM's
        # metadata attribute agent-worker-number, unless the environment already has one
        "export CAMBRIAN_PROCESS_INDEX=${CAMBRIAN_PROCESS_INDEX:-${TPU_WORKER_ID:-$(curl -sf "
        "--max-time 5 -H 'Metadata-Flavor: Google' http://metadata.google.internal/computeMetadata/v1/"
        "instance/attributes/agent-worker-number || echo 0)}}",
    ] + [f"export {k}={shlex.quote(v)}" for k, v in spec.env.items()]
    workdir = remote_path(spec.workdir)
    lines = [
        "#!/usr/bin/env bash",
        f"# Written by cambrian-pod run (session {s}).",
        # Survive tmux kill-session: the exit file is still written and tee keeps reading.
        'trap "" HUP',
        # A run started later (run --force) removes the pid file: then this one records nothing.
        f'finish() {{ [ "$(cat {pid} 2>/dev/null)" = "${{pid:-}}" ] || exit 0; '
        f'echo "$1" > {code}.tmp && mv {code}.tmp {code}; }}',
        f'echo "=== cambrian-pod run on $(hostname) at $(date -u +%FT%TZ) ===" >> {log}',
        f"cd {workdir} || {{ echo {shlex.quote('cambrian-pod: no directory ' + spec.workdir)}"
        f" >> {log}; finish 1; exit 1; }}",
        *exports,
        f"setsid {train_command(spec)} < /dev/null > >(tee -a {log}) 2>&1 &",
        "pid=$!",
        f'echo "$pid" > {pid}',
        'wait "$pid"',
        'finish "$?"',
    ]
    return "\n".join(lines) + "\n"


def _stop_report(result: str, pid: str = "$p") -> str:
    return f'echo "{STOP_TAG} host=$(hostname) pid={pid} result={result}"'


def stop_command(session: str, grace: int) -> str:
    """SIGTERM the recorded process group, up to ``grace`` s, then SIGKILL; one report line.

    Nothing is signalled when there is no pid file or the exit file says the process ended.
    """
    if grace < 0:
        raise ValueError(f"grace {grace} must be >= 0 seconds")
    pid, code = _file(session, "pid"), _file(session, "exit")
    return "; ".join(
        [
            f"if [ ! -f {pid} ] || [ -f {code} ]; then "
            f"{_stop_report('not-running', pid='-')}; exit 0; fi",
            f"p=$(cat {pid})",
            'case "$p" in ""|*[!0-9]*) echo "cambrian-pod: bad pid file on $(hostname)" >&2; '
            "exit 1;; esac",
            f'if ! kill -0 -"$p" 2>/dev/null; then {_stop_report("not-running")}; exit 0; fi',
            'kill -TERM -"$p"',
            "i=0",  # tenths of a second
            f'while [ "$i" -lt {10 * int(grace)} ]; do '
            f'kill -0 -"$p" 2>/dev/null || {{ {_stop_report("stopped")}; exit 0; }}; '
            "sleep 0.1; i=$((i + 1)); done",
            f'if kill -0 -"$p" 2>/dev/null; then kill -KILL -"$p"; {_stop_report("killed")}; '
            f"else {_stop_report('stopped')}; fi",
        ]
    )


def run_command(spec: RunSpec) -> str:
    """Write the wrapper and start it in a detached tmux session (refuse if one runs)."""
    s = spec.session
    if spec.force:
        guard = [
            f"( {stop_command(s, spec.grace)} )",
            f"tmux kill-session -t ={s} 2>/dev/null || true",
        ]
    else:
        guard = [
            f"if tmux has-session -t ={s} 2>/dev/null; then "
            f'echo "cambrian-pod: tmux session {s} {ALREADY_RUNS} $(hostname); '
            'stop it or pass --force" >&2; exit 4; fi'
        ]
    script = _file(s, "sh")
    wrapper = wrapper_script(spec)
    if HEREDOC in wrapper.splitlines():
        raise ValueError(f"an override or --env value contains the line {HEREDOC!r}")
    return "\n".join(
        [
            "command -v tmux >/dev/null || "
            '{ echo "cambrian-pod: tmux missing on $(hostname); run cambrian-pod setup" >&2; '
            "exit 1; }",
            f"mkdir -p {STATE} && chmod 700 {STATE} || exit 1",
            *guard,
            f"rm -f {_file(s, 'pid')} {_file(s, 'exit')}",
            f"(umask 077 && cat > {script}) <<'{HEREDOC}' || exit 1",
            wrapper + HEREDOC,
            f"tmux new-session -d -s {s} {shlex.quote(f'bash {script}')}",
        ]
    )


def status_command(session: str) -> str:
    """One line per worker: ``cambrian-status host= session= pid= alive= exit=``."""
    s = check_session(session)
    pid, code = _file(s, "pid"), _file(s, "exit")
    return "; ".join(
        [
            f"if tmux has-session -t ={s} 2>/dev/null; then t=yes; else t=no; fi",
            "p=-; a=no; c=-",
            f"if [ -f {pid} ]; then p=$(cat {pid}); fi",
            f"if [ -f {code} ]; then c=$(cat {code}); "
            'elif [ "$p" != - ] && kill -0 -"$p" 2>/dev/null; then a=yes; fi',
            f'echo "{STATUS_TAG} host=$(hostname) session=$t pid=$p alive=$a exit=$c"',
        ]
    )


def logs_command(session: str, lines: int, follow: bool, prefix_host: bool) -> str:
    """``tail`` the session log (``-F`` to follow), optionally prefixing each line with the
    worker's hostname (for ``--worker=all``)."""
    if lines < 0:
        raise ValueError(f"lines {lines} must be >= 0")
    log = _file(session, "log")
    tail = f"tail -n {int(lines)}{' -F' if follow else ''} {log}"
    if prefix_host:
        tail += ' | sed -u "s/^/$(hostname): /"'
    return (
        f'if [ ! -f {log} ]; then echo "cambrian-pod: no log {session}.log on $(hostname)" >&2; '
        f"exit 1; fi; {tail}"
    )


@dataclass(frozen=True)
class WorkerStatus:
    """One worker's answer to :func:`status_command`."""

    host: str
    session: bool  # the tmux session exists
    pid: Optional[int]
    alive: bool  # the recorded process group has a live process
    exit_code: Optional[int]  # from the exit file, None while running or never run

    @property
    def running(self) -> bool:
        return self.session or self.alive

    @property
    def lost(self) -> bool:
        """Neither running nor finished with an exit code (killed, or the VM restarted)."""
        return not self.running and self.exit_code is None


def _optional_int(value: str, line: str) -> Optional[int]:
    if value == "-":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"worker status {line!r}: {value!r} is not an integer or '-'") from None


def parse_status(stdout: str) -> list[WorkerStatus]:
    """The :class:`WorkerStatus` of every ``cambrian-status`` line in ``stdout`` (gcloud may
    prefix lines, so the tag is searched anywhere in a line)."""
    workers = []
    for line in stdout.splitlines():
        at = line.find(STATUS_TAG + " ")
        if at < 0:
            continue
        fields = dict(part.partition("=")[::2] for part in line[at:].split()[1:])
        missing = {"host", "session", "pid", "alive", "exit"} - fields.keys()
        if missing:
            raise ValueError(f"worker status {line!r} lacks {sorted(missing)}")
        workers.append(
            WorkerStatus(
                host=fields["host"],
                session=fields["session"] == "yes",
                pid=_optional_int(fields["pid"], line),
                alive=fields["alive"] == "yes",
                exit_code=_optional_int(fields["exit"], line),
            )
        )
    return workers


@dataclass(frozen=True)
class SetupOptions:
    """Where the code comes from and where it goes on the workers; recorded for ``retry``."""

    repo_url: Optional[str] = None
    source: Optional[str] = None  # a local directory, archived and copied with tpu-vm scp
    ref: Optional[str] = None  # branch, tag or commit (with repo_url); default: remote HEAD
    extras: str = "tpu"
    workdir: str = "~/cambrian-train"
    venv: str = "~/.cambrian/venv"

    def __post_init__(self):
        if (self.repo_url is None) == (self.source is None):
            raise ValueError("setup needs exactly one of repo_url and source")
        if self.ref is not None and self.repo_url is None:
            raise ValueError(f"ref {self.ref!r} needs repo_url (a --source copy has no refs)")
        if not _EXTRAS.match(self.extras):
            raise ValueError(f"extras {self.extras!r} must be comma-separated names like 'tpu'")
        remote_path(self.workdir)
        remote_path(self.venv)


def setup_command(options: SetupOptions) -> str:
    """Fetch the code (git, or the copied archive), make the venv, ``pip install -e .[extras]``."""
    work, venv = remote_path(options.workdir), remote_path(options.venv)
    if options.repo_url is not None:
        ref = shlex.quote(options.ref or "HEAD")
        fetch = [
            f"if [ ! -d {work}/.git ]; then git clone {shlex.quote(options.repo_url)} {work}; fi",
            f"git -C {work} fetch origin {ref}",
            f"git -C {work} checkout --detach FETCH_HEAD",
        ]
    else:
        fetch = [
            f"mkdir -p {work}",
            f"tar -xzf {SOURCE_ARCHIVE} -C {work}",
            f"rm -f {SOURCE_ARCHIVE}",
        ]
    apt = "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q"
    target = f".[{options.extras}]" if options.extras else "."
    return "; ".join(
        [
            "set -e",
            f"command -v tmux >/dev/null || {{ sudo apt-get update -q && {apt} tmux; }}",
            *fetch,
            f"if [ ! -x {venv}/bin/python ]; then python3 -m venv {venv} || "
            f"{{ sudo apt-get update -q && {apt} python3-venv && python3 -m venv {venv}; }}; fi",
            f"cd {work}",
            f"{venv}/bin/python -m pip install -q --upgrade pip",
            f"{venv}/bin/python -m pip install -e {shlex.quote(target)}",
            'echo "cambrian-pod: setup done on $(hostname)"',
        ]
    )
