"""Controlling a running VM: pause and resume with the guest clock held,
statistics, registers, NMI and sysrq injection, and a graceful shutdown.

One :class:`VmControl` per :class:`~kvmlite.vmm.vm.Vm` (``vm.control``):
the Python API (``Vm.pause()`` ...) and the control socket
(:mod:`kvmlite.control.server`) both go through it, so they agree on
whether the VM is paused.

Contracts with KVM:

* vCPU ioctls (KVM_GET_REGS, KVM_NMI, ...) take the vCPU's mutex, which
  KVM_RUN holds while the guest runs, so they are issued only while every
  vCPU is parked out of KVM_RUN (Documentation/virt/kvm/api.rst: "vcpu
  ioctls should be issued from the same thread that was used to create the
  vcpu" -- parking them makes another thread safe in practice, as in
  QEMU's run_on_cpu).  An operation on a running VM parks the vCPUs, does
  its work and lets them go; that short stall leaves the guest clock alone.
* A pause requested by the user holds the guest's clock: KVM_GET_CLOCK when
  the vCPUs are parked, KVM_SET_CLOCK with the same value just before they
  run again (api.rst 4.59/4.60), so kvmclock does not jump over the pause
  (QEMU's kvmclock does the same on stop/cont).  The TSC itself keeps
  counting; a guest on the TSC clocksource sees the pause.
* Graceful shutdown: if the guest OS enabled the ACPI power-button event
  (PWRBTN_EN in PM1_EN, ACPI 6.3 section 4.8.3.1.2), press the button; if the
  OS does not take the event (PWRBTN_STS still set) within ``button_wait``
  seconds, or never enabled it (ACPI-less guests, or no button driver), send
  Ctrl-Alt-Del through the i8042.  If the VM has not ended after
  ``timeout`` seconds, stop it hard.  The guest's own poweroff ends the VM
  with exit status 0.

Threads: any thread except a vCPU thread (a vCPU cannot wait for itself to
park).  ``_lock`` serialises the operations that park vCPUs; ``info``,
``state`` and ``stats`` only read counters and never take it.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from kvmlite.devices.legacy.acpi_pm import STS_PWRBTN, AcpiPm
from kvmlite.errors import KvmliteError
from kvmlite.vmm import diagnose
from kvmlite.vmm.exitcodes import EndReason
from kvmlite.vmm.vcpu import Request, VcpuState

if TYPE_CHECKING:
    from kvmlite.vmm.vcpu import Vcpu
    from kvmlite.vmm.vm import Vm

log = logging.getLogger(__name__)

POWER_BUTTON = "power-button"
CTRL_ALT_DEL = "ctrl-alt-del"
FORCE = "force"
ALREADY_STOPPED = "already-stopped"
DEFAULT_BUTTON_WAIT = 5.0
PARK_TIMEOUT = 5.0
EFER_LMA = 1 << 10
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
CONTROL_REGS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")


def controller(vm: "Vm") -> "VmControl":
    """The VM's VmControl."""
    return vm.control


class VmControl:
    def __init__(self, vm: "Vm", *, button_wait: float = DEFAULT_BUTTON_WAIT) -> None:
        self.vm = vm
        self.button_wait = button_wait
        self._lock = threading.RLock()
        self._paused_clock: int | None = None     # kvmclock at a requested pause
        self._stopper: threading.Thread | None = None
        self._stop_method: str | None = None
        self._deadline: float | None = None          # monotonic; the VM's lifetime (set_timeout)
        self._deadline_changed = threading.Condition()
        self._lifetime: threading.Thread | None = None

    # --- state ---

    def state(self) -> str:
        """``created``, ``running``, ``paused``, ``stopping`` or ``stopped``."""
        if _has_ended(self.vm):
            return "stopped"
        if self._stopper is not None and self._stopper.is_alive():
            return "stopping"
        if self._paused_clock is not None:
            return "paused"
        return "running" if self.vm.started_at is not None else "created"

    def uptime(self) -> float:
        started = self.vm.started_at
        return 0.0 if started is None else time.monotonic() - started

    def info(self) -> dict[str, Any]:
        config = self.vm.config
        info = {"state": self.state(), "vcpus": len(self.vm.vcpus), "memory_mib": config.mem_mib,
                "uptime_s": round(self.uptime(), 3), "kernel": config.kernel}
        if self._deadline is not None:
            info["timeout_s"] = round(max(0.0, self._deadline - time.monotonic()), 3)
            info["end_at"] = round(time.time() + info["timeout_s"], 3)
        if config.labels:
            info["labels"] = dict(config.labels)
        if config.vsock is not None:        # where host programs CONNECT (docs/vsock.md)
            info["vsock"] = {"cid": config.vsock.cid, "socket": self.vm.devices.vsock_path}
        nics = self.vm.devices.nics()
        if nics:
            info["nics"] = nics
        return info

    # --- lifetime ---

    def set_timeout(self, seconds: float) -> float:
        """End the VM ``seconds`` from now, replacing any earlier deadline;
        a paused VM's time counts too (as with E2B's sandbox timeout).  One
        daemon thread (``<name>:lifetime``) waits for the deadline."""
        with self._deadline_changed:
            self._deadline = time.monotonic() + seconds
            self._deadline_changed.notify_all()
            if self._lifetime is None:
                self._lifetime = threading.Thread(target=self._wait_deadline, daemon=True,
                                                  name=f"{getattr(self.vm, 'name', None) or 'vm'}:lifetime")
                self._lifetime.start()
        return seconds

    def _wait_deadline(self) -> None:
        with self._deadline_changed:
            while not _has_ended(self.vm):
                assert self._deadline is not None
                left = self._deadline - time.monotonic()
                if left <= 0:
                    break
                self._deadline_changed.wait(min(left, 1.0))
            else:
                return
        log.info("the VM's timeout passed: stopping it")
        self.vm.end(EndReason.STOPPED, None, "stopped: its timeout passed")

    # --- pause and resume ---

    def pause(self, timeout: float = PARK_TIMEOUT) -> None:
        """Park every vCPU out of KVM_RUN and hold the guest clock (idempotent)."""
        with self._lock:
            self._check_running()
            if self._paused_clock is not None:
                return
            self._park(timeout)
            self._paused_clock = self.vm.vm_fd.get_clock().clock

    def resume(self) -> None:
        """Restore the guest clock and let the vCPUs run (idempotent)."""
        with self._lock:
            if self._paused_clock is None:
                return
            self.vm.vm_fd.set_clock(self._paused_clock)
            self._paused_clock = None
            self._unpark()

    def held_clock(self) -> int | None:
        """The guest's kvmclock as a requested pause held it; None while running."""
        return self._paused_clock

    def snapshot(self, directory: str, stop: bool = False) -> dict[str, Any]:
        """Save the VM to ``directory`` (kvmlite/vmm/snapshot/save.py)."""
        from kvmlite.vmm.snapshot.save import take_snapshot

        return take_snapshot(self.vm, directory, stop=stop)

    def _check_running(self) -> None:
        if self.vm.started_at is None:
            raise KvmliteError("the VM has not started")
        if _has_ended(self.vm):
            raise KvmliteError("the VM has stopped")

    def _park(self, timeout: float) -> None:
        vcpus = self.vm.vcpus
        for vcpu in vcpus:
            vcpu.request(Request.PAUSE)
        deadline = time.monotonic() + timeout
        for vcpu in vcpus:
            if not vcpu.wait_state({VcpuState.PAUSED, VcpuState.FINISHED}, max(0.0, deadline - time.monotonic())):
                self._unpark()
                raise KvmliteError(f"vCPU {vcpu.id} did not pause within {timeout:g} s")
        if any(vcpu.state is VcpuState.FINISHED for vcpu in vcpus):
            raise KvmliteError("the VM has stopped")

    def _unpark(self) -> None:
        for vcpu in self.vm.vcpus:
            vcpu.request(None)

    @contextmanager
    def _parked(self, timeout: float = PARK_TIMEOUT) -> Iterator[None]:
        """Every vCPU out of KVM_RUN for the block (a short stall, clock untouched)."""
        with self._lock:
            self._check_running()
            if self._paused_clock is not None:
                yield
                return
            self._park(timeout)
            try:
                yield
            finally:
                self._unpark()

    # --- debugging ---

    def registers(self) -> list[dict[str, Any]]:
        """Each vCPU's registers and the code bytes at its RIP."""
        with self._parked():
            return [self._vcpu_registers(vcpu) for vcpu in self.vm.vcpus]

    def _vcpu_registers(self, vcpu: "Vcpu") -> dict[str, Any]:
        regs, sregs = vcpu.fd.get_regs(), vcpu.fd.get_sregs()
        linear = regs.rip if sregs.efer & EFER_LMA else (sregs.cs.base + regs.rip) & 0xFFFFFFFF
        code = diagnose.read_code(vcpu, self.vm.memory, linear)
        segments = {name: _segment(getattr(sregs, name)) for name in SEGMENTS}
        tables = {name: {"base": getattr(sregs, name).base, "limit": getattr(sregs, name).limit}
                  for name in ("gdt", "idt")}
        return {"id": vcpu.id, "regs": {name: getattr(regs, name) for name in GPRS},
                "sregs": {**{name: getattr(sregs, name) for name in CONTROL_REGS}, **segments, **tables},
                "rip_linear": linear, "code": code.hex() if code else None}

    def inject_nmi(self, vcpu: int | None = None) -> list[int]:
        """KVM_NMI on one vCPU (or all); returns the vCPU ids."""
        targets = self.vm.vcpus if vcpu is None else [self._vcpu(vcpu)]
        with self._parked():
            for target in targets:
                target.fd.nmi()
        return [target.id for target in targets]

    def _vcpu(self, index: int) -> "Vcpu":
        if not 0 <= index < len(self.vm.vcpus):
            raise KvmliteError(f"no vCPU {index}: this VM has {len(self.vm.vcpus)} (0-{len(self.vm.vcpus) - 1})")
        return self.vm.vcpus[index]

    def sysrq(self, key: str) -> None:
        """A serial break, then ``key``: Linux reads it as a magic sysrq
        (drivers/tty/serial: uart_handle_break arms it for 5 s)."""
        if len(key) != 1 or not "!" <= key <= "~":
            raise KvmliteError(f"sysrq key {key!r}: give one printable character, e.g. 'h'")
        if self.vm.config.console != "serial" or not self.vm.devices.serial:
            raise KvmliteError("sysrq goes through the serial console; this VM's console is not serial")
        uart = self.vm.devices.serial[0]
        uart.send_break()
        uart.enqueue_input(key.encode())

    # --- statistics ---

    def stats(self) -> dict[str, Any]:
        vm = self.vm
        return {"state": self.state(), "uptime_s": round(self.uptime(), 3), "memory_mib": vm.config.mem_mib,
                "vcpus": [_vcpu_stats(vcpu) for vcpu in vm.vcpus],
                "io": {"pio": vm.io_bus.stats(), "mmio": vm.mmio_bus.stats()},
                "devices": self._device_stats(), **process_memory()}

    def _device_stats(self) -> dict[str, dict[str, int]]:
        devices = self.vm.devices
        out = dict(devices.stats())
        for name, device in (("i8042", devices.i8042), ("acpi-pm", devices.acpi_pm)):
            stats = getattr(device, "stats", None)
            if name not in out and callable(stats):
                out[name] = stats()
        return out

    # --- shutdown ---

    def shutdown(self, timeout: float = 30.0, force: bool = False) -> str:
        """Stop the VM: at once if ``force``, else gracefully in the
        background (see the module doc).  Returns how: ``force``,
        ``power-button``, ``ctrl-alt-del`` or ``already-stopped``."""
        if force:
            self.vm.stop()
            return FORCE
        with self._lock:
            if _has_ended(self.vm):
                return ALREADY_STOPPED
            if self._stopper is not None and self._stopper.is_alive():
                return self._stop_method or CTRL_ALT_DEL
            self.resume()                        # a paused guest cannot shut itself down
            self._stop_method = POWER_BUTTON if self.power_button_enabled() else CTRL_ALT_DEL
            self._stopper = threading.Thread(target=self._graceful, args=(self._stop_method, timeout),
                                             name="graceful-stop", daemon=True)
            self._stopper.start()
            return self._stop_method

    def power_button_enabled(self) -> bool:
        """Whether the guest OS set PWRBTN_EN (it has a power-button driver)."""
        return bool(self._pm1(2) & STS_PWRBTN)

    def _pm1(self, offset: int) -> int:
        """PM1_STS (offset 0) or PM1_EN (2), read through the device's own port view."""
        pm: AcpiPm | None = self.vm.devices.acpi_pm
        if pm is None:
            return 0
        data = bytearray(2)
        pm.event.read(offset, memoryview(data))
        return int.from_bytes(data, "little")

    def _graceful(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pm: AcpiPm | None = self.vm.devices.acpi_pm
        if method == POWER_BUTTON and pm is not None:
            pm.press_power_button()
            if not self._button_taken(min(self.button_wait, timeout)):
                log.info("stop: the guest did not take the power-button event; sending Ctrl-Alt-Del")
                self._ctrl_alt_del()
        else:
            self._ctrl_alt_del()
        if not _has_ended(self.vm, max(0.0, deadline - time.monotonic())):
            log.warning("stop: the guest did not shut down within %g s; stopping it", timeout)
            self.vm.end(EndReason.STOPPED, None, f"stopped: the guest did not shut down within {timeout:g} s")

    def _button_taken(self, wait: float) -> bool:
        """True once the OS cleared PWRBTN_STS (it handled the press) or the VM ended."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _has_ended(self.vm, 0.05) or not self._pm1(0) & STS_PWRBTN:
                return True
        return False

    def _ctrl_alt_del(self) -> None:
        i8042 = self.vm.devices.i8042
        if i8042 is None or not i8042.send_ctrl_alt_del():
            log.info("stop: the guest's keyboard did not take Ctrl-Alt-Del (not enabled yet?)")


def _has_ended(vm: "Vm", timeout: float = 0.0) -> bool:
    """Whether the VM has ended, waiting up to ``timeout``; unlike
    ``Vm.wait`` it does not tear anything down."""
    return vm.wait_ended(timeout)


def _segment(seg: Any) -> dict[str, int]:
    return {"selector": seg.selector, "base": seg.base, "limit": seg.limit, "type": seg.type,
            "present": seg.present, "dpl": seg.dpl, "db": seg.db, "l": seg.l}


def _vcpu_stats(vcpu: "Vcpu") -> dict[str, Any]:
    # a dict copy is atomic under the GIL; counts are kept by exit type
    exits = {kind.__name__: count for kind, count in dict(vcpu.exit_counts).items()}
    return {"id": vcpu.id, "state": vcpu.state.value, "exits": exits, "total_exits": sum(exits.values())}


def process_memory(status_path: str = "/proc/self/status") -> dict[str, int]:
    """This process's resident set (VmRSS) and its peak (VmHWM), in bytes."""
    wanted = {"VmRSS:": "rss_bytes", "VmHWM:": "peak_rss_bytes"}
    out: dict[str, int] = {}
    try:
        with open(status_path) as f:
            for line in f:
                words = line.split()                 # "VmRSS:\t   1234 kB"
                if len(words) >= 2 and words[0] in wanted:
                    out[wanted[words[0]]] = int(words[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out
