"""GDT descriptors, identity page tables, boot registers and CPUID."""

from __future__ import annotations

import pytest

import struct

from kvmlite.arch.x86 import cpuid, gdt, layout, paging, regs
from kvmlite.kvm.structs import kvm_cpuid_entry2, kvm_sregs


def test_descriptor_flat_code64_matches_known_encoding() -> None:
    # The classic flat 64-bit code descriptor 0x00af9b000000ffff.
    assert gdt.descriptor(0, 0xFFFFF, gdt.TYPE_CODE_XR_ACCESSED, s=1, l=1) == 0x00AF9B000000FFFF
    assert gdt.descriptor(0, 0xFFFFF, gdt.TYPE_DATA_RW_ACCESSED, s=1, db=1) == 0x00CF93000000FFFF


def test_segment_from_descriptor_scales_limit_with_granularity() -> None:
    seg = gdt.segment_from_descriptor(0x00CF93000000FFFF, 0x18)
    assert (seg.limit, seg.selector, seg.type, seg.db, seg.g, seg.present) == (0xFFFFFFFF, 0x18, 3, 1, 1, 1)


def test_identity_map_tables_map_last_2m_page_of_4g() -> None:
    tables = dict(paging.identity_map_tables(4))
    last_pd = tables[layout.PD_ADDR + 3 * 0x1000]
    entry = struct.unpack_from("<Q", last_pd, 511 * 8)[0]
    assert entry & ~0xFFF == (4 << 30) - (2 << 20)
    assert entry & paging.PTE_PAGE_SIZE and entry & paging.PTE_PRESENT


def test_boot_sregs_long_mode_sets_paging_and_boot_selectors() -> None:
    entry = regs.BootEntry(rip=0x100200, long_mode=True, boot_params=0x7000)
    s = regs.boot_sregs(kvm_sregs(), entry)
    assert s.cr0 & regs.CR0_PG and s.cr0 & regs.CR0_PE and s.cr4 & regs.CR4_PAE
    assert s.efer & regs.EFER_LME and s.efer & regs.EFER_LMA
    assert s.cs.selector == 0x10 and s.cs.l == 1 and s.ds.selector == 0x18
    assert s.cr3 == layout.PML4_ADDR
    r = regs.boot_regs(entry)
    assert (r.rip, r.rsi, r.rflags) == (0x100200, 0x7000, 2)


def test_boot_sregs_pvh_is_protected_mode_without_paging() -> None:
    entry = regs.BootEntry(rip=0x100000, long_mode=False, start_info=0xF000)
    s = regs.boot_sregs(kvm_sregs(), entry)
    assert s.cr0 & regs.CR0_PE and not s.cr0 & regs.CR0_PG
    assert s.cs.db == 1 and s.cs.l == 0 and s.efer == 0
    assert regs.boot_regs(entry).rbx == 0xF000


def test_lapic_lint_setup_sets_extint_and_nmi() -> None:
    out = regs.lapic_lint_setup(bytearray(1024))
    assert (struct.unpack_from("<I", out, 0x350)[0] >> 8) & 7 == regs.APIC_MODE_EXTINT
    assert (struct.unpack_from("<I", out, 0x360)[0] >> 8) & 7 == regs.APIC_MODE_NMI


def _entry(function: int, index: int = 0, **regs_: int) -> kvm_cpuid_entry2:
    return kvm_cpuid_entry2(function=function, index=index, **regs_)


def test_vcpu_cpuid_leaf1_carries_apic_id_and_hypervisor_bit() -> None:
    supported = [_entry(0, ebx=0x756E6547, edx=0x49656E69, ecx=0x6C65746E), _entry(1, ebx=0xFF)]
    out = cpuid.vcpu_cpuid(supported, vcpu_id=3, num_vcpus=4)
    leaf1 = next(e for e in out if e.function == 1)
    assert leaf1.ebx >> 24 == 3 and (leaf1.ebx >> 16) & 0xFF == 4
    assert leaf1.ecx & cpuid.LEAF1_ECX_HYPERVISOR and leaf1.edx & cpuid.LEAF1_EDX_HTT
    assert supported[1].ebx == 0xFF, "the supported list must not be modified"


@pytest.mark.parametrize("deadline", [False, True])
def test_vcpu_cpuid_announces_the_tsc_deadline_timer_when_kvm_emulates_it(deadline: bool) -> None:
    supported = [_entry(0, ebx=0x68747541, edx=0x69746E65, ecx=0x444D4163), _entry(1, ecx=0x1)]
    out = cpuid.vcpu_cpuid(supported, vcpu_id=0, num_vcpus=1, tsc_deadline=deadline)
    leaf1 = next(e for e in out if e.function == 1)
    assert bool(leaf1.ecx & cpuid.LEAF1_ECX_TSC_DEADLINE) is deadline
    assert leaf1.ecx & 0x1, "the other supported bits stay"


def test_vcpu_cpuid_leaf_b_reports_core_level_and_x2apic_id() -> None:
    supported = [_entry(0xB, 0), _entry(0xB, 1), _entry(0xB, 2)]
    out = cpuid.vcpu_cpuid(supported, vcpu_id=5, num_vcpus=6)
    smt, core, end = out
    assert smt.ebx == 1 and (smt.ecx >> 8) & 0xFF == cpuid.LEVEL_TYPE_SMT
    assert core.eax == 3 and core.ebx == 6 and (core.ecx >> 8) & 0xFF == cpuid.LEVEL_TYPE_CORE
    assert all(e.edx == 5 for e in out) and (end.ecx >> 8) & 0xFF == 0
