"""Which devices a VM has, where they sit, and how they are wired.

The device models know nothing of KVM; this module gives each its bus
range, interrupt line and backend (Firecracker's device manager, kept
small: one method per device family).  Every address, port and IRQ comes
from :mod:`kvmlite.arch.x86.layout`.

Legacy devices, in port order::

    0x060, 0x064   i8042 keyboard controller (IRQ 1), reset line -> VM reset
    0x070-0x071    CMOS RTC
    0x080          POST port (ignored)
    0x2E8..0x3F8   COM4..COM1 16550 UARTs (IRQ 3/4); COM1 is the console
    0x501          kvmlite exit port: the guest's exit status
    0x600-0x611    ACPI PM1a event/control, PM timer, reset register, GPE0 (SCI 9)
    0xCF8, 0xCFC   PCI configuration mechanism #1

Virtio devices (disks in ``-d`` order, then the console with ``--console
virtio``, then rng, the NICs, the shared directories in ``--9p``
order, and vsock) go on PCI bus 0 from slot 1 (``--virtio-transport
pci``, BAR 0 in the 32-bit window, MSI-X through irqfds) or on virtio-mmio
windows from ``VIRTIO_MMIO_START`` with GSIs from ``IRQ_VIRTIO_MMIO_FIRST``,
announced on the kernel command line (``virtio_mmio.device=``).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable

from kvmlite.arch.x86 import layout
from kvmlite.arch.x86.acpi import AcpiConfig, VirtioMmioDevice, build_acpi_tables
from kvmlite.arch.x86.acpi.pm import GPE_VMGENID
from kvmlite.arch.x86.mptable import MpTableConfig, build_mptable
from kvmlite.errors import ConfigError
from kvmlite.base.eventloop import EventLoop
from kvmlite.vmm.exitcodes import EndReason
from kvmlite.vmm.interrupts import IrqRouter, KvmIoEventRegistrar, KvmIrqLine, KvmMsiAllocator

if TYPE_CHECKING:
    from pathlib import Path

    from kvmlite.base.memory import GuestMemory
    from kvmlite.vmm.config import NetConfig
    from kvmlite.vmm.vm import Vm

log = logging.getLogger(__name__)
VMGENID_BYTES = 16            # the VM generation ID: a 128-bit GUID

Sink = Callable[[bytes], None]


class DeviceManager:
    """Creates, registers and tears down a VM's devices."""

    def __init__(self, vm: "Vm", console_output: Sink | None = None) -> None:
        self.vm = vm
        self.console_output = console_output
        self._cmdline: list[str] = []
        self.serial: list = []
        self.i8042 = None
        self.rtc = None
        self.port92 = None
        self.acpi_pm = None
        self.console_input: Callable[[bytes], None] = lambda data: None
        self.console_break: Callable[[], None] | None = None
        self.pci = None
        self.virtio: list = []          # (name, device, transport)
        self.device_loops: list[EventLoop] = []  # one per disk and per NIC: its own I/O thread
        self.net_backends: list = []             # taps and passt processes, closed with the VM
        self._transports: dict[str, str | None] = {}   # a device's own transport (-n trans=)
        self._guest_net = ""
        self._guest_shares = ""
        self.vsock_path: str | None = None      # the vsock device's Unix socket (docs/vsock.md)
        self._vsock_dir: "Path | None" = None    # the VM's runtime directory, when the socket is there
        self._pci_slots: list[int] = []
        self._mmio_devices: list[tuple[int, int]] = []     # (base, gsi)

    # --- creation -----------------------------------------------------------

    def create(self) -> None:
        """Create and register every device (before any vCPU runs)."""
        self._create_legacy()
        self._create_pci()
        self._create_virtio()

    def _create_pci(self) -> None:
        from kvmlite.devices.pci.root import PciRoot

        vm = self.vm
        self._router = IrqRouter(vm.vm_fd)
        self._router.install_defaults()   # PIT on IOAPIC pin 2, as the MADT says
        self._msi = KvmMsiAllocator(vm.vm_fd, self._router)
        self._ioevents = KvmIoEventRegistrar(vm.vm_fd)
        self.pci = PciRoot(vm.mmio_bus, vm.io_bus, [self._irq(g) for g in layout.IRQ_PCI_INTX])

    def _virtio_devices(self) -> list[tuple[str, object, EventLoop]]:
        """(name, device, the loop serving its queue notifications) each."""
        config = self.vm.config
        devices: list[tuple[str, object, EventLoop]] = []
        if not (config.disks or config.console == "virtio" or config.rng or config.nics or config.shares
                or config.vsock):
            return devices
        try:
            self._add_virtio_devices(devices)
        except BaseException:
            for _name, device, _loop in devices:    # not yet on a transport: close() would not reach them
                if hasattr(device, "close"):
                    device.close()
            raise
        return devices

    def _add_virtio_devices(self, devices: list[tuple[str, object, EventLoop]]) -> None:
        """Append every configured virtio device to ``devices`` as it is made,
        so a failure part-way closes those already made."""
        from kvmlite.devices.virtio.block import VirtioBlock
        from kvmlite.devices.virtio.console import VirtioConsole
        from kvmlite.devices.virtio.disk import RawDisk
        from kvmlite.devices.virtio.rng import VirtioRng

        config = self.vm.config
        for i, disk in enumerate(config.disks):
            image = RawDisk.open(disk.path, read_only=disk.read_only)
            # Each disk gets its own event loop: it serves the disk's notifications and io_uring
            # completions, and runs its small reads and writes itself, so a disk that stalls
            # stalls nothing but itself.
            loop = EventLoop(f"virtio-blk{i}")
            self.device_loops.append(loop)
            devices.append((f"virtio-blk{i}", VirtioBlock(image, loop=loop), loop))
        if config.console == "virtio":
            console = VirtioConsole(self.console_output or (lambda data: None))
            self.console_input, self.console_break = console.enqueue_input, None
            devices.append(("virtio-console", console, self.vm.event_loop))
        if config.rng:
            devices.append(("virtio-rng", VirtioRng(), self.vm.event_loop))
        devices += self._net_devices()
        devices += self._share_devices()
        devices += self._vsock_devices()

    def _vsock_devices(self) -> list[tuple[str, object, EventLoop]]:
        """``--vsock``: one virtio-vsock with an event loop of its own (the
        listener, every stream and the queues are served there) and its
        Unix socket: the configured one, or ``vsock.sock`` in the VM's
        runtime directory (``$XDG_RUNTIME_DIR/kvmlite/NAME.d``), removed
        with the VM (``close``)."""
        vsock = self.vm.config.vsock
        if vsock is None:
            return []
        from kvmlite.devices.virtio.vsock import VirtioVsock

        path = vsock.socket or self._default_vsock_path()
        loop = EventLoop("virtio-vsock")
        self.device_loops.append(loop)
        device = VirtioVsock(vsock.cid, path, loop)      # VsockError: one line
        self._transports["virtio-vsock"] = vsock.trans
        self.vsock_path = path
        return [("virtio-vsock", device, loop)]

    def _default_vsock_path(self) -> str:
        from kvmlite.control.registry import Registry
        from kvmlite.vmm.config import VSOCK_SOCKET_MAX

        self._vsock_dir = Registry().ensure_vm_dir(self._vm_name())
        path = str(self._vsock_dir / "vsock.sock")
        if len(path.encode()) > VSOCK_SOCKET_MAX:
            raise ConfigError(f"--vsock: the socket path {path} is too long for a Unix socket with a _PORT "
                              f"suffix; point XDG_RUNTIME_DIR at a shorter directory or give --vsock CID,socket=PATH")
        return path

    def _share_devices(self) -> list[tuple[str, object, EventLoop]]:
        """One virtio-9p per ``--9p``, each with its file server and an event
        loop of its own (its requests run on the device's workers, so a
        slow directory stalls nothing else).  The device closes its server
        (``close``).  The tags reach the default guest's init as
        ``kvmlite.9p=``, which mounts each at ``/mnt/TAG``."""
        shares = self.vm.config.shares
        if not shares:
            return []
        from kvmlite.devices.virtio.ninep import Virtio9p
        from kvmlite.devices.virtio.p9 import P9Server
        from kvmlite.devices.virtio.p9.fs import View
        from kvmlite.guest.cmdline import shares_option

        devices: list[tuple[str, object, EventLoop]] = []
        try:
            for index, share in enumerate(shares):
                name = f"virtio-9p{index}"
                server = P9Server(share.path, readonly=share.read_only,    # ShareError: one line
                                  view=View.of(share.view_top, share.view_hidden))
                loop = EventLoop(name)
                self.device_loops.append(loop)
                devices.append((name, Virtio9p(server, share.tag, loop, name=name), loop))
        except BaseException:
            for _name, device, _loop in devices:    # not yet on a transport: close() would not reach them
                device.close()
            raise
        self._guest_shares = shares_option([(share.tag, share.read_only) for share in shares])
        return devices

    def _net_devices(self) -> list[tuple[str, object, EventLoop]]:
        """One virtio-net per ``-n``, each with its backend and an event loop
        of its own (receive and transmit never run on a vCPU thread).  The
        first NIC's settings reach the default guest's init as
        ``kvmlite.net=``."""
        from kvmlite.devices.virtio.net import VirtioNet
        from kvmlite.net.errors import NetError
        from kvmlite.net.mac import mac_from_name, parse_mac

        devices: list[tuple[str, object, EventLoop]] = []
        for index, nic in enumerate(self.vm.config.nics):
            vhost = self._vhost(index, nic)     # before the tap: none is made for a NIC that cannot be
            backend = self._net_backend(index, nic)
            if backend is None:
                continue
            self.net_backends.append(backend)
            mac = parse_mac(nic.guest_mac) if nic.guest_mac else mac_from_name(f"{self._vm_name()}/{index}")
            loop = EventLoop(f"virtio-net{index}")
            self.device_loops.append(loop)
            name = f"virtio-net{index}"
            try:
                device = VirtioNet(backend, mac, loop, vhost=vhost)
            except ValueError as exc:
                raise NetError(f"-n {nic.mode} NIC {index}: {exc}") from None
            devices.append((name, device, loop))
            self._transports[name] = nic.trans
            if not self._guest_net:
                self._guest_net = self._guest_net_option(nic)
        return devices

    def _vm_name(self) -> str:
        from kvmlite.control.registry import generated_name

        return self.vm.config.name or generated_name()

    def _net_backend(self, index: int, nic: "NetConfig") -> object | None:
        """The NIC's host side; None (with one warning line) when the NIC
        nobody asked for (no -n) cannot have one."""
        from kvmlite.net.errors import NetError

        try:
            if nic.mode == "user":
                from kvmlite.net.passt import PasstBackend

                return PasstBackend(hostfwd=nic.hostfwd)
            from kvmlite.net.tap import TapBackend

            if nic.tapif:
                return TapBackend(tapif=nic.tapif)
            return TapBackend(host_ip=nic.host_ip, script=nic.script)
        except NetError as exc:
            if nic.implicit:
                log.warning("no network: %s (-n mode=none silences this)", exc)
                return None
            raise NetError(f"-n {nic.mode} NIC {index}: {exc}") from None

    def _vhost(self, index: int, nic: "NetConfig") -> object | None:
        """``-n vhost=1``: an open /dev/vhost-net, closed with the VM after
        the device (``net_backends``); the one-line error where it is
        missing.  The device sets it up at DRIVER_OK (devices/virtio/net_vhost.py)."""
        if not nic.vhost:
            return None
        from kvmlite.net.errors import NetError
        from kvmlite.net.vhost import VhostNet

        try:
            vhost = VhostNet()
        except NetError as exc:
            raise NetError(f"-n {nic.mode} NIC {index}: {exc}") from None
        self.net_backends.append(vhost)
        return vhost

    @staticmethod
    def _guest_net_option(nic: "NetConfig") -> str:
        from kvmlite.guest.cmdline import net_option

        if nic.mode == "user":
            return net_option("dhcp")
        return net_option(f"{nic.guest_ip}/24,{nic.host_ip}")

    def _create_virtio(self) -> None:
        devices = self._virtio_devices()
        if not devices:
            return          # and the virtio modules are never imported: faster start-up
        try:
            self._place_virtio(devices)
        except BaseException:
            for _name, device, _loop in devices[len(self.virtio):]:   # not on a transport: close() misses them
                if hasattr(device, "close"):
                    device.close()
            raise

    def _place_virtio(self, devices: list[tuple[str, object, EventLoop]]) -> None:
        """Put each device on its transport (PCI or MMIO), in order."""
        from kvmlite.devices.virtio.transport.mmio import VirtioMmioTransport, cmdline_device
        from kvmlite.devices.virtio.transport.pci import VirtioPciTransport

        vm = self.vm
        mmio_index = 0
        for name, device, loop in devices:
            if (self._transports.get(name) or vm.config.virtio_transport) == "pci":
                transport = VirtioPciTransport(device, vm.memory, self._msi, ioevents=self._ioevents,
                                               loop=loop, name=name)
                self._pci_slots.append(self.pci.add(transport))
            else:
                index, mmio_index = mmio_index, mmio_index + 1
                if index >= layout.VIRTIO_MMIO_MAX or layout.IRQ_VIRTIO_MMIO_FIRST + index >= layout.IOAPIC_PINS:
                    raise ConfigError(f"too many virtio-mmio devices (at most "
                                      f"{layout.IOAPIC_PINS - layout.IRQ_VIRTIO_MMIO_FIRST})")
                base = layout.VIRTIO_MMIO_START + index * layout.VIRTIO_MMIO_SIZE
                gsi = layout.IRQ_VIRTIO_MMIO_FIRST + index
                transport = VirtioMmioTransport(device, vm.memory, self._irq(gsi), ioevents=self._ioevents,
                                                loop=loop, name=name)
                transport.attach(vm.mmio_bus, base)
                self._mmio_devices.append((base, gsi))
                if self._acpi_off():
                    self._cmdline.append(cmdline_device(base, gsi))
            self.virtio.append((name, device, transport))

    def _irq(self, gsi: int) -> KvmIrqLine:
        return KvmIrqLine(self.vm.vm_fd, gsi)

    def _register(self, base: int, length: int, device: object, name: str) -> None:
        self.vm.io_bus.register(base, length, device, name)  # type: ignore[arg-type]

    def _create_legacy(self) -> None:
        from kvmlite.devices.legacy.acpi_pm import AcpiPm
        from kvmlite.devices.legacy.debug_exit import GuestExit
        from kvmlite.devices.legacy.i8042 import I8042
        from kvmlite.devices.legacy.ignored import IgnoredPort
        from kvmlite.devices.legacy.port92 import SystemControlPortA
        from kvmlite.devices.legacy.rtc import Rtc
        from kvmlite.devices.legacy.serial import Serial

        for index, (port, irq) in enumerate(zip(layout.PORT_COM, layout.IRQ_COM)):
            uart = Serial(self._irq(irq), self.console_output if index == 0 else None)
            self.serial.append(uart)
            self._register(port, 8, uart, f"com{index + 1}")
        self.console_input = self.serial[0].enqueue_input
        self.console_break = self.serial[0].send_break
        self.i8042 = I8042(self._irq(layout.IRQ_KEYBOARD), reset=self._guest_reset,
                           aux_irq=self._irq(layout.IRQ_MOUSE))
        self._register(layout.PORT_I8042_DATA, 1, self.i8042.data, "i8042")
        self._register(layout.PORT_I8042_STATUS, 1, self.i8042.command, "i8042-command")
        self.rtc = Rtc()
        self._register(layout.PORT_RTC, 2, self.rtc, "rtc")
        pm = self.acpi_pm = AcpiPm(self._irq(layout.IRQ_ACPI_SCI), poweroff=self._guest_poweroff,
                                   reset=self._guest_reset)
        self._register(layout.PORT_ACPI_PM1A_EVT, 4, pm.event, "acpi-pm1a-evt")
        self._register(layout.PORT_ACPI_PM1A_CNT, 2, pm.control, "acpi-pm1a-cnt")
        self._register(layout.PORT_ACPI_PM_TMR, 4, pm.timer, "acpi-pm-tmr")
        self._register(layout.PORT_ACPI_RESET, 1, pm.reset, "acpi-reset")
        self._register(layout.PORT_ACPI_GPE0, 2, pm.gpe0, "acpi-gpe0")
        self._register(layout.PORT_GUEST_EXIT, 1, GuestExit(self._guest_exit), "exit-port")
        self._register(layout.PORT_POST, 1, IgnoredPort("post"), "post")
        self._register(layout.PORT_IO_DELAY_ALT, 1, IgnoredPort("io-delay"), "io-delay")
        self.port92 = SystemControlPortA(self._guest_reset)
        self._register(layout.PORT_SYSTEM_CONTROL_A, 1, self.port92, "port92")

    def _guest_exit(self, code: int) -> None:
        self.vm.end(EndReason.GUEST_EXIT, code, f"guest exit status {code}")

    def _guest_reset(self) -> None:
        self.vm.end(EndReason.RESET, None, "guest requested a reset")

    def _guest_poweroff(self) -> None:
        self.vm.end(EndReason.POWEROFF, None, "guest powered off")

    # --- firmware tables ------------------------------------------------------

    def _acpi_off(self) -> bool:
        return "acpi=off" in self.vm.config.params.split()

    def write_firmware_tables(self, memory: "GuestMemory") -> int | None:
        """Write the ACPI tables and the MP table; return the RSDP address.

        virtio-mmio devices are announced in the DSDT (LNRO0005 devices):
        distribution kernels such as Debian's are built without
        CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES.  With ``acpi=off`` in the
        parameters they go on the command line instead (Firecracker's
        ``virtio_mmio.device=`` form), never both, or the guest would probe
        each device twice."""
        cpus = self.vm.config.cpus
        mmio = () if self._acpi_off() else tuple(VirtioMmioDevice(base, gsi=gsi) for base, gsi in self._mmio_devices)
        image = build_acpi_tables(AcpiConfig(num_cpus=cpus, serial_ports=(1, 2, 3, 4), virtio_mmio=mmio))
        for addr, blob in image.blobs:
            memory.write(addr, blob)
        memory.write(layout.VMGENID_ADDR, os.urandom(VMGENID_BYTES))
        try:
            addr, blob = build_mptable(MpTableConfig(num_cpus=cpus, pci_slots=tuple(self._pci_slots),
                                                     extra_gsis=tuple(gsi for _, gsi in self._mmio_devices)))
            memory.write(addr, blob)
            memory.write_u16(layout.BDA_EBDA_SEGMENT, layout.EBDA_START >> 4)
        except ConfigError as exc:
            log.info("no MP table (%s); the guest must use ACPI", exc)
        return image.rsdp_addr

    def new_generation(self) -> None:
        """A new VM generation ID (a restore made this VM from a snapshot
        that other VMs may also run from): 16 fresh random bytes at
        ``VMGENID_ADDR`` and the GPE whose handler notifies ``\\_SB.VGEN``, so
        a Linux guest's vmgenid driver reseeds its random number generator
        as soon as it runs (docs/snapshot.md)."""
        self.vm.memory.write(layout.VMGENID_ADDR, os.urandom(VMGENID_BYTES))
        self.acpi_pm.raise_gpe(GPE_VMGENID)

    def cmdline_fragments(self) -> list[str]:
        return list(self._cmdline) + [word for word in (self._guest_net, self._guest_shares) if word]

    # --- lifetime ---------------------------------------------------------------

    def start(self) -> None:
        for loop in self.device_loops:
            loop.start()

    def stop(self) -> None:
        """The vCPUs have stopped: stop the disks' loops (a reset reaps what
        is still in flight itself) and log what the devices did (debug level)."""
        for loop in self.device_loops:
            loop.stop()
        if log.isEnabledFor(logging.DEBUG):
            for name, stats in self.stats().items():
                log.debug("%s: %s", name, stats)

    def close(self) -> None:
        """Release device resources (after every vCPU and the I/O threads stopped)."""
        for name, device, transport in self.virtio:
            try:
                # The device first: it may still use what the transport lends it
                # (vhost polls the doorbell eventfds and writes the vectors' irqfds).
                if hasattr(device, "close"):
                    device.close()
                transport.close()
            except Exception:  # closing must go on for the other devices
                log.exception("closing %s failed", name)
        self.virtio.clear()
        for loop in self.device_loops:
            loop.close()
        self.device_loops.clear()
        self._remove_vsock_dir()
        for backend in self.net_backends:
            try:
                backend.close()           # a tap kvmlite made goes away; passt stops
            except Exception:
                log.exception("closing a network backend failed")
        self.net_backends.clear()

    def _remove_vsock_dir(self) -> None:
        """The VM's runtime directory goes once empty (the device removed its
        socket); a host program's ``vsock.sock_PORT`` listener keeps it."""
        if self._vsock_dir is not None:
            try:
                self._vsock_dir.rmdir()
            except OSError:
                pass
            self._vsock_dir = None

    def nics(self) -> list[dict[str, str]]:
        """Each NIC's name and MAC; after a restore under another MAC (a
        clone) also ``restored_mac``, the saved one the guest still uses."""
        from kvmlite.devices.virtio.net import VirtioNet
        from kvmlite.net.mac import format_mac

        out = []
        for name, device, _transport in self.virtio:
            if isinstance(device, VirtioNet):
                nic = {"name": name, "mac": format_mac(device.mac)}
                if device.restored_mac is not None:
                    nic["restored_mac"] = format_mac(device.restored_mac)
                out.append(nic)
        return out

    def stats(self) -> dict[str, dict[str, int]]:
        out = {f"com{i + 1}": s.stats() for i, s in enumerate(self.serial)}
        if self.i8042 is not None:
            out["i8042"] = self.i8042.stats()
        for name, device, _transport in self.virtio:
            out[name] = device.stats()
        return out
