"""The agent's ``restored`` request through a real agent (threads of this
process, Unix socket).  The clock setter and the ioctl are recorded instead
of changing this host's clock and entropy pool; the real effect in a
restored guest is shown by tests/nested/test_sdk_snapshot.py (clock skew,
clones' random numbers differ)."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from kvmlite.agent.client import AgentClient
from kvmlite.agent.errors import AgentError
from kvmlite.agent.ops_system import ARPHRD_ETHER, RNDADDENTROPY, RNDRESEEDCRNG, SIOCSIFHWADDR, SystemOps
from kvmlite.agent.protocol import RESTORED

from .conftest import ServedAgent


OLD_MAC, NEW_MAC = "52:54:00:12:34:56", "52:54:00:9a:bc:de"


@pytest.fixture
def net_dir(tmp_path: Path) -> Path:
    """A stand-in for /sys/class/net: lo, and the NIC a clone's guest still
    has under the snapshot's MAC, and another NIC."""
    for name, address in (("lo", "00:00:00:00:00:00"), ("eth0", OLD_MAC), ("eth1", "52:54:00:00:00:01")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "address").write_text(address + "\n")
    (tmp_path / "bonding_masters").write_text("")   # not an interface
    return tmp_path


@pytest.fixture
def recorded(served: ServedAgent, net_dir: Path) -> list[tuple]:
    calls: list[tuple] = []

    def ioctl(fd: int, request: int, arg: bytes | int) -> int:
        calls.append(("ioctl", os.readlink(f"/proc/self/fd/{fd}"), request, arg))
        return 0
    ops = SystemOps(set_clock=lambda now: calls.append(("clock", now)), ioctl=ioctl, net_dir=str(net_dir))
    served.agent._handlers[RESTORED] = ops.restored
    return calls


def test_restored_adds_seed_reseeds_then_sets_clock(client: AgentClient, recorded: list[tuple]) -> None:
    seed = os.urandom(64)
    client.restored(1_800_000_000.25, seed)
    assert recorded == [("ioctl", "/dev/urandom", RNDADDENTROPY, struct.pack("ii", 512, 64) + seed),
                        ("ioctl", "/dev/urandom", RNDRESEEDCRNG, 0), ("clock", 1_800_000_000.25)]


def test_restored_gives_the_nic_with_the_saved_mac_its_new_one(client: AgentClient, recorded: list[tuple]) -> None:
    changed = client.restored(1.0e9, b"s", [(OLD_MAC, NEW_MAC), ("52:54:00:ff:ff:ff", "52:54:00:00:00:02")])
    assert changed == ["eth0"]
    (call,) = [c for c in recorded if c[0] == "ioctl" and c[2] == SIOCSIFHWADDR]
    ifreq = call[3]
    assert call[1].startswith("socket:") and len(ifreq) == 40
    assert ifreq[:16] == b"eth0".ljust(16, b"\0") and struct.unpack("=H", ifreq[16:18])[0] == ARPHRD_ETHER
    assert ifreq[18:24] == bytes.fromhex(NEW_MAC.replace(":", ""))


def test_restored_without_macs_touches_no_interface(client: AgentClient, recorded: list[tuple]) -> None:
    assert client.restored(1.0e9, b"s") == []
    assert [c for c in recorded if c[0] == "ioctl" and c[2] == SIOCSIFHWADDR] == []


@pytest.mark.parametrize("macs", [{"a": 1}, [[OLD_MAC]], [[OLD_MAC, "52:54:00:9a:bc"]], [[OLD_MAC, 5]],
                                  [["zz:54:00:12:34:56", NEW_MAC]], [[OLD_MAC, "01:00:5e:00:00:01"]],
                                  [[OLD_MAC, "00:00:00:00:00:00"]], [[OLD_MAC, NEW_MAC]] * 65])
def test_restored_bad_macs_change_nothing(client: AgentClient, recorded: list[tuple], macs: object) -> None:
    with pytest.raises(AgentError) as caught:
        client._call({"type": RESTORED, "seed": "ab", "time": 1.0e9, "macs": macs}, "ok")
    assert caught.value.name == "bad-args" and recorded == []


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
