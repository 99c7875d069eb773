"""kvmlite.vmm.snapshot.cpustate without /dev/kvm: a recording fake vCPU
and VM fd stand in for the kernel."""

from __future__ import annotations

import ctypes
import errno

import pytest

from kvmlite.base.state import StateError, pack_bytes
from kvmlite.kvm import KvmError, uapi
from kvmlite.kvm import structs as s
from kvmlite.vmm.snapshot import cpustate as cs

LSTAR = 0xC0000082


class FakeVcpu:
    """Records every set_* call; ``refuse`` names a method that raises KvmError."""

    def __init__(self, refuse: str = "", known_msrs: dict[int, int] | None = None) -> None:
        self.id = 0
        self.calls: list[tuple[str, object]] = []
        self.refuse = refuse
        self.known_msrs = known_msrs or {}

    def __getattr__(self, name: str):
        if not name.startswith("set_"):
            raise AttributeError(name)

        def record(arg: object) -> None:
            if name == self.refuse:
                raise KvmError(name.upper(), errno.EINVAL)
            self.calls.append((name, arg))
        return record

    def get_tsc_khz(self) -> int:
        return 2_000_000

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """Like KVM_GET_MSRS: stops at the first MSR it does not know."""
        out: dict[int, int] = {}
        for index in indices:
            if index not in self.known_msrs:
                break
            out[index] = self.known_msrs[index]
        return out


def vcpu_state(**changes: object) -> dict:
    state = {
        "mp_state": 0, "regs": pack_bytes(s.kvm_regs(rip=0x1000)), "sregs": pack_bytes(s.kvm_sregs()),
        "xsave": pack_bytes(bytes(4096)), "xcrs": pack_bytes(s.kvm_xcrs()),
        "debugregs": pack_bytes(s.kvm_debugregs()), "lapic": pack_bytes(s.kvm_lapic_state()),
        "msrs": [[cs.MSR_IA32_TSC_DEADLINE, 5], [LSTAR, 7], [cs.MSR_IA32_TSC, 9]],
        "vcpu_events": pack_bytes(s.kvm_vcpu_events()),
        "cpuid": pack_bytes(bytes(s.kvm_cpuid_entry2(function=1))), "tsc_khz": 2_000_000,
    }
    state.update(changes)
    return {k: v for k, v in state.items() if v is not None}


def test_cpustate_new_structs_match_header_sizes_and_offsets() -> None:
    s.check_sizes()
    assert ctypes.sizeof(s.kvm_xsave) == 4096
    assert ctypes.sizeof(s.kvm_xcrs) == 392 and s.kvm_xcrs.padding.offset == 264
    assert ctypes.sizeof(s.kvm_debugregs) == 128 and s.kvm_debugregs.dr7.offset == 40
    assert s.kvm_pit_channel_state.count_load_time.offset == 16
    assert ctypes.sizeof(s.kvm_pit_state2) == 112 and s.kvm_pit_state2.flags.offset == 72
    assert cs.IRQCHIP_SIZE == 512


def test_cpustate_new_ioctl_numbers() -> None:
    # linux/kvm.h, computed by hand from _IOR/_IOW(KVMIO, nr, size)
    assert uapi.KVM_GET_XSAVE == 0x9000AEA4 and uapi.KVM_SET_XSAVE == 0x5000AEA5
    assert uapi.KVM_GET_XSAVE2 == 0x9000AECF
    assert uapi.KVM_GET_XCRS == 0x8188AEA6 and uapi.KVM_SET_XCRS == 0x4188AEA7
    assert uapi.KVM_GET_DEBUGREGS == 0x8080AEA1 and uapi.KVM_SET_DEBUGREGS == 0x4080AEA2
    assert uapi.KVM_GET_PIT2 == 0x8070AE9F and uapi.KVM_SET_PIT2 == 0x4070AEA0
    assert uapi.KVM_SET_TSC_KHZ == 0xAEA2 and uapi.KVM_GET_TSC_KHZ == 0xAEA3


def test_restore_vcpu_valid_state_applies_in_safe_order() -> None:
    fd = FakeVcpu()
    cs.restore_vcpu(fd, vcpu_state())
    names = [name for name, _ in fd.calls]
    assert names == ["set_cpuid2", "set_regs", "set_sregs", "set_msrs", "set_xsave", "set_xcrs",
                     "set_debugregs", "set_lapic", "set_msrs", "set_mp_state", "set_vcpu_events"]
    msr_calls = [arg for name, arg in fd.calls if name == "set_msrs"]
    assert msr_calls == [[(cs.MSR_IA32_TSC, 9), (LSTAR, 7)], [(cs.MSR_IA32_TSC_DEADLINE, 5)]]
    assert fd.calls[1][1].rip == 0x1000


def test_restore_vcpu_other_tsc_khz_is_set_before_registers() -> None:
    fd = FakeVcpu()
    cs.restore_vcpu(fd, vcpu_state(tsc_khz=3_000_000))
    assert fd.calls[1] == ("set_tsc_khz", 3_000_000)


def test_restore_vcpu_pads_xsave_to_the_vm_size() -> None:
    fd = FakeVcpu()
    cs.restore_vcpu(fd, vcpu_state(), xsave_bytes=8192)
    assert len(dict(fd.calls)["set_xsave"]) == 8192


@pytest.mark.parametrize("changes, message", [
    ({"regs": None}, "vCPU 0: saved state lacks 'regs'"),
    ({"sregs": pack_bytes(bytes(311))}, "vCPU 0: sregs: 311 bytes, expected 312"),
    ({"lapic": "not base64!"}, "vCPU 0: lapic: not valid base64"),
    ({"xcrs": 5}, "vCPU 0: xcrs: expected base64 text, got int"),
    ({"xsave": pack_bytes(bytes(4095))}, "vCPU 0: xsave: 4095 bytes"),
    ({"xsave": pack_bytes(bytes(8192))}, "vCPU 0: xsave: 8192 bytes"),
    ({"cpuid": pack_bytes(bytes(41))}, "vCPU 0: cpuid: 41 bytes"),
    ({"cpuid": ""}, "vCPU 0: cpuid: 0 bytes"),
    ({"msrs": [[1, 2, 3]]}, r"vCPU 0: msrs\[0\]"),
    ({"msrs": [[LSTAR, 1 << 64]]}, r"vCPU 0: msrs\[0\]"),
    ({"msrs": {"a": 1}}, "vCPU 0: msrs is dict, expected a list"),
    ({"mp_state": "running"}, "vCPU 0: mp_state is str"),
    ({"tsc_khz": 0}, "vCPU 0: tsc_khz=0 is outside"),
    ({"vcpu_events": None}, "vCPU 0: saved state lacks 'vcpu_events'"),
])
def test_restore_vcpu_bad_field_is_state_error_and_nothing_applied(changes: dict, message: str) -> None:
    fd = FakeVcpu()
    with pytest.raises(StateError, match=message):
        cs.restore_vcpu(fd, vcpu_state(**changes))
    assert fd.calls == []


def test_restore_vcpu_not_a_dict_is_state_error() -> None:
    with pytest.raises(StateError, match="vCPU 0: saved state is list"):
        cs.restore_vcpu(FakeVcpu(), [])


def test_restore_vcpu_refused_ioctl_is_state_error_naming_it() -> None:
    fd = FakeVcpu(refuse="set_xsave")
    with pytest.raises(StateError, match="^vCPU 0: KVM_SET_XSAVE refused: .*Invalid argument"):
        cs.restore_vcpu(fd, vcpu_state())


def test_read_msrs_skips_the_msrs_kvm_stops_at() -> None:
    fd = FakeVcpu(known_msrs={0x10: 1, 0x174: 2, LSTAR: 3})
    assert cs.read_msrs(fd, [0x10, 0x999, 0x174, 0x998, 0x997, LSTAR, 0x996]) == [
        (0x10, 1), (0x174, 2), (LSTAR, 3)]
    assert cs.read_msrs(fd, []) == []


class FakeVm:
    def __init__(self, refuse: str = "") -> None:
        self.calls: list[tuple[str, object]] = []
        self.refuse = refuse

    def _record(self, name: str, arg: object) -> None:
        if name == self.refuse:
            raise KvmError(name.upper(), errno.ENXIO)
        self.calls.append((name, arg))

    def set_irqchip(self, chip: s.kvm_irqchip) -> None:
        self._record("set_irqchip", (chip.chip_id, bytes(chip)[8:]))

    def set_pit2(self, pit: s.kvm_pit_state2) -> None:
        self._record("set_pit2", pit.channels[0].count)

    def set_clock(self, clock: int) -> None:
        self._record("set_clock", clock)


def vm_state(**changes: object) -> dict:
    pit = s.kvm_pit_state2()
    pit.channels[0].count = 0x1234
    state = {"pic_master": pack_bytes(b"\x01" + bytes(511)), "pic_slave": pack_bytes(b"\x02" + bytes(511)),
             "ioapic": pack_bytes(bytes(511) + b"\x03"), "pit2": pack_bytes(pit),
             "clock": {"clock": 123456, "flags": 2, "realtime": 0, "host_tsc": 0}}
    state.update(changes)
    return {k: v for k, v in state.items() if v is not None}


def test_restore_vm_applies_chips_pit_and_clock() -> None:
    vm = FakeVm()
    cs.restore_vm(vm, vm_state())
    assert vm.calls == [("set_irqchip", (0, b"\x01" + bytes(511))), ("set_irqchip", (1, b"\x02" + bytes(511))),
                        ("set_irqchip", (2, bytes(511) + b"\x03")), ("set_pit2", 0x1234), ("set_clock", 123456)]


@pytest.mark.parametrize("changes, message", [
    ({"ioapic": None}, "VM: saved state lacks 'ioapic'"),
    ({"pic_slave": pack_bytes(bytes(520))}, "VM: pic_slave: 520 bytes, expected 512"),
    ({"pit2": pack_bytes(bytes(100))}, "VM: pit2: 100 bytes, expected 112"),
    ({"clock": 5}, "VM clock: saved state is int"),
    ({"clock": {"clock": -1, "flags": 0}}, "VM clock: clock=-1 is outside"),
    ({"clock": {"clock": 1}}, "VM clock: saved state lacks 'flags'"),
])
def test_restore_vm_bad_field_is_state_error_and_nothing_applied(changes: dict, message: str) -> None:
    vm = FakeVm()
    with pytest.raises(StateError, match=message):
        cs.restore_vm(vm, vm_state(**changes))
    assert vm.calls == []


def test_restore_vm_refused_ioctl_names_the_chip() -> None:
    with pytest.raises(StateError, match=r"^VM: KVM_SET_IRQCHIP \(pic_master\) refused"):
        cs.restore_vm(FakeVm(refuse="set_irqchip"), vm_state())
    with pytest.raises(StateError, match="^VM: KVM_SET_CLOCK refused"):
        cs.restore_vm(FakeVm(refuse="set_clock"), vm_state())
