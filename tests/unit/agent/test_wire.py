"""Frames over a socketpair: whole frames from concurrent senders, keepalives
that never block, timeouts and broken streams as AgentConnectionError."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from kvmlite.agent.errors import AgentConnectionError, ProtocolError
from kvmlite.agent.protocol import HEADER, FrameType
from kvmlite.agent.wire import FrameReader, FrameWriter


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_concurrent_senders_never_interleave_frames(pair) -> None:
    a, b = pair
    writer, reader = FrameWriter(a), FrameReader(b)
    payloads = {FrameType.STDOUT: b"o" * 300000, FrameType.STDERR: b"e" * 7}

    def send(ftype: FrameType) -> None:
        for _ in range(50):
            writer.send(ftype, payloads[ftype])

    threads = [threading.Thread(target=send, args=(t,)) for t in payloads]
    for t in threads:
        t.start()
    frames = [reader.read() for _ in range(100)]
    for t in threads:
        t.join()
    assert all(f.payload == payloads[f.type] for f in frames)
    assert sum(f.type is FrameType.STDOUT for f in frames) == 50


def test_keepalive_never_blocks_and_completes_later(pair) -> None:
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setblocking(False)
    filler = 0
    try:                                        # fill the buffer to the brim
        while True:
            filler += a.send(b"x" * 512)
    except BlockingIOError:
        pass
    a.setblocking(True)
    writer = FrameWriter(a, keepalive=0.01)
    started = time.monotonic()
    writer.keepalive_if_idle(time.monotonic() + 1)
    assert time.monotonic() - started < 0.5 and not writer.broken
    received = b""
    while len(received) < filler:               # the peer reads again
        received += b.recv(65536)
    for _ in range(3):
        writer.keepalive_if_idle(time.monotonic() + 1)
    b.settimeout(2)
    tail = received[filler:]
    while len(tail) < HEADER.size:
        tail += b.recv(65536)
    assert tail[:HEADER.size] == HEADER.pack(0, FrameType.KEEPALIVE)


def test_idle_keepalive_waits_for_its_interval(pair) -> None:
    a, b = pair
    writer = FrameWriter(a, keepalive=60.0)
    writer.keepalive_if_idle(time.monotonic())
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(10)


def test_reader_timeout_and_eof_inside_frame(pair) -> None:
    a, b = pair
    b.settimeout(0.2)
    with pytest.raises(AgentConnectionError, match="no data for 0.2 s"):
        FrameReader(b).read()
    a.sendall(HEADER.pack(10, FrameType.DATA) + b"abc")
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="inside a frame"):
        FrameReader(b).read()


def test_writer_to_a_closed_peer_fails_and_stays_failed(pair) -> None:
    a, b = pair
    b.close()
    writer = FrameWriter(a)
    with pytest.raises(AgentConnectionError):
        writer.send(FrameType.DATA, b"x")
    assert writer.broken
    with pytest.raises(AgentConnectionError):
        writer.send(FrameType.DATA, b"y")
