"""Process-state helpers shared by the test layers."""

from __future__ import annotations

import os


def gone_or_zombie(pid: int) -> bool:
    """True when process `pid` has ended: reaped (no /proc entry) or a zombie.

    The /proc entry can vanish between any two looks at it, so a read that
    finds it gone counts as gone rather than failing the test."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def open_descriptors() -> set[tuple[int, str, int, int]]:
    """This process's open file descriptors, each with what it refers to
    (its /proc link, device and inode), so that a descriptor closed and its
    number reused for another file reads as a different one."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            st = os.fstat(fd)
        except OSError:         # the listing's own descriptor, or one closed meanwhile
            continue
        found.add((fd, target, st.st_dev, st.st_ino))
    return found


def leaked_descriptors(before: set[tuple[int, str, int, int]]) -> set[tuple[int, str, int, int]]:
    """Descriptors open now that were not in ``before``.  One that another
    thread of an earlier test closes meanwhile (a late close, a garbage
    collection) is no leak of this test's, so only new ones count."""
    return open_descriptors() - before
