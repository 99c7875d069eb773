"""The errors of the network backends.

:class:`NetError` is a failure the user sees (no ``CAP_NET_ADMIN``, no
``/dev/net/tun``, passt missing or refusing to start): one line, with the
operation that failed and, when the kernel gave one, its errno.  It is a
:class:`KvmliteError` for the CLI and an :class:`OSError` for the device,
which treats any ``OSError`` from a backend as the backend's failure.
:class:`BackendGone` is raised while frames flow, when the host side went
away (the tap was deleted, passt exited): it is also a
:class:`ConnectionError`, which is what the virtio-net device catches.
"""

from __future__ import annotations

import errno as errno_mod
import os

from kvmlite.errors import KvmliteError


class NetError(KvmliteError, OSError):
    """A network backend could not be set up or used.

    Attributes:
        operation: what failed (``"TUNSETIFF"``, ``"open /dev/net/tun"``,
            ``"start passt"``), or ``None``.
        errno: the error number the kernel returned, or ``None``.
    """

    def __init__(self, message: str, *, operation: str | None = None, errno: int | None = None) -> None:
        super().__init__(" ".join(message.split()))     # always one line
        self.operation = operation
        self.errno = errno

    @classmethod
    def from_errno(cls, operation: str, errno: int, detail: str = "") -> "NetError":
        """``"<operation> failed: <strerror> (<ENAME>)[: detail]"``."""
        text = f"{operation} failed: {os.strerror(errno)} ({errno_mod.errorcode.get(errno, errno)})"
        if detail:
            text += f": {detail}"
        return cls(text, operation=operation, errno=errno)


class BackendGone(NetError, ConnectionError):
    """The host side of a backend is gone (tap deleted, passt exited)."""
