"""Open a kernel file and decide its format."""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

from kvmlite.loader.bzimage import BzImage, KernelImageError, looks_like_bzimage, parse_bzimage
from kvmlite.loader.elf import ElfImage, looks_like_elf, parse_elf

MAX_KERNEL_SIZE = 512 << 20


@dataclass(frozen=True)
class KernelFile:
    path: str
    data: bytes
    image: BzImage | ElfImage


def read_file(path: str, what: str, limit: int) -> bytes:
    """Read a whole file with one-line errors for the usual mistakes."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise KernelImageError(f"{what} {path}: {size} bytes is larger than the {limit >> 20} MiB limit")
            return f.read()
    except FileNotFoundError:
        raise KernelImageError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise KernelImageError(f"{what} {path}: is a directory") from None
    except PermissionError:
        raise KernelImageError(f"{what} {path}: permission denied") from None
    except OSError as exc:
        raise KernelImageError(f"{what} {path}: {exc.strerror}") from None


def read_kernel(path: str) -> KernelFile:
    data = read_file(path, "kernel", MAX_KERNEL_SIZE)
    if looks_like_elf(data):
        image: BzImage | ElfImage = parse_elf(data, path)
        if image.pvh_entry is None:
            raise KernelImageError(f"{path}: ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); "
                                   "boot its bzImage instead")
    elif looks_like_bzimage(data):
        image = parse_bzimage(data, path)
    else:
        raise KernelImageError(f"{path}: neither a bzImage nor an ELF kernel")
    return KernelFile(path, data, image)


# Linux's banner ("Linux version 6.1.0-28-cloud-amd64 (...) #1 SMP ...") in
# an ELF vmlinux; a bzImage's setup header points at the version string
# (Documentation/arch/x86/boot.rst: kernel_version at 0x20E, an offset from
# 0x200 of the file, protocol 2.00 and later).
_BANNER = re.compile(rb"Linux version (\d+\.\d+[^\s\x00]*)")
_VERSION = re.compile(rb"(\d+\.\d+[^\s\x00]*)")
KERNEL_VERSION_OFFSET = 0x20E


def linux_version(kernel: KernelFile) -> str | None:
    """The Linux release a kernel image carries (``6.1.0-28-cloud-amd64``),
    or None for a kernel that is not Linux (a purpose-built guest)."""
    if isinstance(kernel.image, BzImage):
        pointer = struct.unpack_from("<H", kernel.data, KERNEL_VERSION_OFFSET)[0] if len(kernel.data) > 0x210 else 0
        if not pointer:
            return None
        match = _VERSION.match(kernel.data, 0x200 + pointer, 0x200 + pointer + 128)
    else:
        match = _BANNER.search(kernel.data)
    return match.group(1).decode(errors="replace") if match else None
