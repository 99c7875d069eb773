"""The event loop: which thread counts as the loop's."""

from __future__ import annotations

import threading

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
