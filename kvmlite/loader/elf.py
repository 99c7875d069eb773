"""Parse an ELF ``vmlinux`` and find its PVH entry point.

The PVH boot ABI (Xen's, used by Linux, QEMU and Firecracker): the kernel
advertises a 32-bit physical entry point in an ELF note named "Xen" of type
XEN_ELFNOTE_PHYS32_ENTRY (18).  The VMM loads the PT_LOAD segments at their
physical addresses and enters there in 32-bit protected mode with paging off
and ``%ebx`` pointing at a ``struct hvm_start_info``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmlite.loader.bzimage import KernelImageError

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
EM_386, EM_X86_64 = 3, 62
PT_LOAD, PT_NOTE = 1, 4
XEN_ELFNOTE_PHYS32_ENTRY = 18

_EHDR64 = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR64 = struct.Struct("<IIQQQQQQ")
_EHDR32 = struct.Struct("<16sHHIIIIIHHHHHH")
_PHDR32 = struct.Struct("<IIIIIIII")
_NOTE = struct.Struct("<III")


@dataclass(frozen=True)
class Segment:
    paddr: int
    file_offset: int
    file_size: int
    mem_size: int


@dataclass(frozen=True)
class ElfImage:
    segments: tuple[Segment, ...]
    pvh_entry: int | None
    entry: int

    @property
    def lowest(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def highest(self) -> int:
        return max(s.paddr + s.mem_size for s in self.segments)


def looks_like_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def _program_headers(data: bytes, name: str) -> tuple[int, list[tuple[int, ...]]]:
    if len(data) < 52:
        raise KernelImageError(f"{name}: truncated ELF header")
    cls, order = data[4], data[5]
    if order != ELFDATA2LSB:
        raise KernelImageError(f"{name}: big-endian ELF cannot run on x86")
    if cls == ELFCLASS64:
        if len(data) < _EHDR64.size:
            raise KernelImageError(f"{name}: truncated ELF header")
        (_, _, machine, _, entry, phoff, _, _, _, phentsize, phnum, *_rest) = _EHDR64.unpack_from(data)
        phdr = _PHDR64
    elif cls == ELFCLASS32:
        (_, _, machine, _, entry, phoff, _, _, _, phentsize, phnum, *_rest) = _EHDR32.unpack_from(data)
        phdr = _PHDR32
    else:
        raise KernelImageError(f"{name}: unknown ELF class {cls}")
    if machine not in (EM_386, EM_X86_64):
        raise KernelImageError(f"{name}: ELF machine {machine} is not x86")
    if phnum == 0 or phentsize < phdr.size:
        raise KernelImageError(f"{name}: ELF file has no program headers")
    if phoff + phnum * phentsize > len(data):
        raise KernelImageError(f"{name}: truncated: program headers run past the end of the file")
    headers = []
    for i in range(phnum):
        fields = phdr.unpack_from(data, phoff + i * phentsize)
        if phdr is _PHDR64:
            p_type, _flags, off, _vaddr, paddr, filesz, memsz, _align = fields
        else:
            p_type, off, _vaddr, paddr, filesz, memsz, _flags, _align = fields
        headers.append((p_type, off, paddr, filesz, memsz))
    return entry, headers


def _pvh_entry(data: bytes, off: int, size: int) -> int | None:
    """Walk one PT_NOTE segment for the Xen PHYS32_ENTRY note."""
    end = off + size
    while off + _NOTE.size <= end:
        namesz, descsz, ntype = _NOTE.unpack_from(data, off)
        name_off = off + _NOTE.size
        desc_off = name_off + ((namesz + 3) & ~3)
        next_off = desc_off + ((descsz + 3) & ~3)
        if next_off > end:
            return None
        if ntype == XEN_ELFNOTE_PHYS32_ENTRY and data[name_off:name_off + namesz].rstrip(b"\0") == b"Xen":
            if descsz >= 8:
                return struct.unpack_from("<Q", data, desc_off)[0] & 0xFFFFFFFF
            if descsz >= 4:
                return struct.unpack_from("<I", data, desc_off)[0]
        off = next_off
    return None


def parse_elf(data: bytes, name: str = "kernel") -> ElfImage:
    """Validate an ELF kernel; its PVH entry (if any) and loadable segments."""
    entry, headers = _program_headers(data, name)
    segments: list[Segment] = []
    pvh: int | None = None
    for p_type, off, paddr, filesz, memsz in headers:
        if p_type in (PT_LOAD, PT_NOTE) and off + filesz > len(data):
            raise KernelImageError(f"{name}: truncated: a segment runs past the end of the file")
        if p_type == PT_LOAD and memsz:
            if filesz > memsz:
                raise KernelImageError(f"{name}: corrupt ELF: segment file size exceeds memory size")
            segments.append(Segment(paddr, off, filesz, memsz))
        elif p_type == PT_NOTE and pvh is None:
            pvh = _pvh_entry(data, off, filesz)
    if not segments:
        raise KernelImageError(f"{name}: ELF file has no loadable segments")
    return ElfImage(tuple(segments), pvh, entry)
