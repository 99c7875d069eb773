"""Host programs arriving on the vsock listener: accepted, given
``timeout`` seconds to send ``CONNECT <port>\\n``, then handed to the
muxer with the port (Firecracker's hybrid vsock, docs/vsock.md).

The line is read a byte at a time, so nothing after its newline is
consumed: a host program may write its first bytes for the guest right
behind it.  A line that is malformed, longer than ``unix.MAX_LINE`` bytes,
cut short by end-of-file or not finished in time closes the stream.

Threads: every method runs on the device's loop thread under the device's
lock (``drop_all`` and ``close`` also from the transport's thread, with
it); loop callbacks and timers go through ``guard``, as the muxer's do.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass, field
from typing import Callable

from kvmlite.base.eventloop import EventLoop, Timer
from kvmlite.devices.virtio.vsock import unix

ACCEPT_BUDGET = 64                  # streams accepted per wake-up before the loop serves others
ACCEPT_PAUSE = 1.0                  # seconds the listener rests when the process is out of fds

Guard = Callable[[Callable[[], None]], Callable[[], None]]


@dataclass(eq=False)
class _Handshake:
    """A host stream that has not sent its whole CONNECT line yet."""

    sock: socket.socket
    line: bytearray = field(default_factory=bytearray)
    timer: Timer | None = None


class Acceptor:
    """Accepts host streams on ``listener`` and reads their CONNECT lines.

    ``admit()`` says why a new stream may not even wait for its line (no
    driver, too many connections), or None; ``connect(sock, port)`` takes
    a stream whose line named ``port`` (its reader removed, its timer
    cancelled: the stream is the callee's from then on); ``error(why)``
    counts and logs a stream closed here."""

    def __init__(self, listener: unix.Listener, loop: EventLoop, guard: Guard, timeout: float, *,
                 admit: Callable[[], str | None], connect: Callable[[socket.socket, int], None],
                 error: Callable[[str], None]) -> None:
        self.listener = listener
        self.loop = loop
        self.guard = guard
        self.timeout = timeout
        self._admit, self._connect, self._error = admit, connect, error
        self._pending: set[_Handshake] = set()
        loop.add_reader(listener.fileno(), guard(self._accept))

    def __len__(self) -> int:
        """Streams still sending their line."""
        return len(self._pending)

    def drop_all(self) -> None:
        for handshake in list(self._pending):
            self._end(handshake)

    def close(self) -> None:
        """Close every pending stream and the listener (its file goes)."""
        self.drop_all()
        self.loop.remove_reader(self.listener.fileno())
        self.listener.close()

    # --- accepting ---

    def _accept(self) -> None:
        for _ in range(ACCEPT_BUDGET):
            try:
                sock = self.listener.accept()
            except OSError as exc:      # out of fds or memory: the backlog waits, the loop must not spin
                self._error(f"cannot accept a host connection: {exc.strerror or exc}; "
                            f"listening again in {ACCEPT_PAUSE:g} s")
                self._pause()
                return
            if sock is None:
                return
            refusal = self._admit()
            if refusal is not None:
                self._error(f"host connection refused: {refusal}")
                sock.close()
                continue
            self._wait_for_line(sock)

    def _wait_for_line(self, sock: socket.socket) -> None:
        handshake = _Handshake(sock)
        self._pending.add(handshake)
        handshake.timer = self.loop.call_later(self.timeout, self.guard(functools.partial(self._expired, handshake)))
        self.loop.add_reader(sock.fileno(), self.guard(functools.partial(self._read_line, handshake)))

    def _pause(self) -> None:
        self.loop.remove_reader(self.listener.fileno())
        self.loop.call_later(ACCEPT_PAUSE, self.guard(self._resume))

    def _resume(self) -> None:
        if self.listener.sock.fileno() >= 0:    # not closed meanwhile
            self.loop.add_reader(self.listener.fileno(), self.guard(self._accept))

    # --- the CONNECT line ---

    def _read_line(self, handshake: _Handshake) -> None:
        """Take the line a byte at a time: what follows it stays in the socket."""
        if handshake not in self._pending:
            return
        while len(handshake.line) < unix.MAX_LINE:
            try:
                byte = handshake.sock.recv(1)
            except BlockingIOError:
                return
            except OSError:
                byte = b""
            if not byte:
                self._refuse(handshake, "host connection closed before its CONNECT line")
                return
            handshake.line += byte
            if byte == b"\n":
                self._line_done(handshake)
                return
        self._refuse(handshake, f"host connection sent over {unix.MAX_LINE} bytes without a CONNECT line")

    def _line_done(self, handshake: _Handshake) -> None:
        line = bytes(handshake.line)
        port = unix.parse_connect(line)
        if port is None:
            self._refuse(handshake, f"host connection sent {line!r}, not 'CONNECT <port>\\n'")
            return
        self._end(handshake, keep_socket=True)
        self._connect(handshake.sock, port)

    def _expired(self, handshake: _Handshake) -> None:
        if handshake in self._pending:
            self._refuse(handshake, f"host connection sent no CONNECT line in {self.timeout:g} s")

    def _refuse(self, handshake: _Handshake, why: str) -> None:
        self._error(why)
        self._end(handshake)

    def _end(self, handshake: _Handshake, keep_socket: bool = False) -> None:
        self._pending.discard(handshake)
        self.loop.remove_reader(handshake.sock.fileno())
        if handshake.timer is not None:
            handshake.timer.cancel()
        if not keep_socket:
            handshake.sock.close()
