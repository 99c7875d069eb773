"""Ports Linux writes to for their side effect on old hardware, where no
model is needed: claimed so that they neither reach the "unclaimed port"
path nor cost anything beyond the exit.

* 0x80, the POST code port (``layout.PORT_POST``): Linux's ``outb_p`` writes
  it as an I/O delay (arch/x86/include/asm/io.h, "io_delay"); firmware
  writes progress codes.  The last code is kept for diagnostics.
* 0xED, the alternative delay port (``io_delay=0xed``).

Reads return 0xFF, what an ISA port with no device behind it reads (on many
chipsets port 0x80 is write-only as well).  Register each with length 1.
"""

from __future__ import annotations

from kvmlite.arch.x86.layout import PORT_IO_DELAY_ALT  # noqa: E402
from kvmlite.base.state import Reader


class IgnoredPort:
    """Accepts and drops writes; counts them and keeps the last value."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.writes = 0
        self.last_value: int | None = None

    def save_state(self) -> dict:
        """Empty: reads are always 0xFF, and the write count and last value
        are host-side diagnostics.  Present so that a snapshot can save every
        legacy port alike, without a list of exceptions."""
        return {}

    def restore_state(self, state: dict, part: str | None = None) -> None:
        Reader(state, part or f"ignored port {self.name}")    # only checks that it is an object

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = b"\xff" * len(data)

    def write(self, offset: int, data: bytes) -> None:
        self.writes += 1
        if data:
            self.last_value = data[0]

    def __repr__(self) -> str:
        return f"IgnoredPort({self.name!r})"
