"""Small synthetic ELF64 files for unit tests: a relocatable object with a
``.modinfo`` section (what a kernel module looks like to kmod)."""

from __future__ import annotations

import struct
from pathlib import Path

SHT_PROGBITS = 1
SHT_STRTAB = 3


def _section_header(name: int, kind: int, offset: int, size: int) -> bytes:
    # elf.h Elf64_Shdr: name, type, flags, addr, offset, size, link, info, addralign, entsize
    return struct.pack("<IIQQQQIIQQ", name, kind, 0, 0, offset, size, 0, 0, 1, 0)


def module_elf(modinfo: dict[str, str] | list[tuple[str, str]]) -> bytes:
    """An ET_REL x86-64 ELF whose ``.modinfo`` holds ``key=value`` strings."""
    items = modinfo.items() if isinstance(modinfo, dict) else modinfo
    info = b"".join(f"{k}={v}".encode() + b"\0" for k, v in items)
    names = b"\0.modinfo\0.shstrtab\0"
    info_off = 64
    names_off = info_off + len(info)
    shoff = (names_off + len(names) + 7) & ~7
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    body = header + info + names
    body += bytes(shoff - len(body))
    sections = (_section_header(0, 0, 0, 0) + _section_header(1, SHT_PROGBITS, info_off, len(info))
                + _section_header(10, SHT_STRTAB, names_off, len(names)))
    return body + sections


def write_module(root: Path, relpath: str, depends: str = "", **extra: str) -> Path:
    """``root/relpath`` as a module named after its file, with ``depends=``."""
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.split(".ko")[0].replace("-", "_")
    path.write_bytes(module_elf({"name": name, "depends": depends, **extra}))
    return path
