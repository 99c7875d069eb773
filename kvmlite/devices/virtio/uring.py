"""A small io_uring (Linux 5.1+) through ctypes, for virtio-blk's large
reads and writes.

Why: a large transfer handed to a Python I/O thread costs that thread's
wake-up and two waits for the GIL, before and after its system call.
Submitted to io_uring with ``IOSQE_ASYNC``, the transfer runs on one of
the kernel's io-wq workers, which need no GIL (and queue buffered writes
to one file themselves: those run one at a time anyway, under the inode
lock).  Each completion signals an eventfd that the VMM's event loop
waits on with everything else; one wake-up reaps every completion there
is.

Only what virtio-blk needs: ``readv``/``writev`` at an offset from an
iovec array and a ``nop``, one submission lock, completions signalled
through an eventfd (so an epoll loop waits for them with everything else)
and reaped by one thread at a time.  The rings are shared memory with the
kernel: the submission tail is stored after the entry it publishes and the
completion tail read before the entries it covers, which x86's ordering
(TSO) keeps without fences, as in queue.py.

:meth:`Uring.create` returns None where io_uring is refused (old kernel,
seccomp, ``kernel.io_uring_disabled``); the device then uses its thread
pool.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import threading
from array import array
from typing import Sequence

SYS_IO_URING_SETUP = 425
SYS_IO_URING_ENTER = 426
SYS_IO_URING_REGISTER = 427
IORING_REGISTER_EVENTFD = 4
IORING_ENTER_GETEVENTS = 1
IORING_SQ_CQ_OVERFLOW = 1 << 1
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000
IORING_OP_NOP = 0
IORING_OP_READV = 1
IORING_OP_WRITEV = 2
IOSQE_ASYNC = 1 << 4

_PARAMS = struct.Struct("<10I" + "8IQ" + "8IQ")   # io_uring_params: 10 u32, sq_off, cq_off
# (opcode, fd, iovec array or None, file offset, user_data)
Entry = tuple[int, int, "array | None", int, int]

_SQE = struct.Struct("<BBHiQQIIQ24x")             # opcode flags ioprio fd off addr len rw_flags user_data
_CQE = struct.Struct("<QiI")                      # user_data res flags
_CQE_SIZE = 16

_libc = ctypes.CDLL(None, use_errno=True)         # CDLL: the GIL is released during the call
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# Entering submissions only (no GETEVENTS) never blocks: IOSQE_ASYNC hands
# the work to io-wq.  Through PyDLL the GIL stays held, so the submitting
# thread does not wait to get it back (see base/eventfd.py).
_syscall_gil = ctypes.PyDLL(None, use_errno=True).syscall
_syscall_gil.restype = ctypes.c_long


class Uring:
    """One io_uring: ``submit``/``submit_all`` from any thread, ``reap``
    from one at a time."""

    def __init__(self, fd: int, params: tuple[int, ...]) -> None:
        self.fd = fd
        sq_entries, cq_entries = params[0], params[1]
        sq_off, cq_off = params[10:19], params[19:28]
        self._sq = mmap.mmap(fd, sq_off[6] + 4 * sq_entries, mmap.MAP_SHARED | mmap.MAP_POPULATE,
                             offset=IORING_OFF_SQ_RING)
        self._cq = mmap.mmap(fd, cq_off[5] + _CQE_SIZE * cq_entries, mmap.MAP_SHARED | mmap.MAP_POPULATE,
                             offset=IORING_OFF_CQ_RING)
        self._sqes = mmap.mmap(fd, _SQE.size * sq_entries, mmap.MAP_SHARED | mmap.MAP_POPULATE,
                               offset=IORING_OFF_SQES)
        self._sq_words = memoryview(self._sq).cast("I")
        self._cq_words = memoryview(self._cq).cast("I")
        self._sq_head, self._sq_tail = sq_off[0] // 4, sq_off[1] // 4
        self._sq_mask = self._sq_words[sq_off[2] // 4]
        self._sq_flags = sq_off[4] // 4
        self._sq_array = sq_off[6] // 4
        self._cq_head, self._cq_tail = cq_off[0] // 4, cq_off[1] // 4
        self._cq_mask = self._cq_words[cq_off[2] // 4]
        self._cqes = cq_off[5]
        self.entries = sq_entries
        self._lock = threading.Lock()
        self._pinned: dict[int, array] = {}   # iovec arrays the kernel may still read

    @classmethod
    def create(cls, entries: int = 256) -> "Uring | None":
        """A ring of ``entries`` submissions, or None where io_uring is refused."""
        raw = ctypes.create_string_buffer(_PARAMS.size)
        fd = _syscall(SYS_IO_URING_SETUP, ctypes.c_uint(entries), raw)
        if fd < 0:
            return None
        try:
            return cls(fd, _PARAMS.unpack(raw.raw))
        except (OSError, ValueError):
            os.close(fd)
            return None

    def submit(self, opcode: int, fd: int, iov: array | None, offset: int, user_data: int) -> None:
        """Queue one readv/writev (``iov``: host address, length pairs, kept
        alive until its completion is reaped) or a nop, and enter it."""
        self.submit_all([(opcode, fd, iov, offset, user_data)])

    def submit_all(self, entries: Sequence[Entry]) -> None:
        """Queue ``entries`` (each as for :meth:`submit`) and enter them with
        one system call; none is queued when the ring has no room for all."""
        with self._lock:
            words = self._sq_words
            tail = words[self._sq_tail]
            if (tail - words[self._sq_head]) & 0xFFFF_FFFF > self.entries - len(entries):
                raise OSError(errno.EBUSY, "io_uring submission queue full")
            for opcode, fd, iov, offset, user_data in entries:
                index = tail & self._sq_mask
                if iov is None:
                    address = count = 0
                else:
                    address, count = iov.buffer_info()[0], len(iov) // 2
                    self._pinned[user_data] = iov
                flags = IOSQE_ASYNC if opcode != IORING_OP_NOP else 0
                _SQE.pack_into(self._sqes, _SQE.size * index, opcode, flags, 0, fd, offset, address, count, 0,
                               user_data)
                words[self._sq_array + index] = index
                tail = (tail + 1) & 0xFFFF_FFFF
            words[self._sq_tail] = tail     # publishes the entries (stores stay in order)
            self._enter(len(entries), 0, 0, _syscall_gil)

    def register_eventfd(self, fd: int) -> None:
        """Have the kernel signal eventfd ``fd`` whenever a completion is
        posted, so an event loop can wait for completions with epoll."""
        value = ctypes.c_int32(fd)
        if _syscall(SYS_IO_URING_REGISTER, ctypes.c_uint(self.fd), ctypes.c_uint(IORING_REGISTER_EVENTFD),
                    ctypes.byref(value), ctypes.c_uint(1)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_uring_register(EVENTFD): {os.strerror(err)}")

    def close(self) -> None:
        for view in (self._sq_words, self._cq_words):
            view.release()
        for region in (self._sq, self._cq, self._sqes):
            region.close()
        os.close(self.fd)
        self._pinned.clear()

    def reap(self) -> list[tuple[int, int]]:
        """Every completion there is, without waiting (one thread at a time),
        as (user_data, result: bytes moved or -errno)."""
        done = self._reap_ring()
        # More completions than the ring holds wait in the kernel's overflow
        # list (not with virtio-blk: it never has more submissions in flight
        # than the ring has entries); entering with GETEVENTS moves them in.
        while self._sq_words[self._sq_flags] & IORING_SQ_CQ_OVERFLOW:
            self._enter(0, 0, IORING_ENTER_GETEVENTS)
            done += self._reap_ring()
        return done

    def _reap_ring(self) -> list[tuple[int, int]]:
        words = self._cq_words
        head, tail = words[self._cq_head], words[self._cq_tail]
        done = []
        while head != tail:
            user_data, result, _flags = _CQE.unpack_from(self._cq, self._cqes + _CQE_SIZE * (head & self._cq_mask))
            done.append((user_data, result))
            head = (head + 1) & 0xFFFF_FFFF
        words[self._cq_head] = head
        with self._lock:
            for user_data, _result in done:
                self._pinned.pop(user_data, None)
        return done

    def _enter(self, to_submit: int, min_complete: int, flags: int, syscall=_syscall) -> None:
        while syscall(SYS_IO_URING_ENTER, ctypes.c_uint(self.fd), ctypes.c_uint(to_submit),
                       ctypes.c_uint(min_complete), ctypes.c_uint(flags), None, ctypes.c_size_t(0)) < 0:
            err = ctypes.get_errno()
            if err not in (errno.EINTR, errno.EAGAIN):
                raise OSError(err, f"io_uring_enter: {os.strerror(err)}")
