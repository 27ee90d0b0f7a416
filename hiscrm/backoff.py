"""Restart delays: exponential backoff with a reset after a healthy run.

Pure bookkeeping, no clock of its own: callers say how long the failed run lasted. Used by
the master for worker processes and by each worker for its account tasks.
"""

import msgspec

_MAX_EXPONENT = 32  # 2**32 times any sane initial delay is far beyond any max_s


class RestartBackoff(msgspec.Struct):
    initial_s: float
    max_s: float
    reset_after_s: float
    failures: int = 0  # consecutive failures since the last healthy run

    def record_failure(self, ran_for_s: float, *, during_start: bool = False) -> float:
        """Count one failure and return the delay before the next start.

        A run that lasted ``reset_after_s`` or longer was healthy: counting starts afresh.
        The first crash after a healthy run restarts at once; each further one doubles the
        delay from ``initial_s`` up to ``max_s``. A failure during start (it never got
        going) always waits, since an immediate retry would most likely fail the same way.
        """
        if ran_for_s >= self.reset_after_s:
            self.failures = 0
        self.failures += 1
        exponent = self.failures - 1 if during_start else self.failures - 2
        if exponent < 0:
            return 0.0
        return float(min(self.initial_s * 2 ** min(exponent, _MAX_EXPONENT), self.max_s))

    def reconfigure(self, initial_s: float, max_s: float, reset_after_s: float) -> None:
        """New delays for the failures that follow (the count goes on)."""
        self.initial_s, self.max_s, self.reset_after_s = initial_s, max_s, reset_after_s
