"""Process-state helpers shared by the test layers."""

from __future__ import annotations


def gone_or_zombie(pid: int) -> bool:
    """True when process `pid` has ended: reaped (no /proc entry) or a zombie.

    The /proc entry can vanish between any two looks at it, so a read that
    finds it gone counts as gone rather than failing the test."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True
