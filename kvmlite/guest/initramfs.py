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
    "virtio_net", "af_packet", "vmw_vsock_virtio_transport",
    "virtio_balloon", "crc32c_generic", "ext4",
)

# Groups the init loads only when the command line asks (shareinit's
# share_module_groups names them): 9p for kvmlite.9p= or a 9p root (9p brings 9pnet,
# netfs and fscache), overlay for kvmlite.overlay=1.  A boot without shares
# pays nothing for them.
ON_DEMAND_MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("9p", ("9pnet_virtio", "9p")),
    ("overlay", ("overlay",)),
)
SHARES_GROUP = "9p"

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
    on_demand: Mapping[str, Sequence[Module]] = field(default_factory=dict)  # group -> modules


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
    _add_modules(w, contents.modules, contents.on_demand)
    for path, (data, mode) in sorted(contents.files.items()):
        w.add_file(path, data, mode)
    w.add_file("init", contents.init.encode(), 0o755)
    return w.getvalue()


def _add_busybox(w: CpioWriter, busybox: Path) -> None:
    w.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in bb.applets(busybox):
        if applet not in w:
            w.add_symlink(applet, "/bin/busybox")


def _add_modules(w: CpioWriter, modules: Sequence[Module],
                 on_demand: Mapping[str, Sequence[Module]] | None = None) -> None:
    """``lib/modules/<name>.ko`` (decompressed, each once) and the load-order
    lists: every boot's, and one per on-demand group."""
    added: set[str] = set()
    lists = {initscript.MODULES_LIST: modules,
             **{f"{initscript.MODULES_LIST}-{group}": mods for group, mods in (on_demand or {}).items()}}
    for path, group_modules in lists.items():
        for module in group_modules:
            if module.name not in added:
                w.add_file(f"lib/modules/{module.name}.ko", read_module(module.path))
                added.add(module.name)
        w.add_file(path, "".join(f"{m.name}.ko\n" for m in group_modules).encode())


def guest_modules(kernel: KernelFiles, wanted: Sequence[str] = GUEST_MODULES) -> Resolution:
    """The closure of ``wanted`` in ``kernel``'s modules (empty without any)."""
    if kernel.modules is None:
        return Resolution((), (), tuple(wanted))
    return ModuleTree(kernel.modules).resolve(wanted)


def on_demand_modules(kernel: KernelFiles, base: Resolution,
                      groups: Sequence[tuple[str, Sequence[str]]] | None = None) -> dict[str, Resolution]:
    """Each group's closure (default :data:`ON_DEMAND_MODULES`) less what
    every boot loads, in load order."""
    groups = ON_DEMAND_MODULES if groups is None else groups
    if kernel.modules is None:
        return {name: Resolution((), (), tuple(wanted)) for name, wanted in groups}
    tree = ModuleTree(kernel.modules)
    loaded = {m.name for m in base.modules}
    found = {}
    for name, wanted in groups:
        closure = tree.resolve(wanted)
        found[name] = Resolution(tuple(m for m in closure.modules if m.name not in loaded),
                                 closure.builtin, closure.missing)
    return found


@dataclass(frozen=True)
class GuestInitramfs:
    data: bytes
    modules: Resolution
    on_demand: Mapping[str, Resolution] = field(default_factory=dict)

    @property
    def shares(self) -> bool:
        """Whether this guest can mount virtio-9p shares (its kernel has 9p
        and its transport, as modules here or built in)."""
        group = self.on_demand.get(SHARES_GROUP)
        return group is not None and not group.missing and "virtio_pci" not in self.modules.missing


def build_guest(kernel: KernelFiles, busybox: Path) -> GuestInitramfs:
    """The default guest's archive for ``kernel``."""
    resolution = guest_modules(kernel)
    on_demand = on_demand_modules(kernel, resolution)
    files = {initscript.EXIT_HELPER: (exithelper.build(), 0o755), **initscript.files()}
    data = build(Contents(busybox, initscript.render(), resolution.modules, files,
                          {name: r.modules for name, r in on_demand.items()}))
    return GuestInitramfs(data, resolution, on_demand)
