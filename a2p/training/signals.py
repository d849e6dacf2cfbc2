"""Preemption: SIGUSR1/SIGTERM only raise a flag; the trainer stops at a step boundary and saves.

SLURM sends a signal ahead of a preemption or time limit (`sbatch --signal=USR1@120`, or SIGTERM
before the kill); torchrun's agent forwards SIGTERM to its workers and waits about 30 s before
SIGKILL. The handler does nothing but set a flag (no logging: a signal can arrive while the
logging lock is held). The trainer checks the flag after every optimizer step, all ranks agree by
an all-reduce so they stop at the same step, save a checkpoint and `a2p train` exits with
`EXIT_PREEMPTED` (75, EX_TEMPFAIL) so a job script can tell "preempted, requeue me" from "done" (0)
and from a failure. Launchers that wrap the workers (torchrun) report their own non-zero code.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

EXIT_PREEMPTED = 75
"""Exit code of a run that saved a checkpoint and stopped because it was asked to (EX_TEMPFAIL)."""

PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
"""Signals that request a clean stop."""


class PreemptionHandler:
    """Context manager installing flag-setting handlers for `PREEMPTION_SIGNALS`.

    Outside the main thread (where Python cannot install handlers) it installs nothing and the
    flag only changes through `request()`. The previous handlers are restored on exit.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop was requested on this process."""
        return self.received is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop as if `signum` had arrived."""
        if self.received is None:
            self.received = signal.Signals(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.request(signum)

    def __enter__(self) -> PreemptionHandler:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
