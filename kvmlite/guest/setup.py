"""``kvmlite setup``: the default guest (a kernel and its initramfs) in the cache.

Layout of ``cache_dir()/default/``::

    vmlinuz           copy of the chosen kernel
    initramfs.cpio    busybox + modules + /init (uncompressed newc)
    manifest.json     what was built from what, with SHA256s
    9p/               the 9p-capable guest, when the default one is not

The manifest is written last, so a directory without one is incomplete.
:func:`default_guest` is what ``kvmlite run`` asks; it only checks that the
files exist (hashing on every start would cost time), while ``setup``
verifies the checksums.

Debian's cloud kernel, the default guest's when the host's is not
readable, is built without 9p (CONFIG_NET_9P off); so when the default
guest cannot mount virtio-9p shares, setup prepares a second guest in
``9p/`` from Debian's generic kernel, which has 9p and overlayfs as modules.
``default_guest(shares=True)`` gives whichever of the two can mount shares.
Boot times of both are in docs/guest.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmlite import __version__
from kvmlite.errors import KvmliteError, UsageError
from kvmlite.guest import busybox, initramfs, initscript
from kvmlite.guest.debian import ensure_writable, sha256_file
from kvmlite.guest.kernel import CLOUD_KERNEL_PACKAGE, GENERIC_KERNEL_PACKAGE, KernelFiles, debian_kernel, host_kernel
from kvmlite.guest.kmod import Resolution
from kvmlite.guest.progress import QUIET, Progress
from kvmlite.paths import cache_dir

MANIFEST_FORMAT = 1
MANIFEST = "manifest.json"
KERNEL = "vmlinuz"
INITRAMFS = "initramfs.cpio"
SHARES_DIR = "9p"            # beside the default guest's files: the 9p-capable guest
SOURCES = ("auto", "host", "debian")
SHARES_KERNEL_PACKAGE = GENERIC_KERNEL_PACKAGE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DefaultGuest:
    kernel: Path
    initrd: Path
    version: str = ""
    shares: bool = False     # its init can mount virtio-9p shares (kvmlite.9p=, a 9p root)


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
    share_guest: "SetupResult | None" = None   # the 9p-capable guest, when it is another one
    share_error: str | None = None             # why there is none, when the default cannot mount shares


def default_dir() -> Path:
    return cache_dir() / "default"


def default_guest(directory: Path | None = None, *, shares: bool = False) -> DefaultGuest | None:
    """The prepared default guest, or None when ``kvmlite setup`` has not run.

    With ``shares``, the guest whose init can mount virtio-9p shares: the
    default guest itself when its kernel has 9p, else the one setup put in
    ``9p/`` beside it; None when there is no such guest.
    """
    directory = directory or default_dir()
    guest = _ready_guest(directory)
    if not shares or guest is None or guest.shares:
        return guest
    share_guest = _ready_guest(directory / SHARES_DIR)
    return share_guest if share_guest is not None and share_guest.shares else None


def _ready_guest(directory: Path) -> DefaultGuest | None:
    manifest = read_manifest(directory)
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
                        manifest["kernel"].get("version", ""), manifest.get("shares") is True)


def setup_default_guest(options: SetupOptions = SetupOptions(), progress: Progress = QUIET) -> SetupResult:
    """``kvmlite setup``: the default guest, and a 9p-capable one when it is not."""
    return prepare_guests(default_dir(), options, progress)


def prepare_guests(directory: Path, options: SetupOptions, progress: Progress = QUIET) -> SetupResult:
    """The guest of :func:`prepare_guest` in ``directory`` and, when it cannot
    mount shares, a guest from Debian's generic kernel in ``directory/9p``.
    A failure to make the second leaves the first usable: it is logged and
    returned as ``share_error``."""
    result = prepare_guest(directory, options, progress)
    if result.guest.shares:
        shutil.rmtree(directory / SHARES_DIR, ignore_errors=True)
        return result
    share_options = SetupOptions(kernel_source="debian", force=options.force,
                                 kernel_package=SHARES_KERNEL_PACKAGE, packages=options.packages)
    try:
        shared = prepare_guest(directory / SHARES_DIR, share_options, progress)
    except KvmliteError as exc:
        logger.warning("no 9p-capable guest prepared, shares will not mount: %s", exc)
        return _with_shares(result, None, str(exc))
    if not shared.guest.shares:
        return _with_shares(result, shared, f"{shared.guest.version} cannot mount 9p shares either")
    return _with_shares(result, shared, None)


def _with_shares(result: SetupResult, shared: SetupResult | None, error: str | None) -> SetupResult:
    return SetupResult(result.guest, result.directory, result.rebuilt, result.manifest, shared, error)


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
              "guest_modules": list(initramfs.GUEST_MODULES), "on_demand_modules": _on_demand_input()}
    if any(inputs.get(k) != v for k, v in wanted.items()):
        return False
    if options.kernel_source != "auto" and inputs.get("kernel_source") != options.kernel_source:
        return False
    if inputs.get("kernel_source") == "debian" and not _built_from(inputs.get("kernel_package"), options.kernel_package):
        return False
    return all(_intact(manifest.get(part, {})) for part in ("kernel", "initramfs"))


def _built_from(built: Any, package: str) -> bool:
    """Whether a guest built from the versioned package ``built``
    (``linux-image-6.1.0-NN-cloud-amd64``) answers for ``package`` (that
    name or its meta-package, ``linux-image-cloud-amd64``): the cloud
    kernel's guest does not answer for the generic kernel's."""
    if not isinstance(built, str):
        return False
    flavour = re.escape(package.removeprefix("linux-image-"))
    return built == package or re.fullmatch(rf"linux-image-\d[\w.]*-\d+-{flavour}", built) is not None


def _on_demand_input() -> list[list[Any]]:
    return [[name, list(modules)] for name, modules in initramfs.ON_DEMAND_MODULES]


def _intact(entry: dict[str, Any]) -> bool:
    path = Path(entry.get("path", ""))
    return path.is_file() and sha256_file(path) == entry.get("sha256")


def _build(directory: Path, kernel: KernelFiles, bb: Path, progress: Progress) -> dict[str, Any]:
    progress.step(f"building the initramfs for {kernel.version}")
    built = initramfs.build_guest(kernel, bb)
    kernel_path, initrd_path = directory / KERNEL, directory / INITRAMFS
    _write_atomic(initrd_path, built.data)
    _copy_atomic(kernel.vmlinuz, kernel_path)
    manifest = _manifest(kernel, kernel_path, initrd_path, bb, built)
    _write_atomic(directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _modules_entry(modules: Resolution) -> dict[str, list[str]]:
    return {"loaded": [m.name for m in modules.modules], "builtin": list(modules.builtin),
            "missing": list(modules.missing)}


def _manifest(kernel: KernelFiles, kernel_path: Path, initrd_path: Path, bb: Path,
              built: initramfs.GuestInitramfs) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "kvmlite_version": __version__,
        "kernel": {"path": str(kernel_path), "version": kernel.version, "sha256": sha256_file(kernel_path)},
        "initramfs": {"path": str(initrd_path), "sha256": sha256_file(initrd_path)},
        "shares": built.shares,
        "modules": {**_modules_entry(built.modules),
                    "on_demand": {name: _modules_entry(r) for name, r in built.on_demand.items()}},
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
            "on_demand_modules": _on_demand_input(),
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
