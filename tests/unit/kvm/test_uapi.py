"""Check kvmlite's copy of the KVM API against the machine's kernel headers.

A C program including <linux/kvm.h> prints every constant and struct size
that kvmlite defines; the test compares them one by one.  Needs gcc and the
kernel headers (Debian: linux-libc-dev).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmlite.kvm import structs, uapi

HEADER = Path("/usr/include/linux/kvm.h")

# Constants whose names differ from the header or that the header lacks.
NOT_IN_HEADER = {"KVMIO", "KVM_API_VERSION"}


def _constants() -> dict[str, int]:
    return {k: v for k, v in vars(uapi).items() if k.startswith("KVM_") and isinstance(v, int)
            and k not in NOT_IN_HEADER}


OFFSETS = {
    "kvm_run": ["immediate_exit", "exit_reason", "cr8", "apic_base", "kvm_valid_regs"],
    "kvm_sregs": ["gdt", "cr0", "efer", "apic_base", "interrupt_bitmap"],
    "kvm_fpu": ["last_ip", "xmm", "mxcsr"],
    "kvm_vcpu_events": ["sipi_vector", "flags", "smi", "exception_has_payload", "exception_payload"],
    "kvm_ioeventfd": ["datamatch", "addr", "len", "fd", "flags"],
    "kvm_clock_data": ["flags", "realtime", "host_tsc"],
}


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (apt-get install gcc)")
    if not HEADER.exists():
        pytest.skip(f"{HEADER} missing (apt-get install linux-libc-dev)")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/kvm.h>', 'int main(void) {']
    for name in _constants():
        lines.append(f'#ifdef {name}\nprintf("{name} %llu\\n", (unsigned long long)({name}));\n#endif')
    for name in structs.EXPECTED_SIZES:
        cname = name.__name__
        lines.append(f'printf("sizeof:{cname} %zu\\n", sizeof(struct {cname}));')
    for cname, fields in OFFSETS.items():
        for f in fields:
            lines.append(f'printf("offsetof:{cname}.{f} %zu\\n", offsetof(struct {cname}, {f}));')
    lines.append('return 0; }')
    tmp = tmp_path_factory.mktemp("uapi")
    src, exe = tmp / "uapi.c", tmp / "uapi"
    src.write_text("\n".join(lines))
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_uapi_constants_match_kernel_header(header_values: dict[str, int]) -> None:
    mine = _constants()
    missing = [n for n in mine if n not in header_values]
    wrong = {n: (hex(v), hex(header_values[n])) for n, v in mine.items()
             if n in header_values and header_values[n] != v}
    assert not wrong, f"constants differing from linux/kvm.h (ours, header): {wrong}"
    # A few names are absent from older headers; most must be present.
    assert len(missing) < 5, f"constants not found in linux/kvm.h: {missing}"


def test_structs_sizes_match_kernel_header(header_values: dict[str, int]) -> None:
    for struct, size in structs.EXPECTED_SIZES.items():
        assert ctypes.sizeof(struct) == header_values[f"sizeof:{struct.__name__}"], struct.__name__
        assert size == ctypes.sizeof(struct)


def test_structs_field_offsets_match_kernel_header(header_values: dict[str, int]) -> None:
    for cname, fields in OFFSETS.items():
        struct = getattr(structs, cname)
        for f in fields:
            assert getattr(struct, f).offset == header_values[f"offsetof:{cname}.{f}"], f"{cname}.{f}"


def test_check_sizes_with_wrong_expectation_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(structs.EXPECTED_SIZES, structs.kvm_regs, 140)
    with pytest.raises(AssertionError, match="kvm_regs"):
        structs.check_sizes()
