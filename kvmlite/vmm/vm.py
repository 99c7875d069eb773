"""A running virtual machine, built from a :class:`~kvmlite.vmm.config.VmConfig`.

Start-up, in order (kvmtool's init lists, flattened):

1. open /dev/kvm, check the capabilities kvmlite needs;
2. KVM_CREATE_VM; TSS and identity-map pages; in-kernel irqchip (PIC,
   IOAPIC, LAPICs) and PIT;
3. guest RAM, registered once per region;
4. buses, the I/O thread and the devices (:mod:`kvmlite.vmm.devices`);
5. ACPI tables and the MP table; the kernel, initrd and command line;
6. vCPUs: CPUID, MSRs, LAPIC LINT pins; the boot vCPU gets the entry
   registers, the others wait for INIT/SIPI in the in-kernel LAPIC;
7. the I/O thread and one thread per vCPU start.

Threads: the caller's thread (``wait``), the control server's thread and
its workers (:mod:`kvmlite.control.server`), one thread per
vCPU (:mod:`kvmlite.vmm.vcpu`), the I/O thread (:mod:`kvmlite.base.eventloop`),
and any device workers.  ``_end`` may be called from any of them; the first
call decides the VM's exit status.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from kvmlite.arch.x86 import layout, regs as x86regs
from kvmlite.arch.x86.boot import BootLayout, setup_boot
from kvmlite.arch.x86.cpuid import vcpu_cpuid
from kvmlite.devices.bus import Bus
from kvmlite.errors import ConfigError, KvmliteError
from kvmlite.kvm import Kvm, KvmError, VmFd, uapi
from kvmlite.kvm.structs import kvm_cpuid_entry2, kvm_lapic_state
from kvmlite.kvm.vcpu import VcpuFd
from kvmlite.loader.kernel import read_file, read_kernel
from kvmlite.vmm import diagnose
from kvmlite.vmm.config import VmConfig
from kvmlite.base.eventloop import EventLoop
from kvmlite.vmm.exitcodes import DEFAULT_CODES, EndReason
from kvmlite.base.memory import GuestMemory
from kvmlite.vmm.control import VmControl
from kvmlite.vmm.limits import raise_nofile_limit
from kvmlite.vmm.vcpu import Request, Vcpu, install_kick_handler

if TYPE_CHECKING:
    from kvmlite.vmm.snapshot.restore import LoadedSnapshot

log = logging.getLogger(__name__)

REQUIRED_CAPS = {
    uapi.KVM_CAP_USER_MEMORY: "KVM_CAP_USER_MEMORY", uapi.KVM_CAP_IRQCHIP: "KVM_CAP_IRQCHIP",
    uapi.KVM_CAP_PIT2: "KVM_CAP_PIT2", uapi.KVM_CAP_IOEVENTFD: "KVM_CAP_IOEVENTFD",
    uapi.KVM_CAP_IRQFD: "KVM_CAP_IRQFD", uapi.KVM_CAP_IRQ_ROUTING: "KVM_CAP_IRQ_ROUTING",
    uapi.KVM_CAP_IMMEDIATE_EXIT: "KVM_CAP_IMMEDIATE_EXIT", uapi.KVM_CAP_EXT_CPUID: "KVM_CAP_EXT_CPUID",
}
MAX_INITRD_SIZE = 2 << 30


@dataclass(frozen=True)
class VmResult:
    """How the VM ended."""

    reason: EndReason
    exit_code: int
    message: str


class Vm:
    """One VM.  Build with ``Vm(config)``, then ``start()`` and ``wait()``."""

    def __init__(self, config: VmConfig, *, console_output: Callable[[bytes], object] | None = None,
                 kvm_path: str = "/dev/kvm", restore: "LoadedSnapshot | None" = None) -> None:
        """Build the whole VM (nothing runs until :meth:`start`).

        ``console_output`` receives the guest console's bytes (COM1, or
        hvc0 with ``console="virtio"``); None discards them.  With
        ``restore`` (see :meth:`restore`) the VM is built from a snapshot
        instead of booting.  Raises :class:`~kvmlite.errors.KvmliteError`
        with a one-line message, after releasing whatever was already set up."""
        self.config = config
        self._restore = restore
        self.name = config.name
        self.started_at: float | None = None
        self._end_lock = threading.Lock()
        self._ended = threading.Event()
        self._result: VmResult | None = None
        self.vcpus: list[Vcpu] = []
        self.kvm = Kvm(kvm_path)
        try:
            self._build(console_output)
        except BaseException:
            self._release()
            raise

    def _build(self, console_output: Callable[[bytes], object] | None) -> None:
        from kvmlite.vmm.devices import DeviceManager

        config = self.config
        raise_nofile_limit()            # shares and streams hold many descriptors (kvmlite/vmm/limits.py)
        self._check_kvm()
        self.vm_fd: VmFd = self.kvm.create_vm()
        self._setup_irqchip()
        memory_file = self._restore.memory_fd if self._restore is not None else None
        self.memory = GuestMemory(config.mem_bytes, hugepages=config.hugepages, file=memory_file)
        for slot, region in enumerate(self.memory.regions):
            self.vm_fd.set_user_memory_region(slot, region.guest_addr, region.size, region.host_addr)
        self.io_bus = Bus("pio")
        self.mmio_bus = Bus("mmio")
        self.event_loop = EventLoop("io")
        self.devices = DeviceManager(self, console_output)
        self.devices.create()
        if self._restore is None:
            rsdp = self.devices.write_firmware_tables(self.memory)
            self.boot: BootLayout | None = self._load_kernel(rsdp)
        else:
            self.boot = None            # RAM already holds the kernel, the tables and the guest
        supported = self.kvm.supported_cpuid()
        tsc_deadline = bool(self.kvm.check_extension(uapi.KVM_CAP_TSC_DEADLINE_TIMER))
        self.vcpus = [self._create_vcpu(i, supported, tsc_deadline) for i in range(config.cpus)]
        self.control = VmControl(self)
        if self._restore is not None:
            from kvmlite.vmm.snapshot.restore import apply

            apply(self, self._restore)

    @classmethod
    def restore(cls, directory: str, *, name: str | None = None, disks: "list[str] | None" = None,
                vsock_socket: str | None = None, timeout: float | None = None,
                labels: "list[tuple[str, str]] | None" = None,
                console_output: Callable[[bytes], object] | None = None, kvm_path: str = "/dev/kvm") -> "Vm":
        """A VM built from the snapshot in ``directory`` (docs/snapshot.md),
        ready to :meth:`start`: it goes on from where the snapshot was
        taken.  ``name``, ``disks`` (``PATH[,ro]`` for each of the
        snapshot's disks), ``vsock_socket``, ``timeout`` and ``labels`` are
        this VM's own; everything else is the snapshot's."""
        from kvmlite.vmm.snapshot.restore import load, restore_config

        snapshot = load(directory)
        try:
            config = restore_config(snapshot, name=name, disks=disks, vsock_socket=vsock_socket, timeout=timeout,
                                    labels=labels)
            return cls(config, console_output=console_output, kvm_path=kvm_path, restore=snapshot)
        finally:
            snapshot.close()            # the mapping keeps the file's pages

    def fork(self, count: int = 1, *, directory: str | None = None, names: "list[str] | None" = None,
             disks: "list[list[str]] | None" = None,
             console_output: "Callable[[bytes], object] | list[Callable[[bytes], object]] | None" = None,
             ) -> "list[Vm]":
        """``count`` new VMs, each going on from this one's state now (a
        snapshot into ``directory``, or a new temporary directory, then one
        restore per clone); this VM runs on.  The clones are built but not
        started.  A VM with a writable disk needs ``disks``: one list of
        ``PATH[,ro]`` per clone (two VMs writing one image would corrupt it).
        ``console_output`` is one sink for every clone, or a list of one each."""
        import tempfile

        if count < 1:
            raise ConfigError(f"fork: count {count} must be at least 1")
        writable = any(not disk.read_only for disk in self.config.disks)
        if writable and (disks is None or len(disks) != count):
            raise ConfigError("fork: this VM has a writable disk; give each clone its own (disks=[[PATH], ...])")
        if names is not None and len(names) != count:
            raise ConfigError(f"fork: {len(names)} names for {count} clones")
        sinks = console_output if isinstance(console_output, list) else [console_output] * count
        if len(sinks) != count:
            raise ConfigError(f"fork: {len(sinks)} console outputs for {count} clones")
        where = directory or tempfile.mkdtemp(prefix=f"kvmlite-fork-{self.name or 'vm'}-")
        self.snapshot(where)
        clones: list[Vm] = []
        try:
            for i in range(count):
                clones.append(Vm.restore(where, name=names[i] if names else None,
                                         disks=disks[i] if disks else None, console_output=sinks[i]))
        except BaseException:
            for clone in clones:
                clone.close()
            raise
        finally:
            if directory is None:       # the clones' mappings keep the memory file's pages
                import shutil

                shutil.rmtree(where, ignore_errors=True)
        return clones

    def snapshot(self, directory: str, *, stop: bool = False) -> dict:
        """Save this running VM to ``directory`` (new or empty); it goes on
        running afterwards, or ends with ``stop``.  Returns a summary."""
        return self.control.snapshot(directory, stop=stop)

    # --- construction ---

    def _check_kvm(self) -> None:
        for cap, name in REQUIRED_CAPS.items():
            if not self.kvm.check_extension(cap):
                raise KvmliteError(f"/dev/kvm lacks {name}, which kvmlite needs")
        limit = self.kvm.max_vcpus()
        if self.config.cpus > limit:
            raise ConfigError(f"-c {self.config.cpus}: this KVM allows at most {limit} vCPUs")

    def _setup_irqchip(self) -> None:
        fd = self.vm_fd
        fd.set_tss_addr(layout.KVM_TSS_ADDR)
        fd.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDR)
        fd.create_irqchip()
        fd.create_pit2(uapi.KVM_PIT_SPEAKER_DUMMY)

    def cmdline(self) -> str:
        """The kernel command line: defaults, device fragments, then -p."""
        parts: list[str] = []
        if self.config.default_cmdline:
            parts += ["console=hvc0" if self.config.console == "virtio" else "console=ttyS0",
                      "reboot=k", "panic=-1", "i8042.noaux", "tsc=reliable"]
            parts += self.devices.cmdline_fragments()
        if self.config.params:
            parts.append(self.config.params)
        return " ".join(parts)

    def _load_kernel(self, rsdp: int | None) -> BootLayout:
        kernel = read_kernel(self.config.kernel)
        warning = diagnose.pvm_linux_warning(kernel)
        if warning:
            log.warning(warning)
        initrd = None
        if self.config.initrd:
            initrd = read_file(self.config.initrd, "initrd", MAX_INITRD_SIZE)
        return setup_boot(self.memory, kernel, self.cmdline(), initrd, rsdp)

    def _create_vcpu(self, index: int, supported: list[kvm_cpuid_entry2], tsc_deadline: bool) -> Vcpu:
        fd = self.vm_fd.create_vcpu(index)
        fd.set_cpuid2(vcpu_cpuid(supported, index, self.config.cpus, tsc_deadline=tsc_deadline))
        self._set_boot_msrs(fd)
        lapic = fd.get_lapic()
        regs = x86regs.lapic_lint_setup(bytearray(bytes(lapic)))
        fd.set_lapic(kvm_lapic_state.from_buffer_copy(bytes(regs)))
        if index == 0 and self.boot is not None:
            entry = self.boot.entry
            fd.set_sregs(x86regs.boot_sregs(fd.get_sregs(), entry))
            fd.set_regs(x86regs.boot_regs(entry))
            fd.set_fpu(x86regs.boot_fpu())
        return Vcpu(fd, self.io_bus, self.mmio_bus, self._end,
                    explain_internal_error=lambda v, e: diagnose.explain_internal_error(v, self.memory, e))

    def _set_boot_msrs(self, fd: VcpuFd) -> None:
        for index, value in x86regs.boot_msrs():
            try:
                fd.set_msrs([(index, value)])
            except KvmError:
                log.debug("MSR %#x not accepted by this KVM; left at its reset value", index)

    # --- running ---

    def start(self) -> None:
        install_kick_handler()          # before any thread starts: fails off the main thread
        self.started_at = time.monotonic()
        if self._restore is not None:
            from kvmlite.vmm.snapshot.restore import saved_clock

            self.vm_fd.set_clock(saved_clock(self._restore))   # the guest's time goes on from the save
        self.devices.start()
        self.event_loop.start()
        for vcpu in self.vcpus:
            vcpu.start()
        if self.config.timeout is not None:
            self.control.set_timeout(self.config.timeout)

    def wait(self, timeout: float | None = None) -> VmResult | None:
        """Block until the VM ends (or ``timeout``); return how it ended."""
        if not self._ended.wait(timeout):
            return None
        self._shutdown_threads()
        return self._result

    def run(self) -> VmResult:
        self.start()
        result = self.wait()
        assert result is not None
        return result

    def _end(self, reason: EndReason, code: int | None, message: str) -> None:
        """Record how the VM ended (first call wins) and stop every vCPU."""
        with self._end_lock:
            if self._result is None:
                exit_code = code if code is not None else DEFAULT_CODES.get(reason, 1)
                self._result = VmResult(reason, exit_code, message)
                log.info("VM ending: %s (exit code %d)", message, exit_code)
        for vcpu in self.vcpus:
            vcpu.request(Request.STOP)
        self._ended.set()

    def end(self, reason: EndReason, code: int | None, message: str) -> None:
        """Devices and controllers end the VM through this (any thread)."""
        self._end(reason, code, message)

    def _shutdown_threads(self) -> None:
        for vcpu in self.vcpus:
            vcpu.request(Request.STOP)
        for vcpu in self.vcpus:
            vcpu.join(timeout=5)
        self.devices.stop()
        self.event_loop.stop()

    # --- control (kvmlite/vmm/control.py does the work) ---

    def pause(self, timeout: float = 5.0) -> None:
        """Take every vCPU out of KVM_RUN and park it; the guest clock stops."""
        self.control.pause(timeout)

    def resume(self) -> None:
        """Run the vCPUs again, with the guest clock where it stopped."""
        self.control.resume()

    def stats(self) -> dict:
        return self.control.stats()

    def registers(self) -> list[dict]:
        return self.control.registers()

    def inject_nmi(self, vcpu: int | None = None) -> list[int]:
        return self.control.inject_nmi(vcpu)

    def sysrq(self, key: str) -> None:
        self.control.sysrq(key)

    def set_timeout(self, seconds: float) -> float:
        """Stop the VM ``seconds`` from now (E2B's ``set_timeout``); returns ``seconds``."""
        return self.control.set_timeout(seconds)

    def shutdown(self, timeout: float = 30.0, force: bool = False) -> str:
        """Graceful stop (ACPI power button or Ctrl-Alt-Del), hard after ``timeout``."""
        return self.control.shutdown(timeout, force=force)

    def wait_ended(self, timeout: float = 0.0) -> bool:
        """True once the VM has ended (no teardown, unlike :meth:`wait`)."""
        return self._ended.wait(timeout)

    def stop(self) -> None:
        """Hard stop: end the VM now."""
        self._end(EndReason.STOPPED, None, "stopped")

    def close(self) -> None:
        if not self._ended.is_set():
            self.stop()
            self._shutdown_threads()
        self._release()

    def _release(self) -> None:
        """Close everything that exists, in reverse order of creation."""
        for vcpu in self.vcpus:
            vcpu.fd.close()
        for name in ("devices", "event_loop", "vm_fd", "memory"):
            part = getattr(self, name, None)
            if part is not None:
                part.close()
        self.kvm.close()
