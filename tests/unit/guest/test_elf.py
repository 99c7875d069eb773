"""kvmlite.guest.elf on synthetic objects and real binaries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvmlite.guest import elf, exithelper

from .elffixture import module_elf


def test_section_data_modinfo_returns_contents() -> None:
    data = module_elf({"name": "foo", "depends": "bar"})
    assert elf.section_data(data, ".modinfo") == b"name=foo\0depends=bar\0"


def test_section_data_absent_section_returns_none() -> None:
    assert elf.section_data(module_elf({"name": "foo"}), ".text") is None


def test_sections_not_elf_raises_with_name() -> None:
    with pytest.raises(elf.ElfError, match="notes.txt is not an ELF file"):
        elf.sections(b"hello world" * 10, "notes.txt")


def test_sections_32bit_raises() -> None:
    data = bytearray(module_elf({"name": "x"}))
    data[4] = 1   # ELFCLASS32
    with pytest.raises(elf.ElfError, match="64-bit"):
        elf.sections(bytes(data), "x.ko")


def test_sections_truncated_raises() -> None:
    data = module_elf({"name": "x"})
    with pytest.raises(elf.ElfError, match="truncated"):
        elf.sections(data[:-20], "x.ko")


def test_is_static_executable_generated_helper_true() -> None:
    assert elf.is_static_executable(exithelper.build())


def test_is_static_executable_dynamic_python_false() -> None:
    python = Path(shutil.which("python3") or "/usr/bin/python3").resolve()
    data = python.read_bytes()
    if b"ld-linux" not in data[:4096]:
        pytest.skip(f"{python} is not dynamically linked here")
    assert not elf.is_static_executable(data)


def test_is_static_executable_relocatable_false() -> None:
    assert not elf.is_static_executable(module_elf({"name": "x"}))
