#!/usr/bin/env python3
"""The KVM API, step by step: a real-mode guest that adds two numbers.

This is the classic walkthrough of the KVM API (as in LWN's "Using the KVM
API"), written against kvmlite's thin ioctl layer so that each call below is
exactly one ioctl:

    open /dev/kvm -> KVM_GET_API_VERSION -> KVM_CREATE_VM
    -> mmap guest RAM -> KVM_SET_USER_MEMORY_REGION -> KVM_CREATE_VCPU
    -> KVM_GET_VCPU_MMAP_SIZE + mmap(kvm_run) -> KVM_GET/SET_SREGS
    -> KVM_SET_REGS -> loop { KVM_RUN; look at kvm_run.exit_reason }

The guest is 12 bytes of 16-bit code loaded at 0x1000:

    mov dx, 0x3f8     ; the serial port
    add al, bl        ; al = a + b
    add al, '0'       ; to an ASCII digit
    out dx, al        ; -> KVM_EXIT_IO (out)
    mov al, 10        ; newline
    out dx, al        ; -> KVM_EXIT_IO (out)
    hlt               ; -> KVM_EXIT_HLT

Run it as root:  python3 examples/realmode_add.py 2 3    (prints "5")
"""

from __future__ import annotations

import mmap
import sys

from kvmlite.kvm import Kvm, exits
from kvmlite.kvm.uapi import KVM_CAP_USER_MEMORY

GUEST_CODE = bytes([
    0xBA, 0xF8, 0x03,  # mov dx, 0x3f8
    0x00, 0xD8,        # add al, bl
    0x04, ord("0"),    # add al, '0'
    0xEE,              # out dx, al
    0xB0, ord("\n"),   # mov al, '\n'
    0xEE,              # out dx, al
    0xF4,              # hlt
])
LOAD_ADDR = 0x1000
MEM_SIZE = 0x1000


def main(a: int, b: int) -> int:
    kvm = Kvm("/dev/kvm")                                   # open + KVM_GET_API_VERSION (checks 12)
    assert kvm.check_extension(KVM_CAP_USER_MEMORY)
    vm = kvm.create_vm()                                    # KVM_CREATE_VM

    ram = mmap.mmap(-1, MEM_SIZE)                           # one page of guest RAM
    ram[:len(GUEST_CODE)] = GUEST_CODE
    import ctypes
    host_addr = ctypes.addressof(ctypes.c_char.from_buffer(ram))
    vm.set_user_memory_region(slot=0, guest_phys_addr=LOAD_ADDR,  # KVM_SET_USER_MEMORY_REGION
                              size=MEM_SIZE, userspace_addr=host_addr)

    vcpu = vm.create_vcpu(0)                                # KVM_CREATE_VCPU; kvm_run mmapped
                                                            # with KVM_GET_VCPU_MMAP_SIZE's size
    sregs = vcpu.get_sregs()                                # KVM_GET_SREGS
    sregs.cs.base = 0                                       # real mode: CS base 0, selector 0
    sregs.cs.selector = 0
    vcpu.set_sregs(sregs)                                   # KVM_SET_SREGS

    regs = vcpu.get_regs()
    regs.rip = LOAD_ADDR
    regs.rax, regs.rbx = a, b
    regs.rflags = 0x2                                       # bit 1 is always set
    vcpu.set_regs(regs)                                     # KVM_SET_REGS

    out = bytearray()
    while True:
        exit = vcpu.run()                                   # KVM_RUN
        if isinstance(exit, exits.IoOut) and exit.port == 0x3F8:
            out += exit.data
        elif isinstance(exit, exits.Hlt):
            break
        else:
            print(f"unexpected exit: {exit}", file=sys.stderr)
            return 1
    sys.stdout.write(out.decode())
    return 0


def parse_args(argv: list[str]) -> tuple[int, int] | None:
    """Two non-negative integers whose sum is one digit, or None."""
    if not argv:
        return 2, 2
    if len(argv) != 2 or not all(x.isdigit() for x in argv):
        return None
    a, b = int(argv[0]), int(argv[1])
    return (a, b) if a + b < 10 else None


if __name__ == "__main__":
    numbers = parse_args(sys.argv[1:])
    if numbers is None:
        sys.exit("usage: realmode_add.py A B   (two numbers whose sum is one digit)")
    sys.exit(main(*numbers))
