"""The I/O thread: an epoll loop that serves queue notifications
(ioeventfds), backend readiness (tap, sockets, the console) and the control
socket, off the vCPU threads.

Callbacks run on the loop's thread, one at a time.  A callback that raises
is logged and removed; the loop and the other callbacks go on.

An fd may have a reader and a writer at once (a tap or a socket that is read
all the time and waited on for room only after a short write): epoll knows
an fd once, so both are one registration whose event mask is the union.
Epoll always reports EPOLLHUP and EPOLLERR; either wakes the fd's reader and
its writer, whose read or write then meets the error.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Callable

log = logging.getLogger(__name__)

Callback = Callable[[], None]

_READ_EVENTS = select.EPOLLIN | select.EPOLLPRI | select.EPOLLHUP | select.EPOLLERR
_WRITE_EVENTS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR


class EventLoop:
    def __init__(self, name: str = "io") -> None:
        self.name = name
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callback] = {}      # readers
        self._writers: dict[int, Callback] = {}
        self._pending: list[Callback] = []
        self._pending_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._runner: int | None = None           # ident of the thread in run_forever

    # --- registration (any thread) ---

    def add_reader(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` on the loop thread whenever ``fd`` is readable
        (instead of its reader so far, if it had one)."""
        self._watch(fd, self._callbacks, callback)

    def remove_reader(self, fd: int) -> None:
        self._unwatch(fd, self._callbacks)

    def add_writer(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` on the loop thread whenever ``fd`` is writable
        (level-triggered: remove the writer once there is nothing to write)."""
        self._watch(fd, self._writers, callback)

    def remove_writer(self, fd: int) -> None:
        self._unwatch(fd, self._writers)

    def _mask(self, fd: int) -> int:
        """The epoll events ``fd``'s reader and writer ask for."""
        return ((select.EPOLLIN if fd in self._callbacks else 0)
                | (select.EPOLLOUT if fd in self._writers else 0))

    def _watch(self, fd: int, table: dict[int, Callback], callback: Callback) -> None:
        wanted = select.EPOLLIN if table is self._callbacks else select.EPOLLOUT
        mask = self._mask(fd)
        if mask:
            self._epoll.modify(fd, mask | wanted)
        else:
            self._epoll.register(fd, wanted)   # raises first for fds epoll refuses
        table[fd] = callback

    def _unwatch(self, fd: int, table: dict[int, Callback]) -> None:
        if table.pop(fd, None) is None:
            return
        mask = self._mask(fd)
        try:
            if mask:
                self._epoll.modify(fd, mask)
            else:
                self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def call_soon(self, callback: Callback) -> None:
        """Run ``callback()`` on the loop thread soon (thread-safe)."""
        with self._pending_lock:
            self._pending.append(callback)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass

    # --- running ---

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def close(self) -> None:
        self.stop()
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def on_loop_thread(self) -> bool:
        """Whether the caller is the thread running this loop's callbacks."""
        return threading.get_ident() == self._runner

    def run_forever(self) -> None:
        self._runner = threading.get_ident()
        try:
            while not self._stopping:
                try:
                    events = self._epoll.poll()
                except InterruptedError:
                    continue
                for fd, mask in events:
                    if fd == self._wake_r:
                        self._drain_wakeups()
                        continue
                    self._dispatch(fd, mask)
        finally:
            # Thread idents are reused once a thread ends: a later thread
            # must not pass for this loop's.
            self._runner = None

    def _dispatch(self, fd: int, mask: int) -> None:
        """Run ``fd``'s reader and then its writer, as ``mask`` calls for."""
        if mask & _READ_EVENTS:
            callback = self._callbacks.get(fd)
            if callback is not None:
                self._run_callback(fd, callback)
        if mask & _WRITE_EVENTS:
            callback = self._writers.get(fd)
            if callback is not None:
                self._run_callback(fd, callback, self.remove_writer)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for callback in pending:
            self._run_callback(None, callback)

    def _run_callback(self, fd: int | None, callback: Callback,
                      remove: Callable[[int], None] | None = None) -> None:
        """Run one callback; if it raises, log it and take it off ``fd``
        (``remove``: ``remove_reader`` unless told otherwise)."""
        try:
            callback()
        except Exception:
            log.exception("%s: callback %r failed%s", self.name, callback,
                          "" if fd is None else f"; fd {fd} removed")
            if fd is not None:
                (remove or self.remove_reader)(fd)
