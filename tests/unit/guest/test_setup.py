"""``kvmlite setup`` end to end (real packages from the cache, real files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.errors import KvmliteError
from kvmlite.guest import initramfs, initscript, kernel, netinit, setup
from kvmlite.guest.debian import sha256_file

REPO = Path(__file__).resolve().parents[3]


def _kvmlite(cache_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "kvmlite", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture()
def cache_home(tmp_path: Path, package_cache: Path, cloud_kernel: kernel.KernelFiles) -> Path:
    """A fresh XDG_CACHE_HOME that shares the (already filled) package cache."""
    home = tmp_path / "xdg"
    (home / "kvmlite").mkdir(parents=True)
    (home / "kvmlite" / "packages").symlink_to(package_cache)
    return home


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _stamps(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``directory`` (the 9p-capable guest's too)."""
    return {str(p.relative_to(directory)): _stamp(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def test_setup_first_run_builds_manifest_with_checksums(cache_home: Path) -> None:
    # Act
    done = _kvmlite(cache_home, "setup", "--kernel-source", "debian")
    # Assert
    assert done.returncode == 0, done.stderr
    directory = cache_home / "kvmlite" / "default"
    assert done.stdout.startswith(f"default guest ready: {directory}")
    assert f"guest for shares (--9p, sandbox) ready: {directory / '9p'}" in done.stdout
    manifest = json.loads((directory / "manifest.json").read_text())
    for part in ("kernel", "initramfs"):
        assert sha256_file(Path(manifest[part]["path"])) == manifest[part]["sha256"]
    assert manifest["inputs"]["kernel_source"] == "debian"
    assert "virtio_blk" in manifest["modules"]["loaded"]


def test_setup_second_run_does_nothing(cache_home: Path) -> None:
    # Arrange
    assert _kvmlite(cache_home, "setup", "--kernel-source", "debian").returncode == 0
    directory = cache_home / "kvmlite" / "default"
    before = _stamps(directory)
    # Act
    done = _kvmlite(cache_home, "setup")
    # Assert
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"default guest is up to date: {directory}\n"
                           f"guest for shares (--9p, sandbox) is up to date: {directory / '9p'}\n")
    assert _stamps(directory) == before
    assert (directory / "9p" / "manifest.json").is_file()


def test_setup_damaged_initramfs_rebuilt(cache_home: Path) -> None:
    assert _kvmlite(cache_home, "setup", "--kernel-source", "debian").returncode == 0
    initrd = cache_home / "kvmlite" / "default" / "initramfs.cpio"
    initrd.write_bytes(b"damaged")
    done = _kvmlite(cache_home, "setup")
    assert done.stdout.startswith("default guest ready:")
    assert initrd.stat().st_size > 1 << 20


def test_setup_init_from_older_kvmlite_rebuilt(cache_home: Path) -> None:
    # Arrange: a cache built by a kvmlite whose init (or udhcpc script) differed
    assert _kvmlite(cache_home, "setup", "--kernel-source", "debian").returncode == 0
    path = cache_home / "kvmlite" / "default" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["inputs"]["init_sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    # Act
    done = _kvmlite(cache_home, "setup")
    # Assert
    assert done.stdout.startswith("default guest ready:"), done.stderr
    rebuilt = json.loads(path.read_text())
    assert rebuilt["inputs"]["init_sha256"] == initscript.digest()
    assert {"virtio_net", "net_failover", "failover"} <= set(rebuilt["modules"]["loaded"])


def test_init_digest_covers_udhcpc_script(monkeypatch: pytest.MonkeyPatch) -> None:
    before = initscript.digest()
    monkeypatch.setattr(netinit, "UDHCPC_SCRIPT", netinit.UDHCPC_SCRIPT + "# changed\n")
    assert initscript.digest() != before


def test_setup_force_rebuilds(cache_home: Path) -> None:
    assert _kvmlite(cache_home, "setup", "--kernel-source", "debian").returncode == 0
    manifest = cache_home / "kvmlite" / "default" / "manifest.json"
    before = _stamp(manifest)
    done = _kvmlite(cache_home, "setup", "--force")
    assert done.stdout.startswith("default guest ready:")
    assert _stamp(manifest) != before


def test_default_guest_before_and_after_setup(tmp_path: Path, package_cache: Path,
                                              cloud_kernel: kernel.KernelFiles) -> None:
    # Arrange
    directory = tmp_path / "guest"
    assert setup.default_guest(directory) is None
    # Act
    setup.prepare_guest(directory, setup.SetupOptions(kernel_source="debian", packages=package_cache))
    guest = setup.default_guest(directory)
    # Assert
    assert guest is not None
    assert guest.kernel == directory / "vmlinuz" and guest.kernel.read_bytes()[0x202:0x206] == b"HdrS"
    assert guest.initrd == directory / "initramfs.cpio" and guest.initrd.read_bytes()[:6] == b"070701"


def test_prepare_guest_host_kernel_layout_used(tmp_path: Path, package_cache: Path,
                                               cloud_kernel: kernel.KernelFiles) -> None:
    # Arrange: a host-like /boot and /lib/modules made from the cloud kernel
    assert cloud_kernel.modules is not None
    boot, modroot = tmp_path / "boot", tmp_path / "lib" / "modules"
    boot.mkdir()
    modroot.mkdir(parents=True)
    (boot / f"vmlinuz-{cloud_kernel.version}").symlink_to(cloud_kernel.vmlinuz)
    (modroot / cloud_kernel.version).symlink_to(cloud_kernel.modules)
    # Act
    found = kernel.host_kernel(cloud_kernel.version, boot, modroot)
    # Assert
    assert found.source == "host" and found.modules == modroot / cloud_kernel.version
    assert found.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"


def test_host_kernel_absent_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(KvmliteError, match=r"host kernel .*vmlinuz-0.0-none does not exist"):
        kernel.host_kernel("0.0-none", tmp_path, tmp_path)


def test_prepare_guest_bad_package_name_one_line_error(tmp_path: Path) -> None:
    options = setup.SetupOptions(kernel_source="debian", kernel_package="linux-image-no-such-kvmlite",
                                 packages=tmp_path / "packages")
    with pytest.raises(KvmliteError) as info:
        setup.prepare_guest(tmp_path / "guest", options)
    assert "linux-image-no-such-kvmlite" in str(info.value) and "\n" not in str(info.value)


def test_setup_unwritable_cache_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = _kvmlite(blocker / "cache", "setup")
    assert done.returncode == 1
    assert done.stderr.startswith("kvmlite: error: cache directory ") and "is not writable" in done.stderr
    assert done.stderr.count("\n") == 1


def test_setup_missing_rootfs_dir_one_line_error(tmp_path: Path) -> None:
    done = _kvmlite(tmp_path, "setup", "--rootfs", str(tmp_path / "nope"), "--image", str(tmp_path / "r.img"))
    assert done.returncode == 2
    assert done.stderr == f"kvmlite: error: rootfs directory {tmp_path / 'nope'} does not exist\n"


def test_setup_image_without_rootfs_usage_error(tmp_path: Path) -> None:
    done = _kvmlite(tmp_path, "setup", "--image", str(tmp_path / "r.img"))
    assert done.returncode == 2 and "--rootfs DIR and --image FILE go together" in done.stderr


def test_setup_rootfs_image_passes_e2fsck(tmp_path: Path) -> None:
    # Arrange
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("hi\n")
    image = tmp_path / "disk.img"
    # Act
    done = _kvmlite(tmp_path, "setup", "--rootfs", str(tree), "--image", str(image), "--size", "32M")
    # Assert
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"root disk image ready: {image}\n"
    check = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True,
                           env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"})
    assert check.returncode == 0, check.stdout


# --- the 9p-capable guest -----------------------------------------------------------------------------

@pytest.fixture()
def both_kernels(package_cache: Path, cloud_kernel: kernel.KernelFiles, generic_kernel: kernel.KernelFiles) -> Path:
    """Both Debian kernels in the package cache (fetched once per machine)."""
    return package_cache


def _options(packages: Path, **changes: object) -> setup.SetupOptions:
    return setup.SetupOptions(kernel_source="debian", packages=packages, **changes)   # type: ignore[arg-type]


def test_prepare_guests_cloud_default_9p_guest_beside_it(tmp_path: Path, both_kernels: Path) -> None:
    # Arrange
    directory = tmp_path / "guest"
    # Act
    result = setup.prepare_guests(directory, _options(both_kernels))
    # Assert: the cloud kernel cannot mount shares, the generic one in 9p/ can
    assert not result.guest.shares and result.share_error is None and result.share_guest is not None
    assert result.share_guest.directory == directory / setup.SHARES_DIR
    shared = json.loads((directory / "9p" / "manifest.json").read_text())
    assert shared["shares"] is True and shared["kernel"]["version"].endswith("-amd64")
    assert "cloud" not in shared["kernel"]["version"]
    assert shared["modules"]["on_demand"]["9p"]["missing"] == []
    assert "9p" in shared["modules"]["on_demand"]["9p"]["loaded"]
    assert json.loads((directory / "manifest.json").read_text())["shares"] is False
    assert setup.default_guest(directory) == result.guest
    assert setup.default_guest(directory, shares=True) == result.share_guest.guest
    assert setup.default_guest(directory, shares=True).initrd == directory / "9p" / "initramfs.cpio"


def test_prepare_guests_default_with_9p_serves_shares_itself(tmp_path: Path, both_kernels: Path) -> None:
    # Arrange: a stale 9p/ from an earlier setup
    directory = tmp_path / "guest"
    (directory / setup.SHARES_DIR).mkdir(parents=True)
    # Act: a default guest from the generic kernel
    result = setup.prepare_guests(directory, _options(both_kernels, kernel_package=kernel.GENERIC_KERNEL_PACKAGE))
    # Assert
    assert result.guest.shares and result.share_guest is None
    assert not (directory / setup.SHARES_DIR).exists()
    assert setup.default_guest(directory, shares=True) == result.guest


def test_prepare_guests_9p_guest_fails_default_still_usable(tmp_path: Path, both_kernels: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    # Arrange: the 9p guest's kernel package cannot be had
    monkeypatch.setattr(setup, "SHARES_KERNEL_PACKAGE", "linux-image-no-such-kvmlite")
    directory = tmp_path / "guest"
    # Act
    with caplog.at_level("WARNING", logger="kvmlite.guest.setup"):
        result = setup.prepare_guests(directory, _options(both_kernels))
    # Assert
    assert result.share_guest is None and "linux-image-no-such-kvmlite" in (result.share_error or "")
    assert "no 9p-capable guest prepared" in caplog.text
    assert setup.default_guest(directory) is not None
    assert setup.default_guest(directory, shares=True) is None


def test_default_guest_shares_before_setup_none(tmp_path: Path) -> None:
    assert setup.default_guest(tmp_path / "nothing", shares=True) is None


def test_prepare_guests_on_demand_module_change_rebuilds_both(tmp_path: Path, both_kernels: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange
    directory = tmp_path / "guest"
    setup.prepare_guests(directory, _options(both_kernels))
    before = _stamps(directory)
    # Act: a kvmlite whose on-demand groups differ
    monkeypatch.setattr(initramfs, "ON_DEMAND_MODULES", initramfs.ON_DEMAND_MODULES + (("extra", ("vfat",)),))
    result = setup.prepare_guests(directory, _options(both_kernels))
    # Assert
    assert result.rebuilt and result.share_guest is not None and result.share_guest.rebuilt
    after = _stamps(directory)
    assert after["manifest.json"] != before["manifest.json"] and after["9p/manifest.json"] != before["9p/manifest.json"]
    assert "extra" in json.loads((directory / "9p" / "manifest.json").read_text())["modules"]["on_demand"]


def test_prepare_guests_damaged_9p_initramfs_only_it_rebuilt(tmp_path: Path, both_kernels: Path) -> None:
    directory = tmp_path / "guest"
    setup.prepare_guests(directory, _options(both_kernels))
    (directory / "9p" / "initramfs.cpio").write_bytes(b"damaged")
    result = setup.prepare_guests(directory, _options(both_kernels))
    assert not result.rebuilt and result.share_guest is not None and result.share_guest.rebuilt
    assert (directory / "9p" / "initramfs.cpio").stat().st_size > 1 << 20


def test_prepare_guest_other_kernel_package_rebuilds(tmp_path: Path, both_kernels: Path) -> None:
    # A directory holding the cloud kernel's guest does not answer for the generic kernel
    directory = tmp_path / "guest"
    setup.prepare_guest(directory, _options(both_kernels))
    result = setup.prepare_guest(directory, _options(both_kernels, kernel_package=kernel.GENERIC_KERNEL_PACKAGE))
    assert result.rebuilt and result.guest.shares


@pytest.mark.parametrize(("built", "package", "same"), [
    ("linux-image-6.1.0-57-cloud-amd64", "linux-image-cloud-amd64", True),
    ("linux-image-6.1.0-57-amd64", "linux-image-amd64", True),
    ("linux-image-6.1.0-57-cloud-amd64", "linux-image-amd64", False),
    ("linux-image-6.1.0-57-amd64", "linux-image-cloud-amd64", False),
    ("linux-image-6.1.0-57-amd64", "linux-image-6.1.0-57-amd64", True),
    (None, "linux-image-amd64", False),
])
def test_built_from_versioned_package_matches_its_flavour(built: str | None, package: str, same: bool) -> None:
    assert setup._built_from(built, package) is same
