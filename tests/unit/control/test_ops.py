"""Argument checks of the v1 operations (no VM: a recording target)."""

from __future__ import annotations

import pytest

from kvmlite.control import protocol as p
from kvmlite.control.ops import OPS, lookup

from .fakes import FakeTarget


def run(op: str, **args):
    target = FakeTarget()
    return lookup(op).run(target, args), target


def test_lookup_unknown_op_lists_known_ones() -> None:
    with pytest.raises(p.ProtocolError) as info:
        lookup("reboot")
    assert info.value.code == p.UNKNOWN_OP and "pause" in info.value.message


def test_pause_default_timeout_reaches_target() -> None:
    result, target = run("pause")
    assert result == {"state": "paused"} and target.calls == [("pause", 5.0)]


def test_stop_passes_force_and_timeout() -> None:
    result, target = run("stop", force=True, timeout=3)
    assert result == {"method": "force"} and target.calls == [("stop", 3.0, True)]


@pytest.mark.parametrize("op, args", [
    ("pause", {"timeout": 0}), ("pause", {"timeout": -1}), ("pause", {"timeout": 61}),
    ("pause", {"timeout": "5"}), ("pause", {"timeout": True}), ("pause", {"timeout": None}),
    ("stop", {"force": "yes"}), ("stop", {"force": 1}), ("stop", {"timeout": 1e9}),
    ("nmi", {"vcpu": -1}), ("nmi", {"vcpu": "0"}), ("nmi", {"vcpu": False}), ("nmi", {"vcpu": 1.0}),
    ("sysrq", {}), ("sysrq", {"key": ""}), ("sysrq", {"key": "ab"}), ("sysrq", {"key": " "}),
    ("sysrq", {"key": "\n"}), ("sysrq", {"key": "é"}),
    ("info", {"verbose": True}), ("pause", {"timeoutt": 1}),
    ("set_timeout", {}), ("set_timeout", {"seconds": 0}), ("set_timeout", {"seconds": "10"}),
    ("set_timeout", {"seconds": 1e12}), ("set_timeout", {"seconds": float("nan")}),
])
def test_bad_args_rejected_before_reaching_target(op: str, args: dict) -> None:
    target = FakeTarget()
    with pytest.raises(p.ProtocolError) as info:
        lookup(op).run(target, args)
    assert info.value.code == p.BAD_ARGS
    assert target.calls == []


def test_nmi_null_vcpu_means_all() -> None:
    result, target = run("nmi", vcpu=None)
    assert result == {"vcpus": [0, 1]}


def test_only_reading_ops_run_on_the_server_thread() -> None:
    # set_timeout only moves a deadline: it never parks a vCPU or waits
    assert {name for name, op in OPS.items() if not op.blocking} == {"info", "stats", "set_timeout"}


def test_set_timeout_reaches_target() -> None:
    result, target = run("set_timeout", seconds=90)
    assert result == {"timeout_s": 90.0} and target.calls == [("set_timeout", 90.0)]
