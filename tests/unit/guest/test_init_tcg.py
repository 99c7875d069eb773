"""The guest init, booted for real: Debian's kernels under QEMU TCG.

Each boot takes a few seconds of emulation; no KVM is involved.
"""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

from kvmlite.guest import initramfs, initscript, rootfs
from kvmlite.guest.cmdline import GuestOptions, join
from kvmlite.guest.kernel import KernelFiles

from .conftest import require_tool
from .qemutcg import boot, debug_exit_status


@pytest.fixture(scope="module")
def cloud_initrd(cloud_kernel: KernelFiles, static_busybox: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cloud") / "initramfs.cpio"
    path.write_bytes(initramfs.build_guest(cloud_kernel, static_busybox).data)
    return path


def _append(options: GuestOptions) -> str:
    return join("quiet", options)


def test_init_command_output_and_status_reach_host(cloud_kernel: KernelFiles, cloud_initrd: Path,
                                                    tmp_path: Path) -> None:
    # Act
    result = boot(cloud_kernel.vmlinuz, cloud_initrd, _append(GuestOptions(command="echo hello from $(uname -r); exit 7")),
                  tmp_path)
    # Assert
    assert initscript.READY_MARKER in result.console, result.console
    assert f"hello from {cloud_kernel.version}" in result.console
    assert result.returncode == debug_exit_status(7), result.console


def test_init_command_status_zero(cloud_kernel: KernelFiles, cloud_initrd: Path, tmp_path: Path) -> None:
    result = boot(cloud_kernel.vmlinuz, cloud_initrd, _append(GuestOptions(command="true")), tmp_path)
    assert result.returncode == debug_exit_status(0), result.console


def test_init_bad_base64_setup_failed_status(cloud_kernel: KernelFiles, cloud_initrd: Path, tmp_path: Path) -> None:
    result = boot(cloud_kernel.vmlinuz, cloud_initrd, "quiet kvmlite.cmd=@@@not-base64@@@", tmp_path)
    assert "kvmlite.cmd is not valid base64" in result.console
    assert result.returncode == debug_exit_status(initscript.STATUS_SETUP_FAILED), result.console


def test_init_root_disk_chroot_runs_command_there(cloud_kernel: KernelFiles, cloud_initrd: Path,
                                                  static_busybox: Path, tmp_path: Path) -> None:
    # Arrange: a root with its own /bin/sh and a marker file
    debugfs = require_tool("debugfs")
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "etc").mkdir()
    for d in ("proc", "sys", "dev"):
        (tree / d).mkdir()
    shutil.copy(static_busybox, tree / "bin" / "busybox")
    for applet in ("sh", "cat", "echo", "ls"):
        (tree / "bin" / applet).symlink_to("busybox")
    (tree / "etc" / "marker").write_text("inside the root disk\n")
    image = rootfs.build_image(tree, tmp_path / "root.img", 32 << 20)
    command = "cat /etc/marker; ls /proc/self >/dev/null && echo proc-ok; echo written > /written; exit 3"
    # Act
    result = boot(cloud_kernel.vmlinuz, cloud_initrd,
                  _append(GuestOptions(command=command, root="/dev/vda", rootfstype="ext4")), tmp_path, disk=image)
    # Assert
    assert "inside the root disk" in result.console and "proc-ok" in result.console, result.console
    assert result.returncode == debug_exit_status(3), result.console
    written = subprocess.run([debugfs, "-R", "cat /written", str(image)], capture_output=True, text=True)
    assert written.stdout == "written\n"


def test_init_shell_ctrl_alt_del_powers_off(cloud_kernel: KernelFiles, cloud_initrd: Path, tmp_path: Path) -> None:
    # Act: no command -> a shell; Ctrl-Alt-Del once the prompt is up
    result = boot(cloud_kernel.vmlinuz, cloud_initrd, "quiet", tmp_path, ctrl_alt_del_after="kvmlite:/#")
    # Assert: a clean power-off (QEMU status 0), not a reboot or a panic
    assert "kvmlite-init: ctrl-alt-del: powering off" in result.console, result.console
    assert result.returncode == 0, result.console


def test_init_dev_port_path_generic_kernel(generic_kernel: KernelFiles, static_busybox: Path, tmp_path: Path) -> None:
    # Arrange: Debian's generic kernel has CONFIG_DEVPORT, so init writes through /dev/port
    initrd = tmp_path / "initramfs.cpio"
    initrd.write_bytes(initramfs.build_guest(generic_kernel, static_busybox).data)
    command = "test -c /dev/port && echo devport-present; exit 42"
    # Act
    result = boot(generic_kernel.vmlinuz, initrd, _append(GuestOptions(command=command)), tmp_path, timeout=300)
    # Assert
    assert "devport-present" in result.console, result.console
    assert result.returncode == debug_exit_status(42), result.console


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:   # noqa: N802 (http.server's name)
        body = b"hello through virtio-net\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http_port() -> Iterator[int]:
    """An HTTP server on this machine's 127.0.0.1: the guest's 10.0.2.2 under QEMU's user network."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _network_probe(port: int) -> str:
    return (f"ip -4 -o addr show dev eth0; ip route; cat /etc/resolv.conf; "
            f"wget -q -O- http://10.0.2.2:{port}/")


def test_init_net_dhcp_lease_applied_host_reachable(cloud_kernel: KernelFiles, cloud_initrd: Path,
                                                     tmp_path: Path, http_port: int) -> None:
    # Act
    result = boot(cloud_kernel.vmlinuz, cloud_initrd,
                  _append(GuestOptions(command=_network_probe(http_port), net="dhcp")), tmp_path, user_net=True)
    # Assert
    console = result.console
    assert "inet 10.0.2.15/24" in console and "default via 10.0.2.2 dev eth0" in console, console
    assert "nameserver 10.0.2.3" in console, console
    assert "hello through virtio-net" in console, console
    assert result.returncode == debug_exit_status(0), console


def test_init_net_static_address_route_dns(cloud_kernel: KernelFiles, cloud_initrd: Path, tmp_path: Path,
                                           http_port: int) -> None:
    result = boot(cloud_kernel.vmlinuz, cloud_initrd,
                  _append(GuestOptions(command=_network_probe(http_port), net="10.0.2.20/24,10.0.2.2,10.0.2.3")),
                  tmp_path, user_net=True)
    console = result.console
    assert "inet 10.0.2.20/24" in console and "default via 10.0.2.2 dev eth0" in console, console
    assert "nameserver 10.0.2.3" in console and "hello through virtio-net" in console, console
    assert result.returncode == debug_exit_status(0), console
