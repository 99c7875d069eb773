"""Root disk images: an ext4 filesystem made from a directory.

``mkfs.ext4 -d DIR`` (e2fsprogs >= 1.43) copies a directory tree into the
new filesystem without mounting anything, so no root is needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from kvmlite.errors import KvmliteError, UsageError

MiB = 1 << 20
MIN_SIZE = 8 * MiB
SBIN_DIRS = ("/usr/sbin", "/sbin")   # not on a normal user's PATH
_SIZE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``64M``, ``1G``, ``512MiB``, ``1048576`` -> bytes (powers of 1024)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise UsageError(f"bad size '{text}' (examples: 512M, 2G)")
    number, unit = int(match.group(1)), match.group(2).upper()
    return number << (10 * "_KMGT".index(unit)) if unit else number


def tree_size(directory: Path) -> int:
    """Bytes used by the files under ``directory`` (not following symlinks)."""
    total = 0
    for base, dirs, files in os.walk(directory):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


def default_size(directory: Path) -> int:
    """Room for the tree plus ext4's metadata and some free space, in whole MiB."""
    size = max(MIN_SIZE, int(tree_size(directory) * 1.5) + 16 * MiB)
    return -(-size // MiB) * MiB


def find_mkfs() -> str:
    path = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path=os.pathsep.join(SBIN_DIRS))
    if path is None:
        raise KvmliteError("mkfs.ext4 not found: install e2fsprogs (apt-get install e2fsprogs)")
    return path


def build_image(directory: Path, image: Path, size: int | None = None, label: str = "kvmlite-root") -> Path:
    """Write an ext4 image of ``directory`` to ``image`` (replacing it)."""
    if not directory.is_dir():
        raise UsageError(f"rootfs directory {directory} does not exist")
    parent = image.absolute().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise KvmliteError(f"cannot write {image}: directory {parent} is not writable")
    mkfs = find_mkfs()
    size = size if size is not None else default_size(directory)
    tmp = parent / f".{image.name}.tmp"
    try:
        with tmp.open("wb") as f:
            f.truncate(size)
        _mkfs(mkfs, directory, tmp, label)
        tmp.replace(image)
    finally:
        tmp.unlink(missing_ok=True)
    return image


def _mkfs(mkfs: str, directory: Path, image: Path, label: str) -> None:
    argv = [mkfs, "-q", "-F", "-L", label, "-d", str(directory), str(image)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise KvmliteError(f"mkfs.ext4 could not build {image.name.lstrip('.').removesuffix('.tmp')}: {reason}")
