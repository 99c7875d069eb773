"""Just enough ELF64 reading for kernel modules and static binaries.

Layouts from the System V gABI (``elf.h``): ``Elf64_Ehdr`` is 64 bytes,
``Elf64_Shdr`` 64 bytes, ``Elf64_Phdr`` 56 bytes, all little-endian on
x86-64.  Section names live in the string table section ``e_shstrndx``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmlite.errors import KvmliteError

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
PT_INTERP = 3

# elf.h: Elf64_Ehdr fields from e_type on (after the 16-byte e_ident)
_EHDR = struct.Struct("<HHIQQQIHHHHHH")
# elf.h: Elf64_Shdr
_SHDR = struct.Struct("<IIQQQQIIQQ")
# elf.h: Elf64_Phdr (p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align)
_PHDR = struct.Struct("<IIQQQQQQ")
assert _EHDR.size == 48 and _SHDR.size == 64 and _PHDR.size == 56


class ElfError(KvmliteError):
    """A file that is not a well-formed little-endian ELF64 object."""


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int


@dataclass(frozen=True)
class _Header:
    phoff: int
    shoff: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


def _header(data: bytes, what: str) -> _Header:
    if len(data) < 64 or data[:4] != ELF_MAGIC:
        raise ElfError(f"{what} is not an ELF file")
    if data[4] != ELFCLASS64 or data[5] != ELFDATA2LSB:
        raise ElfError(f"{what} is not a little-endian 64-bit ELF file")
    f = _EHDR.unpack_from(data, 16)
    return _Header(phoff=f[4], shoff=f[5], phentsize=f[8], phnum=f[9],
                   shentsize=f[10], shnum=f[11], shstrndx=f[12])


def _slice(data: bytes, offset: int, size: int, what: str) -> bytes:
    if offset + size > len(data):
        raise ElfError(f"{what} is truncated (needs {offset + size} bytes, has {len(data)})")
    return data[offset:offset + size]


def sections(data: bytes, what: str = "file") -> list[Section]:
    """Every section header, with names resolved through ``e_shstrndx``."""
    h = _header(data, what)
    if h.shnum == 0:
        return []
    if h.shentsize != _SHDR.size or h.shstrndx >= h.shnum:
        raise ElfError(f"{what} has a malformed section header table")
    raw = [_SHDR.unpack(_slice(data, h.shoff + i * _SHDR.size, _SHDR.size, what)) for i in range(h.shnum)]
    strtab = raw[h.shstrndx]
    names = _slice(data, strtab[4], strtab[5], what)
    return [Section(_cstr(names, s[0]), s[1], s[4], s[5]) for s in raw]


def section_data(data: bytes, name: str, what: str = "file") -> bytes | None:
    """The contents of section ``name``, or None when there is none."""
    for sec in sections(data, what):
        if sec.name == name:
            return _slice(data, sec.offset, sec.size, what)
    return None


def is_static_executable(data: bytes, what: str = "file") -> bool:
    """True when no program header names an interpreter (``PT_INTERP``).

    Static-PIE binaries have ``PT_DYNAMIC`` but still need no loader, so
    only ``PT_INTERP`` decides.
    """
    h = _header(data, what)
    if h.phnum == 0 or h.phentsize != _PHDR.size:
        return False
    types = [_PHDR.unpack(_slice(data, h.phoff + i * _PHDR.size, _PHDR.size, what))[0] for i in range(h.phnum)]
    return PT_INTERP not in types


def _cstr(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode("utf-8", "replace")
