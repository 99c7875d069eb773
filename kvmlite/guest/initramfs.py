"""Build initramfs archives: busybox, kernel modules, an ``/init``.

:func:`build` is the general builder (the nested test host uses it with an
init of its own); :func:`build_guest` makes the default guest's archive
with the drivers for kvmlite's virtio devices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from kvmlite.guest import busybox as bb
from kvmlite.guest import exithelper, initscript
from kvmlite.guest.cpio import CpioWriter
from kvmlite.guest.kernel import KernelFiles
from kvmlite.guest.kmod import Module, ModuleTree, Resolution, read_module

# Drivers for the devices kvmlite offers, and ext4 for root disks.  Names
# missing from a kernel, or built into it, are skipped.  crc32c_generic is
# listed because ext4 wants "crypto-crc32c" (an alias, so its softdep alone
# does not pull the module in) for metadata checksums.  af_packet is for
# udhcpc's raw socket (built into Debian's kernels, so it costs nothing there);
# virtio_net brings net_failover and failover.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_pci", "virtio_mmio", "virtio_blk", "virtio_console", "virtio_rng",
    "virtio_net", "af_packet", "9p", "9pnet_virtio", "vmw_vsock_virtio_transport",
    "virtio_balloon", "crc32c_generic", "ext4",
)

DIRS = (("bin", 0o755), ("sbin", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755), ("etc", 0o755),
        ("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("tmp", 0o1777), ("mnt", 0o755),
        ("root", 0o700), ("run", 0o755), ("var", 0o755), ("lib/modules", 0o755))
DEVICE_NODES = (("dev/console", 5, 1, 0o600), ("dev/null", 1, 3, 0o666))   # Documentation/admin-guide/devices.txt
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\ntty:x:5:\n",
    "etc/profile": "PS1='kvmlite:\\w\\$ '\nexport PS1\n",
}


@dataclass(frozen=True)
class Contents:
    """Everything that goes into an archive."""

    busybox: Path
    init: str
    modules: Sequence[Module] = ()
    files: Mapping[str, tuple[bytes, int]] = field(default_factory=dict)   # path -> (data, mode)


def build(contents: Contents) -> bytes:
    """A newc archive of ``contents``."""
    w = CpioWriter()
    for path, mode in DIRS:
        w.add_dir(path, mode)
    for path, major, minor, mode in DEVICE_NODES:
        w.add_chardev(path, major, minor, mode)
    _add_busybox(w, contents.busybox)
    for path, text in ETC_FILES.items():
        w.add_file(path, text.encode())
    _add_modules(w, contents.modules)
    for path, (data, mode) in sorted(contents.files.items()):
        w.add_file(path, data, mode)
    w.add_file("init", contents.init.encode(), 0o755)
    return w.getvalue()


def _add_busybox(w: CpioWriter, busybox: Path) -> None:
    w.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in bb.applets(busybox):
        if applet not in w:
            w.add_symlink(applet, "/bin/busybox")


def _add_modules(w: CpioWriter, modules: Sequence[Module]) -> None:
    """``lib/modules/<name>.ko`` (decompressed) and the load-order list."""
    names = []
    for module in modules:
        w.add_file(f"lib/modules/{module.name}.ko", read_module(module.path))
        names.append(f"{module.name}.ko")
    w.add_file(initscript.MODULES_LIST, "".join(n + "\n" for n in names).encode())


def guest_modules(kernel: KernelFiles, wanted: Sequence[str] = GUEST_MODULES) -> Resolution:
    """The closure of ``wanted`` in ``kernel``'s modules (empty without any)."""
    if kernel.modules is None:
        return Resolution((), (), tuple(wanted))
    return ModuleTree(kernel.modules).resolve(wanted)


@dataclass(frozen=True)
class GuestInitramfs:
    data: bytes
    modules: Resolution


def build_guest(kernel: KernelFiles, busybox: Path) -> GuestInitramfs:
    """The default guest's archive for ``kernel``."""
    resolution = guest_modules(kernel)
    files = {initscript.EXIT_HELPER: (exithelper.build(), 0o755), **initscript.files()}
    data = build(Contents(busybox, initscript.render(), resolution.modules, files))
    return GuestInitramfs(data, resolution)
