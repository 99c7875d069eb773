"""``kvmlite run --9p DIR[,TAG][,ro]``: kvmtool's share option turned into
ShareConfig values, its one-line errors with exit status 2, and what the
VM makes of it: one virtio-9p device per share, each on its own event loop,
and ``kvmlite.9p=`` on the kernel command line."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from kvmlite.cli.cmd_run import config_from_args
from kvmlite.cli.main import build_parser, find_command, main
from kvmlite.errors import ConfigError
from kvmlite.guest.cmdline import shares_option
from kvmlite.vmm.config import ShareConfig, VmConfig


def run_status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        status = main(["run", *argv])
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, capsys.readouterr().err


def config_for(*argv: str) -> VmConfig:
    parser = build_parser(find_command("run"))
    args = parser.parse_args(["-k", "/boot/vmlinuz", *argv])
    args.passthrough = None
    return config_from_args(args)


# --- ShareConfig.parse ------------------------------------------------------

def test_share_dir_alone_gets_kvmtool_default_tag(tmp_path: Path) -> None:
    assert ShareConfig.parse(str(tmp_path)) == ShareConfig(str(tmp_path), "kvm_9p", False)


@pytest.mark.parametrize("suffix, tag, read_only", [
    (",src", "src", False),
    (",src,ro", "src", True),
    (",ro", "kvm_9p", True),
    (",a.b_c-9", "a.b_c-9", False),
    (",ro,ro", "kvm_9p", True),
])
def test_share_tag_and_ro_parsed(tmp_path: Path, suffix: str, tag: str, read_only: bool) -> None:
    share = ShareConfig.parse(str(tmp_path) + suffix)
    assert (share.tag, share.read_only) == (tag, read_only)


def test_share_dir_resolved_to_absolute_real_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    assert ShareConfig.parse("link,t").path == str((tmp_path / "real").resolve())
    assert ShareConfig.parse("real/../real").path == str((tmp_path / "real").resolve())


@pytest.mark.parametrize("suffix, needle", [
    (",x" + "y" * 31, "is 32 bytes, at most 31"),
    (",a/b", "tag 'a/b': use letters, digits"),
    (",a b", "tag 'a b': use letters, digits"),
    (",caf\u00e9", "use letters, digits"),
    (",a:ro", "tag 'a:ro': use letters"),
    (",..", "tag '..': use letters, digits, '_', '.' or '-' (not . or ..)"),
    (",.", "tag '.': use letters"),
    (",", "empty tag"),
    (",,ro", "empty tag"),
    (",src,rw", "unknown option 'rw' after the tag (only 'ro' is known)"),
    (",ro,src", "unknown option 'src' after the tag"),
    (",src,ro,extra", "unknown option 'extra'"),
])
def test_share_bad_tag_or_option_one_line_error(tmp_path: Path, suffix: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        ShareConfig.parse(str(tmp_path) + suffix)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("--9p ")


def test_share_tag_of_31_bytes_accepted(tmp_path: Path) -> None:
    assert ShareConfig.parse(f"{tmp_path},{'t' * 31}").tag == "t" * 31


def test_share_missing_dir_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such directory '.*/gone'"):
        ShareConfig.parse(str(tmp_path / "gone"))


def test_share_file_not_a_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"'.*/file' is not a directory"):
        ShareConfig.parse(str(tmp_path / "file") + ",t")


def test_share_empty_dir_refused() -> None:
    with pytest.raises(ConfigError, match="missing directory"):
        ShareConfig.parse(",tag")


def test_share_unreadable_dir_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(root reads any directory, so the refusal is staged.)"""
    real_open = os.open

    def refuse(path, flags, *args):
        if path == str(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ConfigError, match="cannot read directory .*: Permission denied"):
        ShareConfig.parse(str(tmp_path))


def test_share_unsearchable_dir_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: not mode & os.X_OK)
    with pytest.raises(ConfigError, match="cannot search directory"):
        ShareConfig.parse(str(tmp_path))


# --- VmConfig and the command line -------------------------------------------------

def test_vmconfig_same_tag_twice_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match="tag 'kvm_9p' names two shares"):
        VmConfig(kernel="k", shares=(ShareConfig.parse(str(tmp_path / "a")), ShareConfig.parse(str(tmp_path / "b"))))


def test_run_9p_repeatable_in_order(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = config_for("--9p", f"{tmp_path / 'a'},src", "--9p", f"{tmp_path / 'b'},data,ro")
    assert config.shares == (ShareConfig(str(tmp_path / "a"), "src"), ShareConfig(str(tmp_path / "b"), "data", True))


def test_run_without_9p_has_no_shares() -> None:
    assert config_for().shares == ()


@pytest.mark.parametrize("argv, expected", [
    (["--9p", "/nonexistent-kvmlite-dir"], "kvmlite: error: --9p '/nonexistent-kvmlite-dir': no such directory "
                                           "'/nonexistent-kvmlite-dir'"),
    (["--9p", "/,bad/tag"], "kvmlite: error: --9p '/,bad/tag': tag 'bad/tag': use letters, digits, '_', '.' or '-' "
                            "(not . or ..)"),
    (["--9p", "/,t", "--9p", "/tmp,t"], "kvmlite: error: --9p: tag 't' names two shares (give each its own: "
                                        "--9p DIR,TAG)"),
    (["--9p", "/,t,rw"], "kvmlite: error: --9p '/,t,rw': unknown option 'rw' after the tag (only 'ro' is known)"),
])
def test_run_bad_9p_exit_2_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    status, err = run_status(capsys, "-k", "/nonexistent", *argv)
    assert status == 2
    assert err.strip().splitlines() == [expected]


def test_run_help_names_9p(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["help", "run"]) if find_command("help") else 0
    out = capsys.readouterr().out
    assert status == 0 and "--9p DIR[,TAG][,ro]" in out and "/mnt/TAG" in out


# --- the guest's command line word and the wiring -------------------------------------

def test_shares_option_lists_tags_in_order_ro_marked() -> None:
    assert shares_option([("src", False), ("data", True), ("kvm_9p", False)]) == "kvmlite.9p=src,data:ro,kvm_9p"


def test_devices_one_virtio_9p_per_share_with_own_loop_and_cmdline(tmp_path: Path) -> None:
    from kvmlite.devices.virtio.ninep import Virtio9p
    from kvmlite.vmm.devices import DeviceManager

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shares = (ShareConfig(str(tmp_path / "a"), "src"), ShareConfig(str(tmp_path / "b"), "data", True))
    manager = DeviceManager(SimpleNamespace(config=VmConfig(kernel="k", shares=shares)))   # type: ignore[arg-type]
    devices = manager._share_devices()
    try:
        assert [name for name, _, _ in devices] == ["virtio-9p0", "virtio-9p1"]
        assert [loop.name for _, _, loop in devices] == ["virtio-9p0", "virtio-9p1"]
        assert manager.device_loops == [loop for _, _, loop in devices]
        assert all(isinstance(device, Virtio9p) for _, device, _ in devices)
        assert [(d.tag, d.server.readonly) for _, d, _ in devices] == [("src", False), ("data", True)]
        assert manager.cmdline_fragments() == ["kvmlite.9p=src,data:ro"]
    finally:
        for _, device, loop in devices:
            device.close()
            loop.close()


def test_devices_share_gone_before_the_vm_is_built_closes_the_others(tmp_path: Path) -> None:
    from kvmlite.devices.virtio.p9 import ShareError
    from kvmlite.vmm.devices import DeviceManager

    (tmp_path / "a").mkdir()
    shares = (ShareConfig(str(tmp_path / "a"), "a"), ShareConfig(str(tmp_path / "gone"), "b"))
    manager = DeviceManager(SimpleNamespace(config=VmConfig(kernel="k", shares=shares)))   # type: ignore[arg-type]
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ShareError):
        manager._share_devices()
    for loop in manager.device_loops:
        loop.close()
    assert len(os.listdir("/proc/self/fd")) == before
    assert manager.cmdline_fragments() == []


def parsed(*argv: str):
    args = build_parser(find_command("run")).parse_args(list(argv))
    args.passthrough = None
    return args


def test_run_shares_without_kernel_boot_the_guest_that_mounts_shares(tmp_path: Path, monkeypatch) -> None:
    import kvmlite.guest.setup as setup

    asked: list[bool] = []

    def default_guest(directory=None, *, shares=False):
        asked.append(shares)
        return SimpleNamespace(kernel=tmp_path / f"vmlinuz-{shares}", initrd=tmp_path / "initrd")

    monkeypatch.setattr(setup, "default_guest", default_guest)
    with_share = config_from_args(parsed("--9p", str(tmp_path), "-n", "mode=none"))
    without = config_from_args(parsed("-n", "mode=none"))
    assert asked == [True, False]
    assert with_share.kernel.endswith("vmlinuz-True") and without.kernel.endswith("vmlinuz-False")


def test_run_shares_no_such_guest_prepared_one_line_error(tmp_path: Path, monkeypatch) -> None:
    import kvmlite.guest.setup as setup

    monkeypatch.setattr(setup, "default_guest", lambda directory=None, *, shares=False: None)
    with pytest.raises(ConfigError, match="no default guest that can mount shares prepared: run 'kvmlite setup'"):
        config_from_args(parsed("--9p", str(tmp_path)))
