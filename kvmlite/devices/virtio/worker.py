"""A per-device worker thread: runs a handler whenever it is kicked.

virtio-blk does its disk I/O here, not on the thread that delivered the
queue notification: that is the I/O thread (an ioeventfd), shared with the
console and the network, or a vCPU thread when the transport has no
ioeventfd.  ``preadv``/``pwritev``/``fdatasync`` release the GIL, so the
disk wait overlaps guest execution.

Kicks coalesce: a kick while the handler runs makes it run once more, so a
notification is never lost and never queued twice.  ``stop`` does not wait:
the handler may be blocked in a call into the transport (an interrupt) that
needs a lock the caller of ``stop`` holds; the device guarantees by its own
lock that a stopped worker touches guest memory no more.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, name: str, handler: Callable[[], None]) -> None:
        self._handler = handler
        self._cond = threading.Condition()
        self._kicked = False
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        """Run the handler soon (any thread)."""
        with self._cond:
            self._kicked = True
            self._cond.notify_all()

    def stop(self) -> None:
        """Ask the thread to exit after the current handler call (any thread)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to exit; True when it has."""
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the handler is not running and no kick is pending
        (a stopped worker never runs a pending kick)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy and (self._stopping or not self._kicked), timeout)

    def _run(self) -> None:
        while self._next():
            try:
                self._handler()
            except Exception:  # a bug, not a guest error: keep serving
                log.exception("%s: worker handler failed", self._thread.name)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _next(self) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self._kicked or self._stopping)
            if self._stopping:
                self._cond.notify_all()
                return False
            self._kicked, self._busy = False, True
            return True
