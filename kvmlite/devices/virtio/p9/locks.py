"""Tlock and Tgetlock as open-file-description (OFD) locks on the host.

A fid opened with Tlopen/Tlcreate owns one host open file, and its byte-
range locks are OFD locks (``F_OFD_SETLK``) on it: they conflict with the
locks of every other fid and with host processes' POSIX and OFD locks on
the same file, and they go when the fid is clunked.  (Classic POSIX locks
would all belong to the VMM process: two guest processes would never
conflict, and closing any fid on a file would drop every lock on it.)

The server never waits for a lock.  A conflicting Tlock answers
LOCK_BLOCKED, and a Linux client asked to wait (P9_LOCK_FLAGS_BLOCK)
retries after a pause; a worker thread is never parked on a guest's lock.

Two guest fids opened by one guest process conflict with each other here,
where POSIX would let a process's locks overlap freely; Linux gives each
open file its own fid, so this shows only for a process that opens one
file twice and locks it through both.  Tgetlock reports a conflicting
lock's range and type with proc_id 0 and an empty client_id: the holder is
another open file, not a process the guest could name.
"""

from __future__ import annotations

import errno
import fcntl

from kvmlite.devices.virtio.p9.constants import (LOCK_BLOCKED, LOCK_SUCCESS, LOCK_TYPE_RDLCK, LOCK_TYPE_UNLCK,
                                                 LOCK_TYPE_WRLCK, S64_MAX)
from kvmlite.devices.virtio.p9.fs import fail
from kvmlite.devices.virtio.p9.syscalls import ofd_getlk, ofd_setlk

UNLOCKED = LOCK_TYPE_UNLCK
_TO_HOST = {LOCK_TYPE_RDLCK: fcntl.F_RDLCK, LOCK_TYPE_WRLCK: fcntl.F_WRLCK, LOCK_TYPE_UNLCK: fcntl.F_UNLCK}
_FROM_HOST = {host: p9 for p9, host in _TO_HOST.items()}


def _range(lock_type: int, start: int, length: int) -> int:
    """The host lock type, with the range checked (length 0: to the end of
    the file, as in fcntl)."""
    if lock_type not in _TO_HOST:
        raise fail(errno.EINVAL, f"lock type {lock_type}")
    if start > S64_MAX or length > S64_MAX or start + length > S64_MAX + 1:
        raise fail(errno.EINVAL, "lock range beyond the largest offset")
    return _TO_HOST[lock_type]


def set_lock(fd: int, lock_type: int, start: int, length: int) -> int:
    """Take or release a lock; LOCK_SUCCESS, or LOCK_BLOCKED on a conflict.
    Other failures (EBADF for a write lock on a read-only fid, ENOLCK)
    raise OSError."""
    host_type = _range(lock_type, start, length)
    try:
        ofd_setlk(fd, host_type, start, length)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return LOCK_BLOCKED
        raise
    return LOCK_SUCCESS


def test_lock(fd: int, lock_type: int, start: int, length: int) -> tuple[int, int, int] | None:
    """None when the lock could be taken, else the first conflicting lock's
    (type, start, length)."""
    host_type = _range(lock_type, start, length)
    if host_type == fcntl.F_UNLCK:
        return None
    found, found_start, found_len, _ = ofd_getlk(fd, host_type, start, length)
    if found == fcntl.F_UNLCK:
        return None
    return _FROM_HOST[found], found_start, found_len
