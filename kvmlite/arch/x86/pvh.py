"""``struct hvm_start_info`` for the PVH boot ABI
(xen/include/public/arch-x86/hvm/start_info.h, version 1)."""

from __future__ import annotations

import struct

from kvmlite.arch.x86.e820 import E820Entry

HVM_START_MAGIC = 0x336EC578
START_INFO = struct.Struct("<IIIIQQQQII")          # 56 bytes
MODLIST_ENTRY = struct.Struct("<QQQQ")             # 32 bytes
MEMMAP_ENTRY = struct.Struct("<QQII")              # 24 bytes


def build_start_info(*, cmdline_addr: int, rsdp_addr: int | None, modlist_addr: int,
                     initrd: tuple[int, int] | None, memmap_addr: int,
                     memmap_entries: int) -> bytes:
    return START_INFO.pack(HVM_START_MAGIC, 1, 0, 1 if initrd else 0,
                           modlist_addr if initrd else 0, cmdline_addr, rsdp_addr or 0,
                           memmap_addr, memmap_entries, 0)


def build_modlist(initrd: tuple[int, int]) -> bytes:
    return MODLIST_ENTRY.pack(initrd[0], initrd[1], 0, 0)


def build_memmap(e820: list[E820Entry]) -> bytes:
    return b"".join(MEMMAP_ENTRY.pack(e.addr, e.size, e.type, 0) for e in e820)
