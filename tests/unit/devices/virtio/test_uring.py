"""The io_uring wrapper against the real kernel: vectored reads and writes
at an offset, short transfers, errors, the completion eventfd, concurrent
submitters."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import threading
from array import array
from pathlib import Path
from typing import Iterator

import pytest

from kvmlite.devices.virtio.uring import IORING_OP_NOP, IORING_OP_READV, IORING_OP_WRITEV, Uring


class Ring:
    """A ring with its completion eventfd registered, as virtio-blk uses it."""

    def __init__(self, uring: Ring) -> None:
        self.uring = uring
        self.eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        uring.register_eventfd(self.eventfd)

    def signalled(self, timeout: float) -> bool:
        return bool(select.select([self.eventfd], [], [], timeout)[0])

    def wait(self) -> list[tuple[int, int]]:
        """Completions, as an event loop gets them: eventfd, then reap."""
        while True:
            assert self.signalled(10), "no completion signalled within 10 s"
            os.eventfd_read(self.eventfd)
            done = self.uring.reap()
            if done:
                return done

    def close(self) -> None:
        self.uring.close()
        os.close(self.eventfd)


@pytest.fixture
def ring() -> Iterator[Ring]:
    uring = Uring.create(8)
    if uring is None:
        pytest.skip("this kernel refuses io_uring (io_uring_setup failed)")
    ring = Ring(uring)
    yield ring
    ring.close()


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "file"
    path.write_bytes(bytes(range(256)) * 64)           # 16 KiB
    fd = os.open(path, os.O_RDWR)
    yield fd
    os.close(fd)


def iovec(*buffers: ctypes.Array) -> array:
    return array("Q", [v for b in buffers for v in (ctypes.addressof(b), len(b))])


def test_readv_fills_every_buffer_from_the_offset(ring: Ring, fd: int) -> None:
    first, second = ctypes.create_string_buffer(4096), ctypes.create_string_buffer(100)
    ring.uring.submit(IORING_OP_READV, fd, iovec(first, second), 256, 7)

    assert ring.wait() == [(7, 4196)]
    data = (bytes(range(256)) * 64)[256:256 + 4196]
    assert first.raw == data[:4096] and second.raw == data[4096:]


def test_writev_writes_the_buffers_in_order(ring: Ring, fd: int) -> None:
    a, b = ctypes.create_string_buffer(b"A" * 512, 512), ctypes.create_string_buffer(b"B" * 512, 512)
    ring.uring.submit(IORING_OP_WRITEV, fd, iovec(a, b), 1024, 3)

    assert ring.wait() == [(3, 1024)]
    assert os.pread(fd, 1024, 1024) == b"A" * 512 + b"B" * 512


def test_read_past_the_end_is_short_and_errors_are_negative_errno(ring: Ring, fd: int) -> None:
    buffer = ctypes.create_string_buffer(8192)
    ring.uring.submit(IORING_OP_READV, fd, iovec(buffer), 16384 - 100, 1)
    assert ring.wait() == [(1, 100)]

    ring.uring.submit(IORING_OP_READV, -1, iovec(buffer), 0, 2)
    assert ring.wait() == [(2, -errno.EBADF)]


def test_a_completion_signals_the_registered_eventfd_and_reap_never_waits(ring: Ring) -> None:
    assert ring.uring.reap() == []              # nothing yet, and no wait for it
    assert not ring.signalled(0)
    ring.uring.submit(IORING_OP_NOP, -1, None, 0, 99)

    assert ring.signalled(10)
    assert ring.uring.reap() == [(99, 0)]
    assert ring.uring.reap() == []              # each completion once


def test_many_submitters_each_completion_once(ring: Ring) -> None:
    tags = list(range(1, 201))

    def submit(mine: list[int]) -> None:
        for tag in mine:
            ring.uring.submit(IORING_OP_NOP, -1, None, 0, tag)

    seen: list[int] = []
    collector = threading.Thread(target=lambda: [seen.extend(t for t, _ in ring.wait()) for _ in iter(
        lambda: len(seen) < len(tags), False)])
    collector.start()
    submitters = [threading.Thread(target=submit, args=(tags[i::4],)) for i in range(4)]
    for thread in submitters:
        thread.start()
    for thread in submitters:
        thread.join(timeout=10)
    collector.join(timeout=10)

    assert sorted(seen) == tags


def test_a_full_submission_queue_is_an_error_not_an_overwrite(ring: Ring, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ring.uring, "_enter", lambda *args: None)     # nothing reaches the kernel: the queue fills
    for tag in range(ring.uring.entries):
        ring.uring.submit(IORING_OP_NOP, -1, None, 0, tag)
    with pytest.raises(OSError, match="full"):
        ring.uring.submit(IORING_OP_NOP, -1, None, 0, 1000)


def test_submit_all_enters_every_entry_and_refuses_all_when_there_is_no_room(
        ring: Ring, fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    buffers = [ctypes.create_string_buffer(512) for _ in range(3)]
    ring.uring.submit_all([(IORING_OP_READV, fd, iovec(b), 512 * i, 10 + i) for i, b in enumerate(buffers)])
    done: list[tuple[int, int]] = []
    while len(done) < 3:
        done += ring.wait()

    assert sorted(done) == [(10, 512), (11, 512), (12, 512)]
    data = bytes(range(256)) * 64
    assert [b.raw for b in buffers] == [data[512 * i:512 * (i + 1)] for i in range(3)]

    monkeypatch.setattr(ring.uring, "_enter", lambda *args: None)     # nothing reaches the kernel
    ring.uring.submit_all([(IORING_OP_NOP, -1, None, 0, tag) for tag in range(ring.uring.entries - 2)])
    with pytest.raises(OSError, match="full"):
        ring.uring.submit_all([(IORING_OP_NOP, -1, None, 0, tag) for tag in range(3)])
    ring.uring.submit_all([(IORING_OP_NOP, -1, None, 0, tag) for tag in range(2)])      # the room that was left
