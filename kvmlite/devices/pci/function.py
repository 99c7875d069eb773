"""The base of every PCI function: configuration space, BAR dispatch, INTx.

A function knows nothing of buses or addresses: the :class:`~.root.PciRoot`
maps its BARs and calls :meth:`PciFunction.bar_read` with the BAR index and
the offset into it.

Threads and locks: the root holds :attr:`PciFunction.lock` around every
``config_*`` and ``bar_*`` call.  :meth:`PciFunction.set_intx` may be called
from any thread (a device completing I/O); it takes only the small INTx lock.

Snapshots: :meth:`PciFunction.save_state` keeps the configuration space,
the level the device drives on its INTx pin, and the state of every part
registered with :meth:`PciFunction.add_state_part` (the MSI-X capability
registers itself as ``"msix"``).  :meth:`PciFunction.restore_state` loads
the configuration space, then the parts (MSI-X reads the restored message
control register and re-programs its vectors), drives INTx, and has the
root move the BARs to where the restored registers put them, through the
same path as a guest's configuration write (``PciRoot._sync_bars``, which
calls :meth:`PciFunction.bar_mapped`).  A subclass with state of its own
checks its fields first, then calls ``super().restore_state``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Protocol

from kvmlite.base.state import Reader, StateError
from kvmlite.devices.irq import IrqLine
from kvmlite.devices.pci.config import (COMMAND, COMMAND_INTX_DISABLE, INTERRUPT_LINE,
                                        INTERRUPT_PIN, STATUS_INTERRUPT, PciConfigSpace, PciIds)

Hook = Callable[[], None]


class StatePart(Protocol):
    """A piece of a function with saved state of its own (its MSI-X capability)."""

    def save_state(self) -> dict: ...

    def restore_state(self, state: dict, part: str | None = None) -> None: ...


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
        self._bar_sync: Hook | None = None     # the root's BAR mapping, see set_bar_sync
        self._state_parts: dict[str, StatePart] = {}

    def add_state_part(self, key: str, part: StatePart) -> None:
        """Save ``part`` under ``key`` in this function's state, and restore
        it right after the configuration space."""
        self._state_parts[key] = part

    def set_bar_sync(self, sync: Hook) -> None:
        """The root's "map the BARs as the registers now say" for this
        function (called with :attr:`lock` held), used after a restore."""
        self._bar_sync = sync

    # --- snapshots ---

    def save_state(self) -> dict:
        with self._intx_lock:
            state = {"config": self.config.save_state(), "intx": self._intx_level}
        for key, part in self._state_parts.items():
            state[key] = part.save_state()
        return state

    def restore_state(self, state: dict, part: str | None = None) -> None:
        """Load :meth:`save_state`'s dict, drive INTx to the saved level and
        re-map the BARs.  A StateError leaves the configuration space as it
        was.  Takes :attr:`lock`: do not call with it held."""
        name = part or f"pci {self.name}"
        r = Reader(state, name)
        intx = r.bool("intx")
        config = r.sub("config").state
        parts = {key: r.sub(key).state for key in self._state_parts}
        with self.lock:
            self._restore_config(config, parts, name)
            self._restore_intx(intx)
            if self._bar_sync is not None:
                self._bar_sync()

    def _restore_config(self, config: dict, parts: dict[str, dict], name: str) -> None:
        """The configuration space, then the parts that read it; a part's
        StateError puts the old configuration space back (each part checks
        all of its state before loading any)."""
        old = self.config.save_state()
        self.config.restore_state(config, f"{name} config")
        try:
            for key, state in parts.items():
                self._state_parts[key].restore_state(state, f"{name} {key}")
        except StateError:
            self.config.restore_state(old, f"{name} config")
            raise

    def _restore_intx(self, level: bool) -> None:
        with self._intx_lock:
            self._intx_level = level
            self.config.set_status_bits(STATUS_INTERRUPT, level)
            self._intx_driven = level and not self.config.u16(COMMAND) & COMMAND_INTX_DISABLE
            if self._intx is not None:
                self._intx.set_level(self._intx_driven)     # a fresh line: drive it either way

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
