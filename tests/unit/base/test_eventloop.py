"""The event loop: which thread counts as the loop's."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Iterator

import pytest

from kvmlite.base.eventloop import EventLoop


def test_on_loop_thread_only_while_the_thread_runs_the_loop() -> None:
    loop = EventLoop("test")
    seen: list[bool] = []

    def inside() -> None:
        seen.append(loop.on_loop_thread())
        loop.stop()

    try:
        assert not loop.on_loop_thread()
        loop.call_soon(inside)
        loop.run_forever()          # on this thread, until inside() stops it
        assert seen == [True]
        assert not loop.on_loop_thread(), "a thread that left the loop still counts as the loop's"
    finally:
        loop.close()


def test_on_loop_thread_is_false_on_other_threads() -> None:
    loop = EventLoop("test")
    loop.start()
    try:
        answers: list[bool] = []
        done = threading.Event()
        loop.call_soon(lambda: (answers.append(loop.on_loop_thread()), done.set()))
        assert done.wait(10)
        assert answers == [True]
        assert not loop.on_loop_thread()
    finally:
        loop.close()



# --- writers ---

def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def running() -> Iterator[EventLoop]:
    loop = EventLoop("test")
    loop.start()
    yield loop
    loop.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_add_writer_socket_with_room_calls_back_until_removed(running: EventLoop, pair) -> None:
    a, _ = pair
    calls: list[int] = []

    def writable() -> None:
        calls.append(1)
        if len(calls) == 3:
            running.remove_writer(a.fileno())

    running.add_writer(a.fileno(), writable)

    assert _wait_for(lambda: len(calls) >= 3)
    time.sleep(0.05)
    assert calls == [1, 1, 1]


def test_add_writer_on_a_reader_fd_keeps_both_callbacks(running: EventLoop, pair) -> None:
    a, b = pair
    reads: list[bytes] = []
    writes: list[int] = []
    running.add_reader(a.fileno(), lambda: reads.append(a.recv(16)))

    running.add_writer(a.fileno(), lambda: (writes.append(1), running.remove_writer(a.fileno())))
    b.send(b"x")

    assert _wait_for(lambda: reads == [b"x"] and writes == [1])
    b.send(b"y")                      # the reader outlives the writer
    assert _wait_for(lambda: reads == [b"x", b"y"])
    assert writes == [1]


def test_add_writer_full_socket_waits_for_room(running: EventLoop, pair) -> None:
    a, b = pair
    calls: list[int] = []
    try:
        while True:                   # fill the socket buffer
            a.send(bytes(65536))
    except BlockingIOError:
        pass

    running.add_writer(a.fileno(), lambda: (calls.append(1), running.remove_writer(a.fileno())))
    time.sleep(0.1)
    assert calls == []
    try:
        while b.recv(1 << 20):
            pass
    except BlockingIOError:
        pass

    assert _wait_for(lambda: calls == [1])


def test_failing_writer_is_removed_and_reader_stays(running: EventLoop, pair) -> None:
    a, b = pair
    reads: list[bytes] = []

    def broken() -> None:
        raise RuntimeError("writer failed")

    running.add_reader(a.fileno(), lambda: reads.append(a.recv(16)))
    running.add_writer(a.fileno(), broken)

    assert _wait_for(lambda: a.fileno() not in running._writers)
    b.send(b"still")
    assert _wait_for(lambda: reads == [b"still"])


# --- timers ---

def test_call_later_runs_on_the_loop_thread_after_the_delay(running: EventLoop) -> None:
    ran: list[tuple[float, bool]] = []
    start = time.monotonic()

    running.call_later(0.05, lambda: ran.append((time.monotonic() - start, running.on_loop_thread())))

    assert _wait_for(lambda: ran)
    assert ran[0][0] >= 0.05 and ran[0][1]


def test_call_later_timers_run_in_deadline_order(running: EventLoop) -> None:
    order: list[str] = []

    running.call_later(0.08, lambda: order.append("late"))
    running.call_later(0.02, lambda: order.append("early"))     # earlier than the one the loop sleeps for

    assert _wait_for(lambda: len(order) == 2)
    assert order == ["early", "late"]


def test_call_later_cancelled_timer_never_runs(running: EventLoop) -> None:
    ran: list[str] = []
    timer = running.call_later(0.03, lambda: ran.append("cancelled"))
    running.call_later(0.06, lambda: ran.append("kept"))

    timer.cancel()

    assert _wait_for(lambda: ran == ["kept"])
    time.sleep(0.02)
    assert ran == ["kept"]


def test_call_later_failing_timer_is_logged_and_the_loop_goes_on(running: EventLoop) -> None:
    ran: list[int] = []

    def broken() -> None:
        raise RuntimeError("timer failed")

    running.call_later(0, broken)
    running.call_later(0.01, lambda: ran.append(1))

    assert _wait_for(lambda: ran == [1])
