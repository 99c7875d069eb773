"""Snapshot and restore of port 0x92, and the empty states of the guest-exit
and ignored ports."""

from __future__ import annotations

import json

import pytest

from kvmlite.base.state import StateError
from kvmlite.devices.legacy.debug_exit import GuestExit
from kvmlite.devices.legacy.ignored import IgnoredPort
from kvmlite.devices.legacy.port92 import ALT_A20, PORT_SYSTEM_CONTROL_A, SystemControlPortA

from .portio import PortIo


def port92(resets: list[int]) -> tuple[SystemControlPortA, PortIo]:
    device = SystemControlPortA(lambda: resets.append(1))
    io = PortIo()
    io.bus.register(PORT_SYSTEM_CONTROL_A, 1, device, "port92")
    return device, io


def test_port92_restore_keeps_lock_and_light_bits() -> None:
    old, old_io = port92([])
    old_io.outb(PORT_SYSTEM_CONTROL_A, 0xC8 | ALT_A20)
    resets: list[int] = []
    fresh, io = port92(resets)
    fresh.restore_state(json.loads(json.dumps(old.save_state())))

    assert io.inb(PORT_SYSTEM_CONTROL_A) == old_io.inb(PORT_SYSTEM_CONTROL_A) == 0xCA
    assert resets == []                                  # restoring resets nothing


@pytest.mark.parametrize("state, words", [
    ({}, "port92: saved state lacks 'value'"),
    ({"value": 0x100}, "port92: value=256 is outside"),
    ({"value": "2"}, "port92: value is str"),
    ([], "port92: saved state is list"),
])
def test_port92_restore_rejects_bad_state(state: object, words: str) -> None:
    device, io = port92([])
    with pytest.raises(StateError, match=words):
        device.restore_state(state)  # type: ignore[arg-type]
    assert io.inb(PORT_SYSTEM_CONTROL_A) == ALT_A20


def test_stateless_ports_save_empty_state_and_check_its_type() -> None:
    post, exit_port = IgnoredPort("post"), GuestExit(lambda code: None)
    post.write(0, b"\x12")

    assert json.loads(json.dumps([post.save_state(), exit_port.save_state()])) == [{}, {}]
    post.restore_state({})
    exit_port.restore_state({})
    with pytest.raises(StateError, match="ignored port post: saved state is str"):
        post.restore_state("x")  # type: ignore[arg-type]
    with pytest.raises(StateError, match="exit-port: saved state is NoneType"):
        exit_port.restore_state(None)  # type: ignore[arg-type]
