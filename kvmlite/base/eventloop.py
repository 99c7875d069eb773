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

Timers (``call_later``) are for coarse deadlines (a peer that never finishes
a handshake), not for pacing I/O: they run after the ready fds of the poll
that reached them, in deadline order, on the loop thread like any callback.
A cancelled timer stays in the heap until its deadline, then is skipped.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

Callback = Callable[[], None]

_READ_EVENTS = select.EPOLLIN | select.EPOLLPRI | select.EPOLLHUP | select.EPOLLERR
_WRITE_EVENTS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR


class Timer:
    """A callback :meth:`EventLoop.call_later` will run; ``cancel`` stops it
    (any thread; a timer already running is not stopped)."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self, name: str = "io") -> None:
        self.name = name
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callback] = {}      # readers
        self._writers: dict[int, Callback] = {}
        self._pending: list[Callback] = []
        self._pending_lock = threading.Lock()                 # guards _pending and _timers
        self._timers: list[tuple[float, int, Timer]] = []     # a heap by deadline
        self._timer_seq = itertools.count()
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

    def call_later(self, delay: float, callback: Callback) -> Timer:
        """Run ``callback()`` on the loop thread once ``delay`` seconds have
        passed (thread-safe); returns the :class:`Timer` that can cancel it."""
        timer = Timer(time.monotonic() + max(0.0, delay), callback)
        with self._pending_lock:
            heapq.heappush(self._timers, (timer.when, next(self._timer_seq), timer))
            earliest = self._timers[0][2] is timer
        if earliest and not self.on_loop_thread():
            self._wake()                # the loop may be sleeping past this deadline
        return timer

    def _poll_timeout(self) -> float:
        """Seconds until the earliest timer (-1: none, sleep until an fd is ready).
        Without timers (every device but vsock) no lock and no clock read: a
        timer added meanwhile from another thread wakes the loop itself."""
        if not self._timers:
            return -1
        with self._pending_lock:
            if not self._timers:
                return -1
            return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due_timers(self) -> None:
        if not self._timers:            # the common case, on every turn of every loop
            return
        now = time.monotonic()
        while True:
            with self._pending_lock:
                if not self._timers or self._timers[0][0] > now:
                    return
                timer = heapq.heappop(self._timers)[2]
            if not timer.cancelled:
                self._run_callback(None, timer.callback)

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

    @property
    def running(self) -> bool:
        """Whether a thread is in :meth:`run_forever` now."""
        return self._runner is not None

    def on_loop_thread(self) -> bool:
        """Whether the caller is the thread running this loop's callbacks."""
        return threading.get_ident() == self._runner

    def run_forever(self) -> None:
        self._runner = threading.get_ident()
        try:
            while not self._stopping:
                try:
                    events = self._epoll.poll(self._poll_timeout())
                except InterruptedError:
                    continue
                for fd, mask in events:
                    if fd == self._wake_r:
                        self._drain_wakeups()
                        continue
                    self._dispatch(fd, mask)
                self._run_due_timers()
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
