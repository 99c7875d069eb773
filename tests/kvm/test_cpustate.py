"""Save and restore of the KVM-held vCPU and VM state on the real /dev/kvm:
state put into one VM comes back, field for field, in a second fresh VM."""

from __future__ import annotations

import ctypes
import json
import struct
from typing import Iterator

import pytest

from kvmlite.arch.x86 import layout, regs as x86regs
from kvmlite.arch.x86.cpuid import vcpu_cpuid
from kvmlite.base.memory import GuestMemory
from kvmlite.kvm import Kvm, VcpuFd, VmFd, uapi
from kvmlite.kvm import exits as ex
from kvmlite.kvm import structs as s
from kvmlite.vmm.snapshot import cpustate as cs

pytestmark = pytest.mark.kvm

MSR_LSTAR = 0xC0000082
MSR_KERNEL_GS_BASE = 0xC0000102
MSR_SYSCALL_MASK = 0xC0000084
LSTAR = 0xFFFF_FFFF_81E0_0080
KERNEL_GS_BASE = 0xFFFF_8880_07A0_0000
IOAPIC_REDIRTBL = 24                  # struct kvm_ioapic_state: base_address, ioregsel, id, irr, pad
REDIR_PIN, REDIR_ENTRY = 4, 0x0100_0000_0000_A031   # dest 1, level, vector 0x31
PIT_COUNT = 11932                     # 100 Hz
FCW, MXCSR, XMM0, XMM15 = 0x27F, 0x1FA0, bytes(range(16)), b"\xA5" * 16
XCR0_X87_SSE = 0x3
APIC_SVR, APIC_SVR_ENABLE = 0xF0, 1 << 8          # Intel SDM vol. 3 §10.9, §10.5.1
APIC_LVTT, APIC_LVTT_TSC_DEADLINE, APIC_LVT_MASKED = 0x320, 2 << 17, 1 << 16
TSC_DEADLINE_AHEAD = 10**12
CODE_ADDR = 0x1000
# 32-bit: out 0x10, al; mov al, bl; out 0x11, al; hlt
CODE = bytes([0xE6, 0x10, 0x88, 0xD8, 0xE6, 0x11, 0xF4])


@pytest.fixture
def kvm_handle(kvm: str) -> Iterator[Kvm]:
    handle = Kvm(kvm)
    yield handle
    handle.close()


@pytest.fixture
def new_vm(kvm_handle: Kvm) -> Iterator:
    """``new_vm()``: a VM with the in-kernel irqchip and PIT2 (as
    kvmlite.vmm.vm builds it) and 1 MiB of RAM holding CODE."""
    made: list[VmFd | GuestMemory] = []

    def make() -> VmFd:
        vm = kvm_handle.create_vm()
        made.append(vm)
        vm.set_tss_addr(layout.KVM_TSS_ADDR)
        vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDR)
        vm.create_irqchip()
        vm.create_pit2(uapi.KVM_PIT_SPEAKER_DUMMY)
        memory = GuestMemory(1 << 20)
        made.append(memory)
        memory.write(CODE_ADDR, CODE)
        vm.set_user_memory_region(0, 0, memory.regions[0].size, memory.regions[0].host_addr)
        return vm

    vcpus: list[VcpuFd] = []
    yield make, vcpus
    for fd in vcpus:
        fd.close()
    for part in reversed(made):
        part.close()


def vcpu_with_cpuid(kvm: Kvm, vm: VmFd, vcpus: list[VcpuFd]) -> VcpuFd:
    fd = vm.create_vcpu(0)
    vcpus.append(fd)
    fd.set_cpuid2(vcpu_cpuid(kvm.supported_cpuid(), 0, 1, tsc_deadline=True))
    return fd


def distinctive_xsave(area: bytes) -> bytes:
    """The XSAVE area with x87 and SSE content (Intel SDM vol. 1 §13.4.1:
    FCW at 0, MXCSR at 24, XMMn at 160 + 16n, XSTATE_BV at 512).  Written
    with KVM_SET_XSAVE: on this machine's KVM, state put with KVM_SET_FPU into
    a vCPU that never ran does not show in KVM_GET_XSAVE."""
    data = bytearray(area)
    struct.pack_into("<H", data, 0, FCW)
    struct.pack_into("<I", data, 24, MXCSR)
    data[160:176] = XMM0
    data[160 + 16 * 15:176 + 16 * 15] = XMM15
    struct.pack_into("<Q", data, 512, XCR0_X87_SSE)
    return bytes(data)


def put_distinctive_state(vm: VmFd, fd: VcpuFd) -> None:
    fd.set_sregs(x86regs.boot_sregs(fd.get_sregs(), x86regs.BootEntry(rip=0x100_0000, long_mode=True)))
    regs = s.kvm_regs(rip=0x100_0000, rflags=0x202)
    for i, (name, _) in enumerate(s.kvm_regs._fields_[:16]):
        setattr(regs, name, 0x1111_0000_0000_0000 + i * 0x0101)
    fd.set_regs(regs)
    fd.set_msrs([(MSR_LSTAR, LSTAR), (MSR_KERNEL_GS_BASE, KERNEL_GS_BASE), (MSR_SYSCALL_MASK, 0x47700)])
    fd.set_xsave(distinctive_xsave(bytes(fd.get_xsave())))
    xcrs = fd.get_xcrs()
    xcrs.xcrs[0].value = XCR0_X87_SSE
    fd.set_xcrs(xcrs)
    dregs = fd.get_debugregs()
    dregs.db[0], dregs.db[3], dregs.dr7 = 0xFFFF_FFFF_8100_0000, 0x7000, 0x403
    fd.set_debugregs(dregs)
    lapic = bytearray(bytes(fd.get_lapic()))
    struct.pack_into("<I", lapic, APIC_SVR, APIC_SVR_ENABLE | 0xFF)
    struct.pack_into("<I", lapic, APIC_LVTT, APIC_LVTT_TSC_DEADLINE | APIC_LVT_MASKED | 0xEC)
    fd.set_lapic(s.kvm_lapic_state.from_buffer_copy(lapic))
    tsc = fd.get_msrs([cs.MSR_IA32_TSC])[cs.MSR_IA32_TSC]
    fd.set_msrs([(cs.MSR_IA32_TSC_DEADLINE, tsc + TSC_DEADLINE_AHEAD)])
    chip = vm.get_irqchip(uapi.KVM_IRQCHIP_IOAPIC)
    struct.pack_into("<Q", chip, s.kvm_irqchip.chip.offset + IOAPIC_REDIRTBL + 8 * REDIR_PIN, REDIR_ENTRY)
    vm.set_irqchip(chip)
    pit = vm.get_pit2()
    pit.channels[0].count, pit.channels[0].mode, pit.channels[0].rw_mode = PIT_COUNT, 2, 3
    vm.set_pit2(pit)


def save(kvm: Kvm, vm: VmFd, fd: VcpuFd) -> dict:
    """Save both parts, then send them through JSON as a snapshot file would."""
    state = {"vm": cs.save_vm(vm), "vcpu": cs.save_vcpu(fd, cs.msrs_to_save(kvm), xsave_bytes=cs.xsave_size(vm))}
    return json.loads(json.dumps(state))


def restore(vm: VmFd, vcpus: list[VcpuFd], state: dict) -> VcpuFd:
    fd = vm.create_vcpu(0)
    vcpus.append(fd)
    cs.restore_vm(vm, state["vm"])
    cs.restore_vcpu(fd, state["vcpu"], xsave_bytes=cs.xsave_size(vm))
    return fd


def redirection_entry(vm: VmFd) -> int:
    chip = bytes(vm.get_irqchip(uapi.KVM_IRQCHIP_IOAPIC))[s.kvm_irqchip.chip.offset:]
    return struct.unpack_from("<Q", chip, IOAPIC_REDIRTBL + 8 * REDIR_PIN)[0]


def test_cpustate_roundtrip_restores_vcpu_and_vm_state_in_a_fresh_vm(kvm_handle: Kvm, new_vm) -> None:
    make, vcpus = new_vm
    vm1 = make()
    fd1 = vcpu_with_cpuid(kvm_handle, vm1, vcpus)
    put_distinctive_state(vm1, fd1)
    before = {"regs": bytes(fd1.get_regs()), "sregs": bytes(fd1.get_sregs()), "xsave": bytes(fd1.get_xsave()),
              "debugregs": bytes(fd1.get_debugregs()), "xcrs": bytes(fd1.get_xcrs()),
              "lapic": bytes(fd1.get_lapic()), "cpuid": [bytes(e) for e in fd1.get_cpuid2()]}
    tsc_before = fd1.get_msrs([cs.MSR_IA32_TSC])[cs.MSR_IA32_TSC]
    deadline = fd1.get_msrs([cs.MSR_IA32_TSC_DEADLINE])[cs.MSR_IA32_TSC_DEADLINE]
    assert deadline > tsc_before
    state = save(kvm_handle, vm1, fd1)

    vm2 = make()
    fd2 = restore(vm2, vcpus, state)

    assert bytes(fd2.get_regs()) == before["regs"]
    assert bytes(fd2.get_sregs()) == before["sregs"]
    sregs = fd2.get_sregs()
    assert sregs.cr0 & x86regs.CR0_PG and sregs.cr4 & x86regs.CR4_PAE
    assert sregs.efer & x86regs.EFER_LMA and sregs.cr3 == layout.PML4_ADDR
    assert fd2.get_msrs([MSR_LSTAR, MSR_KERNEL_GS_BASE, MSR_SYSCALL_MASK]) == {
        MSR_LSTAR: LSTAR, MSR_KERNEL_GS_BASE: KERNEL_GS_BASE, MSR_SYSCALL_MASK: 0x47700}
    xsave = bytes(fd2.get_xsave())
    assert xsave == before["xsave"]
    assert struct.unpack_from("<H", xsave, 0)[0] == FCW and struct.unpack_from("<I", xsave, 24)[0] == MXCSR
    assert xsave[160:176] == XMM0 and xsave[400:416] == XMM15
    fpu = fd2.get_fpu()
    assert fpu.fcw == FCW and bytes(fpu.xmm[0]) == XMM0 and bytes(fpu.xmm[15]) == XMM15
    xcrs = fd2.get_xcrs()
    assert (xcrs.nr_xcrs, xcrs.xcrs[0].xcr, xcrs.xcrs[0].value) == (1, 0, XCR0_X87_SSE)
    dregs = fd2.get_debugregs()
    assert (dregs.db[0], dregs.db[3], dregs.dr7 & 0xFFFF) == (0xFFFF_FFFF_8100_0000, 0x7000, 0x403)
    assert bytes(dregs) == before["debugregs"]
    assert bytes(fd2.get_xcrs()) == before["xcrs"]
    assert bytes(fd2.get_lapic()) == before["lapic"]
    assert [bytes(e) for e in fd2.get_cpuid2()] == before["cpuid"]
    assert fd2.get_mp_state() == fd1.get_mp_state()
    assert fd2.get_tsc_khz() == fd1.get_tsc_khz()
    tsc = fd2.get_msrs([cs.MSR_IA32_TSC])[cs.MSR_IA32_TSC]
    assert tsc_before <= tsc < tsc_before + fd1.get_tsc_khz() * 1000 * 30, "guest TSC not carried over"
    assert fd2.get_msrs([cs.MSR_IA32_TSC_DEADLINE]) == {cs.MSR_IA32_TSC_DEADLINE: deadline}
    assert redirection_entry(vm2) == REDIR_ENTRY
    ch0 = vm2.get_pit2().channels[0]
    assert (ch0.count, ch0.mode, ch0.rw_mode) == (PIT_COUNT, 2, 3)
    clock = vm2.get_clock().clock
    assert state["vm"]["clock"]["clock"] <= clock < state["vm"]["clock"]["clock"] + 30 * 10**9


def test_cpustate_saved_values_are_all_msrs_kvm_lists(kvm_handle: Kvm, new_vm) -> None:
    make, vcpus = new_vm
    vm = make()
    fd = vcpu_with_cpuid(kvm_handle, vm, vcpus)
    state = cs.save_vcpu(fd, cs.msrs_to_save(kvm_handle))
    saved = {index for index, _ in state["msrs"]}
    assert {cs.MSR_IA32_TSC, MSR_LSTAR, MSR_KERNEL_GS_BASE, cs.MSR_MTRR_DEF_TYPE} <= saved
    assert set(state) == set(cs.VCPU_KEYS) and set(cs.save_vm(vm)) == set(cs.VM_KEYS)


def test_cpustate_restored_vcpu_resumes_guest_code_where_it_stopped(kvm_handle: Kvm, new_vm) -> None:
    make, vcpus = new_vm
    vm1 = make()
    fd1 = vcpu_with_cpuid(kvm_handle, vm1, vcpus)
    fd1.set_sregs(x86regs.boot_sregs(fd1.get_sregs(), x86regs.BootEntry(rip=CODE_ADDR, long_mode=False)))
    fd1.set_regs(s.kvm_regs(rip=CODE_ADDR, rflags=2, rax=0x42, rbx=0x5A))
    assert fd1.run() == ex.IoOut(0x10, 1, 1, b"\x42")
    state = save(kvm_handle, vm1, fd1)

    fd2 = restore(make(), vcpus, state)

    assert fd2.run() == ex.IoOut(0x11, 1, 1, b"\x5A")
    assert fd2.get_regs().rip == CODE_ADDR + 6
