"""boot_params and e820 bytes, checked at the offsets bootparam.h gives."""

from __future__ import annotations

import struct

from kvmlite.arch.x86 import bootparams as bp
from kvmlite.arch.x86 import e820, layout
from kvmlite.loader.bzimage import parse_bzimage
from tests.guests.build import setup_sectors

MiB = 1 << 20


def image():
    return parse_bzimage(setup_sectors(4096, 0x10000) + b"\x90" * 4096)


def test_memory_map_low_guest_splits_around_legacy_holes() -> None:
    entries = e820.memory_map([(0, 64 * MiB)])
    assert [(e.addr, e.size, e.type) for e in entries] == [
        (0, layout.EBDA_START, e820.E820_RAM),
        (layout.EBDA_START, layout.VGA_HOLE_START - layout.EBDA_START, e820.E820_RESERVED),
        (layout.ACPI_START, 0x100000 - layout.ACPI_START, e820.E820_RESERVED),
        (0x100000, 63 * MiB, e820.E820_RAM),
    ]
    assert e820.ram_total(entries) == 64 * MiB - (0x100000 - layout.EBDA_START)


def test_memory_map_large_guest_has_ram_above_4g() -> None:
    high = (layout.HIGH_RAM_START, 1 << 30)
    entries = e820.memory_map([(0, layout.MMIO_HOLE_START), high])
    assert (entries[-1].addr, entries[-1].size, entries[-1].type) == (*high, e820.E820_RAM)
    assert not any(e.addr < layout.MMIO_HOLE_END and e.addr + e.size > layout.MMIO_HOLE_START
                   for e in entries), "nothing may be listed inside the PCI hole"


def test_build_boot_params_fields_at_protocol_offsets() -> None:
    memmap = e820.memory_map([(0, 64 * MiB)])
    page = bp.build_boot_params(image(), cmdline_addr=0x20000, cmdline_len=10,
                                initrd=(0x3000000, 12345), e820=memmap, rsdp_addr=0xE0000)
    assert len(page) == 4096
    u32 = lambda off: struct.unpack_from("<I", page, off)[0]  # noqa: E731
    assert page[0x210] == 0xFF                                     # type_of_loader
    assert page[0x211] & bp.CAN_USE_HEAP and page[0x211] & 0x01    # loadflags keep LOADED_HIGH
    assert u32(0x228) == 0x20000 and u32(0x0C8) == 0               # cmd_line_ptr / ext
    assert (u32(0x218), u32(0x21C)) == (0x3000000, 12345)          # ramdisk image/size
    assert struct.unpack_from("<Q", page, 0x070)[0] == 0xE0000      # acpi_rsdp_addr
    assert page[0x1E8] == len(memmap)
    addr, size, typ = bp.E820_ENTRY.unpack_from(page, 0x2D0 + 20 * 3)
    assert (addr, size, typ) == (0x100000, 63 * MiB, e820.E820_RAM)
    assert page[0x202:0x206] == b"HdrS"                            # setup header copied
    assert page[bp.OFF_SENTINEL] == 0


def test_build_boot_params_initrd_above_4g_uses_ext_fields() -> None:
    page = bp.build_boot_params(image(), cmdline_addr=0x20000, cmdline_len=0,
                                initrd=(0x1_2345_6000, 1 << 33), e820=[], rsdp_addr=None)
    lo, hi = struct.unpack_from("<I", page, 0x218)[0], struct.unpack_from("<I", page, 0x0C0)[0]
    assert (hi << 32) | lo == 0x1_2345_6000
    size = struct.unpack_from("<I", page, 0x21C)[0] | (struct.unpack_from("<I", page, 0x0C4)[0] << 32)
    assert size == 1 << 33
