"""kvmlite.guest.cmdline: the options the guest init reads."""

from __future__ import annotations

import base64

import pytest

from kvmlite.errors import ConfigError
from kvmlite.guest.cmdline import (MAX_CMDLINE_LENGTH, GuestOptions, GuestShare, encode_command, join, net_option,
                                   shares_option)


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


def test_shares_option_tags_in_order_read_only_marked() -> None:
    option = shares_option([GuestShare("hostfs", True), GuestShare("work"), ("src", True)])
    assert option == "kvmlite.9p=hostfs:ro,work,src:ro"


def test_shares_option_empty_raises_and_no_word_without_shares() -> None:
    with pytest.raises(ValueError):
        shares_option([])
    assert not any(w.startswith("kvmlite.9p") for w in GuestOptions(command="true").words())


@pytest.mark.parametrize("tag", ["", "a,b", "a:ro", "a b", "a/b", "..", "t\u00e4g", "a+b"])
def test_shares_option_bad_tag_one_line_error(tag: str) -> None:
    with pytest.raises(ConfigError, match="names /mnt/TAG in the guest") as info:
        shares_option([GuestShare(tag)])
    assert "\n" not in str(info.value)


def test_shares_option_duplicate_tag_raises() -> None:
    with pytest.raises(ConfigError, match="'data' is given twice"):
        shares_option([GuestShare("data"), GuestShare("data", True)])


def test_guest_options_9p_root_overlay_init_words() -> None:
    words = GuestOptions(root="hostfs", rootfstype="9p", rootflags="trans=virtio,version=9p2000.L", overlay=True,
                         init="/bin/bash", shares=(GuestShare("hostfs", True),)).words()
    assert words == ["root=hostfs", "rw", "rootfstype=9p", "rootflags=trans=virtio,version=9p2000.L",
                     "init=/bin/bash", "kvmlite.9p=hostfs:ro", "kvmlite.overlay=1"]
