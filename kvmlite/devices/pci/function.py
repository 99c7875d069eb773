"""The base of every PCI function: configuration space, BAR dispatch, INTx.

A function knows nothing of buses or addresses: the :class:`~.root.PciRoot`
maps its BARs and calls :meth:`PciFunction.bar_read` with the BAR index and
the offset into it.

Threads and locks: the root holds :attr:`PciFunction.lock` around every
``config_*`` and ``bar_*`` call.  :meth:`PciFunction.set_intx` may be called
from any thread (a device completing I/O); it takes only the small INTx lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from kvmlite.devices.irq import IrqLine
from kvmlite.devices.pci.config import (COMMAND, COMMAND_INTX_DISABLE, INTERRUPT_LINE,
                                        INTERRUPT_PIN, STATUS_INTERRUPT, PciConfigSpace, PciIds)

Hook = Callable[[], None]


@dataclass
class _ConfigHook:
    start: int
    end: int
    on_read: Hook | None
    on_write: Hook | None

    def overlaps(self, reg: int, length: int) -> bool:
        return reg < self.end and self.start < reg + length


class PciFunction:
    """A single-function PCI device with a type 0 header."""

    def __init__(self, ids: PciIds, name: str) -> None:
        self.config = PciConfigSpace(ids)
        self.name = name
        #: held around config and BAR accesses; PciRoot.add replaces it with
        #: the MMIO bus lock of this function (Bus.lock_of(function)).
        self.lock = threading.Lock()
        self._hooks: list[_ConfigHook] = []
        self._intx_lock = threading.Lock()
        self._intx: IrqLine | None = None
        self._intx_level = False
        self._intx_driven = False

    # --- configuration space (called by the root with self.lock held) ---

    def config_read(self, reg: int, data: memoryview) -> None:
        for hook in self._hooks:
            if hook.on_read and hook.overlaps(reg, len(data)):
                hook.on_read()
        data[:] = self.config.read(reg, len(data))

    def config_write(self, reg: int, data: bytes) -> None:
        self.config.write(reg, data)
        for hook in self._hooks:
            if hook.on_write and hook.overlaps(reg, len(data)):
                hook.on_write()
        if reg < COMMAND + 2 and COMMAND < reg + len(data):
            self._drive_intx()

    def add_config_hook(self, start: int, length: int, *, on_read: Hook | None = None,
                        on_write: Hook | None = None) -> None:
        """Call ``on_read`` before a read and ``on_write`` after a write that
        touches ``[start, start + length)``."""
        self._hooks.append(_ConfigHook(start, start + length, on_read, on_write))

    # --- BARs (called by the root with self.lock held) ---

    def bar_read(self, index: int, offset: int, data: memoryview) -> None:
        data[:] = bytes(len(data))

    def bar_write(self, index: int, offset: int, data: bytes) -> None:
        pass

    def bar_mapped(self, index: int, address: int | None) -> None:
        """BAR ``index`` now decodes at ``address`` (None: not at all)."""

    # --- INTx (§6.2.4 interrupt pin/line, §6.2.2 bit 10, §6.2.3 bit 3) ---

    def attach_intx(self, line: IrqLine, pin: int, irq: int) -> None:
        """Wire INT``pin`` (1 = INTA) to ``line``, which firmware reports to
        the OS as IRQ ``irq`` in the interrupt line register."""
        self._intx = line
        self.config.set_u8(INTERRUPT_PIN, pin)
        self.config.set_u8(INTERRUPT_LINE, irq)

    def set_intx(self, level: bool) -> None:
        """Assert or deassert this function's INTx (any thread)."""
        with self._intx_lock:
            self._intx_level = level
            self.config.set_status_bits(STATUS_INTERRUPT, level)
            self._drive_intx_locked()

    def _drive_intx(self) -> None:
        with self._intx_lock:
            self._drive_intx_locked()

    def _drive_intx_locked(self) -> None:
        disabled = self.config.u16(COMMAND) & COMMAND_INTX_DISABLE
        level = self._intx_level and not disabled
        if self._intx is not None and level != self._intx_driven:
            self._intx_driven = level
            self._intx.set_level(level)
