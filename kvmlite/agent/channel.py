"""The client's side of one stream: keepalives skipped, error frames raised.

Every read waits at most the client's idle timeout; the agent sends a
KEEPALIVE on a stream that is otherwise silent (at a quarter of that
timeout, as the client's hello asks), so a timeout means the agent, the
guest or the VMM stopped, and the read raises AgentConnectionError.
"""

from __future__ import annotations

import select
import socket
from typing import Any, Iterable

from .errors import (AgentConnectionError, ProtocolError, SandboxError, error_from_wire)
from .protocol import ERROR, UNEXPECTED, Frame, FrameType, decode_message
from .wire import Stream


class Channel:
    """One stream to the agent, used by one operation."""

    def __init__(self, sock: socket.socket, idle_timeout: float | None) -> None:
        sock.settimeout(idle_timeout)
        self.stream = Stream(sock)

    def send(self, ftype: FrameType, payload: bytes | memoryview = b"") -> None:
        self.stream.send(ftype, payload)

    def send_raw(self, frames: bytes) -> None:
        """Send whole frames; if that fails, raise the agent's answer if it gave one."""
        try:
            self.stream.writer.send_raw(frames)
        except AgentConnectionError:
            self.raise_answer()
            raise

    def frame(self) -> Frame:
        """The next frame that is not a KEEPALIVE; EOF is AgentConnectionError."""
        while True:
            frame = self.stream.read()
            if frame is None:
                raise AgentConnectionError("the agent closed the stream before the "
                                           "operation ended")
            if frame.type is not FrameType.KEEPALIVE:
                return frame

    def message(self, *expected: str) -> dict[str, Any]:
        """The next frame as a message of one of the ``expected`` types."""
        return self.as_message(self.frame(), *expected)

    @staticmethod
    def as_message(frame: Frame, *expected: str) -> dict[str, Any]:
        """``frame`` as a message; an error message is raised as its exception."""
        if frame.type is not FrameType.MSG:
            raise ProtocolError(UNEXPECTED, f"the agent sent a {frame.type.name} frame, "
                                            f"expected {'/'.join(expected) or 'a message'}")
        msg = decode_message(frame.payload)
        if msg["type"] == ERROR:
            raise error_from_wire(msg)
        if expected and msg["type"] not in expected:
            raise ProtocolError(UNEXPECTED, f"the agent sent {msg['type']!r}, "
                                            f"expected {'/'.join(expected)}")
        return msg

    def poll_message(self) -> dict[str, Any] | None:
        """A message the agent already sent (an early error), or None; never waits."""
        while self.stream.reader.pending or _readable(self.stream.sock):
            frame = self.stream.read()
            if frame is None:
                raise AgentConnectionError("the agent closed the stream")
            if frame.type is not FrameType.KEEPALIVE:
                return self.as_message(frame)
        return None

    def send_data(self, ftype: FrameType, chunks: Iterable[bytes]) -> None:
        """Send ``chunks`` as ``ftype`` frames and an empty one to end them.

        Stops early when the agent answered already (an error): the answer
        is raised.  A send that fails raises the agent's answer if there is
        one, else AgentConnectionError.
        """
        try:
            for chunk in chunks:
                if chunk:
                    self.poll_message()      # raises the agent's early error
                    self.send(ftype, chunk)
            self.send(ftype, b"")
        except AgentConnectionError:
            self.raise_answer()
            raise

    def raise_answer(self) -> None:
        """Raise the agent's error message if one is waiting (after a failed send)."""
        try:
            self.poll_message()
        except SandboxError as answer:
            if not isinstance(answer, AgentConnectionError):
                raise answer from None

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False
