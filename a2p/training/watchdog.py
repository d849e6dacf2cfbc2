"""A rank's watchdog: says out loud, naming the rank and the step, when a step stops progressing.

A stuck rank (a `kill -STOP`, a dead GPU, a hung file system) leaves the others waiting in a
collective. They leave when the process group's timeout (`train.dist_timeout_s`) makes that
collective fail, with a non-zero exit; until then this thread logs a warning every
`interval_s` seconds that the step has not finished, so the job's log says what is happening.
"""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger(__name__)


class StepWatchdog:
    """`beat(step)` after every optimizer step; a daemon thread warns while none comes for `interval_s`."""

    def __init__(self, rank: int, interval_s: float) -> None:
        self.rank, self.interval_s = rank, float(interval_s)
        self._step, self._since = 0, time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="a2p-step-watchdog", daemon=True)

    def __enter__(self) -> StepWatchdog:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def beat(self, step: int) -> None:
        """Step `step` finished: the next warning waits a whole interval again."""
        self._step, self._since = step, time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(self.interval_s, 5.0)):
            waited = time.monotonic() - self._since
            if waited >= self.interval_s:
                logger.warning(
                    "rank %d: step %d has not finished after %.0f s; another rank may be stuck (the run "
                    "stops with an error when the process group's timeout, train.dist_timeout_s, passes)",
                    self.rank, self._step + 1, waited,
                )  # fmt: skip
                self._since = time.monotonic()
