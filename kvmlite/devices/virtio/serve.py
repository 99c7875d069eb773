"""The loop every simple device runs over a queue: pop, handle, return.

§2.7.13.3 and §2.7.10: keep popping until the ring is empty *after*
re-enabling notifications, or a buffer the driver made available while we
were finishing could sit there without a notification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kvmlite.devices.virtio.queue import DescriptorChain, Queue, QueueError
from kvmlite.base.memory import GuestMemory

#: handle(chain) -> bytes written into the chain's writable buffers
Handler = Callable[[DescriptorChain], int]


@dataclass
class Served:
    """What :func:`serve_queue` did."""

    completed: int = 0      # chains returned to the used ring
    notify: bool = False    # the driver wants an interrupt for them
    idle: bool = True       # the ring is empty (False: stopped at ``limit``)
    error: QueueError | None = None  # the ring is malformed: ask for a reset


def serve_queue(queue: Queue, memory: GuestMemory, handle: Handler, limit: int | None = None) -> Served:
    """Serve available chains with ``handle`` until the ring is empty or
    ``limit`` chains were served, or the ring turns out malformed (then
    ``error`` is set; chains completed before it stay completed)."""
    served = Served()
    try:
        _serve(queue, memory, handle, limit, served)
        if served.completed:
            served.notify = queue.needs_notification(memory)
    except QueueError as exc:
        served.error, served.idle = exc, True
        served.notify = served.completed > 0
    return served


def _serve(queue: Queue, memory: GuestMemory, handle: Handler, limit: int | None, served: Served) -> None:
    while limit is None or served.completed < limit:
        chain = queue.pop(memory)
        if chain is None:
            if queue.enable_notification(memory):
                continue
            return
        try:
            written = handle(chain)
        finally:
            chain.release()
        queue.add_used(memory, chain.head, written)
        served.completed += 1
    served.idle = False
