"""kvmlite.guest.cmdline: the options the guest init reads."""

from __future__ import annotations

import base64

import pytest

from kvmlite.errors import ConfigError
from kvmlite.guest.cmdline import MAX_CMDLINE_LENGTH, GuestOptions, encode_command, join, net_option


def test_encode_command_round_trips_through_base64() -> None:
    word = encode_command("echo 'a b' | tr a-z A-Z; exit 3")
    key, value = word.split("=", 1)
    assert key == "kvmlite.cmd"
    assert base64.b64decode(value).decode() == "echo 'a b' | tr a-z A-Z; exit 3"
    assert " " not in word


def test_encode_command_empty_raises() -> None:
    with pytest.raises(ConfigError, match="empty"):
        encode_command("  ")


def test_guest_options_root_defaults_to_rw() -> None:
    words = GuestOptions(root="/dev/vda", rootfstype="ext4").words()
    assert words[:2] == ["root=/dev/vda", "rw"]
    assert "rootfstype=ext4" in words


def test_guest_options_readonly_and_debug() -> None:
    words = GuestOptions(root="LABEL=x", readonly=True, debug=True).words()
    assert "ro" in words and "kvmlite.debug" in words


def test_guest_options_space_in_value_raises() -> None:
    with pytest.raises(ConfigError, match="rootflags"):
        GuestOptions(root="/dev/vda", rootflags="a b").words()


def test_join_too_long_raises() -> None:
    with pytest.raises(ConfigError, match=f"limit is {MAX_CMDLINE_LENGTH}"):
        join("console=ttyS0", GuestOptions(command="x" * 1600))


def test_join_within_limit_keeps_base_first() -> None:
    line = join("console=ttyS0 quiet", GuestOptions(command="true"))
    assert line.startswith("console=ttyS0 quiet kvmlite.cmd=")


@pytest.mark.parametrize("value", ["dhcp", "192.168.33.15/24,192.168.33.1", "10.0.2.15/24,10.0.2.2,10.0.2.3"])
def test_net_option_valid_values_pass_through(value: str) -> None:
    assert net_option(value) == f"kvmlite.net={value}"


@pytest.mark.parametrize("value", ["", "DHCP", "192.168.33.15", "192.168.33.15/24", "192.168.33.15,192.168.33.1",
                                   "192.168.33.15/24,192.168.33.1,8.8.8.8,9.9.9.9", "192.168.33.15/33,192.168.33.1",
                                   "fd00::2/64,fd00::1", "192.168.33.15/24,gateway"])
def test_net_option_malformed_one_line_error(value: str) -> None:
    with pytest.raises(ConfigError, match="is not dhcp or ADDR/PREFIX,GATEWAY"):
        net_option(value)


def test_net_option_gateway_outside_subnet_raises() -> None:
    with pytest.raises(ConfigError, match="gateway 10.0.3.1 is outside 10.0.2.0/24"):
        net_option("10.0.2.15/24,10.0.3.1")


def test_guest_options_net_word_only_when_set() -> None:
    assert "kvmlite.net=dhcp" in GuestOptions(net="dhcp").words()
    assert not any(w.startswith("kvmlite.net") for w in GuestOptions(command="true").words())
