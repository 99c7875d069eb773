"""A VM file descriptor: one method per VM ioctl."""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING, Iterable

from kvmlite.kvm import structs as s
from kvmlite.kvm import uapi
from kvmlite.kvm.ioctl import ioctl
from kvmlite.kvm.vcpu import VcpuFd

if TYPE_CHECKING:
    from kvmlite.kvm.system import Kvm


class VmFd:
    """A KVM virtual machine (the fd KVM_CREATE_VM returned)."""

    def __init__(self, fd: int, kvm: "Kvm") -> None:
        self.fd = fd
        self.kvm = kvm
        self._run_size = kvm.vcpu_mmap_size()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, uapi.KVM_CHECK_EXTENSION, cap)

    def create_vcpu(self, vcpu_id: int) -> VcpuFd:
        return VcpuFd(ioctl(self.fd, uapi.KVM_CREATE_VCPU, vcpu_id), vcpu_id, self._run_size)

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        region = s.kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=guest_phys_addr,
                                               memory_size=size, userspace_addr=userspace_addr)
        ioctl(self.fd, uapi.KVM_SET_USER_MEMORY_REGION, region)

    def set_tss_addr(self, addr: int) -> None:
        ioctl(self.fd, uapi.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        ioctl(self.fd, uapi.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr))

    def create_irqchip(self) -> None:
        ioctl(self.fd, uapi.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = 0) -> None:
        ioctl(self.fd, uapi.KVM_CREATE_PIT2, s.kvm_pit_config(flags=flags))

    def get_irqchip(self, chip_id: int) -> s.kvm_irqchip:
        chip = s.kvm_irqchip(chip_id=chip_id)
        ioctl(self.fd, uapi.KVM_GET_IRQCHIP, chip)
        return chip

    def set_irqchip(self, chip: s.kvm_irqchip) -> None:
        ioctl(self.fd, uapi.KVM_SET_IRQCHIP, chip)

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: drive GSI ``irq`` (PIC and IOAPIC inputs) to ``level``."""
        ioctl(self.fd, uapi.KVM_IRQ_LINE, s.kvm_irq_level(irq=irq, level=level))

    def register_ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool,
                           datamatch: int | None = None, deassign: bool = False) -> None:
        flags = uapi.KVM_IOEVENTFD_FLAG_PIO if pio else 0
        if datamatch is not None:
            flags |= uapi.KVM_IOEVENTFD_FLAG_DATAMATCH
        if deassign:
            flags |= uapi.KVM_IOEVENTFD_FLAG_DEASSIGN
        ioctl(self.fd, uapi.KVM_IOEVENTFD, s.kvm_ioeventfd(
            datamatch=datamatch or 0, addr=addr, len=length, fd=fd, flags=flags))

    def register_irqfd(self, fd: int, gsi: int, resamplefd: int | None = None,
                       deassign: bool = False) -> None:
        flags = uapi.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        if resamplefd is not None:
            flags |= uapi.KVM_IRQFD_FLAG_RESAMPLE
        ioctl(self.fd, uapi.KVM_IRQFD, s.kvm_irqfd(fd=fd, gsi=gsi, flags=flags,
                                                    resamplefd=resamplefd or 0))

    def set_gsi_routing(self, entries: Iterable[s.kvm_irq_routing_entry]) -> None:
        """KVM_SET_GSI_ROUTING: replace the whole GSI routing table."""
        items = list(entries)

        class Table(ctypes.Structure):
            _fields_ = [("nr", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                        ("entries", s.kvm_irq_routing_entry * max(1, len(items)))]
        table = Table(nr=len(items))
        for i, entry in enumerate(items):
            table.entries[i] = entry
        ioctl(self.fd, uapi.KVM_SET_GSI_ROUTING, table)

    def signal_msi(self, address: int, data: int) -> int:
        msi = s.kvm_msi(address_lo=address & 0xFFFFFFFF, address_hi=address >> 32, data=data)
        return ioctl(self.fd, uapi.KVM_SIGNAL_MSI, msi)

    def get_clock(self) -> s.kvm_clock_data:
        data = s.kvm_clock_data()
        ioctl(self.fd, uapi.KVM_GET_CLOCK, data)
        return data

    def set_clock(self, clock: int, flags: int = 0, realtime: int = 0) -> None:
        """KVM_SET_CLOCK: kvmclock to ``clock`` ns; with KVM_CLOCK_REALTIME in
        ``flags`` KVM adds the host time elapsed since ``realtime``."""
        ioctl(self.fd, uapi.KVM_SET_CLOCK, s.kvm_clock_data(clock=clock, flags=flags, realtime=realtime))

    def get_pit2(self) -> s.kvm_pit_state2:
        """KVM_GET_PIT2: the in-kernel i8254's channels (KVM_CAP_PIT_STATE2)."""
        state = s.kvm_pit_state2()
        ioctl(self.fd, uapi.KVM_GET_PIT2, state)
        return state

    def set_pit2(self, state: s.kvm_pit_state2) -> None:
        ioctl(self.fd, uapi.KVM_SET_PIT2, state)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        ec = s.kvm_enable_cap(cap=cap, flags=flags)
        for i, value in enumerate(args):
            ec.args[i] = value
        ioctl(self.fd, uapi.KVM_ENABLE_CAP, ec)


def irqchip_route(gsi: int, chip: int, pin: int) -> s.kvm_irq_routing_entry:
    entry = s.kvm_irq_routing_entry(gsi=gsi, type=uapi.KVM_IRQ_ROUTING_IRQCHIP)
    entry.u.irqchip.irqchip = chip
    entry.u.irqchip.pin = pin
    return entry


def msi_route(gsi: int, address: int, data: int) -> s.kvm_irq_routing_entry:
    entry = s.kvm_irq_routing_entry(gsi=gsi, type=uapi.KVM_IRQ_ROUTING_MSI)
    entry.u.msi.address_lo = address & 0xFFFFFFFF
    entry.u.msi.address_hi = address >> 32
    entry.u.msi.data = data
    return entry
