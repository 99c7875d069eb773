"""Guest MAC addresses: derived from the VM's name, or given by the user."""

from __future__ import annotations

import pytest

from kvmlite.errors import ConfigError
from kvmlite.net.mac import format_mac, is_local, mac_from_name, parse_mac


def test_mac_from_name_is_stable_and_differs_between_names() -> None:
    assert mac_from_name("web") == mac_from_name("web")
    assert mac_from_name("web") != mac_from_name("db")
    assert format_mac(mac_from_name("web")) == format_mac(mac_from_name("web"))


@pytest.mark.parametrize("name", ["", "vm", "a" * 300, "ünïcode", "vm-1", "vm-2"])
def test_mac_from_name_is_local_unicast(name: str) -> None:
    mac = mac_from_name(name)
    assert len(mac) == 6
    assert mac[0] & 1 == 0, "multicast"
    assert is_local(mac)
    assert mac[:3] == bytes((0x52, 0x54, 0x00))


def test_mac_from_name_spreads_over_many_names() -> None:
    macs = {mac_from_name(f"vm{i}") for i in range(2000)}
    assert len(macs) > 1990


def test_mac_parse_and_format_round_trip() -> None:
    assert parse_mac("52:54:00:AB:cd:0f") == bytes.fromhex("525400abcd0f")
    assert parse_mac("02-00-00-00-00-01") == bytes.fromhex("020000000001")
    assert format_mac(parse_mac("52:54:00:ab:cd:0f")) == "52:54:00:ab:cd:0f"


@pytest.mark.parametrize("text, why", [
    ("52:54:00:ab:cd", "six hex bytes"),
    ("52:54:00:ab:cd:0g", "six hex bytes"),
    ("52:54-00:ab:cd:0f", "six hex bytes"),
    ("525400abcd0f", "six hex bytes"),
    ("01:00:5e:00:00:01", "multicast"),
    ("ff:ff:ff:ff:ff:ff", "multicast"),
    ("00:00:00:00:00:00", "all-zero"),
])
def test_mac_parse_bad_input_is_one_line_config_error(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_mac(text)
    assert why in str(info.value)
    assert "\n" not in str(info.value)
