"""A writer for the "new ASCII" (newc, magic ``070701``) cpio format, the
format the Linux kernel unpacks into its rootfs at boot.

Format (Documentation/driver-api/early-userspace/buffer-format.rst and
cpio(5)): each member is a 110-byte header of the magic and thirteen 8-digit
hexadecimal fields, then the NUL-terminated name, padded with NULs so that
header + name is a multiple of 4 bytes, then the data, padded to a multiple
of 4.  A member named ``TRAILER!!!`` ends the archive.  A symlink's data is
its target.  Device nodes carry their numbers in ``rdevmajor``/``rdevminor``.

Archives are deterministic: fixed mtime, uid and gid 0, inode numbers given
in order of addition, so the same inputs give the same bytes (and the same
checksum in the setup manifest).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
FIXED_MTIME = 0


@dataclass(frozen=True)
class Entry:
    """One archive member; ``mode`` includes the file-type bits."""

    name: str
    mode: int
    data: bytes = b""
    nlink: int = 1
    rdev_major: int = 0
    rdev_minor: int = 0


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def encode_entry(entry: Entry, ino: int) -> bytes:
    """One member: header, padded name, padded data."""
    name = entry.name.encode() + b"\0"
    fields = (
        ino, entry.mode, 0, 0, entry.nlink, FIXED_MTIME, len(entry.data),
        0, 0, entry.rdev_major, entry.rdev_minor, len(name), 0,
    )
    header = MAGIC + b"".join(b"%08X" % f for f in fields)
    assert len(header) == HEADER_SIZE
    return header + name + _pad4(HEADER_SIZE + len(name)) + entry.data + _pad4(len(entry.data))


def _normalise(path: str) -> str:
    name = path.strip("/")
    if not name or ".." in name.split("/"):
        raise ValueError(f"bad archive path: {path!r}")
    return name


class CpioWriter:
    """Collects members in order; parent directories are added on demand.

    Names are stored without a leading slash (``bin/sh``), as the kernel's
    own ``gen_init_cpio`` and ``cpio -H newc`` do.
    """

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._names: set[str] = set()

    def __contains__(self, path: str) -> bool:
        return _normalise(path) in self._names

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        name = _normalise(path)
        if name not in self._names:
            self._add(Entry(name, stat.S_IFDIR | mode, nlink=2))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(Entry(_normalise(path), stat.S_IFREG | mode, data))

    def add_symlink(self, path: str, target: str) -> None:
        self._add(Entry(_normalise(path), stat.S_IFLNK | 0o777, target.encode()))

    def add_chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(Entry(_normalise(path), stat.S_IFCHR | mode, rdev_major=major, rdev_minor=minor))

    def _add(self, entry: Entry) -> None:
        if entry.name in self._names:
            raise ValueError(f"duplicate archive path: {entry.name}")
        self._add_parents(entry.name)
        self._entries.append(entry)
        self._names.add(entry.name)

    def _add_parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.add_dir("/".join(parts[:i]))

    def getvalue(self) -> bytes:
        """The whole archive, trailer included."""
        chunks = [encode_entry(e, ino) for ino, e in enumerate(self._entries, start=1)]
        chunks.append(encode_entry(Entry(TRAILER, 0), 0))
        return b"".join(chunks)

    def write_to(self, out: BinaryIO) -> int:
        data = self.getvalue()
        out.write(data)
        return len(data)
