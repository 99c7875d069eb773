"""KVM-backed interrupt plumbing: the implementations of
:mod:`kvmlite.devices.interrupts` and :class:`kvmlite.devices.irq.IrqLine`.

Some facts about KVM's interrupt routing (Documentation/virt/kvm/api.rst):

* After KVM_CREATE_IRQCHIP, KVM has a default routing table: GSIs 0-15 go to
  the PIC (master pins 0-7, slave pins 0-7) and GSIs 0-23 to the IOAPIC pins
  of the same number.  KVM_SET_GSI_ROUTING *replaces the whole table*, so
  whoever adds an MSI route must repeat the default routes, or ISA devices
  (serial, PIT) go silent.  :class:`IrqRouter` owns the table for that reason.
  GSI 2 has no PIC route: on the PIC it is the cascade input, never a device.
* An irqfd binds an eventfd to a GSI: a write to the eventfd injects the
  interrupt the GSI's route describes, without the VMM calling an ioctl.
  The GSI may have no route yet; signalling it then does nothing.  Routes
  may change under an assigned irqfd (KVM re-reads them).
* An irqfd with a resample fd models a level-triggered line: KVM asserts on
  the eventfd write, de-asserts when the guest EOIs the interrupt and then
  signals the resample fd, so the VMM can re-assert if the source is still
  active.
* An ioeventfd matches a guest write by address, *length* (0 = any, MMIO
  needs KVM_CAP_IOEVENTFD_ANY_LENGTH) and optionally value; two
  registrations with the same address, length and datamatch fail with
  EEXIST.

Threads: routes change under :class:`IrqRouter`'s lock, which is always the
innermost lock (taken with a PCI function's lock held).  ``trigger`` may be
called from any thread.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Callable

from kvmlite.arch.x86 import layout
from kvmlite.devices.interrupts import MsiVector
from kvmlite.errors import KvmliteError
from kvmlite.kvm import uapi
from kvmlite.kvm.ioctl import KvmError
from kvmlite.kvm.structs import kvm_irq_routing_entry
from kvmlite.kvm.vm import irqchip_route, msi_route
from kvmlite.base import eventfd

if TYPE_CHECKING:
    from kvmlite.kvm.vm import VmFd

log = logging.getLogger(__name__)

#: KVM_MAX_IRQ_ROUTES (linux/kvm_host.h): the highest GSI count KVM accepts
MAX_GSI = 4096
#: Intel SDM vol. 3 §11.11.1: an MSI's address is 0xFEEx_xxxx
MSI_ADDRESS_BASE = 0xFEE0_0000
MSI_ADDRESS_MASK = 0xFFF0_0000


class GsiExhausted(KvmliteError):
    """Every GSI up to KVM_MAX_IRQ_ROUTES is in use."""


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


class KvmIrqLine:
    """An :class:`~kvmlite.devices.irq.IrqLine` driving ``gsi`` with
    KVM_IRQ_LINE (both the PIC and the IOAPIC input of that GSI)."""

    def __init__(self, vm: "VmFd", gsi: int) -> None:
        self.vm = vm
        self.gsi = gsi

    def set_level(self, level: bool) -> None:
        self.vm.irq_line(self.gsi, int(level))

    def trigger(self) -> None:
        """One edge: raise, then lower (what an edge-triggered input needs)."""
        self.vm.irq_line(self.gsi, 1)
        self.vm.irq_line(self.gsi, 0)


def default_routes() -> list[kvm_irq_routing_entry]:
    """The PC's wiring, as QEMU's kvm_pc_setup_irq_routing sets it up:
    PIC master/slave for GSIs 0-15 except the cascade (2); IOAPIC pin n for
    GSI n, except that the PIT's GSI 0 goes to IOAPIC pin 2 (the ISA
    interrupt source override the MADT and MP table announce) and GSI 2 has
    no IOAPIC route."""
    routes = []
    for gsi in range(16):
        if gsi != 2:
            chip = uapi.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else uapi.KVM_IRQCHIP_PIC_SLAVE
            routes.append(irqchip_route(gsi, chip, gsi % 8))
    routes.append(irqchip_route(0, uapi.KVM_IRQCHIP_IOAPIC, layout.IOAPIC_PIN_PIT))
    routes.extend(irqchip_route(pin, uapi.KVM_IRQCHIP_IOAPIC, pin)
                  for pin in range(1, layout.IOAPIC_PINS) if pin != layout.IOAPIC_PIN_PIT)
    return routes


def is_valid_msi_address(address: int) -> bool:
    """Whether ``address`` lies in the x86 interrupt message window."""
    return (address & MSI_ADDRESS_MASK) == MSI_ADDRESS_BASE


class IrqRouter:
    """Owns KVM's GSI routing table: the default irqchip routes, plus one
    MSI route per GSI from ``layout.GSI_MSI_FIRST`` up."""

    def __init__(self, vm: "VmFd", first_msi_gsi: int = layout.GSI_MSI_FIRST,
                 max_gsi: int = MAX_GSI) -> None:
        self.vm = vm
        self._lock = threading.Lock()
        self._msi: dict[int, tuple[int, int]] = {}
        self._free: list[int] = []
        self._next = first_msi_gsi
        self._max = max_gsi

    def install_defaults(self) -> None:
        """Write the table once with no MSI routes (optional: KVM starts with
        an equivalent one after KVM_CREATE_IRQCHIP)."""
        with self._lock:
            self._commit()

    def allocate_gsi(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
            if self._next >= self._max:
                raise GsiExhausted(f"no free GSI for an MSI vector (all {self._max} in use)")
            self._next += 1
            return self._next - 1

    def free_gsi(self, gsi: int) -> None:
        with self._lock:
            if self._msi.pop(gsi, None) is not None:
                self._commit()
            self._free.append(gsi)

    def set_msi_route(self, gsi: int, address: int, data: int) -> bool:
        """Route ``gsi`` to the message (address, data); False when KVM
        refused it (the previous table stays in force)."""
        with self._lock:
            old = self._msi.get(gsi)
            if old == (address, data):
                return True
            self._msi[gsi] = (address, data)
            try:
                self._commit()
            except KvmError as exc:
                self._restore(gsi, old)
                log.warning("MSI route for GSI %d (address %#x data %#x) refused: %s",
                            gsi, address, data, exc)
                return False
            return True

    def remove_route(self, gsi: int) -> None:
        with self._lock:
            if self._msi.pop(gsi, None) is not None:
                self._commit()

    def msi_routes(self) -> dict[int, tuple[int, int]]:
        """GSI -> (address, data) of the MSI routes in force."""
        with self._lock:
            return dict(self._msi)

    def _restore(self, gsi: int, old: tuple[int, int] | None) -> None:
        if old is None:
            del self._msi[gsi]
        else:
            self._msi[gsi] = old
        self._commit()

    def _commit(self) -> None:
        entries = default_routes()
        entries.extend(msi_route(gsi, addr, data) for gsi, (addr, data) in sorted(self._msi.items()))
        self.vm.set_gsi_routing(entries)


class KvmMsiVector:
    """An MSI vector delivered by KVM: an eventfd bound by irqfd to its own
    GSI, whose route carries the message.  ``trigger`` is one eventfd write.

    The route is installed lazily, when the vector is unmasked: Linux masks
    an MSI-X entry while it rewrites address and data (drivers/pci/msi), so
    this sets the route once per reprogramming instead of three times.

    Shared (after :meth:`irqfd`): the eventfd is also written by the kernel
    (vhost's call eventfd), which cannot see the mask bit, so masking moves
    into KVM: a masked vector's irqfd is deassigned and writes stay in the
    eventfd's counter, which is then the pending bit; unmasking drains the
    counter, assigns the irqfd again and sends the message once if the
    counter or a ``trigger`` had left it pending (PCI 3.0 §6.8.3.5).  Linux
    masks an entry only while it reprograms it (a CPU affinity change), so
    the two KVM_IRQFD calls per mask cycle are rare.
    """

    def __init__(self, vm: "VmFd", router: IrqRouter) -> None:
        self.vm = vm
        self.router = router
        self.gsi = router.allocate_gsi()
        self.fd = _eventfd()
        self._lock = threading.Lock()
        self._address = 0
        self._data = 0
        self._masked = True
        self._pending = False
        self._routed: tuple[int, int] | None = None
        self._warned = False
        self._shared = False        # irqfd() was called: someone else writes the eventfd too
        try:
            vm.register_irqfd(self.fd, self.gsi)
        except KvmError:
            os.close(self.fd)
            router.free_gsi(self.gsi)
            raise
        self._assigned = True       # the irqfd is bound to the GSI

    @property
    def pending(self) -> bool:
        if self._pending:
            return True
        return self._shared and not self._assigned and eventfd.is_signalled(self.fd)

    def irqfd(self) -> int:
        """The vector's eventfd, for the kernel to write (see the class
        doc); from now on a mask deassigns the irqfd."""
        with self._lock:
            if not self._shared:
                self._shared = True
                if self._masked:
                    self._unassign()
            return self.fd

    def configure(self, address: int, data: int) -> None:
        with self._lock:
            self._address, self._data = address, data & 0xFFFF_FFFF
            if not self._masked:
                self._route()

    def set_masked(self, masked: bool) -> None:
        with self._lock:
            if masked:
                if self._shared and not self._masked:
                    self._unassign()
                self._masked = True
                return
            self._route()
            self._masked = False
            if self._shared and not self._assigned:
                self._reassign()
            if self._pending:
                self._pending = False
                self._fire()

    def trigger(self) -> None:
        with self._lock:
            if self._masked:
                self._pending = True
            else:
                self._fire()

    def close(self) -> None:
        """Deassign the irqfd, drop the route and free the GSI."""
        if self.fd < 0:
            return
        if self._assigned:
            try:
                self.vm.register_irqfd(self.fd, self.gsi, deassign=True)
            except KvmError as exc:
                log.debug("irqfd deassign for GSI %d: %s", self.gsi, exc)
        os.close(self.fd)
        self.fd = -1
        self.router.free_gsi(self.gsi)

    def _unassign(self) -> None:
        """Masked while shared: unbind the irqfd, so writes wait in the counter."""
        try:
            self.vm.register_irqfd(self.fd, self.gsi, deassign=True)
        except KvmError as exc:
            self._warn(f"irqfd deassign at mask failed ({exc}); the mask does not hold")
            return
        self._assigned = False

    def _reassign(self) -> None:
        """Unmasked while shared: what was written meanwhile becomes pending
        (drained first, so KVM's poll at assignment does not deliver it a
        second time), then the irqfd is bound again."""
        if eventfd.drain(self.fd):
            self._pending = True
        try:
            self.vm.register_irqfd(self.fd, self.gsi)
        except KvmError as exc:
            self._warn(f"irqfd reassign at unmask failed ({exc}); interrupts are lost")
            return
        self._assigned = True

    def _route(self) -> None:
        message = (self._address, self._data)
        if message == self._routed:
            return
        self._routed = None
        if not is_valid_msi_address(self._address):
            self._warn(f"address {self._address:#x} is outside the MSI window")
            self.router.remove_route(self.gsi)
        elif self.router.set_msi_route(self.gsi, *message):
            self._routed = message

    def _fire(self) -> None:
        if self._routed is None:
            self._warn("message has no valid route; interrupt dropped")
            return
        eventfd.signal(self.fd)

    def _warn(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("MSI vector on GSI %d: %s", self.gsi, what)


class KvmMsiAllocator:
    """Allocates :class:`KvmMsiVector` objects on ``router``'s GSIs."""

    def __init__(self, vm: "VmFd", router: IrqRouter) -> None:
        self.vm = vm
        self.router = router

    def allocate(self, count: int) -> list[MsiVector]:
        vectors: list[MsiVector] = []
        try:
            for _ in range(count):
                vectors.append(KvmMsiVector(self.vm, self.router))
        except (KvmError, GsiExhausted):
            self.release(vectors)
            raise
        return vectors

    def release(self, vectors: list[MsiVector]) -> None:
        for vector in vectors:
            if isinstance(vector, KvmMsiVector):
                vector.close()


class KvmIoEventRegistrar:
    """An :class:`~kvmlite.devices.interrupts.IoEventRegistrar` over
    KVM_IOEVENTFD."""

    def __init__(self, vm: "VmFd") -> None:
        self.vm = vm

    def register(self, fd: int, addr: int, length: int, pio: bool,
                 datamatch: int | None) -> None:
        """Raises ``OSError`` (EEXIST for a duplicate) as the protocol says."""
        try:
            self.vm.register_ioeventfd(fd, addr, length, pio=pio, datamatch=datamatch)
        except KvmError as exc:
            raise OSError(exc.errno, str(exc)) from exc

    def unregister(self, fd: int, addr: int, length: int, pio: bool,
                   datamatch: int | None) -> None:
        try:
            self.vm.register_ioeventfd(fd, addr, length, pio=pio, datamatch=datamatch,
                                       deassign=True)
        except KvmError as exc:
            raise OSError(exc.errno, str(exc)) from exc


AddReader = Callable[[int, Callable[[], None]], None]


class KvmResampleIrqLine:
    """A level-triggered line (PCI INTx) through an irqfd with a resample fd.

    ``set_level(True)`` asserts through the irqfd.  KVM de-asserts at the
    guest's EOI and signals the resample fd; :meth:`on_resample` (run on the
    I/O thread, registered with ``add_reader``) re-asserts while the source
    is still high.  ``set_level(False)`` only records the level: the line
    drops at the next EOI, so a guest that polls the device with the
    interrupt masked may see one unhandled interrupt after unmasking.
    """

    def __init__(self, vm: "VmFd", gsi: int, add_reader: AddReader) -> None:
        self.vm = vm
        self.gsi = gsi
        self.fd = _eventfd()
        self.resample_fd = _eventfd()
        self._level = False
        self._lock = threading.Lock()
        vm.register_irqfd(self.fd, gsi, resamplefd=self.resample_fd)
        add_reader(self.resample_fd, self.on_resample)

    def set_level(self, level: bool) -> None:
        with self._lock:
            raise_now = level and not self._level
            self._level = level
        if raise_now:
            eventfd.signal(self.fd)

    def trigger(self) -> None:
        eventfd.signal(self.fd)

    def on_resample(self) -> None:
        eventfd.drain(self.resample_fd)
        with self._lock:
            still_high = self._level
        if still_high:
            eventfd.signal(self.fd)

    def close(self) -> None:
        try:
            self.vm.register_irqfd(self.fd, self.gsi, resamplefd=self.resample_fd, deassign=True)
        except KvmError as exc:
            log.debug("irqfd deassign for GSI %d: %s", self.gsi, exc)
        os.close(self.fd)
        os.close(self.resample_fd)
