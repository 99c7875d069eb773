"""Kernel image formats: bzImage (64-bit boot protocol) and ELF (PVH)."""

from kvmlite.loader.bzimage import BzImage, KernelImageError, parse_bzimage
from kvmlite.loader.elf import ElfImage, parse_elf
from kvmlite.loader.kernel import KernelFile, read_kernel

__all__ = ["BzImage", "ElfImage", "KernelFile", "KernelImageError", "parse_bzimage", "parse_elf",
           "read_kernel"]
