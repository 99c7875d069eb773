"""Parse and validate a Linux bzImage (Documentation/arch/x86/boot.rst).

A bzImage is a real-mode setup part of ``(setup_sects + 1) * 512`` bytes
followed by the protected-mode kernel.  kvmlite never runs the real-mode
part: it copies the setup header into ``boot_params`` and enters the
protected-mode part through the 64-bit boot protocol, at its load address
+ 0x200 (``startup_64``).  That needs boot protocol 2.12+ with
``XLF_KERNEL_64`` set.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmlite.errors import KvmliteError

# Offsets in the image (and in boot_params) of setup_header fields.
OFF_SETUP_SECTS = 0x1F1
OFF_SYSSIZE = 0x1F4
OFF_BOOT_FLAG = 0x1FE
OFF_JUMP = 0x200
OFF_HEADER = 0x202
OFF_VERSION = 0x206
OFF_LOADFLAGS = 0x211
OFF_CODE32_START = 0x214
OFF_INITRD_ADDR_MAX = 0x22C
OFF_KERNEL_ALIGNMENT = 0x230
OFF_RELOCATABLE = 0x234
OFF_XLOADFLAGS = 0x236
OFF_CMDLINE_SIZE = 0x238
OFF_PREF_ADDRESS = 0x258
OFF_INIT_SIZE = 0x260

BOOT_FLAG = 0xAA55
HEADER_MAGIC = b"HdrS"
MIN_VERSION = 0x020C          # 2.12: xloadflags, so XLF_KERNEL_64 can be checked
LOADED_HIGH = 0x01
XLF_KERNEL_64 = 0x01
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02
STARTUP_64_OFFSET = 0x200     # 64-bit entry: load address + 0x200
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF


class KernelImageError(KvmliteError):
    """A kernel file kvmlite cannot boot (corrupt, truncated, too old)."""


@dataclass(frozen=True)
class BzImage:
    """What the VMM needs to know from a bzImage's setup header."""

    setup_header: bytes      # boot_params[0x1f1 : header end], copied as the protocol says
    version: int             # boot protocol version, e.g. 0x020F
    setup_size: int          # bytes of the real-mode part (skipped)
    kernel_size: int         # bytes of the protected-mode part
    loadflags: int
    xloadflags: int
    initrd_addr_max: int
    cmdline_size: int
    kernel_alignment: int
    relocatable: bool
    pref_address: int
    init_size: int           # memory the kernel needs from its load address while booting

    @property
    def version_text(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"


def _u8(data: bytes, off: int) -> int:
    return data[off]


def _u16(data: bytes, off: int) -> int:
    return struct.unpack_from("<H", data, off)[0]


def _u32(data: bytes, off: int) -> int:
    return struct.unpack_from("<I", data, off)[0]


def _u64(data: bytes, off: int) -> int:
    return struct.unpack_from("<Q", data, off)[0]


def looks_like_bzimage(data: bytes) -> bool:
    return len(data) >= OFF_HEADER + 4 and data[OFF_HEADER:OFF_HEADER + 4] == HEADER_MAGIC


def parse_bzimage(data: bytes, name: str = "kernel") -> BzImage:
    """Validate ``data`` as a bzImage bootable through the 64-bit protocol.

    Raises :class:`KernelImageError` with a one-line reason otherwise."""
    if len(data) < 0x270:
        raise KernelImageError(f"{name}: file too short for a Linux kernel ({len(data)} bytes)")
    if not looks_like_bzimage(data):
        raise KernelImageError(f"{name}: no 'HdrS' signature at 0x202: not a bzImage")
    if _u16(data, OFF_BOOT_FLAG) != BOOT_FLAG:
        raise KernelImageError(f"{name}: boot flag at 0x1fe is not 0xAA55: corrupt bzImage")
    version = _u16(data, OFF_VERSION)
    if version < MIN_VERSION:
        raise KernelImageError(f"{name}: boot protocol {version >> 8}.{version & 0xFF:02d} is too old "
                               "(kvmlite needs 2.12 or later for the 64-bit entry)")
    xloadflags = _u16(data, OFF_XLOADFLAGS)
    if not xloadflags & XLF_KERNEL_64:
        raise KernelImageError(f"{name}: not a 64-bit kernel (XLF_KERNEL_64 is clear)")
    setup_sects = _u8(data, OFF_SETUP_SECTS) or 4
    setup_size = (setup_sects + 1) * 512
    syssize = _u32(data, OFF_SYSSIZE)
    kernel_size = len(data) - setup_size
    if kernel_size <= 0 or syssize == 0 or syssize * 16 > kernel_size:
        raise KernelImageError(f"{name}: truncated: the header announces {setup_size + syssize * 16} "
                               f"bytes, the file has {len(data)}")
    header_end = OFF_JUMP + 2 + _u8(data, OFF_JUMP + 1)   # the 2-byte jmp skips the header
    if not OFF_INIT_SIZE + 4 <= header_end <= setup_size:
        raise KernelImageError(f"{name}: setup header length {header_end - OFF_SETUP_SECTS} is invalid")
    init_size = _u32(data, OFF_INIT_SIZE)
    if init_size < kernel_size:
        raise KernelImageError(f"{name}: init_size {init_size:#x} is smaller than the kernel itself")
    return BzImage(
        setup_header=bytes(data[OFF_SETUP_SECTS:header_end]),
        version=version,
        setup_size=setup_size,
        kernel_size=kernel_size,
        loadflags=_u8(data, OFF_LOADFLAGS),
        xloadflags=xloadflags,
        initrd_addr_max=_u32(data, OFF_INITRD_ADDR_MAX) or DEFAULT_INITRD_ADDR_MAX,
        cmdline_size=_u32(data, OFF_CMDLINE_SIZE) or 255,
        kernel_alignment=_u32(data, OFF_KERNEL_ALIGNMENT),
        relocatable=bool(_u8(data, OFF_RELOCATABLE)),
        pref_address=_u64(data, OFF_PREF_ADDRESS),
        init_size=init_size,
    )
