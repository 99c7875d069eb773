"""Telling a stock Linux kernel from a purpose-built guest
(kvmlite.loader.kernel.linux_version), and the PVM warning built on it."""

from __future__ import annotations

import struct
from pathlib import Path

from kvmlite.loader.kernel import read_kernel, linux_version
from kvmlite.vmm.diagnose import NESTED_COMMAND, pvm_linux_warning
from tests.guests.build import setup_sectors

VERSION = b"6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1\x00"


def write_bzimage(path: Path, version: bytes | None) -> Path:
    payload = bytes(4096)
    setup = bytearray(setup_sectors(len(payload), 1 << 20))
    if version is not None:
        at = 0x300                                 # inside the setup sectors, as Linux's header.S puts it
        setup[at:at + len(version)] = version
        struct.pack_into("<H", setup, 0x20E, at - 0x200)
    path.write_bytes(bytes(setup) + payload)
    return path


def test_linux_version_bzimage_with_version_string_gives_release(tmp_path: Path) -> None:
    kernel = read_kernel(str(write_bzimage(tmp_path / "vmlinuz", VERSION)))
    assert linux_version(kernel) == "6.1.0-28-cloud-amd64"


def test_linux_version_purpose_built_bzimage_gives_none(tmp_path: Path) -> None:
    kernel = read_kernel(str(write_bzimage(tmp_path / "guest.bzImage", None)))
    assert linux_version(kernel) is None


def test_linux_version_pointer_to_garbage_gives_none(tmp_path: Path) -> None:
    kernel = read_kernel(str(write_bzimage(tmp_path / "odd", b"not a version\x00")))
    assert linux_version(kernel) is None


def test_pvm_linux_warning_stock_linux_on_pvm_one_line_naming_nested_command(tmp_path: Path) -> None:
    kernel = read_kernel(str(write_bzimage(tmp_path / "vmlinuz", VERSION)))
    warning = pvm_linux_warning(kernel, pvm=True)
    assert warning is not None and "\n" not in warning
    assert "PVM-based" in warning and "6.1.0-28-cloud-amd64" in warning and NESTED_COMMAND in warning


def test_pvm_linux_warning_hardware_kvm_or_purpose_built_guest_silent(tmp_path: Path) -> None:
    linux = read_kernel(str(write_bzimage(tmp_path / "vmlinuz", VERSION)))
    guest = read_kernel(str(write_bzimage(tmp_path / "guest", None)))
    assert pvm_linux_warning(linux, pvm=False) is None
    assert pvm_linux_warning(guest, pvm=True) is None
