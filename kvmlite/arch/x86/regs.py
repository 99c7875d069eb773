"""Initial vCPU state for each entry mode, as data.

``BootEntry`` says how the boot vCPU enters the kernel; the functions here
turn it into register values.  Applying them to a vCPU is
:mod:`kvmlite.vmm.vcpu`'s job.  References: Linux x86 boot protocol
("64-bit boot protocol"), the PVH boot ABI, Intel SDM vol. 3 §9.8 (entering
IA-32e mode).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmlite.arch.x86 import gdt, layout
from kvmlite.kvm.structs import kvm_dtable, kvm_fpu, kvm_regs, kvm_sregs

CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
RFLAGS_RESERVED = 1 << 1

# MSRs (Intel SDM vol. 4)
MSR_IA32_TSC = 0x10
MSR_IA32_APICBASE = 0x1B
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102
MISC_ENABLE_FAST_STRING = 1 << 0
MTRR_ENABLE = 1 << 11
MTRR_TYPE_WRBACK = 6

# Local APIC register offsets inside kvm_lapic_state.regs (Intel SDM vol. 3 §10.4.1)
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_MODE_NMI = 0x4
APIC_MODE_EXTINT = 0x7


@dataclass(frozen=True)
class BootEntry:
    """How the boot vCPU enters the kernel."""

    rip: int
    long_mode: bool        # True: 64-bit boot protocol; False: PVH 32-bit protected mode
    boot_params: int = 0   # %rsi for the 64-bit protocol
    start_info: int = 0    # %ebx for PVH


def boot_memory_blobs(entry: BootEntry) -> list[tuple[int, bytes]]:
    """GDT and an empty IDT; page tables for the 64-bit protocol."""
    from kvmlite.arch.x86.paging import identity_map_tables

    blobs = [(layout.GDT_ADDR, gdt.pack_gdt(gdt.boot_gdt(entry.long_mode))),
             (layout.IDT_ADDR, bytes(8))]
    if entry.long_mode:
        blobs += identity_map_tables()
    return blobs


def boot_sregs(sregs: kvm_sregs, entry: BootEntry) -> kvm_sregs:
    """Fill ``sregs`` (read from the vCPU first) for ``entry``."""
    table = gdt.boot_gdt(entry.long_mode)
    code = gdt.segment_from_descriptor(table[gdt.SEL_CODE >> 3], gdt.SEL_CODE)
    data = gdt.segment_from_descriptor(table[gdt.SEL_DATA >> 3], gdt.SEL_DATA)
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = gdt.segment_from_descriptor(table[gdt.SEL_TSS >> 3], gdt.SEL_TSS)
    sregs.gdt = kvm_dtable(base=layout.GDT_ADDR, limit=len(table) * 8 - 1)
    sregs.idt = kvm_dtable(base=layout.IDT_ADDR, limit=7)
    if entry.long_mode:
        sregs.cr3 = layout.PML4_ADDR
        sregs.cr4 |= CR4_PAE
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
        sregs.efer |= EFER_LME | EFER_LMA
    else:
        sregs.cr0 = CR0_PE | CR0_ET
        sregs.cr3 = 0
        sregs.cr4 = 0
        sregs.efer = 0
    return sregs


def boot_regs(entry: BootEntry) -> kvm_regs:
    regs = kvm_regs(rip=entry.rip, rflags=RFLAGS_RESERVED)
    if entry.long_mode:
        regs.rsi = entry.boot_params
        regs.rsp = regs.rbp = layout.BOOT_STACK_TOP
    else:
        regs.rbx = entry.start_info
    return regs


def boot_fpu() -> kvm_fpu:
    """x87 and SSE state after FNINIT / reset (SDM vol. 1 §8.1.1, §10.2.3)."""
    return kvm_fpu(fcw=0x37F, mxcsr=0x1F80)


def boot_msrs() -> list[tuple[int, int]]:
    """MSR values a VMM sets before entering a kernel directly (as
    Firecracker does): syscall MSRs cleared, fast strings on, MTRRs enabled
    with write-back as the default type."""
    return [
        (MSR_IA32_SYSENTER_CS, 0), (MSR_IA32_SYSENTER_ESP, 0), (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0), (MSR_CSTAR, 0), (MSR_KERNEL_GS_BASE, 0), (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0), (MSR_IA32_TSC, 0), (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]


def lapic_lint_setup(regs: bytearray) -> bytearray:
    """Program LINT0 as ExtINT (the PIC) and LINT1 as NMI, as firmware does,
    in a copy of a ``kvm_lapic_state.regs`` buffer."""
    for off, mode in ((APIC_LVT_LINT0, APIC_MODE_EXTINT), (APIC_LVT_LINT1, APIC_MODE_NMI)):
        value = struct.unpack_from("<I", regs, off)[0]
        value = (value & ~0x700) | (mode << 8)
        struct.pack_into("<I", regs, off, value)
    return regs
