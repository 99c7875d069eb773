"""``kvmlite setup``: the default guest (a kernel and its initramfs) in the cache.

Layout of ``cache_dir()/default/``::

    vmlinuz           copy of the chosen kernel
    initramfs.cpio    busybox + modules + /init (uncompressed newc)
    manifest.json     what was built from what, with SHA256s

The manifest is written last, so a directory without one is incomplete.
:func:`default_guest` is what ``kvmlite run`` asks; it only checks that the
files exist (hashing on every start would cost time), while ``setup``
verifies the checksums.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmlite import __version__
from kvmlite.errors import KvmliteError, UsageError
from kvmlite.guest import busybox, initramfs, initscript
from kvmlite.guest.debian import ensure_writable, sha256_file
from kvmlite.guest.kernel import CLOUD_KERNEL_PACKAGE, KernelFiles, debian_kernel, host_kernel
from kvmlite.guest.kmod import Resolution
from kvmlite.guest.progress import QUIET, Progress
from kvmlite.paths import cache_dir

MANIFEST_FORMAT = 1
MANIFEST = "manifest.json"
KERNEL = "vmlinuz"
INITRAMFS = "initramfs.cpio"
SOURCES = ("auto", "host", "debian")


@dataclass(frozen=True)
class DefaultGuest:
    kernel: Path
    initrd: Path
    version: str = ""


@dataclass(frozen=True)
class SetupOptions:
    kernel_source: str = "auto"        # "auto" (host, else Debian), "host" or "debian"
    force: bool = False
    kernel_package: str = CLOUD_KERNEL_PACKAGE
    packages: Path | None = None       # Debian package cache; default cache_dir()/packages


@dataclass(frozen=True)
class SetupResult:
    guest: DefaultGuest
    directory: Path
    rebuilt: bool
    manifest: dict[str, Any]


def default_dir() -> Path:
    return cache_dir() / "default"


def default_guest(directory: Path | None = None) -> DefaultGuest | None:
    """The prepared default guest, or None when ``kvmlite setup`` has not run."""
    manifest = read_manifest(directory or default_dir())
    if manifest is None:
        return None
    guest = _guest_of(manifest)
    return guest if guest.kernel.is_file() and guest.initrd.is_file() else None


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None


def _guest_of(manifest: dict[str, Any]) -> DefaultGuest:
    return DefaultGuest(Path(manifest["kernel"]["path"]), Path(manifest["initramfs"]["path"]),
                        manifest["kernel"].get("version", ""))


def setup_default_guest(options: SetupOptions = SetupOptions(), progress: Progress = QUIET) -> SetupResult:
    return prepare_guest(default_dir(), options, progress)


def prepare_guest(directory: Path, options: SetupOptions, progress: Progress = QUIET) -> SetupResult:
    """Build (or confirm) a guest kernel + initramfs pair in ``directory``."""
    if options.kernel_source not in SOURCES:
        raise UsageError(f"bad kernel source '{options.kernel_source}' (choose from {', '.join(SOURCES)})")
    ensure_writable(directory)
    current = read_manifest(directory)
    if current is not None and not options.force and is_up_to_date(current, options):
        return SetupResult(_guest_of(current), directory, False, current)
    packages = options.packages or cache_dir() / "packages"
    kernel = choose_kernel(options, packages, progress)
    bb = busybox.find_busybox(packages, progress)
    manifest = _build(directory, kernel, bb, progress)
    progress.done()
    return SetupResult(_guest_of(manifest), directory, True, manifest)


def choose_kernel(options: SetupOptions, packages: Path, progress: Progress) -> KernelFiles:
    if options.kernel_source in ("auto", "host"):
        try:
            return host_kernel()
        except KvmliteError:
            if options.kernel_source == "host":
                raise
    return debian_kernel(options.kernel_package, packages, progress)


def is_up_to_date(manifest: dict[str, Any], options: SetupOptions) -> bool:
    """Same kvmlite, same init and module list, the requested source, intact files."""
    inputs = manifest.get("inputs", {})
    wanted = {"kvmlite_version": __version__, "init_sha256": initscript.digest(),
              "guest_modules": list(initramfs.GUEST_MODULES)}
    if any(inputs.get(k) != v for k, v in wanted.items()):
        return False
    if options.kernel_source != "auto" and inputs.get("kernel_source") != options.kernel_source:
        return False
    return all(_intact(manifest.get(part, {})) for part in ("kernel", "initramfs"))


def _intact(entry: dict[str, Any]) -> bool:
    path = Path(entry.get("path", ""))
    return path.is_file() and sha256_file(path) == entry.get("sha256")


def _build(directory: Path, kernel: KernelFiles, bb: Path, progress: Progress) -> dict[str, Any]:
    progress.step(f"building the initramfs for {kernel.version}")
    built = initramfs.build_guest(kernel, bb)
    kernel_path, initrd_path = directory / KERNEL, directory / INITRAMFS
    _write_atomic(initrd_path, built.data)
    _copy_atomic(kernel.vmlinuz, kernel_path)
    manifest = _manifest(kernel, kernel_path, initrd_path, bb, built.modules)
    _write_atomic(directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _manifest(kernel: KernelFiles, kernel_path: Path, initrd_path: Path, bb: Path,
              modules: Resolution) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "kvmlite_version": __version__,
        "kernel": {"path": str(kernel_path), "version": kernel.version, "sha256": sha256_file(kernel_path)},
        "initramfs": {"path": str(initrd_path), "sha256": sha256_file(initrd_path)},
        "modules": {"loaded": [m.name for m in modules.modules], "builtin": list(modules.builtin),
                    "missing": list(modules.missing)},
        "inputs": {
            "kvmlite_version": __version__,
            "kernel_source": kernel.source,
            "kernel_image": str(kernel.vmlinuz),
            "kernel_package": kernel.package,
            "kernel_package_version": kernel.package_version,
            "busybox": str(bb),
            "busybox_sha256": sha256_file(bb),
            "init_sha256": initscript.digest(),
            "guest_modules": list(initramfs.GUEST_MODULES),
        },
    }


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _copy_atomic(source: Path, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, path)
