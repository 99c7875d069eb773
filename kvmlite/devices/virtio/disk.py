"""Raw disk images: the backend of virtio-blk.

The VMM opens each ``-d/--disk PATH[,ro]`` image (a
``kvmlite.vmm.config.DiskConfig``) with :meth:`RawDisk.open` once, at VM
build time, so every mistake is a one-line :class:`ConfigError` before the
guest runs.  I/O goes straight between the file and guest memory views
with ``preadv``/``pwritev``: ``os.preadv`` on memoryviews for a request
with a few buffers, a ctypes call on the ``struct iovec`` array
``GuestMemory.iovec`` built and checked for one with many (no intermediate
copies either way).

Locking: a writable image gets an exclusive ``flock`` and a read-only one a
shared lock, both non-blocking: two VMs can share a read-only image, but
nothing can open an image another VM writes to.  flock locks belong to the
open file description, so they also guard against opening one image twice
in the same VMM, and vanish when the process dies.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import stat
from array import array
from typing import Any, Union

from kvmlite.errors import ConfigError

log = logging.getLogger(__name__)

SECTOR_SIZE = 512                 # §5.2.5: the protocol unit is always 512 bytes
SERIAL_LEN = 20                   # §5.2.6: VIRTIO_BLK_ID_BYTES
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024

# linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_ZERO_CHUNK = 1 << 20
_MEMORY_FS = (0x01021994, 0x858458F6, 0x958458F6)   # f_type of tmpfs, ramfs, hugetlbfs
_STATFS_SIZE = 256                                  # room for struct statfs (120 bytes on x86-64; f_type first)
Buffers = Union[list[memoryview], array]   # GuestMemory.io_buffers
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate64 if hasattr(_libc, "fallocate64") else _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int
_fstatfs = _libc.fstatfs
_fstatfs.argtypes = [ctypes.c_int, ctypes.c_char_p]
_fstatfs.restype = ctypes.c_int
# preadv/pwritev through ctypes take the iovec array as it is (os.preadv
# wants a Python buffer object per element); ctypes releases the GIL.
_preadv = _libc.preadv64 if hasattr(_libc, "preadv64") else _libc.preadv
_pwritev = _libc.pwritev64 if hasattr(_libc, "pwritev64") else _libc.pwritev
for _fn in (_preadv, _pwritev):
    _fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64]
    _fn.restype = ctypes.c_ssize_t


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2); raises OSError.  The ctypes call releases the GIL."""
    while _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))


class RawDisk:
    """An open raw image: sector ``n`` is at byte ``512 * n`` of the file.

    Threads: the disk's event loop (``try_read``/``try_write``) and its I/O
    threads do the I/O; :meth:`close` runs after they stopped.
    """

    def __init__(self, fd: int, path: str, read_only: bool, size: int, serial: bytes) -> None:
        self.fd = fd
        self.path = path
        self.read_only = read_only
        self.size = size - size % SECTOR_SIZE
        self.capacity = self.size // SECTOR_SIZE
        self.serial = serial
        self.memory_backed = _memory_backed(fd)
        # preadv/pwritev flags for try_read/try_write: RWF_NOWAIT until the
        # file refuses it; then 0 (a plain call: it never waits for a
        # device) or None (never try: the I/O threads do those).
        nowait = getattr(os, "RWF_NOWAIT", None)
        self._nowait: list[int | None] = [nowait, nowait]     # [reads, writes]

    @classmethod
    def open(cls, path: str, read_only: bool = False) -> "RawDisk":
        """Open, check and lock the image; raises a one-line ConfigError."""
        fd = _open_image(path, read_only)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise ConfigError(f"disk {path} is a directory")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                raise ConfigError(f"disk {path} is not a regular file or block device")
            size = os.lseek(fd, 0, os.SEEK_END)
            if size < SECTOR_SIZE:
                raise ConfigError(f"disk {path} is {'empty' if size == 0 else f'{size} bytes'}: "
                                  f"an image needs at least one {SECTOR_SIZE}-byte sector")
            _lock_image(fd, path, read_only)
        except BaseException:
            os.close(fd)
            raise
        if size % SECTOR_SIZE:
            log.warning("disk %s: size %d is not a multiple of %d; the last %d bytes are not visible",
                        path, size, SECTOR_SIZE, size % SECTOR_SIZE)
        return cls(fd, path, read_only, size, image_serial(st))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)   # drops the flock too
            self.fd = -1

    # --- I/O (the disk's I/O threads) ---

    def read(self, buffers: Buffers, offset: int, total: int) -> None:
        """Fill ``buffers`` (``GuestMemory.io_buffers``: memoryviews or an
        iovec array, ``total`` bytes) from the image at ``offset``; OSError
        on failure."""
        self._transfer(False, buffers, offset, total, "unexpected end of")

    def write(self, buffers: Buffers, offset: int, total: int) -> None:
        """Write the ``total`` bytes of ``buffers`` to the image at
        ``offset``; OSError on failure."""
        self._transfer(True, buffers, offset, total, "no progress writing")

    def _transfer(self, write: bool, buffers: Buffers, offset: int, total: int, stalled: str) -> None:
        """One system call for the whole request in the usual case; the
        buffers are only re-cut after a short transfer or past IOV_MAX."""
        step = write_from if write else read_into
        while total > 0:
            n = step(self.fd, buffers, offset)
            if n == 0:
                raise OSError(errno.EIO, f"{stalled} {self.path} at {offset}")
            offset += n
            total -= n
            if total > 0:
                buffers = advance(buffers, n)

    # --- I/O that must not wait (the disk's event loop) ---

    def try_read(self, views: list[memoryview], offset: int) -> int | None:
        """Read into ``views`` at ``offset`` only if that needs no device
        I/O: the bytes read (possibly short), or None when it would wait
        (the data is not in the page cache, or this file cannot tell)."""
        return self._try(False, views, offset)

    def try_write(self, views: list[memoryview], offset: int) -> int | None:
        """Write ``views`` at ``offset`` unless that would wait for a
        device: the bytes written (possibly short), or None.  A buffered
        write is a copy into the page cache: where the filesystem cannot
        say whether it would wait (no ``RWF_NOWAIT`` for buffered writes, as
        on ext4), it is made anyway; it waits only when the kernel throttles
        a writer with too many dirty pages."""
        return self._try(True, views, offset)

    def _try(self, write: bool, views: list[memoryview], offset: int) -> int | None:
        flags = self._nowait[write]
        if flags is None:
            return None
        try:
            return (os.pwritev if write else os.preadv)(self.fd, views, offset, flags)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL) or not flags:
                raise
        # RWF_NOWAIT refused: decide once for this file.
        fallback = 0 if write or self.memory_backed else None
        self._nowait[write] = fallback
        log.debug("disk %s: no RWF_NOWAIT %ss; %s", self.path, "write" if write else "read",
                  "they never wait for a device" if fallback == 0 else "they go to the I/O threads")
        return self._try(write, views, offset)

    def flush(self) -> None:
        """Make completed writes durable (the data; metadata only as needed)."""
        os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        """Deallocate a range; a filesystem without hole punching ignores it
        (discard is advisory, §5.2.6.2)."""
        try:
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        """Make a range read as zeroes (§5.2.6.2), deallocating it only when
        ``unmap`` allows; falls back to writing zeroes."""
        attempts = [self._punch_hole] if unmap else []
        attempts += [self._zero_range, self._punch_and_allocate]
        for attempt in attempts:
            try:
                attempt(offset, length)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        self._write_zero_bytes(offset, length)

    def _punch_hole(self, offset: int, length: int) -> None:
        fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)

    def _zero_range(self, offset: int, length: int) -> None:
        fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)

    def _punch_and_allocate(self, offset: int, length: int) -> None:
        self._punch_hole(offset, length)
        fallocate(self.fd, FALLOC_FL_KEEP_SIZE, offset, length)

    def _write_zero_bytes(self, offset: int, length: int) -> None:
        zeroes = bytes(min(length, _ZERO_CHUNK))
        end = offset + length
        while offset < end:
            offset += os.pwrite(self.fd, memoryview(zeroes)[:min(len(zeroes), end - offset)], offset)


def _vectored(op: Any, fd: int, iov: array, offset: int) -> int:
    """``op`` (the ctypes preadv or pwritev) on an iovec array, retried on EINTR."""
    while True:
        n = op(fd, iov.buffer_info()[0], min(len(iov) // 2, IOV_MAX), offset)
        if n >= 0:
            return n
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))


def read_into(fd: int, buffers: Buffers, offset: int) -> int:
    """One ``preadv`` of ``fd`` at ``offset`` into ``buffers``
    (``GuestMemory.io_buffers``); the bytes read, short at the end of the
    file as pread's.  OSError on failure."""
    if isinstance(buffers, array):
        return _vectored(_preadv, fd, buffers, offset)
    return os.preadv(fd, buffers if len(buffers) <= IOV_MAX else buffers[:IOV_MAX], offset)


def write_from(fd: int, buffers: Buffers, offset: int) -> int:
    """One ``pwritev`` of ``buffers`` (``GuestMemory.io_buffers``) to ``fd``
    at ``offset``; the bytes written, short as pwrite's may be."""
    if isinstance(buffers, array):
        return _vectored(_pwritev, fd, buffers, offset)
    return os.pwritev(fd, buffers if len(buffers) <= IOV_MAX else buffers[:IOV_MAX], offset)


def advance(buffers: Buffers, n: int) -> Buffers:
    """``buffers`` without their first ``n`` bytes (and without the
    buffers those bytes used up)."""
    if isinstance(buffers, array):
        i = 0
        while i < len(buffers) and n >= buffers[i + 1]:
            n -= buffers[i + 1]
            i += 2
        rest = buffers[i:]
        if rest and n:
            rest[0] += n
            rest[1] -= n
        return rest
    views = list(buffers)
    while views and n >= len(views[0]):
        n -= len(views.pop(0))
    if views and n:
        views[0] = views[0][n:]
    return views


def _memory_backed(fd: int) -> bool:
    """Whether the file lives in memory (tmpfs, ramfs, hugetlbfs): its
    reads and writes are copies, never device I/O."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _fstatfs(fd, buf) != 0:
        return False
    return int.from_bytes(buf.raw[:8], "little") in _MEMORY_FS


def image_serial(st: os.stat_result) -> bytes:
    """A 20-character ID for VIRTIO_BLK_T_GET_ID, stable for one image file
    (its device and inode, or the device number of a block device) across
    VM restarts."""
    key = f"blk:{st.st_rdev}" if stat.S_ISBLK(st.st_mode) else f"file:{st.st_dev}:{st.st_ino}"
    digest = hashlib.sha256(f"kvmlite:{key}".encode()).hexdigest()
    return digest[:SERIAL_LEN].encode("ascii")


def _open_image(path: str, read_only: bool) -> int:
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        raise ConfigError(f"disk {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"disk {path} is a directory") from None
    except PermissionError:
        mode = "reading" if read_only else "reading and writing (add ',ro' for read-only)"
        raise ConfigError(f"disk {path} cannot be opened for {mode}: permission denied") from None
    except OSError as exc:
        raise ConfigError(f"disk {path} cannot be opened: {exc.strerror}") from None


def _lock_image(fd: int, path: str, read_only: bool) -> None:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"disk {path} is in use by another VM") from None
    except OSError as exc:
        raise ConfigError(f"disk {path} cannot be locked: {exc.strerror}") from None
