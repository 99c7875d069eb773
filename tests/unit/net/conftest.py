"""Fixtures for the network backends' tests: network namespaces the tests
create and delete, so taps, veths, addresses and passt never touch the
machine's own network.

Every namespace is named ``kvt-<pid>-<n>``; what is created in it (taps,
veth pairs) goes when it is deleted.  The addresses used (10.77.x.y) exist
only inside these namespaces.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

_counter = itertools.count()


def need_root_netns() -> None:
    """Skip unless namespaces can be made here (root and iproute2)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces, taps and veth pairs")
    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) not installed (apt-get install iproute2)")


def need_tun() -> None:
    need_root_netns()
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("/dev/net/tun missing (modprobe tun)")


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip [-n NETNS] ARGS``."""
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=10)


def link_info(name: str, netns: str) -> dict | None:
    """``ip -j addr show NAME`` in ``netns`` as a dict, None if absent."""
    done = ip("-j", "addr", "show", "dev", name, netns=netns, check=False)
    if done.returncode != 0:
        return None
    found = json.loads(done.stdout)
    return found[0] if found else None


def in_netns(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=check,
                          timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with ``lo`` up; deleted afterwards."""
    need_root_netns()
    name = f"kvt-{os.getpid()}-{next(_counter)}"
    ip("netns", "add", name)
    try:
        ip("link", "set", "lo", "up", netns=name)
        yield name
    finally:
        ip("netns", "del", name, check=False)


@dataclass(frozen=True)
class RoutedNetns:
    """A namespace with a veth pair ``gw0``/``up0``: ``up0`` has ``addr``
    and a default route via ``gateway`` on ``gw0``, as passt needs."""
    name: str
    addr: str = "10.77.0.2"
    gateway: str = "10.77.0.1"
    prefix: int = 24


@pytest.fixture
def routed_netns(netns: str) -> RoutedNetns:
    ns = RoutedNetns(netns)
    ip("link", "add", "gw0", "type", "veth", "peer", "name", "up0", netns=netns)
    ip("addr", "add", f"{ns.gateway}/{ns.prefix}", "dev", "gw0", netns=netns)
    ip("addr", "add", f"{ns.addr}/{ns.prefix}", "dev", "up0", netns=netns)
    ip("link", "set", "gw0", "up", netns=netns)
    ip("link", "set", "up0", "up", netns=netns)
    ip("route", "add", "default", "via", ns.gateway, "dev", "up0", netns=netns)
    return ns
