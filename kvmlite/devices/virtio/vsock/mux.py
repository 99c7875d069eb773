"""The vsock connection table: guest packets in, host streams out, and
what goes into each rx buffer (virtio 1.2 §5.10.6).

Connections are keyed ``(host port, guest port)``.  Every packet the guest
sends has passed :func:`~.packet.tx_problem` (address, type, op, length)
before :meth:`Muxer.receive` acts on it.

Host-initiated (Firecracker's hybrid vsock): once a host stream has sent
its ``CONNECT <port>\\n`` line (:mod:`.host`), the guest gets a REQUEST
from a fresh host port (from 2**30 up) and has ``connect_timeout`` seconds
to answer: RESPONSE writes ``OK <host port>\\n`` to the stream and the
relay starts; RST (no listener) or silence closes the stream.

Guest-initiated: a REQUEST to port P connects to ``<uds_path>_P`` without
blocking (a Unix connect succeeds or fails at once): RESPONSE or RST.

Shutdown (§5.10.6.4, as Linux and Firecracker do it):

* the guest sends SHUTDOWN SEND: once ``out`` has drained, the stream is
  ``shutdown(SHUT_WR)`` and the host reads end-of-file; SHUTDOWN RCV: the
  stream is no longer read;
* both flags (the guest's ``close()``): ``out`` drains (at most
  ``close_timeout`` seconds), the stream is closed and the guest gets the
  RST its close waits for;
* the host half-closes (end-of-file, the peer still there): SHUTDOWN SEND,
  and guest data still flows to the host; the host closes (end-of-file and
  POLLHUP): SHUTDOWN RCV|SEND, and the guest has ``close_timeout`` seconds
  to answer RST before the device sends one and forgets the connection;
* a stream that breaks (EPIPE, ECONNRESET) gets the guest an RST; an RST
  from the guest closes the stream.

What goes into an rx buffer: queued control packets first (RESPONSE, RST,
REQUEST, CREDIT_UPDATE...; at most ``control_backlog``, after which the
device stops reading the tx queue until the guest takes some), then data,
round-robin over the streams that were readable while the guest had credit
for them.  A stream is read only then: no rx buffers or no credit means it
is not read at all, so nothing queues up in the VMM.

Threads and locks: every method runs under the device's lock, on the
device's loop thread (``drop_all`` and ``close`` also from the transport's
thread, with the lock).  Loop callbacks and timers go through ``guard``,
which takes that lock and then lets the device move packets.
"""

from __future__ import annotations

import functools
import logging
import select
import socket
from collections import deque
from dataclasses import dataclass

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from kvmlite.devices.virtio.iov import Segments
from kvmlite.devices.virtio.ratelimit import RateLimitedLog
from kvmlite.devices.virtio.vsock import unix
from kvmlite.devices.virtio.vsock.host import Acceptor, Guard
from kvmlite.devices.virtio.vsock.connection import Connection, State
from kvmlite.devices.virtio.vsock.packet import (HEADER_SIZE, HOST_CID, MAX_PAYLOAD, SHUTDOWN_BOTH, SHUTDOWN_RCV,
                                                 SHUTDOWN_SEND, TYPE_STREAM, Header, Op, Verdict, reply_header,
                                                 tx_problem)

log = logging.getLogger(__name__)

FIRST_HOST_PORT = 1 << 30           # host ports for host-initiated connections (Firecracker's choice)
LAST_HOST_PORT = 0xFFFF_FFFE


@dataclass(frozen=True)
class VsockLimits:
    """Bounds on what the host side and a hostile guest can make the device hold."""

    buf_alloc: int = 256 * 1024     # per connection: guest bytes the Unix peer has not taken yet
    max_connections: int = 256      # connections and CONNECT handshakes together
    handshake_timeout: float = 5.0  # seconds for a host stream to send its CONNECT line
    connect_timeout: float = 5.0    # seconds for the guest to answer a REQUEST
    close_timeout: float = 8.0      # seconds for a closing connection (Linux's VSOCK_CLOSE_TIMEOUT)
    control_backlog: int = 256      # control packets waiting for rx buffers before tx stops


class Muxer:
    """The connections of one vsock device whose guest has ``guest_cid``."""

    def __init__(self, guest_cid: int, uds_path: str, loop: EventLoop, limits: VsockLimits,
                 stats: dict[str, int], guard: Guard) -> None:
        self.guest_cid = guest_cid
        self.uds_path = uds_path
        self.loop = loop
        self.limits = limits
        self.stats = stats
        self.guard = guard
        self.active = False             # a driver is there (the device sets it)
        self.conns: dict[tuple[int, int], Connection] = {}
        self._control: deque[tuple[Connection | None, Header]] = deque()
        self._ready: deque[Connection] = deque()
        self._next_port = FIRST_HOST_PORT
        self._host_ports: set[int] = set()
        self._errors = RateLimitedLog(log)
        self.acceptor = Acceptor(unix.Listener(uds_path), loop, guard, limits.handshake_timeout,
                                 admit=self._admit, connect=self._connect_guest, error=self._host_error)

    # --- what the device asks ---

    def backlogged(self) -> bool:
        """Too many control packets wait for rx buffers: stop reading tx."""
        return len(self._control) >= self.limits.control_backlog

    def has_rx(self) -> bool:
        """Whether :meth:`fill` has a packet for the next rx buffer."""
        while self._control and self._control[0][0] is not None and self._control[0][0].closed:
            self._control.popleft()     # a packet of a connection gone since
        while self._ready and (self._ready[0].closed or not self._may_send(self._ready[0])):
            self._ready.popleft().queued = False
        return bool(self._control or self._ready)

    def close(self) -> None:
        """Drop every connection and stop listening; removes the socket file."""
        self.drop_all()
        self.acceptor.close()

    def drop_all(self) -> None:
        """Close every stream and handshake, forget every queued packet (a
        reset: the guest forgets its side too)."""
        for conn in list(self.conns.values()):
            self._forget(conn)
        self.acceptor.drop_all()
        self._control.clear()
        self._ready.clear()

    # --- the host side: a stream's CONNECT line ---

    def _admit(self) -> str | None:
        """Why a new host stream may not wait for its CONNECT line, or None."""
        if not self.active:
            return "no driver"
        if len(self.conns) + len(self.acceptor) >= self.limits.max_connections:
            return f"{self.limits.max_connections} connections open"
        return None

    def _connect_guest(self, sock: socket.socket, port: int) -> None:
        """A host stream asked for guest ``port``: send the guest a REQUEST."""
        local = self._allocate_port()
        if local is None or not self.active:
            self._host_error(f"CONNECT {port} refused: {'no driver' if not self.active else 'no free host port'}")
            sock.close()
            return
        conn = Connection(local, port, sock, self.limits.buf_alloc, True, State.CONNECTING)
        self.conns[conn.key] = conn
        self._host_ports.add(local)
        conn.timer = self.loop.call_later(self.limits.connect_timeout,
                                          self.guard(functools.partial(self._connect_expired, conn)))
        self._queue(conn, Op.REQUEST)

    def _allocate_port(self) -> int | None:
        for _ in range(len(self._host_ports) + 1):
            port = self._next_port
            self._next_port = port + 1 if port < LAST_HOST_PORT else FIRST_HOST_PORT
            if port not in self._host_ports:
                return port
        return None

    def _connect_expired(self, conn: Connection) -> None:
        if not conn.closed and conn.state is State.CONNECTING:
            self._host_error(f"guest port {conn.peer_port} did not answer in {self.limits.connect_timeout:g} s")
            self._kill(conn, rst=True)

    # --- guest packets (tx) ---

    def receive(self, header: Header, memory: GuestMemory, body: Segments, payload: int) -> None:
        """One packet from the guest, ``payload`` bytes in ``body`` after its header."""
        problem = tx_problem(header, payload, self.guest_cid)
        if problem is not None:
            verdict, why = problem
            self._refuse(header, f"packet dropped: {why}", rst=verdict is Verdict.RESET)
            return
        conn = self.conns.get((header.dst_port, header.src_port))
        if header.op == Op.REQUEST:
            self._guest_connect(header, conn)
        elif conn is None:
            self.stats["dropped"] += 1
            if header.op != Op.RST:     # never answer an RST with one
                self._queue_rst(header)
        else:
            conn.note_peer_credit(header)
            self._on_conn_packet(conn, header, memory, body)
            if not conn.closed:
                self._update_reading(conn)

    def _refuse(self, header: Header, why: str, rst: bool) -> None:
        self.stats["errors" if rst else "dropped"] += 1
        self._errors.warning(f"virtio-vsock: {why}")
        if rst and header.op != Op.RST:
            self._queue_rst(header)

    def _guest_connect(self, header: Header, existing: Connection | None) -> None:
        """A REQUEST: connect to ``<uds_path>_<port>``, RESPONSE or RST."""
        if existing is not None:
            self._refuse(header, f"REQUEST for guest port {header.src_port} to host port {header.dst_port}, "
                                 "already connected", rst=True)
            return
        if len(self.conns) + len(self.acceptor) >= self.limits.max_connections:
            self._refuse(header, f"REQUEST refused: {self.limits.max_connections} connections open", rst=True)
            return
        try:
            sock = unix.connect_port(self.uds_path, header.dst_port)
        except OSError:
            self._queue_rst(header)     # no one listens: the guest's connect() gets ECONNRESET
            return
        conn = Connection(header.dst_port, header.src_port, sock, self.limits.buf_alloc, False)
        conn.note_peer_credit(header)
        self.conns[conn.key] = conn
        self.stats["connections"] += 1
        self._queue(conn, Op.RESPONSE)
        self._update_reading(conn)

    def _on_conn_packet(self, conn: Connection, header: Header, memory: GuestMemory, body: Segments) -> None:
        op = header.op
        if op == Op.RST:
            self._kill(conn, rst=False)
        elif op == Op.RESPONSE:
            self._on_response(conn, header)
        elif conn.state is State.CONNECTING:
            self._refuse(header, f"{Op(op).name} before the guest answered the REQUEST", rst=True)
            self._kill(conn, rst=False)
        elif op == Op.RW:
            self._on_data(conn, header, memory, body)
        elif op == Op.SHUTDOWN:
            self._on_shutdown(conn, header.flags & SHUTDOWN_BOTH)
        elif op == Op.CREDIT_REQUEST:
            self._queue_credit_update(conn)
        # CREDIT_UPDATE: its credit is taken above, like every packet's

    def _on_response(self, conn: Connection, header: Header) -> None:
        if conn.state is not State.CONNECTING:
            self._refuse(header, f"RESPONSE on a connection that is {conn.state.value}", rst=True)
            self._kill(conn, rst=False)
            return
        conn.state = State.ESTABLISHED
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        try:
            conn.sock.send(f"OK {conn.local_port}\n".encode(), socket.MSG_NOSIGNAL)
        except OSError:                 # a fresh stream has room for a line: the host is gone
            self._kill(conn, rst=True)
            return
        self.stats["connections"] += 1

    def _on_data(self, conn: Connection, header: Header, memory: GuestMemory, body: Segments) -> None:
        if conn.state is State.CLOSING and conn.host_done_sending and conn.local_shutdown & SHUTDOWN_RCV:
            self.stats["dropped"] += 1  # sent before the guest saw our SHUTDOWN: the host is gone
            return
        if conn.guest_done_sending or conn.state is State.CLOSING:
            self._refuse(header, f"data after the guest's SHUTDOWN on guest port {conn.peer_port}", rst=True)
            self._kill(conn, rst=False)
            return
        if conn.over_credit(header.len):
            self._refuse(header, f"{header.len} bytes beyond the credit given to guest port {conn.peer_port}",
                         rst=True)
            self._kill(conn, rst=False)
            return
        views = [memory.view(a, n) for a, n in zip(body.addrs, body.lens) if n]
        try:
            conn.forward(views)
        except OSError:
            self._kill(conn, rst=True)  # the host end is gone
            return
        finally:
            for view in views:
                view.release()
        self.stats["tx_bytes"] += header.len
        self._after_output(conn)

    def _on_shutdown(self, conn: Connection, flags: int) -> None:
        conn.peer_shutdown |= flags
        if conn.state is State.CLOSING:
            if conn.local_shutdown == SHUTDOWN_BOTH and conn.peer_shutdown == SHUTDOWN_BOTH:
                self._kill(conn, rst=True)      # both ends closed: the RST ends it
            return
        if conn.peer_shutdown == SHUTDOWN_BOTH:
            conn.state = State.CLOSING
            self._set_reading(conn, False)
            conn.timer = self.loop.call_later(self.limits.close_timeout,
                                              self.guard(functools.partial(self._close_expired, conn)))
        self._after_output(conn)

    # --- the host stream: room to write ---

    def _after_output(self, conn: Connection) -> None:
        """``out`` may have changed: wait for room, half-close, finish a
        close the guest asked for, tell the guest of free room."""
        if conn.out:
            self._set_writing(conn, True)
            return
        self._set_writing(conn, False)
        if conn.guest_done_sending and not conn.sock_shut_wr:
            conn.sock_shut_wr = True
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if conn.state is State.CLOSING and conn.peer_shutdown == SHUTDOWN_BOTH:
            self._kill(conn, rst=True)  # the RST the guest's close() waits for
        elif conn.wants_credit_update():
            self._queue_credit_update(conn)

    def _writable(self, conn: Connection) -> None:
        if conn.closed:
            return
        try:
            conn.flush()
        except OSError:
            self._kill(conn, rst=True)
            return
        self._after_output(conn)

    def _close_expired(self, conn: Connection) -> None:
        if not conn.closed:
            self._kill(conn, rst=True)

    # --- the host stream: data for the guest ---

    def _update_reading(self, conn: Connection) -> None:
        """Read the stream exactly while its data has somewhere to go."""
        may_send = self._may_send(conn)
        self._set_reading(conn, may_send and not conn.queued and conn.peer_credit() > 0)
        if may_send and not conn.peer_credit() and not conn.credit_requested:
            conn.credit_requested = True
            self._queue(conn, Op.CREDIT_REQUEST)

    def _set_reading(self, conn: Connection, on: bool) -> None:
        if on != conn.reading:
            if on:
                self.loop.add_reader(conn.sock.fileno(), self.guard(functools.partial(self._readable, conn)))
            else:
                self.loop.remove_reader(conn.sock.fileno())
            conn.reading = on

    def _set_writing(self, conn: Connection, on: bool) -> None:
        if on != conn.writing:
            if on:
                self.loop.add_writer(conn.sock.fileno(), self.guard(functools.partial(self._writable, conn)))
            else:
                self.loop.remove_writer(conn.sock.fileno())
            conn.writing = on

    def _readable(self, conn: Connection) -> None:
        """Data (or end-of-file) waits: queue the stream for an rx buffer
        and stop watching it until it has one."""
        if conn.closed or not conn.reading:
            return
        self._set_reading(conn, False)
        conn.queued = True
        self._ready.append(conn)

    # --- rx buffers ---

    def fill(self, memory: GuestMemory, buffers: Segments, room: int) -> int | None:
        """Write the next packet for the guest into ``buffers`` (an rx
        chain's writable part, ``room`` >= HEADER_SIZE bytes); the bytes
        written, or None when nothing waits."""
        while self._control:
            conn, header = self._control.popleft()
            if conn is not None:
                if conn.closed:
                    continue
                header = self._refresh(conn, header)
            return self._put(memory, buffers, header)
        while self._ready:
            conn = self._ready.popleft()
            conn.queued = False
            if not conn.closed and self._may_send(conn):
                return self._fill_data(conn, memory, buffers, room)
        return None

    @staticmethod
    def _may_send(conn: Connection) -> bool:
        """Whether host data may still go to the guest on ``conn``."""
        return (conn.state is State.ESTABLISHED and not conn.host_done_sending
                and not conn.peer_shutdown & SHUTDOWN_RCV)

    def _put(self, memory: GuestMemory, buffers: Segments, header: Header) -> int:
        buffers.scatter(memory, header.pack())
        self.stats["rx_packets"] += 1
        if header.op == Op.RST:
            self.stats["rst_sent"] += 1
        return HEADER_SIZE + header.len

    def _refresh(self, conn: Connection, header: Header) -> Header:
        """A queued packet of ``conn`` with its credit as of now."""
        if header.op == Op.CREDIT_UPDATE:
            conn.credit_update = False
        conn.advertised_fwd_cnt = conn.fwd_cnt
        return header._replace(buf_alloc=conn.buf_alloc, fwd_cnt=conn.fwd_cnt)

    def _fill_data(self, conn: Connection, memory: GuestMemory, buffers: Segments, room: int) -> int:
        limit = min(room - HEADER_SIZE, conn.peer_credit(), MAX_PAYLOAD)
        if limit <= 0:
            # No credit left (the guest shrank its buffer) or a chain with room for a header
            # only: this chain carries a credit update instead, and the stream waits.
            self._update_reading(conn)
            return self._put(memory, buffers, self._header(conn, Op.CREDIT_UPDATE))
        _, body = buffers.split_at(HEADER_SIZE)
        body = body.split_at(limit)[0]
        views = [memory.view(a, n) for a, n in zip(body.addrs, body.lens) if n]
        try:
            n = conn.recv_into(views)
        except BlockingIOError:
            n = None
        except OSError:
            n = -1
        finally:
            for view in views:
                view.release()
        return self._deliver(conn, memory, buffers, n, limit)

    def _deliver(self, conn: Connection, memory: GuestMemory, buffers: Segments, n: int | None,
                 limit: int) -> int:
        """The header for what ``recv_into`` gave: data, end-of-file
        (SHUTDOWN), nothing after all (a credit update), a broken stream (RST)."""
        if n is None:
            self._update_reading(conn)
            return self._put(memory, buffers, self._header(conn, Op.CREDIT_UPDATE))
        if n < 0:
            header = self._header(conn, Op.RST)
            self._kill(conn, rst=False)
            return self._put(memory, buffers, header)
        if n == 0:
            return self._put(memory, buffers, self._host_eof(conn))
        self.stats["rx_bytes"] += n
        if n == limit and conn.peer_credit():
            conn.queued = True          # probably more: come back after the others
            self._ready.append(conn)
        else:
            self._update_reading(conn)
        return self._put(memory, buffers, self._header(conn, Op.RW, length=n))

    def _host_eof(self, conn: Connection) -> Header:
        """The host stream ended: SHUTDOWN SEND for a half-close, both
        flags when the peer is gone altogether (then wait for the RST)."""
        gone = _peer_gone(conn.sock)
        flags = SHUTDOWN_BOTH if gone else SHUTDOWN_SEND
        conn.local_shutdown |= flags
        header = self._header(conn, Op.SHUTDOWN, flags=flags)
        if gone:
            conn.state = State.CLOSING
            conn.out.clear()
            self._set_writing(conn, False)
            if conn.timer is not None:
                conn.timer.cancel()
            conn.timer = self.loop.call_later(self.limits.close_timeout,
                                              self.guard(functools.partial(self._close_expired, conn)))
        return header

    # --- queued packets ---

    def _header(self, conn: Connection, op: Op, *, flags: int = 0, length: int = 0) -> Header:
        conn.advertised_fwd_cnt = conn.fwd_cnt
        return Header(HOST_CID, self.guest_cid, conn.local_port, conn.peer_port, length, TYPE_STREAM, op,
                      flags, conn.buf_alloc, conn.fwd_cnt)

    def _queue(self, conn: Connection, op: Op, flags: int = 0) -> None:
        header = Header(HOST_CID, self.guest_cid, conn.local_port, conn.peer_port, 0, TYPE_STREAM, op, flags,
                        conn.buf_alloc, conn.fwd_cnt)
        self._control.append((conn, header))

    def _queue_credit_update(self, conn: Connection) -> None:
        if not conn.credit_update:
            conn.credit_update = True
            self._queue(conn, Op.CREDIT_UPDATE)

    def _queue_rst(self, to: Header) -> None:
        self._control.append((None, reply_header(to, Op.RST, self.guest_cid)))

    def _kill(self, conn: Connection, rst: bool) -> None:
        """Forget ``conn`` and close its stream; with ``rst`` the guest is told."""
        if rst:
            self._control.append((None, self._header(conn, Op.RST)))
        self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        if self.conns.get(conn.key) is conn:
            del self.conns[conn.key]
        if conn.host_initiated:
            self._host_ports.discard(conn.local_port)
        self._set_reading(conn, False)
        self._set_writing(conn, False)
        conn.close()

    def _host_error(self, why: str) -> None:
        self.stats["host_errors"] += 1
        self._errors.warning(f"virtio-vsock: {why}")


def _peer_gone(sock: socket.socket) -> bool:
    """After end-of-file: whether the peer closed altogether (POLLHUP: both
    directions shut on our end), not just its writing half."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return any(mask & select.POLLHUP for _, mask in poller.poll(0))

