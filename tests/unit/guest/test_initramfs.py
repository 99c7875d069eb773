"""The default guest's initramfs, checked with the real cpio tool."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from kvmlite.guest import initramfs, initscript, netinit
from kvmlite.guest.kernel import KernelFiles

from .conftest import require_tool


@pytest.fixture(scope="module")
def guest(cloud_kernel: KernelFiles, static_busybox: Path) -> initramfs.GuestInitramfs:
    return initramfs.build_guest(cloud_kernel, static_busybox)


@pytest.fixture(scope="module")
def unpacked(guest: initramfs.GuestInitramfs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cpio = require_tool("cpio")
    root = tmp_path_factory.mktemp("initramfs")
    subprocess.run([cpio, "-idm", "--quiet", "--no-absolute-filenames"], input=guest.data, cwd=root,
                   check=True, capture_output=True)
    return root


def test_build_guest_init_is_executable_script(unpacked: Path) -> None:
    init = unpacked / "init"
    assert stat.S_IMODE(init.stat().st_mode) == 0o755
    assert init.read_text() == initscript.render()
    assert init.read_text().startswith("#!/bin/sh\n")


def test_build_guest_busybox_and_applet_links(unpacked: Path) -> None:
    assert (unpacked / "bin/busybox").stat().st_mode & 0o111
    for applet in ("bin/sh", "sbin/insmod", "bin/mount", "bin/base64", "bin/dd", "sbin/poweroff",
                   "usr/bin/setsid", "bin/cttyhack", "sbin/switch_root", "usr/sbin/chroot",
                   "sbin/ip", "sbin/udhcpc", "bin/sleep"):
        assert os.readlink(unpacked / applet) == "/bin/busybox", applet


def test_build_guest_device_nodes(unpacked: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("cpio -i creates device nodes only as root")
    console = (unpacked / "dev/console").lstat()
    assert stat.S_ISCHR(console.st_mode) and os.major(console.st_rdev) == 5 and os.minor(console.st_rdev) == 1


def test_build_guest_modules_listed_in_load_order(guest: initramfs.GuestInitramfs, unpacked: Path) -> None:
    listed = (unpacked / initscript.MODULES_LIST).read_text().split()
    assert listed == [f"{m.name}.ko" for m in guest.modules.modules]
    assert listed.index("virtio_ring.ko") < listed.index("virtio.ko") < listed.index("virtio_blk.ko")
    assert listed.index("vsock.ko") < listed.index("vmw_vsock_virtio_transport.ko")
    for name in listed:
        assert (unpacked / "lib/modules" / name).read_bytes()[:4] == b"\x7fELF"


def test_build_guest_exit_helper_included(unpacked: Path) -> None:
    helper = unpacked / initscript.EXIT_HELPER
    assert helper.read_bytes()[:4] == b"\x7fELF" and helper.stat().st_mode & 0o111


def test_build_guest_same_inputs_same_bytes(cloud_kernel: KernelFiles, static_busybox: Path,
                                            guest: initramfs.GuestInitramfs) -> None:
    assert initramfs.build_guest(cloud_kernel, static_busybox).data == guest.data


def test_guest_modules_kernel_without_modules_skips_all(cloud_kernel: KernelFiles) -> None:
    bare = KernelFiles(cloud_kernel.vmlinuz, None, cloud_kernel.version, "host")
    result = initramfs.guest_modules(bare)
    assert result.modules == () and set(result.missing) == set(initramfs.GUEST_MODULES)


def test_build_guest_udhcpc_script_at_busybox_default_path(unpacked: Path) -> None:
    script = unpacked / netinit.UDHCPC_SCRIPT_PATH
    assert script.read_text() == netinit.UDHCPC_SCRIPT
    assert stat.S_IMODE(script.stat().st_mode) == 0o755


def test_guest_modules_cloud_kernel_network_driver_and_deps(cloud_kernel: KernelFiles) -> None:
    # Act
    result = initramfs.guest_modules(cloud_kernel)
    # Assert: virtio_net -> net_failover -> failover, all modules there, dependencies first
    names = [m.name for m in result.modules]
    assert names.index("failover") < names.index("net_failover") < names.index("virtio_net")
    assert names.index("virtio_ring") < names.index("virtio_net")
    assert "af_packet" in result.builtin       # CONFIG_PACKET=y: udhcpc's raw socket costs no insmod
    assert not {"virtio_net", "net_failover", "failover", "af_packet"} & set(result.missing)


# --- on-demand module groups (9p, overlay) --------------------------------------------------------

def test_build_guest_cloud_kernel_no_9p_cannot_mount_shares(guest: initramfs.GuestInitramfs, unpacked: Path) -> None:
    # Debian's cloud kernel: CONFIG_NET_9P off, overlay a module
    assert not guest.shares
    assert set(guest.on_demand["9p"].missing) == {"9p", "9pnet_virtio"}
    assert (unpacked / f"{initscript.MODULES_LIST}-9p").read_text() == ""
    assert (unpacked / f"{initscript.MODULES_LIST}-overlay").read_text() == "overlay.ko\n"
    assert "9p.ko" not in (unpacked / initscript.MODULES_LIST).read_text().split()


def test_on_demand_modules_generic_kernel_9p_group_ordered_apart_from_base(generic_kernel: KernelFiles) -> None:
    # Arrange
    base = initramfs.guest_modules(generic_kernel)
    # Act
    groups = initramfs.on_demand_modules(generic_kernel, base)
    # Assert: 9p's closure less what every boot loads, dependencies first; overlay alone
    ninep = [m.name for m in groups["9p"].modules]
    assert set(ninep) == {"9pnet", "9pnet_virtio", "netfs", "fscache", "9p"}, ninep
    assert ninep.index("9pnet") < ninep.index("9pnet_virtio") and ninep.index("fscache") < ninep.index("9p")
    assert ninep.index("netfs") < ninep.index("fscache")
    assert not set(ninep) & {m.name for m in base.modules}
    assert "virtio_ring" in {m.name for m in base.modules}      # 9pnet_virtio's dependency, loaded at every boot
    assert [m.name for m in groups["overlay"].modules] == ["overlay"]
    assert groups["9p"].missing == () and groups["overlay"].missing == ()


def test_build_guest_generic_kernel_lists_and_modules_in_archive(generic_kernel: KernelFiles, static_busybox: Path,
                                                                 tmp_path: Path) -> None:
    # Act
    built = initramfs.build_guest(generic_kernel, static_busybox)
    subprocess.run([require_tool("cpio"), "-idm", "--quiet", "--no-absolute-filenames"], input=built.data,
                   cwd=tmp_path, check=True, capture_output=True)
    # Assert
    assert built.shares
    listed = (tmp_path / f"{initscript.MODULES_LIST}-9p").read_text().split()
    assert listed == [f"{m.name}.ko" for m in built.on_demand["9p"].modules]
    for name in listed + ["overlay.ko"]:
        assert (tmp_path / "lib/modules" / name).read_bytes()[:4] == b"\x7fELF", name
