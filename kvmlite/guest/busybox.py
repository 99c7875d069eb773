"""The static busybox that every kvmlite initramfs is built on.

A dynamically linked busybox would need its C library in the archive, so
only a static one will do: the host's ``/bin/busybox`` when it is static
(Debian's busybox-static package installs it there), else the binary from
the busybox-static package, fetched and unpacked into the cache.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from kvmlite.errors import KvmliteError
from kvmlite.guest import debian, elf
from kvmlite.guest.progress import QUIET, Progress

HOST_BUSYBOX = Path("/bin/busybox")
PACKAGE = "busybox-static"


def is_static_busybox(path: Path) -> bool:
    try:
        return path.is_file() and elf.is_static_executable(path.read_bytes(), str(path))
    except (OSError, elf.ElfError):
        return False


def find_busybox(cache: Path, progress: Progress = QUIET, host: Path = HOST_BUSYBOX) -> Path:
    """A static busybox binary: the host's, else the package's."""
    if is_static_busybox(host):
        return host
    unpacked = debian.fetch_unpacked(PACKAGE, cache, progress)
    path = unpacked.root / "bin" / "busybox"
    if not is_static_busybox(path):
        raise KvmliteError(f"{PACKAGE} {unpacked.ref.version} has no static bin/busybox")
    return path


def applets(busybox: Path) -> list[str]:
    """Install paths of every applet (``bin/sh``, ``sbin/insmod``, ...)."""
    try:
        done = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise KvmliteError(f"cannot list the applets of {busybox}: {exc}") from None
    paths = [line.strip().strip("/") for line in done.stdout.splitlines()]
    return [p for p in paths if "/" in p and p != "bin/busybox"]
