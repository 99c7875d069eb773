"""Interrupt and notification plumbing as device models see it.

A device model never imports the KVM layer.  It is handed:

* :class:`~kvmlite.devices.irq.IrqLine` for a wire (ISA IRQ, PCI INTx);
* :class:`MsiVector` objects, from an :class:`MsiAllocator`, for message
  signalled interrupts (PCI MSI-X);
* an :class:`IoEventRegistrar` to turn a guest write to a doorbell address
  into an eventfd signal that never leaves the kernel (KVM ioeventfd).

The KVM-backed implementations live in :mod:`kvmlite.vmm.interrupts`; the
``Recording*`` classes here implement the same protocols for unit tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol


class MsiVector(Protocol):
    """One MSI-X table entry's worth of interrupt (PCI 3.0 §6.8.2).

    Masking follows the MSI-X rules: while masked, :meth:`trigger` sets the
    pending bit instead of sending the message; unmasking with the pending
    bit set sends the message once and clears the bit (§6.8.3.5).

    Threads: any thread may call :meth:`trigger`; :meth:`configure` and
    :meth:`set_masked` are called under the owning PCI function's lock.
    """

    @property
    def pending(self) -> bool:
        """The MSI-X Pending Bit Array bit of this vector."""

    def configure(self, address: int, data: int) -> None:
        """Set the message address (64-bit) and data (32-bit)."""

    def set_masked(self, masked: bool) -> None:
        """Mask or unmask; unmasking delivers a pending message."""

    def trigger(self) -> None:
        """Send the message, or set the pending bit while masked."""

    def irqfd(self) -> int | None:
        """An eventfd whose every write is a :meth:`trigger` done in the
        kernel (KVM's irqfd), for a kernel component to signal this vector
        with no VMM thread involved (vhost's call eventfd); masking still
        holds: a write while masked leaves the vector pending.  None when
        the vector has no such eventfd.  The vector keeps owning the fd."""


class MsiAllocator(Protocol):
    """Hands out MSI vectors (the VMM backs each with an irqfd and a GSI)."""

    def allocate(self, count: int) -> list[MsiVector]:
        """``count`` fresh vectors, each masked and unconfigured."""

    def release(self, vectors: list[MsiVector]) -> None:
        """Give vectors back (their routes and irqfds go away)."""


class IoEventRegistrar(Protocol):
    """Registers doorbells: a guest write of ``length`` bytes at ``addr``
    (port I/O when ``pio``), optionally only when the value equals
    ``datamatch``, signals eventfd ``fd`` without a VM exit to userspace.

    Both methods raise ``OSError`` when the kernel refuses (EEXIST for a
    duplicate registration); callers log it and fall back to trapping the
    write, which reaches the device's register handler instead.
    """

    def register(self, fd: int, addr: int, length: int, pio: bool,
                 datamatch: int | None) -> None:
        ...

    def unregister(self, fd: int, addr: int, length: int, pio: bool,
                   datamatch: int | None) -> None:
        """Undo a :meth:`register` with the same arguments."""


# --- test implementations -------------------------------------------------


class RecordingMsiVector:
    """An :class:`MsiVector` that records messages instead of sending them."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self.address = 0
        self.data = 0
        self.masked = True
        self._pending = False
        #: (address, data) of every message sent
        self.sent: list[tuple[int, int]] = []
        self._irqfd: int | None = None

    @property
    def pending(self) -> bool:
        return self._pending

    def configure(self, address: int, data: int) -> None:
        self.address, self.data = address, data

    def set_masked(self, masked: bool) -> None:
        self.masked = masked
        if not masked and self._pending:
            self._pending = False
            self.sent.append((self.address, self.data))

    def trigger(self) -> None:
        if self.masked:
            self._pending = True
        else:
            self.sent.append((self.address, self.data))

    def irqfd(self) -> int:
        """A real eventfd (the test stands in for KVM: nothing reads it),
        made at the first call and closed by :meth:`close`."""
        if self._irqfd is None:
            self._irqfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        return self._irqfd

    def close(self) -> None:
        fd, self._irqfd = self._irqfd, None
        if fd is not None:
            os.close(fd)


class RecordingMsiAllocator:
    """Allocates :class:`RecordingMsiVector` objects and remembers them."""

    def __init__(self) -> None:
        self.vectors: list[RecordingMsiVector] = []
        self.released: list[MsiVector] = []

    def allocate(self, count: int) -> list[MsiVector]:
        new = [RecordingMsiVector(len(self.vectors) + i) for i in range(count)]
        self.vectors.extend(new)
        return list(new)

    def release(self, vectors: list[MsiVector]) -> None:
        self.released.extend(vectors)
        for vector in vectors:
            if isinstance(vector, RecordingMsiVector):
                vector.close()


@dataclass(frozen=True)
class IoEvent:
    fd: int
    addr: int
    length: int
    pio: bool
    datamatch: int | None


@dataclass
class RecordingIoEventRegistrar:
    """An :class:`IoEventRegistrar` that keeps the live registrations in a
    set and refuses duplicates as KVM does (EEXIST)."""

    live: set[IoEvent] = field(default_factory=set)
    history: list[tuple[str, IoEvent]] = field(default_factory=list)

    def register(self, fd: int, addr: int, length: int, pio: bool,
                 datamatch: int | None) -> None:
        event = IoEvent(fd, addr, length, pio, datamatch)
        if any(e.addr == addr and e.pio == pio and e.datamatch == datamatch for e in self.live):
            raise FileExistsError(f"ioeventfd at {addr:#x} already registered")
        self.live.add(event)
        self.history.append(("register", event))

    def unregister(self, fd: int, addr: int, length: int, pio: bool,
                   datamatch: int | None) -> None:
        event = IoEvent(fd, addr, length, pio, datamatch)
        if event not in self.live:
            raise FileNotFoundError(f"no ioeventfd at {addr:#x}")
        self.live.remove(event)
        self.history.append(("unregister", event))

    def addresses(self) -> set[int]:
        return {e.addr for e in self.live}
