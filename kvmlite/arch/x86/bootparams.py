"""``struct boot_params`` (the "zero page") for the Linux x86 boot protocol.

Layout from arch/x86/include/uapi/asm/bootparam.h; only the fields a VMM
fills are named.  The rest of the page stays zero, which also keeps
``sentinel`` (0x1ef) zero so the kernel trusts the fields we set.
"""

from __future__ import annotations

import struct

from kvmlite.arch.x86.e820 import E820Entry
from kvmlite.loader import bzimage as bz

BOOT_PARAMS_SIZE = 4096
OFF_ACPI_RSDP_ADDR = 0x070
OFF_EXT_RAMDISK_IMAGE = 0x0C0
OFF_EXT_RAMDISK_SIZE = 0x0C4
OFF_EXT_CMD_LINE_PTR = 0x0C8
OFF_E820_ENTRIES = 0x1E8
OFF_SENTINEL = 0x1EF
OFF_VID_MODE = 0x1FA
OFF_TYPE_OF_LOADER = 0x210
OFF_LOADFLAGS = 0x211
OFF_RAMDISK_IMAGE = 0x218
OFF_RAMDISK_SIZE = 0x21C
OFF_HEAP_END_PTR = 0x224
OFF_CMD_LINE_PTR = 0x228
OFF_E820_TABLE = 0x2D0
E820_MAX_ENTRIES = 128
E820_ENTRY = struct.Struct("<QQI")     # struct boot_e820_entry (packed, 20 bytes)

LOADER_TYPE_UNDEFINED = 0xFF           # "no assigned loader ID"
CAN_USE_HEAP = 0x80
VID_MODE_NORMAL = 0xFFFF
HEAP_END = 0xFE00                      # the protocol's usual value for a 0x10000 setup segment


def build_boot_params(image: bz.BzImage, *, cmdline_addr: int, cmdline_len: int,
                      initrd: tuple[int, int] | None, e820: list[E820Entry],
                      rsdp_addr: int | None) -> bytearray:
    """The zero page for a bzImage entered through the 64-bit protocol.

    ``initrd`` is (address, size) or None; ``cmdline_len`` excludes the NUL.
    """
    if len(e820) > E820_MAX_ENTRIES:
        raise ValueError(f"{len(e820)} e820 entries, boot_params holds {E820_MAX_ENTRIES}")
    page = bytearray(BOOT_PARAMS_SIZE)
    page[bz.OFF_SETUP_SECTS:bz.OFF_SETUP_SECTS + len(image.setup_header)] = image.setup_header
    page[OFF_TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED
    page[OFF_LOADFLAGS] |= CAN_USE_HEAP
    struct.pack_into("<H", page, OFF_HEAP_END_PTR, HEAP_END)
    struct.pack_into("<H", page, OFF_VID_MODE, VID_MODE_NORMAL)
    _pack_split(page, OFF_CMD_LINE_PTR, OFF_EXT_CMD_LINE_PTR, cmdline_addr)
    if initrd is not None:
        _pack_split(page, OFF_RAMDISK_IMAGE, OFF_EXT_RAMDISK_IMAGE, initrd[0])
        _pack_split(page, OFF_RAMDISK_SIZE, OFF_EXT_RAMDISK_SIZE, initrd[1])
    page[OFF_E820_ENTRIES] = len(e820)
    for i, entry in enumerate(e820):
        E820_ENTRY.pack_into(page, OFF_E820_TABLE + i * E820_ENTRY.size, entry.addr, entry.size, entry.type)
    if rsdp_addr is not None and image.version >= 0x020E:   # acpi_rsdp_addr: protocol 2.14+
        struct.pack_into("<Q", page, OFF_ACPI_RSDP_ADDR, rsdp_addr)
    return page


def _pack_split(page: bytearray, low_off: int, high_off: int, value: int) -> None:
    """A 64-bit value split into a 32-bit header field and its ext_ high half."""
    struct.pack_into("<I", page, low_off, value & 0xFFFFFFFF)
    struct.pack_into("<I", page, high_off, value >> 32)
