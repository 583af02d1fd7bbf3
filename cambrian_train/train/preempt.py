"""Preemption: SIGTERM/SIGINT finish the current optimiser step, save, and exit with 75.

TPU VMs and SLURM send SIGTERM before taking a machine away. :class:`StopSignal` turns the
signal into a flag the trainer reads after each step (agreed across processes, so all of them
save the same step); the run then raises :class:`Preempted` and ``cambrian-train`` exits with
:data:`EXIT_RESUME` — "stopped cleanly, resume me" — which ``cambrian-pod retry`` and the SLURM
example treat as a request to re-launch with ``resume=auto``. A second SIGINT interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

EXIT_RESUME = 75  # EX_TEMPFAIL: the run saved its state and should be resumed


class Preempted(RuntimeError):
    """Raised after the state of a stopped run has been saved."""

    def __init__(self, message: str, checkpoint: str):
        super().__init__(message)
        self.checkpoint = checkpoint


class StopSignal:
    """Context manager: while active, SIGTERM/SIGINT set :attr:`requested` instead of killing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: finishing this step, saving, then exiting", self.signal_name)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
