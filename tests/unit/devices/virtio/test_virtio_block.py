"""virtio-blk end to end (virtio 1.2 §5.2): a fake driver, the real device
and its worker thread, a real image file."""

from __future__ import annotations

import errno
import os
import struct
import threading
from pathlib import Path
from typing import Iterator

import pytest

from kvmlite.devices.virtio import block, disk
from kvmlite.devices.virtio.block import (VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
                                          VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
                                          VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
                                          VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
                                          VIRTIO_BLK_T_WRITE_ZEROES, VirtioBlock)
from kvmlite.devices.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1
from kvmlite.devices.virtio.disk import RawDisk
from kvmlite.devices.virtio.queue import Queue
from kvmlite.devices.virtio.uring import IORING_OP_READV, IORING_OP_WRITEV, Uring
from kvmlite.base.memory import GuestMemory
from tests.unit.devices.virtio.fakedriver import FakeDriver, NeedsResetRecorder, RecordingInterrupt, call_on_loop

SECTORS = 128                      # 64 KiB image
QUEUE = 16


def header(rtype: int, sector: int = 0) -> bytes:
    return struct.pack("<IIQ", rtype, 0, sector)


def segment(sector: int, count: int, flags: int = 0) -> bytes:
    return struct.pack("<QII", sector, count, flags)


def pattern(size: int) -> bytes:
    return bytes((i * 7 + 3) % 256 for i in range(size))


class BlockHarness:
    """A driver, a device and an image, wired as the transport would."""

    def __init__(self, memory: GuestMemory, path: Path, read_only: bool = False, loop=None,
                 doorbell: bool = False) -> None:
        self.path = path
        self.memory = memory
        self.doorbell = doorbell
        self.device = VirtioBlock(RawDisk.open(str(path), read_only), queue_size=QUEUE, loop=loop)
        self.interrupt = RecordingInterrupt()
        self.resets = NeedsResetRecorder()
        self.device.on_needs_reset = self.resets
        self.activate()

    def activate(self, features: int | None = None) -> None:
        self.queue = Queue(QUEUE)
        self.driver = FakeDriver(self.memory, self.queue)
        if features is None:
            features = self.device.device_features()
        self.device.activate(self.memory, [self.queue], features, self.interrupt)

    def run(self) -> list[tuple[int, int]]:
        if self.doorbell:       # an ioeventfd served on the disk's loop: its thread may run the I/O
            call_on_loop(self.device.loop, lambda: self.device.queue_notify(0))
        else:                   # a notify that trapped: on the vCPU thread, which must not do I/O
            self.device.queue_notify(0)
        assert self.device.wait_idle(timeout=10)
        return self.driver.used()

    def request(self, rtype: int, sector: int = 0, out: bytes = b"", in_len: int = 0,
                indirect: bool = False) -> tuple[int, int, bytes]:
        """One request: (status, used length, data read)."""
        readable = [header(rtype, sector)] + ([out] if out else [])
        posted = self.driver.add(readable, ([in_len] if in_len else []) + [1], indirect=indirect)
        used = self.run()
        assert [h for h, _ in used] == [posted.head]
        status = self.driver.read(posted.writable[-1])[0]
        data = self.driver.read(posted.writable[0]) if in_len else b""
        return status, used[0][1], data


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(pattern(SECTORS * 512))
    return path


@pytest.fixture(params=["trap", "doorbell"])
def notified(request: pytest.FixtureRequest, disk_loop) -> dict:
    """Where notifications arrive: on the notifying (vCPU) thread, or on the
    disk's event loop, whose thread runs small reads and writes itself."""
    return {"doorbell": True, "loop": disk_loop} if request.param == "doorbell" else {}


@pytest.fixture
def blk(memory: GuestMemory, image: Path, notified: dict) -> Iterator[BlockHarness]:
    harness = BlockHarness(memory, image, **notified)
    yield harness
    harness.device.close()


@pytest.fixture
def blk_ro(memory: GuestMemory, image: Path, notified: dict) -> Iterator[BlockHarness]:
    harness = BlockHarness(memory, image, read_only=True, **notified)
    yield harness
    harness.device.close()


# --- features and configuration space (§5.2.3, §5.2.4) ---

def test_blk_writable_features_offer_flush_discard_write_zeroes(blk: BlockHarness) -> None:
    features = blk.device.device_features()

    assert features & VIRTIO_F_VERSION_1 and features & VIRTIO_BLK_F_FLUSH
    assert features & VIRTIO_BLK_F_DISCARD and features & VIRTIO_BLK_F_WRITE_ZEROES
    assert not features & VIRTIO_BLK_F_RO


def test_blk_read_only_features_offer_ro_and_no_discard(blk_ro: BlockHarness) -> None:
    features = blk_ro.device.device_features()

    assert features & VIRTIO_BLK_F_RO
    assert not features & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES)


def test_blk_config_reports_capacity_and_limits(blk: BlockHarness) -> None:
    config = memoryview(bytearray(60))

    blk.device.read_config(0, config)

    capacity, _size_max, seg_max = struct.unpack_from("<QII", config)
    blk_size, = struct.unpack_from("<I", config, 20)
    num_queues, max_discard, max_discard_seg = struct.unpack_from("<HII", config, 34)
    may_unmap = config[56]
    assert (capacity, seg_max, blk_size, num_queues) == (SECTORS, QUEUE - 2, 512, 1)
    assert max_discard > 0 and max_discard_seg > 0 and may_unmap == 1


def test_blk_config_read_past_end_returns_zeroes(blk: BlockHarness) -> None:
    data = memoryview(bytearray(b"\xff" * 8))

    blk.device.read_config(0x100, data)

    assert bytes(data) == bytes(8)


# --- reads and writes (§5.2.6) ---

def test_blk_read_returns_image_bytes(blk: BlockHarness) -> None:
    status, used_len, data = blk.request(VIRTIO_BLK_T_IN, sector=3, in_len=1024)

    assert status == VIRTIO_BLK_S_OK
    assert data == pattern(SECTORS * 512)[3 * 512:5 * 512]
    assert used_len == 1024 + 1


def test_blk_read_indirect_chain_returns_image_bytes(blk: BlockHarness) -> None:
    status, _, data = blk.request(VIRTIO_BLK_T_IN, sector=0, in_len=512, indirect=True)

    assert (status, data) == (VIRTIO_BLK_S_OK, pattern(512))


def test_blk_read_header_and_data_split_across_descriptors(blk: BlockHarness) -> None:
    # No framing assumptions (§2.7.4): header in two pieces, data in three.
    raw = header(VIRTIO_BLK_T_IN, 1)
    posted = blk.driver.add([raw[:5], raw[5:]], [100, 412, 1])

    used = blk.run()

    data = b"".join(blk.driver.read(w) for w in posted.writable[:2])
    assert used == [(posted.head, 513)]
    assert blk.driver.read(posted.writable[2]) == bytes([VIRTIO_BLK_S_OK])
    assert data == pattern(1024)[512:1024]


def test_blk_write_stores_bytes_in_image(blk: BlockHarness, image: Path) -> None:
    payload = b"\xa5" * 1024

    status, used_len, _ = blk.request(VIRTIO_BLK_T_OUT, sector=10, out=payload)

    assert (status, used_len) == (VIRTIO_BLK_S_OK, 1)
    content = image.read_bytes()
    assert content[10 * 512:12 * 512] == payload
    assert content[:10 * 512] == pattern(SECTORS * 512)[:10 * 512]


def test_blk_flush_calls_fdatasync_before_completing(blk: BlockHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real = os.fdatasync

    def recording_fdatasync(fd: int) -> None:
        calls.append((fd, blk.driver.used_idx()))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", recording_fdatasync)
    blk.request(VIRTIO_BLK_T_OUT, sector=0, out=b"\x11" * 512)

    status, _, _ = blk.request(VIRTIO_BLK_T_FLUSH)

    # one fdatasync on the image, while only the write (1 used entry) was complete
    assert calls == [(blk.device.disk.fd, 1)]
    assert status == VIRTIO_BLK_S_OK


def test_blk_flush_failure_reports_ioerr(blk: BlockHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)

    status, _, _ = blk.request(VIRTIO_BLK_T_FLUSH)

    assert status == VIRTIO_BLK_S_IOERR


def test_blk_read_only_write_fails_and_leaves_image_unchanged(blk_ro: BlockHarness, image: Path) -> None:
    before = image.read_bytes()

    status, _, _ = blk_ro.request(VIRTIO_BLK_T_OUT, sector=0, out=b"\xff" * 512)

    assert status == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before


def test_blk_read_only_discard_fails_and_leaves_image_unchanged(blk_ro: BlockHarness, image: Path) -> None:
    before = image.read_bytes()

    status, _, _ = blk_ro.request(VIRTIO_BLK_T_DISCARD, out=segment(0, 8))

    assert status == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before


def test_blk_read_only_read_and_flush_succeed(blk_ro: BlockHarness) -> None:
    read_status, _, data = blk_ro.request(VIRTIO_BLK_T_IN, sector=0, in_len=512)
    flush_status, _, _ = blk_ro.request(VIRTIO_BLK_T_FLUSH)

    assert (read_status, flush_status, data) == (VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK, pattern(512))


@pytest.mark.parametrize("sector", [SECTORS - 1, SECTORS, (1 << 64) - 1])
def test_blk_read_beyond_capacity_reports_ioerr(blk: BlockHarness, sector: int) -> None:
    status, used_len, _ = blk.request(VIRTIO_BLK_T_IN, sector=sector, in_len=1024)

    assert (status, used_len) == (VIRTIO_BLK_S_IOERR, 1)


def test_blk_write_beyond_capacity_reports_ioerr_and_leaves_image(blk: BlockHarness, image: Path) -> None:
    before = image.read_bytes()

    status, _, _ = blk.request(VIRTIO_BLK_T_OUT, sector=SECTORS - 1, out=b"\x01" * 1024)

    assert status == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before


def test_blk_transfer_not_whole_sectors_reports_ioerr(blk: BlockHarness) -> None:
    status, _, _ = blk.request(VIRTIO_BLK_T_IN, sector=0, in_len=100)

    assert status == VIRTIO_BLK_S_IOERR


def test_blk_get_id_returns_image_serial(blk: BlockHarness) -> None:
    status, used_len, data = blk.request(VIRTIO_BLK_T_GET_ID, in_len=20)

    assert status == VIRTIO_BLK_S_OK
    assert data == blk.device.disk.serial and len(data) == 20
    assert used_len == 21


def test_blk_unknown_request_type_reports_unsupp(blk: BlockHarness) -> None:
    status, _, _ = blk.request(99, in_len=512)

    assert status == VIRTIO_BLK_S_UNSUPP


def test_blk_short_header_reports_ioerr(blk: BlockHarness) -> None:
    posted = blk.driver.add([b"\0" * 8], [1])

    blk.run()

    assert blk.driver.read(posted.writable[0]) == bytes([VIRTIO_BLK_S_IOERR])


# --- where small requests run ---

def record_threads(harness: BlockHarness, *names: str) -> list[tuple[str, str]]:
    """Wrap the disk's ``names`` methods: each call appends (method, thread name)."""
    calls: list[tuple[str, str]] = []
    for name in names:
        method = getattr(harness.device.disk, name)

        def wrapper(*args, _method=method, _name=name):
            calls.append((_name, threading.current_thread().name))
            return _method(*args)
        setattr(harness.device.disk, name, wrapper)
    return calls


def test_blk_small_reads_and_writes_run_on_the_disk_loop_and_flush_on_an_io_thread(
        memory: GuestMemory, image: Path, disk_loop) -> None:
    """Notified on the disk's loop, a small read or write whose data needs
    no device I/O is done by the loop thread itself; a flush is not."""
    harness = BlockHarness(memory, image, loop=disk_loop, doorbell=True)
    try:
        calls = record_threads(harness, "try_read", "try_write", "read", "write", "flush")
        assert harness.request(VIRTIO_BLK_T_OUT, 2, out=b"\x5a" * 1024)[0] == VIRTIO_BLK_S_OK
        status, _used, data = harness.request(VIRTIO_BLK_T_IN, 2, in_len=1024)
        assert harness.request(VIRTIO_BLK_T_FLUSH)[0] == VIRTIO_BLK_S_OK
    finally:
        harness.device.close()

    assert status == VIRTIO_BLK_S_OK and data == b"\x5a" * 1024
    assert image.read_bytes()[1024:2048] == b"\x5a" * 1024
    assert calls[:2] == [("try_write", disk_loop.name), ("try_read", disk_loop.name)]
    assert len(calls) == 3 and calls[2][0] == "flush" and ":io" in calls[2][1]


def test_blk_requests_notified_off_the_loop_never_do_io_on_the_notifying_thread(
        memory: GuestMemory, image: Path, disk_loop) -> None:
    """A trapped notify arrives on a vCPU thread: it pops, but the I/O
    happens elsewhere."""
    blk = BlockHarness(memory, image, loop=disk_loop)
    try:
        calls = record_threads(blk, "try_read", "try_write", "read", "write")
        blk.request(VIRTIO_BLK_T_OUT, 1, out=b"\x11" * 512)
        blk.request(VIRTIO_BLK_T_IN, 1, in_len=512)
    finally:
        blk.device.close()

    assert [name for name, _thread in calls] == ["write", "read"]
    assert all(thread != threading.current_thread().name for _name, thread in calls)


def test_blk_small_read_not_in_the_page_cache_goes_to_an_io_thread(
        memory: GuestMemory, tmp_path: Path, disk_loop) -> None:
    """On a filesystem that answers RWF_NOWAIT (ext4, xfs, btrfs), a read
    whose data is not cached would wait for the device: the loop thread
    hands it to an I/O thread, which reads the right bytes."""
    path = tmp_path / "cold.img"
    path.write_bytes(pattern(SECTORS * 512))
    harness = BlockHarness(memory, path, loop=disk_loop, doorbell=True)
    try:
        if harness.device.disk.memory_backed:
            pytest.skip(f"{tmp_path} is memory-backed: no read there waits for a device")
        fd = harness.device.disk.fd
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)     # out of the page cache
        calls = record_threads(harness, "try_read", "read")
        status, _used, data = harness.request(VIRTIO_BLK_T_IN, 16, in_len=4096)
    finally:
        harness.device.close()

    assert status == VIRTIO_BLK_S_OK and data == pattern(SECTORS * 512)[16 * 512:16 * 512 + 4096]
    assert calls[0] == ("try_read", disk_loop.name)
    assert calls[1][0] == "read" and ":io" in calls[1][1]


# --- discard and write zeroes (§5.2.6) ---

def test_blk_discard_punches_hole_and_keeps_size(blk: BlockHarness, image: Path) -> None:
    status, _, _ = blk.request(VIRTIO_BLK_T_DISCARD, out=segment(8, 16))

    content = image.read_bytes()
    assert status == VIRTIO_BLK_S_OK
    assert len(content) == SECTORS * 512
    assert content[8 * 512:24 * 512] == bytes(16 * 512)   # ext4/tmpfs punch holes
    assert content[24 * 512:] == pattern(SECTORS * 512)[24 * 512:]


def test_blk_discard_with_unmap_flag_reports_unsupp(blk: BlockHarness, image: Path) -> None:
    before = image.read_bytes()

    status, _, _ = blk.request(VIRTIO_BLK_T_DISCARD, out=segment(0, 8, flags=1))

    assert status == VIRTIO_BLK_S_UNSUPP
    assert image.read_bytes() == before


@pytest.mark.parametrize("unmap", [0, 1])
def test_blk_write_zeroes_zeroes_every_segment(blk: BlockHarness, image: Path, unmap: int) -> None:
    status, _, _ = blk.request(VIRTIO_BLK_T_WRITE_ZEROES, out=segment(1, 2, unmap) + segment(100, 3, unmap))

    content = image.read_bytes()
    original = pattern(SECTORS * 512)
    assert status == VIRTIO_BLK_S_OK
    assert content[512:3 * 512] == bytes(1024) and content[100 * 512:103 * 512] == bytes(1536)
    assert content[:512] == original[:512] and content[3 * 512:100 * 512] == original[3 * 512:100 * 512]


def test_blk_write_zeroes_without_fallocate_support_writes_zeroes(blk: BlockHarness, image: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(fd: int, mode: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(disk, "fallocate", unsupported)

    status, _, _ = blk.request(VIRTIO_BLK_T_WRITE_ZEROES, out=segment(4, 4, 1))

    assert status == VIRTIO_BLK_S_OK
    assert image.read_bytes()[4 * 512:8 * 512] == bytes(2048)


@pytest.mark.parametrize("out", [
    segment(0, 8, flags=2),                                # unknown flag
])
def test_blk_write_zeroes_unknown_flag_reports_unsupp(blk: BlockHarness, out: bytes) -> None:
    status, _, _ = blk.request(VIRTIO_BLK_T_WRITE_ZEROES, out=out)

    assert status == VIRTIO_BLK_S_UNSUPP


@pytest.mark.parametrize("out", [
    b"",                                                   # no segment
    segment(0, 8)[:10],                                    # partial segment
    segment(0, 8) * (block.MAX_DISCARD_SEG + 1),           # too many segments
    segment(SECTORS - 4, 8),                               # beyond capacity
    segment(0, 8) + segment(SECTORS, 1),                   # second one beyond capacity
])
def test_blk_bad_discard_segments_report_ioerr_and_leave_image(blk: BlockHarness, image: Path, out: bytes) -> None:
    before = image.read_bytes()

    status, _, _ = blk.request(VIRTIO_BLK_T_DISCARD, out=out)

    assert status == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before


# --- the ring and the device lifecycle ---

def test_blk_completion_signals_used_queue(blk: BlockHarness) -> None:
    blk.request(VIRTIO_BLK_T_IN, in_len=512)

    assert blk.interrupt.used == [0]


def test_blk_many_requests_all_complete_exactly_once(blk: BlockHarness) -> None:
    # Requests run on several I/O threads: they complete in any order (as
    # virtio allows), but each exactly once.
    heads = [blk.driver.add([header(VIRTIO_BLK_T_IN, i)], [512, 1], indirect=True).head for i in range(QUEUE)]

    used = blk.run()

    assert sorted(h for h, _ in used) == sorted(heads)


def test_blk_chain_without_status_byte_requests_reset(blk: BlockHarness) -> None:
    blk.driver.add([header(VIRTIO_BLK_T_FLUSH)])

    blk.device.queue_notify(0)

    assert blk.resets.event.wait(10)
    assert "status byte" in blk.resets.reasons[0]
    assert blk.device.stats()["queue_errors"] == 1


def test_blk_malformed_ring_requests_reset_and_stops_serving(blk: BlockHarness) -> None:
    blk.driver.set_avail_idx(QUEUE + 5)
    blk.device.queue_notify(0)
    assert blk.resets.event.wait(10)
    blk.driver.set_avail_idx(0)
    blk.driver.add([header(VIRTIO_BLK_T_IN)], [512, 1])

    blk.device.queue_notify(0)

    assert blk.device.wait_idle(10)
    assert blk.driver.used() == []


def test_blk_bad_ring_address_at_activation_requests_reset(memory: GuestMemory, image: Path) -> None:
    harness = BlockHarness(memory, image)
    harness.queue.used_ring += 2      # misaligned

    harness.device.activate(memory, [harness.queue], 0, harness.interrupt)

    assert harness.resets.reasons and "aligned" in harness.resets.reasons[0]
    harness.device.close()


def test_blk_reset_stops_its_io_threads(blk: BlockHarness) -> None:
    active = blk.device._active
    assert active is not None and active.io_threads
    threads = list(active.io_threads)

    blk.device.reset()

    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)


def test_blk_reactivate_after_reset_serves_requests(blk: BlockHarness) -> None:
    blk.request(VIRTIO_BLK_T_IN, in_len=512)
    blk.device.reset()

    blk.activate(VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC)
    status, _, data = blk.request(VIRTIO_BLK_T_IN, sector=1, in_len=512)

    assert (status, data) == (VIRTIO_BLK_S_OK, pattern(1024)[512:])


def test_blk_stats_count_requests_bytes_and_errors(blk: BlockHarness) -> None:
    blk.request(VIRTIO_BLK_T_IN, in_len=1024)
    blk.request(VIRTIO_BLK_T_OUT, out=b"\0" * 512)
    blk.request(VIRTIO_BLK_T_FLUSH)
    blk.request(VIRTIO_BLK_T_IN, sector=SECTORS, in_len=512)

    stats = blk.device.stats()

    assert (stats["read_requests"], stats["write_requests"], stats["flush_requests"]) == (2, 1, 1)
    assert (stats["read_bytes"], stats["write_bytes"], stats["errors"]) == (1024, 512, 1)
    assert stats["notifications"] == 4          # one queue notify per request here


def test_blk_close_releases_image_lock(blk: BlockHarness, image: Path) -> None:
    blk.device.close()

    again = RawDisk.open(str(image))

    assert again.capacity == SECTORS
    again.close()


def test_blk_discard_without_hole_punching_still_succeeds(blk: BlockHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    # §5.2.6.2: discard is advisory ("MAY deallocate").
    def unsupported(fd: int, mode: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(disk, "fallocate", unsupported)

    status, _, _ = blk.request(VIRTIO_BLK_T_DISCARD, out=segment(0, 8))

    assert status == VIRTIO_BLK_S_OK


def test_blk_reset_leaves_no_view_into_guest_memory(image: Path) -> None:
    memory = GuestMemory(1 << 20)
    harness = BlockHarness(memory, image)
    harness.request(VIRTIO_BLK_T_IN, in_len=4096)
    harness.request(VIRTIO_BLK_T_OUT, out=b"\x01" * 4096)

    harness.device.reset()
    memory.close()

    # GuestMemory.close only unmaps RAM when no memoryview still exports it
    assert memory._mmap.closed
    harness.device.close()


# --- large requests: I/O threads or io_uring, and merging adjacent ones ---
# INLINE_MAX is lowered so that 4 KiB requests count as large (the image is
# 64 KiB): they go through the merge step, then to io_uring or, where it is
# refused, the I/O threads; every test below runs with io_uring and without.

def needs_io_uring() -> None:
    probe = Uring.create(8)
    if probe is None:
        pytest.skip("this kernel refuses io_uring (io_uring_setup failed)")
    probe.close()


@pytest.fixture(params=["threads", "io_uring"])
def large(request: pytest.FixtureRequest, blk: BlockHarness,
          monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Make 4 KiB requests large; record every disk transfer as (op, offset,
    bytes), whichever way it reaches the image."""
    monkeypatch.setattr(block, "INLINE_MAX", 1024)
    calls: list[tuple[str, int, int]] = []
    real_read, real_write = blk.device.disk.read, blk.device.disk.write

    def read(buffers, offset: int, total: int) -> None:
        calls.append(("read", offset, total))
        real_read(buffers, offset, total)

    def write(buffers, offset: int, total: int) -> None:
        calls.append(("write", offset, total))
        real_write(buffers, offset, total)

    monkeypatch.setattr(blk.device.disk, "read", read)
    monkeypatch.setattr(blk.device.disk, "write", write)
    if request.param == "io_uring":
        needs_io_uring()
        real_submit = Uring.submit_all

        def submit_all(self: Uring, entries) -> None:
            for opcode, _fd, iov, offset, _user_data in entries:
                if iov is not None:
                    calls.append(("write" if opcode == IORING_OP_WRITEV else "read", offset, sum(iov[1::2])))
            real_submit(self, entries)

        monkeypatch.setattr(Uring, "submit_all", submit_all)
    else:
        monkeypatch.setattr(block, "USE_IO_URING", False)
    blk.activate()              # again, with the engine chosen
    active = blk.device._active
    assert active is not None and (active.uring is not None) == (request.param == "io_uring")
    return calls


def post_all(blk: BlockHarness, requests: list[tuple[int, int, bytes, int]]) -> list:
    """Post every request, then notify once, so one batch pops them all."""
    posted = [blk.driver.add([header(rtype, sector)] + ([out] if out else []), ([in_len] if in_len else []) + [1])
              for rtype, sector, out, in_len in requests]
    used = dict(blk.run())
    assert sorted(used) == sorted(p.head for p in posted)
    return [(blk.driver.read(p.writable[-1])[0], used[p.head], p) for p in posted]


def test_blk_adjacent_large_writes_become_one_transfer(blk: BlockHarness, large: list) -> None:
    chunks = [bytes([0x40 + i]) * 4096 for i in range(4)]
    # Posted out of order: merging sorts by sector.
    results = post_all(blk, [(VIRTIO_BLK_T_OUT, 8 * i, chunks[i], 0) for i in (2, 0, 3, 1)])

    assert [(status, used) for status, used, _ in results] == [(VIRTIO_BLK_S_OK, 1)] * 4
    assert large == [("write", 0, 4 * 4096)]
    assert blk.path.read_bytes()[:4 * 4096] == b"".join(chunks)
    stats = blk.device.stats()
    assert (stats["write_requests"], stats["write_bytes"], stats["merged_requests"]) == (4, 4 * 4096, 4)


def test_blk_adjacent_large_reads_fill_each_request(blk: BlockHarness, large: list) -> None:
    results = post_all(blk, [(VIRTIO_BLK_T_IN, 8 * i, b"", 4096) for i in (1, 0, 2)])

    assert large == [("read", 0, 3 * 4096)]
    image = pattern(SECTORS * 512)
    for (status, used, posted), i in zip(results, (1, 0, 2)):
        assert (status, used) == (VIRTIO_BLK_S_OK, 4097)
        assert blk.driver.read(posted.writable[0]) == image[4096 * i:4096 * (i + 1)]


def test_blk_gaps_and_mixed_directions_do_not_merge(blk: BlockHarness, large: list) -> None:
    results = post_all(blk, [(VIRTIO_BLK_T_OUT, 0, b"a" * 4096, 0), (VIRTIO_BLK_T_OUT, 16, b"b" * 4096, 0),
                             (VIRTIO_BLK_T_IN, 8, b"", 4096)])

    assert all(status == VIRTIO_BLK_S_OK for status, _, _ in results)
    assert sorted(large) == [("read", 4096, 4096), ("write", 0, 4096), ("write", 8192, 4096)]


def test_blk_merge_respects_the_size_limit(blk: BlockHarness, large: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block, "MERGE_MAX", 2 * 4096)
    post_all(blk, [(VIRTIO_BLK_T_OUT, 8 * i, bytes([i]) * 4096, 0) for i in range(4)])

    assert sorted(large) == [("write", 0, 8192), ("write", 8192, 8192)]


def test_blk_invalid_request_in_a_batch_fails_alone(blk: BlockHarness, large: list) -> None:
    results = post_all(blk, [(VIRTIO_BLK_T_OUT, 0, b"a" * 4096, 0), (VIRTIO_BLK_T_OUT, 8, b"b" * 4096, 0),
                             (VIRTIO_BLK_T_OUT, SECTORS - 4, b"c" * 4096, 0)])    # runs past the end

    assert [status for status, _, _ in results] == [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR]
    assert ("write", 0, 8192) in large
    assert blk.path.read_bytes()[:8192] == b"a" * 4096 + b"b" * 4096


def test_blk_failed_merged_transfer_retries_each_request(
        blk: BlockHarness, large: list, monkeypatch: pytest.MonkeyPatch) -> None:
    real = blk.device.disk.write

    def refuse_merged(buffers, offset: int, total: int) -> None:
        if total > 4096:
            large.append(("refused", offset, total))
            raise OSError(errno.EIO, "merged write failed")
        real(buffers, offset, total)

    monkeypatch.setattr(blk.device.disk, "write", refuse_merged)
    active = blk.device._active
    if active is not None and active.uring is not None:
        # io_uring fails it too (a bad file descriptor); an I/O thread then
        # runs the transfer through the disk, which refuses it merged.
        real_submit = Uring.submit_all
        monkeypatch.setattr(Uring, "submit_all", lambda self, entries: real_submit(self, [
            (op, -1 if iov is not None and sum(iov[1::2]) > 4096 else fd, iov, offset, tag)
            for op, fd, iov, offset, tag in entries]))
    results = post_all(blk, [(VIRTIO_BLK_T_OUT, 8 * i, bytes([0x61 + i]) * 4096, 0) for i in range(3)])

    assert [status for status, _, _ in results] == [VIRTIO_BLK_S_OK] * 3
    assert ("refused", 0, 3 * 4096) in large
    assert sorted(large[large.index(("refused", 0, 3 * 4096)) + 1:]) == [
        ("write", 0, 4096), ("write", 4096, 4096), ("write", 8192, 4096)]
    assert blk.path.read_bytes()[:3 * 4096] == b"a" * 4096 + b"b" * 4096 + b"c" * 4096


@pytest.mark.parametrize("large", ["io_uring"], indirect=True)
def test_blk_short_io_uring_write_is_finished_by_the_io_path(
        blk: BlockHarness, large: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """A completion that moved fewer bytes than asked (allowed for a read
    or write) is not reported done: the transfer runs again, whole."""
    real_reap = Uring.reap
    monkeypatch.setattr(Uring, "reap", lambda self: [(tag, result // 2) for tag, result in real_reap(self)])
    results = post_all(blk, [(VIRTIO_BLK_T_OUT, 8 * i, bytes([0x70 + i]) * 4096, 0) for i in range(2)])

    assert [(status, used) for status, used, _ in results] == [(VIRTIO_BLK_S_OK, 1)] * 2
    assert large == [("write", 0, 8192), ("write", 0, 8192)]     # io_uring, then the disk
    assert blk.path.read_bytes()[:8192] == b"\x70" * 4096 + b"\x71" * 4096


@pytest.mark.parametrize("large", ["io_uring"], indirect=True)
def test_blk_short_io_uring_read_is_finished_by_the_io_path(
        blk: BlockHarness, large: list, monkeypatch: pytest.MonkeyPatch) -> None:
    real_reap = Uring.reap
    monkeypatch.setattr(Uring, "reap", lambda self: [(tag, result // 2) for tag, result in real_reap(self)])
    results = post_all(blk, [(VIRTIO_BLK_T_IN, 8 * i, b"", 4096) for i in (1, 2)])

    assert large == [("read", 4096, 8192), ("read", 4096, 8192)]  # io_uring, then the disk
    image = pattern(SECTORS * 512)
    for (status, used, posted), i in zip(results, (1, 2)):
        assert (status, used) == (VIRTIO_BLK_S_OK, 4097)
        assert blk.driver.read(posted.writable[0]) == image[4096 * i:4096 * (i + 1)]


def test_blk_read_only_large_writes_are_not_merged_and_fail(
        blk_ro: BlockHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block, "INLINE_MAX", 1024)
    before = blk_ro.path.read_bytes()

    results = post_all(blk_ro, [(VIRTIO_BLK_T_OUT, 8 * i, b"x" * 4096, 0) for i in range(2)])

    assert [status for status, _, _ in results] == [VIRTIO_BLK_S_IOERR] * 2
    assert blk_ro.path.read_bytes() == before


def test_blk_buffer_refused_at_the_last_check_resets_without_losing_a_thread(
        blk: BlockHarness, large: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """The buffers were checked at pop; should the check before the system
    call still refuse one, the request is a ring error (reset), and the
    thread that ran it lives on."""
    from kvmlite.base.memory import GuestMemoryError

    def refuse(*args: object, **kwargs: object) -> None:
        raise GuestMemoryError("guest address range refused")

    for name in ("iovec", "io_buffers", "descriptor_iovec"):
        monkeypatch.setattr(blk.memory, name, refuse)
    blk.driver.add([header(VIRTIO_BLK_T_IN, 0)], [4096, 1])
    blk.device.queue_notify(0)

    assert blk.device.wait_idle(timeout=10)
    assert blk.resets.reasons and "refused" in blk.resets.reasons[0]
    active = blk.device._active
    assert active is not None and all(thread.is_alive() for thread in active.io_threads)


@pytest.mark.parametrize("large", ["io_uring"], indirect=True)
def test_blk_with_io_uring_large_reads_and_writes_are_submitted_not_run_by_threads(
        blk: BlockHarness, large: list, monkeypatch: pytest.MonkeyPatch) -> None:
    submitted: list[list[int]] = []
    real_submit = Uring.submit_all
    monkeypatch.setattr(Uring, "submit_all", lambda self, entries:
                        (submitted.append([entry[0] for entry in entries]), real_submit(self, entries)))
    post_all(blk, [(VIRTIO_BLK_T_OUT, 0, b"w" * 4096, 0), (VIRTIO_BLK_T_IN, 16, b"", 4096)])

    assert submitted == [[IORING_OP_READV, IORING_OP_WRITEV]]       # popped together: one system call
    assert sorted(large) == [("read", 8192, 4096), ("write", 0, 4096)]     # recorded at submission only
    assert blk.path.read_bytes()[:4096] == b"w" * 4096


def test_blk_io_uring_completions_are_reaped_on_the_given_event_loop(image: Path) -> None:
    """In a VM the device reaps io_uring completions on the VMM's event
    loop (no thread of its own); a reset takes the ring off the loop."""
    from kvmlite.base.eventloop import EventLoop

    needs_io_uring()
    loop = EventLoop("test-io")
    loop.start()
    reapers: list[str] = []
    memory = GuestMemory(1 << 20)
    harness = BlockHarness(memory, image, loop=loop)
    real_reap = Uring.reap
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(block, "INLINE_MAX", 1024)
            mp.setattr(Uring, "reap", lambda self: (reapers.append(threading.current_thread().name),
                                                    real_reap(self))[1])
            active = harness.device._active
            assert active is not None and active.uring is not None and active.loop is loop
            assert not active.own_loop
            status, used, data = harness.request(VIRTIO_BLK_T_IN, sector=8, in_len=4096)

        assert (status, used, data) == (VIRTIO_BLK_S_OK, 4097, pattern(SECTORS * 512)[4096:8192])
        assert reapers and set(reapers) == {"test-io"}
        completions = active.completions
        assert completions in loop._callbacks
        harness.device.reset()
        assert completions not in loop._callbacks and active.uring is None
    finally:
        harness.device.close()
        loop.close()
        memory.close()


@pytest.mark.parametrize("high_fd", [False, True], ids=["eventfd", "eventfd-past-FD_SETSIZE"])
def test_blk_reset_reaps_io_uring_itself_when_the_event_loop_is_stopped(
        image: Path, high_fd: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """VM shutdown stops the event loop before it closes the devices: a
    reset with transfers in flight still waits for them, reaping them
    itself, and returns; also when the completion eventfd is numbered past
    what select() takes (a VMM with many disks and taps)."""
    import resource

    from kvmlite.base.eventloop import EventLoop

    needs_io_uring()
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    if high_fd:
        soft, hard = limits
        if hard != resource.RLIM_INFINITY and hard < 4096:
            pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} is below 4096")
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
        real_eventfd = os.eventfd

        def eventfd_at_4000(*args: int) -> int:
            fd = real_eventfd(*args)
            os.dup2(fd, 4000)
            os.close(fd)
            return 4000

        monkeypatch.setattr(os, "eventfd", eventfd_at_4000)
    loop = EventLoop("stopped")             # never started: nothing reaps but the reset
    memory = GuestMemory(1 << 20)
    harness = BlockHarness(memory, image, loop=loop)
    monkeypatch.undo()
    if high_fd:
        assert harness.device._active is not None and harness.device._active.completions == 4000
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(block, "INLINE_MAX", 1024)
            posted = harness.driver.add([header(VIRTIO_BLK_T_IN, 16)], [8192, 1])
            harness.device.queue_notify(0)
            active = harness.device._active
            assert active is not None and active.uring is not None and active.inflight == 1
            resetting = threading.Thread(target=harness.device.reset)
            resetting.start()
            resetting.join(timeout=10)

        assert not resetting.is_alive(), "reset did not return with io_uring transfers in flight"
        assert active.inflight == 0 and active.uring is None
        assert harness.driver.read(posted.writable[0]) == pattern(SECTORS * 512)[8192:16384]   # it did run
    finally:
        harness.device.close()
        loop.close()
        memory.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_blk_where_the_io_uring_eventfd_is_refused_the_io_threads_do_it(
        blk: BlockHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Uring, fd: int) -> None:
        raise OSError(errno.EINVAL, "io_uring_register(EVENTFD): Invalid argument")

    monkeypatch.setattr(Uring, "register_eventfd", refuse)
    monkeypatch.setattr(block, "INLINE_MAX", 1024)
    blk.activate()
    active = blk.device._active
    assert active is not None and active.uring is None

    assert blk.request(VIRTIO_BLK_T_OUT, sector=0, out=b"t" * 4096)[0] == VIRTIO_BLK_S_OK
    assert blk.request(VIRTIO_BLK_T_IN, sector=0, in_len=4096)[::2] == (VIRTIO_BLK_S_OK, b"t" * 4096)



@pytest.mark.parametrize("large", ["io_uring"], indirect=True)
def test_blk_an_io_uring_completion_pops_what_the_driver_added_meanwhile(
        blk: BlockHarness, large: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reaping a completion looks at the ring again: a request the driver
    added while a transfer was in flight starts then, before its own
    notification is served (which then finds the ring empty)."""
    gate = threading.Event()
    real_reap = VirtioBlock._reap
    monkeypatch.setattr(VirtioBlock, "_reap", lambda self, active: (gate.wait(10), real_reap(self, active))[1])
    first = blk.driver.add([header(VIRTIO_BLK_T_IN, 0)], [4096, 1])
    blk.device.queue_notify(0)              # popped and submitted; its completion waits at the gate
    second = blk.driver.add([header(VIRTIO_BLK_T_IN, 8)], [4096, 1])      # no notification
    gate.set()
    for _ in range(1000):
        if blk.driver.used_idx() == 2:
            break
        threading.Event().wait(0.01)

    assert sorted(head for head, _ in blk.driver.used()) == sorted([first.head, second.head])
    assert blk.driver.read(second.writable[0]) == pattern(SECTORS * 512)[4096:8192]
    assert blk.device.stats()["notifications"] == 1
