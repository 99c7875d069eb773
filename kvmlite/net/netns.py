"""Run a piece of work inside a named network namespace (``ip netns``).

``setns(2)`` with ``CLONE_NEWNET`` moves only the calling thread, so the
work runs in a short-lived thread that joins ``/run/netns/NAME`` and ends;
the rest of the process stays where it was.  What the work creates keeps its
namespace after the thread ends: a socket or ``/dev/net/tun`` file belongs
to the namespace of the thread that opened it, and so does the tap that
``TUNSETIFF`` makes on that file.  Joining needs ``CAP_SYS_ADMIN``.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Callable, TypeVar

from kvmlite.net.errors import NetError

NETNS_DIR = Path("/run/netns")          # where iproute2 keeps named namespaces
CLONE_NEWNET = 0x40000000               # linux/sched.h

_libc = ctypes.CDLL(None, use_errno=True)
_setns = _libc.setns
_setns.argtypes = (ctypes.c_int, ctypes.c_int)
_setns.restype = ctypes.c_int

T = TypeVar("T")


def netns_path(name: str) -> Path:
    """The file of network namespace ``name``; one-line error when absent."""
    if not name or "/" in name or name in (".", ".."):
        raise NetError(f"bad network namespace name {name!r}")
    path = NETNS_DIR / name
    if not path.exists():
        raise NetError(f"network namespace {name} does not exist (ip netns add {name})")
    return path


def run_in_netns(name: str | None, work: Callable[[], T]) -> T:
    """Call ``work()`` inside network namespace ``name`` (here when ``None``)
    and return what it returns, or raise what it raised."""
    if name is None:
        return work()
    path = netns_path(name)
    result: list[T] = []
    failure: list[BaseException] = []

    def thread_main() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise NetError.from_errno(f"setns to network namespace {name}", err)
            finally:
                os.close(fd)
            result.append(work())
        except BaseException as e:      # handed to the caller's thread
            failure.append(e)

    thread = threading.Thread(target=thread_main, name=f"netns-{name}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
