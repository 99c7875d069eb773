"""A fake guest-side virtio driver for unit tests (virtio 1.2 §2.7, driver side).

It lays out a split virtqueue in a real :class:`GuestMemory` the way a guest
driver does (descriptor table, available ring, used ring, and buffers in a
heap after them), posts chains (direct or through an indirect table),
publishes them, and reads back the used ring.  It also writes raw
descriptors so hostile layouts can be built.

Shared with the transport tests:
``from tests.unit.devices.virtio.fakedriver import FakeDriver``.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from typing import Sequence

from kvmlite.devices.virtio.queue import (VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, Queue)
from kvmlite.base.memory import GuestMemory

DESC = struct.Struct("<QIHH")
USED_ELEM = struct.Struct("<II")


def align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


@dataclass
class Posted:
    """A chain the fake driver made available."""

    head: int
    readable: list[tuple[int, int]] = field(default_factory=list)   # (guest address, length)
    writable: list[tuple[int, int]] = field(default_factory=list)
    descriptors: list[int] = field(default_factory=list)           # direct-table slots it holds
    table: int | None = None                                       # its indirect table, if any
    entries: int = 0                                               # descriptors in its (indirect) chain


class FakeDriver:
    """The driver side of one split virtqueue in ``memory``."""

    def __init__(self, memory: GuestMemory, queue: Queue, *, size: int | None = None,
                 ring_base: int = 0x1000, heap_end: int | None = None) -> None:
        self.memory = memory
        self.queue = queue
        self.size = size if size is not None else queue.max_size
        self.desc_table = ring_base
        self.avail_ring = self.desc_table + DESC.size * self.size
        self.used_ring = align_up(self.avail_ring + 6 + 2 * self.size, 4096)
        self._heap = align_up(self.used_ring + 6 + USED_ELEM.size * self.size, 4096)
        self._heap_end = heap_end if heap_end is not None else memory.regions[0].end
        self._free = list(range(self.size))
        self._posted: dict[int, Posted] = {}
        self.avail_idx = 0
        self.last_used = 0
        memory.fill(ring_base, self._heap - ring_base)
        self.install()

    def install(self) -> None:
        """What the transport does when the driver writes the queue registers."""
        self.queue.size = self.size
        self.queue.desc_table = self.desc_table
        self.queue.avail_ring = self.avail_ring
        self.queue.used_ring = self.used_ring
        self.queue.ready = True

    # --- memory ---

    def alloc(self, length: int, align: int = 16) -> int:
        addr = align_up(self._heap, align)
        if addr + length > self._heap_end:
            raise MemoryError("fake driver heap exhausted")
        self._heap = addr + length
        return addr

    def write_desc(self, table: int, index: int, addr: int, length: int, flags: int, next_: int = 0) -> None:
        self.memory.write(table + DESC.size * index, DESC.pack(addr, length, flags, next_))

    def read_desc(self, table: int, index: int) -> tuple[int, int, int, int]:
        """(addr, len, flags, next) of one descriptor."""
        return DESC.unpack(self.memory.read(table + DESC.size * index, DESC.size))

    def patch_desc(self, table: int, index: int, **changes: int) -> None:
        """Rewrite fields of one descriptor: addr=, length=, flags=, next_=."""
        addr, length, flags, next_ = self.read_desc(table, index)
        fields = {"addr": addr, "length": length, "flags": flags, "next_": next_} | changes
        self.write_desc(table, index, **fields)

    # --- posting chains ---

    def add(self, readable: Sequence[bytes] = (), writable: Sequence[int] = (), *,
            indirect: bool = False, publish: bool = True) -> Posted:
        """Post a chain: buffers holding each of ``readable``, then empty
        device-writable buffers of the ``writable`` lengths."""
        buffers = [(self._put(data), len(data), 0) for data in readable]
        buffers += [(self._put(bytes(n)), n, VIRTQ_DESC_F_WRITE) for n in writable]
        posted = self._chain_indirect(buffers) if indirect else self._chain_direct(buffers)
        posted.entries = len(buffers)
        posted.readable = [(a, n) for a, n, f in buffers if not f]
        posted.writable = [(a, n) for a, n, f in buffers if f]
        self._posted[posted.head] = posted
        if publish:
            self.publish(posted.head)
        return posted

    def _put(self, data: bytes) -> int:
        addr = self.alloc(max(len(data), 1))
        self.memory.write(addr, data)
        return addr

    def _chain_direct(self, buffers: list[tuple[int, int, int]]) -> Posted:
        slots = [self._free.pop(0) for _ in buffers]
        for i, (addr, length, flags) in enumerate(buffers):
            last = i == len(buffers) - 1
            self.write_desc(self.desc_table, slots[i], addr, length,
                            flags | (0 if last else VIRTQ_DESC_F_NEXT), 0 if last else slots[i + 1])
        return Posted(slots[0], descriptors=slots)

    def _chain_indirect(self, buffers: list[tuple[int, int, int]]) -> Posted:
        table = self.alloc(DESC.size * len(buffers))
        for i, (addr, length, flags) in enumerate(buffers):
            last = i == len(buffers) - 1
            self.write_desc(table, i, addr, length, flags | (0 if last else VIRTQ_DESC_F_NEXT), 0 if last else i + 1)
        slot = self._free.pop(0)
        self.write_desc(self.desc_table, slot, table, DESC.size * len(buffers), VIRTQ_DESC_F_INDIRECT)
        return Posted(slot, descriptors=[slot], table=table)

    def publish(self, head: int) -> None:
        """Put ``head`` in the available ring and bump the avail idx (§2.7.13)."""
        self.memory.write_u16(self.avail_ring + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write_u16(self.avail_ring + 2, self.avail_idx)

    def set_avail_idx(self, value: int) -> None:
        self.avail_idx = value & 0xFFFF
        self.memory.write_u16(self.avail_ring + 2, self.avail_idx)

    # --- notification fields (§2.7.7, §2.7.10) ---

    def set_avail_flags(self, flags: int) -> None:
        self.memory.write_u16(self.avail_ring, flags)

    def set_used_event(self, value: int) -> None:
        self.memory.write_u16(self.avail_ring + 4 + 2 * self.size, value)

    def avail_event(self) -> int:
        return self.memory.read_u16(self.used_ring + 4 + USED_ELEM.size * self.size)

    # --- completions ---

    def used_idx(self) -> int:
        return self.memory.read_u16(self.used_ring + 2)

    def used(self) -> list[tuple[int, int]]:
        """New (id, len) used elements since the last call; frees their descriptors."""
        entries = []
        while self.last_used != self.used_idx():
            slot = self.used_ring + 4 + USED_ELEM.size * (self.last_used % self.size)
            head, length = USED_ELEM.unpack(self.memory.read(slot, USED_ELEM.size))
            entries.append((head, length))
            posted = self._posted.pop(head, None)
            if posted is not None:
                self._free.extend(posted.descriptors)
            self.last_used = (self.last_used + 1) & 0xFFFF
        return entries

    def read(self, region: tuple[int, int]) -> bytes:
        addr, length = region
        return self.memory.read(addr, length)


class RecordingInterrupt:
    """A VirtioInterrupt that remembers what it was asked to signal."""

    def __init__(self) -> None:
        self.used: list[int] = []
        self.config_changes = 0
        self.event = threading.Event()

    def signal_used_queue(self, queue_index: int) -> None:
        self.used.append(queue_index)
        self.event.set()

    def signal_config_change(self) -> None:
        self.config_changes += 1
        self.event.set()


class NeedsResetRecorder:
    """An ``on_needs_reset`` callback that keeps the reasons."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.event = threading.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.event.set()


class RecordingMemory(GuestMemory):
    """GuestMemory that checks every view it hands out lies inside RAM."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.views: list[tuple[int, int]] = []

    def view(self, addr: int, length: int) -> memoryview:
        result = super().view(addr, length)
        assert any(r.guest_addr <= addr and addr + length <= r.end for r in self.regions), (addr, length)
        self.views.append((addr, length))
        return result


def call_on_loop(loop, call, timeout: float = 10.0) -> None:
    """Run ``call()`` on ``loop``'s thread, as a doorbell (ioeventfd) served
    there runs a device's ``queue_notify``, and wait until it returns."""
    returned = threading.Event()

    def run() -> None:
        try:
            call()
        finally:
            returned.set()

    loop.call_soon(run)
    assert returned.wait(timeout), "the event loop did not run the call"


def wait_until(condition, timeout: float = 10.0, interval: float = 0.002) -> bool:
    """Poll ``condition()`` until it holds (True) or ``timeout`` passes (False):
    for effects that happen on another thread, such as an event loop's."""
    import time
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class FakeNetBackend:
    """A virtio-net backend (``kvmlite.devices.virtio.net.NetBackend``) over a
    SOCK_SEQPACKET socketpair, which keeps frame boundaries as a tap does.

    The device holds one end; the test holds ``peer``: what the test sends
    on ``peer`` the device receives as frames, and what the device sends
    the test reads from ``peer`` (:meth:`sent`).  The socket's send buffer
    (``sndbuf``: its unread bytes) makes ``send`` return False as a full
    passt socket does, and the fd becomes writable again once the test
    reads.  Calls are counted, so tests can tell a wait from a spin."""

    def __init__(self, *, vnet_hdr: bool = True, mtu: int | None = None, offloads: int = 0,
                 sndbuf: int | None = None) -> None:
        import socket
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if sndbuf is not None:      # the unread bytes after which send returns False
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.setblocking(False)
        self.peer.setblocking(False)
        self.vnet_hdr = vnet_hdr
        self.mtu = mtu
        self._offloads = offloads
        self.negotiated: list[int] = []
        self.calls = {"recv_into": 0, "send": 0, "flush": 0}
        self.closed = False
        self.fail_send: OSError | None = None     # raised by the next send, once

    # --- NetBackend ---

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_into(self, buf: memoryview) -> int:
        self.calls["recv_into"] += 1
        n = self.sock.recv_into(buf)
        if n == 0:
            raise ConnectionResetError("peer closed")
        return n

    def send(self, parts) -> bool:
        self.calls["send"] += 1
        if self.fail_send is not None:
            error, self.fail_send = self.fail_send, None
            raise error
        try:
            self.sock.sendmsg([bytes(p) for p in parts])
        except BlockingIOError:
            return False
        return True

    def flush(self) -> bool:
        self.calls["flush"] += 1
        return True

    def offloads(self) -> int:
        return self._offloads

    def set_offloads(self, negotiated: int) -> None:
        self.negotiated.append(negotiated)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        self.peer.close()

    # --- the test's end ---

    def feed(self, frame: bytes) -> None:
        """A frame for the device to receive."""
        self.peer.send(frame)

    def sent(self) -> list[bytes]:
        """The frames the device sent since the last call."""
        frames = []
        while True:
            try:
                frames.append(self.peer.recv(1 << 17))
            except BlockingIOError:
                return frames
