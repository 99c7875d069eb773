"""QEMU stream framing (4-byte big-endian length, then the frame) over a
socketpair: reassembly of frames split anywhere, several frames per recv,
partial writes kept as a tail."""

from __future__ import annotations

import random
import select
import socket
import threading
from collections.abc import Iterator

import pytest

from kvmlite.net.errors import BackendGone
from kvmlite.net.stream import LEN_SIZE, MAX_FRAME_LEN, FramedStream


def framed(*frames: bytes) -> bytes:
    return b"".join(len(f).to_bytes(LEN_SIZE, "big") + f for f in frames)


@pytest.fixture
def pair() -> Iterator[tuple[FramedStream, socket.socket]]:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    yield FramedStream(ours, "peer"), peer
    ours.close()
    peer.close()


def drain(stream: FramedStream, size: int = MAX_FRAME_LEN) -> list[bytes]:
    """Every whole frame that can be had now."""
    frames = []
    buf = bytearray(size)
    while True:
        try:
            n = stream.recv_into(memoryview(buf))
        except BlockingIOError:
            return frames
        frames.append(bytes(buf[:n]))


FRAMES = [b"\x01" * 60, b"ab", b"\xff" * 1514, b"z"]


def test_stream_recv_frames_split_at_every_byte_boundary(pair: tuple[FramedStream, socket.socket]) -> None:
    stream, peer = pair
    data = framed(*FRAMES)
    for cut in range(len(data) + 1):
        got = []
        peer.sendall(data[:cut])
        got += drain(stream)
        peer.sendall(data[cut:])
        got += drain(stream)
        assert got == FRAMES, f"cut at byte {cut}"


def test_stream_recv_byte_by_byte(pair: tuple[FramedStream, socket.socket]) -> None:
    stream, peer = pair
    got = []
    for byte in framed(*FRAMES):
        peer.sendall(bytes([byte]))
        got += drain(stream)
    assert got == FRAMES


def test_stream_recv_several_frames_in_one_send(pair: tuple[FramedStream, socket.socket]) -> None:
    stream, peer = pair
    frames = [bytes([i]) * (i * 7 + 1) for i in range(50)]
    peer.sendall(framed(*frames))
    assert drain(stream) == frames


def test_stream_recv_leaves_no_whole_frame_buffered(pair: tuple[FramedStream, socket.socket]) -> None:
    # After a frame is returned, the next one is still in the socket (only
    # its length may have been read), so readability tells the whole story.
    stream, peer = pair
    peer.sendall(framed(b"first", b"second"))
    buf = bytearray(100)
    assert stream.recv_into(memoryview(buf)) == 5
    assert stream.sock.recv(100, socket.MSG_PEEK) == b"second"


def test_stream_recv_frame_longer_than_buffer_is_dropped(pair: tuple[FramedStream, socket.socket]) -> None:
    stream, peer = pair
    peer.sendall(framed(b"x" * 200, b"fits"))
    assert drain(stream, size=100) == [b"fits"]
    assert stream.dropped == 1


def test_stream_recv_empty_frame_is_skipped(pair: tuple[FramedStream, socket.socket]) -> None:
    stream, peer = pair
    peer.sendall(framed(b"", b"after"))
    assert drain(stream) == [b"after"]


def test_stream_recv_at_end_of_stream_is_connection_error(pair: tuple[FramedStream, socket.socket]) -> None:
    stream, peer = pair
    peer.sendall(framed(b"last") + b"\x00\x00")    # and half a length
    peer.close()
    buf = bytearray(100)
    assert stream.recv_into(memoryview(buf)) == 4
    with pytest.raises(ConnectionError, match="peer closed the connection"):
        stream.recv_into(memoryview(buf))


def test_stream_recv_impossible_length_is_connection_error(pair: tuple[FramedStream, socket.socket]) -> None:
    stream, peer = pair
    peer.sendall((MAX_FRAME_LEN + 1).to_bytes(4, "big"))
    with pytest.raises(BackendGone, match="out of step"):
        stream.recv_into(memoryview(bytearray(100)))


def test_stream_send_writes_length_then_frame(pair: tuple[FramedStream, socket.socket]) -> None:
    stream, peer = pair
    assert stream.send([b"he", memoryview(b"llo"), b""]) is True
    assert peer.recv(100) == framed(b"hello")


def test_stream_send_to_closed_peer_is_connection_error(pair: tuple[FramedStream, socket.socket]) -> None:
    stream, peer = pair
    peer.close()
    with pytest.raises(ConnectionError):
        for _ in range(1000):
            stream.send([b"x" * 1000])


def test_stream_send_partial_writes_keep_the_tail_and_lose_nothing() -> None:
    # A tiny send buffer on our side and a tiny receive buffer on the peer's
    # make the kernel take frames in pieces; a slow reader drains the peer.
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    ours.setblocking(False)
    stream = FramedStream(ours, "peer")
    rng = random.Random(7)      # used by this thread only
    frames = [bytes(rng.randrange(256) for _ in range(rng.choice((1, 60, 1514, 9000, 40000)))) for _ in range(40)]
    total = len(framed(*frames))
    received = bytearray()
    sizes = [random.Random(8).choice((1, 7, 100, 4096)) for _ in range(64)]

    def reader() -> None:
        peer.settimeout(10)
        while len(received) < total:
            chunk = peer.recv(sizes[len(received) % len(sizes)])
            if not chunk:
                break
            received.extend(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    partial = 0
    try:
        for frame in frames:
            while not stream.send([frame[:10], frame[10:]]):
                select.select([], [ours], [], 1)
            if stream.pending:
                partial += 1
            assert stream.pending <= LEN_SIZE + len(frame)        # bounded: one frame at most
        while not stream.flush():
            select.select([], [ours], [], 1)
    finally:
        thread.join(20)
        ours.close()
        peer.close()
    assert bytes(received) == framed(*frames)
    assert partial > 0, "the kernel never took a frame in part: the test did not test partial writes"


def test_stream_send_refuses_while_tail_waits_and_consumes_nothing() -> None:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    ours.setblocking(False)
    stream = FramedStream(ours, "peer")
    try:
        big = b"B" * 60_000
        assert stream.send([big]) is True
        assert stream.pending > 0
        assert stream.send([b"next"]) is False             # the tail first
        peer.setblocking(False)
        received = bytearray()
        while not stream.flush():
            try:
                received += peer.recv(65536)
            except BlockingIOError:
                pass
        assert stream.send([b"next"]) is True
        peer.setblocking(True)
        peer.settimeout(5)
        while len(received) < len(framed(big, b"next")):
            received += peer.recv(65536)
        assert bytes(received) == framed(big, b"next")
    finally:
        ours.close()
        peer.close()


def test_stream_send_frame_longer_than_limit_is_dropped(pair: tuple[FramedStream, socket.socket]) -> None:
    stream, peer = pair
    assert stream.send([bytes(MAX_FRAME_LEN + 1)]) is True
    assert stream.dropped == 1
    assert stream.send([b"ok"]) is True
    assert peer.recv(100) == framed(b"ok")
