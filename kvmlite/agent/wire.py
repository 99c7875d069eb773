"""Frames over a connected stream socket, for the agent and the client alike.

:class:`FrameReader` reads whole frames; :class:`FrameWriter` sends them,
one at a time under a lock, so that several threads (a process's output
pump, a connection's own thread, the keepalive ticker) may share a stream.
Any socket failure, a timeout included, becomes :class:`AgentConnectionError`
— never a bare :class:`OSError`, which in the agent means a failed
operation to report, not a dead peer.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable

from .errors import AgentConnectionError, ProtocolError
from .protocol import (BAD_FRAME, MAX_PAYLOAD, UNEXPECTED, Frame, FrameDecoder, FrameType,
                       decode_message, encode_frame, encode_header, encode_message,
                       error_from_oserror)

RECV_SIZE = 256 * 1024
KEEPALIVE_FRAME = encode_frame(FrameType.KEEPALIVE)


class FrameReader:
    """Whole frames from ``sock``, read in large pieces."""

    def __init__(self, sock: socket.socket, max_payload: int = MAX_PAYLOAD) -> None:
        self._sock = sock
        self._decoder = FrameDecoder(max_payload)

    @property
    def pending(self) -> bool:
        """Bytes of a next frame are already buffered."""
        return self._decoder.buffered > 0

    def read(self) -> Frame | None:
        """The next frame; None at EOF on a frame boundary.

        Raises ProtocolError on a bad header or EOF inside a frame, and
        AgentConnectionError when the socket fails or times out.
        """
        while True:
            frame = self._decoder.next()
            if frame is not None:
                return frame
            data = self._recv()
            if not data:
                if self._decoder.buffered:
                    raise ProtocolError(BAD_FRAME, f"stream ended inside a frame "
                                                   f"({self._decoder.buffered} bytes)")
                return None
            self._decoder.feed(data)

    def read_message(self) -> dict[str, Any] | None:
        """The next frame, which must be a MSG; None at EOF."""
        frame = self.read()
        if frame is None:
            return None
        if frame.type is not FrameType.MSG:
            raise ProtocolError(BAD_FRAME, f"expected a message, got a {frame.type.name} frame")
        return decode_message(frame.payload)

    def _recv(self) -> bytes:
        try:
            return self._sock.recv(RECV_SIZE)
        except TimeoutError:
            raise AgentConnectionError(f"no data for {self._sock.gettimeout():g} s") from None
        except OSError as exc:
            raise AgentConnectionError(f"receive failed: {exc}") from None


class FrameWriter:
    """Frames to ``sock``, whole and in order, from any thread.

    ``keepalive`` (seconds) makes :meth:`keepalive_if_idle` send a KEEPALIVE
    frame when nothing went out for that long.  After one failed send every
    later send fails at once.
    """

    def __init__(self, sock: socket.socket, keepalive: float | None = None) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._pending = b""          # the tail of a keepalive that went out in part
        self._broken: str | None = None
        self.keepalive = keepalive
        self.last_send = time.monotonic()

    @property
    def broken(self) -> bool:
        return self._broken is not None

    def send(self, ftype: FrameType, payload: bytes | memoryview = b"") -> None:
        """Send one frame (blocking: the peer's reading paces the sender).

        Header and payload go out in one sendmsg, so a small frame is one
        vsock packet, not two.
        """
        header = encode_header(ftype, len(payload))
        with self._lock:
            self._send_parts(self._pending + header, payload)
            self._pending = b""
            self.last_send = time.monotonic()

    def send_message(self, msg: dict[str, Any]) -> None:
        self.send_raw(encode_message(msg))

    def send_raw(self, frames: bytes) -> None:
        """Send bytes that are already whole frames."""
        with self._lock:
            self._send_parts(self._pending + frames, b"")
            self._pending = b""
            self.last_send = time.monotonic()

    def keepalive_if_idle(self, now: float) -> None:
        """Send a KEEPALIVE if the stream was idle for ``keepalive`` seconds.

        Never blocks: it skips a stream another thread is sending on, and
        sends with MSG_DONTWAIT so a peer that stopped reading cannot hold
        up the caller (the agent's one ticker thread serves every stream).
        A keepalive that went out in part is finished by the next call or
        the next frame, whichever comes first.
        """
        if self.keepalive is None or self._broken is not None:
            return
        if not self._pending and now - self.last_send < self.keepalive:
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            data = self._pending or KEEPALIVE_FRAME
            self._pending = data[self._sock.send(data, socket.MSG_DONTWAIT):]
            self.last_send = now
        except BlockingIOError:
            pass
        except OSError as exc:
            self._broken = str(exc)
        finally:
            self._lock.release()

    def _send_parts(self, head: bytes, payload: bytes | memoryview) -> None:
        """sendmsg both parts; finish a partial send with sendall."""
        if self._broken is not None:
            raise AgentConnectionError(f"send failed: {self._broken}")
        try:
            sent = self._sock.sendmsg([head, payload] if payload else [head])
            if sent < len(head) + len(payload):
                self._sock.sendall((head + bytes(payload))[sent:])
        except TimeoutError:
            self._broken = f"no progress for {self._sock.gettimeout():g} s"
            raise AgentConnectionError(f"send failed: {self._broken}") from None
        except OSError as exc:
            self._broken = str(exc)
            raise AgentConnectionError(f"send failed: {exc}") from None


class Stream:
    """One connected stream: its socket, a reader and a writer."""

    def __init__(self, sock: socket.socket, keepalive: float | None = None) -> None:
        self.sock = sock
        self.reader = FrameReader(sock)
        self.writer = FrameWriter(sock, keepalive)

    def read(self) -> Frame | None:
        return self.reader.read()

    def read_message(self) -> dict[str, Any] | None:
        return self.reader.read_message()

    def send(self, ftype: FrameType, payload: bytes | memoryview = b"") -> None:
        self.writer.send(ftype, payload)

    def send_message(self, msg: dict[str, Any]) -> None:
        self.writer.send_message(msg)

    def receive_data(self, ftype: FrameType, sink: Callable[[bytes], object]) -> bool:
        """Read ``ftype`` frames up to an empty one, handing each payload to ``sink``.

        When ``sink`` raises OSError the error goes to the peer at once and
        the rest of the data is read and dropped (the peer, which may be
        sending still, sees the error between its chunks and stops).
        Returns False if the error was sent.
        """
        failed = False
        while True:
            frame = self.read()
            if frame is None:
                raise AgentConnectionError("the stream ended inside its data")
            if frame.type is not ftype:
                raise ProtocolError(UNEXPECTED, f"expected {ftype.name} frames, "
                                                f"got {frame.type.name}")
            if not frame.payload:
                return not failed
            if not failed:
                try:
                    sink(frame.payload)
                except AgentConnectionError:
                    raise
                except OSError as exc:
                    failed = True
                    self.send_message(error_from_oserror(exc))

    def shutdown_read(self) -> None:
        """Wake a thread blocked reading this stream: its read returns EOF."""
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def close(self) -> None:
        """Shut the stream down both ways (waking any blocked thread) and close it."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
