"""``kvmlite run -n``: lkvm's network option turned into NetConfig values,
and its one-line errors with exit status 2."""

from __future__ import annotations

import pytest

from kvmlite.cli.main import main
from kvmlite.errors import ConfigError
from kvmlite.vmm.config import NetConfig


def run_status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        status = main(["run", *argv])
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, capsys.readouterr().err


def test_netconfig_explicit_without_mode_is_lkvm_tap_defaults() -> None:
    nic = NetConfig.parse("guest_mac=02:11:22:33:44:55")
    assert (nic.mode, nic.host_ip, nic.guest_ip, nic.guest_mac) == ("tap", "192.168.33.1", "192.168.33.15",
                                                                    "02:11:22:33:44:55")


def test_netconfig_every_key_parsed() -> None:
    nic = NetConfig.parse("mode=tap,tapif=tap7,host_ip=10.0.0.1,guest_ip=10.0.0.2,vhost=1,script=/bin/true,"
                          "trans=mmio")
    assert (nic.tapif, nic.host_ip, nic.guest_ip, nic.vhost, nic.script, nic.trans) == (
        "tap7", "10.0.0.1", "10.0.0.2", True, "/bin/true", "mmio")


def test_netconfig_user_mode_hostfwd_repeatable() -> None:
    nic = NetConfig.parse("mode=user,hostfwd=tcp:8080-80,hostfwd=udp:127.0.0.1:5353-53")
    assert nic.hostfwd == ("tcp:8080-80", "udp:127.0.0.1:5353-53")


@pytest.mark.parametrize("text, needle", [
    ("colour=red", "unknown key 'colour'"),
    ("mode=bridge", "mode='bridge': choose one of tap, user, none"),
    ("vhost=yes", "vhost='yes': use 1 or 0"),
    ("trans=virtio", "trans='virtio'"),
    ("host_ip=300.1.1.1", "host_ip='300.1.1.1': not an IPv4 address"),
    ("guest_mac=01:02:03:04:05:06", "multicast"),
    ("guest_mac=00:00:00:00:00:00", "all-zero"),
    ("guest_mac=02-11-22-33-44-55", None),
    ("guest_mac=zz:02:03:04:05:06", "guest_mac: bad MAC address 'zz:02:03:04:05:06'"),
    ("tapif=a/b", "tapif='a/b'"),
    ("tapif=averyveryverylongname", "interface name"),
    ("mode=user,tapif=tap0", "tapif: only for mode=tap"),
    ("mode=user,vhost=1", "vhost: only for mode=tap"),
    ("mode=tap,hostfwd=tcp:1-2", "hostfwd: only for mode=user"),
    ("mode=user,hostfwd=tcp:0-80", "hostfwd: bad hostfwd rule 'tcp:0-80'"),
    ("mode=user,hostfwd=sctp:1-2", "hostfwd: bad hostfwd rule 'sctp:1-2'"),
    ("mode", "mode: missing value"),
    ("mode=tap,mode=user", "mode: given twice"),
])
def test_netconfig_bad_value_one_line_error_naming_key(text: str, needle: str | None) -> None:
    if needle is None:          # accepted, normalised
        assert NetConfig.parse(text).guest_mac == "02:11:22:33:44:55"
        return
    with pytest.raises(ConfigError) as info:
        NetConfig.parse(text)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_run_bad_network_option_exit_2_one_line(capsys) -> None:
    status, err = run_status(capsys, "-k", "/nonexistent", "-n", "mode=user,speed=fast")
    assert status == 2
    assert err.strip().splitlines() == [
        "kvmlite: error: -n 'speed=fast': unknown key 'speed' "
        "(known: mode, tapif, guest_mac, host_ip, guest_ip, vhost, script, trans, hostfwd)"]


def test_run_config_nics_follow_lkvm_defaults() -> None:
    from kvmlite.cli.cmd_run import _nics

    assert _nics([], default_guest=True) == (NetConfig(mode="user", implicit=True),)
    assert _nics([], default_guest=False) == ()
    assert _nics(["mode=none"], default_guest=True) == ()
    assert [n.mode for n in _nics(["mode=user", "", "mode=none"], default_guest=False)] == ["user", "tap"]
