"""Raw disk images: configuration, opening, locking, and vectored I/O."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.devices.virtio.disk import IOV_MAX, SERIAL_LEN, RawDisk
from kvmlite.errors import ConfigError


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


@pytest.mark.skipif(os.geteuid() == 0, reason="needs a non-root user: root reads files whatever their mode")
def test_open_unreadable_image_raises_config_error(tmp_path: Path) -> None:
    path = make_image(tmp_path)
    path.chmod(0)

    with pytest.raises(ConfigError, match="permission denied"):
        RawDisk.open(str(path))


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

def test_read_more_buffers_than_iov_max_fills_all(tmp_path: Path) -> None:
    count = IOV_MAX + 10
    path = make_image(tmp_path, 16 * count)
    disk = RawDisk.open(str(path), read_only=True)
    target = bytearray(16 * count)
    views = [memoryview(target)[i * 16:(i + 1) * 16] for i in range(count)]

    disk.read(views, 0)

    assert bytes(target) == path.read_bytes()
    disk.close()


def test_write_more_buffers_than_iov_max_writes_all(tmp_path: Path) -> None:
    count = IOV_MAX + 10
    path = make_image(tmp_path, 16 * count)
    disk = RawDisk.open(str(path))
    source = bytes(range(256)) * (count // 16 + 1)
    views = [memoryview(source)[i * 16:(i + 1) * 16] for i in range(count)]

    disk.write(views, 0)

    assert path.read_bytes() == source[:16 * count]
    disk.close()


def test_read_short_transfers_resume_where_they_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_image(tmp_path, 4096)
    disk = RawDisk.open(str(path), read_only=True)
    real = os.preadv

    def at_most_100(fd: int, buffers, offset: int) -> int:   # a kernel that returns short reads
        first = memoryview(buffers[0])[:100]
        return real(fd, [first], offset)

    monkeypatch.setattr(os, "preadv", at_most_100)
    target = bytearray(4096)
    views = [memoryview(target)[i * 512:(i + 1) * 512] for i in range(8)]

    disk.read(views, 0)

    assert bytes(target) == path.read_bytes()
    disk.close()


def test_read_past_end_of_file_raises_os_error(tmp_path: Path) -> None:
    path = make_image(tmp_path, 1024)
    disk = RawDisk.open(str(path), read_only=True)

    with pytest.raises(OSError):
        disk.read([memoryview(bytearray(512))], 1024)
    disk.close()
