"""The kernel calls the file server needs and Python's :mod:`os` lacks.

* ``openat2(2)`` (x86-64 syscall 437, Linux 5.6): ``struct open_how`` from
  ``linux/openat2.h`` and its ``RESOLVE_*`` flags;
* ``getdents64(2)`` (syscall 217): ``struct linux_dirent64`` from
  ``linux/dirent.h``, whose ``d_off`` is the cookie ``lseek`` takes back;
* ``utimensat(2)`` with ``UTIME_NOW``/``UTIME_OMIT`` per timestamp
  (``linux/stat.h``), which :func:`os.utime` cannot express;
* OFD byte-range locks (``F_OFD_SETLK``/``F_OFD_GETLK``, Linux 3.15) with
  ``struct flock`` from ``asm-generic/fcntl.h``.

Each wrapper raises :class:`OSError` with the call's errno.  ctypes calls
through ``CDLL`` release the GIL, so a slow directory read does not stall
other threads.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_OPENAT2 = 437              # asm/unistd_64.h
SYS_GETDENTS64 = 217

# linux/openat2.h
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

AT_FDCWD = -100
UTIME_NOW = (1 << 30) - 1      # linux/stat.h
UTIME_OMIT = (1 << 30) - 2


class OpenHow(ctypes.Structure):
    """linux/openat2.h: struct open_how."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


assert ctypes.sizeof(OpenHow) == 24


class Timespec(ctypes.Structure):
    """linux/time_types.h: struct __kernel_timespec (x86-64: two longs)."""

    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


assert ctypes.sizeof(Timespec) == 16

# linux/dirent.h: struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
_DIRENT64 = struct.Struct("<QqHB")
# asm-generic/fcntl.h: struct flock { short l_type, l_whence; off_t l_start, l_len; pid_t l_pid; } (x86-64: 32 bytes)
_FLOCK = struct.Struct("<hh4xqqi4x")
assert _FLOCK.size == 32

F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)


def _raise(call: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{call}: {os.strerror(code)}")


def openat2(dirfd: int, path: bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(dirfd, path, {flags | O_CLOEXEC, mode, resolve}): a new fd."""
    how = OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _libc.syscall(SYS_OPENAT2, dirfd, path, ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        _raise("openat2")
    return int(fd)


def have_openat2() -> bool:
    """Whether this kernel (and any seccomp filter in front of it) lets
    openat2 through: an O_PATH open of ``/``."""
    try:
        os.close(openat2(AT_FDCWD, b"/", os.O_PATH, RESOLVE_NO_SYMLINKS))
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            return False
        raise
    return True


def getdents64(fd: int, size: int) -> list[tuple[int, int, int, bytes]]:
    """One getdents64 call on an open directory: (d_ino, d_off, d_type, name)
    for each entry read; an empty list at the end of the directory."""
    buf = ctypes.create_string_buffer(size)
    n = _libc.syscall(SYS_GETDENTS64, fd, buf, size)
    if n < 0:
        _raise("getdents64")
    raw = buf.raw[:n]
    entries, pos = [], 0
    while pos < n:
        ino, off, reclen, dtype = _DIRENT64.unpack_from(raw, pos)
        name = raw[pos + _DIRENT64.size:pos + reclen].split(b"\0", 1)[0]
        entries.append((ino, off, dtype, name))
        pos += reclen
    return entries


def utimensat(path: bytes, atime: tuple[int, int] | None, mtime: tuple[int, int] | None) -> None:
    """Set a file's times by path (following it): each is (sec, nsec),
    ``None`` to leave it, or (0, UTIME_NOW) for now."""
    times = (Timespec * 2)(Timespec(*(atime or (0, UTIME_OMIT))), Timespec(*(mtime or (0, UTIME_OMIT))))
    if _libc.utimensat(AT_FDCWD, path, times, 0) < 0:
        _raise("utimensat")


def ofd_setlk(fd: int, lock_type: int, start: int, length: int) -> None:
    """F_OFD_SETLK: take or release a lock owned by this open file; raises
    OSError EAGAIN (or EACCES) when a conflicting lock is held."""
    fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(lock_type, os.SEEK_SET, start, length, 0))


def ofd_getlk(fd: int, lock_type: int, start: int, length: int) -> tuple[int, int, int, int]:
    """F_OFD_GETLK: (type, start, length, pid) of the first lock that would
    conflict, type F_UNLCK when none would."""
    out = fcntl.fcntl(fd, F_OFD_GETLK, _FLOCK.pack(lock_type, os.SEEK_SET, start, length, 0))
    l_type, _, l_start, l_len, l_pid = _FLOCK.unpack(out)
    return l_type, l_start, l_len, l_pid
