"""virtio-vsock (virtio 1.2 §5.10) with the hybrid host side: features and
the configuration space, the Unix listener (mode, stale files, removal),
host-initiated connections (CONNECT/OK) and guest-initiated ones
(``<path>_PORT``), data both ways under credit-based flow control, shutdown
in each direction and the close handshake, many connections at once,
reset, close and the transport-reset event.

A fake driver plays the guest on the three queues; the device runs on a
real event loop; the host side is real Unix sockets in a temporary
directory.  Every test leaves the process with the fds it found.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from kvmlite.devices.virtio.device import (VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
                                           VIRTIO_ID_VSOCK)
from kvmlite.devices.virtio.queue import Queue
from kvmlite.devices.virtio.vsock import VirtioVsock, VsockError, VsockLimits
from kvmlite.devices.virtio.vsock.device import EVENTQ, RXQ, TXQ
from kvmlite.devices.virtio.vsock.mux import FIRST_HOST_PORT
from kvmlite.devices.virtio.vsock.packet import (HEADER_SIZE, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
                                                 TYPE_STREAM, VIRTIO_VSOCK_F_SEQPACKET, VIRTIO_VSOCK_F_STREAM,
                                                 Header, Op)
from tests.unit.devices.virtio.fakedriver import (FakeDriver, NeedsResetRecorder, Posted, RecordingInterrupt,
                                                  call_on_loop, wait_until)

CID = 3
QUEUE = 64
RAM = 32 << 20
RX_BUF = 4096
GUEST_BUF = 64 * 1024           # the buf_alloc the fake guest advertises unless a test says otherwise
FAST = VsockLimits(buf_alloc=16 * 1024, handshake_timeout=0.3, connect_timeout=0.3, close_timeout=0.3)

pytestmark = pytest.mark.usefixtures("no_fd_leak")


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory(RAM)
    yield mem
    mem.close()


def guest_header(op: Op | int, src_port: int, dst_port: int, length: int = 0, *, flags: int = 0,
                 buf_alloc: int = GUEST_BUF, fwd_cnt: int = 0, type_: int = TYPE_STREAM, src_cid: int = CID,
                 dst_cid: int = HOST_CID) -> Header:
    """A header as the guest's driver writes one (to the host unless told)."""
    return Header(src_cid, dst_cid, src_port, dst_port, length, type_, int(op), flags, buf_alloc, fwd_cnt)


class VsockHarness:
    """One device; a fake driver on each of its queues; the host side at ``path``."""

    def __init__(self, memory: GuestMemory, loop: EventLoop, path: Path, *, limits: VsockLimits = FAST,
                 cid: int = CID) -> None:
        self.memory = memory
        self.loop = loop
        self.path = path
        self.device = VirtioVsock(cid, str(path), loop, queue_size=QUEUE, limits=limits)
        self.interrupt = RecordingInterrupt()
        self.resets = NeedsResetRecorder()
        self.device.on_needs_reset = self.resets
        self.rx_posted: dict[int, Posted] = {}
        self.inbox: list[tuple[Header, bytes]] = []
        self.refill = True
        self.host_socks: list[socket.socket] = []

    def activate(self, *, event_ready: bool = True) -> None:
        third = (RAM // 3) & ~0xFFFF
        self.rxq, self.txq, self.evq = Queue(QUEUE), Queue(QUEUE), Queue(QUEUE)
        self.rx = FakeDriver(self.memory, self.rxq, ring_base=0x1000, heap_end=third)
        self.tx = FakeDriver(self.memory, self.txq, ring_base=third, heap_end=2 * third)
        self.ev = FakeDriver(self.memory, self.evq, ring_base=2 * third)
        self.evq.ready = event_ready
        features = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX
        self.device.activate(self.memory, [self.rxq, self.txq, self.evq], features, self.interrupt)
        self.sync()

    def close(self) -> None:
        for sock in self.host_socks:
            sock.close()
        self.device.close()

    # --- the loop ---

    def sync(self) -> None:
        """Wait until the loop has run everything handed to it so far."""
        call_on_loop(self.loop, lambda: None)

    def notify(self, queue_index: int) -> None:
        self.device.queue_notify(queue_index)
        self.sync()

    def stat(self, name: str) -> int:
        return self.device.stats()[name]

    # --- the guest: tx ---

    def send(self, header: Header, payload: bytes = b"", *, notify: bool = True) -> Posted:
        self.tx.used()                  # frees the slots of chains the device returned
        posted = self.tx.add([header.pack() + payload])
        if notify:
            self.notify(TXQ)
        return posted

    # --- the guest: rx ---

    def post_rx(self, count: int = 16, size: int = RX_BUF) -> None:
        for _ in range(count):
            posted = self.rx.add([], [size])
            self.rx_posted[posted.head] = posted
        self.notify(RXQ)

    def collect(self) -> None:
        """Move delivered packets to ``inbox``; post as many fresh buffers."""
        used = self.rx.used()
        for head, length in used:
            posted = self.rx_posted.pop(head)
            data = b"".join(self.memory.read(a, n) for a, n in posted.writable)[:length]
            if length < HEADER_SIZE:
                self.inbox.append((Header(*([0] * 10)), data))
                continue
            header = Header.unpack(data[:HEADER_SIZE])
            self.inbox.append((header, data[HEADER_SIZE:]))
        if used and self.refill:
            self.post_rx(len(used))

    def expect(self, count: int = 1, timeout: float = 10.0) -> list[tuple[Header, bytes]]:
        """The next ``count`` packets the device sends the guest."""
        def enough() -> bool:
            self.collect()
            return len(self.inbox) >= count

        assert wait_until(enough, timeout), f"waited for {count} packets, got {self.inbox}"
        taken, self.inbox[:] = self.inbox[:count], self.inbox[count:]
        return taken

    def expect_one(self, op: Op | None = None) -> tuple[Header, bytes]:
        (header, payload), = self.expect(1)
        if op is not None:
            assert header.op == op, (Op(header.op).name, header)
        return header, payload

    def quiet(self) -> list[tuple[Header, bytes]]:
        """Whatever arrived by the time the loop is idle (usually nothing)."""
        self.sync()
        time.sleep(0.02)
        self.sync()
        self.collect()
        taken, self.inbox[:] = list(self.inbox), []
        return taken

    # --- the host ---

    def host_connect(self, port: int, line: bytes | None = None) -> socket.socket:
        """A host program connecting through the listener, its CONNECT line sent."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.host_socks.append(sock)
        sock.settimeout(5)
        sock.connect(str(self.path))
        line = f"CONNECT {port}\n".encode() if line is None else line
        if line:
            sock.sendall(line)
        return sock

    def host_listen(self, port: int) -> socket.socket:
        """A host program listening for guest connections to ``port``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.host_socks.append(sock)
        sock.settimeout(5)
        sock.bind(f"{self.path}_{port}")
        sock.listen(64)
        return sock

    def accept(self, listener: socket.socket) -> socket.socket:
        conn, _ = listener.accept()
        conn.settimeout(5)
        self.host_socks.append(conn)
        return conn

    # --- whole handshakes ---

    def open_from_host(self, guest_port: int, *, buf_alloc: int = GUEST_BUF) -> tuple[socket.socket, int]:
        """CONNECT, REQUEST, RESPONSE, OK: the host stream and the host port."""
        sock = self.host_connect(guest_port)
        request, _ = self.expect_one(Op.REQUEST)
        self.send(guest_header(Op.RESPONSE, guest_port, request.src_port, buf_alloc=buf_alloc))
        assert read_line(sock) == f"OK {request.src_port}\n".encode()
        return sock, request.src_port

    def open_from_guest(self, guest_port: int, host_port: int, listener: socket.socket, *,
                        buf_alloc: int = GUEST_BUF) -> socket.socket:
        """REQUEST to ``host_port``, RESPONSE, and the accepted host stream."""
        self.send(guest_header(Op.REQUEST, guest_port, host_port, buf_alloc=buf_alloc))
        response, _ = self.expect_one(Op.RESPONSE)
        assert (response.src_port, response.dst_port) == (host_port, guest_port)
        return self.accept(listener)


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
    return line


def closed_by_peer(sock: socket.socket) -> bool:
    """The device closed the stream: end-of-file, or a reset when it
    closed with bytes of ours still unread."""
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"end of stream after {len(data)} of {n} bytes"
        data += chunk
    return data


def send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    """``sock.sendall(data)`` on a thread: the test must take packets meanwhile."""
    thread = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    thread.start()
    return thread


def payload_of(packets: list[tuple[Header, bytes]]) -> bytes:
    return b"".join(payload for header, payload in packets if header.op == Op.RW)


@pytest.fixture
def sockdir(tmp_path: Path) -> Path:
    """A short directory for sockets: a Unix socket path has at most 107 bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vs") as directory:
        yield Path(directory)


@pytest.fixture
def make(memory: GuestMemory, loop: EventLoop, sockdir: Path) -> Iterator:
    made: list[VsockHarness] = []

    def factory(**kw: object) -> VsockHarness:
        harness = VsockHarness(memory, loop, sockdir / "v.sock", **kw)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.close()


@pytest.fixture
def vsock(make) -> VsockHarness:
    """An active device with 16 rx buffers posted."""
    harness = make()
    harness.activate()
    harness.post_rx()
    return harness


# --- features, configuration space, construction ---

def test_features_version_1_ring_features_and_stream_only(make) -> None:
    device = make().device

    features = device.device_features()

    assert features == VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_VSOCK_F_STREAM
    assert not features & VIRTIO_VSOCK_F_SEQPACKET
    assert device.device_type == VIRTIO_ID_VSOCK == 19
    assert len(device.queue_max_sizes) == 3


@pytest.mark.parametrize("offset, length, expected", [
    (0, 8, struct.pack("<Q", 0x1_2345_6789 & 0xFFFF_FFFF)),
    (0, 4, struct.pack("<I", 0x2345_6789)),
    (4, 4, bytes(4)),
    (6, 4, bytes(4)),
    (8, 4, bytes(4)),
])
def test_config_guest_cid_le64(memory, loop, sockdir: Path, offset: int, length: int, expected: bytes) -> None:
    device = VirtioVsock(0x2345_6789, str(sockdir / "c.sock"), loop)
    try:
        data = bytearray(length)

        device.read_config(offset, memoryview(data))

        assert bytes(data) == expected
    finally:
        device.close()


@pytest.mark.parametrize("cid", [0, 1, 2, 0xFFFF_FFFF, 1 << 32])
def test_construct_reserved_cid_refused(loop, sockdir: Path, cid: int) -> None:
    with pytest.raises(ValueError, match=f"guest CID {cid} is outside 3..4294967294"):
        VirtioVsock(cid, str(sockdir / "c.sock"), loop)
    assert not (sockdir / "c.sock").exists()


def test_listener_socket_mode_0600_and_removed_on_close(make) -> None:
    harness = make()
    st = os.lstat(harness.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600

    harness.device.close()

    assert not harness.path.exists()


def test_listener_stale_socket_file_is_replaced(make, sockdir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sockdir / "v.sock"))
    stale.close()                       # the file stays, no one listens: a VMM that died

    harness = make()

    assert stat.S_IMODE(os.lstat(harness.path).st_mode) == 0o600
    harness.activate()
    harness.post_rx()
    harness.host_connect(5)
    harness.expect_one(Op.REQUEST)


def test_listener_live_socket_refused_and_left_alone(loop, sockdir: Path) -> None:
    path = sockdir / "v.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(VsockError, match="is in use by another process"):
            VirtioVsock(CID, str(path), loop)
        assert path.exists()
    finally:
        live.close()


def test_listener_regular_file_refused(loop, sockdir: Path) -> None:
    (sockdir / "v.sock").write_text("data")
    with pytest.raises(VsockError, match="exists and is not a socket"):
        VirtioVsock(CID, str(sockdir / "v.sock"), loop)
    assert (sockdir / "v.sock").read_text() == "data"


def test_listener_path_too_long_refused_in_one_line(loop, sockdir: Path) -> None:
    with pytest.raises(VsockError, match=r"too long for a Unix socket \(1\d\d bytes, at most 107\)") as info:
        VirtioVsock(CID, str(sockdir / ("x" * 120)), loop)
    assert "\n" not in str(info.value)


def test_close_file_replaced_by_someone_else_is_left_alone(make) -> None:
    harness = make()
    os.unlink(harness.path)
    harness.path.write_text("theirs")

    harness.device.close()

    assert harness.path.read_text() == "theirs"


# --- host-initiated connections ---

def test_host_connect_guest_sees_request_and_host_reads_ok(vsock: VsockHarness) -> None:
    sock = vsock.host_connect(1234)

    request, payload = vsock.expect_one(Op.REQUEST)

    assert request == Header(HOST_CID, CID, request.src_port, 1234, 0, TYPE_STREAM, Op.REQUEST, 0,
                             FAST.buf_alloc, 0)
    assert request.src_port >= FIRST_HOST_PORT and payload == b""
    vsock.send(guest_header(Op.RESPONSE, 1234, request.src_port))
    assert read_line(sock) == f"OK {request.src_port}\n".encode()
    assert vsock.stat("connections") == 1 and vsock.stat("open") == 1


def test_host_connect_each_gets_a_fresh_host_port(vsock: VsockHarness) -> None:
    vsock.host_connect(7)
    vsock.host_connect(7)

    first, second = vsock.expect(2)

    assert first[0].src_port != second[0].src_port
    assert {first[0].dst_port, second[0].dst_port} == {7}


def test_host_connect_guest_rst_closes_host_stream(vsock: VsockHarness) -> None:
    sock = vsock.host_connect(99)
    request, _ = vsock.expect_one(Op.REQUEST)

    vsock.send(guest_header(Op.RST, 99, request.src_port))

    assert sock.recv(16) == b""         # no listener in the guest: the host reads end-of-file
    assert vsock.stat("open") == 0 and vsock.stat("connections") == 0


def test_host_connect_guest_never_answers_stream_closed_and_guest_told(vsock: VsockHarness) -> None:
    sock = vsock.host_connect(99)
    request, _ = vsock.expect_one(Op.REQUEST)

    assert sock.recv(16) == b""         # after connect_timeout

    rst, _ = vsock.expect_one(Op.RST)
    assert (rst.src_port, rst.dst_port) == (request.src_port, 99)
    assert vsock.stat("host_errors") == 1 and vsock.stat("open") == 0


def test_host_connect_data_right_after_the_line_is_kept_for_the_guest(vsock: VsockHarness) -> None:
    sock = vsock.host_connect(5, b"CONNECT 5\nearly bytes")
    request, _ = vsock.expect_one(Op.REQUEST)

    vsock.send(guest_header(Op.RESPONSE, 5, request.src_port))

    assert read_line(sock) == f"OK {request.src_port}\n".encode()
    header, payload = vsock.expect_one(Op.RW)
    assert payload == b"early bytes" and header.len == 11


@pytest.mark.parametrize("line", [
    b"CONNECT\n", b"CONNECT -1\n", b"CONNECT 4294967296\n", b"CONNECT 12345678901\n", b"connect 5\n",
    b"CONNECT 5 \n", b"CONNECT  5\n", b"CONNECT 5\r\n", b"CONNECT 0x10\n", b"\n", b"OK 5\n",
])
def test_host_malformed_connect_line_closes_stream(vsock: VsockHarness, line: bytes) -> None:
    sock = vsock.host_connect(0, line)

    assert sock.recv(16) == b""
    assert vsock.quiet() == []          # the guest hears nothing
    assert vsock.stat("host_errors") == 1


def test_host_connect_line_too_long_closes_stream(vsock: VsockHarness) -> None:
    sock = vsock.host_connect(0, b"CONNECT " + b"0" * 40)

    assert closed_by_peer(sock)
    assert vsock.stat("host_errors") == 1


def test_host_connect_line_never_finished_closes_stream_after_timeout(vsock: VsockHarness) -> None:
    sock = vsock.host_connect(0, b"CONN")
    start = time.monotonic()

    assert sock.recv(16) == b""

    assert time.monotonic() - start >= FAST.handshake_timeout * 0.9
    assert vsock.stat("host_errors") == 1 and vsock.quiet() == []


def test_host_connect_closed_before_its_line_is_forgotten(vsock: VsockHarness) -> None:
    sock = vsock.host_connect(0, b"CONNECT 5")

    sock.close()

    assert wait_until(lambda: vsock.stat("host_errors") == 1)
    assert vsock.quiet() == [] and vsock.stat("open") == 0


def test_host_accept_out_of_fds_rests_then_listens_again(vsock: VsockHarness, monkeypatch) -> None:
    import errno

    from kvmlite.devices.virtio.vsock import host

    monkeypatch.setattr(host, "ACCEPT_PAUSE", 0.05)
    listener = vsock.device._mux.acceptor.listener
    real_accept = listener.accept
    until = time.monotonic() + 0.25     # out of fds for a quarter of a second
    calls = []

    def accept():
        calls.append(1)
        if time.monotonic() < until:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_accept()

    monkeypatch.setattr(listener, "accept", accept)

    vsock.host_connect(5)

    vsock.expect_one(Op.REQUEST)        # once fds are back, from the backlog
    assert len(calls) <= 12             # a try per pause, not a spin on the readable listener
    assert 2 <= vsock.stat("host_errors") <= 7


def test_host_connect_port_0_and_max_accepted(vsock: VsockHarness) -> None:
    vsock.host_connect(0)
    vsock.host_connect(0xFFFF_FFFF)

    ports = sorted(header.dst_port for header, _ in vsock.expect(2))

    assert ports == [0, 0xFFFF_FFFF]


def test_host_connect_without_driver_closed_at_once(make) -> None:
    harness = make()                     # never activated

    sock = harness.host_connect(5, b"")

    assert closed_by_peer(sock)
    assert harness.stat("host_errors") == 1


# --- guest-initiated connections ---

def test_guest_connect_with_listener_gets_response_and_host_accepts(vsock: VsockHarness) -> None:
    listener = vsock.host_listen(52)

    vsock.send(guest_header(Op.REQUEST, 2000, 52))

    response, _ = vsock.expect_one(Op.RESPONSE)
    assert response == Header(HOST_CID, CID, 52, 2000, 0, TYPE_STREAM, Op.RESPONSE, 0, FAST.buf_alloc, 0)
    host = vsock.accept(listener)
    host.sendall(b"hello guest")
    header, payload = vsock.expect_one(Op.RW)
    assert payload == b"hello guest" and (header.src_port, header.dst_port) == (52, 2000)


def test_guest_connect_without_listener_gets_rst(vsock: VsockHarness) -> None:
    vsock.send(guest_header(Op.REQUEST, 2000, 53))

    rst, _ = vsock.expect_one(Op.RST)

    assert (rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port) == (HOST_CID, CID, 53, 2000)
    assert vsock.stat("open") == 0 and vsock.stat("rst_sent") == 1


def test_guest_connect_listener_closed_since_gets_rst(vsock: VsockHarness) -> None:
    listener = vsock.host_listen(54)
    listener.close()                    # the socket file stays; no one listens

    vsock.send(guest_header(Op.REQUEST, 2000, 54))

    vsock.expect_one(Op.RST)


# --- data and credit ---

def test_data_both_ways_on_a_host_connection(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)

    vsock.send(guest_header(Op.RW, 80, port, 5), b"ping\n")
    assert recv_exactly(sock, 5) == b"ping\n"
    sock.sendall(b"pong\n")

    header, payload = vsock.expect_one(Op.RW)
    assert payload == b"pong\n" and header.fwd_cnt == 5 and header.buf_alloc == FAST.buf_alloc
    assert vsock.stat("tx_bytes") == 5 and vsock.stat("rx_bytes") == 5


def test_data_host_to_guest_bulk_arrives_in_order(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80, buf_alloc=1 << 20)
    data = os.urandom(256 * 1024)

    sender = send_in_background(sock, data)

    received = b""
    while len(received) < len(data):
        received += payload_of(vsock.expect(1))
    sender.join(5)
    assert received == data
    assert vsock.stat("rx_bytes") == len(data)


def test_data_never_more_than_guest_buf_alloc_until_credit_update(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80, buf_alloc=100)

    sock.sendall(b"x" * 1000)

    got = b""
    while len(got) < 100:
        got += payload_of(vsock.expect(1))
    assert got == b"x" * 100
    rest = vsock.quiet()
    assert payload_of(rest) == b""                                       # out of credit: nothing more
    assert [h.op for h, _ in rest] == [Op.CREDIT_REQUEST]               # the device asks once
    vsock.send(guest_header(Op.CREDIT_UPDATE, 80, port, buf_alloc=100, fwd_cnt=60))
    more = b""
    while len(more) < 60:
        more += payload_of(vsock.expect(1))
    assert more == b"x" * 60 and payload_of(vsock.quiet()) == b""


def test_data_guest_shrinking_buf_alloc_stops_the_device(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80, buf_alloc=1000)
    vsock.send(guest_header(Op.CREDIT_UPDATE, 80, port, buf_alloc=0))

    sock.sendall(b"y" * 10)

    assert payload_of(vsock.quiet()) == b""
    vsock.send(guest_header(Op.CREDIT_UPDATE, 80, port, buf_alloc=4))
    assert payload_of(vsock.expect(1)) == b"yyyy"


def test_credit_request_answered_with_credit_update(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)
    vsock.send(guest_header(Op.RW, 80, port, 3), b"abc")
    assert recv_exactly(sock, 3) == b"abc"

    vsock.send(guest_header(Op.CREDIT_REQUEST, 80, port))

    update, _ = vsock.expect_one(Op.CREDIT_UPDATE)
    assert (update.buf_alloc, update.fwd_cnt, update.dst_port) == (FAST.buf_alloc, 3, 80)


def test_credit_update_sent_when_the_host_has_taken_over_half(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)
    chunk = FAST.buf_alloc // 4

    for i in range(3):                  # 3/4 of buf_alloc: the guest has seen no fwd_cnt yet
        vsock.send(guest_header(Op.RW, 80, port, chunk, fwd_cnt=0), bytes([i]) * chunk)
    assert recv_exactly(sock, 3 * chunk) == b"".join(bytes([i]) * chunk for i in range(3))

    update, _ = vsock.expect_one(Op.CREDIT_UPDATE)
    assert update.fwd_cnt == 3 * chunk and update.buf_alloc == FAST.buf_alloc
    assert vsock.quiet() == []          # one update, not one per packet


BIG = VsockLimits(buf_alloc=1 << 20, close_timeout=5.0)     # more than a Unix socket's buffer holds


def send_whole_credit(harness: VsockHarness, port: int) -> bytes:
    """As much data as the credit allows, in 4 KiB packets; what was sent."""
    data = os.urandom(BIG.buf_alloc)
    for offset in range(0, len(data), 4096):
        harness.send(guest_header(Op.RW, 80, port, 4096), data[offset:offset + 4096])
    return data


def test_slow_host_reader_guest_data_within_credit_is_all_kept(make) -> None:
    harness = make(limits=BIG)
    harness.activate()
    harness.post_rx()
    sock, port = harness.open_from_host(80)

    data = send_whole_credit(harness, port)       # while the host reads nothing

    assert harness.tx.used_idx() == harness.tx.avail_idx      # every packet taken...
    assert harness.stat("errors") == 0 and harness.stat("open") == 1
    assert recv_exactly(sock, len(data)) == data              # ...and kept until the host read it
    updates = []
    while not updates or updates[-1].fwd_cnt != len(data):
        updates += [h for h, _ in harness.expect(1) if h.op == Op.CREDIT_UPDATE]
    assert all(h.buf_alloc == BIG.buf_alloc for h in updates)


def test_no_rx_buffers_the_host_stream_is_not_read(make) -> None:
    harness = make()
    harness.activate()
    harness.post_rx(1)
    harness.refill = False
    sock = harness.host_connect(80)
    request, _ = harness.expect_one(Op.REQUEST)
    harness.send(guest_header(Op.RESPONSE, 80, request.src_port, buf_alloc=64 << 20))
    assert read_line(sock) == f"OK {request.src_port}\n".encode()
    sock.setblocking(False)

    sent = 0
    try:
        while sent < 64 << 20:
            sent += sock.send(bytes(65536))
    except BlockingIOError:
        pass

    assert sent < 4 << 20               # the socket filled up: the device took nothing out of it
    assert harness.stat("rx_bytes") == 0
    harness.refill = True
    harness.post_rx(16)
    received = 0
    while received < sent:
        received += len(payload_of(harness.expect(1)))
    assert received == sent


# --- shutdown and close ---

def test_guest_shutdown_send_host_reads_eof_and_can_still_answer(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)
    vsock.send(guest_header(Op.RW, 80, port, 4), b"last")

    vsock.send(guest_header(Op.SHUTDOWN, 80, port, flags=SHUTDOWN_SEND))

    assert recv_exactly(sock, 4) == b"last" and sock.recv(16) == b""
    sock.sendall(b"reply")
    assert payload_of(vsock.expect(1)) == b"reply"


def test_guest_shutdown_rcv_stream_no_longer_read(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)

    vsock.send(guest_header(Op.SHUTDOWN, 80, port, flags=SHUTDOWN_RCV))
    sock.sendall(b"unwanted")

    assert vsock.quiet() == []
    vsock.send(guest_header(Op.RW, 80, port, 2), b"ok")
    assert recv_exactly(sock, 2) == b"ok"


def test_host_half_close_guest_gets_shutdown_send_and_still_sends(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)
    sock.sendall(b"request")

    sock.shutdown(socket.SHUT_WR)

    packets = vsock.expect(2)
    assert payload_of(packets) == b"request"
    assert (packets[1][0].op, packets[1][0].flags) == (Op.SHUTDOWN, SHUTDOWN_SEND)
    vsock.send(guest_header(Op.RW, 80, port, 8), b"response")
    assert recv_exactly(sock, 8) == b"response"


def test_host_close_guest_gets_shutdown_both_then_its_rst_ends_it(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)

    sock.close()

    shutdown, _ = vsock.expect_one(Op.SHUTDOWN)
    assert shutdown.flags == SHUTDOWN_BOTH
    vsock.send(guest_header(Op.RST, 80, port))
    assert vsock.stat("open") == 0
    assert vsock.quiet() == []          # no RST back to an RST


def test_host_close_guest_silent_device_sends_rst_after_timeout(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)
    sock.close()
    vsock.expect_one(Op.SHUTDOWN)

    rst, _ = vsock.expect_one(Op.RST)

    assert (rst.src_port, rst.dst_port) == (port, 80) and vsock.stat("open") == 0


def test_host_close_guest_data_in_flight_dropped_quietly(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)
    sock.close()
    vsock.expect_one(Op.SHUTDOWN)

    vsock.send(guest_header(Op.RW, 80, port, 4), b"late")

    assert vsock.stat("dropped") == 1 and vsock.stat("errors") == 0


def test_guest_close_host_reads_everything_then_eof_and_guest_gets_rst(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)
    vsock.send(guest_header(Op.RW, 80, port, 3), b"bye")

    vsock.send(guest_header(Op.SHUTDOWN, 80, port, flags=SHUTDOWN_BOTH))

    rst, _ = vsock.expect_one(Op.RST)
    assert (rst.src_port, rst.dst_port) == (port, 80)
    assert recv_exactly(sock, 3) == b"bye" and sock.recv(16) == b""
    assert vsock.stat("open") == 0


def test_guest_close_with_slow_host_drains_before_closing(make) -> None:
    harness = make(limits=BIG)
    harness.activate()
    harness.post_rx()
    sock, port = harness.open_from_host(80)
    data = send_whole_credit(harness, port)

    harness.send(guest_header(Op.SHUTDOWN, 80, port, flags=SHUTDOWN_BOTH))

    assert harness.quiet() == []        # no RST while the host still has data to read
    assert recv_exactly(sock, len(data)) == data and sock.recv(16) == b""
    assert [h.op for h, _ in harness.expect(1)] == [Op.RST]


def test_guest_rst_closes_host_stream(vsock: VsockHarness) -> None:
    listener = vsock.host_listen(52)
    host = vsock.open_from_guest(2000, 52, listener)

    vsock.send(guest_header(Op.RST, 2000, 52))

    assert host.recv(16) == b""
    assert vsock.stat("open") == 0


def test_host_peer_gone_while_guest_sends_gets_rst(vsock: VsockHarness) -> None:
    listener = vsock.host_listen(52)
    host = vsock.open_from_guest(2000, 52, listener)
    vsock.send(guest_header(Op.SHUTDOWN, 2000, 52, flags=SHUTDOWN_RCV))    # the device stops reading...
    host.close()                        # ...so it learns the host is gone only when it writes

    vsock.send(guest_header(Op.RW, 2000, 52, 4), b"data")

    rst, _ = vsock.expect_one(Op.RST)
    assert (rst.src_port, rst.dst_port) == (52, 2000) and vsock.stat("open") == 0


# --- many connections, reset, close, the event queue ---

def test_fifty_concurrent_connections_each_carry_their_own_data(vsock: VsockHarness) -> None:
    listener = vsock.host_listen(60)
    hosts = {}
    for i in range(25):                 # half from the guest...
        hosts[(60, 3000 + i)] = vsock.open_from_guest(3000 + i, 60, listener)
    for i in range(25):                 # ...half from the host
        sock, port = vsock.open_from_host(4000 + i)
        hosts[(port, 4000 + i)] = sock
    assert vsock.stat("open") == 50

    for (host_port, guest_port), sock in hosts.items():
        vsock.send(guest_header(Op.RW, guest_port, host_port, 8), f"g{guest_port:07d}".encode())
        sock.sendall(f"h{guest_port:07d}".encode())

    for (host_port, guest_port), sock in hosts.items():
        assert recv_exactly(sock, 8) == f"g{guest_port:07d}".encode()
    got = {}
    while len(got) < 50:
        for header, payload in vsock.expect(1):
            assert header.op == Op.RW
            got[(header.src_port, header.dst_port)] = got.get((header.src_port, header.dst_port), b"") + payload
    assert got == {key: f"h{key[1]:07d}".encode() for key in hosts}


def test_transport_reset_drops_connections_and_posts_the_event(vsock: VsockHarness) -> None:
    sock, _ = vsock.open_from_host(80)
    event = vsock.ev.add([], [8])

    vsock.device.transport_reset()

    assert sock.recv(16) == b""
    assert wait_until(lambda: vsock.ev.used_idx() == 1)
    assert vsock.ev.used() == [(event.head, 4)]
    assert vsock.memory.read(event.writable[0][0], 4) == struct.pack("<I", 0)   # TRANSPORT_RESET
    assert vsock.stat("open") == 0
    assert EVENTQ in vsock.interrupt.used


def test_transport_reset_event_waits_for_an_event_buffer(vsock: VsockHarness) -> None:
    vsock.device.transport_reset()
    vsock.sync()
    assert vsock.ev.used_idx() == 0

    event = vsock.ev.add([], [4])
    vsock.notify(EVENTQ)

    assert vsock.ev.used() == [(event.head, 4)]


def test_transport_reset_new_connections_work_afterwards(vsock: VsockHarness) -> None:
    vsock.open_from_host(80)
    vsock.device.transport_reset()
    vsock.sync()

    sock, port = vsock.open_from_host(80)

    sock.sendall(b"again")
    assert payload_of(vsock.expect(1)) == b"again"


def test_reset_drops_connections_listener_stays(vsock: VsockHarness) -> None:
    sock, _ = vsock.open_from_host(80)

    vsock.device.reset()

    assert sock.recv(16) == b""
    assert vsock.stat("open") == 0
    vsock.activate()
    vsock.post_rx()
    vsock.open_from_host(81)


def test_close_removes_socket_and_closes_streams(vsock: VsockHarness) -> None:
    sock, _ = vsock.open_from_host(80)
    pending = vsock.host_connect(81)   # the guest has not answered yet

    vsock.device.close()

    assert sock.recv(16) == b"" and closed_by_peer(pending)
    assert not vsock.path.exists()
    vsock.device.close()                # twice is fine


def test_stats_count_packets_and_bytes(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)
    vsock.send(guest_header(Op.RW, 80, port, 10), b"0123456789")
    recv_exactly(sock, 10)
    sock.sendall(b"abc")
    vsock.expect(1)

    stats = vsock.device.stats()

    assert stats["tx_packets"] == 2 and stats["tx_bytes"] == 10     # RESPONSE, RW
    assert stats["rx_packets"] == 2 and stats["rx_bytes"] == 3      # REQUEST, RW
    assert stats["connections"] == 1 and stats["open"] == 1
    assert stats["errors"] == stats["dropped"] == stats["queue_errors"] == 0
