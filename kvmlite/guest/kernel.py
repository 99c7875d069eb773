"""Where a guest kernel comes from: the host's own, or a Debian package.

The host's kernel (``/boot/vmlinuz-$(uname -r)`` with
``/lib/modules/$(uname -r)``) needs no download and matches the host's
drivers, but is often readable by root only.  Debian's cloud kernel
(``linux-image-cloud-amd64``) is small and built for VMs; note that it has
no MP-table parsing (CONFIG_X86_MPPARSE off) and finds CPUs and interrupts
through ACPI only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kvmlite.errors import KvmliteError
from kvmlite.guest import debian
from kvmlite.guest.progress import QUIET, Progress

CLOUD_KERNEL_PACKAGE = "linux-image-cloud-amd64"
GENERIC_KERNEL_PACKAGE = "linux-image-amd64"


@dataclass(frozen=True)
class KernelFiles:
    vmlinuz: Path
    modules: Path | None   # /lib/modules/<version>, None when there are none
    version: str           # the kernel release, as ``uname -r`` prints it
    source: str            # "host" or "debian"
    package: str | None = None           # Debian package name
    package_version: str | None = None   # Debian package version


def host_kernel(release: str | None = None, boot: Path = Path("/boot"),
                modules_root: Path = Path("/lib/modules")) -> KernelFiles:
    """The running kernel's image and modules, if this user can read them."""
    release = release or os.uname().release
    vmlinuz = boot / f"vmlinuz-{release}"
    if not vmlinuz.is_file():
        raise KvmliteError(f"host kernel {vmlinuz} does not exist")
    if not os.access(vmlinuz, os.R_OK):
        raise KvmliteError(f"host kernel {vmlinuz} is not readable (try --kernel-source debian)")
    modules = modules_root / release
    return KernelFiles(vmlinuz, modules if modules.is_dir() else None, release, "host")


def debian_kernel(package: str, cache: Path, progress: Progress = QUIET) -> KernelFiles:
    """Fetch and unpack ``package`` (a meta-package is resolved first)."""
    unpacked = debian.fetch_unpacked(debian.resolve_kernel_package(package), cache, progress)
    return kernel_in_tree(unpacked.root, unpacked.ref)


def kernel_in_tree(root: Path, ref: debian.PackageRef) -> KernelFiles:
    """The vmlinuz and modules directory inside an unpacked image package.

    Debian 12 ships modules in ``lib/modules``; merged-/usr releases
    (Debian 13) in ``usr/lib/modules``.
    """
    dirs = [d for base in ("lib", "usr/lib") for d in sorted((root / base / "modules").glob("*")) if d.is_dir()]
    if len(dirs) != 1:
        raise KvmliteError(f"{ref.name}: expected one kernel under lib/modules, found {len(dirs)}")
    version = dirs[0].name
    vmlinuz = root / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.is_file():
        raise KvmliteError(f"{ref.name}: no boot/vmlinuz-{version} in the package")
    return KernelFiles(vmlinuz, dirs[0], version, "debian", ref.name, ref.version)
