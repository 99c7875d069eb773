"""Step lines for long preparations, on stderr and only when it is a tty.

``kvmlite setup`` fetches and unpacks packages and builds images; a person
at a terminal wants to see that it is moving, a script wants silence.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``[n] message ... done (1.2 s)`` lines; silent when not enabled."""

    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._count = 0
        self._started: float | None = None

    def step(self, message: str) -> None:
        """Start a step (ending the previous one)."""
        self.done()
        self._count += 1
        self._started = time.monotonic()
        self._write(f"[{self._count}] {message} ...")

    def done(self) -> None:
        if self._started is not None:
            self._write(f" done ({time.monotonic() - self._started:.1f} s)\n")
            self._started = None

    def note(self, message: str) -> None:
        """A line of its own (a skipped module, a cache hit)."""
        self.done()
        self._write(f"    {message}\n")

    def _write(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text)
            self.stream.flush()


QUIET = Progress(enabled=False)
