"""kvmlite.guest.kmod: modinfo parsing, dependency closure and load order."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmlite.errors import KvmliteError
from kvmlite.guest import kmod
from kvmlite.guest.kernel import KernelFiles

from .elffixture import module_elf, write_module


def _tree(root: Path) -> Path:
    """a -> b, c; b -> d; c -> d; e is built in; f -> missing; g softdeps a."""
    mods = root / "6.0.0-test"
    write_module(mods, "kernel/x/a-drv.ko", "b,c")
    write_module(mods, "kernel/x/b.ko", "d")
    write_module(mods, "kernel/y/c.ko", "d,e")
    write_module(mods, "kernel/y/d.ko", "")
    write_module(mods, "kernel/z/f.ko", "nowhere")
    write_module(mods, "kernel/z/g.ko", "", softdep="pre: a_drv crypto-alias post: b")
    (mods / "modules.builtin").write_text("kernel/y/e.ko\n")
    return mods


def _names(resolution: kmod.Resolution) -> list[str]:
    return [m.name for m in resolution.modules]


def test_module_name_hyphen_and_suffix_normalised() -> None:
    assert kmod.module_name("kernel/arch/x86/kvm/kvm-amd.ko.zst") == "kvm_amd"
    assert kmod.module_name("virtio_blk.ko") == "virtio_blk"


def test_parse_modinfo_repeated_keys_kept_in_order() -> None:
    info = kmod.parse_modinfo(b"alias=a\0depends=x,y\0alias=b\0\0")
    assert info == {"alias": ["a", "b"], "depends": ["x,y"]}


def test_depends_of_softdep_pre_only() -> None:
    deps = kmod.depends_of({"depends": ["x,y-z"], "softdep": ["pre: p1 p2 post: q"]})
    assert deps.hard == ("x", "y_z")
    assert deps.soft == ("p1", "p2")


def test_modinfo_without_section_raises() -> None:
    data = module_elf({"name": "x"}).replace(b".modinfo", b".notinfo")
    with pytest.raises(KvmliteError, match="no .modinfo section"):
        kmod.modinfo(data, "x.ko")


def test_resolve_diamond_dependencies_first_each_once(tmp_path: Path) -> None:
    # Arrange
    tree = kmod.ModuleTree(_tree(tmp_path))
    # Act
    result = tree.resolve(["a-drv"])
    # Assert
    names = _names(result)
    assert sorted(names) == ["a_drv", "b", "c", "d"]
    assert names.index("d") < names.index("b") < names.index("a_drv")
    assert names.index("d") < names.index("c") < names.index("a_drv")
    assert result.builtin == ("e",)
    assert result.missing == ()


def test_resolve_missing_dependency_drops_module(tmp_path: Path) -> None:
    result = kmod.ModuleTree(_tree(tmp_path)).resolve(["f", "d", "absent"])
    assert _names(result) == ["d"]
    assert set(result.missing) == {"nowhere", "f", "absent"}


def test_resolve_softdep_loaded_first_alias_ignored(tmp_path: Path) -> None:
    result = kmod.ModuleTree(_tree(tmp_path)).resolve(["g"])
    names = _names(result)
    assert names[-1] == "g" and "a_drv" in names
    assert result.missing == ()   # crypto-alias is an alias, not a missing module


def test_resolve_builtin_request_not_loaded(tmp_path: Path) -> None:
    result = kmod.ModuleTree(_tree(tmp_path)).resolve(["e"])
    assert result.modules == () and result.builtin == ("e",)


def test_resolve_cycle_raises(tmp_path: Path) -> None:
    write_module(tmp_path, "kernel/p.ko", "q")
    write_module(tmp_path, "kernel/q.ko", "p")
    with pytest.raises(KvmliteError, match="cycle"):
        kmod.ModuleTree(tmp_path).resolve(["p"])


def test_resolve_modules_dep_takes_precedence_over_modinfo(tmp_path: Path) -> None:
    # Arrange: modinfo says a needs nothing, depmod's modules.dep says b
    write_module(tmp_path, "kernel/a.ko", "")
    write_module(tmp_path, "kernel/b.ko", "")
    (tmp_path / "modules.dep").write_text("kernel/a.ko: kernel/b.ko\nkernel/b.ko:\n")
    # Act
    result = kmod.ModuleTree(tmp_path).resolve(["a"])
    # Assert
    assert _names(result) == ["b", "a"]


def test_module_tree_missing_dir_raises(tmp_path: Path) -> None:
    with pytest.raises(KvmliteError, match="does not exist"):
        kmod.ModuleTree(tmp_path / "nope")


def test_read_module_xz_and_gz_decompressed(tmp_path: Path) -> None:
    raw = module_elf({"name": "c", "depends": ""})
    (tmp_path / "c.ko.xz").write_bytes(lzma.compress(raw, format=lzma.FORMAT_XZ))
    (tmp_path / "c.ko.gz").write_bytes(gzip.compress(raw))
    assert kmod.read_module(tmp_path / "c.ko.xz") == raw
    assert kmod.read_module(tmp_path / "c.ko.gz") == raw


def test_read_module_zst_decompressed_with_zstd_tool(tmp_path: Path) -> None:
    zstd = shutil.which("zstd")
    if zstd is None:
        pytest.skip("zstd is not installed")
    raw = module_elf({"name": "c"})
    (tmp_path / "c.ko.zst").write_bytes(subprocess.run([zstd, "-q", "-c"], input=raw, capture_output=True,
                                                       check=True).stdout)
    assert kmod.read_module(tmp_path / "c.ko.zst") == raw


def test_read_module_zst_without_zstd_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.ko.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(KvmliteError, match="zstd command is not installed"):
        kmod.read_module(tmp_path / "c.ko.zst")


def test_resolve_compressed_tree_reads_depends(tmp_path: Path) -> None:
    write_module(tmp_path, "kernel/d.ko", "")
    raw = module_elf({"name": "top", "depends": "d"})
    (tmp_path / "kernel/top.ko.xz").write_bytes(lzma.compress(raw))
    assert _names(kmod.ModuleTree(tmp_path).resolve(["top"])) == ["d", "top"]


def test_resolve_cloud_kernel_guest_set_complete_and_ordered(cloud_kernel: KernelFiles) -> None:
    # Arrange
    assert cloud_kernel.modules is not None
    tree = kmod.ModuleTree(cloud_kernel.modules)
    # Act
    result = tree.resolve(["vmw_vsock_virtio_transport", "virtio_blk", "virtio_net", "ext4", "9p"])
    # Assert: every module comes after all of its dependencies, and the closure is closed
    names = _names(result)
    for position, name in enumerate(names):
        for dep in tree.depends(name).hard:
            assert dep in tree.builtin or names.index(dep) < position, f"{dep} not before {name}"
    assert {"vsock", "vmw_vsock_virtio_transport_common", "virtio", "virtio_ring", "net_failover"} <= set(names)
    assert "ext4" in result.builtin            # built into Debian's cloud kernel
    assert "9p" in result.missing              # CONFIG_NET_9P is off there
