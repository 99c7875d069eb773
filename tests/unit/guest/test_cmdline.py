"""kvmlite.guest.cmdline: the options the guest init reads."""

from __future__ import annotations

import base64

import pytest

from kvmlite.errors import ConfigError
from kvmlite.guest.cmdline import MAX_CMDLINE_LENGTH, GuestOptions, encode_command, join


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
