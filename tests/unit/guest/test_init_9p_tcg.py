"""The init's 9p paths booted for real: Debian's generic kernel (it has 9p
and overlayfs as modules) with the 9p-capable guest's initramfs, under
QEMU TCG with QEMU's own virtio-9p device.  kvmlite's device is tested
in the nested test host (tests/nested/); here only the init is on trial.

Each boot takes tens of seconds of emulation; no KVM is involved.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvmlite.guest import initramfs
from kvmlite.guest.cmdline import GuestOptions, GuestShare, join
from kvmlite.guest.kernel import KernelFiles

from .qemutcg import boot, debug_exit_status

TIMEOUT = 420
APPLETS = ("sh", "cat", "echo", "touch", "grep", "mkdir", "ls")


@pytest.fixture(scope="module")
def share_initrd(generic_kernel: KernelFiles, static_busybox: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = initramfs.build_guest(generic_kernel, static_busybox)
    assert built.shares, f"{generic_kernel.version}: the 9p modules are missing: {built.on_demand}"
    path = tmp_path_factory.mktemp("generic") / "initramfs.cpio"
    path.write_bytes(built.data)
    return path


def _share(tag: str, path: Path, readonly: bool = False) -> list[str]:
    ro = ",readonly=on" if readonly else ""
    return ["-fsdev", f"local,id={tag},path={path},security_model=none{ro}",
            "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]


def _busybox_root(path: Path, busybox: Path) -> Path:
    """A tiny root: busybox as /bin/sh and a few applets, the directories the init needs."""
    (path / "bin").mkdir(parents=True)
    shutil.copy(busybox, path / "bin" / "busybox")
    for applet in APPLETS:
        (path / "bin" / applet).symlink_to("busybox")
    for d in ("etc", "run", "dev", "proc", "sys", "mnt", "tmp"):
        (path / d).mkdir()
    (path / "etc" / "marker").write_text("inside the 9p root\n")
    return path


def _shares(tmp_path: Path) -> tuple[Path, Path]:
    data, src = tmp_path / "data", tmp_path / "src"
    data.mkdir()
    src.mkdir()
    (src / "in.txt").write_text("from the read-only share\n")
    return data, src


SHARE_PROBE = ("cat /mnt/src/in.txt; echo to-host > /mnt/data/out.txt && echo data-written; "
               "touch /mnt/src/nope 2>/dev/null && echo ro-broken || echo ro-refused; ")


def test_init_9p_root_overlay_shares_switch_root_status(generic_kernel: KernelFiles, share_initrd: Path,
                                                        static_busybox: Path, tmp_path: Path) -> None:
    # Arrange: a read-only 9p root under a tmpfs overlay, a writable share and a read-only one
    root = _busybox_root(tmp_path / "root", static_busybox)
    data, src = _shares(tmp_path)
    command = ("cat /etc/marker; echo in-the-vm > /etc/written && cat /etc/written; " + SHARE_PROBE +
               "grep -q '^overlay / overlay' /proc/mounts && echo root-is-overlay; "
               "test -e /init || echo initramfs-gone; exit 5")
    options = GuestOptions(command=command, root="hostfs", rootfstype="9p", overlay=True,
                           shares=(GuestShare("hostfs", True), GuestShare("data"), GuestShare("src", True)))
    extra = _share("hostfs", root, readonly=True) + _share("data", data) + _share("src", src, readonly=True)
    # Act
    result = boot(generic_kernel.vmlinuz, share_initrd, join("quiet", options), tmp_path, timeout=TIMEOUT,
                  extra=extra)
    # Assert: the root's files, writes kept in the VM, the shares beneath the root, the status
    console = result.console
    for line in ("inside the 9p root", "in-the-vm", "from the read-only share", "data-written", "ro-refused",
                 "root-is-overlay", "initramfs-gone"):
        assert line in console, f"{line!r} missing:\n{console[-3000:]}"
    assert not (root / "etc" / "written").exists()
    assert (data / "out.txt").read_text() == "to-host\n"
    assert not (src / "nope").exists()
    assert result.returncode == debug_exit_status(5), console[-3000:]


def test_init_9p_shares_without_root_at_mnt_tag(generic_kernel: KernelFiles, share_initrd: Path,
                                                tmp_path: Path) -> None:
    data, src = _shares(tmp_path)
    command = SHARE_PROBE + "grep -c ' 9p ' /proc/mounts; exit 0"
    options = GuestOptions(command=command, shares=(GuestShare("data"), GuestShare("src", True),
                                                    GuestShare("absent")))
    result = boot(generic_kernel.vmlinuz, share_initrd, join("quiet", options), tmp_path, timeout=TIMEOUT,
                  extra=_share("data", data) + _share("src", src, readonly=True))
    console = result.console
    for line in ("from the read-only share", "data-written", "ro-refused", "kvmlite-init: cannot mount share absent"):
        assert line in console, f"{line!r} missing:\n{console[-3000:]}"
    assert (data / "out.txt").read_text() == "to-host\n"
    assert result.returncode == debug_exit_status(0), console[-3000:]
