"""Rate-limited logging: a hostile guest must not be able to flood the log.

A device logs one line per driver error it sees, but at most ``burst``
lines per ``interval`` seconds; the next line after a quiet period says how
many were dropped.  Thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, burst: int = 5, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = float("-inf")
        self._count = 0
        self._suppressed = 0

    def warning(self, message: str) -> bool:
        """Log ``message`` unless over the limit; True when it was logged."""
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self._interval:
                self._window_start, self._count = now, 0
            if self._count >= self._burst:
                self._suppressed += 1
                return False
            self._count += 1
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            message = f"{message} ({suppressed} similar messages suppressed)"
        self._logger.warning("%s", message)
        return True
