"""virtio-vsock against a hostile driver: misaddressed, mistyped, mis-sized
and out-of-turn packets are dropped or answered RST and counted while the
device goes on; chains in the wrong direction or too small go back unused;
a guest that sends beyond its credit is cut off; a flood of packets that
call for answers stops being read once the answers back up; a malformed
ring asks for a reset; and random rings and headers never raise out of the
device, never touch memory outside guest RAM, never leak a host fd."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from kvmlite.devices.virtio.queue import VIRTQ_DESC_F_NEXT, Queue
from kvmlite.devices.virtio.vsock import VirtioVsock, VsockLimits
from kvmlite.devices.virtio.vsock.device import EVENTQ, RXQ, TXQ
from kvmlite.devices.virtio.vsock.packet import HEADER_SIZE, MAX_PAYLOAD, SHUTDOWN_SEND, Header, Op
from tests.unit.devices.virtio.fakedriver import (NeedsResetRecorder, RecordingInterrupt, RecordingMemory,
                                                  call_on_loop, wait_until)
from tests.unit.devices.virtio.hostile import HostileRing, hostile_rings, install
from tests.unit.devices.virtio.test_virtio_vsock import (CID, FAST, GUEST_BUF, RAM, VsockHarness, closed_by_peer,
                                                         guest_header, recv_exactly)

pytestmark = pytest.mark.usefixtures("no_fd_leak")


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = RecordingMemory(RAM)      # asserts every view the device makes lies inside RAM
    yield mem
    mem.close()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vh") as directory:
        yield Path(directory)


@pytest.fixture
def make(memory: GuestMemory, loop: EventLoop, sockdir: Path) -> Iterator:
    made: list[VsockHarness] = []

    def factory(**kw: object) -> VsockHarness:
        harness = VsockHarness(memory, loop, sockdir / "v.sock", **kw)
        harness.activate()
        harness.post_rx()
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.close()


@pytest.fixture
def vsock(make) -> VsockHarness:
    return make()


def still_works(harness: VsockHarness) -> None:
    """A fresh guest-initiated connection still gets its RESPONSE and carries data."""
    listener = harness.host_listen(9999)
    host = harness.open_from_guest(7777, 9999, listener)
    harness.send(guest_header(Op.RW, 7777, 9999, 2), b"ok")
    assert recv_exactly(host, 2) == b"ok"
    assert harness.resets.reasons == []


# --- hostile headers ---

# (id, header, payload, expected: "rst" answered, "drop" dropped quietly, "refuse" counted as an error
# but not answered: an RST is never answered with one)
HOSTILE_HEADERS = [
    ("src_cid_not_the_guests", guest_header(Op.REQUEST, 1, 52, src_cid=CID + 1), b"", "drop"),
    ("src_cid_host", guest_header(Op.REQUEST, 1, 52, src_cid=2), b"", "drop"),
    ("src_cid_upper_bits", guest_header(Op.REQUEST, 1, 52, src_cid=CID | 1 << 32), b"", "drop"),
    ("dst_cid_not_host", guest_header(Op.REQUEST, 1, 52, dst_cid=CID), b"", "drop"),
    ("dst_cid_hypervisor", guest_header(Op.REQUEST, 1, 52, dst_cid=0), b"", "drop"),
    ("type_seqpacket", guest_header(Op.REQUEST, 1, 52, type_=2), b"", "rst"),
    ("type_zero", guest_header(Op.REQUEST, 1, 52, type_=0), b"", "rst"),
    ("type_huge", guest_header(Op.REQUEST, 1, 52, type_=0xFFFF), b"", "rst"),
    ("op_zero", guest_header(0, 1, 52), b"", "rst"),
    ("op_unknown", guest_header(8, 1, 52), b"", "rst"),
    ("op_huge", guest_header(0xFFFF, 1, 52), b"", "rst"),
    ("len_beyond_chain", guest_header(Op.RW, 1, 52, 100), b"x" * 10, "rst"),
    ("len_short_of_chain", guest_header(Op.RW, 1, 52, 4), b"x" * 10, "rst"),
    ("len_huge", guest_header(Op.RW, 1, 52, 0xFFFF_FFFF), b"x" * 10, "rst"),
    ("len_over_max_payload", guest_header(Op.RW, 1, 52, MAX_PAYLOAD + 1), b"x" * (MAX_PAYLOAD + 1), "rst"),
    ("request_with_payload", guest_header(Op.REQUEST, 1, 52, 3), b"abc", "rst"),
    ("rw_for_no_connection", guest_header(Op.RW, 1, 52, 3), b"abc", "rst"),
    ("shutdown_for_no_connection", guest_header(Op.SHUTDOWN, 1, 52, flags=3), b"", "rst"),
    ("response_for_no_connection", guest_header(Op.RESPONSE, 1, 52), b"", "rst"),
    ("credit_update_for_no_connection", guest_header(Op.CREDIT_UPDATE, 1, 52), b"", "rst"),
    ("credit_request_for_no_connection", guest_header(Op.CREDIT_REQUEST, 1, 52), b"", "rst"),
    ("rst_for_no_connection", guest_header(Op.RST, 1, 52), b"", "drop"),
    ("rst_with_bad_type", guest_header(Op.RST, 1, 52, type_=2), b"", "refuse"),
    ("rst_with_payload", guest_header(Op.RST, 1, 52, 2), b"xx", "refuse"),
]


@pytest.mark.parametrize("header,payload,expected", [case[1:] for case in HOSTILE_HEADERS],
                         ids=[case[0] for case in HOSTILE_HEADERS])
def test_hostile_header_answered_or_dropped_counted_device_goes_on(vsock: VsockHarness, header: Header,
                                                                   payload: bytes, expected: str) -> None:
    listener = vsock.host_listen(52)

    vsock.send(header, payload)

    answers = vsock.quiet()
    if expected == "rst":
        assert [h.op for h, _ in answers] == [Op.RST]
        rst = answers[0][0]
        assert (rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port) == (2, CID, header.dst_port, header.src_port)
        assert vsock.stat("errors") + vsock.stat("dropped") == 1
    elif expected == "drop":
        assert answers == [] and vsock.stat("dropped") == 1 and vsock.stat("errors") == 0
    else:
        assert answers == [] and vsock.stat("errors") == 1 and vsock.stat("dropped") == 0
    listener.settimeout(0.05)
    with pytest.raises(TimeoutError):
        listener.accept()               # nothing reached the host
    assert vsock.stat("open") == 0
    assert vsock.txq.next_used == vsock.tx.avail_idx      # the chain went back
    still_works(vsock)


def test_data_beyond_credit_cuts_the_connection(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)
    sizes = [4096] * (FAST.buf_alloc // 4096) + [1]     # one byte over, in one batch: no update between

    for size in sizes:
        vsock.send(guest_header(Op.RW, 80, port, size), b"d" * size, notify=False)
    vsock.notify(TXQ)

    assert [h.op for h, _ in vsock.quiet()] == [Op.RST]
    assert vsock.stat("errors") == 1 and vsock.stat("open") == 0
    received = b""
    while chunk := sock.recv(1 << 16):
        received += chunk
    assert len(received) == FAST.buf_alloc      # the byte over the credit never reached the host
    still_works(vsock)


def test_data_beyond_credit_counts_what_the_guest_was_told(vsock: VsockHarness) -> None:
    """The credit is what the device advertised, not what it has free: a
    guest cannot use room it was never told of."""
    sock, port = vsock.open_from_host(80)
    half = FAST.buf_alloc // 2 - 1     # under the threshold for an unasked credit update
    vsock.send(guest_header(Op.RW, 80, port, half), b"a" * half)
    assert recv_exactly(sock, half) == b"a" * half
    assert vsock.quiet() == []          # the host took it all; the guest was not told

    vsock.send(guest_header(Op.RW, 80, port, half), b"b" * half, notify=False)
    vsock.send(guest_header(Op.RW, 80, port, 3), b"ccc")   # 2 * half + 3 > buf_alloc

    assert [h.op for h, _ in vsock.quiet()] == [Op.RST]
    assert vsock.stat("open") == 0 and vsock.stat("errors") == 1


def test_data_after_guest_shutdown_send_is_refused(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)
    vsock.send(guest_header(Op.SHUTDOWN, 80, port, flags=SHUTDOWN_SEND))

    vsock.send(guest_header(Op.RW, 80, port, 4), b"more")

    assert [h.op for h, _ in vsock.quiet()] == [Op.RST]
    assert sock.recv(16) == b"" and vsock.stat("errors") == 1


def test_data_before_the_guest_answered_the_request_is_refused(vsock: VsockHarness) -> None:
    sock = vsock.host_connect(80)
    request, _ = vsock.expect_one(Op.REQUEST)

    vsock.send(guest_header(Op.RW, 80, request.src_port, 4), b"rush")

    assert [h.op for h, _ in vsock.quiet()] == [Op.RST]
    assert closed_by_peer(sock) and vsock.stat("open") == 0


def test_response_twice_is_refused(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80)

    vsock.send(guest_header(Op.RESPONSE, 80, port))

    assert [h.op for h, _ in vsock.quiet()] == [Op.RST]
    assert sock.recv(16) == b""


def test_request_for_an_open_connection_is_refused_and_leaves_it_open(vsock: VsockHarness) -> None:
    listener = vsock.host_listen(52)
    host = vsock.open_from_guest(2000, 52, listener)

    vsock.send(guest_header(Op.REQUEST, 2000, 52))

    assert [h.op for h, _ in vsock.quiet()] == [Op.RST]
    assert vsock.stat("open") == 1
    vsock.send(guest_header(Op.RW, 2000, 52, 2), b"hi")
    assert recv_exactly(host, 2) == b"hi"


def test_hostile_fwd_cnt_ahead_of_what_was_sent_gives_no_credit(vsock: VsockHarness) -> None:
    sock, port = vsock.open_from_host(80, buf_alloc=100)
    vsock.send(guest_header(Op.CREDIT_UPDATE, 80, port, buf_alloc=100, fwd_cnt=0xFFFF_0000))

    sock.sendall(b"z" * 10)

    assert [h.op for h, _ in vsock.quiet() if h.op == Op.RW] == []
    vsock.send(guest_header(Op.CREDIT_UPDATE, 80, port, buf_alloc=100, fwd_cnt=0))
    assert vsock.expect_one(Op.RW)[1] == b"z" * 10


# --- the connection limit and the control backlog ---

def test_connection_limit_refuses_requests_and_connects(make) -> None:
    harness = make(limits=VsockLimits(max_connections=3, handshake_timeout=1, connect_timeout=1))
    listener = harness.host_listen(52)
    for port in range(3):
        harness.open_from_guest(2000 + port, 52, listener)

    harness.send(guest_header(Op.REQUEST, 2999, 52))
    host = harness.host_connect(80, b"")        # closed before it could send its line

    assert [h.op for h, _ in harness.quiet()] == [Op.RST]
    assert closed_by_peer(host)
    assert harness.stat("open") == 3


def test_flood_of_answered_packets_stops_tx_until_the_guest_takes_answers(make) -> None:
    harness = make(limits=VsockLimits(control_backlog=8))
    harness.refill = False
    harness.collect()
    harness.rx.used()
    harness.quiet()                     # the 16 rx buffers stay posted
    harness.post_rx(0)

    for i in range(40):                 # each would be answered RST
        harness.send(guest_header(Op.RW, 5000 + i, 52, 1), b"x", notify=False)
    harness.notify(TXQ)

    answered = 16 + 8                   # 16 RSTs in the posted buffers, 8 waiting for more
    assert wait_until(lambda: harness.txq.next_used >= answered)     # over a few turns of the loop
    rsts = [h for h, _ in harness.quiet()]
    assert harness.txq.next_used == answered and len(rsts) == 16
    harness.refill = True
    harness.post_rx(16)
    assert wait_until(lambda: harness.txq.next_used == 40)
    while len(rsts) < 40:
        rsts += [h for h, _ in harness.expect(1) if h.op == Op.RST]
    assert sorted(h.dst_port for h in rsts) == list(range(5000, 5040))


# --- hostile chains ---

def test_tx_chain_with_writable_buffer_is_returned_and_counted(vsock: VsockHarness) -> None:
    bad = vsock.tx.add([guest_header(Op.REQUEST, 1, 52).pack()], [64])

    vsock.notify(TXQ)

    assert vsock.tx.used() == [(bad.head, 0)]
    assert vsock.stat("errors") == 1 and vsock.quiet() == []
    still_works(vsock)


def test_tx_chain_shorter_than_a_header_is_returned_and_counted(vsock: VsockHarness) -> None:
    bad = vsock.tx.add([guest_header(Op.REQUEST, 1, 52).pack()[:HEADER_SIZE - 1]])

    vsock.notify(TXQ)

    assert vsock.tx.used() == [(bad.head, 0)]
    assert vsock.stat("errors") == 1
    still_works(vsock)


def test_tx_header_split_over_descriptors_is_read_whole(vsock: VsockHarness) -> None:
    listener = vsock.host_listen(52)
    raw = guest_header(Op.REQUEST, 2000, 52).pack()

    vsock.tx.add([raw[i:i + 5] for i in range(0, HEADER_SIZE, 5)], indirect=True)
    vsock.notify(TXQ)

    vsock.expect_one(Op.RESPONSE)
    vsock.accept(listener)


def test_rx_chain_with_readable_buffer_or_too_small_is_returned_unused(vsock: VsockHarness) -> None:
    vsock.refill = False
    vsock.quiet()
    vsock.rx_posted.clear()
    vsock.device.reset()                # start again with only hostile rx chains posted
    vsock.activate()
    readable = vsock.rx.add([b"x" * 64], [4096])
    small = vsock.rx.add([], [HEADER_SIZE - 1])
    good = vsock.rx.add([], [4096])
    vsock.rx_posted[good.head] = good
    vsock.notify(RXQ)

    vsock.send(guest_header(Op.REQUEST, 2000, 53))      # no listener: answered RST

    assert wait_until(lambda: vsock.rx.used_idx() == 3)
    used = vsock.rx.used()
    assert used[:2] == [(readable.head, 0), (small.head, 0)]
    assert used[2] == (good.head, HEADER_SIZE)
    assert vsock.stat("errors") == 2


def test_event_chain_too_small_is_returned_unused(vsock: VsockHarness) -> None:
    small = vsock.ev.add([], [3])
    good = vsock.ev.add([], [4])

    vsock.device.transport_reset()

    assert wait_until(lambda: vsock.ev.used_idx() == 2)
    assert vsock.ev.used() == [(small.head, 0), (good.head, 4)]


def test_tx_descriptor_loop_asks_for_reset_and_drops_connections(vsock: VsockHarness) -> None:
    sock, _ = vsock.open_from_host(80)
    looped = vsock.tx.add([b"a" * HEADER_SIZE, b"b" * 8], publish=False)
    vsock.tx.patch_desc(vsock.tx.desc_table, looped.descriptors[1], flags=VIRTQ_DESC_F_NEXT,
                        next_=looped.descriptors[0])
    vsock.tx.publish(looped.head)

    vsock.notify(TXQ)

    assert vsock.resets.event.wait(5)
    assert "visits more than" in vsock.resets.reasons[0]
    assert sock.recv(16) == b""
    assert vsock.stat("queue_errors") == 1 and vsock.stat("open") == 0
    host = vsock.host_connect(81, b"")
    assert closed_by_peer(host)        # no driver until the next activation


# --- random rings and headers ---

class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def hostile_device(loop: EventLoop) -> Iterator[VirtioVsock]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vz") as directory:
        device = VirtioVsock(CID, f"{directory}/v.sock", loop, queue_size=16)
        yield device
        device.close()


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    logger = logging.getLogger("kvmlite")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


HOSTILE_RAM = RecordingMemory(1 << 20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ring=hostile_rings(), queue_index=st.sampled_from([RXQ, TXQ, EVENTQ]))
def test_random_hostile_ring_never_escapes_the_device(ring: HostileRing, queue_index: int, loop: EventLoop,
                                                      hostile_device: VirtioVsock, errors: ErrorRecords) -> None:
    errors.records.clear()
    queues = [Queue(16) for _ in range(3)]
    install(ring, HOSTILE_RAM, queues[queue_index])
    for i, queue in enumerate(queues):
        queue.ready = i == queue_index
    hostile_device.on_needs_reset = NeedsResetRecorder()

    hostile_device.activate(HOSTILE_RAM, queues, hostile_device.device_features(), RecordingInterrupt())
    host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if queue_index == RXQ:          # a REQUEST waits for an rx buffer: the device pops the ring
            host.connect(hostile_device.uds_path)
            host.sendall(b"CONNECT 5\n")
            assert wait_until(lambda: hostile_device.stats()["open"] == 1 or hostile_device.on_needs_reset.reasons)
        hostile_device.queue_notify(queue_index)
        hostile_device.transport_reset()
        call_on_loop(loop, lambda: None)
    finally:
        host.close()

    assert errors.records == []
    hostile_device.reset()


headers = st.builds(
    Header,
    src_cid=st.sampled_from([CID, CID, CID, 2, 0, 1 << 40]),
    dst_cid=st.sampled_from([2, 2, 2, CID, 0xFFFF_FFFF]),
    src_port=st.integers(0, 0xFFFF_FFFF),
    dst_port=st.sampled_from([52, 52, 53, 0, 0xFFFF_FFFF]),
    len=st.sampled_from([0, 1, 16, 4096, MAX_PAYLOAD, MAX_PAYLOAD + 1, 0xFFFF_FFFF]),
    type=st.sampled_from([1, 1, 1, 0, 2, 0xFFFF]),
    op=st.integers(0, 9),
    flags=st.integers(0, 0xFFFF_FFFF),
    buf_alloc=st.sampled_from([0, 1, GUEST_BUF, 0xFFFF_FFFF]),
    fwd_cnt=st.sampled_from([0, 1, 0xFFFF_FFFF]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packets=st.lists(st.tuples(headers, st.sampled_from([0, 1, 16, 100])), min_size=1, max_size=12))
def test_random_headers_never_escape_and_device_goes_on(packets: list[tuple[Header, int]], memory: GuestMemory,
                                                        loop: EventLoop, errors: ErrorRecords) -> None:
    import tempfile

    errors.records.clear()
    with tempfile.TemporaryDirectory(prefix="vr") as directory:
        harness = VsockHarness(memory, loop, Path(directory) / "v.sock")
        try:
            harness.activate()
            harness.post_rx()
            listener = harness.host_listen(52)
            for header, payload in packets:
                harness.send(header, os.urandom(payload), notify=False)
            harness.notify(TXQ)
            harness.quiet()
            assert harness.resets.reasons == [] and errors.records == []
            assert harness.txq.next_used == harness.tx.avail_idx
            listener.close()
            harness.host_socks.remove(listener)
            still_works(harness)
        finally:
            harness.close()
            assert not os.path.exists(harness.path)
