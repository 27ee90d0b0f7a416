"""Counting errors inside a process itself (bugs and failures it caught and logged), in one
place, whichever part of the process caught them."""


class ErrorCounter:
    def __init__(self) -> None:
        self.total = 0

    def __call__(self) -> int:
        """Count one more; the new total (for the log line that reports it)."""
        self.total += 1
        return self.total
