"""Exit codes of ``cambrian-pod`` and the errors that carry them to ``cli.main``."""

from __future__ import annotations

OK = 0
GCLOUD_FAILED = 1  # a gcloud command failed; its stderr is shown
USAGE = 2  # bad arguments, missing name/zone, no recorded create/setup options
BAD_STATE = 3  # the queued resource is FAILED/SUSPENDED/gone, or waiting for ACTIVE timed out
REFUSED = 4  # the tmux session already runs (run without --force), or delete not confirmed
TRAINING_FAILED = 5  # retry: the training process exited with a code other than 0 and 75
GAVE_UP = 6  # retry: --max-attempts attempts used without success


class PodError(Exception):
    """An error with the exit code ``cambrian-pod`` returns for it."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(PodError):
    """Bad user input (exit code 2)."""

    def __init__(self, message: str):
        super().__init__(message, USAGE)


class GcloudError(PodError):
    """A gcloud command exited non-zero (exit code 1); the message holds its stderr."""

    def __init__(self, command: str, returncode: int, stderr: str):
        detail = stderr.strip() or "(no stderr)"
        super().__init__(f"gcloud failed (exit {returncode}): {command}\n{detail}", GCLOUD_FAILED)
        self.returncode = returncode
        self.stderr = stderr
