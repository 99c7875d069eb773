"""The KVM-backed interrupt plumbing against this machine's /dev/kvm:
KVM_IRQ_LINE lines, the GSI routing table, irqfd-backed MSI vectors,
ioeventfds, and the resampling INTx line.

The kernel's own state is the witness: the IOAPIC's and PIC's IRR
(KVM_GET_IRQCHIP) for lines, the local APIC's IRR (KVM_GET_LAPIC) for MSI
messages, and eventfd counters for ioeventfds hit by a 16-bit guest.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import struct
import time
from typing import Callable, Iterator, cast

import pytest

from kvmlite.kvm import Kvm, exits, uapi
from kvmlite.kvm.system import KvmUnavailable
from kvmlite.kvm.vm import VmFd, msi_route
from kvmlite.vmm.interrupts import (IrqRouter, KvmIoEventRegistrar, KvmIrqLine, KvmMsiAllocator,
                                    KvmMsiVector, KvmResampleIrqLine, default_routes)

pytestmark = pytest.mark.kvm

MSI_ADDRESS = 0xFEE0_0000          # physical destination APIC 0
MSR_IA32_APICBASE = 0x1B
APIC_BASE_ENABLED_BSP = 0xFEE0_0000 | 1 << 11 | 1 << 8
APIC_SVR = 0xF0
APIC_SVR_ENABLE = 1 << 8
APIC_IRR = 0x200
IOAPIC_IRR_OFFSET = 16             # struct kvm_ioapic_state: base_address, ioregsel, id, irr
PIC_IRR_OFFSET = 1                 # struct kvm_pic_state: last_irr, irr
CHIP_UNION_OFFSET = 8              # struct kvm_irqchip: chip_id, pad, then the union


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    try:
        handle = Kvm()
    except KvmUnavailable as exc:
        pytest.skip(f"needs /dev/kvm: {exc}")
    yield handle
    handle.close()


@pytest.fixture
def vm(kvm: Kvm) -> Iterator[VmFd]:
    handle = kvm.create_vm()
    handle.set_tss_addr(0xFFFB_D000)
    handle.create_irqchip()
    yield handle
    handle.close()


def chip_bytes(vm: VmFd, chip_id: int) -> bytes:
    """The raw union of struct kvm_irqchip (a c_char array attribute would
    stop at the first NUL)."""
    return bytes(vm.get_irqchip(chip_id))[CHIP_UNION_OFFSET:]


def ioapic_irr(vm: VmFd) -> int:
    return struct.unpack_from("<I", chip_bytes(vm, uapi.KVM_IRQCHIP_IOAPIC), IOAPIC_IRR_OFFSET)[0]


def pic_irr(vm: VmFd, chip_id: int) -> int:
    return chip_bytes(vm, chip_id)[PIC_IRR_OFFSET]


def eventually(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    """irqfd injection runs on a kernel workqueue: poll for its effect."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def enabled_lapic_vcpu(vm: VmFd):
    """vCPU 0 with its local APIC enabled in the base MSR (xAPIC, BSP) and
    software-enabled in the SVR, so it accepts fixed MSI messages."""
    vcpu = vm.create_vcpu(0)
    vcpu.set_msrs([(MSR_IA32_APICBASE, APIC_BASE_ENABLED_BSP)])
    lapic = vcpu.get_lapic()
    regs = bytearray(bytes(lapic))
    svr = struct.unpack_from("<I", regs, APIC_SVR)[0]
    struct.pack_into("<I", regs, APIC_SVR, svr | APIC_SVR_ENABLE | 0xFF)
    ctypes.memmove(ctypes.addressof(lapic), bytes(regs), len(regs))   # c_char[] would stop at NUL
    vcpu.set_lapic(lapic)
    return vcpu


def lapic_irr_has(vcpu, vector: int) -> bool:
    regs = bytes(vcpu.get_lapic())
    word = struct.unpack_from("<I", regs, APIC_IRR + 0x10 * (vector // 32))[0]
    return bool(word >> (vector % 32) & 1)


# --- KVM_IRQ_LINE ---

def test_kvm_irq_line_level_reaches_ioapic_and_pic(vm: VmFd) -> None:
    line = KvmIrqLine(vm, 4)

    line.set_level(True)
    raised = ioapic_irr(vm) & (1 << 4)
    line.set_level(False)

    assert raised
    assert not ioapic_irr(vm) & (1 << 4)
    assert pic_irr(vm, uapi.KVM_IRQCHIP_PIC_MASTER) & (1 << 4)


def test_kvm_irq_line_trigger_latches_edge_in_pic(vm: VmFd) -> None:
    KvmIrqLine(vm, 9).trigger()

    assert pic_irr(vm, uapi.KVM_IRQCHIP_PIC_SLAVE) & (1 << 1)
    assert not ioapic_irr(vm) & (1 << 9)


# --- the routing table ---

def test_kvm_router_default_table_is_accepted_and_keeps_isa_lines(vm: VmFd) -> None:
    IrqRouter(vm).install_defaults()

    KvmIrqLine(vm, 3).set_level(True)
    KvmIrqLine(vm, 20).set_level(True)

    assert ioapic_irr(vm) & (1 << 3 | 1 << 20) == (1 << 3 | 1 << 20)
    assert pic_irr(vm, uapi.KVM_IRQCHIP_PIC_MASTER) & (1 << 3)


def test_kvm_router_default_routes_skip_pic_cascade() -> None:
    pic_gsis = [e.gsi for e in default_routes() if e.u.irqchip.irqchip != uapi.KVM_IRQCHIP_IOAPIC]

    assert pic_gsis == [g for g in range(16) if g != 2]
    assert len(default_routes()) == 15 + 23


def test_kvm_router_default_routes_pit_gsi0_goes_to_ioapic_pin2() -> None:
    ioapic = {e.gsi: e.u.irqchip.pin for e in default_routes() if e.u.irqchip.irqchip == uapi.KVM_IRQCHIP_IOAPIC}

    assert ioapic[0] == 2, "the MADT/MP table announce IRQ0 on IOAPIC pin 2"
    assert 2 not in ioapic
    assert all(ioapic[g] == g for g in range(1, 24) if g != 2)


def test_kvm_set_gsi_routing_without_defaults_silences_isa_lines(vm: VmFd) -> None:
    """Why the router repeats the defaults: the ioctl replaces the table."""
    vm.set_gsi_routing([msi_route(24, MSI_ADDRESS, 0x30)])

    KvmIrqLine(vm, 4).set_level(True)

    assert not ioapic_irr(vm) & (1 << 4)


def test_kvm_router_msi_routes_keep_isa_lines_working(vm: VmFd) -> None:
    router = IrqRouter(vm)

    assert router.set_msi_route(24, MSI_ADDRESS, 0x30)
    assert router.set_msi_route(25, MSI_ADDRESS, 0x31)
    KvmIrqLine(vm, 4).set_level(True)

    assert ioapic_irr(vm) & (1 << 4)
    assert router.msi_routes() == {24: (MSI_ADDRESS, 0x30), 25: (MSI_ADDRESS, 0x31)}


def test_kvm_router_gsis_are_reused_after_free(vm: VmFd) -> None:
    router = IrqRouter(vm)
    first, second = router.allocate_gsi(), router.allocate_gsi()

    router.free_gsi(first)

    assert (first, second) == (24, 25)
    assert router.allocate_gsi() == 24


# --- MSI vectors over irqfd ---

def test_kvm_msi_vector_unmasked_trigger_reaches_lapic(vm: VmFd) -> None:
    vcpu = enabled_lapic_vcpu(vm)
    router = IrqRouter(vm)
    vector = KvmMsiVector(vm, router)

    vector.configure(MSI_ADDRESS, 0x45)
    vector.set_masked(False)
    vector.trigger()

    assert eventually(lambda: lapic_irr_has(vcpu, 0x45))
    assert router.msi_routes() == {vector.gsi: (MSI_ADDRESS, 0x45)}
    vector.close()
    vcpu.close()


def test_kvm_msi_vector_masked_trigger_is_pending_until_unmask(vm: VmFd) -> None:
    vcpu = enabled_lapic_vcpu(vm)
    vector = KvmMsiVector(vm, IrqRouter(vm))
    vector.configure(MSI_ADDRESS, 0x51)

    vector.trigger()
    time.sleep(0.05)
    held = lapic_irr_has(vcpu, 0x51), vector.pending
    vector.set_masked(False)

    assert held == (False, True)
    assert eventually(lambda: lapic_irr_has(vcpu, 0x51))
    assert vector.pending is False
    vector.close()
    vcpu.close()


def test_kvm_msi_vector_reroute_while_unmasked_changes_vector(vm: VmFd) -> None:
    vcpu = enabled_lapic_vcpu(vm)
    vector = KvmMsiVector(vm, IrqRouter(vm))
    vector.configure(MSI_ADDRESS, 0x60)
    vector.set_masked(False)

    vector.configure(MSI_ADDRESS, 0x61)
    vector.trigger()

    assert eventually(lambda: lapic_irr_has(vcpu, 0x61))
    assert not lapic_irr_has(vcpu, 0x60)
    vector.close()
    vcpu.close()


def test_kvm_msi_vector_bad_address_drops_route_and_trigger(vm: VmFd,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    router = IrqRouter(vm)
    vector = KvmMsiVector(vm, router)

    vector.configure(0xC000_0000, 0x30)
    vector.set_masked(False)
    vector.trigger()

    assert router.msi_routes() == {}
    assert "outside the MSI window" in caplog.text
    vector.close()


def test_kvm_msi_vector_shared_irqfd_write_reaches_lapic(vm: VmFd) -> None:
    vcpu = enabled_lapic_vcpu(vm)
    vector = KvmMsiVector(vm, IrqRouter(vm))
    fd = vector.irqfd()                      # what vhost is given as its call eventfd
    vector.configure(MSI_ADDRESS, 0x48)
    vector.set_masked(False)

    os.eventfd_write(fd, 1)

    assert eventually(lambda: lapic_irr_has(vcpu, 0x48))
    vector.close()
    vcpu.close()


def test_kvm_msi_vector_shared_irqfd_write_while_masked_is_pending_until_unmask(vm: VmFd) -> None:
    vcpu = enabled_lapic_vcpu(vm)
    vector = KvmMsiVector(vm, IrqRouter(vm))
    vector.configure(MSI_ADDRESS, 0x49)
    vector.set_masked(False)
    fd = vector.irqfd()
    vector.set_masked(True)                  # Linux reprogramming the entry

    os.eventfd_write(fd, 1)
    time.sleep(0.05)
    held = lapic_irr_has(vcpu, 0x49), vector.pending
    vector.set_masked(False)

    assert held == (False, True)
    assert eventually(lambda: lapic_irr_has(vcpu, 0x49))
    assert vector.pending is False
    vector.close()
    vcpu.close()


def test_kvm_msi_allocator_release_frees_gsis_and_irqfds(vm: VmFd) -> None:
    router = IrqRouter(vm)
    allocator = KvmMsiAllocator(vm, router)
    vectors = allocator.allocate(3)
    fds = [cast(KvmMsiVector, v).fd for v in vectors]

    allocator.release(vectors)

    assert router.allocate_gsi() in {24, 25, 26}
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


# --- ioeventfds ---

def test_kvm_ioevent_registrar_accepts_and_refuses_duplicates(vm: VmFd) -> None:
    registrar = KvmIoEventRegistrar(vm)
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    registrar.register(fd, 0xC000_3000, 2, False, None)
    registrar.register(fd, 0xD000_0050, 4, False, 0)
    registrar.register(fd, 0xD000_0050, 4, False, 1)

    with pytest.raises(OSError) as exc:
        registrar.register(fd, 0xC000_3000, 2, False, None)
    registrar.unregister(fd, 0xC000_3000, 2, False, None)
    registrar.register(fd, 0xC000_3000, 2, False, None)

    assert exc.value.errno == errno.EEXIST
    os.close(fd)


def test_kvm_ioevent_unregister_unknown_raises_oserror(vm: VmFd) -> None:
    fd = os.eventfd(0, os.EFD_NONBLOCK)

    with pytest.raises(OSError):
        KvmIoEventRegistrar(vm).unregister(fd, 0xC000_4000, 2, False, None)
    os.close(fd)


# A 16-bit guest at 0x1000: out dx, ax to port 0x510 with ax = 1, then a
# 2-byte store to 0x2000 (no memory slot there: MMIO), then a byte out to
# port 0x511, which has no ioeventfd and ends the run.  (hlt would not: with
# the in-kernel irqchip KVM halts the vCPU itself instead of exiting.)
DONE_PORT = 0x511
DOORBELL_GUEST = bytes([
    0xBA, 0x10, 0x05,        # mov dx, 0x510
    0xB8, 0x01, 0x00,        # mov ax, 1
    0xEF,                    # out dx, ax
    0xA3, 0x00, 0x20,        # mov [0x2000], ax
    0xBA, 0x11, 0x05,        # mov dx, 0x511
    0xEE,                    # out dx, al
    0xF4,                    # hlt (not reached)
])


def run_guest(vm: VmFd, code: bytes) -> list[object]:
    """Run ``code`` in real mode until it writes DONE_PORT (at most 8 exits)."""
    ram = mmap.mmap(-1, 0x1000)
    ram[:len(code)] = code
    vm.set_user_memory_region(0, 0x1000, 0x1000, ctypes.addressof(ctypes.c_char.from_buffer(ram)))
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.get_sregs()
    sregs.cs.base, sregs.cs.selector = 0, 0
    sregs.ds.base, sregs.ds.selector = 0, 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip, regs.rflags = 0x1000, 0x2
    vcpu.set_regs(regs)
    seen: list[object] = []
    for _ in range(8):
        exit_ = vcpu.run()
        seen.append(exit_)
        if isinstance(exit_, exits.IoOut) and exit_.port == DONE_PORT or isinstance(
                exit_, (exits.Hlt, exits.Shutdown, exits.InternalError, exits.FailEntry)):
            break
    vcpu.close()
    return seen


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_kvm_ioeventfds_complete_guest_writes_in_kernel(vm: VmFd) -> None:
    registrar = KvmIoEventRegistrar(vm)
    pio_fd, mmio_fd = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    registrar.register(pio_fd, 0x510, 2, True, 1)
    registrar.register(mmio_fd, 0x2000, 2, False, None)

    seen = run_guest(vm, DOORBELL_GUEST)

    assert [(type(e), getattr(e, "port", None)) for e in seen] == [(exits.IoOut, DONE_PORT)], seen
    assert (os.eventfd_read(pio_fd), os.eventfd_read(mmio_fd)) == (1, 1)
    os.close(pio_fd)
    os.close(mmio_fd)


def test_kvm_ioeventfd_datamatch_mismatch_exits_to_userspace(vm: VmFd) -> None:
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    KvmIoEventRegistrar(vm).register(fd, 0x510, 2, True, 7)

    seen = run_guest(vm, DOORBELL_GUEST)

    assert isinstance(seen[0], exits.IoOut) and seen[0].port == 0x510
    assert not readable(fd)
    os.close(fd)


# --- level-triggered INTx through irqfd + resamplefd ---

def test_kvm_resample_line_asserts_through_irqfd(kvm: Kvm, vm: VmFd) -> None:
    if not kvm.check_extension(uapi.KVM_CAP_IRQFD_RESAMPLE):
        pytest.skip("needs KVM_CAP_IRQFD_RESAMPLE, which this /dev/kvm does not report")
    readers: dict[int, Callable[[], None]] = {}
    line = KvmResampleIrqLine(vm, 11, lambda fd, cb: readers.__setitem__(fd, cb))

    line.set_level(True)

    assert eventually(lambda: bool(ioapic_irr(vm) & (1 << 11)))
    assert list(readers) == [line.resample_fd]
    line.close()
