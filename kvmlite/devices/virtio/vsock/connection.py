"""One vsock stream between a guest port and a host Unix stream socket.

The device is the host end of the vsock connection (virtio 1.2 §5.10.6.3):
it receives what the guest sends and relays it to ``sock``, and sends the
guest what it reads from ``sock``.  This class keeps the connection's state
and its flow-control counters and does the socket I/O; it knows nothing of
queues or guest memory beyond the ``memoryview``s it is handed.

Flow control (§5.10.6.3, "credit"): each side advertises ``buf_alloc`` (its
receive buffer) and ``fwd_cnt`` (bytes it has taken out of that buffer so
far) in every packet it sends; a sender may have at most ``peer buf_alloc -
(tx_cnt - peer fwd_cnt)`` bytes in flight.  Counters are u32 and wrap.

* Guest to host: what the Unix socket does not take at once waits in
  ``out``; ``fwd_cnt`` counts the bytes written to the socket.  A guest
  that sends more than the credit advertised to it is hostile
  (:meth:`over_credit`), so ``out`` never holds more than ``buf_alloc``.
* Host to guest: the device reads the socket only while the guest has
  credit (:meth:`peer_credit`) and never more than that into one packet.

Threads: used only on the device's event loop, under the device's lock.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field
from typing import Sequence

from kvmlite.base.eventloop import Timer
from kvmlite.devices.virtio.vsock.packet import SHUTDOWN_SEND, U32, Header

_NOSIGNAL = socket.MSG_NOSIGNAL


class State(enum.Enum):
    CONNECTING = "connecting"       # host-initiated: REQUEST sent to the guest, no RESPONSE yet
    ESTABLISHED = "established"
    CLOSING = "closing"             # both sides done: draining ``out`` or waiting for the guest's RST


@dataclass(eq=False)
class Connection:
    """The connection (``local_port`` on the host, ``peer_port`` in the guest)."""

    local_port: int
    peer_port: int
    sock: socket.socket
    buf_alloc: int                      # what we advertise: the most ``out`` may hold
    host_initiated: bool
    state: State = State.ESTABLISHED
    # host -> guest: the guest is the receiver
    peer_buf_alloc: int = 0
    peer_fwd_cnt: int = 0
    tx_cnt: int = 0                     # payload bytes sent to the guest
    # guest -> host: we are the receiver
    rx_cnt: int = 0                     # payload bytes received from the guest
    fwd_cnt: int = 0                    # of those, written to the Unix socket
    advertised_fwd_cnt: int = 0         # the fwd_cnt of the last packet we sent
    out: bytearray = field(default_factory=bytearray)
    peer_shutdown: int = 0              # SHUTDOWN flags the guest sent
    local_shutdown: int = 0             # SHUTDOWN flags we sent
    sock_shut_wr: bool = False          # the stream was shutdown(SHUT_WR) for the guest's SHUTDOWN SEND
    # the device's bookkeeping
    reading: bool = False               # the loop watches ``sock`` for data
    writing: bool = False               # the loop watches ``sock`` for room
    queued: bool = False                # waits in the device's queue for an rx buffer
    credit_update: bool = False         # a CREDIT_UPDATE is queued for the guest
    credit_requested: bool = False      # we asked the guest for credit and heard nothing since
    timer: Timer | None = None
    closed: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return self.local_port, self.peer_port

    # --- host -> guest credit ---

    def note_peer_credit(self, header: Header) -> None:
        """Every packet from the guest carries its current buf_alloc and fwd_cnt."""
        if (header.buf_alloc, header.fwd_cnt) != (self.peer_buf_alloc, self.peer_fwd_cnt):
            self.peer_buf_alloc, self.peer_fwd_cnt = header.buf_alloc, header.fwd_cnt
            self.credit_requested = False       # news: ask again if it is still not enough

    def peer_credit(self) -> int:
        """Bytes the guest can take now; 0 when a hostile fwd_cnt runs ahead."""
        return max(0, self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & U32))

    def recv_into(self, views: Sequence[memoryview]) -> int:
        """Read from the Unix socket into ``views`` (a packet's payload);
        0 at end of stream.  BlockingIOError when nothing waits; another
        OSError when the socket is broken."""
        n = self.sock.recvmsg_into(views)[0]
        self.tx_cnt = (self.tx_cnt + n) & U32
        return n

    # --- guest -> host ---

    def over_credit(self, length: int) -> bool:
        """Whether ``length`` more bytes from the guest exceed the credit we
        advertised (it may not have seen a later fwd_cnt yet, never an earlier one)."""
        return ((self.rx_cnt - self.advertised_fwd_cnt) & U32) + length > self.buf_alloc

    def forward(self, views: Sequence[memoryview]) -> None:
        """Relay a payload to the Unix socket; what it does not take now is
        kept in ``out`` (bounded by :meth:`over_credit`, checked first).
        ConnectionError (or another OSError) when the socket is broken."""
        total = sum(len(v) for v in views)
        self.rx_cnt = (self.rx_cnt + total) & U32
        sent = 0
        if not self.out:
            try:
                sent = self.sock.sendmsg(views, [], _NOSIGNAL)
            except BlockingIOError:
                sent = 0
        self.fwd_cnt = (self.fwd_cnt + sent) & U32
        if sent < total:
            self.out += b"".join(views)[sent:]

    def flush(self) -> bool:
        """Write what waits in ``out``; True once nothing does.  OSError
        (ConnectionError...) when the socket is broken."""
        while self.out:
            try:
                sent = self.sock.send(self.out, _NOSIGNAL)
            except BlockingIOError:
                return False
            del self.out[:sent]
            self.fwd_cnt = (self.fwd_cnt + sent) & U32
        return True

    def wants_credit_update(self) -> bool:
        """Whether to tell the guest about room it does not know of: it has
        used over half the credit it last saw, and either a quarter of the
        buffer came free since or the buffer is empty (so a slow reader
        does not cost a packet per byte, and a stalled guest always hears)."""
        stale = (self.fwd_cnt - self.advertised_fwd_cnt) & U32
        if not stale:
            return False
        seen_free = self.buf_alloc - ((self.rx_cnt - self.advertised_fwd_cnt) & U32)
        return seen_free < self.buf_alloc // 2 and (stale >= self.buf_alloc // 4 or not self.out)

    # --- shutdown ---

    @property
    def guest_done_sending(self) -> bool:
        return bool(self.peer_shutdown & SHUTDOWN_SEND)

    @property
    def host_done_sending(self) -> bool:
        return bool(self.local_shutdown & SHUTDOWN_SEND)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.sock.close()
