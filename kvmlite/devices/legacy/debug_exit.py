"""The kvmlite guest-exit port: how a test guest ends the VM with a status.

Register one port at ``layout.PORT_GUEST_EXIT``.  A byte written there stops
the VM: ``on_exit(value)`` is called with it, on the vCPU thread that wrote
it and under the bus lock, so it must only request the stop.  A wider write
uses its first byte.  Reads return 0xFF, what an empty ISA port reads, so a
guest cannot use the port to tell it is running under kvmlite by reading.
(Like QEMU's isa-debug-exit, but the status is the byte itself.)
"""

from __future__ import annotations

import logging
from typing import Callable

from kvmlite.base.state import Reader

log = logging.getLogger(__name__)

PORT_COUNT = 1


class GuestExit:
    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit

    def save_state(self) -> dict:
        """Empty: the guest can read nothing back.  Present so that a snapshot
        can save every legacy port alike, without a list of exceptions."""
        return {}

    def restore_state(self, state: dict, part: str = "exit-port") -> None:
        Reader(state, part)       # only checks that it is an object

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = b"\xff" * len(data)

    def write(self, offset: int, data: bytes) -> None:
        if offset != 0 or not data:
            return
        log.debug("guest exit port: status %d", data[0])
        self._on_exit(data[0])
