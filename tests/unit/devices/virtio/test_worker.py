"""The per-device worker thread."""

from __future__ import annotations

import threading

from kvmlite.devices.virtio.worker import Worker


def test_worker_kick_runs_handler_on_worker_thread() -> None:
    ran: list[str] = []
    worker = Worker("test-worker", lambda: ran.append(threading.current_thread().name))
    worker.start()

    worker.kick()

    assert worker.wait_idle(timeout=5)
    assert ran == ["test-worker"]
    worker.stop()
    assert worker.join(timeout=5)


def test_worker_kicks_while_busy_coalesce_into_one_more_run() -> None:
    release = threading.Event()
    started = threading.Event()
    runs: list[int] = []

    def handler() -> None:
        runs.append(1)
        started.set()
        release.wait(5)

    worker = Worker("test-worker", handler)
    worker.start()
    worker.kick()
    assert started.wait(5)

    for _ in range(10):
        worker.kick()
    release.set()

    assert worker.wait_idle(timeout=5)
    assert len(runs) == 2
    worker.stop()
    worker.join(timeout=5)


def test_worker_handler_exception_is_logged_and_worker_keeps_serving() -> None:
    calls: list[int] = []

    def handler() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")

    worker = Worker("test-worker", handler)
    worker.start()
    worker.kick()
    assert worker.wait_idle(timeout=5)

    worker.kick()

    assert worker.wait_idle(timeout=5)
    assert len(calls) == 2
    worker.stop()
    worker.join(timeout=5)


def test_worker_stop_exits_thread_without_running_pending_kick() -> None:
    runs: list[int] = []
    worker = Worker("test-worker", lambda: runs.append(1))
    worker.stop()
    worker.kick()

    worker.start()

    assert worker.join(timeout=5)
    assert runs == []
