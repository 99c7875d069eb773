"""An encoder for the part of AML (ACPI 6.3 §20) a static DSDT needs.

Every function returns the encoded bytes of one term.  By convention a
``bytes`` argument is *already-encoded AML* (the result of another function
here); Python ``int`` and ``str`` values are encoded as AML Integer and
String objects.  Raw buffer contents go through :func:`buffer`.

Nothing here evaluates AML; the guest's interpreter (ACPICA in Linux) does.
The encodings are checked byte for byte against ``iasl`` output in
``tests/unit/arch/x86/test_aml.py``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence

# §20.2.3 data objects encoding
ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
# §20.2.5 term objects encoding
NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
RETURN_OP = 0xA4
NOTIFY_OP = 0x86
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82                   # after EXT_OP_PREFIX
# §20.2.2 name objects encoding
ROOT_CHAR = ord("\\")
PARENT_PREFIX_CHAR = ord("^")
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
NULL_NAME = 0x00

ONES = bytes([ONES_OP])            # the Integer with every bit set
ZERO = bytes([ZERO_OP])
ONE = bytes([ONE_OP])

PKG_LENGTH_MAX = (1 << 28) - 1     # §20.2.4: 4 bits + 3 bytes
PACKAGE_MAX_ELEMENTS = 255         # PackageOp's NumElements is one byte
METHOD_MAX_ARGS = 7
METHOD_MAX_SYNC_LEVEL = 15

_NAME_SEG = re.compile(r"[A-Z_][A-Z0-9_]{0,3}")

Data = int | str | bytes           # what Name/Package/Return accept


def name_seg(seg: str) -> bytes:
    """One NameSeg (§20.2.2): a lead A-Z or '_', then A-Z, 0-9 or '_',
    padded with '_' to four characters."""
    if not _NAME_SEG.fullmatch(seg):
        raise ValueError(f"invalid AML NameSeg {seg!r}")
    return seg.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """A NameString (§20.2.2): ``\\`` for the root, ``^`` per parent
    level, then dot-separated segments ("\\_SB.PCI0", "^PCI0", "_HID")."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = bytes([ROOT_CHAR]), path[1:]
    else:
        parents = len(path) - len(path.lstrip("^"))
        prefix, path = bytes([PARENT_PREFIX_CHAR]) * parents, path[parents:]
    segs = [name_seg(s) for s in path.split(".")] if path else []
    return prefix + _name_path(segs)


def _name_path(segs: list[bytes]) -> bytes:
    if not segs:
        return bytes([NULL_NAME])
    if len(segs) == 1:
        return segs[0]
    if len(segs) == 2:
        return bytes([DUAL_NAME_PREFIX]) + b"".join(segs)
    if len(segs) > 255:
        raise ValueError("AML MultiNamePath holds at most 255 segments")
    return bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)


def pkg_length(body_len: int) -> bytes:
    """The PkgLength (§20.2.4) of a package whose contents after the
    PkgLength are ``body_len`` bytes; the encoded length counts itself."""
    for size, limit in ((1, 1 << 6), (2, 1 << 12), (3, 1 << 20), (4, 1 << 28)):
        total = body_len + size
        if total < limit:
            return _pkg_length_bytes(total, size)
    raise ValueError(f"AML package of {body_len} bytes exceeds PkgLength ({PKG_LENGTH_MAX})")


def _pkg_length_bytes(total: int, size: int) -> bytes:
    if size == 1:
        return bytes([total])
    lead = ((size - 1) << 6) | (total & 0x0F)
    rest = [(total >> (4 + 8 * i)) & 0xFF for i in range(size - 1)]
    return bytes([lead, *rest])


def integer(value: int) -> bytes:
    """An Integer (§20.2.3) in its shortest form: Zero, One, or a
    Byte/Word/DWord/QWord prefix.  Use :data:`ONES` for all bits set."""
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"AML integer out of range: {value}")
    if value in (0, 1):
        return bytes([value])
    for prefix, fmt, limit in ((BYTE_PREFIX, "<B", 1 << 8), (WORD_PREFIX, "<H", 1 << 16),
                               (DWORD_PREFIX, "<I", 1 << 32)):
        if value < limit:
            return bytes([prefix]) + struct.pack(fmt, value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def string(text: str) -> bytes:
    """A String (§20.2.3): ASCII 0x01-0x7F, NUL-terminated."""
    raw = text.encode("ascii")
    if b"\x00" in raw:
        raise ValueError("AML strings cannot contain NUL")
    return bytes([STRING_PREFIX]) + raw + b"\x00"


def data(value: Data) -> bytes:
    """Encode a Python value as an AML data object (bytes pass through)."""
    if isinstance(value, bool):
        raise TypeError("use 0 or 1, not bool, for AML integers")
    if isinstance(value, int):
        return integer(value)
    if isinstance(value, str):
        return string(value)
    return value


def eisa_id(text: str) -> bytes:
    """EISAID("PNP0A03") (ACPI 6.3 §19.6.35): three letters of five bits
    each and four hex digits, stored as a byte-swapped 32-bit Integer."""
    if not re.fullmatch(r"[A-Z]{3}[0-9A-F]{4}", text):
        raise ValueError(f"invalid EISA id {text!r}")
    letters = [ord(c) - 0x40 for c in text[:3]]
    value = (letters[0] << 26) | (letters[1] << 21) | (letters[2] << 16) | int(text[3:], 16)
    return bytes([DWORD_PREFIX]) + struct.pack(">I", value)


def _package_op(opcode: bytes, body: bytes) -> bytes:
    return opcode + pkg_length(len(body)) + body


def buffer(contents: bytes) -> bytes:
    """Buffer (§20.2.5.4 DefBuffer) holding ``contents``."""
    return _package_op(bytes([BUFFER_OP]), integer(len(contents)) + contents)


def package(elements: Sequence[Data]) -> bytes:
    """Package (§20.2.5.4 DefPackage) of up to 255 elements."""
    if len(elements) > PACKAGE_MAX_ELEMENTS:
        raise ValueError(f"AML Package holds at most {PACKAGE_MAX_ELEMENTS} elements")
    body = bytes([len(elements)]) + b"".join(data(e) for e in elements)
    return _package_op(bytes([PACKAGE_OP]), body)


def name(path: str, value: Data) -> bytes:
    """Name (§20.2.5.1 DefName): bind ``path`` to a data object."""
    return bytes([NAME_OP]) + name_string(path) + data(value)


def scope(path: str, terms: Sequence[bytes]) -> bytes:
    """Scope (§20.2.5.1 DefScope): open ``path`` and add ``terms`` to it."""
    return _package_op(bytes([SCOPE_OP]), name_string(path) + b"".join(terms))


def device(path: str, terms: Sequence[bytes]) -> bytes:
    """Device (§20.2.5.2 DefDevice)."""
    return _package_op(bytes([EXT_OP_PREFIX, DEVICE_OP]), name_string(path) + b"".join(terms))


def method(path: str, args: int, terms: Sequence[bytes], serialized: bool = False,
           sync_level: int = 0) -> bytes:
    """Method (§20.2.5.2 DefMethod).  MethodFlags: bits 0-2 ArgCount,
    bit 3 SerializeFlag, bits 4-7 SyncLevel."""
    if not 0 <= args <= METHOD_MAX_ARGS or not 0 <= sync_level <= METHOD_MAX_SYNC_LEVEL:
        raise ValueError("AML Method takes 0-7 arguments and a SyncLevel of 0-15")
    flags = args | (int(serialized) << 3) | (sync_level << 4)
    body = name_string(path) + bytes([flags]) + b"".join(terms)
    return _package_op(bytes([METHOD_OP]), body)


def notify(path: str, value: int) -> bytes:
    """Notify (§19.6.92, §20.2.5.3 DefNotify): NotifyOp NotifyObject NotifyValue."""
    return bytes([NOTIFY_OP]) + name_string(path) + integer(value)


def return_(value: Data) -> bytes:
    """Return (§20.2.5.3 DefReturn)."""
    return bytes([RETURN_OP]) + data(value)
