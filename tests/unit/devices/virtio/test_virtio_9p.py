"""virtio-9p: the mount tag in the configuration space, 9P requests through
the queue to a real server over a temporary directory, several requests in
flight completing out of order, Tflush ordering, hostile chains and rings,
reset and close with requests still running.

A fake driver plays the guest; the device pops on a real event loop and
runs requests on its own workers.  Where timing matters a fake server
holds chosen requests until the test lets them go.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hypothesis import given, settings

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from kvmlite.devices.virtio import ninep
from kvmlite.devices.virtio.device import (VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
                                           VIRTIO_ID_9P)
from kvmlite.devices.virtio.ninep import VIRTIO_9P_MOUNT_TAG, Virtio9p
from kvmlite.devices.virtio.p9 import codec
from kvmlite.devices.virtio.p9.codec import (Message, Rflush, Rlerror, Tattach, Tclunk, Tflush, Tfsync, Tlopen,
                                             Tread, Treaddir, Tversion, Twalk, Twrite)
from kvmlite.devices.virtio.p9.constants import NOFID, NONUNAME, NOTAG
from kvmlite.devices.virtio.p9.server import P9Server
from kvmlite.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, Queue
from tests.unit.devices.virtio.fakedriver import (FakeDriver, NeedsResetRecorder, Posted, RecordingInterrupt,
                                                  RecordingMemory, call_on_loop, wait_until)
from tests.unit.devices.virtio.hostile import HostileRing, hostile_rings, install

QUEUE = 32
RAM = 4 << 20
ROOM = 8192                     # writable bytes a request gets unless a test says otherwise
FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_9P_MOUNT_TAG

pytestmark = pytest.mark.usefixtures("no_fd_leak")


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory(RAM)
    yield mem
    mem.close()


class HeldServer:
    """A stand-in for P9Server: each request is answered Rlerror(its tag),
    Tflush with Rflush at once, and a request whose tag is in ``held``
    waits until the test releases that tag.  Records what it saw."""

    def __init__(self, msize: int = 8192) -> None:
        self.msize = msize
        self.max_msize = msize
        self.held: dict[int, threading.Event] = {}
        self.lock = threading.Lock()
        self.seen: list[int] = []           # tags, in the order handle() was entered
        self.running = 0
        self.most_running = 0
        self.resets = 0
        self.closed = False
        self.reply_size: dict[int, int] = {}    # tag -> pad the reply to this many bytes

    def hold(self, *tags: int) -> None:
        for tag in tags:
            self.held[tag] = threading.Event()

    def release(self, *tags: int) -> None:
        for tag in tags:
            self.held[tag].set()

    def handle(self, request: bytes, on_reply: Callable[[bytes], None] | None = None,
               read_into: object = None, write_from: object = None) -> bytes:
        _size, msg_type, tag = struct.unpack_from("<IBH", request)
        with self.lock:
            self.seen.append(tag)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        gate = self.held.get(tag)
        if gate is not None:
            assert gate.wait(10), f"tag {tag} never released"
        if msg_type == Tflush.TYPE:
            reply = codec.encode(tag, Rflush())
        elif tag in self.reply_size:
            reply = struct.pack("<IBH", self.reply_size[tag], Rlerror.TYPE, tag).ljust(self.reply_size[tag], b"r")
        else:
            reply = codec.encode(tag, Rlerror(tag))
        try:
            if on_reply is not None:
                on_reply(reply)
            return reply
        finally:
            with self.lock:
                self.running -= 1

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed = True


class Harness:
    """One device, its queue driven by a fake driver."""

    def __init__(self, memory: GuestMemory, loop: EventLoop, server: object, **kw: object) -> None:
        self.memory = memory
        self.loop = loop
        self.server = server
        self.device = Virtio9p(server, "share0", loop, **kw)   # type: ignore[arg-type]
        self.interrupt = RecordingInterrupt()
        self.resets = NeedsResetRecorder()
        self.device.on_needs_reset = self.resets
        self.posted: dict[int, Posted] = {}
        self.activate()

    def activate(self) -> None:
        self.queue = Queue(QUEUE)
        self.driver = FakeDriver(self.memory, self.queue)
        self.device.activate(self.memory, [self.queue], FEATURES, self.interrupt)
        self.sync()

    def sync(self) -> None:
        call_on_loop(self.loop, lambda: None)

    def post(self, tag: int, msg: Message, room: int = ROOM, *, indirect: bool = False) -> Posted:
        return self.post_raw(codec.encode(tag, msg), room, indirect=indirect)

    def post_raw(self, *readable: bytes | int, indirect: bool = False) -> Posted:
        """Readable buffers (bytes), then writable ones (int lengths)."""
        data = [r for r in readable if isinstance(r, bytes)]
        rooms = [r for r in readable if isinstance(r, int)]
        posted = self.driver.add(data, rooms, indirect=indirect)
        self.posted[posted.head] = posted
        return posted

    def notify(self) -> None:
        self.device.queue_notify(0)
        self.sync()

    def replies(self) -> list[tuple[int, bytes]]:
        """(head, reply bytes) of each new used element, in used-ring order."""
        out = []
        for head, length in self.driver.used():
            data = b"".join(self.driver.read(w) for w in self.posted[head].writable)
            out.append((head, data[:length]))
        return out

    def wait_replies(self, count: int) -> list[tuple[int, bytes]]:
        got: list[tuple[int, bytes]] = []
        assert wait_until(lambda: bool(got.extend(self.replies())) or len(got) >= count), \
            f"{len(got)} replies, waited for {count}"
        return got

    def call(self, tag: int, msg: Message, room: int = ROOM, *, indirect: bool = False) -> Message:
        posted = self.post(tag, msg, room, indirect=indirect)
        self.notify()
        [(head, reply)] = self.wait_replies(1)
        assert head == posted.head
        got_tag, decoded = codec.decode(reply)
        assert got_tag == tag
        return decoded

    def close(self) -> None:
        self.device.close()


def decoded(reply: bytes) -> tuple[int, Message]:
    return codec.decode(reply)


@pytest.fixture
def held(memory: GuestMemory, loop: EventLoop) -> Iterator[Harness]:
    harness = Harness(memory, loop, HeldServer(), workers=2, backlog=2)
    yield harness
    for gate in harness.server.held.values():
        gate.set()
    harness.close()


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    (root / "dir").mkdir()
    (root / "dir" / "hello.txt").write_bytes(b"hello from the host\n")
    return root


@pytest.fixture
def real(memory: GuestMemory, loop: EventLoop, share: Path) -> Iterator[Harness]:
    harness = Harness(memory, loop, P9Server(share, max_msize=ROOM))
    yield harness
    harness.close()


def snapshot_outside(memory: GuestMemory, keep: list[tuple[int, int]]) -> bytes:
    """Guest RAM with the ranges in ``keep`` blanked: what must not change."""
    data = bytearray(memory.read(0, RAM))
    for addr, length in keep:
        data[addr:addr + length] = bytes(length)
    return bytes(data)


def used_ring_range(driver: FakeDriver) -> tuple[int, int]:
    return driver.used_ring, 6 + 8 * driver.size


# --- features and configuration space ------------------------------------

def test_9p_features_are_mount_tag_and_ring_features(held: Harness) -> None:
    assert held.device.device_type == VIRTIO_ID_9P == 9
    assert held.device.device_features() == FEATURES
    assert VIRTIO_9P_MOUNT_TAG == 1


def test_9p_config_space_is_le16_tag_len_then_tag(held: Harness) -> None:
    whole = bytearray(16)
    held.device.read_config(0, memoryview(whole))
    assert bytes(whole) == b"\x06\x00share0" + bytes(8)
    part = bytearray(3)
    held.device.read_config(1, memoryview(part))
    assert bytes(part) == b"\x00sh"
    past = bytearray(4)
    held.device.read_config(100, memoryview(past))
    assert bytes(past) == bytes(4)


@pytest.mark.parametrize("tag", ["", "x" * 32])
def test_9p_tag_empty_or_over_31_bytes_refused(tag: str, loop: EventLoop) -> None:
    with pytest.raises(ValueError, match="1..31 bytes"):
        Virtio9p(HeldServer(), tag, loop)  # type: ignore[arg-type]


# --- requests through the queue to a real server -------------------------

def test_9p_version_attach_walk_open_read_round_trip(real: Harness) -> None:
    version = real.call(1, Tversion(ROOM, b"9P2000.L"))
    attach = real.call(2, Tattach(0, NOFID, b"user", b"", NONUNAME))
    walk = real.call(3, Twalk(0, 1, (b"dir", b"hello.txt")), indirect=True)
    lopen = real.call(4, Tlopen(1, os.O_RDONLY))
    read = real.call(5, Tread(1, 0, 4096), indirect=True)

    assert (version.msize, version.version) == (ROOM, b"9P2000.L")
    assert attach.qid.type == 0x80
    assert len(walk.wqids) == 2 and lopen.qid == walk.wqids[1]
    assert read.data == b"hello from the host\n"
    stats = real.device.stats()
    assert stats["requests"] == 5 and stats["errors"] == 0 and stats["bytes_read"] > 0
    assert stats["bytes_written"] > 11 * 5


def test_9p_write_data_in_its_own_buffers_and_read_reply_split_after_header(real: Harness, share: Path) -> None:
    """Linux's zero-copy framing: a Twrite's data in readable buffers after
    the header (the size field counts them), a Tread's data landing in
    writable buffers after the first 11 bytes."""
    real.call(1, Tversion(ROOM, b"9P2000.L"))
    real.call(2, Tattach(0, NOFID, b"user", b"", NONUNAME))
    real.call(3, Twalk(0, 1, (b"dir", b"hello.txt")))
    real.call(4, Tlopen(1, os.O_RDWR))
    message = codec.encode(5, Twrite(1, 0, b"A" * 3000))
    header, payload = message[:23], message[23:]
    real.post_raw(header, payload[:1000], payload[1000:], 64)
    real.notify()
    [(_, reply)] = real.wait_replies(1)
    assert decoded(reply)[1].count == 3000
    assert (share / "dir" / "hello.txt").read_bytes()[:3000] == b"A" * 3000

    posted = real.post_raw(codec.encode(6, Tread(1, 0, 2000)), 11, 1000, 1000)
    real.notify()
    [(head, reply)] = real.wait_replies(1)
    assert head == posted.head and len(reply) == 2011
    assert decoded(reply)[1].data == b"A" * 2000
    assert real.driver.read(posted.writable[1]) == b"A" * 1000


@pytest.mark.parametrize("cut", [3, 7, 12], ids=["inside-the-header", "after-the-header", "inside-a-name"])
def test_9p_request_cut_across_readable_buffers_is_read_whole(real: Harness, share: Path, cut: int) -> None:
    """A request is usually in one buffer (read from it directly); one cut
    anywhere, even inside its header, is gathered from all of them."""
    real.call(1, Tversion(ROOM, b"9P2000.L"))
    real.call(2, Tattach(0, NOFID, b"user", b"", NONUNAME))
    message = codec.encode(3, Twalk(0, 1, (b"dir", b"hello.txt")))

    real.post_raw(message[:cut], message[cut:], 256)
    real.notify()

    [(_, reply)] = real.wait_replies(1)
    tag, walked = decoded(reply)
    assert tag == 3 and len(walked.wqids) == 2
    assert real.device.stats()["errors"] == 0


def _open_hello(real: Harness, flags: int = os.O_RDONLY) -> None:
    real.call(1, Tversion(ROOM, b"9P2000.L"))
    real.call(2, Tattach(0, NOFID, b"user", b"", NONUNAME))
    real.call(3, Twalk(0, 1, (b"dir", b"hello.txt")))
    real.call(4, Tlopen(1, flags))


def test_9p_read_lands_in_the_guest_buffers_in_place_nothing_outside(real: Harness, share: Path,
                                                                    memory: GuestMemory,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A Tread's data goes from the file straight into the chain's writable
    buffers after the 11-byte header (one preadv, no reply copy): the used
    length counts it, a short read at the end of the file is short, and no
    byte outside the chain's buffers changes."""
    data = os.urandom(20_000)
    (share / "dir" / "hello.txt").write_bytes(data)
    _open_hello(real)
    placed: list[int] = []
    real_read = ninep.read_into
    monkeypatch.setattr(ninep, "read_into", lambda *args: placed.append(real_read(*args)) or placed[-1])
    posted = real.post_raw(codec.encode(5, Tread(1, 1000, 8000)), 11, *[1000] * 8)
    keep = list(posted.writable) + [used_ring_range(real.driver)]
    before = snapshot_outside(memory, keep)
    real.notify()
    [(head, reply)] = real.wait_replies(1)
    assert head == posted.head and len(reply) == 11 + 8000
    assert decoded(reply)[1].data == data[1000:9000]
    assert snapshot_outside(memory, keep) == before
    tail = real.call(6, Tread(1, 19_000, 8000))
    assert tail.data == data[19_000:] and placed == [8000, 1000]


def test_9p_large_write_goes_from_the_guest_buffers_in_place(real: Harness, share: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A Twrite of at least WRITE_IN_PLACE bytes is not copied out of the
    ring: its 23 header bytes are, and the data is written with one
    pwritev from the guest's buffers, however they are cut."""
    _open_hello(real, os.O_RDWR)
    written: list[int] = []
    real_write = ninep.write_from
    monkeypatch.setattr(ninep, "write_from", lambda *args: written.append(real_write(*args)) or written[-1])
    data = os.urandom(6000)
    message = codec.encode(5, Twrite(1, 10, data))
    real.post_raw(message[:20], message[20:1000], message[1000:], 64)    # the header cut in two
    real.notify()
    [(_, reply)] = real.wait_replies(1)
    assert decoded(reply)[1].count == 6000 and written == [6000]
    assert (share / "dir" / "hello.txt").read_bytes()[10:6010] == data
    assert real.device.stats()["bytes_read"] >= 6023


def test_9p_read_with_room_for_less_than_count_answers_as_before(real: Harness, share: Path) -> None:
    """Room for the file's 20 bytes but not for the count asked: the
    server reads as usual and the reply fits; a larger file's reply does
    not fit and is EMSGSIZE."""
    _open_hello(real)
    assert real.call(5, Tread(1, 0, 4096), room=64).data == b"hello from the host\n"
    (share / "dir" / "hello.txt").write_bytes(b"y" * 200)
    assert real.call(6, Tread(1, 0, 4096), room=64) == Rlerror(errno.EMSGSIZE)


def test_9p_reset_waits_for_a_read_in_place(real: Harness, share: Path, memory: GuestMemory,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """reset() returns only once a read writing into guest memory has
    finished: nothing touches the old activation's memory afterwards."""
    _open_hello(real)
    inside, go = threading.Event(), threading.Event()
    real_read = ninep.read_into

    def slow(fd: int, buffers: object, offset: int) -> int:
        inside.set()
        assert go.wait(10)
        return real_read(fd, buffers, offset)
    monkeypatch.setattr(ninep, "read_into", slow)
    real.post(5, Tread(1, 0, 4096))
    real.device.queue_notify(0)
    assert inside.wait(10)
    done = threading.Event()
    resetter = threading.Thread(target=lambda: (real.device.reset(), done.set()))
    resetter.start()
    assert not done.wait(0.3)              # held by the read in place
    go.set()
    resetter.join(10)
    assert done.is_set() and real.device.stats()["abandoned"] == 1


def test_9p_requests_run_on_workers_and_complete_out_of_order(held: Harness) -> None:
    held.server.hold(1)
    first = held.post(1, Tfsync(1, 0))
    second = held.post(2, Tfsync(2, 0))
    held.notify()

    assert [h for h, _ in held.wait_replies(1)] == [second.head]
    held.server.release(1)
    assert [h for h, _ in held.wait_replies(1)] == [first.head]
    assert held.server.most_running == 2
    assert held.interrupt.used and set(held.interrupt.used) == {0}


def test_9p_requests_are_served_on_the_loop_unless_others_are_in_flight(held: Harness) -> None:
    """Walk, clunk, reads and writes cost no hand-off between threads; a
    Tfsync (ninep.ON_WORKERS) goes to a worker, and so does a long request
    (a readdir, a transfer of WRITE_IN_PLACE bytes or more) while another
    request runs there."""
    threads: dict[int, str] = {}            # tag -> the thread that served it
    answer = held.server.handle

    def recording(request: bytes, on_reply=None, read_into=None, write_from=None) -> bytes:
        threads[struct.unpack_from("<H", request, 5)[0]] = threading.current_thread().name
        return answer(request, on_reply)

    held.server.handle = recording
    big = ninep.WRITE_IN_PLACE
    long = [Treaddir(1, 0, 64), Tread(1, 0, big), Twrite(1, 0, b"x" * big)]
    for tag, message in enumerate([Twalk(0, 1, (b"dir",)), Tclunk(1), Tread(1, 0, big - 1), *long], 10):
        held.call(tag, message, room=2 * big)
        assert threads.pop(tag) == held.loop.name, message
    assert ninep.ON_WORKERS == {Tfsync.TYPE}
    held.server.hold(1)
    held.post(1, Tfsync(1, 0))
    held.notify()
    assert wait_until(lambda: held.server.running == 1)
    for tag, message in enumerate([*long, Tclunk(2)], 2):
        held.post(tag, message, room=2 * big)
        held.notify()
    assert wait_until(lambda: len(threads) == 5)
    assert threads.pop(5) == held.loop.name                  # the clunk
    assert all(name.startswith("virtio-9p:w") for name in threads.values()), threads
    held.server.release(1)
    assert held.device.wait_idle(10)


def test_9p_flush_of_running_request_publishes_its_reply_before_rflush(held: Harness) -> None:
    held.server.hold(7)
    running = held.post(7, Tfsync(1, 0))
    held.notify()
    assert wait_until(lambda: 7 in held.server.seen)
    flush = held.post(8, Tflush(7))
    held.notify()

    assert held.replies() == []          # Rflush is held back while tag 7 runs
    held.server.release(7)
    replies = held.wait_replies(2)
    assert [h for h, _ in replies] == [running.head, flush.head]
    assert isinstance(decoded(replies[1][1])[1], Rflush)


def test_9p_flush_of_request_still_queued_waits_for_it(memory: GuestMemory, loop: EventLoop) -> None:
    """One worker, busy: the flushed request has not reached the server, so
    the server alone would answer Rflush at once; the device holds it."""
    harness = Harness(memory, loop, HeldServer(), workers=1, backlog=3)
    try:
        harness.server.hold(1)
        busy = harness.post(1, Tfsync(1, 0))
        queued = harness.post(2, Tfsync(2, 0))
        flush = harness.post(3, Tflush(2))
        harness.notify()
        assert wait_until(lambda: harness.server.seen == [1])

        harness.server.release(1)
        replies = harness.wait_replies(3)
        assert [h for h, _ in replies] == [busy.head, queued.head, flush.head]
        assert harness.server.seen == [1, 2, 3]
    finally:
        harness.server.release(1)
        harness.close()


def test_9p_flush_of_unknown_tag_answered_at_once(held: Harness) -> None:
    held.server.hold(1)
    held.post(1, Tfsync(1, 0))
    flush = held.post(2, Tflush(99))
    held.notify()
    assert [h for h, _ in held.wait_replies(1)] == [flush.head]


# --- bounds ---------------------------------------------------------------

def test_9p_flood_pops_only_workers_plus_backlog_rest_stay_in_ring(held: Harness) -> None:
    """2 workers + 2 in backlog: 4 popped, the rest wait in the ring; a
    guest that never takes its replies makes nothing pile up either."""
    tags = list(range(1, 21))
    held.server.hold(*tags)
    for tag in tags:
        held.post(tag, Tfsync(tag, 0), room=64, indirect=True)
    held.notify()
    assert wait_until(lambda: held.server.running == 2)

    assert held.queue.next_avail == 4
    assert held.server.most_running == 2
    held.server.release(*tags)
    assert held.device.wait_idle(10)
    assert wait_until(lambda: held.driver.used_idx() == 20)
    assert held.server.most_running == 2
    assert held.device.stats()["requests"] == 20
    assert len(held.device._jobs) == 0


# --- hostile chains ---------------------------------------------------------

def test_9p_writable_before_readable_asks_for_reset_writes_nothing(held: Harness, memory: GuestMemory) -> None:
    buf_w, buf_r = held.driver.alloc(64), held.driver.alloc(64)
    memory.write(buf_r, codec.encode(1, Tclunk(1)))
    held.driver.write_desc(held.driver.desc_table, 0, buf_w, 64, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
    held.driver.write_desc(held.driver.desc_table, 1, buf_r, 11, 0)
    held.driver.publish(0)
    before = memory.read(0, RAM)
    held.notify()

    assert held.resets.event.wait(5) and "readable descriptor after a writable" in held.resets.reasons[0]
    assert held.server.seen == []
    assert memory.read(0, RAM) == before
    assert held.device.stats()["queue_errors"] == 1


@pytest.mark.parametrize("length", [0xFFFF_FFFF, RAM])
def test_9p_buffer_of_absurd_length_asks_for_reset_writes_nothing(held: Harness, memory: GuestMemory,
                                                                  length: int) -> None:
    posted = held.post(1, Tclunk(1), room=64)
    held.driver.patch_desc(held.driver.desc_table, posted.descriptors[1], length=length)
    before = memory.read(0, RAM)
    held.notify()

    assert held.resets.event.wait(5) and "is not inside one guest RAM region" in held.resets.reasons[0]
    assert held.server.seen == [] and memory.read(0, RAM) == before


@pytest.mark.parametrize("rooms", [(), (6,), (3, 3)])
def test_9p_chain_without_room_for_a_reply_returned_unread(held: Harness, memory: GuestMemory,
                                                            rooms: tuple[int, ...]) -> None:
    posted = held.post_raw(codec.encode(1, Tclunk(1)), *rooms)
    keep = [used_ring_range(held.driver)]
    before = snapshot_outside(memory, keep)
    held.notify()

    assert held.replies() == [(posted.head, b"")]
    assert held.server.seen == [] and not held.resets.reasons
    assert snapshot_outside(memory, keep) == before
    assert held.device.stats()["errors"] == 1


@pytest.mark.parametrize("size, code", [(8193, errno.EMSGSIZE), (0xFFFF_FFFF, errno.EMSGSIZE),
                                        (6, errno.EPROTO), (100, errno.EPROTO)])
def test_9p_bad_size_field_answered_rlerror_without_reading_on(held: Harness, memory: GuestMemory,
                                                               size: int, code: int) -> None:
    """Over msize: EMSGSIZE; under a header or past the readable bytes
    (here 11): EPROTO.  The server never sees it."""
    message = struct.pack("<IBH", size, Tclunk.TYPE, 42) + struct.pack("<I", 1)
    posted = held.post_raw(message, 64)
    keep = [used_ring_range(held.driver), posted.writable[0]]
    before = snapshot_outside(memory, keep)
    held.notify()

    [(head, reply)] = held.replies()
    assert head == posted.head and decoded(reply) == (42, Rlerror(code))
    assert held.server.seen == []
    assert snapshot_outside(memory, keep) == before


def test_9p_readable_shorter_than_a_header_answered_eproto_notag(held: Harness) -> None:
    held.post_raw(b"\x07\x00\x00", 64)
    held.notify()
    [(_, reply)] = held.replies()
    assert decoded(reply) == (NOTAG, Rlerror(errno.EPROTO))


def test_9p_only_the_size_field_bytes_are_read(held: Harness) -> None:
    """Readable bytes past the message (a driver's slack) are not handed on."""
    message = codec.encode(5, Tclunk(9))
    held.post_raw(message, bytes(100), 64)
    held.notify()
    held.wait_replies(1)
    assert held.device.stats()["bytes_read"] == len(message)


def test_9p_reply_larger_than_room_becomes_emsgsize(held: Harness, memory: GuestMemory) -> None:
    held.server.reply_size[3] = 500
    posted = held.post(3, Tclunk(3), room=100)
    keep = [used_ring_range(held.driver), posted.writable[0]]
    before = snapshot_outside(memory, keep)
    held.notify()

    [(_, reply)] = held.wait_replies(1)
    assert decoded(reply) == (3, Rlerror(errno.EMSGSIZE))
    assert snapshot_outside(memory, keep) == before
    assert held.device.stats()["errors"] == 1


def test_9p_reply_too_large_and_no_room_for_rlerror_returns_nothing(held: Harness, memory: GuestMemory) -> None:
    held.server.reply_size[3] = 500
    posted = held.post(3, Tclunk(3), room=9)
    held.notify()
    assert held.wait_replies(1) == [(posted.head, b"")]
    assert held.driver.read(posted.writable[0]) == bytes(9)


def test_9p_reply_scattered_only_into_writable_buffers(held: Harness, memory: GuestMemory) -> None:
    held.server.reply_size[4] = 300
    posted = held.post_raw(codec.encode(4, Tclunk(4)), 100, 50, 400)
    keep = [used_ring_range(held.driver)] + posted.writable
    before = snapshot_outside(memory, keep)
    held.notify()

    [(_, reply)] = held.wait_replies(1)
    assert len(reply) == 300 and reply[7:] == b"r" * 293
    assert held.driver.read(posted.writable[2])[150:] == bytes(250)
    assert snapshot_outside(memory, keep) == before


def test_9p_server_fault_still_answered_eio(held: Harness, caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: bytes, on_reply=None, read_into=None, write_from=None) -> bytes:
        raise RuntimeError("server bug")

    held.server.handle = broken
    held.post(6, Tclunk(6))
    held.notify()
    [(_, reply)] = held.wait_replies(1)
    assert decoded(reply) == (6, Rlerror(errno.EIO))
    assert "server bug" in caplog.text


@settings(max_examples=60, deadline=None)
@given(ring=hostile_rings())
def test_9p_random_hostile_ring_never_crashes(ring: HostileRing, loop: EventLoop) -> None:
    memory = HOSTILE_MEMORY
    server = HeldServer()
    device = Virtio9p(server, "fuzz", loop, workers=2, backlog=1, queue_size=16)  # type: ignore[arg-type]
    resets = NeedsResetRecorder()
    device.on_needs_reset = resets
    queue = Queue(16)
    install(ring, memory, queue)
    errors = _ErrorRecords()
    logging.getLogger("kvmlite").addHandler(errors)
    try:
        device.activate(memory, [queue], FEATURES, RecordingInterrupt())
        call_on_loop(loop, lambda: device.queue_notify(0))
        assert device.wait_idle(10)
        call_on_loop(loop, lambda: None)
    finally:
        device.close()
        logging.getLogger("kvmlite").removeHandler(errors)
    assert errors.records == []
    assert not any(t.is_alive() for t in device._threads)


HOSTILE_MEMORY = RecordingMemory(1 << 20)


class _ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# --- reset and close -------------------------------------------------------------

def test_9p_reset_with_request_running_drops_its_reply(held: Harness, memory: GuestMemory) -> None:
    held.server.hold(1)
    held.post(1, Tfsync(1, 0))
    held.post(2, Tfsync(2, 0))
    held.post(3, Tfsync(3, 0))
    held.server.hold(2)
    held.notify()
    assert wait_until(lambda: held.server.running == 2)
    before = memory.read(0, RAM)
    resets = held.server.resets

    held.device.reset()
    held.server.release(1, 2)
    assert wait_until(lambda: held.device.stats()["abandoned"] == 3)

    assert memory.read(0, RAM) == before          # no reply, no used element, after the reset
    assert held.driver.used_idx() == 0
    assert held.server.seen == [1, 2]             # the queued one never ran
    assert held.server.resets == resets + 2       # at reset, and as the last old request left


def test_9p_new_activation_waits_for_old_requests_to_leave_the_server(held: Harness) -> None:
    held.server.hold(1)
    held.post(1, Tfsync(1, 0))
    held.notify()
    assert wait_until(lambda: held.server.running == 1)

    held.device.reset()
    held.activate()
    resets_at_activation = held.server.resets
    fresh = held.post(2, Tversion(8192, b"9P2000.L"))
    held.notify()
    assert not wait_until(lambda: 2 in held.server.seen, timeout=0.2)

    held.server.release(1)
    assert [h for h, _ in held.wait_replies(1)] == [fresh.head]
    assert held.server.seen == [1, 2]
    assert held.server.resets == resets_at_activation + 1    # the session reset before Tversion went in


def test_9p_reset_then_reactivate_serves_a_real_share(real: Harness) -> None:
    real.call(1, Tversion(ROOM, b"9P2000.L"))
    real.call(2, Tattach(0, NOFID, b"user", b"", NONUNAME))
    real.device.reset()
    assert real.server.fid_count == 0 and real.server.msize == 0

    real.activate()
    assert isinstance(real.call(3, Tattach(0, NOFID, b"user", b"", NONUNAME)), Rlerror)   # no Tversion yet
    assert real.call(4, Tversion(ROOM, b"9P2000.L")).version == b"9P2000.L"


def test_9p_notify_before_activation_or_after_reset_ignored(held: Harness) -> None:
    held.device.reset()
    held.post(1, Tclunk(1))
    held.notify()
    assert held.server.seen == [] and held.replies() == []


def test_9p_close_stops_workers_and_closes_server(memory: GuestMemory, loop: EventLoop, share: Path) -> None:
    server = P9Server(share)
    harness = Harness(memory, loop, server)
    harness.call(1, Tversion(ROOM, b"9P2000.L"))
    threads = list(harness.device._threads)

    harness.close()
    harness.close()                               # twice is harmless

    assert threads and not any(t.is_alive() for t in threads)
    assert isinstance(decoded(server.handle(codec.encode(1, Tversion(ROOM, b"9P2000.L"))))[1], Rlerror)


def test_9p_close_with_stuck_request_leaves_server_to_it(memory: GuestMemory, loop: EventLoop,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ninep, "CLOSE_TIMEOUT", 0.1)
    harness = Harness(memory, loop, HeldServer(), workers=1)
    harness.server.hold(1)
    harness.post(1, Tfsync(1, 0))
    harness.notify()
    assert wait_until(lambda: harness.server.running == 1)

    harness.close()
    assert not harness.server.closed
    harness.server.release(1)
    assert wait_until(lambda: harness.server.closed)
    assert harness.driver.used_idx() == 0
