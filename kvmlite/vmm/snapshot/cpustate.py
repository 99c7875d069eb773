"""The KVM-held state of the vCPUs and of the VM, as state dicts
(:mod:`kvmlite.base.state`).

A vCPU's state is what ``linux/kvm.h`` lets userspace read back: general
and special registers, the XSAVE area (x87/SSE/AVX; it covers KVM_GET_FPU),
XCR0, the debug registers, the MSRs KVM saves for a guest, the in-kernel
local APIC, pending events, the MP state, the CPUID table and the TSC
frequency.  The VM's is the in-kernel irqchip (both 8259 PICs and the
IOAPIC), the i8254 PIT and kvmclock.

Raw kernel structs go into the dict as base64 of their bytes, and are
checked for their exact size on restore.  Restore parses the whole dict
before the first ioctl, so a bad dict changes nothing; an ioctl KVM refuses
becomes a :class:`StateError` naming the part and the ioctl.

Orders (Documentation/virt/kvm/api.rst, QEMU target/i386/kvm/kvm.c,
Firecracker vstate/vcpu):

* save: MP state first (KVM_GET_MP_STATE may settle pending INIT/SIPI
  events, api.rst), then the rest; the vCPU must be parked outside KVM_RUN;
* restore: CPUID first (KVM validates XCR0, XSAVE and MSRs against it),
  the TSC frequency before any TSC value, registers and special registers
  (EFER and the APIC base live there), the MSRs with IA32_TSC first, the
  XSAVE area, XCRs, debug registers, the LAPIC, then IA32_TSC_DEADLINE (KVM
  drops a deadline written while the LAPIC is not in TSC-deadline mode, so
  QEMU writes it after the LAPIC too), the MP state and last the events.

``restore_vm`` is called before ``restore_vcpu`` (as Firecracker does),
on a VM built with the in-kernel irqchip and PIT2.
"""

from __future__ import annotations

import ctypes
from typing import Callable, TypeVar

from kvmlite.base.state import Reader, StateError, pack_bytes
from kvmlite.kvm import Kvm, KvmError, VcpuFd, VmFd, uapi
from kvmlite.kvm import structs as s

MSR_IA32_TSC = 0x10
MSR_IA32_TSC_DEADLINE = 0x6E0
# MTRRs (Intel SDM vol. 3 §11.11): KVM emulates them but leaves them out of
# KVM_GET_MSR_INDEX_LIST; QEMU saves them by name, and so does kvmlite.
MSR_MTRR_PHYS_BASE0 = 0x200
MTRR_VARIABLE_PAIRS = 8                      # KVM's MTRRcap.VCNT
MSR_MTRR_FIX = (0x250, 0x258, 0x259, *range(0x268, 0x270))
MSR_MTRR_DEF_TYPE = 0x2FF
MTRR_MSRS = (*range(MSR_MTRR_PHYS_BASE0, MSR_MTRR_PHYS_BASE0 + 2 * MTRR_VARIABLE_PAIRS),
             *MSR_MTRR_FIX, MSR_MTRR_DEF_TYPE)

XSAVE_SIZE = ctypes.sizeof(s.kvm_xsave)
CPUID_ENTRY_SIZE = ctypes.sizeof(s.kvm_cpuid_entry2)
CPUID_MAX_ENTRIES = 4096
IRQCHIPS = {"pic_master": uapi.KVM_IRQCHIP_PIC_MASTER, "pic_slave": uapi.KVM_IRQCHIP_PIC_SLAVE,
            "ioapic": uapi.KVM_IRQCHIP_IOAPIC}
IRQCHIP_SIZE = s.kvm_irqchip.chip.size       # the union in struct kvm_irqchip: 512 bytes

_T = TypeVar("_T", bound=ctypes.Structure)


# --- MSRs -----------------------------------------------------------------

def msrs_to_save(kvm: Kvm) -> list[int]:
    """The MSRs to save for each vCPU: KVM_GET_MSR_INDEX_LIST (what KVM
    keeps per guest: TSC, SYSENTER, STAR/LSTAR/CSTAR/SFMASK, KERNEL_GS_BASE,
    TSC_AUX, PAT, MISC_ENABLE, TSC_DEADLINE, the kvmclock MSRs
    0x4b564d00.., ...) plus the MTRRs.  Feature MSRs are left out; EFER and
    the APIC base travel in the special registers.  Which of these a given
    vCPU really has is decided at save time (:func:`read_msrs`)."""
    return list(dict.fromkeys([*kvm.msr_index_list(), *MTRR_MSRS]))


def read_msrs(fd: VcpuFd, indices: list[int]) -> list[tuple[int, int]]:
    """KVM_GET_MSRS in one batch; where KVM stops early (an MSR this vCPU
    lacks), skip that MSR and go on with the rest."""
    values: list[tuple[int, int]] = []
    rest = list(indices)
    while rest:
        got = fd.get_msrs(rest)
        values += [(index, got[index]) for index in rest[:len(got)] if index in got]
        rest = rest[len(got) + 1:]
    return values


def _msr_restore_order(msrs: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(MSRs to set before the LAPIC with IA32_TSC first, IA32_TSC_DEADLINE to set after it)."""
    first = [m for m in msrs if m[0] == MSR_IA32_TSC]
    late = [m for m in msrs if m[0] == MSR_IA32_TSC_DEADLINE]
    middle = [m for m in msrs if m[0] not in (MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE)]
    return first + middle, late


# --- vCPU -------------------------------------------------------------------

def xsave_size(vm_fd: VmFd) -> int:
    """Bytes of one vCPU's XSAVE area: KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on
    the VM, 4096 when KVM predates it (asm/kvm.h: struct kvm_xsave)."""
    return max(XSAVE_SIZE, vm_fd.check_extension(uapi.KVM_CAP_XSAVE2))


def save_vcpu(fd: VcpuFd, msr_indices: list[int], *, xsave_bytes: int = XSAVE_SIZE) -> dict:
    """The state dict of a parked vCPU (keys in :data:`VCPU_KEYS`).

    ``msr_indices`` come from :func:`msrs_to_save`; ``xsave_bytes`` from
    :func:`xsave_size` (above 4096 only with dynamic XSAVE features)."""
    mp_state = fd.get_mp_state()
    xsave = fd.get_xsave2(xsave_bytes) if xsave_bytes > XSAVE_SIZE else bytes(fd.get_xsave())
    cpuid = fd.get_cpuid2()
    return {
        "mp_state": mp_state,
        "regs": pack_bytes(fd.get_regs()),
        "sregs": pack_bytes(fd.get_sregs()),
        "xsave": pack_bytes(xsave),
        "xcrs": pack_bytes(fd.get_xcrs()),
        "debugregs": pack_bytes(fd.get_debugregs()),
        "lapic": pack_bytes(fd.get_lapic()),
        "msrs": [[index, value] for index, value in read_msrs(fd, msr_indices)],
        "vcpu_events": pack_bytes(fd.get_vcpu_events()),
        "cpuid": pack_bytes(b"".join(bytes(entry) for entry in cpuid)),
        "tsc_khz": fd.get_tsc_khz(),
    }


VCPU_KEYS = ("mp_state", "regs", "sregs", "xsave", "xcrs", "debugregs", "lapic", "msrs",
             "vcpu_events", "cpuid", "tsc_khz")


class _VcpuState:
    """A vCPU state dict, parsed and checked before anything is applied."""

    def __init__(self, state: object, part: str, xsave_bytes: int) -> None:
        r = Reader(state, part)
        self.cpuid = _cpuid_entries(r)
        self.tsc_khz = r.int("tsc_khz", 1, 0xFFFFFFFF)
        self.regs = _struct(r, "regs", s.kvm_regs)
        self.sregs = _struct(r, "sregs", s.kvm_sregs)
        self.msrs = _msr_pairs(r)
        self.xsave = _xsave(r, xsave_bytes)
        self.xcrs = _struct(r, "xcrs", s.kvm_xcrs)
        self.debugregs = _struct(r, "debugregs", s.kvm_debugregs)
        self.lapic = _struct(r, "lapic", s.kvm_lapic_state)
        self.mp_state = r.int("mp_state", 0, 0xFFFFFFFF)
        self.vcpu_events = _struct(r, "vcpu_events", s.kvm_vcpu_events)


def restore_vcpu(fd: VcpuFd, state: dict, *, xsave_bytes: int = XSAVE_SIZE) -> None:
    """Load a :func:`save_vcpu` dict into a freshly created vCPU that has not
    run yet.  Raises StateError ("vCPU 0: ...") for a bad dict (before
    changing anything) or an ioctl KVM refuses."""
    part = f"vCPU {fd.id}"
    st = _VcpuState(state, part, xsave_bytes)
    early_msrs, late_msrs = _msr_restore_order(st.msrs)
    _apply(part, "KVM_SET_CPUID2", lambda: fd.set_cpuid2(st.cpuid))
    _apply(part, "KVM_SET_TSC_KHZ", lambda: _set_tsc_khz(fd, st.tsc_khz))
    _apply(part, "KVM_SET_REGS", lambda: fd.set_regs(st.regs))
    _apply(part, "KVM_SET_SREGS", lambda: fd.set_sregs(st.sregs))
    _apply(part, "KVM_SET_MSRS", lambda: _set_msrs(fd, early_msrs))
    _apply(part, "KVM_SET_XSAVE", lambda: fd.set_xsave(st.xsave))
    _apply(part, "KVM_SET_XCRS", lambda: fd.set_xcrs(st.xcrs))
    _apply(part, "KVM_SET_DEBUGREGS", lambda: fd.set_debugregs(st.debugregs))
    _apply(part, "KVM_SET_LAPIC", lambda: fd.set_lapic(st.lapic))
    _apply(part, "KVM_SET_MSRS", lambda: _set_msrs(fd, late_msrs))
    _apply(part, "KVM_SET_MP_STATE", lambda: fd.set_mp_state(st.mp_state))
    _apply(part, "KVM_SET_VCPU_EVENTS", lambda: fd.set_vcpu_events(st.vcpu_events))


def _set_tsc_khz(fd: VcpuFd, khz: int) -> None:
    """KVM_SET_TSC_KHZ only when the frequency differs: without
    KVM_CAP_TSC_CONTROL KVM cannot scale, and setting the same value is a
    no-op (Firecracker does the same)."""
    if fd.get_tsc_khz() != khz:
        fd.set_tsc_khz(khz)


def _set_msrs(fd: VcpuFd, msrs: list[tuple[int, int]]) -> None:
    if msrs:
        fd.set_msrs(msrs)


def _apply(part: str, what: str, action: Callable[[], object]) -> None:
    try:
        action()
    except KvmError as exc:
        raise StateError(f"{part}: {what} refused: {exc}") from None


# --- parsing helpers ----------------------------------------------------------

def _struct(r: Reader, key: str, struct: type[_T]) -> _T:
    """A kernel struct from base64 of exactly its size."""
    return struct.from_buffer_copy(r.bytes(key, ctypes.sizeof(struct)))


def _cpuid_entries(r: Reader) -> list[s.kvm_cpuid_entry2]:
    data = r.bytes("cpuid")
    count, extra = divmod(len(data), CPUID_ENTRY_SIZE)
    if extra or not 0 < count <= CPUID_MAX_ENTRIES:
        raise StateError(f"{r.part}: cpuid: {len(data)} bytes is not 1..{CPUID_MAX_ENTRIES} "
                         f"entries of {CPUID_ENTRY_SIZE}")
    return [s.kvm_cpuid_entry2.from_buffer_copy(data, i * CPUID_ENTRY_SIZE) for i in range(count)]


def _msr_pairs(r: Reader) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    for i, item in enumerate(r.list("msrs")):
        ok = (isinstance(item, list) and len(item) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
              and 0 <= item[0] <= 0xFFFFFFFF and 0 <= item[1] < 1 << 64)
        if not ok:
            raise StateError(f"{r.part}: msrs[{i}]={item!r} is not an [index, value] pair of a u32 and a u64")
        pairs.append((item[0], item[1]))
    return pairs


def _xsave(r: Reader, xsave_bytes: int) -> bytes:
    """The XSAVE area, zero-padded to this VM's size (the zero tail is the
    init state of components the saved xstate_bv does not name)."""
    data = r.bytes("xsave")
    most = max(xsave_bytes, XSAVE_SIZE)
    if not XSAVE_SIZE <= len(data) <= most or len(data) % 4:
        raise StateError(f"{r.part}: xsave: {len(data)} bytes, expected a multiple of 4 "
                         f"from {XSAVE_SIZE} to {most} (KVM_CAP_XSAVE2 of this VM)")
    return data.ljust(xsave_bytes, b"\0")


# --- VM -----------------------------------------------------------------------

def save_vm(vm_fd: VmFd) -> dict:
    """The VM-wide KVM state: PICs, IOAPIC, PIT and kvmclock (keys in
    :data:`VM_KEYS`).  Called with every vCPU parked."""
    state: dict = {name: pack_bytes(_chip_bytes(vm_fd.get_irqchip(chip))) for name, chip in IRQCHIPS.items()}
    state["pit2"] = pack_bytes(vm_fd.get_pit2())
    clock = vm_fd.get_clock()
    state["clock"] = {"clock": clock.clock, "flags": clock.flags, "realtime": clock.realtime,
                      "host_tsc": clock.host_tsc}
    return state


VM_KEYS = (*IRQCHIPS, "pit2", "clock")


def restore_vm(vm_fd: VmFd, state: dict) -> None:
    """Load a :func:`save_vm` dict into a fresh VM with the in-kernel irqchip
    and PIT2.  kvmclock restarts at the saved value: the guest sees no time
    pass while it was saved (the KVM_CLOCK_REALTIME flag is kept in the dict
    but not acted on).  Raises StateError ("VM: ...")."""
    part = "VM"
    r = Reader(state, part)
    chips = [(name, _irqchip(chip_id, r.bytes(name, IRQCHIP_SIZE))) for name, chip_id in IRQCHIPS.items()]
    pit = _struct(r, "pit2", s.kvm_pit_state2)
    clock_state = r.sub("clock")
    clock = clock_state.int("clock")
    clock_state.int("flags", 0, 0xFFFFFFFF)      # kept for the record; see the docstring
    for name, chip in chips:
        _apply(part, f"KVM_SET_IRQCHIP ({name})", lambda: vm_fd.set_irqchip(chip))
    _apply(part, "KVM_SET_PIT2", lambda: vm_fd.set_pit2(pit))
    _apply(part, "KVM_SET_CLOCK", lambda: vm_fd.set_clock(clock))


def _chip_bytes(chip: s.kvm_irqchip) -> bytes:
    """The 512-byte ``chip`` union of a struct kvm_irqchip (reading the
    c_char field would stop at the first NUL)."""
    return bytes(chip)[s.kvm_irqchip.chip.offset:]


def _irqchip(chip_id: int, data: bytes) -> s.kvm_irqchip:
    chip = s.kvm_irqchip(chip_id=chip_id)
    ctypes.memmove(ctypes.addressof(chip) + s.kvm_irqchip.chip.offset, data, IRQCHIP_SIZE)
    return chip
