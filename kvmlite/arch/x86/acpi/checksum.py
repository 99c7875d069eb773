"""The byte checksum shared by ACPI tables (ACPI 6.3 §5.2.5.3, §5.2.6),
resource templates (§6.4.2.9) and the Intel MP tables (MP spec 1.4 §4)."""

from __future__ import annotations


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` plus that byte sum to 0 modulo 256."""
    return (-sum(data)) & 0xFF


def with_checksum(data: bytes, offset: int) -> bytes:
    """``data`` with its checksum byte at ``offset`` (zero on entry) filled in."""
    if data[offset] != 0:
        raise ValueError("checksum field must be zero before it is computed")
    return data[:offset] + bytes([checksum(data)]) + data[offset + 1:]
