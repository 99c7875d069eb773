"""The ACPI table header and the small tables: RSDP, XSDT, FACS
(ACPI 6.3 §5.2).  FADT, MADT and DSDT have their own modules."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from kvmlite.arch.x86.acpi.checksum import with_checksum

# Identification written into every table (§5.2.6 System Description Table Header)
OEM_ID = b"KVMLIT"                 # 6 bytes
OEM_TABLE_ID = b"KVMLITE "         # 8 bytes
OEM_REVISION = 1
CREATOR_ID = b"KVML"               # the "compiler" that made the table: us
CREATOR_REVISION = 1

HEADER_FORMAT = "<4sIBB6s8sI4sI"   # §5.2.6, 36 bytes
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)
HEADER_CHECKSUM_OFFSET = 9

# §5.2.5.3 Root System Description Pointer, ACPI 2.0+ form
RSDP_SIGNATURE = b"RSD PTR "
RSDP_REVISION = 2
RSDP_FORMAT = "<8sB6sBIIQB3x"
RSDP_SIZE = struct.calcsize(RSDP_FORMAT)     # 36
RSDP_V1_SIZE = 20                  # the first checksum covers these bytes
RSDP_CHECKSUM_OFFSET = 8
RSDP_EXT_CHECKSUM_OFFSET = 32

XSDT_REVISION = 1                  # §5.2.8
XSDT_ENTRY_SIZE = 8

# §5.2.10 Firmware ACPI Control Structure
FACS_SIGNATURE = b"FACS"
FACS_SIZE = 64
FACS_VERSION = 2
FACS_ALIGNMENT = 64                # §5.2.10: "aligned on a 64-byte boundary"
FACS_FORMAT = "<4sIIIIIQB3xI24x"

# §5.2.3.2 Generic Address Structure
GAS_FORMAT = "<BBBBQ"
GAS_SIZE = struct.calcsize(GAS_FORMAT)       # 12
GAS_SYSTEM_MEMORY = 0
GAS_SYSTEM_IO = 1
ACCESS_BYTE = 1
ACCESS_WORD = 2
ACCESS_DWORD = 3


def sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A complete System Description Table: header (§5.2.6) + ``body``,
    with the length and checksum filled in."""
    length = HEADER_SIZE + len(body)
    header = struct.pack(HEADER_FORMAT, signature, length, revision, 0, OEM_ID,
                         OEM_TABLE_ID, OEM_REVISION, CREATOR_ID, CREATOR_REVISION)
    return with_checksum(header + body, HEADER_CHECKSUM_OFFSET)


def gas(space: int, byte_width: int, access: int, address: int) -> bytes:
    """A Generic Address Structure for a whole register at ``address``."""
    return struct.pack(GAS_FORMAT, space, byte_width * 8, 0, access, address)


def rsdp(xsdt_addr: int) -> bytes:
    """The RSDP (§5.2.5.3), revision 2, pointing at the XSDT only (the
    32-bit RsdtAddress is 0: there is no RSDT)."""
    raw = struct.pack(RSDP_FORMAT, RSDP_SIGNATURE, 0, OEM_ID, RSDP_REVISION,
                      0, RSDP_SIZE, xsdt_addr, 0)
    v1 = with_checksum(raw[:RSDP_V1_SIZE], RSDP_CHECKSUM_OFFSET)
    return with_checksum(v1 + raw[RSDP_V1_SIZE:], RSDP_EXT_CHECKSUM_OFFSET)


def xsdt(table_addrs: Sequence[int]) -> bytes:
    """The XSDT (§5.2.8): 64-bit addresses of every table but the DSDT
    and FACS (which the FADT points at)."""
    body = struct.pack(f"<{len(table_addrs)}Q", *table_addrs)
    return sdt(b"XSDT", XSDT_REVISION, body)


def facs() -> bytes:
    """The FACS (§5.2.10): no waking vector (no S3), no global lock
    owner, no 64-bit wake support; it has no checksum."""
    return struct.pack(FACS_FORMAT, FACS_SIGNATURE, FACS_SIZE, 0, 0, 0, 0, 0,
                       FACS_VERSION, 0)
