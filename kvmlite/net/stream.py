"""Ethernet frames over a stream socket, framed as QEMU's ``-netdev stream``
(and passt, which speaks it) frame them: a 4-byte big-endian length, then
the frame, no virtio-net header.

:class:`FramedStream` reads and writes whole frames on a non-blocking
stream socket.  What it keeps between calls is bounded by one frame:

* reading: a frame split across ``recv`` calls is kept until complete.
  Each ``recv`` asks for the rest of the current frame plus the next
  frame's 4-byte length and nothing more, so no complete frame ever waits
  in the buffer: when :meth:`recv_into` raises ``BlockingIOError`` the
  socket is empty or holds only part of a frame, and the socket's
  readability is all a caller has to watch.  In the steady state that is
  one ``recvmsg`` per frame, written straight into the caller's buffer.
* writing: a frame the socket took only in part has its tail kept; no new
  frame is taken until :meth:`flush` has pushed it out.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from kvmlite.net.errors import BackendGone

LEN_SIZE = 4
# The longest frame accepted, as QEMU's stream netdev (NET_BUFSIZE): a
# 64 KiB frame and then some.  A longer length means the stream is out of
# step, which is a dead peer as far as frames go.
MAX_FRAME_LEN = 4096 + 65536

_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ECONNABORTED, errno.EBADF)


class FramedStream:
    """Length-prefixed frames on a connected, non-blocking stream socket.

    ``peer`` names the other end in messages (``"passt"``).  One thread
    reads and one thread writes at a time; the two directions share no
    state.
    """

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.dropped = 0                          # frames too long for the caller's buffer or the stream
        self._len = bytearray(LEN_SIZE)           # the current frame's length field
        self._len_have = 0
        self._frame = bytearray(MAX_FRAME_LEN)    # a frame that came in pieces
        self._frame_have = 0
        self._tail = b""                          # what the socket has not taken of the last frame

    # --- reading ---

    def recv_into(self, buf: memoryview) -> int:
        """Put the next whole frame into ``buf`` and return its length.

        ``BlockingIOError`` when no whole frame has arrived (what has is
        kept); :class:`BackendGone` at end of stream or on a reset.  A
        frame longer than ``buf`` is read and dropped (:attr:`dropped`);
        an empty one is skipped.
        """
        while True:
            if self._len_have < LEN_SIZE:
                got = self._recv([memoryview(self._len)[self._len_have:]])
                self._len_have += got
                continue
            length = int.from_bytes(self._len, "big")
            if length > MAX_FRAME_LEN:
                raise BackendGone(f"{self.peer} sent a frame of {length} bytes: the stream is out of step",
                                  operation="recv")
            direct = self._frame_have == 0 and length <= len(buf)
            dest = buf[:length] if direct else memoryview(self._frame)[self._frame_have:length]
            # The rest of this frame, then the next one's length field.
            got = self._recv([dest, memoryview(self._len)]) if length else 0
            if got < len(dest):
                if direct:
                    self._frame[:got] = dest[:got]
                self._frame_have += got
                continue
            self._len_have = got - len(dest)
            self._frame_have = 0
            if length == 0:
                continue
            if direct:
                return length
            if length > len(buf):
                self.dropped += 1
                continue
            buf[:length] = memoryview(self._frame)[:length]
            return length

    def _recv(self, buffers: list[memoryview]) -> int:
        """One ``recvmsg`` into ``buffers``; end of stream is BackendGone."""
        while True:
            try:
                got = self.sock.recvmsg_into(buffers)[0]
                break
            except InterruptedError:
                continue
            except BlockingIOError:
                raise
            except OSError as e:
                raise self._gone("recv", e) from None
        if got == 0:
            raise BackendGone(f"{self.peer} closed the connection", operation="recv")
        return got

    # --- writing ---

    def send(self, parts: Sequence[memoryview | bytes]) -> bool:
        """Send one frame gathered from ``parts``, with its length first.

        True when taken (a part the socket did not take is kept and pushed
        by :meth:`flush`); False when nothing could be taken now, because
        an earlier tail is still waiting or the socket is full.  A frame
        longer than :data:`MAX_FRAME_LEN` is taken and dropped.
        """
        if self._tail and not self.flush():
            return False
        length = sum(len(p) for p in parts)
        if length > MAX_FRAME_LEN:
            self.dropped += 1
            return True
        header = length.to_bytes(LEN_SIZE, "big")
        while True:
            try:
                sent = self.sock.sendmsg([header, *parts])
                break
            except InterruptedError:
                continue
            except BlockingIOError:
                return False
            except OSError as e:
                raise self._gone("send", e) from None
        if sent < LEN_SIZE + length:
            self._tail = b"".join([header, *parts])[sent:]
        return True

    def flush(self) -> bool:
        """Push the kept tail; True when nothing is left."""
        while self._tail:
            try:
                sent = self.sock.send(self._tail)
            except InterruptedError:
                continue
            except BlockingIOError:
                return False
            except OSError as e:
                raise self._gone("send", e) from None
            self._tail = self._tail[sent:]
        return True

    @property
    def pending(self) -> int:
        """Bytes of a frame taken by :meth:`send` but not yet in the socket."""
        return len(self._tail)

    def _gone(self, operation: str, e: OSError) -> BackendGone:
        err = e.errno or 0
        if err in _GONE or isinstance(e, ConnectionError):
            return BackendGone(f"{self.peer} is gone: {operation} failed: {e.strerror}", operation=operation,
                               errno=err)
        return BackendGone(f"{operation} to {self.peer} failed: {e.strerror}", operation=operation, errno=err)
