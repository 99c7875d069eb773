"""The one place kvmlite.net calls ``ioctl(2)``, and the request encoding of
``asm-generic/ioctl.h``.

``fcntl.ioctl`` is used, not the KVM layer's ctypes call: none of these
ioctls blocks, so its retry on ``EINTR`` (CPython 3.14) does no harm here.
"""

from __future__ import annotations

import ctypes
import fcntl

from kvmlite.net.errors import NetError

# asm-generic/ioctl.h
IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2


def ioc(direction: int, kind: int, nr: int, size: int) -> int:
    """``_IOC(dir, type, nr, size)``."""
    return (direction << 30) | (size << 16) | (kind << 8) | nr


def io(kind: int, nr: int) -> int:
    return ioc(IOC_NONE, kind, nr, 0)


def ior(kind: int, nr: int, ctype: type) -> int:
    return ioc(IOC_READ, kind, nr, ctypes.sizeof(ctype))


def iow(kind: int, nr: int, ctype: type) -> int:
    return ioc(IOC_WRITE, kind, nr, ctypes.sizeof(ctype))


def iowr(kind: int, nr: int, ctype: type) -> int:
    return ioc(IOC_READ | IOC_WRITE, kind, nr, ctypes.sizeof(ctype))


def ioctl(fd: int, request: int, name: str, arg: "ctypes._CData | ctypes.Array | int" = 0) -> int:
    """``ioctl(fd, request, arg)``: a ctypes ``arg`` is passed by reference
    (and filled in), an int by value.  Raises :class:`NetError` named
    ``name``, carrying the errno, on failure."""
    try:
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        return fcntl.ioctl(fd, request, arg, True)
    except OSError as e:
        raise NetError.from_errno(name, e.errno or 0) from None
