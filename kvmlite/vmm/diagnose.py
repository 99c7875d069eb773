"""Plain-language explanations for a guest KVM could not run.

An emulation failure (``KVM_EXIT_INTERNAL_ERROR``, suberror 1) means KVM met
an instruction it had to emulate and could not.  On hardware KVM this is
rare; on a PVM-based /dev/kvm (``/sys/module/kvm_pvm`` present: a
pagetable-based hypervisor that emulates guest kernel-mode code) a stock
Linux kernel hits it on instructions such as ``lock cmpxchg16b``,
``xrstor`` or ``syscall``.  The message names the instruction, where it was,
and what kind of KVM this is.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from kvmlite.kvm import exits as ex
from kvmlite.kvm import uapi
from kvmlite.kvm.ioctl import KvmError

if TYPE_CHECKING:
    from kvmlite.base.memory import GuestMemory
    from kvmlite.loader.kernel import KernelFile
    from kvmlite.vmm.vcpu import Vcpu

PVM_MODULE = "/sys/module/kvm_pvm"
NESTED_COMMAND = "python3 -m tests.nested.testhost --kvmlite"
SUBERRORS = {
    uapi.KVM_INTERNAL_ERROR_EMULATION: "emulation failure",
    uapi.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
    uapi.KVM_INTERNAL_ERROR_DELIVERY_EV: "failure while delivering an event",
    uapi.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected hardware exit",
}


def is_pvm() -> bool:
    return os.path.exists(PVM_MODULE)


def pvm_linux_warning(kernel: "KernelFile", pvm: bool | None = None) -> str | None:
    """One line for a stock Linux kernel about to boot on a PVM-based
    /dev/kvm, which ends, after minutes of emulation, in an emulation
    failure; None when that is not the case (purpose-built guests run well)."""
    from kvmlite.loader.kernel import linux_version

    if not (is_pvm() if pvm is None else pvm):
        return None
    version = linux_version(kernel)
    if version is None:
        return None
    return (f"this machine's /dev/kvm is PVM-based (kvm_pvm), which cannot run a stock Linux kernel "
            f"({version}): expect minutes of emulation, then an emulation failure; boot Linux on hardware "
            f"KVM or in the nested test host ({NESTED_COMMAND}, see docs/testing.md)")


def _strip_prefixes(code: bytes) -> tuple[bytes, int]:
    """Skip legacy prefixes and REX; return (rest, rex byte or 0)."""
    i, rex = 0, 0
    while i < len(code) and code[i] in (0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65):
        i += 1
    if i < len(code) and 0x40 <= code[i] <= 0x4F:
        rex = code[i]
        i += 1
    return code[i:], rex


def name_instruction(code: bytes) -> str | None:
    """Name the instruction at the start of ``code`` when it is one of those
    KVM emulation commonly fails on; None otherwise."""
    lock = b"\xf0" in code[:4]
    rest, rex = _strip_prefixes(code)
    if not rest:
        return None
    op = rest[0]
    if op == 0xCC:
        return "int3"
    if op == 0xF4:
        return "hlt"
    if op != 0x0F or len(rest) < 2:
        return None
    op2 = rest[1]
    modrm_reg = (rest[2] >> 3) & 7 if len(rest) > 2 else -1
    simple = {0x05: "syscall", 0x07: "sysret", 0x34: "sysenter", 0x35: "sysexit", 0x0B: "ud2",
              0x30: "wrmsr", 0x32: "rdmsr", 0xA2: "cpuid", 0x31: "rdtsc", 0x01: "system instruction (0f 01)",
              0x10: "SSE move (movups/movss)", 0x11: "SSE move (movups/movss)", 0x28: "SSE move (movaps)",
              0x29: "SSE move (movaps)", 0x6F: "SSE/MMX move (movdqa/movq)", 0x7F: "SSE/MMX move (movdqa/movq)",
              0xE7: "SSE store (movntdq)"}
    if op2 == 0xC7 and modrm_reg == 1:
        return ("lock " if lock else "") + ("cmpxchg16b" if rex & 0x08 else "cmpxchg8b")
    if op2 == 0xAE:
        return {0: "fxsave", 1: "fxrstor", 4: "xsave", 5: "xrstor", 6: "xsaveopt", 7: "clflush"}.get(
            modrm_reg, "0f ae group")
    return simple.get(op2)


def read_code(vcpu: "Vcpu", memory: "GuestMemory", rip_linear: int, length: int = 16) -> bytes | None:
    """Bytes at a guest-virtual address, through the guest's page tables."""
    try:
        phys = vcpu.fd.translate(rip_linear)
    except KvmError:
        return None
    if phys is None:
        return None
    length = min(length, 0x1000 - (phys & 0xFFF))
    try:
        return memory.read(phys, length)
    except ValueError:
        return None


def explain_internal_error(vcpu: "Vcpu", memory: "GuestMemory", e: ex.InternalError) -> str:
    """One paragraph: what failed, the instruction, where, and the kind of KVM."""
    what = SUBERRORS.get(e.suberror, f"suberror {e.suberror}")
    try:
        regs, sregs = vcpu.fd.get_regs(), vcpu.fd.get_sregs()
        rip = sregs.cs.base + regs.rip if not sregs.efer & (1 << 10) else regs.rip
        where = f"rip {regs.rip:#x}"
        code = read_code(vcpu, memory, rip)
    except KvmError:
        where, code = "an unknown address", None
    parts = [f"KVM could not run the guest: {what} on vCPU {vcpu.id} at {where}"]
    if code:
        name = name_instruction(code) if e.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION else None
        hexbytes = code[:15].hex(" ")
        parts.append(f"instruction {name} ({hexbytes})" if name else f"code bytes {hexbytes}")
    if is_pvm():
        parts.append("this machine's /dev/kvm is PVM-based (kvm_pvm): it emulates guest kernel code and "
                     "cannot run a stock Linux kernel; boot it on hardware KVM or inside the nested test "
                     "host (see docs/testing.md)")
    return "; ".join(parts)
