"""Tlock/Tgetlock as OFD locks, and user.* extended attributes."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

import pytest

from kvmlite.devices.virtio.p9 import codec
from kvmlite.devices.virtio.p9.constants import (DOTL_RDWR, LOCK_BLOCKED, LOCK_FLAGS_BLOCK, LOCK_SUCCESS,
                                                 LOCK_TYPE_RDLCK, LOCK_TYPE_UNLCK, LOCK_TYPE_WRLCK, XATTR_CREATE,
                                                 XATTR_REPLACE)
from tests.unit.devices.virtio.p9.client import P9Client


def lock(c: P9Client, fid: int, kind: int, start: int = 0, length: int = 0, flags: int = 0) -> int:
    return c.ok(codec.Tlock(fid, kind, flags, start, length, 42, b"guest")).status


@pytest.fixture
def two_fids(client: P9Client, share: Path) -> P9Client:
    """fids 1 and 2: the same file opened twice, read-write."""
    (share / "f").write_bytes(b"x" * 100)
    client.open_path(1, b"f", flags=DOTL_RDWR)
    client.open_path(2, b"f", flags=DOTL_RDWR)
    return client


def test_lock_conflicts_between_fids(two_fids: P9Client) -> None:
    c = two_fids

    assert lock(c, 1, LOCK_TYPE_WRLCK, 0, 10) == LOCK_SUCCESS
    assert lock(c, 2, LOCK_TYPE_WRLCK, 5, 10) == LOCK_BLOCKED
    assert lock(c, 2, LOCK_TYPE_WRLCK, 10, 10) == LOCK_SUCCESS
    assert lock(c, 1, LOCK_TYPE_UNLCK, 0, 10) == LOCK_SUCCESS
    assert lock(c, 2, LOCK_TYPE_WRLCK, 0, 10) == LOCK_SUCCESS


def test_lock_shared_read_locks_coexist(two_fids: P9Client) -> None:
    assert lock(two_fids, 1, LOCK_TYPE_RDLCK) == LOCK_SUCCESS
    assert lock(two_fids, 2, LOCK_TYPE_RDLCK) == LOCK_SUCCESS
    assert lock(two_fids, 2, LOCK_TYPE_WRLCK) == LOCK_BLOCKED


def test_lock_blocking_request_answers_blocked_without_waiting(two_fids: P9Client) -> None:
    lock(two_fids, 1, LOCK_TYPE_WRLCK)

    assert lock(two_fids, 2, LOCK_TYPE_WRLCK, flags=LOCK_FLAGS_BLOCK) == LOCK_BLOCKED


def test_lock_released_by_clunk(two_fids: P9Client) -> None:
    lock(two_fids, 1, LOCK_TYPE_WRLCK)

    two_fids.clunk(1)

    assert lock(two_fids, 2, LOCK_TYPE_WRLCK) == LOCK_SUCCESS


def test_lock_conflicts_with_host_process_lock(two_fids: P9Client, share: Path) -> None:
    with open(share / "f", "r+b") as f:
        fcntl.fcntl(f, fcntl.F_OFD_SETLK, struct.pack("<hh4xqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))

        assert lock(two_fids, 1, LOCK_TYPE_RDLCK) == LOCK_BLOCKED


def test_getlock_reports_conflict_then_none(two_fids: P9Client) -> None:
    c = two_fids
    lock(c, 1, LOCK_TYPE_WRLCK, 10, 20)

    found = c.ok(codec.Tgetlock(2, LOCK_TYPE_RDLCK, 0, 0, 7, b"guest"))
    lock(c, 1, LOCK_TYPE_UNLCK, 10, 20)
    free = c.ok(codec.Tgetlock(2, LOCK_TYPE_WRLCK, 0, 0, 7, b"guest"))

    assert (found.type, found.start, found.length) == (LOCK_TYPE_WRLCK, 10, 20)
    assert free == codec.Rgetlock(LOCK_TYPE_UNLCK, 0, 0, 7, b"guest")


def test_lock_errors(two_fids: P9Client) -> None:
    c = two_fids
    c.walk(0, 3, b"f")

    assert c.error(codec.Tlock(3, LOCK_TYPE_WRLCK, 0, 0, 0, 1, b"")) == errno.EBADF
    assert c.error(codec.Tlock(1, 9, 0, 0, 0, 1, b"")) == errno.EINVAL
    assert c.error(codec.Tlock(1, LOCK_TYPE_WRLCK, 0, 1 << 63, 0, 1, b"")) == errno.EINVAL
    assert c.error(codec.Tlock(1, LOCK_TYPE_WRLCK, 0, 1 << 62, (1 << 62) + 1, 1, b"")) == errno.EINVAL
    assert c.error(codec.Tgetlock(3, LOCK_TYPE_WRLCK, 0, 0, 1, b"")) == errno.EBADF


def test_write_lock_on_read_only_fid_is_ebadf(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.open_path(1, b"f")

    assert client.error(codec.Tlock(1, LOCK_TYPE_WRLCK, 0, 0, 0, 1, b"")) == errno.EBADF


# ---- xattrs ----------------------------------------------------------------------------

def set_xattr(c: P9Client, fid: int, name: bytes, value: bytes, flags: int = 0) -> None:
    c.walk(fid, 99)
    c.ok(codec.Txattrcreate(99, name, len(value), flags))
    if value:
        assert c.write(99, value[:3], 0) == len(value[:3])
        if value[3:]:
            c.write(99, value[3:], 3)
    c.clunk(99)


def get_xattr(c: P9Client, fid: int, name: bytes) -> bytes:
    size = c.ok(codec.Txattrwalk(fid, 98, name)).size
    value = c.read(98, 0, size)
    c.clunk(98)
    return value


@pytest.fixture
def file_fid(client: P9Client, share: Path) -> P9Client:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")
    return client


def test_xattr_set_get_list_remove(file_fid: P9Client, share: Path) -> None:
    c = file_fid

    set_xattr(c, 1, b"user.color", b"blue-ish")
    set_xattr(c, 1, b"user.size", b"L")

    assert os.getxattr(share / "f", "user.color") == b"blue-ish"
    assert get_xattr(c, 1, b"user.color") == b"blue-ish"
    assert sorted(get_xattr(c, 1, b"").split(b"\0")) == [b"", b"user.color", b"user.size"]
    set_xattr(c, 1, b"user.color", b"")
    assert os.listxattr(share / "f") == ["user.size"]


def test_xattr_create_and_replace_flags(file_fid: P9Client) -> None:
    c = file_fid
    set_xattr(c, 1, b"user.a", b"1", XATTR_CREATE)
    c.walk(1, 97)
    c.ok(codec.Txattrcreate(97, b"user.a", 1, XATTR_CREATE))
    c.write(97, b"2")

    assert c.error(codec.Tclunk(97)) == errno.EEXIST
    assert c.error(codec.Tclunk(97)) == errno.EBADF
    set_xattr(c, 1, b"user.a", b"3", XATTR_REPLACE)
    assert get_xattr(c, 1, b"user.a") == b"3"


def test_xattr_read_at_offset(file_fid: P9Client) -> None:
    set_xattr(file_fid, 1, b"user.a", b"0123456789")
    file_fid.ok(codec.Txattrwalk(1, 50, b"user.a"))

    assert file_fid.read(50, 4, 3) == b"456"
    assert file_fid.read(50, 100, 3) == b""


def test_xattr_other_namespaces(file_fid: P9Client) -> None:
    c = file_fid
    for name in (b"trusted.overlay.opaque", b"security.capability", b"system.posix_acl_access", b"user"):
        c.walk(1, 90)
        assert c.error(codec.Txattrcreate(90, name, 1, 0)) == errno.EOPNOTSUPP
        assert c.error(codec.Txattrwalk(1, 91, name)) == errno.ENODATA
        c.clunk(90)


def test_xattr_missing_is_enodata(file_fid: P9Client) -> None:
    assert file_fid.error(codec.Txattrwalk(1, 50, b"user.none")) == errno.ENODATA
    assert file_fid.error(codec.Tclunk(50)) == errno.EBADF


def test_xattr_short_value_at_clunk_is_einval_and_sets_nothing(file_fid: P9Client, share: Path) -> None:
    c = file_fid
    c.walk(1, 90)
    c.ok(codec.Txattrcreate(90, b"user.a", 10, 0))
    c.write(90, b"abc")

    assert c.error(codec.Tclunk(90)) == errno.EINVAL
    assert os.listxattr(share / "f") == []


def test_xattr_writes_out_of_order_or_too_long_refused(file_fid: P9Client) -> None:
    c = file_fid
    c.walk(1, 90)
    c.ok(codec.Txattrcreate(90, b"user.a", 4, 0))

    assert c.error(codec.Twrite(90, 2, b"x")) == errno.EINVAL
    assert c.error(codec.Twrite(90, 0, b"12345")) == errno.ERANGE
    c.write(90, b"1234")
    c.clunk(90)


def test_xattrcreate_bad_size_or_flags(file_fid: P9Client) -> None:
    c = file_fid
    c.walk(1, 90)

    assert c.error(codec.Txattrcreate(90, b"user.a", 1 << 40, 0)) == errno.E2BIG
    assert c.error(codec.Txattrcreate(90, b"user.a", 1, 3)) == errno.EINVAL
    assert c.error(codec.Txattrcreate(90, b"user.a", 1, 8)) == errno.EINVAL


def test_xattr_fid_cannot_be_walked_or_opened(file_fid: P9Client) -> None:
    c = file_fid
    set_xattr(c, 1, b"user.a", b"v")
    c.ok(codec.Txattrwalk(1, 50, b"user.a"))

    assert c.error(codec.Twalk(50, 51, ())) == errno.EBADF
    assert c.error(codec.Tlopen(50, 0)) == errno.EINVAL
    assert c.error(codec.Twrite(50, 0, b"x")) == errno.EBADF


def test_xattr_on_directory(client: P9Client, share: Path) -> None:
    set_xattr(client, 0, b"user.dir", b"yes")

    assert os.getxattr(share, "user.dir") == b"yes"
