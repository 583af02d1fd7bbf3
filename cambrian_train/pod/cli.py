"""``cambrian-pod``: TPU VM pod operations through the gcloud CLI, one command each.

    cambrian-pod create --name my-pod --zone us-central2-b --accelerator-type v4-64 --spot
    cambrian-pod wait
    cambrian-pod setup --repo-url https://github.com/me/cambrian-train --ref main
    cambrian-pod run -- experiment=cambrian8b_pretrain_v4_512 output_dir=/mnt/shared/runs/8b
    cambrian-pod status | logs --follow | stop | delete
    cambrian-pod retry -- experiment=...        # re-create / resume after preemptions

Global flags, taken by every subcommand: ``--name``, ``--zone``, ``--project`` (defaults from
the environment: ``CAMBRIAN_POD_NAME``, ``CAMBRIAN_POD_ZONE``, ``CAMBRIAN_POD_PROJECT``) and
``--dry-run`` (print the gcloud commands, shell-quoted, one per line; execute nothing; also
``CAMBRIAN_POD_DRY_RUN=1`` in the environment, where 0/false/no/off/empty mean off). As with
gcloud, they go before or after the subcommand: ``cambrian-pod --dry-run create ...`` is
``cambrian-pod create ... --dry-run``; one given on both sides with different values is a usage
error. Training overrides follow ``--``.

Exit codes:
    0  success
    1  a gcloud command failed (its stderr is shown)
    2  usage error: bad arguments, no name/zone, no recorded create/setup options for ``retry``
    3  the queued resource is FAILED, SUSPENDED or not found, or ``wait`` timed out
    4  refused: the tmux session already runs (``run`` without ``--force``), or ``delete`` was
       not confirmed
    5  ``retry``: the trainer exited with a code other than 0 and 75 (the code is printed)
    6  ``retry``: ``--max-attempts`` attempts used without success
    130  interrupted (Ctrl-C); what runs on the pod keeps running
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from typing import Optional, Sequence

from cambrian_train.pod import errors, gcloud, ops, remote
from cambrian_train.pod.retry import RetryOptions, retry
from cambrian_train.pod.runner import Runner

log = logging.getLogger("cambrian_train.pod")

WITH_OVERRIDES = ("run", "retry")


DRY_RUN_ENV = "CAMBRIAN_POD_DRY_RUN"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
# The global flags: (flag, dest, environment variable giving the default). Accepted before the
# subcommand (parsed into ``before_<dest>``) and after it; see _merge_globals.
GLOBAL_FLAGS = (
    ("--name", "name", "CAMBRIAN_POD_NAME"),
    ("--zone", "zone", "CAMBRIAN_POD_ZONE"),
    ("--project", "project", "CAMBRIAN_POD_PROJECT"),
    ("--dry-run", "dry_run", DRY_RUN_ENV),
)
_BEFORE = "before_"


def _common(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The global flags, with no defaults: a flag not given leaves no attribute, so
    :func:`_merge_globals` can tell the two places (and the environment) apart."""
    unset = argparse.SUPPRESS
    parser.add_argument(
        "--name",
        dest=prefix + "name",
        metavar="NAME",
        default=unset,
        help="queued resource and TPU VM name (default: $CAMBRIAN_POD_NAME)",
    )
    for flag in ("zone", "project"):
        parser.add_argument(
            f"--{flag}",
            dest=prefix + flag,
            metavar=flag.upper(),
            default=unset,
            help=f"default: $CAMBRIAN_POD_{flag.upper()}",
        )
    parser.add_argument(
        "--dry-run",
        dest=prefix + "dry_run",
        action="store_true",
        default=unset,
        help=f"print the gcloud commands only, run nothing (also {DRY_RUN_ENV}=1)",
    )


def _env_flag(environ, name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise errors.UsageError(
        f"{name}={environ[name]!r} is not one of {'/'.join(_TRUE)} or {'/'.join(_FALSE[1:])}"
    )


def _merge_globals(args: argparse.Namespace, environ) -> argparse.Namespace:
    """One value per global flag, whichever side of the subcommand it was given on; else the
    environment's. Given on both sides with different values: UsageError naming the flag."""
    for flag, dest, env_name in GLOBAL_FLAGS:
        before = vars(args).pop(_BEFORE + dest, None)
        after = getattr(args, dest, None)
        if before is not None and after is not None and before != after:
            raise errors.UsageError(
                f"{flag} is given before and after {args.command!r} with different values: "
                f"{before!r} and {after!r}"
            )
        value = before if before is not None else after
        if value is None:
            if dest == "dry_run":
                value = _env_flag(environ, env_name)
            else:
                value = environ.get(env_name) or None
        setattr(args, dest, value)
    return args


def _session(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session", default="cambrian", help="tmux session and file name")


def _layout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="~/cambrian-train", help="code checkout on workers")
    parser.add_argument("--venv", default="~/.cambrian/venv", help="virtualenv on workers")


def _run_options(parser: argparse.ArgumentParser) -> None:
    _session(parser)
    _layout(parser)
    parser.add_argument("--env", action="append", default=[], metavar="K=V")
    parser.add_argument("--force", action="store_true", help="stop a running session first")
    parser.add_argument("--grace", type=int, default=300, help="SIGTERM->SIGKILL seconds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cambrian-pod",
        description="TPU VM pod operations through gcloud.",
        epilog=(
            "The global options --name, --zone, --project and --dry-run go before or after the "
            f"command. {DRY_RUN_ENV}=1 in the environment is --dry-run. Overrides for "
            "cambrian-train follow '--' (run, retry)."
        ),
    )
    _common(parser, prefix=_BEFORE)
    sub = parser.add_subparsers(dest="command", required=True)

    create = sub.add_parser("create", help="request the queued resource")
    create.add_argument("--accelerator-type", required=True, help="e.g. v4-64")
    create.add_argument("--runtime-version", default="tpu-ubuntu2204-base")
    model = create.add_mutually_exclusive_group()
    model.add_argument("--spot", action="store_const", const="spot", dest="provisioning")
    model.add_argument(
        "--best-effort", action="store_const", const="best-effort", dest="provisioning"
    )
    create.add_argument("--reserved", action="store_true")

    wait = sub.add_parser("wait", help="wait until the queued resource is ACTIVE")
    wait.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds")
    wait.add_argument("--poll", type=float, default=30.0, help="seconds between checks")

    _session(sub.add_parser("status", help="pod state and the session on every worker"))

    setup = sub.add_parser("setup", help="install the code into a venv on every worker")
    source = setup.add_mutually_exclusive_group(required=True)
    source.add_argument("--repo-url")
    source.add_argument("--source", help="local directory copied with tpu-vm scp")
    setup.add_argument("--ref", help="branch, tag or commit (with --repo-url)")
    setup.add_argument("--extras", default="tpu", help="pip extras ('' for none)")
    _layout(setup)

    _run_options(sub.add_parser("run", help="start cambrian-train in tmux on every worker"))

    logs = sub.add_parser("logs", help="tail the session log")
    _session(logs)
    logs.add_argument("--worker", default="0", help="0, 0,3 or all")
    logs.add_argument("--lines", type=int, default=100)
    logs.add_argument("--follow", action="store_true")

    stop = sub.add_parser("stop", help="SIGTERM the recorded process group, SIGKILL after grace")
    _session(stop)
    stop.add_argument("--grace", type=int, default=300, help="seconds")

    delete = sub.add_parser("delete", help="delete the queued resource and its node")
    delete.add_argument("--yes", action="store_true", help="do not ask")

    again = sub.add_parser("retry", help="run through preemptions, resuming each time")
    _run_options(again)
    again.add_argument("--max-attempts", type=int, default=20)
    again.add_argument("--poll", type=float, default=60.0, help="seconds between checks")
    again.add_argument("--timeout", type=float, default=6 * 3600.0, help="provisioning seconds")

    for sub_parser in sub.choices.values():
        _common(sub_parser)
    return parser


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], Optional[list[str]]]:
    argv = list(argv)
    if "--" not in argv:
        return argv, None
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


def _target(args: argparse.Namespace) -> gcloud.Target:
    if not args.name:
        raise errors.UsageError("no pod name: pass --name or set CAMBRIAN_POD_NAME")
    if not args.zone:
        raise errors.UsageError("no zone: pass --zone or set CAMBRIAN_POD_ZONE")
    return gcloud.Target(args.name, args.zone, args.project)


def _env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise errors.UsageError(f"--env {pair!r} is not NAME=VALUE")
        env[remote.check_env_name(name)] = value
    return env


def _run_spec(args: argparse.Namespace, overrides: Sequence[str]) -> remote.RunSpec:
    return remote.RunSpec(
        session=args.session,
        workdir=args.workdir,
        venv=args.venv,
        env=ops.forwarded_env(os.environ, _env_pairs(args.env)),
        overrides=tuple(overrides),
        force=args.force,
        grace=args.grace,
    )


def _print_status(target: gcloud.Target, pod: ops.PodStatus) -> None:
    print(f"queued resource {target.name} ({target.zone}): {pod.state or 'NOT FOUND'}")
    for w in pod.workers:
        if w.alive:
            process = f"running (pid {w.pid})"
        elif w.session:
            process = "starting"
        else:
            process = "not running"
        last = "-" if w.exit_code is None else str(w.exit_code)
        print(f"  {w.host}: {process}; last exit code: {last}")


def _confirm_delete(target: gcloud.Target) -> bool:
    try:
        answer = input(f"Delete queued resource {target.name} and its TPU VM? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def dispatch(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """Run one parsed subcommand; returns the exit code (errors raise PodError)."""
    target = _target(args)
    runner = Runner(dry_run=args.dry_run)
    command = args.command
    if command == "create":
        options = gcloud.CreateOptions(
            args.accelerator_type, args.runtime_version, args.provisioning, args.reserved
        )
        ops.create(runner, target, options)
    elif command == "wait":
        ops.wait_active(runner, target, args.timeout, args.poll)
    elif command == "status":
        pod = ops.status(runner, target, args.session)
        if not runner.dry_run:
            _print_status(target, pod)
    elif command == "setup":
        options = remote.SetupOptions(
            args.repo_url, args.source, args.ref, args.extras, args.workdir, args.venv
        )
        if options.source is not None:
            options = replace(options, source=_absolute(options.source))
        ops.setup(runner, target, options)
    elif command == "run":
        ops.run(runner, target, _run_spec(args, overrides))
    elif command == "logs":
        ops.logs(runner, target, args.session, args.worker, args.lines, args.follow)
    elif command == "stop":
        for line in ops.stop(runner, target, args.session, args.grace):
            print(line)
    elif command == "delete":
        if not (args.yes or runner.dry_run or _confirm_delete(target)):
            raise errors.PodError("not confirmed: nothing deleted", errors.REFUSED)
        ops.delete(runner, target)
    elif command == "retry":
        options = RetryOptions(args.max_attempts, args.poll, args.timeout)
        return retry(runner, target, _run_spec(args, overrides), options)
    return errors.OK


def parse_args(argv: Sequence[str], environ=None) -> argparse.Namespace:
    """The arguments before ``--``, parsed, with the global flags merged from both sides of the
    subcommand and ``environ`` (default ``os.environ``); usage errors exit 2 (argparse's way)."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    try:
        return _merge_globals(args, os.environ if environ is None else environ)
    except errors.UsageError as err:
        parser.error(str(err))


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``cambrian-pod``; returns the exit code (see the module docstring)."""
    before, overrides = _split_overrides(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(before)
    except SystemExit as err:  # argparse: usage error (2) or --help (0)
        return int(err.code or 0)
    if overrides is not None and args.command not in WITH_OVERRIDES:
        print(f"cambrian-pod {args.command}: takes no overrides after '--'", file=sys.stderr)
        return errors.USAGE
    # Dry-run output is the commands alone; progress messages would read as if things ran.
    level = logging.WARNING if args.dry_run else logging.INFO
    logging.basicConfig(level=level, format="cambrian-pod: %(message)s", stream=sys.stderr)
    try:
        return dispatch(args, overrides or [])
    except errors.PodError as err:
        print(f"cambrian-pod {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except ValueError as err:
        print(f"cambrian-pod {args.command}: {err}", file=sys.stderr)
        return errors.USAGE
    except KeyboardInterrupt:
        print("cambrian-pod: interrupted; what runs on the pod keeps running", file=sys.stderr)
        return 130
