"""The guest's network shell code, run here under dash with stub commands.

``ip``, ``udhcpc``, ``mount`` and ``sleep`` are shell stubs that append
their argv to a log; PATH holds only them and ``cat``, so nothing touches
this machine's network.  Not under busybox ash: Debian's busybox-static runs
its own applets before anything on PATH (FEATURE_SH_STANDALONE), so the real
``ip`` would run.  dash is POSIX and catches bashisms; the init's real shell
is covered by the QEMU boots in test_init_tcg.py.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmlite.guest import initscript, netinit

from .conftest import require_tool

STUB = """#!/bin/sh
echo "{name} $*" >> "$STUB_LOG"
{extra}
"""
STUB_EXTRA = {
    # `ip -4 -o addr show` prints $IP_SHOW, as the real one prints addresses.
    "ip": 'case "$*" in *" addr show "*) [ -z "$IP_SHOW" ] || echo "$IP_SHOW" ;; esac',
    "udhcpc": 'echo "udhcpc: started"; exit ${UDHCPC_STATUS:-0}',
    "mount": "",
    "sleep": "",
}
DHCP_ARGV = (f"udhcpc -i eth0 -f -q -n -t {netinit.DHCP_TRIES} -T {netinit.DHCP_PAUSE} "
             f"-s /{netinit.UDHCPC_SCRIPT_PATH}")


@dataclass
class Run:
    stdout: str
    calls: list[str]


class Sandbox:
    """A temporary directory with the stubs, a fake sysfs and a log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stubs = root / "stubs"
        self.stubs.mkdir()
        for name, extra in STUB_EXTRA.items():
            stub = self.stubs / name
            stub.write_text(STUB.format(name=name, extra=extra))
            stub.chmod(0o755)
        (self.stubs / "cat").symlink_to(require_tool("cat"))
        self.net = root / "sys-class-net"
        self.net.mkdir()
        self.resolv_conf = root / "resolv.conf"
        self.log = root / "calls.log"

    def add_nic(self, name: str = "eth0") -> None:
        (self.net / name).mkdir()

    def run(self, script: str, *args: str, env: dict[str, str] | None = None) -> Run:
        self.log.write_text("")
        done = subprocess.run([require_tool("dash"), "-c", script, "test", *args], capture_output=True, text=True,
                              timeout=30, cwd=self.root,
                              env={"PATH": str(self.stubs), "STUB_LOG": str(self.log), **(env or {})})
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return Run(done.stdout, self.log.read_text().splitlines())


@pytest.fixture()
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


# --- the init's part: kvmlite.net= from the command line ---------------------------------------------

@pytest.fixture()
def init_library(tmp_path: Path) -> Path:
    """The real /init without its last line (``main``): only definitions."""
    script = initscript.render()
    assert script.endswith('\nmain "$@"\n')
    path = tmp_path / "init-library.sh"
    path.write_text(script[: -len('main "$@"\n')])
    return path


def _boot_network(sandbox: Sandbox, library: Path, cmdline: str, *, then: str = "",
                  env: dict[str, str] | None = None) -> Run:
    """``cmdline`` as /proc/cmdline, then the init's read_cmdline and setup_network."""
    (sandbox.root / "cmdline").write_text(cmdline + "\n")
    script = f"""
        . "{library}"
        PATH="{sandbox.stubs}" CMDLINE="{sandbox.root}/cmdline" NET_SYSFS="{sandbox.net}"
        RESOLV_CONF="{sandbox.resolv_conf}"
        read_cmdline
        setup_network
        {then}
    """
    return sandbox.run(script, env=env)


def test_setup_network_dhcp_brings_eth0_up_then_quiet_udhcpc(sandbox: Sandbox, init_library: Path) -> None:
    # Arrange
    sandbox.add_nic()
    # Act
    run = _boot_network(sandbox, init_library, "console=ttyS0 quiet kvmlite.net=dhcp root=/dev/vda rw")
    # Assert
    assert run.calls == ["ip link set lo up", "ip link set eth0 up", DHCP_ARGV]
    assert run.stdout == ""          # udhcpc's chatter is silenced
    assert not sandbox.resolv_conf.exists()


def test_setup_network_dhcp_no_lease_one_line(sandbox: Sandbox, init_library: Path) -> None:
    sandbox.add_nic()
    run = _boot_network(sandbox, init_library, "kvmlite.net=dhcp", env={"UDHCPC_STATUS": "1"})
    assert run.stdout == "kvmlite-init: no DHCP lease on eth0\n"


def test_setup_network_static_without_dns_no_resolv_conf(sandbox: Sandbox, init_library: Path) -> None:
    sandbox.add_nic()
    run = _boot_network(sandbox, init_library, "quiet kvmlite.net=192.168.33.15/24,192.168.33.1")
    assert run.calls == ["ip link set lo up", "ip link set eth0 up", "ip addr add 192.168.33.15/24 dev eth0",
                         "ip route add default via 192.168.33.1 dev eth0"]
    assert run.stdout == ""
    assert not sandbox.resolv_conf.exists()


def test_setup_network_static_with_dns_writes_resolv_conf(sandbox: Sandbox, init_library: Path) -> None:
    sandbox.add_nic()
    run = _boot_network(sandbox, init_library, "kvmlite.net=10.0.2.15/24,10.0.2.2,10.0.2.3 quiet")
    assert run.calls == ["ip link set lo up", "ip link set eth0 up", "ip addr add 10.0.2.15/24 dev eth0",
                         "ip route add default via 10.0.2.2 dev eth0"]
    assert sandbox.resolv_conf.read_text() == "nameserver 10.0.2.3\n"


def test_setup_network_absent_only_lo_no_wait(sandbox: Sandbox, init_library: Path) -> None:
    sandbox.add_nic()
    run = _boot_network(sandbox, init_library, "console=ttyS0 quiet kvmlite.cmd=dHJ1ZQ==")
    assert run.calls == ["ip link set lo up"]      # no eth0, no udhcpc, no sleep
    assert run.stdout == ""


def test_setup_network_eth0_missing_bounded_wait_one_line(sandbox: Sandbox, init_library: Path) -> None:
    # Arrange: a NIC, but not eth0 (and nothing else must be configured)
    sandbox.add_nic("eth1")
    # Act
    run = _boot_network(sandbox, init_library, "kvmlite.net=dhcp", then="say after")
    # Assert: 20 tries 0.05 s apart (one second), one line, and the init goes on
    assert run.calls == ["ip link set lo up"] + ["sleep 0.05"] * 20
    assert run.stdout == "kvmlite-init: kvmlite.net is set but there is no eth0: no network\nkvmlite-init: after\n"


@pytest.mark.parametrize("value", ["192.168.33.15", "192.168.33.15/24", "bogus"])
def test_setup_network_malformed_static_one_line_no_address(sandbox: Sandbox, init_library: Path,
                                                            value: str) -> None:
    sandbox.add_nic()
    run = _boot_network(sandbox, init_library, f"kvmlite.net={value}")
    assert run.calls == ["ip link set lo up", "ip link set eth0 up"]
    assert run.stdout == f"kvmlite-init: kvmlite.net={value}: expected dhcp or ADDR/PREFIX,GATEWAY[,DNS]\n"


def test_share_resolv_conf_bind_mounts_over_regular_file(sandbox: Sandbox, init_library: Path) -> None:
    # Arrange: a chroot whose own resolv.conf is a regular file
    sandbox.add_nic()
    chroot = sandbox.root / "mnt"
    inside = Path(f"{chroot}{sandbox.resolv_conf}")
    inside.parent.mkdir(parents=True)
    inside.write_text("nameserver 127.0.0.53\n")
    # Act
    run = _boot_network(sandbox, init_library, "kvmlite.net=10.0.2.15/24,10.0.2.2,10.0.2.3",
                        then=f'net_share_resolv_conf "{chroot}"')
    # Assert
    assert run.calls[-1] == f"mount -o bind {sandbox.resolv_conf} {inside}"


def test_share_resolv_conf_symlink_or_no_dns_left_alone(sandbox: Sandbox, init_library: Path) -> None:
    sandbox.add_nic()
    chroot = sandbox.root / "mnt"
    inside = Path(f"{chroot}{sandbox.resolv_conf}")
    inside.parent.mkdir(parents=True)
    inside.symlink_to("../run/resolv.conf")
    with_dns = _boot_network(sandbox, init_library, "kvmlite.net=10.0.2.15/24,10.0.2.2,10.0.2.3",
                             then=f'net_share_resolv_conf "{chroot}"')
    sandbox.resolv_conf.unlink()
    inside.unlink()
    inside.write_text("")
    no_dns = _boot_network(sandbox, init_library, "kvmlite.net=10.0.2.15/24,10.0.2.2",
                           then=f'net_share_resolv_conf "{chroot}"')
    assert not any(c.startswith("mount") for c in with_dns.calls + no_dns.calls)


# --- the udhcpc event script ------------------------------------------------------------------------

LEASE = {"interface": "eth0", "ip": "10.0.2.15", "subnet": "255.255.255.0", "mask": "24", "router": "10.0.2.2",
         "dns": "10.0.2.3", "lease": "86400"}


def _event(sandbox: Sandbox, event: str, lease: dict[str, str], **extra: str) -> Run:
    script = sandbox.root / "default.script"
    script.write_text(netinit.UDHCPC_SCRIPT)
    return sandbox.run(f'. "{script}"', event, env={**lease, "RESOLV_CONF": str(sandbox.resolv_conf), **extra})


def test_udhcpc_bound_sets_address_route_resolv_conf(sandbox: Sandbox) -> None:
    run = _event(sandbox, "bound", LEASE)
    assert run.calls == ["ip -4 -o addr show dev eth0", "ip -4 addr flush dev eth0",
                         "ip addr add 10.0.2.15/24 dev eth0", "ip route replace default via 10.0.2.2 dev eth0"]
    assert sandbox.resolv_conf.read_text() == "nameserver 10.0.2.3\n"


def test_udhcpc_bound_subnet_only_first_router_all_dns(sandbox: Sandbox) -> None:
    # Arrange: no $mask (older udhcpc), two routers, two servers, a domain, a broadcast address
    lease = {**LEASE, "subnet": "255.255.240.0", "router": "172.16.0.1 172.16.0.2", "dns": "172.16.0.53 9.9.9.9",
             "domain": "example.test", "broadcast": "172.16.15.255", "ip": "172.16.3.4"}
    del lease["mask"]
    # Act
    run = _event(sandbox, "bound", lease)
    # Assert
    assert run.calls[2:] == ["ip addr add 172.16.3.4/20 broadcast 172.16.15.255 dev eth0",
                             "ip route replace default via 172.16.0.1 dev eth0"]
    assert sandbox.resolv_conf.read_text() == "search example.test\nnameserver 172.16.0.53\nnameserver 9.9.9.9\n"


def test_udhcpc_renew_same_address_not_flushed(sandbox: Sandbox) -> None:
    shown = "2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\\       valid_lft forever"
    run = _event(sandbox, "renew", LEASE, IP_SHOW=shown)
    assert run.calls == ["ip -4 -o addr show dev eth0", "ip route replace default via 10.0.2.2 dev eth0"]


def test_udhcpc_renew_new_address_replaces_old(sandbox: Sandbox) -> None:
    shown = "2: eth0    inet 10.0.2.16/24 brd 10.0.2.255 scope global eth0"
    run = _event(sandbox, "renew", LEASE, IP_SHOW=shown)
    assert run.calls[1:3] == ["ip -4 addr flush dev eth0", "ip addr add 10.0.2.15/24 dev eth0"]


def test_udhcpc_deconfig_link_up_addresses_flushed_resolv_conf_kept(sandbox: Sandbox) -> None:
    sandbox.resolv_conf.write_text("nameserver 192.0.2.53\n")
    run = _event(sandbox, "deconfig", {"interface": "eth0"})
    assert run.calls == ["ip link set eth0 up", "ip -4 addr flush dev eth0"]
    assert sandbox.resolv_conf.read_text() == "nameserver 192.0.2.53\n"


def test_udhcpc_bound_without_dns_keeps_resolv_conf(sandbox: Sandbox) -> None:
    sandbox.resolv_conf.write_text("nameserver 192.0.2.53\n")
    lease = {k: v for k, v in LEASE.items() if k != "dns"}
    _event(sandbox, "bound", lease)
    assert sandbox.resolv_conf.read_text() == "nameserver 192.0.2.53\n"


@pytest.mark.parametrize("event", ["leasefail", "nak"])
def test_udhcpc_other_events_do_nothing(sandbox: Sandbox, event: str) -> None:
    assert _event(sandbox, event, LEASE).calls == []


@pytest.mark.parametrize(("subnet", "prefix"), [("255.255.255.255", 32), ("255.255.255.252", 30),
                                                ("255.255.254.0", 23), ("255.0.0.0", 8), ("0.0.0.0", 0)])
def test_udhcpc_prefix_of_dotted_masks(sandbox: Sandbox, subnet: str, prefix: int) -> None:
    script = sandbox.root / "default.script"
    script.write_text(netinit.UDHCPC_SCRIPT)
    run = sandbox.run(f'. "{script}"; prefix_of {subnet}', "none")
    assert run.stdout == f"{prefix}\n"


def test_udhcpc_script_in_archive_files_executable() -> None:
    data, mode = initscript.files()[netinit.UDHCPC_SCRIPT_PATH]
    assert data == netinit.UDHCPC_SCRIPT.encode() and data.startswith(b"#!/bin/sh\n") and mode == 0o755


@pytest.mark.parametrize("script", ["init", "udhcpc"])
def test_scripts_parse_under_dash_and_busybox_ash(script: str, static_busybox: Path) -> None:
    # `sh -n` only parses, so busybox's applets cannot run here.
    text = initscript.render() if script == "init" else netinit.UDHCPC_SCRIPT
    for shell in ([require_tool("dash"), "-n"], [str(static_busybox), "sh", "-n"]):
        checked = subprocess.run(shell, input=text.encode(), capture_output=True)
        assert checked.returncode == 0 and checked.stderr == b"", (shell, checked.stderr)
