"""Put a kernel, its initrd and command line into guest memory and describe
how to enter it.

bzImage: the protected-mode part goes to 1 MiB, boot_params to the zero
page, entry at +0x200 in 64-bit mode (Linux boot protocol, "64-bit boot
protocol").  ELF: PT_LOAD segments at their physical addresses, entry at the
PVH note in 32-bit protected mode with ``hvm_start_info``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmlite.arch.x86 import bootparams, e820, layout, pvh
from kvmlite.arch.x86.regs import BootEntry, boot_memory_blobs
from kvmlite.errors import ConfigError
from kvmlite.loader.bzimage import STARTUP_64_OFFSET, BzImage
from kvmlite.loader.elf import ElfImage
from kvmlite.loader.kernel import KernelFile
from kvmlite.base.memory import GuestMemory, GuestMemoryError

PAGE = 0x1000
PVH_INITRD_ADDR_MAX = 0xFFFFFFFF


class BootError(ConfigError):
    """The kernel, initrd or command line do not fit the VM as configured."""


@dataclass(frozen=True)
class BootLayout:
    entry: BootEntry
    kernel_range: tuple[int, int]          # [start, end) the kernel may occupy
    initrd: tuple[int, int] | None         # (address, size)
    e820: list[e820.E820Entry]


def _low_ram_end(memory: GuestMemory) -> int:
    return memory.regions[0].end


def _write(memory: GuestMemory, addr: int, data: bytes, what: str) -> None:
    try:
        memory.write(addr, data)
    except GuestMemoryError:
        raise BootError(f"{what} ({len(data)} bytes at {addr:#x}) does not fit in guest memory; "
                        f"give the guest more memory with -m") from None


def _cmdline_bytes(cmdline: str, limit: int) -> bytes:
    raw = cmdline.encode()
    if b"\0" in raw:
        raise BootError("kernel command line contains a NUL byte")
    if len(raw) > limit:
        raise BootError(f"kernel command line is {len(raw)} bytes; this kernel accepts at most {limit}")
    return raw


def _load_bzimage(memory: GuestMemory, kernel: KernelFile, image: BzImage) -> tuple[int, int]:
    start = layout.BZIMAGE_LOAD_ADDR
    end = start + max(image.init_size, image.kernel_size)
    if end > _low_ram_end(memory):
        raise BootError(f"kernel needs {end >> 20} MiB of low memory to boot; "
                        f"the guest has {_low_ram_end(memory) >> 20} MiB (raise -m)")
    _write(memory, start, kernel.data[image.setup_size:], "kernel")
    return start, end


def _load_elf(memory: GuestMemory, kernel: KernelFile, image: ElfImage) -> tuple[int, int]:
    for seg in image.segments:
        if seg.paddr < layout.HIGH_MEMORY_START:
            raise BootError(f"{kernel.path}: ELF segment at {seg.paddr:#x} overlaps the boot data below 1 MiB")
        if not memory.contains(seg.paddr, seg.mem_size):
            raise BootError(f"{kernel.path}: ELF segment {seg.paddr:#x}+{seg.mem_size:#x} is outside guest RAM "
                            "(raise -m)")
        memory.write(seg.paddr, kernel.data[seg.file_offset:seg.file_offset + seg.file_size])
        memory.fill(seg.paddr + seg.file_size, seg.mem_size - seg.file_size)
    return image.lowest, image.highest


def place_initrd(memory: GuestMemory, size: int, kernel_end: int, addr_max: int) -> int:
    """Highest page-aligned address for the initrd below ``addr_max`` and the
    end of low RAM, above the kernel."""
    top = min(_low_ram_end(memory), addr_max + 1)
    addr = (top - size) & ~(PAGE - 1)
    if size > top or addr < kernel_end:
        room = max(0, top - kernel_end) >> 20
        raise BootError(f"initrd of {size >> 20} MiB does not fit: {room} MiB free between the kernel "
                        f"and {top:#x} (raise -m)")
    return addr


def setup_boot(memory: GuestMemory, kernel: KernelFile, cmdline: str, initrd: bytes | None,
               rsdp_addr: int | None) -> BootLayout:
    """Write everything the kernel needs into ``memory``; return how to enter it."""
    image = kernel.image
    memmap = e820.memory_map([(r.guest_addr, r.size) for r in memory.regions])
    if isinstance(image, BzImage):
        limit, addr_max = min(image.cmdline_size, layout.CMDLINE_MAX - 1), image.initrd_addr_max
        kernel_range = _load_bzimage(memory, kernel, image)
    else:
        limit, addr_max = layout.CMDLINE_MAX - 1, PVH_INITRD_ADDR_MAX
        kernel_range = _load_elf(memory, kernel, image)
    raw_cmdline = _cmdline_bytes(cmdline, limit)
    _write(memory, layout.CMDLINE_ADDR, raw_cmdline + b"\0", "command line")
    initrd_at = None
    if initrd is not None:
        initrd_at = (place_initrd(memory, len(initrd), kernel_range[1], addr_max), len(initrd))
        _write(memory, initrd_at[0], initrd, "initrd")
    if isinstance(image, BzImage):
        page = bootparams.build_boot_params(image, cmdline_addr=layout.CMDLINE_ADDR,
                                            cmdline_len=len(raw_cmdline), initrd=initrd_at,
                                            e820=memmap, rsdp_addr=rsdp_addr)
        _write(memory, layout.ZERO_PAGE, bytes(page), "boot_params")
        entry = BootEntry(rip=layout.BZIMAGE_LOAD_ADDR + STARTUP_64_OFFSET, long_mode=True,
                          boot_params=layout.ZERO_PAGE)
    else:
        entry = _setup_pvh(memory, image, memmap, initrd_at, rsdp_addr)
    for addr, blob in boot_memory_blobs(entry):
        _write(memory, addr, blob, "boot tables")
    return BootLayout(entry, kernel_range, initrd_at, memmap)


def _setup_pvh(memory: GuestMemory, image: ElfImage, memmap: list[e820.E820Entry],
               initrd: tuple[int, int] | None, rsdp_addr: int | None) -> BootEntry:
    if len(memmap) > layout.PVH_MEMMAP_MAX:
        raise BootError(f"{len(memmap)} memory map entries; PVH start info holds {layout.PVH_MEMMAP_MAX}")
    if initrd is not None:
        memory.write(layout.PVH_MODLIST_ADDR, pvh.build_modlist(initrd))
    memory.write(layout.PVH_MEMMAP_ADDR, pvh.build_memmap(memmap))
    memory.write(layout.PVH_INFO_ADDR, pvh.build_start_info(
        cmdline_addr=layout.CMDLINE_ADDR, rsdp_addr=rsdp_addr, modlist_addr=layout.PVH_MODLIST_ADDR,
        initrd=initrd, memmap_addr=layout.PVH_MEMMAP_ADDR, memmap_entries=len(memmap)))
    assert image.pvh_entry is not None
    return BootEntry(rip=image.pvh_entry, long_mode=False, start_info=layout.PVH_INFO_ADDR)
