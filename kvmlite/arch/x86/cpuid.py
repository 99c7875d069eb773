"""The CPUID a vCPU sees: KVM_GET_SUPPORTED_CPUID, with the topology and
identity fields a VMM must set per vCPU.

Topology: one socket, one core per vCPU, one thread per core; the APIC ID
of vCPU *n* is *n*.
"""

from __future__ import annotations

from kvmlite.kvm.structs import kvm_cpuid_entry2

LEAF1_ECX_TSC_DEADLINE = 1 << 24
LEAF1_ECX_HYPERVISOR = 1 << 31
LEAF1_EDX_HTT = 1 << 28
LEAF_EXT_TOPOLOGY = 0x0B
LEAF_EXT_TOPOLOGY_V2 = 0x1F
LEVEL_TYPE_SMT = 1
LEVEL_TYPE_CORE = 2


def _bits_for(count: int) -> int:
    """Bits of APIC ID needed to number ``count`` items (ceil(log2))."""
    return max(0, (count - 1).bit_length())


def _copy(entry: kvm_cpuid_entry2) -> kvm_cpuid_entry2:
    return kvm_cpuid_entry2.from_buffer_copy(entry)


def vendor(entries: list[kvm_cpuid_entry2]) -> str:
    for e in entries:
        if e.function == 0:
            return b"".join(x.to_bytes(4, "little") for x in (e.ebx, e.edx, e.ecx)).decode("ascii", "replace")
    return ""


def vcpu_cpuid(supported: list[kvm_cpuid_entry2], vcpu_id: int, num_vcpus: int,
               tsc_deadline: bool = False) -> list[kvm_cpuid_entry2]:
    """CPUID entries for vCPU ``vcpu_id`` of ``num_vcpus``.  ``tsc_deadline``:
    KVM's LAPIC emulates the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER),
    which KVM_GET_SUPPORTED_CPUID leaves to the VMM to announce.  A guest
    then arms its timer with one WRMSR instead of an APIC register write
    that KVM must decode and emulate."""
    out = []
    amd = vendor(supported) == "AuthenticAMD"
    for src in supported:
        e = _copy(src)
        if e.function == 1:
            # EBX: [31:24] initial APIC ID, [23:16] logical processors, [15:8] CLFLUSH size/8
            e.ebx = (vcpu_id << 24) | (min(num_vcpus, 255) << 16) | (8 << 8) | (e.ebx & 0xFF)
            e.ecx |= LEAF1_ECX_HYPERVISOR
            if tsc_deadline:
                e.ecx |= LEAF1_ECX_TSC_DEADLINE
            if num_vcpus > 1:
                e.edx |= LEAF1_EDX_HTT
            else:
                e.edx &= ~LEAF1_EDX_HTT
        elif e.function == 4 and not amd:
            # EAX [31:26]: cores per package - 1; [25:14]: threads sharing this cache - 1
            cache_level = (e.eax >> 5) & 0x7
            sharing = num_vcpus if cache_level >= 3 else 1
            e.eax = (e.eax & 0x3FFF) | ((sharing - 1) << 14) | ((num_vcpus - 1) << 26)
        elif e.function in (LEAF_EXT_TOPOLOGY, LEAF_EXT_TOPOLOGY_V2):
            _topology_leaf(e, vcpu_id, num_vcpus)
        elif e.function == 0x80000008 and amd:
            # ECX [15:12] APIC ID size, [7:0] number of cores - 1
            e.ecx = (_bits_for(num_vcpus) << 12) | (num_vcpus - 1)
        elif e.function == 6:
            e.ecx &= ~1  # no "hardware coordination feedback" (APERF/MPERF) offered
        out.append(e)
    return out


def _topology_leaf(e: kvm_cpuid_entry2, vcpu_id: int, num_vcpus: int) -> None:
    """Leaf 0xB/0x1F, subleaf e.index: SMT level, then core level."""
    e.edx = vcpu_id  # x2APIC ID
    if e.index == 0:
        e.eax, e.ebx, e.ecx = 0, 1, (LEVEL_TYPE_SMT << 8) | 0
    elif e.index == 1:
        e.eax, e.ebx, e.ecx = _bits_for(num_vcpus), num_vcpus, (LEVEL_TYPE_CORE << 8) | 1
    else:
        e.eax, e.ebx, e.ecx = 0, 0, e.index & 0xFF
