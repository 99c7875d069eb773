"""handle() from several threads: the fid table under concurrency, a fid
clunked while a request still uses it, and flush ordering."""

from __future__ import annotations

import os
import threading
import types
from pathlib import Path
from typing import Callable, Iterator

import pytest

from kvmlite.devices.virtio.p9 import codec, server as server_module
from kvmlite.devices.virtio.p9.constants import DOTL_RDWR
from kvmlite.devices.virtio.p9.server import P9Server
from tests.unit.devices.virtio.p9.client import P9Client


def run_threads(n: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:      # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def test_threads_independent_sessions_of_work(client: P9Client, share: Path) -> None:
    def work(i: int) -> None:
        c = P9Client(client.server)
        base = 1000 * (i + 1)
        for n in range(30):
            fid = base + n
            c.walk(0, fid)
            c.create(fid, f"t{i}-{n}".encode(), DOTL_RDWR)
            c.write(fid, f"thread {i} file {n}".encode())
            assert c.read(fid) == f"thread {i} file {n}".encode()
            c.clunk(fid)

    run_threads(6, work)

    assert len(list(share.iterdir())) == 180
    assert client.server.fid_count == 1


def test_threads_racing_on_one_fid_number_leave_one_winner(client: P9Client) -> None:
    results: list[object] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        reply = P9Client(client.server).call(codec.Twalk(0, 7, ()))
        with lock:
            results.append(reply)

    run_threads(8, work)

    assert results.count(codec.Rwalk(())) == 1
    assert client.server.fid_count == 2


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """(entered, release): the server's next pread signals ``entered`` and
    waits for ``release``."""
    entered, release = threading.Event(), threading.Event()

    def pread(fd: int, count: int, offset: int) -> bytes:
        entered.set()
        assert release.wait(10)
        return os.pread(fd, count, offset)

    monkeypatch.setattr(server_module, "os", types.SimpleNamespace(**{**vars(os), "pread": pread}))
    yield entered, release
    release.set()


def in_thread(server: P9Server, msg: codec.Message, tag: int, log: list[tuple[int, bytes]]) -> threading.Thread:
    raw = codec.encode(tag, msg)
    t = threading.Thread(target=server.handle, args=(raw, lambda reply: log.append((tag, reply))))
    t.start()
    return t


def test_threads_clunk_during_read_closes_only_after_it(client: P9Client, share: Path,
                                                        gate: tuple[threading.Event, threading.Event]) -> None:
    entered, release = gate
    (share / "f").write_bytes(b"still readable")
    client.open_path(1, b"f")
    with client.server._fids.use(1) as fid:
        fd = fid.open_fd
    assert fd is not None
    log: list[tuple[int, bytes]] = []
    reader = in_thread(client.server, codec.Tread(1, 0, 100), 50, log)
    assert entered.wait(10)

    client.clunk(1)
    os.fstat(fd)                                       # not closed under the reader
    release.set()
    reader.join(10)

    assert codec.decode(log[0][1]) == (50, codec.Rread(b"still readable"))


def test_threads_flush_answers_after_the_flushed_reply(client: P9Client, share: Path,
                                                       gate: tuple[threading.Event, threading.Event]) -> None:
    entered, release = gate
    (share / "f").write_bytes(b"x")
    client.open_path(1, b"f")
    log: list[tuple[int, bytes]] = []
    reader = in_thread(client.server, codec.Tread(1, 0, 10), 60, log)
    assert entered.wait(10)

    flusher = in_thread(client.server, codec.Tflush(60), 61, log)
    flusher.join(0.2)
    assert flusher.is_alive()                          # waits for tag 60
    release.set()
    reader.join(10)
    flusher.join(10)

    assert [tag for tag, _ in log] == [60, 61]
    assert codec.decode(log[1][1]) == (61, codec.Rflush())


def test_threads_flush_of_a_flush_does_not_wait(client: P9Client) -> None:
    assert client.ok(codec.Tflush(client._tag + 1)) == codec.Rflush()


def test_threads_version_during_read_drops_fids_and_closes_later(client: P9Client, share: Path,
                                                                 gate: tuple[threading.Event, threading.Event]) -> None:
    entered, release = gate
    (share / "f").write_bytes(b"data")
    client.open_path(1, b"f")
    log: list[tuple[int, bytes]] = []
    reader = in_thread(client.server, codec.Tread(1, 0, 10), 70, log)
    assert entered.wait(10)

    client.version()
    release.set()
    reader.join(10)

    assert codec.decode(log[0][1]) == (70, codec.Rread(b"data"))
    assert client.server.fid_count == 0


def test_threads_reset_forgets_the_session(client: P9Client) -> None:
    client.walk(0, 1)

    client.server.reset()

    assert client.server.fid_count == 0 and client.server.msize == 0
