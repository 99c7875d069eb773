"""Queue notifications through ioeventfds (KVM_IOEVENTFD).

Each queue gets an eventfd.  While its notify address is known (the BAR is
mapped, or the MMIO window fixed), the eventfd is registered there, so a
guest notify write completes in the kernel and the VMM's I/O thread sees
the eventfd become readable.  Without a registration the write exits to
the VMM and the transport's register handler notifies the device directly:
the eventfd is an accelerator, never required.

A device that hands a queue to the kernel (vhost) takes the queue's eventfd
(:meth:`QueueDoorbells.take`): the loop stops reading it, so every guest
notification reaches the kernel, and the ioeventfd registration stays as
it is (it follows the BAR as before).  ``give_back`` makes the loop read it
again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Protocol

from kvmlite.devices.interrupts import IoEventRegistrar
from kvmlite.base import eventfd

log = logging.getLogger(__name__)


class ReaderLoop(Protocol):
    """What this module needs of :class:`kvmlite.base.eventloop.EventLoop`."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...


@dataclass(frozen=True)
class Doorbell:
    """Where a guest write notifies one queue."""

    addr: int
    length: int
    pio: bool = False
    datamatch: int | None = None


class QueueDoorbells:
    """One eventfd per queue, served on ``loop``; ``on_notify(index)`` runs
    on the loop thread when queue ``index``'s eventfd fires."""

    def __init__(self, name: str, count: int, registrar: IoEventRegistrar, loop: ReaderLoop,
                 on_notify: Callable[[int], None]) -> None:
        self.name = name
        self.registrar = registrar
        self.loop = loop
        self.on_notify = on_notify
        self.fds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(count)]
        self._placed: dict[int, Doorbell] = {}
        self._taken: set[int] = set()
        for index, fd in enumerate(self.fds):
            loop.add_reader(fd, self._reader(index))

    def _reader(self, index: int) -> Callable[[], None]:
        def fired() -> None:
            if eventfd.drain(self.fds[index]):
                self.on_notify(index)
        return fired

    def place(self, doorbells: list[Doorbell] | None) -> None:
        """Move every queue's registration to ``doorbells[index]`` (None:
        unregister all)."""
        self._remove_all()
        for index, bell in enumerate(doorbells or []):
            fd = self.fds[index]
            try:
                self.registrar.register(fd, bell.addr, bell.length, bell.pio, bell.datamatch)
            except OSError as exc:
                log.warning("%s: queue %d ioeventfd at %#x refused (%s); notifications will trap",
                            self.name, index, bell.addr, exc)
                continue
            self._placed[index] = bell

    def placed(self) -> dict[int, Doorbell]:
        return dict(self._placed)

    def take(self, index: int) -> int | None:
        """Stop reading queue ``index``'s eventfd on the loop and return it
        (it stays registered and owned here); None when there is none."""
        if not 0 <= index < len(self.fds):
            return None
        if index not in self._taken:
            self._taken.add(index)
            self.loop.remove_reader(self.fds[index])
        return self.fds[index]

    def give_back(self, index: int) -> None:
        """Read queue ``index``'s eventfd on the loop again.  A count left
        in it reaches ``on_notify`` once, which a reset device ignores."""
        if index in self._taken and index < len(self.fds):
            self._taken.discard(index)
            self.loop.add_reader(self.fds[index], self._reader(index))

    def _remove_all(self) -> None:
        for index, bell in self._placed.items():
            try:
                self.registrar.unregister(self.fds[index], bell.addr, bell.length, bell.pio,
                                          bell.datamatch)
            except OSError as exc:
                log.debug("%s: queue %d ioeventfd removal: %s", self.name, index, exc)
        self._placed = {}

    def close(self) -> None:
        self._remove_all()
        for fd in self.fds:
            self.loop.remove_reader(fd)
            os.close(fd)
        self.fds = []
        self._taken = set()


def make_doorbells(name: str, count: int, registrar: IoEventRegistrar | None,
                   loop: ReaderLoop | None, on_notify: Callable[[int], None]) -> QueueDoorbells | None:
    """Doorbells when both a registrar and a loop are given; None (every
    notify traps to the register handler) when neither is."""
    if (registrar is None) != (loop is None):
        raise ValueError(f"{name}: ioeventfds need both a registrar and an event loop")
    if registrar is None or loop is None:
        return None
    return QueueDoorbells(name, count, registrar, loop, on_notify)
