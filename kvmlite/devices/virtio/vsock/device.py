"""virtio-vsock (virtio 1.2 §5.10, device ID 19) over host Unix sockets.

Queues (§5.10.2): rx (0) carries packets to the guest, tx (1) packets from
it, event (2) events to it.  Configuration space (§5.10.4): ``le64
guest_cid``, read-only.  Features: VERSION_1, INDIRECT_DESC, EVENT_IDX and
VIRTIO_VSOCK_F_STREAM (stream sockets are all there is; SEQPACKET is not
offered).  The host side is Firecracker's hybrid vsock
(:mod:`.unix`, :mod:`.mux`, docs/vsock.md).

Threads and locks.  Everything runs on ``loop``, the device's event loop,
never on a vCPU thread: it serves the Unix listener and streams, the
timers, and (through the transport) the queue doorbells; a
``queue_notify`` or ``transport_reset`` from any other thread is handed to
it with ``call_soon``.  ``_lock`` guards the activation, the connection
table and the counters: loop callbacks take it alone; the transport calls
``activate``, ``reset`` and ``queue_notify`` with its own lock held, so
the order is the transport's lock, then ``_lock``.  Interrupts and
``on_needs_reset`` are called with ``_lock`` released.  ``reset`` and
``close`` take ``_lock``, so once they return nothing touches the old
activation's guest memory.

Each turn (a doorbell, a readable stream, a timer) moves packets: tx
chains into the muxer (at most TX_BUDGET per turn, and none while
``control_backlog`` control packets wait for rx buffers), then the
muxer's packets into rx chains (RX_BUDGET), then pending events.

Chains (the guest is hostile).  A tx chain must be device-readable only
and hold at least a header; an rx or event chain device-writable only and
big enough for a header (an event).  Others are returned with used length
0 and counted in ``errors``; the device goes on.  A packet is read only as
far as its checked ``len``; nothing is read or written outside a chain's
buffers.  A malformed ring (a loop, buffers outside RAM...) drops every
connection and asks for DEVICE_NEEDS_RESET, as the other devices do.

Snapshots.  The device's own state is the guest's CID and whether a driver
is active; the queues are the transport's.  Connections are host sockets
and do not survive a snapshot: after a restore, :meth:`transport_reset`
drops any that are left and posts VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, on
which the guest's driver resets every socket and reads the CID again
(§5.10.6.6).  Call it once the device is active again.

Counters (:meth:`VirtioVsock.stats`): ``connections`` established so far
and ``open`` now; ``rx_packets``/``rx_bytes`` packets and payload bytes to
the guest, ``tx_packets``/``tx_bytes`` from it; ``rst_sent``; ``dropped``
packets that had nowhere to go (for no connection, misaddressed); ``errors``
chains and packets refused as malformed; ``host_errors`` host streams
closed for a bad or missing CONNECT line or a guest that never answered;
``queue_errors`` malformed rings.
"""

from __future__ import annotations

import functools
import logging
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory, GuestMemoryError
from kvmlite.devices.virtio.device import (VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
                                           VIRTIO_ID_VSOCK, VirtioDevice, VirtioInterrupt)
from kvmlite.devices.virtio.queue import DescriptorChain, Queue, QueueError, pop_writable
from kvmlite.devices.virtio.ratelimit import RateLimitedLog
from kvmlite.base.state import Reader
from kvmlite.devices.virtio.vsock.mux import Muxer, VsockLimits
from kvmlite.devices.virtio.vsock.packet import (EVENT, EVENT_TRANSPORT_RESET, HEADER_SIZE, MAX_GUEST_CID,
                                                 MIN_GUEST_CID, VIRTIO_VSOCK_F_STREAM, Header)

log = logging.getLogger(__name__)

RXQ, TXQ, EVENTQ = 0, 1, 2
QUEUE_SIZE = 256                # Firecracker's
TX_BUDGET = 256                 # tx chains per turn before the loop serves others
RX_BUDGET = 256                 # rx chains per turn
STAT_NAMES = ("connections", "open", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rst_sent",
              "dropped", "errors", "host_errors", "queue_errors")
_CONFIG = struct.Struct("<Q")   # §5.10.4: le64 guest_cid


@dataclass(eq=False)
class _Activation:
    """What one DRIVER_OK..reset period uses."""

    memory: GuestMemory
    interrupt: VirtioInterrupt
    queues: tuple[Queue | None, Queue | None, Queue | None]     # rx, tx, event (None: not enabled)
    stopped: bool = False
    tx_pending: bool = True     # tx may hold chains (a doorbell, or posted before DRIVER_OK)
    events: int = 0             # events waiting for an event buffer (0 or 1: they coalesce)


@dataclass
class _Signals:
    """What to tell the driver once ``_lock`` is released."""

    used: set[int] = field(default_factory=set)
    notify: set[int] = field(default_factory=set)
    error: str | None = None


class VirtioVsock(VirtioDevice):
    """A vsock device for the guest ``guest_cid``, its host side at the Unix
    socket ``uds_path`` (bound here, mode 0600; VsockError when it cannot
    be), served on ``loop``.  :meth:`close` removes the socket file; the
    loop is its owner's."""

    device_type = VIRTIO_ID_VSOCK

    def __init__(self, guest_cid: int, uds_path: str, loop: EventLoop, *, queue_size: int = QUEUE_SIZE,
                 limits: VsockLimits = VsockLimits(), name: str = "virtio-vsock") -> None:
        super().__init__()
        if not MIN_GUEST_CID <= guest_cid <= MAX_GUEST_CID:
            raise ValueError(f"guest CID {guest_cid} is outside {MIN_GUEST_CID}..{MAX_GUEST_CID}")
        self.guest_cid = guest_cid
        self.uds_path = uds_path
        self.loop = loop
        self.name = name
        self.queue_max_sizes = (queue_size, queue_size, queue_size)
        self._lock = threading.Lock()
        self._active: _Activation | None = None
        self._closed = False
        self._errors = RateLimitedLog(log)
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._mux = Muxer(guest_cid, uds_path, loop, limits, self._stats, self._guarded)

    # --- VirtioDevice (the transport, under its lock) ---

    def device_features(self) -> int:
        return VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_VSOCK_F_STREAM

    def read_config(self, offset: int, data: memoryview) -> None:
        """``le64 guest_cid``; zeros past it."""
        config = _CONFIG.pack(self.guest_cid)
        chunk = config[offset:offset + len(data)] if offset >= 0 else b""
        data[:len(chunk)] = chunk
        data[len(chunk):] = bytes(len(data) - len(chunk))

    def activate(self, memory: GuestMemory, queues: list[Queue], driver_features: int,
                 interrupt: VirtioInterrupt) -> None:
        self.reset()
        ready = tuple(queue if queue.ready else None for queue in queues[:3])
        try:
            for queue in ready:
                if queue is not None:
                    queue.configure(memory, driver_features)
        except QueueError as exc:
            self._fail(str(exc))
            return
        active = _Activation(memory, interrupt, ready)      # type: ignore[arg-type]
        with self._lock:
            if self._closed:
                return
            self._active = active
            self._mux.active = True
        self._on_loop(functools.partial(self._serve, active))   # chains posted before DRIVER_OK

    def queue_notify(self, queue_index: int) -> None:
        """Served on the loop thread; handed to it from any other."""
        active = self._active
        if active is None or queue_index not in (RXQ, TXQ, EVENTQ):
            return
        self._on_loop(functools.partial(self._serve, active, queue_index))

    def reset(self) -> None:
        """The driver is gone: drop every connection (their host streams
        close) and every queued packet.  The listener stays."""
        with self._lock:
            active, self._active = self._active, None
            if active is not None:
                active.stopped = True
            self._mux.active = False
            if not self._closed:
                self._mux.drop_all()

    def stats(self) -> dict[str, int]:
        """The counters of the module docstring."""
        with self._lock:
            return self._stats | {"open": len(self._mux.conns)}

    # --- beyond the ABC ---

    def transport_reset(self) -> None:
        """Drop every connection and post VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
        to the driver (after a snapshot restore).  Any thread; done on the loop."""
        self._on_loop(functools.partial(self._run, self._transport_reset))

    # --- snapshots (kvmlite.base.state) ---

    def save_device_state(self) -> dict:
        """The guest's CID (§5.10.4); the queues are the transport's.  Host
        connections are sockets of this process and are not saved: the
        restored device resets the transport instead (§5.10.6.6)."""
        with self._lock:
            return {"guest_cid": self.guest_cid}

    def restore_device_state(self, state: dict) -> None:
        """Check the saved CID, then :meth:`transport_reset`: the driver
        (active again when the saved status had DRIVER_OK) gets
        VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, drops every socket it had, and
        reads the CID again, so a restore under another CID is allowed
        (§5.10.6.6)."""
        saved = Reader(state, self.name).int("guest_cid", MIN_GUEST_CID, MAX_GUEST_CID)
        if saved != self.guest_cid:
            log.info("%s: restored under guest CID %d (saved with %d)", self.name, self.guest_cid, saved)
        self.transport_reset()

    def close(self) -> None:
        """VM shutdown: reset, stop listening, remove the socket file.  Call
        without the transport's lock held."""
        self.reset()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._mux.close()

    def _transport_reset(self) -> None:
        self._mux.drop_all()
        if self._active is not None:
            self._active.events = 1

    # --- the loop ---

    def _on_loop(self, callback: Callable[[], None]) -> None:
        if self.loop.on_loop_thread():
            callback()
        else:
            self.loop.call_soon(callback)

    def _guarded(self, work: Callable[[], None]) -> Callable[[], None]:
        """A loop callback for the muxer: ``work`` under ``_lock``, then a turn."""
        return functools.partial(self._run, work)

    def _run(self, work: Callable[[], None]) -> None:
        signals = _Signals()
        with self._lock:
            if self._closed:
                return
            work()
            active = self._active
            if active is not None:
                self._turn(active, signals)
        self._tell(active, signals)

    def _serve(self, active: _Activation, queue_index: int | None = None) -> None:
        """A doorbell (or the first turn of an activation), on the loop."""
        signals = _Signals()
        with self._lock:
            if active is not self._active or active.stopped:
                return
            if queue_index == TXQ:
                active.tx_pending = True
            self._turn(active, signals)
        self._tell(active, signals)

    def _turn(self, active: _Activation, signals: _Signals) -> None:
        """Move packets both ways, ``_lock`` held; a malformed ring stops
        the activation."""
        try:
            more = self._transmit(active, signals)
            more |= self._receive(active, signals)
            # tx stopped for the backlog and rx has made room since: another turn, after the others
            more |= active.tx_pending and not self._mux.backlogged()
            self._post_events(active, signals)
            self._check_notify(active, signals)
        except (QueueError, GuestMemoryError) as exc:   # the latter a backstop: pop checked the buffers
            signals.error = str(exc)
            signals.notify = set(signals.used)
            active.stopped = True
            self._active = None
            self._mux.active = False
            self._mux.drop_all()
            return
        if more:
            self.loop.call_soon(functools.partial(self._serve, active))

    def _tell(self, active: _Activation | None, signals: _Signals) -> None:
        if active is not None:
            for index in sorted(signals.notify):
                active.interrupt.signal_used_queue(index)
        if signals.error is not None:
            self._fail(signals.error)

    def _check_notify(self, active: _Activation, signals: _Signals) -> None:
        for index in signals.used:
            queue = active.queues[index]
            if queue is not None and queue.needs_notification(active.memory):
                signals.notify.add(index)

    # --- tx: packets from the guest ---

    def _transmit(self, active: _Activation, signals: _Signals) -> bool:
        """Hand tx packets to the muxer; True when the budget ran out first."""
        queue, memory = active.queues[TXQ], active.memory
        if queue is None:
            active.tx_pending = False
            return False
        for _ in range(TX_BUDGET):
            if self._mux.backlogged():
                return False            # tx_pending stays: rx buffers resume it
            chain = queue.pop(memory)
            if chain is None:
                if queue.enable_notification(memory):
                    continue
                active.tx_pending = False
                return False
            try:
                self._take(memory, chain)
            finally:
                chain.release()
            queue.add_used(memory, chain.head, 0)   # the device writes nothing into a tx chain
            signals.used.add(TXQ)
        return True

    def _take(self, memory: GuestMemory, chain: DescriptorChain) -> None:
        if chain.nread != chain.count:
            self._refuse(f"tx chain {chain.head} has device-writable buffers")
            return
        if chain.readable_len < HEADER_SIZE:
            self._refuse(f"tx chain {chain.head} has {chain.readable_len} bytes, less than a packet header")
            return
        head, body = chain.readable_segments().split_at(HEADER_SIZE)
        self._stats["tx_packets"] += 1
        self._mux.receive(Header.unpack(head.gather(memory)), memory, body, chain.readable_len - HEADER_SIZE)

    # --- rx: packets to the guest ---

    def _receive(self, active: _Activation, signals: _Signals) -> bool:
        """Fill rx chains with the muxer's packets; True when the budget ran out first."""
        queue, memory = active.queues[RXQ], active.memory
        if queue is None:
            return False
        for _ in range(RX_BUDGET):
            if not self._mux.has_rx():
                return False
            chain = self._pop_writable(queue, memory, signals, RXQ, HEADER_SIZE)
            if chain is None:
                return False            # the streams wait, unread, for the driver's buffers
            try:
                written = self._mux.fill(memory, chain.writable_segments(), chain.writable_len) or 0
            finally:
                chain.release()
            queue.add_used(memory, chain.head, written)
            signals.used.add(RXQ)
        return True

    def _pop_writable(self, queue: Queue, memory: GuestMemory, signals: _Signals, index: int,
                      least: int) -> DescriptorChain | None:
        """The next chain that is device-writable only and holds at least
        ``least`` bytes; others go back unused.  None when the ring is empty."""
        def refused(chain: DescriptorChain) -> None:
            signals.used.add(index)
            self._refuse(f"queue {index} chain {chain.head} refused: {chain.readable_len} readable, "
                         f"{chain.writable_len} writable bytes")
        return pop_writable(queue, memory, least, refused)

    # --- the event queue ---

    def _post_events(self, active: _Activation, signals: _Signals) -> None:
        queue, memory = active.queues[EVENTQ], active.memory
        if not active.events or queue is None:
            return
        chain = self._pop_writable(queue, memory, signals, EVENTQ, EVENT.size)
        if chain is None:
            return                      # posted when the driver adds an event buffer
        try:
            chain.writable_segments().scatter(memory, EVENT.pack(EVENT_TRANSPORT_RESET))
        finally:
            chain.release()
        queue.add_used(memory, chain.head, EVENT.size)
        signals.used.add(EVENTQ)
        active.events = 0

    # --- errors ---

    def _refuse(self, message: str) -> None:
        self._stats["errors"] += 1
        self._errors.warning(f"{self.name}: {message}")

    def _fail(self, reason: str) -> None:
        """The driver broke a ring: ask for a reset (no lock held)."""
        with self._lock:
            self._stats["queue_errors"] += 1
        self._errors.warning(f"{self.name}: {reason}; device needs reset")
        self.on_needs_reset(reason)
