"""ELF parsing and the PVH entry note."""

from __future__ import annotations

import struct

import pytest

from kvmlite.loader import elf
from kvmlite.loader.bzimage import KernelImageError
from kvmlite.loader.kernel import read_kernel


def make_elf64(segments: list[tuple[int, bytes, int]], note: bytes | None) -> bytes:
    """An ELF64 with PT_LOAD segments (paddr, data, memsz) and an optional PT_NOTE."""
    phnum = len(segments) + (1 if note is not None else 0)
    ehdr_size, phdr_size = 64, 56
    offset = ehdr_size + phnum * phdr_size
    body, phdrs = b"", b""
    for paddr, data, memsz in segments:
        phdrs += struct.pack("<IIQQQQQQ", elf.PT_LOAD, 5, offset + len(body), paddr, paddr, len(data), memsz, 0x1000)
        body += data
    if note is not None:
        phdrs += struct.pack("<IIQQQQQQ", elf.PT_NOTE, 4, offset + len(body), 0, 0, len(note), len(note), 4)
        body += note
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, elf.EM_X86_64, 1, 0x100000, ehdr_size, 0, 0,
                       ehdr_size, phdr_size, phnum, 64, 0, 0)
    return ehdr + phdrs + body


def xen_note(ntype: int, desc: bytes, name: bytes = b"Xen\0") -> bytes:
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def test_parse_elf_pvh_note_gives_entry() -> None:
    note = xen_note(1, b"abcd") + xen_note(elf.XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", 0x1000123))
    image = elf.parse_elf(make_elf64([(0x1000000, b"\x90" * 64, 0x2000)], note))
    assert image.pvh_entry == 0x1000123
    assert image.segments[0].mem_size == 0x2000
    assert (image.lowest, image.highest) == (0x1000000, 0x1002000)


def test_parse_elf_note_with_other_owner_is_ignored() -> None:
    note = xen_note(elf.XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", 0x1000), name=b"GNU\0")
    assert elf.parse_elf(make_elf64([(0x100000, b"x", 1)], note)).pvh_entry is None


def test_read_kernel_elf_without_pvh_note_is_refused(tmp_path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(make_elf64([(0x100000, b"\x90" * 16, 16)], None))
    with pytest.raises(KernelImageError, match="no PVH entry note"):
        read_kernel(str(path))


def test_parse_elf_segment_past_end_of_file_raises() -> None:
    data = make_elf64([(0x100000, b"\x90" * 64, 64)], None)
    with pytest.raises(KernelImageError, match="truncated"):
        elf.parse_elf(data[:-10])


def test_parse_elf_filesz_larger_than_memsz_raises() -> None:
    with pytest.raises(KernelImageError, match="corrupt"):
        elf.parse_elf(make_elf64([(0x100000, b"\x90" * 64, 8)], None))


def test_parse_elf_wrong_machine_raises() -> None:
    data = bytearray(make_elf64([(0x100000, b"x", 1)], None))
    struct.pack_into("<H", data, 18, 40)  # EM_ARM
    with pytest.raises(KernelImageError, match="not x86"):
        elf.parse_elf(bytes(data))
