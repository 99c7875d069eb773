"""vCPU threads: one per vCPU, each looping on KVM_RUN and handing every exit
to the buses.

State machine (as Firecracker's): ``RUNNING -> PAUSED -> RUNNING ...`` and
finally ``FINISHED``.  Another thread changes state with :meth:`Vcpu.request`
which follows Firecracker's kick: set ``kvm_run.immediate_exit``, then send
:data:`KICK_SIGNAL` to the vCPU thread.  If the thread is inside KVM_RUN the
signal makes it return ``EINTR``; if it is about to enter, immediate_exit
makes KVM_RUN return at once.  The vCPU clears immediate_exit only after it
has seen the request, under the same lock, so a kick is never lost.

The signal handler is a Python no-op installed from the main thread: what
matters is that the signal is *caught* (an ignored signal would not
interrupt KVM_RUN) and that ``KVM_RUN`` is called through ctypes, which
returns EINTR instead of retrying (see kvmlite/kvm/ioctl.py).
"""

from __future__ import annotations

import enum
import logging
import signal
import threading
from collections import Counter
from typing import TYPE_CHECKING, Callable

from kvmlite.devices.bus import Bus
from kvmlite.errors import KvmliteError
from kvmlite.kvm import exits as ex
from kvmlite.kvm import uapi
from kvmlite.kvm.ioctl import KvmError
from kvmlite.kvm.vcpu import VcpuFd
from kvmlite.vmm.exitcodes import EndReason

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

KICK_SIGNAL = signal.SIGRTMIN + 1
_handler_installed = False


def install_kick_handler() -> None:
    """Catch KICK_SIGNAL (a no-op handler).  Must run on the main thread."""
    global _handler_installed
    if _handler_installed:
        return
    if threading.current_thread() is not threading.main_thread():
        raise KvmliteError("start the first VM from the main thread, or call "
                           "kvmlite.vmm.vcpu.install_kick_handler() there first (the vCPU kick signal "
                           "needs a handler, and only the main thread can install one)")
    signal.signal(KICK_SIGNAL, lambda signum, frame: None)
    _handler_installed = True


class VcpuState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"


class Request(enum.Enum):
    PAUSE = "pause"
    STOP = "stop"


# Called by a vCPU when the guest ends the VM: (reason, exit code or None, message)
EndCallback = Callable[[EndReason, "int | None", str], None]


class Vcpu:
    """One vCPU and its thread."""

    def __init__(self, fd: VcpuFd, io_bus: Bus, mmio_bus: Bus, on_end: EndCallback,
                 *, has_irqchip: bool = True,
                 explain_internal_error: Callable[["Vcpu", ex.InternalError], str] | None = None) -> None:
        self.fd = fd
        self.id = fd.id
        self.io_bus = io_bus
        self.mmio_bus = mmio_bus
        self.on_end = on_end
        self.has_irqchip = has_irqchip
        self.explain_internal_error = explain_internal_error
        self.state = VcpuState.CREATED
        self.exit_counts: Counter[type] = Counter()   # by exit type: no name lookup per exit
        self.native_id: int | None = None
        self._request: Request | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._thread_main, name=f"vcpu{self.id}", daemon=True)
        self._handlers: dict[type, Callable[[object], bool]] = {
            ex.IoOut: self._io_out, ex.IoIn: self._io_in,
            ex.MmioWrite: self._mmio_write, ex.MmioRead: self._mmio_read,
            ex.Interrupted: lambda e: True,
        }

    # --- control from other threads ---

    def start(self) -> None:
        install_kick_handler()      # raises a clear error off the main thread, before any harm
        self._thread.start()

    def request(self, what: Request | None) -> None:
        """Ask the vCPU to pause (``PAUSE``), stop (``STOP``) or resume (``None``)."""
        with self._cond:
            if self.state is VcpuState.FINISHED:
                return
            if self._request is Request.STOP and what is not Request.STOP:
                return  # stopping is final
            self._request = what
            if what is not None:
                self.fd.set_immediate_exit(True)
            self._cond.notify_all()
        if what is not None:
            self._kick()

    def _kick(self) -> None:
        ident = self._thread.ident
        if _handler_installed and ident is not None and self._thread.is_alive():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def wait_state(self, states: set[VcpuState], timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.state in states, timeout)

    def join(self, timeout: float | None = None) -> None:
        if self._thread.ident is not None:
            self._thread.join(timeout)

    # --- the vCPU thread ---

    def _thread_main(self) -> None:
        self.native_id = threading.get_native_id()
        self._set_state(VcpuState.RUNNING)
        try:
            self._loop()
        except KvmError as exc:
            self.on_end(EndReason.ERROR, None, f"vCPU {self.id}: {exc}")
        except Exception as exc:  # a bug in kvmlite: end the VM, never hang it
            log.exception("vCPU %d: unexpected error", self.id)
            self.on_end(EndReason.ERROR, None, f"vCPU {self.id}: internal error: {exc!r}")
        finally:
            self._set_state(VcpuState.FINISHED)

    def _set_state(self, state: VcpuState) -> None:
        with self._cond:
            self.state = state
            self._cond.notify_all()

    def _serve_request(self) -> bool:
        """Handle a pending request; False when the vCPU must finish."""
        with self._cond:
            while self._request is Request.PAUSE:
                self.state = VcpuState.PAUSED
                self._cond.notify_all()
                self._cond.wait()
            if self._request is Request.STOP:
                return False
            self.state = VcpuState.RUNNING
            self.fd.set_immediate_exit(False)
            self._cond.notify_all()
        return True

    def _loop(self) -> None:
        run, handlers, counts = self.fd.run, self._handlers, self.exit_counts
        while True:
            if self._request is not None and not self._serve_request():
                return
            exit = run()
            kind = type(exit)
            counts[kind] += 1
            handler = handlers.get(kind)
            if handler is not None:
                handler(exit)
            elif not self._rare_exit(exit):
                return

    def _io_out(self, e: ex.IoOut) -> bool:  # type: ignore[override]
        if e.count == 1:
            self.io_bus.write(e.port, e.data)
        else:
            size = e.size
            for i in range(e.count):
                self.io_bus.write(e.port, e.data[i * size:(i + 1) * size])
        return True

    def _io_in(self, e: ex.IoIn) -> bool:
        if e.count == 1:
            self.io_bus.read(e.port, e.data)
        else:
            size = e.size
            for i in range(e.count):
                self.io_bus.read(e.port, e.data[i * size:(i + 1) * size])
        return True

    def _mmio_write(self, e: ex.MmioWrite) -> bool:
        self.mmio_bus.write(e.addr, e.data)
        return True

    def _mmio_read(self, e: ex.MmioRead) -> bool:
        self.mmio_bus.read(e.addr, e.data)
        return True

    def _rare_exit(self, e: ex.Exit) -> bool:
        """Exits that end the VM or need care; False when this vCPU is done."""
        if isinstance(e, ex.Hlt):
            if self.has_irqchip:
                return True
            self.on_end(EndReason.POWEROFF, None, f"vCPU {self.id} halted")
            return False
        if isinstance(e, ex.Shutdown):
            rip = self._rip()
            self.on_end(EndReason.CRASH, None, f"guest triple fault on vCPU {self.id} (rip {rip})")
            return False
        if isinstance(e, ex.SystemEvent):
            return self._system_event(e)
        if isinstance(e, ex.InternalError):
            text = (self.explain_internal_error(self, e) if self.explain_internal_error
                    else f"KVM internal error {e.suberror} on vCPU {self.id}")
            self.on_end(EndReason.CRASH, None, text)
            return False
        if isinstance(e, ex.FailEntry):
            self.on_end(EndReason.CRASH, None, f"KVM could not enter the guest on vCPU {self.id} "
                                               f"(hardware reason {e.reason:#x})")
            return False
        if isinstance(e, ex.IoapicEoi):
            return True
        self.on_end(EndReason.CRASH, None, f"unhandled KVM exit {e} on vCPU {self.id}")
        return False

    def _system_event(self, e: ex.SystemEvent) -> bool:
        if e.type == uapi.KVM_SYSTEM_EVENT_SHUTDOWN:
            self.on_end(EndReason.POWEROFF, None, "guest powered off")
        elif e.type == uapi.KVM_SYSTEM_EVENT_RESET:
            self.on_end(EndReason.RESET, None, "guest requested a reset")
        else:
            self.on_end(EndReason.CRASH, None, f"guest crashed (system event {e.type})")
        return False

    def _rip(self) -> str:
        try:
            return hex(self.fd.get_regs().rip)
        except KvmError:
            return "unknown"
