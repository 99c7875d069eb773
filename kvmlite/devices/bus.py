"""Address buses: the port-I/O bus and the MMIO bus.

A device registers one or more ``(base, length)`` ranges; an access is routed
by its address alone and the device sees only the offset into its own range,
as in Firecracker's ``read(base, offset, data)``.  Devices import nothing from
the KVM layer, so they are unit-tested with a bare :class:`Bus`.

Threads: any vCPU thread may call :meth:`Bus.read`/:meth:`Bus.write`.  Each
device has its own lock, taken around its ``read``/``write``; devices that
are also touched from the I/O thread take the same lock there
(:meth:`Bus.lock_of`).  Registration happens before vCPUs start, or under
the bus's own lock (PCI BAR moves); it never holds a device lock.
"""

from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class BusDevice(Protocol):
    """What a bus needs of a device."""

    def read(self, offset: int, data: memoryview) -> None:
        """Fill ``data`` with the ``len(data)`` bytes at ``offset``."""

    def write(self, offset: int, data: bytes) -> None:
        """Accept the ``len(data)`` bytes written at ``offset``."""


class BusError(ValueError):
    """A registration that overlaps another or has no length."""


@dataclass
class _Range:
    base: int
    length: int
    device: BusDevice
    lock: threading.Lock
    name: str
    stats: list[int] = field(default_factory=lambda: [0, 0])  # reads, writes


class Bus:
    """A set of non-overlapping address ranges, each owned by a device."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._ranges: list[_Range] = []
        self._bases: list[int] = []
        self._locks: dict[int, threading.Lock] = {}
        self._mutex = threading.Lock()   # guards _ranges/_bases for re-registration
        self._unclaimed_logged: set[int] = set()

    def lock_of(self, device: BusDevice) -> threading.Lock:
        """The lock the bus takes around ``device``'s accesses."""
        return self._locks.setdefault(id(device), threading.Lock())

    def register(self, base: int, length: int, device: BusDevice, name: str | None = None) -> None:
        if length <= 0:
            raise BusError(f"{self.name}: empty range at {base:#x}")
        with self._mutex:
            i = bisect.bisect_right(self._bases, base)
            prev = self._ranges[i - 1] if i > 0 else None
            nxt = self._ranges[i] if i < len(self._ranges) else None
            if (prev and prev.base + prev.length > base) or (nxt and base + length > nxt.base):
                other = prev if prev and prev.base + prev.length > base else nxt
                raise BusError(f"{self.name}: {name or type(device).__name__} at {base:#x}+{length:#x} "
                               f"overlaps {other.name} at {other.base:#x}+{other.length:#x}")
            entry = _Range(base, length, device, self.lock_of(device), name or type(device).__name__)
            ranges = self._ranges.copy()
            ranges.insert(i, entry)
            # Publish a new list so lock-free readers never see a half-updated one.
            self._ranges, self._bases = ranges, [r.base for r in ranges]

    def unregister(self, base: int) -> None:
        with self._mutex:
            ranges = [r for r in self._ranges if r.base != base]
            self._ranges, self._bases = ranges, [r.base for r in ranges]

    def find(self, addr: int) -> tuple[_Range, int] | None:
        """The range holding ``addr`` and the offset into it."""
        ranges, bases = self._ranges, self._bases
        i = bisect.bisect_right(bases, addr) - 1
        if i >= 0:
            r = ranges[i]
            if addr < r.base + r.length:
                return r, addr - r.base
        return None

    def read(self, addr: int, data: memoryview) -> bool:
        """Route a read; fills ``data`` with 0xff and returns False when no
        device claims ``addr`` (what an empty bus returns on real hardware)."""
        hit = self.find(addr)
        if hit is None:
            data[:] = b"\xff" * len(data)
            self._note_unclaimed(addr, "read")
            return False
        r, offset = hit
        r.stats[0] += 1
        with r.lock:
            r.device.read(offset, data)
        return True

    def write(self, addr: int, data: bytes) -> bool:
        hit = self.find(addr)
        if hit is None:
            self._note_unclaimed(addr, "write")
            return False
        r, offset = hit
        r.stats[1] += 1
        with r.lock:
            r.device.write(offset, data)
        return True

    def _note_unclaimed(self, addr: int, what: str) -> None:
        if addr not in self._unclaimed_logged and len(self._unclaimed_logged) < 64:
            self._unclaimed_logged.add(addr)
            log.debug("%s: unclaimed %s at %#x", self.name, what, addr)

    def stats(self) -> dict[str, dict[str, int]]:
        """Reads and writes per device name, summed over its ranges."""
        out: dict[str, dict[str, int]] = {}
        for r in self._ranges:
            entry = out.setdefault(r.name, {"reads": 0, "writes": 0})
            entry["reads"] += r.stats[0]
            entry["writes"] += r.stats[1]
        return out
