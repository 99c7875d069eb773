"""Open a kernel file and decide its format."""

from __future__ import annotations

import os
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
