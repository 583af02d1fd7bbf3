"""Execute gcloud argument lists, or print them shell-quoted (``--dry-run``).

In dry-run mode nothing runs: each command is printed on one line and answered with the caller's
``dry_stdout`` (the happy-path answer, e.g. ``ACTIVE`` for a describe), so an operation prints
exactly the commands it would run when everything goes well.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from cambrian_train.pod.errors import GcloudError


@dataclass(frozen=True)
class Result:
    """What a gcloud command returned (stdout/stderr empty when streamed to the terminal)."""

    returncode: int
    stdout: str = ""
    stderr: str = ""


def shorten(command: str, limit: int = 300) -> str:
    """A long command (a whole remote script) cut for error messages."""
    return command if len(command) <= limit else command[:limit] + " ..."


class Runner:
    """Runs gcloud commands; in dry-run mode prints them through ``echo`` instead."""

    def __init__(self, dry_run: bool = False, echo: Callable[[str], None] = print):
        self.dry_run = dry_run
        self.echo = echo

    def __call__(
        self,
        args: Sequence[str],
        *,
        stream: bool = False,
        check: bool = True,
        dry_stdout: str = "",
        display: Optional[Sequence[str]] = None,
    ) -> Result:
        """Run ``args``; ``stream`` passes output straight to the terminal (logs, setup).

        ``check``: a non-zero exit raises :class:`GcloudError` with the stderr. ``display``: what
        dry-run prints instead of ``args`` (the same command with secrets masked).
        """
        shown = shlex.join(display if display is not None else args)
        if self.dry_run:
            self.echo(shown)
            return Result(0, dry_stdout, "")
        try:
            if stream:
                proc = subprocess.run(list(args))
                result = Result(proc.returncode)
            else:
                proc = subprocess.run(list(args), capture_output=True, text=True)
                result = Result(proc.returncode, proc.stdout, proc.stderr)
        except FileNotFoundError as err:
            raise GcloudError(shorten(shown), 127, f"{args[0]} not found on PATH ({err})") from err
        if check and result.returncode != 0:
            stderr = result.stderr if not stream else "(stderr shown above)"
            raise GcloudError(shorten(shown), result.returncode, stderr)
        return result
