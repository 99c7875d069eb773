"""Placing kernel, initrd and command line in guest memory."""

from __future__ import annotations

import struct

import pytest

from kvmlite.arch.x86 import boot, layout
from kvmlite.loader.bzimage import parse_bzimage
from kvmlite.loader.kernel import KernelFile
from kvmlite.base.memory import GuestMemory
from tests.guests.build import setup_sectors

MiB = 1 << 20


def kernel(init_size: int = 0x10000, payload: bytes = b"\xf4" * 4096) -> KernelFile:
    data = setup_sectors(len(payload), init_size) + payload
    return KernelFile("k", data, parse_bzimage(data))


@pytest.fixture
def memory():
    mem = GuestMemory(32 * MiB)
    yield mem
    mem.close()


def test_setup_boot_bzimage_loads_payload_and_zero_page(memory: GuestMemory) -> None:
    layout_ = boot.setup_boot(memory, kernel(), "console=ttyS0", b"INITRD" * 100, None)
    assert memory.read(0x100000, 4096) == b"\xf4" * 4096
    assert layout_.entry.long_mode and layout_.entry.rip == 0x100200
    assert layout_.entry.boot_params == layout.ZERO_PAGE
    assert memory.read(layout.CMDLINE_ADDR, 14) == b"console=ttyS0\0"
    addr, size = layout_.initrd
    assert memory.read(addr, size) == b"INITRD" * 100
    assert addr % 4096 == 0 and addr + size <= 32 * MiB
    assert struct.unpack_from("<I", memory.read(layout.ZERO_PAGE + 0x218, 4))[0] == addr
    pml4 = struct.unpack("<Q", memory.read(layout.PML4_ADDR, 8))[0]
    assert pml4 & ~0xFFF == layout.PDPT_ADDR and pml4 & 1


def test_setup_boot_initrd_too_big_raises(memory: GuestMemory) -> None:
    with pytest.raises(boot.BootError, match="initrd of 31 MiB does not fit"):
        boot.setup_boot(memory, kernel(), "", bytes(31 * MiB), None)


def test_setup_boot_kernel_larger_than_ram_raises(memory: GuestMemory) -> None:
    with pytest.raises(boot.BootError, match="raise -m"):
        boot.setup_boot(memory, kernel(init_size=64 * MiB), "", None, None)


def test_setup_boot_cmdline_too_long_raises(memory: GuestMemory) -> None:
    with pytest.raises(boot.BootError, match="at most 2047"):
        boot.setup_boot(memory, kernel(), "x" * 3000, None, None)


def test_place_initrd_respects_initrd_addr_max(memory: GuestMemory) -> None:
    addr = boot.place_initrd(memory, 4096, kernel_end=0x200000, addr_max=0xFFFFFF)
    assert addr == 0x1000000 - 4096
