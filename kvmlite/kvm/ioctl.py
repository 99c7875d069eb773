"""The one place kvmlite calls ``ioctl(2)``.

``fcntl.ioctl`` is not used: on CPython 3.14 it retries on ``EINTR``, which
would swallow the signal that kicks a vCPU out of ``KVM_RUN``.  A direct
ctypes call returns ``EINTR`` to us and, like every ctypes foreign call,
releases the GIL while the kernel runs the guest.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os

from kvmlite.errors import KvmliteError

_libc = ctypes.CDLL(None, use_errno=True)
libc_ioctl = _libc.ioctl
libc_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc_ioctl.restype = ctypes.c_int


class KvmError(KvmliteError):
    """An ioctl on a KVM file descriptor failed.

    Attributes:
        request: the ioctl's name (``"KVM_CREATE_VM"``).
        errno: the error number the kernel returned.
    """

    def __init__(self, request: str, errno: int, detail: str = "") -> None:
        self.request = request
        self.errno = errno
        text = f"{request} failed: {os.strerror(errno)} ({errno_mod.errorcode.get(errno, errno)})"
        if detail:
            text += f": {detail}"
        super().__init__(text)


_NAMES: dict[int, str] = {}


def request_name(request: int) -> str:
    if not _NAMES:
        from kvmlite.kvm import uapi

        for key, value in vars(uapi).items():
            if key.startswith("KVM_") and isinstance(value, int) and value > 0xFFFF:
                _NAMES.setdefault(value, key)
            elif key.startswith("KVM_") and isinstance(value, int) and (value >> 8) == uapi.KVMIO:
                _NAMES.setdefault(value, key)
    return _NAMES.get(request, f"ioctl {request:#x}")


def ioctl(fd: int, request: int, arg: "ctypes._CData | int | None" = None) -> int:
    """Call ``ioctl(fd, request, arg)`` and return its non-negative result.

    ``arg`` is a ctypes object (passed by reference), an integer (passed by
    value) or ``None`` (0).  Raises :class:`KvmError` on failure.
    """
    if arg is None or isinstance(arg, int):
        ret = libc_ioctl(fd, request, arg)
    else:
        ret = libc_ioctl(fd, request, ctypes.addressof(arg))
    if ret < 0:
        raise KvmError(request_name(request), ctypes.get_errno())
    return ret
