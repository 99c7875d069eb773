"""``kvmlite run --vsock CID[,socket=PATH][,trans=pci|mmio]``: lkvm's option
turned into a VsockConfig, its one-line errors with exit status 2, and
what the VM makes of it: one virtio-vsock on an event loop of its own, its
Unix socket in the VM's runtime directory (``NAME.d``, mode 0700) or where
the option says, gone with the VM."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from kvmlite.cli.cmd_run import config_from_args
from kvmlite.cli.main import build_parser, find_command, main
from kvmlite.errors import ConfigError, KvmliteError
from kvmlite.vmm.config import VmConfig, VsockConfig


def run_status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        status = main(["run", *argv])
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, capsys.readouterr().err


def config_for(*argv: str) -> VmConfig:
    args = build_parser(find_command("run")).parse_args(["-k", "/boot/vmlinuz", "-n", "mode=none", *argv])
    args.passthrough = None
    return config_from_args(args)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose sockets fit sun_path (pytest's tmp_path may not)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kv") as directory:
        yield Path(directory)


# --- VsockConfig ----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("3", VsockConfig(3)),
    ("4294967294", VsockConfig(0xFFFF_FFFE)),
    ("42,trans=mmio", VsockConfig(42, trans="mmio")),
    ("42,socket=/run/v.sock", VsockConfig(42, "/run/v.sock")),
    ("42,trans=pci,socket=/run/v.sock", VsockConfig(42, "/run/v.sock", "pci")),
])
def test_vsock_parse(text: str, expected: VsockConfig) -> None:
    assert VsockConfig.parse(text) == expected


def test_vsock_relative_socket_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert VsockConfig.parse("3,socket=v.sock").socket == str(tmp_path / "v.sock")


@pytest.mark.parametrize("text, needle", [
    ("0", "--vsock 0: a guest CID is a number from 3 to 4294967294"),
    ("2", "--vsock 2: a guest CID is a number from 3 to 4294967294 (0-2 are reserved"),
    ("4294967295", "--vsock 4294967295: a guest CID is a number from 3 to 4294967294"),
    ("99999999999", "--vsock 99999999999: a guest CID is a number from 3"),
    ("abc", "--vsock 'abc': the guest CID 'abc' is not a number (3..4294967294)"),
    ("-3", "the guest CID '-3' is not a number"),
    ("3.5", "the guest CID '3.5' is not a number"),
    ("", "the guest CID '' is not a number"),
    (" 3", "the guest CID ' 3' is not a number"),
    ("3,cid=4", "unknown key 'cid' (known: socket, trans)"),
    ("3,trans=usb", "--vsock trans='usb': choose one of pci, mmio"),
    ("3,socket=", "--vsock socket: missing value"),
    ("3,trans", "--vsock trans: missing value"),
    ("3,trans=pci,trans=mmio", "--vsock trans: given twice"),
    ("3,socket=/" + "x" * 100, "is too long for a Unix socket with a _PORT suffix (at most 96)"),
])
def test_vsock_bad_option_one_line_error(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        VsockConfig.parse(text)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("cid", [2, -1, 1 << 32, True, "3"])
def test_vsock_config_checked_for_the_python_api_too(cid: object) -> None:
    with pytest.raises(ConfigError, match="a guest CID is a number from 3 to 4294967294"):
        VsockConfig(cid)                                    # type: ignore[arg-type]


# --- the command line ---------------------------------------------------------------

def test_run_vsock_option_becomes_config() -> None:
    assert config_for("--vsock", "3").vsock == VsockConfig(3)
    assert config_for("--vsock", "9,trans=mmio").vsock == VsockConfig(9, trans="mmio")


def test_run_without_vsock_has_none() -> None:
    assert config_for().vsock is None


@pytest.mark.parametrize("value, expected", [
    ("2", "kvmlite: error: --vsock 2: a guest CID is a number from 3 to 4294967294 (0-2 are reserved, "
          "4294967295 means any)"),
    ("4294967295", "kvmlite: error: --vsock 4294967295: a guest CID is a number from 3 to 4294967294 "
                   "(0-2 are reserved, 4294967295 means any)"),
    ("guest", "kvmlite: error: --vsock 'guest': the guest CID 'guest' is not a number (3..4294967294)"),
])
def test_run_bad_vsock_exit_2_one_line(capsys: pytest.CaptureFixture[str], value: str, expected: str) -> None:
    status, err = run_status(capsys, "-k", "/nonexistent", "--vsock", value)
    assert status == 2
    assert err.strip().splitlines() == [expected]


def test_run_vsock_without_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_status(capsys, "-k", "/nonexistent", "--vsock")
    assert status == 2 and "--vsock" in err and len(err.strip().splitlines()) == 1


def test_run_help_names_vsock(capsys: pytest.CaptureFixture[str]) -> None:
    main(["help", "run"])
    out = capsys.readouterr().out
    assert "--vsock CID[,socket=PATH][,trans=pci|mmio]" in out and "CONNECT PORT" in out


# --- the wiring -------------------------------------------------------------------------

def manager_for(vsock: VsockConfig, name: str | None = "web"):
    from kvmlite.vmm.devices import DeviceManager

    return DeviceManager(SimpleNamespace(config=VmConfig(kernel="k", vsock=vsock, name=name)))  # type: ignore


def close_all(manager, devices) -> None:
    for _name, device, _loop in devices:
        device.close()
    manager.close()


def test_devices_vsock_on_its_own_loop_at_the_given_socket(short_dir: Path) -> None:
    from kvmlite.devices.virtio.vsock import VirtioVsock

    path = short_dir / "v.sock"
    manager = manager_for(VsockConfig(7, str(path), "mmio"))

    devices = manager._vsock_devices()

    try:
        [(name, device, loop)] = devices
        assert name == loop.name == "virtio-vsock" and manager.device_loops == [loop]
        assert isinstance(device, VirtioVsock) and device.guest_cid == 7
        assert manager._transports["virtio-vsock"] == "mmio"
        assert manager.vsock_path == str(path)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    finally:
        close_all(manager, devices)
    assert not path.exists()


def test_devices_vsock_default_socket_in_the_vms_runtime_dir(short_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    manager = manager_for(VsockConfig(3))

    devices = manager._vsock_devices()

    vm_dir = short_dir / "kvmlite" / "web.d"
    try:
        assert manager.vsock_path == str(vm_dir / "vsock.sock")
        assert stat.S_IMODE(os.lstat(vm_dir).st_mode) == 0o700
        assert stat.S_ISSOCK(os.lstat(vm_dir / "vsock.sock").st_mode)
    finally:
        close_all(manager, devices)
    assert not vm_dir.exists()          # the socket and the directory go with the VM


def test_devices_vsock_dir_kept_while_a_host_program_listens_in_it(short_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    manager = manager_for(VsockConfig(3))
    devices = manager._vsock_devices()
    service = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    service.bind(manager.vsock_path + "_52")

    close_all(manager, devices)

    try:
        assert os.listdir(short_dir / "kvmlite" / "web.d") == ["vsock.sock_52"]
    finally:
        service.close()


def test_devices_vsock_default_path_too_long_one_line_error(short_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    deep = short_dir / ("d" * 60)
    deep.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    manager = manager_for(VsockConfig(3), name="n" * 30)

    with pytest.raises(ConfigError, match="too long for a Unix socket with a _PORT suffix; point XDG_RUNTIME_DIR"):
        manager._vsock_devices()
    manager.close()


def test_devices_vsock_socket_in_use_closes_the_devices_made_before(short_dir: Path) -> None:
    from kvmlite.vmm.config import ShareConfig
    from kvmlite.vmm.devices import DeviceManager

    path = short_dir / "v.sock"
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(str(path))
    busy.listen(1)
    (short_dir / "share").mkdir()
    config = VmConfig(kernel="k", vsock=VsockConfig(3, str(path)), shares=(ShareConfig.parse(str(short_dir / "share")),))
    manager = DeviceManager(SimpleNamespace(config=config, event_loop=None))     # type: ignore[arg-type]
    before = len(os.listdir("/proc/self/fd"))
    try:
        with pytest.raises(KvmliteError, match="is in use by another process"):
            manager._virtio_devices()
        manager.close()
        assert len(os.listdir("/proc/self/fd")) == before   # the share's server and loop went too
    finally:
        busy.close()
