"""The host side of vsock: Unix stream sockets, as Firecracker's "hybrid"
vsock has them (its docs/vsock.md).

* The VMM listens on ``uds_path`` (mode 0600).  A host program that wants a
  guest port P connects there and writes ``CONNECT P\\n``; once the guest
  accepts it reads ``OK <host port>\\n`` and the stream is the connection.
* A guest that connects to CID 2 port P reaches whoever listens on the Unix
  socket ``<uds_path>_P``.

Everything here is non-blocking and makes no decisions for the device: it
binds, connects and parses, and raises what the kernel said.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat

from kvmlite.errors import KvmliteError

SUN_PATH_MAX = 107                  # sizeof(sockaddr_un.sun_path) - 1 on Linux
SOCKET_MODE = 0o600
BACKLOG = 64
#: the longest CONNECT line accepted, newline included ("CONNECT 4294967295\n" is 19 bytes)
MAX_LINE = 32
_CONNECT = re.compile(rb"CONNECT ([0-9]{1,10})\n")


class VsockError(KvmliteError):
    """The host side of vsock cannot be set up (a one-line message)."""


def _too_long(path: str) -> bool:
    return len(os.fsencode(path)) > SUN_PATH_MAX


def _connects(path: str) -> bool:
    """Whether something listens at ``path`` (a refused connect means stale)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:
            return exc.errno == errno.EAGAIN        # a full backlog: someone is there
        return True


class Listener:
    """The listening socket at ``path``, bound mode 0600.

    A socket file left at ``path`` by a VMM that died is removed first; one
    something still listens on is refused (VsockError), as is a path too
    long for a Unix socket or a file that is not a socket.  :meth:`close`
    removes the file only if it is still the one bound here."""

    def __init__(self, path: str, backlog: int = BACKLOG) -> None:
        self.path = path
        if _too_long(path):
            raise VsockError(f"vsock socket path {path} is too long for a Unix socket "
                             f"({len(os.fsencode(path))} bytes, at most {SUN_PATH_MAX})")
        _remove_stale(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(path)
            # No one can connect before listen(): the file's mode is right before anyone may.
            os.chmod(path, SOCKET_MODE)
            self.sock.listen(backlog)
            st = os.stat(path)
        except OSError as exc:
            self.sock.close()
            raise VsockError(f"cannot listen on the vsock socket {path}: {exc.strerror or exc}") from None
        self._identity = (st.st_dev, st.st_ino)

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> socket.socket | None:
        """A new connection, non-blocking; None when none waits.  OSError
        when the process is out of something (EMFILE, ENOBUFS...): the
        connection stays in the backlog."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except ConnectionAbortedError:
                continue        # that one gave up already; the next may not have
            conn.setblocking(False)
            return conn

    def close(self) -> None:
        """Stop listening and remove the socket file (if it is still ours)."""
        self.sock.close()
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._identity:
            os.unlink(self.path)


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise VsockError(f"{path} exists and is not a socket; refusing to replace it")
    if _connects(path):
        raise VsockError(f"{path} is in use by another process (another VM's vsock?)")
    os.unlink(path)


def parse_connect(line: bytes) -> int | None:
    """The port of a ``CONNECT <port>\\n`` line; None when it is anything else."""
    match = _CONNECT.fullmatch(line)
    if match is None:
        return None
    port = int(match.group(1))
    return port if port <= 0xFFFF_FFFF else None


def port_path(base: str, port: int) -> str:
    """Where a host program listens for guest connections to ``port``."""
    return f"{base}_{port}"


def connect_port(base: str, port: int) -> socket.socket:
    """A non-blocking stream connected to ``<base>_<port>``.  Raises OSError:
    FileNotFoundError or ConnectionRefusedError when no one listens,
    BlockingIOError when its backlog is full (a Unix connect cannot wait),
    ENAMETOOLONG when the path does not fit a Unix socket address."""
    path = port_path(base, port)
    if _too_long(path):
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock
