"""Segment descriptors: the GDT written to guest memory and the matching
``kvm_segment`` values loaded into the vCPU (KVM uses the cached values in
``kvm_sregs``, the guest uses the table once it reloads a selector)."""

from __future__ import annotations

import struct

from kvmlite.kvm.structs import kvm_segment

# Linux boot protocol: __BOOT_CS = 0x10, __BOOT_DS = 0x18.
SEL_CODE = 0x10
SEL_DATA = 0x18
SEL_TSS = 0x20

# Access bytes / flags (Intel SDM vol. 3, 3.4.5).
TYPE_CODE_XR_ACCESSED = 0xB
TYPE_DATA_RW_ACCESSED = 0x3
TYPE_TSS_BUSY = 0xB


def descriptor(base: int, limit: int, type_: int, *, s: int, dpl: int = 0, present: int = 1,
               avl: int = 0, l: int = 0, db: int = 0, g: int = 1) -> int:
    """Encode a 64-bit segment descriptor."""
    access = type_ | (s << 4) | (dpl << 5) | (present << 7)
    flags = avl | (l << 1) | (db << 2) | (g << 3)
    return ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40)
            | (((limit >> 16) & 0xF) << 48) | (flags << 52) | (((base >> 24) & 0xFF) << 56))


def segment_from_descriptor(desc: int, selector: int) -> kvm_segment:
    """The kvm_segment a CPU would cache after loading ``selector``."""
    limit = (desc & 0xFFFF) | (((desc >> 48) & 0xF) << 16)
    g = (desc >> 55) & 1
    return kvm_segment(
        base=((desc >> 16) & 0xFFFFFF) | (((desc >> 56) & 0xFF) << 24),
        limit=(limit << 12) | 0xFFF if g else limit,
        selector=selector, type=(desc >> 40) & 0xF, s=(desc >> 44) & 1,
        dpl=(desc >> 45) & 3, present=(desc >> 47) & 1, avl=(desc >> 52) & 1,
        l=(desc >> 53) & 1, db=(desc >> 54) & 1, g=g, unusable=0)


def boot_gdt(long_mode: bool) -> list[int]:
    """null, null, code (0x10), data (0x18), TSS (0x20): flat 4 GiB segments.

    The code segment is 64-bit (L=1) for the 64-bit boot protocol and
    32-bit (D=1) for PVH's protected-mode entry."""
    code = (descriptor(0, 0xFFFFF, TYPE_CODE_XR_ACCESSED, s=1, l=1) if long_mode
            else descriptor(0, 0xFFFFF, TYPE_CODE_XR_ACCESSED, s=1, db=1))
    data = descriptor(0, 0xFFFFF, TYPE_DATA_RW_ACCESSED, s=1, db=1)
    tss = descriptor(0, 0x67, TYPE_TSS_BUSY, s=0, g=0)
    return [0, 0, code, data, tss]


def pack_gdt(entries: list[int]) -> bytes:
    return b"".join(struct.pack("<Q", e) for e in entries)
