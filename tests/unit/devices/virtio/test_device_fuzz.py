"""Devices driven by random hostile rings: no exception escapes a device,
its worker never crashes, and nothing outside guest RAM is touched
(RecordingMemory asserts every view; GuestMemory refuses the rest)."""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from kvmlite.devices.virtio import block
from kvmlite.devices.virtio.block import VirtioBlock
from kvmlite.devices.virtio.console import VirtioConsole
from kvmlite.devices.virtio.disk import RawDisk
from kvmlite.devices.virtio.queue import Queue
from kvmlite.devices.virtio.rng import VirtioRng
from tests.unit.devices.virtio.fakedriver import NeedsResetRecorder, RecordingInterrupt, RecordingMemory
from tests.unit.devices.virtio.fakedriver import FakeDriver, call_on_loop
from tests.unit.devices.virtio.hostile import (RAM, BlkRequest, HostileRing, blk_requests, descriptors,
                                               hostile_rings, install, post_blk)

MEMORY = RecordingMemory(RAM)


class ErrorRecords(logging.Handler):
    """Collects ERROR records: a worker logs a crashed handler at ERROR."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    logger = logging.getLogger("kvmlite")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
def raw_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawDisk]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "disk.img"
    path.write_bytes(bytes(200 * 512))
    disk = RawDisk.open(str(path))
    yield disk
    disk.close()


def hostile_queue(ring: HostileRing) -> Queue:
    queue = Queue(16)
    install(ring, MEMORY, queue)
    return queue


@settings(max_examples=200, deadline=None)
@given(ring=hostile_rings())
def test_blk_random_hostile_ring_never_crashes(ring: HostileRing, raw_disk: RawDisk, errors: ErrorRecords) -> None:
    hostile_ring(ring, raw_disk, errors)


@settings(max_examples=200, deadline=None)
@given(ring=hostile_rings())
def test_blk_random_hostile_ring_on_the_disk_loop_never_crashes(ring: HostileRing, raw_disk: RawDisk,
                                                                 errors: ErrorRecords, disk_loop) -> None:
    hostile_ring(ring, raw_disk, errors, disk_loop)


def hostile_ring(ring: HostileRing, raw_disk: RawDisk, errors: ErrorRecords, loop=None) -> None:
    errors.records.clear()
    device = VirtioBlock(raw_disk, queue_size=16, loop=loop)
    device.on_needs_reset = NeedsResetRecorder()
    queue = hostile_queue(ring)

    def start() -> None:    # activation pops what the hostile ring already holds
        device.activate(MEMORY, [queue], device.device_features(), RecordingInterrupt())
        device.queue_notify(0)

    if loop is None:
        start()
    else:
        call_on_loop(loop, start)

    assert device.wait_idle(timeout=10)
    stats = device.stats()
    served = sum(v for k, v in stats.items() if k.endswith("_requests"))
    event(f"requests served: {min(served, 2)}+, errors: {bool(stats['errors'])}, reset: {bool(stats['queue_errors'])}")
    threads = list(device._active.io_threads) if device._active else []
    device.reset()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert errors.records == []


@settings(max_examples=200, deadline=None)
@given(requests=st.lists(blk_requests(), min_size=1, max_size=4),     # 4 x 4 descriptors fit the ring
       corruption=st.none() | st.tuples(st.integers(0, 15), descriptors(16)))
def test_blk_hostile_requests_complete_with_a_status_or_reset(requests: list[BlkRequest],
                                                              corruption: tuple[int, tuple[int, int, int, int]] | None,
                                                              raw_disk: RawDisk, errors: ErrorRecords) -> None:
    hostile_requests(requests, corruption, raw_disk, errors)


@settings(max_examples=200, deadline=None)
@given(requests=st.lists(blk_requests(), min_size=1, max_size=4),
       corruption=st.none() | st.tuples(st.integers(0, 15), descriptors(16)))
def test_blk_hostile_requests_on_the_disk_loop_complete_with_a_status_or_reset(
        requests: list[BlkRequest], corruption: tuple[int, tuple[int, int, int, int]] | None,
        raw_disk: RawDisk, errors: ErrorRecords, disk_loop) -> None:
    """The same, notified on the disk's event loop, whose thread runs the
    small reads and writes itself."""
    hostile_requests(requests, corruption, raw_disk, errors, disk_loop)


def hostile_requests(requests: list[BlkRequest], corruption: tuple[int, tuple[int, int, int, int]] | None,
                     raw_disk: RawDisk, errors: ErrorRecords, loop=None) -> None:
    errors.records.clear()
    device = VirtioBlock(raw_disk, queue_size=16, loop=loop)
    resets = NeedsResetRecorder()
    device.on_needs_reset = resets
    queue = Queue(16)
    driver = FakeDriver(MEMORY, queue)
    if loop is not None:        # activated first, so the loop's notification pops the requests
        device.activate(MEMORY, [queue], device.device_features(), RecordingInterrupt())
    for request in requests:
        post_blk(driver, request)
    if corruption is not None:
        driver.write_desc(driver.desc_table, corruption[0], *corruption[1])

    if loop is None:
        device.activate(MEMORY, [queue], device.device_features(), RecordingInterrupt())
        device.queue_notify(0)
    else:
        call_on_loop(loop, lambda: device.queue_notify(0))
    assert device.wait_idle(timeout=10)
    device.reset()

    used = driver.used()
    event(f"completed {len(used)} of {len(requests)}, reset: {bool(resets.reasons)}")
    assert errors.records == []
    assert len(used) == len(requests) or resets.reasons
    assert all(head < 16 for head, _ in used)


@settings(max_examples=200, deadline=None)
@given(ring=hostile_rings())
def test_console_random_hostile_rings_never_crash(ring: HostileRing, errors: ErrorRecords) -> None:
    errors.records.clear()
    output: list[bytes] = []
    device = VirtioConsole(output.append, queue_size=16)
    device.on_needs_reset = NeedsResetRecorder()
    rx = hostile_queue(ring)
    tx = Queue(16)
    for field in ("size", "desc_table", "avail_ring", "used_ring", "ready"):
        setattr(tx, field, getattr(rx, field))   # both queues on the same hostile rings

    device.activate(MEMORY, [rx, tx], device.device_features(), RecordingInterrupt())
    device.enqueue_input(b"input for a hostile guest")
    device.queue_notify(1)
    device.queue_notify(0)

    device.reset()
    assert errors.records == []


@settings(max_examples=200, deadline=None)
@given(ring=hostile_rings())
def test_rng_random_hostile_ring_never_crashes(ring: HostileRing, errors: ErrorRecords) -> None:
    errors.records.clear()
    device = VirtioRng(queue_size=16)
    device.on_needs_reset = NeedsResetRecorder()

    device.activate(MEMORY, [hostile_queue(ring)], device.device_features(), RecordingInterrupt())
    device.queue_notify(0)

    assert device.stats()["bytes"] <= 64 * 1024 * ring.size
    assert errors.records == []


@settings(max_examples=150, deadline=None)
@given(requests=st.lists(blk_requests(), min_size=1, max_size=4),
       corruption=st.none() | st.tuples(st.integers(0, 15), descriptors(16)))
def test_blk_hostile_large_requests_complete_with_a_status_or_reset(
        requests: list[BlkRequest], corruption: tuple[int, tuple[int, int, int, int]] | None,
        raw_disk: RawDisk, errors: ErrorRecords) -> None:
    """The same, with every request counted as large: through the merge
    step and the I/O threads."""
    saved, block.INLINE_MAX = block.INLINE_MAX, 0
    try:
        hostile_requests(requests, corruption, raw_disk, errors)
    finally:
        block.INLINE_MAX = saved


@settings(max_examples=100, deadline=None)
@given(extents=st.lists(st.tuples(st.sampled_from([0, 0, 1, 3]), st.integers(1, 6)), min_size=1, max_size=5),
       order=st.randoms(use_true_random=False), reads=st.booleans(), seed=st.integers(0, 255))
def test_blk_merged_requests_move_the_same_bytes_as_one_by_one(
        extents: list[tuple[int, int]], order, reads: bool, seed: int,
        raw_disk: RawDisk, errors: ErrorRecords) -> None:
    """Non-overlapping reads or writes of 4 KiB blocks, often adjacent (those
    merge), posted in one batch in any order as large requests: the image
    and the guest buffers end up as if each request ran alone."""
    errors.records.clear()
    chosen = []
    block_at = 0
    for gap, count in extents:               # (gap before, length) in 4 KiB blocks
        block_at += gap
        if (block_at + count) * 8 <= 200:
            chosen.append((block_at * 8, count * 8 * 512))
        block_at += count
    order.shuffle(chosen)
    image = bytearray(bytes((seed + i) % 251 for i in range(200 * 512)))
    os.pwrite(raw_disk.fd, bytes(image), 0)
    device = VirtioBlock(raw_disk, queue_size=16)
    device.on_needs_reset = NeedsResetRecorder()
    queue = Queue(16)
    driver = FakeDriver(MEMORY, queue)
    posted = []
    for n, (sector, nbytes) in enumerate(chosen):
        head = struct.pack("<IIQ", 0 if reads else 1, 0, sector)
        if reads:
            posted.append(driver.add([head], [nbytes, 1]))
        else:
            data = bytes([(seed + 7 * n + 1) % 256]) * nbytes
            image[sector * 512:sector * 512 + nbytes] = data
            posted.append(driver.add([head, data], [1]))
    saved, block.INLINE_MAX = block.INLINE_MAX, 0
    try:
        device.activate(MEMORY, [queue], device.device_features(), RecordingInterrupt())
        device.queue_notify(0)
        assert device.wait_idle(timeout=10)
    finally:
        block.INLINE_MAX = saved
    event(f"merged: {device.stats()['merged_requests'] > 0}")
    device.reset()

    assert len(driver.used()) == len(chosen) and errors.records == []
    for p, (sector, nbytes) in zip(posted, chosen):
        assert driver.read(p.writable[-1]) == b"\0"                      # VIRTIO_BLK_S_OK
        if reads:
            assert driver.read(p.writable[0]) == bytes(image[sector * 512:sector * 512 + nbytes])
    assert os.pread(raw_disk.fd, len(image), 0) == bytes(image)
