"""eventfd signal and drain that keep the GIL.

``os.eventfd_write``/``os.eventfd_read`` release the GIL around their
system call.  On the eventfds kvmlite uses (non-blocking, the irqfds and
ioeventfds of the interrupt and notification paths) that call never
blocks, so releasing gains nothing, and taking the GIL back means waiting
until whichever thread took it meanwhile gives it up: when that thread
blocks, or, if it keeps running Python, at the switch interval (5 ms).
That wait fell on every interrupt a completed request raises and on every
queue notification, about once per request in a busy virtio-blk whose I/O
threads all want the GIL, and the interrupt's MSI vector lock was held
across it.  These two calls go through a ctypes ``PyDLL``, which holds the
GIL during the call.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select

_libc = ctypes.PyDLL(None, use_errno=True)     # PyDLL: the GIL stays held during the call
_write = _libc.write
_write.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
_write.restype = ctypes.c_ssize_t
_read = _libc.read
_read.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
_read.restype = ctypes.c_ssize_t

_ONE = ctypes.c_uint64(1)
_ONE_ADDR = ctypes.addressof(_ONE)
# drain discards the counter: every thread reads it into this one place.
_SCRATCH = ctypes.c_uint64()
_SCRATCH_ADDR = ctypes.addressof(_SCRATCH)
_COUNTER = ctypes.sizeof(ctypes.c_uint64)


def signal(fd: int) -> None:
    """Add one to the eventfd's counter (an irqfd: raise its interrupt).
    A counter already at its maximum is left as it is: it is signalled."""
    while _write(fd, _ONE_ADDR, _COUNTER) != _COUNTER:
        err = ctypes.get_errno()
        if err == errno.EAGAIN:
            return
        if err != errno.EINTR:
            raise OSError(err, f"eventfd write: {os.strerror(err)}")


def drain(fd: int) -> bool:
    """Reset a non-blocking eventfd's counter; whether it was signalled."""
    while _read(fd, _SCRATCH_ADDR, _COUNTER) != _COUNTER:
        err = ctypes.get_errno()
        if err == errno.EAGAIN:
            return False
        if err != errno.EINTR:
            raise OSError(err, f"eventfd read: {os.strerror(err)}")
    return True


def is_signalled(fd: int) -> bool:
    """Whether the eventfd's counter is not zero, without resetting it."""
    return bool(select.select([fd], [], [], 0)[0])
