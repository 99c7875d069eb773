"""kvmlite.guest.debian against the real apt of this machine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvmlite.errors import KvmliteError
from kvmlite.guest import debian


@pytest.fixture(autouse=True)
def _need_apt() -> None:
    if shutil.which("apt-cache") is None or shutil.which("apt-get") is None:
        pytest.skip("apt-cache/apt-get not installed (not a Debian system)")


def test_resolve_kernel_package_cloud_meta_gives_versioned_name() -> None:
    name = debian.resolve_kernel_package("linux-image-cloud-amd64")
    assert name.startswith("linux-image-") and name.endswith("-cloud-amd64")
    assert name != "linux-image-cloud-amd64"
    assert debian.resolve_kernel_package(name) == name


def test_package_ref_has_sha256_of_candidate() -> None:
    ref = debian.package_ref("busybox-static")
    assert len(ref.sha256) == 64 and int(ref.sha256, 16) >= 0
    assert ref.version == debian.candidate_version("busybox-static")


def test_package_ref_unknown_name_one_line_error() -> None:
    with pytest.raises(KvmliteError) as info:
        debian.package_ref("no-such-package-kvmlite")
    assert "no-such-package-kvmlite" in str(info.value) and "\n" not in str(info.value)


def test_fetch_unpacked_busybox_verified_and_unpacked(tmp_path: Path) -> None:
    # Act
    got = debian.fetch_unpacked("busybox-static", tmp_path)
    # Assert
    deb = tmp_path / "debs" / f"{got.ref.stem}.deb"
    assert debian.sha256_file(deb) == got.ref.sha256
    assert (got.root / "bin" / "busybox").is_file()


def test_fetch_corrupt_cached_deb_downloaded_again(tmp_path: Path) -> None:
    # Arrange: a cached .deb whose checksum does not match is not trusted
    ref = debian.package_ref("busybox-static")
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / f"{ref.stem}.deb").write_bytes(b"corrupt")
    # Act
    deb = debian.fetch(ref, tmp_path)
    # Assert
    assert debian.sha256_file(deb) == ref.sha256


def test_fetch_wrong_checksum_raises(tmp_path: Path) -> None:
    ref = debian.package_ref("busybox-static")
    bad = debian.PackageRef(ref.name, ref.version, "0" * 64, ref.size)
    with pytest.raises(KvmliteError, match="does not match"):
        debian.fetch(bad, tmp_path)


def test_fetch_unpacked_unwritable_cache_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(KvmliteError, match="is not writable"):
        debian.fetch_unpacked("busybox-static", blocker / "cache")


def test_fetch_unpacked_without_apt_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KvmliteError, match="apt-cache not found"):
        debian.fetch_unpacked("busybox-static", tmp_path / "cache")


def test_fetch_unavailable_version_one_line_error(tmp_path: Path) -> None:
    ref = debian.PackageRef("busybox-static", "0.0-kvmlite-none", "0" * 64, 0)
    with pytest.raises(KvmliteError) as info:
        debian.fetch(ref, tmp_path)
    assert str(info.value).startswith("apt-get download busybox-static failed: ")
    assert "\n" not in str(info.value)
