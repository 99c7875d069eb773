"""kvmlite.guest.rootfs: ext4 images from directories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kvmlite.errors import KvmliteError, UsageError
from kvmlite.guest import rootfs

from .conftest import require_tool


def _tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("guest\n")
    (root / "bin").mkdir()
    (root / "bin" / "sh").symlink_to("busybox")
    return root


@pytest.mark.parametrize("text,expected", [("64M", 64 << 20), ("1G", 1 << 30), ("512MiB", 512 << 20),
                                           ("4096", 4096), ("2k", 2048)])
def test_parse_size_units(text: str, expected: int) -> None:
    assert rootfs.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "1.5G", "-1M", "3Q"])
def test_parse_size_bad_raises_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="bad size"):
        rootfs.parse_size(text)


def test_build_image_passes_e2fsck_and_holds_files(tmp_path: Path) -> None:
    # Arrange
    e2fsck = require_tool("e2fsck")
    debugfs = require_tool("debugfs")
    require_tool("mkfs.ext4")
    tree = _tree(tmp_path / "tree")
    image = tmp_path / "root.img"
    # Act
    rootfs.build_image(tree, image, 16 << 20)
    # Assert
    check = subprocess.run([e2fsck, "-fn", str(image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    cat = subprocess.run([debugfs, "-R", "cat /etc/hostname", str(image)], capture_output=True, text=True)
    assert cat.stdout == "guest\n"
    assert image.stat().st_size == 16 << 20


def test_build_image_default_size_fits(tmp_path: Path) -> None:
    require_tool("mkfs.ext4")
    tree = _tree(tmp_path / "tree")
    (tree / "big").write_bytes(b"x" * (20 << 20))
    image = rootfs.build_image(tree, tmp_path / "root.img")
    assert image.stat().st_size >= 20 << 20


def test_build_image_missing_dir_raises(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        rootfs.build_image(tmp_path / "nope", tmp_path / "x.img")


def test_build_image_unwritable_target_raises(tmp_path: Path) -> None:
    with pytest.raises(KvmliteError, match="not writable"):
        rootfs.build_image(_tree(tmp_path / "tree"), tmp_path / "missing-dir" / "x.img")


def test_build_image_too_small_reports_mkfs_reason(tmp_path: Path) -> None:
    require_tool("mkfs.ext4")
    tree = _tree(tmp_path / "tree")
    (tree / "big").write_bytes(b"x" * (4 << 20))
    with pytest.raises(KvmliteError, match="mkfs.ext4 could not build x.img"):
        rootfs.build_image(tree, tmp_path / "x.img", 1 << 20)
    assert not (tmp_path / "x.img").exists()


def test_build_image_without_mkfs_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(rootfs, "SBIN_DIRS", ())
    with pytest.raises(KvmliteError, match="mkfs.ext4 not found"):
        rootfs.build_image(_tree(tmp_path / "tree"), tmp_path / "x.img")
