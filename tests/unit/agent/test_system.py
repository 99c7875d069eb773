"""The agent's ``restored`` request through a real agent (threads of this
process, Unix socket).  The clock setter and the ioctl are recorded instead
of changing this host's clock and entropy pool; the real effect in a
restored guest is shown by tests/nested/test_sdk_snapshot.py (clock skew,
clones' random numbers differ)."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from kvmlite.agent.client import AgentClient
from kvmlite.agent.errors import AgentError
from kvmlite.agent.ops_system import RNDADDENTROPY, RNDRESEEDCRNG, SystemOps
from kvmlite.agent.protocol import RESTORED

from .conftest import ServedAgent


@pytest.fixture
def recorded(served: ServedAgent) -> list[tuple]:
    calls: list[tuple] = []

    def ioctl(fd: int, request: int, arg: bytes | int) -> int:
        calls.append(("ioctl", os.readlink(f"/proc/self/fd/{fd}"), request, arg))
        return 0
    ops = SystemOps(set_clock=lambda now: calls.append(("clock", now)), ioctl=ioctl)
    served.agent._handlers[RESTORED] = ops.restored
    return calls


def test_restored_adds_seed_reseeds_then_sets_clock(client: AgentClient, recorded: list[tuple]) -> None:
    seed = os.urandom(64)
    client.restored(1_800_000_000.25, seed)
    assert recorded == [("ioctl", "/dev/urandom", RNDADDENTROPY, struct.pack("ii", 512, 64) + seed),
                        ("ioctl", "/dev/urandom", RNDRESEEDCRNG, 0), ("clock", 1_800_000_000.25)]


@pytest.mark.parametrize("request_", [{"seed": "zz", "time": 1.0e9}, {"seed": "", "time": 1.0e9},
                                      {"seed": "ab" * 513, "time": 1.0e9}, {"seed": "ab", "time": -5},
                                      {"seed": "ab", "time": "now"}, {"seed": "ab"}, {"time": 1.0e9}])
def test_restored_bad_arguments_change_nothing(client: AgentClient, recorded: list[tuple],
                                               request_: dict) -> None:
    with pytest.raises(AgentError) as caught:
        client._call({"type": RESTORED, **request_}, "ok")
    assert caught.value.name == "bad-args" and recorded == []


def test_restored_without_privilege_is_eperm(client: AgentClient, served: ServedAgent) -> None:
    def refused(fd: int, request: int, arg: bytes | int) -> int:
        raise PermissionError(errno.EPERM, "Operation not permitted")
    served.agent._handlers[RESTORED] = SystemOps(set_clock=lambda now: None, ioctl=refused).restored
    with pytest.raises(AgentError) as caught:
        client.restored(1.0e9, b"x")
    assert caught.value.errno == errno.EPERM
    client.make_dir("still-serving")           # the agent goes on
