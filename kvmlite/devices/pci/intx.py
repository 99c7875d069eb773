"""Shared INTx wires (PCI Local Bus 3.0 §2.2.6).

INTx# pins are open-drain and wire-ORed: with four interrupt lines and up
to 31 slots, several functions share one GSI.  A :class:`SharedIrqLine`
keeps one level per source and drives the underlying line high while any
source is high, so one function lowering its INTx never silences another.
"""

from __future__ import annotations

import threading

from kvmlite.devices.irq import IrqLine


class SharedIrqLine:
    """The wired-OR of several sources onto one :class:`IrqLine`."""

    def __init__(self, line: IrqLine) -> None:
        self.line = line
        self._lock = threading.Lock()
        self._high: set[int] = set()
        self._sources = 0

    def source(self) -> "IrqSource":
        """A new input to the OR; starts low."""
        with self._lock:
            self._sources += 1
            return IrqSource(self, self._sources)

    def _set(self, source_id: int, level: bool) -> None:
        with self._lock:
            was_high = bool(self._high)
            if level:
                self._high.add(source_id)
            else:
                self._high.discard(source_id)
            now_high = bool(self._high)
            if now_high != was_high:
                self.line.set_level(now_high)

    @property
    def level(self) -> bool:
        return bool(self._high)


class IrqSource:
    """One input of a :class:`SharedIrqLine`; an :class:`IrqLine` itself."""

    def __init__(self, shared: SharedIrqLine, source_id: int) -> None:
        self._shared = shared
        self._id = source_id

    def set_level(self, level: bool) -> None:
        self._shared._set(self._id, level)

    def trigger(self) -> None:
        """An edge on a level-triggered wire: assert, then deassert."""
        self.set_level(True)
        self.set_level(False)
