"""ctypes mirrors of the structures in ``linux/kvm.h`` and ``asm/kvm.h``
(x86-64).

Each class names its C struct; :data:`EXPECTED_SIZES` lists the size the
kernel header gives, checked at import time by :func:`check_sizes` and, against
the real header, by ``tests/unit/kvm/test_uapi.py``.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_uint8, c_uint16, c_uint32, c_uint64

u8, u16, u32, u64, s32 = c_uint8, c_uint16, c_uint32, c_uint64, c_int32


class _Struct(ctypes.Structure):
    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name, *_ in self._fields_ if not name.startswith("pad"))
        return f"{type(self).__name__}({fields})"


# asm/kvm.h: struct kvm_regs
class kvm_regs(_Struct):
    _fields_ = [(n, u64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


# asm/kvm.h: struct kvm_segment
class kvm_segment(_Struct):
    _fields_ = [
        ("base", u64), ("limit", u32), ("selector", u16), ("type", u8),
        ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8),
        ("g", u8), ("avl", u8), ("unusable", u8), ("padding", u8),
    ]


# asm/kvm.h: struct kvm_dtable
class kvm_dtable(_Struct):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


# asm/kvm.h: struct kvm_sregs
class kvm_sregs(_Struct):
    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
        ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
        ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
        ("efer", u64), ("apic_base", u64), ("interrupt_bitmap", u64 * 4),
    ]


# asm/kvm.h: struct kvm_fpu
class kvm_fpu(_Struct):
    _fields_ = [
        ("fpr", (u8 * 16) * 8), ("fcw", u16), ("fsw", u16), ("ftwx", u8),
        ("pad1", u8), ("last_opcode", u16), ("last_ip", u64), ("last_dp", u64),
        ("xmm", (u8 * 16) * 16), ("mxcsr", u32), ("pad2", u32),
    ]


# asm/kvm.h: struct kvm_msr_entry
class kvm_msr_entry(_Struct):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


# asm/kvm.h: struct kvm_msrs (header of a variable-length array)
class kvm_msrs(_Struct):
    _fields_ = [("nmsrs", u32), ("pad", u32)]


# asm/kvm.h: struct kvm_msr_list (header of a variable-length array)
class kvm_msr_list(_Struct):
    _fields_ = [("nmsrs", u32)]


# asm/kvm.h: struct kvm_xsave (4096 bytes; KVM_GET_XSAVE2 may fill more,
# as many as KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM says)
class kvm_xsave(_Struct):
    _fields_ = [("region", u32 * 1024)]


# asm/kvm.h: struct kvm_xcr
class kvm_xcr(_Struct):
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


# asm/kvm.h: struct kvm_xcrs (KVM_MAX_XCRS = 16)
class kvm_xcrs(_Struct):
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * 16), ("padding", u64 * 16)]


# asm/kvm.h: struct kvm_debugregs
class kvm_debugregs(_Struct):
    _fields_ = [("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64), ("reserved", u64 * 9)]


# asm/kvm.h: struct kvm_pit_channel_state
class kvm_pit_channel_state(_Struct):
    _fields_ = [
        ("count", u32), ("latched_count", u16), ("count_latched", u8), ("status_latched", u8),
        ("status", u8), ("read_state", u8), ("write_state", u8), ("write_latch", u8),
        ("rw_mode", u8), ("mode", u8), ("bcd", u8), ("gate", u8), ("count_load_time", ctypes.c_int64),
    ]


# asm/kvm.h: struct kvm_pit_state2
class kvm_pit_state2(_Struct):
    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", u32), ("reserved", u32 * 9)]


# asm/kvm.h: struct kvm_cpuid_entry2
class kvm_cpuid_entry2(_Struct):
    _fields_ = [
        ("function", u32), ("index", u32), ("flags", u32),
        ("eax", u32), ("ebx", u32), ("ecx", u32), ("edx", u32), ("padding", u32 * 3),
    ]


# asm/kvm.h: struct kvm_cpuid2 (header of a variable-length array)
class kvm_cpuid2(_Struct):
    _fields_ = [("nent", u32), ("padding", u32)]


# asm/kvm.h: struct kvm_lapic_state
class kvm_lapic_state(_Struct):
    _fields_ = [("regs", ctypes.c_char * 1024)]


# linux/kvm.h: struct kvm_mp_state
class kvm_mp_state(_Struct):
    _fields_ = [("mp_state", u32)]


class _ev_exception(_Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8), ("error_code", u32)]


class _ev_interrupt(_Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _ev_nmi(_Struct):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _ev_smi(_Struct):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


# asm/kvm.h: struct kvm_vcpu_events
class kvm_vcpu_events(_Struct):
    _fields_ = [
        ("exception", _ev_exception), ("interrupt", _ev_interrupt), ("nmi", _ev_nmi),
        ("sipi_vector", u32), ("flags", u32), ("smi", _ev_smi),
        ("triple_fault_pending", u8), ("reserved", u8 * 26),
        ("exception_has_payload", u8), ("exception_payload", u64),
    ]


# linux/kvm.h: struct kvm_userspace_memory_region
class kvm_userspace_memory_region(_Struct):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64), ("userspace_addr", u64)]


# linux/kvm.h: struct kvm_irq_level
class kvm_irq_level(_Struct):
    _fields_ = [("irq", u32), ("level", u32)]


# linux/kvm.h: struct kvm_irqchip
class kvm_irqchip(_Struct):
    _fields_ = [("chip_id", u32), ("pad", u32), ("chip", ctypes.c_char * 512)]


# linux/kvm.h: struct kvm_pit_config
class kvm_pit_config(_Struct):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


# linux/kvm.h: struct kvm_irqfd
class kvm_irqfd(_Struct):
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


# linux/kvm.h: struct kvm_ioeventfd
class kvm_ioeventfd(_Struct):
    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", s32), ("flags", u32), ("pad", u8 * 36)]


# linux/kvm.h: struct kvm_clock_data
class kvm_clock_data(_Struct):
    _fields_ = [("clock", u64), ("flags", u32), ("pad0", u32), ("realtime", u64), ("host_tsc", u64), ("pad", u32 * 4)]


# linux/kvm.h: struct kvm_irq_routing_irqchip
class kvm_irq_routing_irqchip(_Struct):
    _fields_ = [("irqchip", u32), ("pin", u32)]


# linux/kvm.h: struct kvm_irq_routing_msi
class kvm_irq_routing_msi(_Struct):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("devid", u32)]


class _routing_u(ctypes.Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi), ("pad", u32 * 8)]


# linux/kvm.h: struct kvm_irq_routing_entry
class kvm_irq_routing_entry(_Struct):
    _fields_ = [("gsi", u32), ("type", u32), ("flags", u32), ("pad", u32), ("u", _routing_u)]


# linux/kvm.h: struct kvm_irq_routing (header of a variable-length array)
class kvm_irq_routing(_Struct):
    _fields_ = [("nr", u32), ("flags", u32)]


# linux/kvm.h: struct kvm_msi
class kvm_msi(_Struct):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("flags", u32), ("devid", u32), ("pad", u8 * 12)]


# linux/kvm.h: struct kvm_enable_cap
class kvm_enable_cap(_Struct):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


# linux/kvm.h: struct kvm_translation
class kvm_translation(_Struct):
    _fields_ = [
        ("linear_address", u64), ("physical_address", u64),
        ("valid", u8), ("writeable", u8), ("usermode", u8), ("pad", u8 * 5),
    ]


# --- struct kvm_run and the members of its exit union ---

class kvm_run_io(_Struct):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class kvm_run_mmio(_Struct):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class kvm_run_fail_entry(_Struct):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_internal(_Struct):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_system_event(_Struct):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_ex(_Struct):
    _fields_ = [("exception", u32), ("error_code", u32)]


class kvm_run_msr(_Struct):
    _fields_ = [("error", u8), ("pad", u8 * 7), ("reason", u32), ("index", u32), ("data", u64)]


class _kvm_run_exit(ctypes.Union):
    _fields_ = [
        ("io", kvm_run_io), ("mmio", kvm_run_mmio), ("fail_entry", kvm_run_fail_entry),
        ("internal", kvm_run_internal), ("system_event", kvm_run_system_event),
        ("ex", kvm_run_ex), ("msr", kvm_run_msr), ("hardware_exit_reason", u64),
        ("padding", ctypes.c_char * 256),
    ]


# linux/kvm.h: struct kvm_run (the sync-regs union "s" kept as raw bytes)
class kvm_run(_Struct):
    _anonymous_ = ("u",)
    _fields_ = [
        ("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
        ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
        ("flags", u16), ("cr8", u64), ("apic_base", u64), ("u", _kvm_run_exit),
        ("kvm_valid_regs", u64), ("kvm_dirty_regs", u64), ("s", ctypes.c_char * 2048),
    ]


#: Sizes from the kernel headers (x86-64).
EXPECTED_SIZES: dict[type, int] = {
    kvm_regs: 144, kvm_segment: 24, kvm_dtable: 16, kvm_sregs: 312, kvm_fpu: 416,
    kvm_msr_entry: 16, kvm_msrs: 8, kvm_msr_list: 4, kvm_cpuid_entry2: 40, kvm_cpuid2: 8,
    kvm_lapic_state: 1024, kvm_mp_state: 4, kvm_vcpu_events: 64,
    kvm_userspace_memory_region: 32, kvm_irq_level: 8, kvm_irqchip: 520,
    kvm_pit_config: 64, kvm_irqfd: 32, kvm_ioeventfd: 64, kvm_clock_data: 48,
    kvm_irq_routing_entry: 48, kvm_irq_routing: 8, kvm_msi: 32, kvm_enable_cap: 104,
    kvm_translation: 24, kvm_run: 2352, kvm_xsave: 4096, kvm_xcr: 16, kvm_xcrs: 392,
    kvm_debugregs: 128, kvm_pit_channel_state: 24, kvm_pit_state2: 112,
}


def check_sizes() -> None:
    """Raise AssertionError if a mirror's size differs from the header's."""
    for struct, size in EXPECTED_SIZES.items():
        actual = ctypes.sizeof(struct)
        if actual != size:
            raise AssertionError(f"{struct.__name__}: sizeof is {actual}, linux/kvm.h says {size}")


def array_of(header: ctypes.Structure, entry_type: type, entries: int) -> ctypes.Array:
    """A byte buffer holding ``header`` followed by ``entries`` entries, for
    the kernel's variable-length structures (kvm_cpuid2, kvm_msrs, ...)."""
    size = ctypes.sizeof(header) + ctypes.sizeof(entry_type) * entries
    buf = (ctypes.c_char * size)()
    ctypes.memmove(buf, ctypes.addressof(header), ctypes.sizeof(header))
    return buf


check_sizes()
