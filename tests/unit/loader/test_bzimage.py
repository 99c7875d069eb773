"""Setup-header validation of good, corrupt and truncated bzImages."""

from __future__ import annotations

import struct

import pytest

from kvmlite.loader import bzimage as bz
from kvmlite.loader.kernel import read_kernel
from tests.guests.build import setup_sectors


def make_image(payload: bytes = b"\x90" * 4096, init_size: int = 0x10000) -> bytearray:
    return bytearray(setup_sectors(len(payload), init_size) + payload)


def test_parse_bzimage_valid_image_reports_header_fields() -> None:
    image = bz.parse_bzimage(bytes(make_image()))
    assert image.version == 0x020F
    assert image.setup_size == 1024
    assert image.kernel_size == 4096
    assert image.init_size == 0x10000
    assert image.xloadflags & bz.XLF_KERNEL_64
    assert image.setup_header[:1] == b"\x01"          # setup_sects is the first byte copied
    assert len(image.setup_header) == 0x26C - 0x1F1


@pytest.mark.parametrize("offset, value, message", [
    (0x202, b"XXXX", "not a bzImage"),
    (0x1FE, b"\x00\x00", "boot flag"),
    (0x206, struct.pack("<H", 0x0206), "too old"),
    (0x236, struct.pack("<H", 0), "not a 64-bit kernel"),
    (0x260, struct.pack("<I", 16), "init_size"),
    (0x201, b"\x00", "setup header length"),
])
def test_parse_bzimage_corrupt_field_raises(offset: int, value: bytes, message: str) -> None:
    data = make_image()
    data[offset:offset + len(value)] = value
    with pytest.raises(bz.KernelImageError, match=message):
        bz.parse_bzimage(bytes(data), "k")


def test_parse_bzimage_truncated_payload_raises() -> None:
    data = make_image()[:-100]
    with pytest.raises(bz.KernelImageError, match="truncated"):
        bz.parse_bzimage(bytes(data), "k")


def test_parse_bzimage_short_file_raises() -> None:
    with pytest.raises(bz.KernelImageError, match="too short"):
        bz.parse_bzimage(b"\0" * 100, "k")


def test_parse_bzimage_zero_setup_sects_means_four() -> None:
    payload = b"\x90" * 4096
    data = bytearray(setup_sectors(len(payload), 0x10000))
    data[0x1F1] = 0
    data += bytes(5 * 512 - len(data)) + payload        # 4 setup sectors + boot sector
    assert bz.parse_bzimage(bytes(data)).setup_size == 5 * 512


def test_read_kernel_neither_format_raises(tmp_path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"just text, not a kernel" * 100)
    with pytest.raises(bz.KernelImageError, match="neither a bzImage nor an ELF"):
        read_kernel(str(path))


def test_read_kernel_missing_file_raises_one_line(tmp_path) -> None:
    with pytest.raises(bz.KernelImageError) as info:
        read_kernel(str(tmp_path / "nope"))
    assert "no such file" in str(info.value) and "\n" not in str(info.value)


def test_read_kernel_directory_raises(tmp_path) -> None:
    with pytest.raises(bz.KernelImageError, match="is a directory"):
        read_kernel(str(tmp_path))
