"""Raw disk images: configuration, opening, locking, and vectored I/O."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import subprocess
import sys
import tempfile
from array import array
from pathlib import Path

import pytest

from kvmlite.devices.virtio import disk as disk_module
from kvmlite.devices.virtio.disk import IOV_MAX, SERIAL_LEN, RawDisk, advance
from kvmlite.errors import ConfigError
from kvmlite.base.memory import GuestMemory


def make_image(tmp_path: Path, size: int = 4096, name: str = "disk.img") -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(i % 251 for i in range(size)))
    return path


# --- RawDisk.open errors ---

def test_open_missing_image_raises_one_line_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as caught:
        RawDisk.open(str(tmp_path / "nope.img"))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("read_only", [False, True])
def test_open_directory_raises_config_error(tmp_path: Path, read_only: bool) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        RawDisk.open(str(tmp_path), read_only)


@pytest.mark.parametrize(("size", "message"), [(0, "empty"), (100, "100 bytes")])
def test_open_image_smaller_than_a_sector_raises_config_error(tmp_path: Path, size: int, message: str) -> None:
    path = make_image(tmp_path, size)

    with pytest.raises(ConfigError, match=message):
        RawDisk.open(str(path))


NOBODY = 65534
# Opens argv[1] as a user the file's mode applies to (root reads and writes
# files whatever their mode, so as root it first becomes nobody) and prints
# what RawDisk.open said.  Exit 0: a ConfigError; 3: this root cannot switch
# users; 4: the directory is unreachable (the test would prove nothing).
_OPEN_AS_USER = f"""
import os, sys
from kvmlite.devices.virtio.disk import RawDisk
from kvmlite.errors import ConfigError
if os.geteuid() == 0:
    try:
        os.setgroups([])
        os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
        os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
    except PermissionError:
        sys.exit(3)
try:
    os.listdir(os.path.dirname(sys.argv[1]))
except PermissionError:
    sys.exit(4)
try:
    RawDisk.open(sys.argv[1], sys.argv[2] == "ro")
except ConfigError as exc:
    print(exc)
    sys.exit(0)
print("opened")
sys.exit(1)
"""


@pytest.mark.parametrize("read_only", [False, True])
def test_open_unreadable_image_raises_config_error(read_only: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="kvmlite-mode-") as tmp:
        os.chmod(tmp, 0o755)            # reachable by anyone; only the image's mode denies
        path = make_image(Path(tmp))
        path.chmod(0)
        repo = Path(disk_module.__file__).resolve().parents[3]
        done = subprocess.run([sys.executable, "-c", _OPEN_AS_USER, str(path), "ro" if read_only else "rw"],
                              capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=str(repo)))
    if done.returncode == 3:
        pytest.skip("needs a non-root user, or a root that may switch to nobody: root reads files "
                    "whatever their mode")
    assert done.returncode != 4, f"the temporary directory {tmp} is not reachable by uid {NOBODY}"
    assert done.returncode == 0, done.stdout + done.stderr
    message = done.stdout.strip()
    assert message.endswith("permission denied") and str(path) in message
    assert ("(add ',ro' for read-only)" in message) is not read_only


# --- locking ---

def test_open_image_in_use_raises_config_error(tmp_path: Path) -> None:
    path = make_image(tmp_path)
    first = RawDisk.open(str(path))
    try:
        with pytest.raises(ConfigError, match="in use by another VM"):
            RawDisk.open(str(path), read_only=True)
    finally:
        first.close()


def test_open_image_locked_by_other_process_raises_config_error(tmp_path: Path) -> None:
    path = make_image(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match="in use by another VM"):
            RawDisk.open(str(path))
    finally:
        holder.communicate("", timeout=10)


def test_open_read_only_twice_shares_the_image(tmp_path: Path) -> None:
    path = make_image(tmp_path)
    first = RawDisk.open(str(path), read_only=True)
    second = RawDisk.open(str(path), read_only=True)

    assert (first.capacity, second.capacity) == (8, 8)
    first.close()
    second.close()


def test_close_releases_the_lock(tmp_path: Path) -> None:
    path = make_image(tmp_path)
    RawDisk.open(str(path)).close()

    again = RawDisk.open(str(path))

    assert again.fd >= 0
    again.close()


# --- geometry and identity ---

def test_open_size_not_sector_multiple_rounds_down_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = make_image(tmp_path, 4096 + 100)

    with caplog.at_level(logging.WARNING):
        disk = RawDisk.open(str(path))

    assert disk.capacity == 8
    assert "not a multiple of 512" in caplog.text
    disk.close()


def test_serial_is_20_ascii_bytes_stable_per_image(tmp_path: Path) -> None:
    a, b = make_image(tmp_path, name="a.img"), make_image(tmp_path, name="b.img")
    first = RawDisk.open(str(a))
    serial = first.serial
    first.close()

    again = RawDisk.open(str(a))
    other = RawDisk.open(str(b))

    assert len(serial) == SERIAL_LEN and serial.isascii()
    assert again.serial == serial != other.serial
    again.close()
    other.close()


# --- vectored I/O ---
# Buffers live in a real GuestMemory and reach the disk as the iovec array
# GuestMemory.iovec builds, as virtio-blk passes them.

def scattered(memory: GuestMemory, count: int, size: int) -> tuple[list[int], list[int]]:
    """``count`` buffers of ``size`` bytes, a gap after each."""
    addrs = [0x10000 + 2 * size * i for i in range(count)]
    return addrs, [size] * count


def buffers(memory: GuestMemory, form: str, addrs: list[int], lens: list[int]) -> array | list[memoryview]:
    """The two forms GuestMemory.io_buffers hands to RawDisk."""
    if form == "iovec":
        return memory.iovec(addrs, lens)
    return [memory.view(a, n) for a, n in zip(addrs, lens)]


def gather(memory: GuestMemory, addrs: list[int], lens: list[int]) -> bytes:
    return b"".join(memory.read(a, n) for a, n in zip(addrs, lens))


@pytest.mark.parametrize("form", ["iovec", "views"])
def test_read_more_buffers_than_iov_max_fills_all(tmp_path: Path, form: str) -> None:
    count = IOV_MAX + 10
    path = make_image(tmp_path, 16 * count)
    disk = RawDisk.open(str(path), read_only=True)
    memory = GuestMemory(4 << 20)
    addrs, lens = scattered(memory, count, 16)

    disk.read(buffers(memory, form, addrs, lens), 0, 16 * count)

    assert gather(memory, addrs, lens) == path.read_bytes()
    disk.close()


@pytest.mark.parametrize("form", ["iovec", "views"])
def test_write_more_buffers_than_iov_max_writes_all(tmp_path: Path, form: str) -> None:
    count = IOV_MAX + 10
    path = make_image(tmp_path, 16 * count)
    disk = RawDisk.open(str(path))
    memory = GuestMemory(4 << 20)
    addrs, lens = scattered(memory, count, 16)
    source = bytes(range(256)) * (count // 16 + 1)
    for i, addr in enumerate(addrs):
        memory.write(addr, source[16 * i:16 * (i + 1)])

    disk.write(buffers(memory, form, addrs, lens), 0, 16 * count)

    assert path.read_bytes() == source[:16 * count]
    disk.close()


def test_read_short_transfers_resume_where_they_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_image(tmp_path, 4096)
    disk = RawDisk.open(str(path), read_only=True)
    real = disk_module._preadv
    calls = []

    def at_most_100(fd: int, iov: int, count: int, offset: int) -> int:   # a kernel that returns short reads
        base, length = (ctypes.c_uint64 * 2).from_address(iov)
        calls.append(count)
        first = array("Q", [base, min(length, 100)])
        return real(fd, first.buffer_info()[0], 1, offset)

    monkeypatch.setattr(disk_module, "_preadv", at_most_100)
    memory = GuestMemory(1 << 20)
    addrs, lens = scattered(memory, 8, 512)

    disk.read(memory.iovec(addrs, lens), 0, 4096)

    assert gather(memory, addrs, lens) == path.read_bytes()
    assert len(calls) == 4096 // 100 + 8 and calls[0] == 8 and calls[-1] == 1
    disk.close()


def test_read_short_transfers_into_views_resume_where_they_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_image(tmp_path, 4096)
    disk = RawDisk.open(str(path), read_only=True)
    real = os.preadv

    def at_most_100(fd: int, views: list[memoryview], offset: int) -> int:
        return real(fd, [views[0][:100]], offset)

    monkeypatch.setattr(os, "preadv", at_most_100)
    memory = GuestMemory(1 << 20)
    addrs, lens = scattered(memory, 8, 512)

    disk.read(buffers(memory, "views", addrs, lens), 0, 4096)

    assert gather(memory, addrs, lens) == path.read_bytes()
    disk.close()


def test_advance_iovec_drops_used_bytes_and_buffers() -> None:
    iov = array("Q", [0x1000, 10, 0x2000, 20, 0x3000, 30])

    assert advance(iov, 0) == iov
    assert advance(iov, 4) == array("Q", [0x1004, 6, 0x2000, 20, 0x3000, 30])
    assert advance(iov, 10) == array("Q", [0x2000, 20, 0x3000, 30])
    assert advance(iov, 35) == array("Q", [0x3005, 25])
    assert advance(iov, 60) == array("Q")


def test_advance_views_drops_used_bytes_and_buffers() -> None:
    views = [memoryview(b"ab"), memoryview(b""), memoryview(b"cde")]

    assert [bytes(v) for v in advance(views, 1)] == [b"b", b"", b"cde"]
    assert [bytes(v) for v in advance(views, 3)] == [b"de"]
    assert advance(views, 5) == []


def test_read_past_end_of_file_raises_os_error(tmp_path: Path) -> None:
    path = make_image(tmp_path, 1024)
    disk = RawDisk.open(str(path), read_only=True)

    with pytest.raises(OSError):
        memory = GuestMemory(1 << 20)
        disk.read(memory.iovec([0x1000], [512]), 1024, 512)
    disk.close()


# --- I/O that must not wait (the disk's event loop) ---

def shm_dir() -> Path:
    path = Path("/dev/shm")
    if not path.is_dir() or not os.access(path, os.W_OK):
        pytest.skip("no writable /dev/shm (tmpfs) on this machine")
    return path


def test_image_in_memory_reads_and_writes_without_nowait(tmp_path: Path) -> None:
    """tmpfs refuses RWF_NOWAIT, but nothing there waits for a device: the
    loop thread may read and write it all the same."""
    shm = shm_dir()
    path = make_image(Path(tmp_path), 8192)
    target = shm / f"kvmlite-test-{os.getpid()}.img"
    target.write_bytes(path.read_bytes())
    disk = RawDisk.open(str(target))
    try:
        buf = bytearray(4096)
        assert disk.memory_backed
        assert disk.try_read([memoryview(buf)], 4096) == 4096
        assert disk.try_write([memoryview(b"\x07" * 512)], 0) == 512
        assert disk.try_read([memoryview(buf)], 4096) == 4096        # the choice is remembered
    finally:
        disk.close()
        data = target.read_bytes()
        target.unlink()
    assert bytes(buf) == path.read_bytes()[4096:]
    assert data[:512] == b"\x07" * 512


def test_image_on_disk_read_not_cached_would_wait(tmp_path: Path) -> None:
    """On a filesystem that answers RWF_NOWAIT, cached data is read at once
    and data the page cache dropped is refused (None): it needs the device."""
    disk = RawDisk.open(str(make_image(tmp_path, 1 << 20)))
    try:
        if disk.memory_backed:
            pytest.skip(f"{tmp_path} is memory-backed: no read there waits for a device")
        buf = bytearray(4096)
        assert disk.try_read([memoryview(buf)], 0) == 4096
        os.fsync(disk.fd)
        os.posix_fadvise(disk.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert disk.try_read([memoryview(buf)], 512 << 10) is None
    finally:
        disk.close()
    assert bytes(buf[:16]) == bytes(i % 251 for i in range(16))


def test_filesystem_refusing_nowait_reads_leaves_them_to_the_io_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that is not in memory and refuses RWF_NOWAIT (a network
    or FUSE one may) cannot tell a cached read from a slow one: try_read
    answers None from then on, without asking again; a buffered write is
    still made (a copy into the page cache)."""
    disk = RawDisk.open(str(make_image(tmp_path, 8192)))
    calls = []
    real_preadv, real_pwritev = os.preadv, os.pwritev

    def refusing(real):
        def call(fd, buffers, offset, flags=0):
            calls.append(flags)
            if flags & os.RWF_NOWAIT:
                raise OSError(errno.EOPNOTSUPP, "Operation not supported")
            return real(fd, buffers, offset, flags)
        return call

    monkeypatch.setattr(disk_module.os, "preadv", refusing(real_preadv))
    monkeypatch.setattr(disk_module.os, "pwritev", refusing(real_pwritev))
    disk.memory_backed = False
    try:
        buf = bytearray(512)
        assert disk.try_read([memoryview(buf)], 0) is None
        assert disk.try_read([memoryview(buf)], 0) is None
        assert disk.try_write([memoryview(b"\x01" * 512)], 512) == 512
        assert disk.try_write([memoryview(b"\x02" * 512)], 1024) == 512
    finally:
        disk.close()
    assert calls == [os.RWF_NOWAIT, os.RWF_NOWAIT, 0, 0]
    data = (tmp_path / "disk.img").read_bytes()
    assert data[512:1024] == b"\x01" * 512 and data[1024:1536] == b"\x02" * 512
