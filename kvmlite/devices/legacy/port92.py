"""System Control Port A at 0x92, the PS/2 "fast A20 and reset" port
(IBM PS/2 technical reference; Intel PIIX/ICH datasheets, port 92h).

    bit 0  ALT_RST: writing 1 resets the CPU ("fast reset")
    bit 1  ALT_A20: A20 gate
    bit 3  password lock (kept, no effect)
    bits 6-7  activity lights (kept, no effect)

KVM guests always run with A20 enabled and cannot turn it off, so bit 1
always reads 1: a guest that tries to clear it sees that it failed, which is
the truth.  Bit 0 reads 0 (the reset pulse is over by the time a guest
reads).  Register one port (``PORT_SYSTEM_CONTROL_A``, length 1).  The
``reset`` callback runs on the vCPU thread under the bus lock, so it must
only request the reset.

Snapshots: the state is the last value written (``{"value": n}``); the
password-lock and activity-light bits are guest-visible through reads.
"""

from __future__ import annotations

import logging
from typing import Callable

from kvmlite.base.state import Reader

log = logging.getLogger(__name__)

from kvmlite.arch.x86.layout import PORT_SYSTEM_CONTROL_A  # noqa: E402

ALT_RESET = 0x01
ALT_A20 = 0x02


class SystemControlPortA:
    def __init__(self, reset: Callable[[], None]) -> None:
        self._reset = reset
        self._value = ALT_A20

    def save_state(self) -> dict:
        return {"value": self._value}

    def restore_state(self, state: dict, part: str = "port92") -> None:
        self._value = Reader(state, part).int("value", 0, 0xFF)

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = b"\xff" * len(data)
        if len(data):
            data[0] = (self._value & ~ALT_RESET) | ALT_A20

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return
        self._value = data[0]
        if data[0] & ALT_RESET:
            log.info("port 0x92: guest requested a fast reset")
            self._reset()
