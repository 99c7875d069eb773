"""virtio-net under the real /dev/kvm, driven by the purpose-built "virtio"
guest in its net modes (tests/guests/src/virtio/net.c), on both transports.

Every test makes a network namespace of its own and runs kvmlite inside it
(``ip netns exec``), so the taps, veths and passt it uses never meet the
machine's network, and whatever is left in the namespace after kvmlite
exits shows:

* ``-n mode=user``: the namespace has a veth pair with an address and a
  default route, which passt needs.  The guest sends a DHCP DISCOVER, a
  REQUEST for what was offered, and an ARP request for the router the offer
  names; passt offers the namespace interface's own address and answers
  ARP for the gateway.  After kvmlite exits no process is left in the
  namespace (passt is gone) and passt's directory is removed.  The same
  with 64-byte receive buffers (each answer spread over several with
  MRG_RXBUF) and without MRG_RXBUF; and a $TMPDIR passt cannot reach is a
  one-line error.
* ``-n mode=tap,tapif=T``: a tap the test made.  The guest broadcasts a
  "hello" frame of ethertype 0x88B5 (IEEE local experimental) until the
  host answers; the test reads it from an AF_PACKET socket on the tap,
  writes frames to the guest's MAC and reads back the guest's echo of each.
  Between two frames ``kvmlite stat`` shows the NIC's counters.  A guest
  that posts its receive buffers late finds the host's frame kept for it.
* ``-n mode=tap``: kvmlite makes the tap (``kvmlite0``, 192.168.33.1/24 by
  default) and removes it when it exits.

These tests need root, ``ip`` (iproute2), /dev/net/tun and passt; each
says which one is missing when it skips.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmlite.net.netns import run_in_netns
from tests.kvm import conftest as kvm_conftest
from tests.kvm.conftest import LiveKvmlite, Run, assert_one_line_error, run_kvmlite
from tests.unit.net.conftest import ip, need_root_netns, need_tun

pytestmark = pytest.mark.kvm

GUEST_OK = 42
TRANSPORTS = ("pci", "mmio")
ETHERTYPE = 0x88B5                    # IEEE 802 local experimental ethertype 1 (net.c)
BROADCAST = b"\xff" * 6
HELLO = b"kvmlite-net hello seed="
ECHO = b"echo "
FRAME_TIMEOUT = 60.0                  # the guest boots in about a second; be generous
KVMLITE_TAP = "kvmlite0"              # the first tap kvmlite makes in a fresh namespace
KVMLITE_HOST_IP = "192.168.33.1/24"   # kvmlite's default host_ip

_counter = itertools.count()


# --- namespaces -------------------------------------------------------------------


@dataclass(frozen=True)
class Namespace:
    name: str
    # with a route (``routed``): the address passt offers and the gateway
    addr: str = "10.77.0.2"
    gateway: str = "10.77.0.1"
    prefix: int = 24


def need_passt() -> None:
    if shutil.which("passt") is None:
        pytest.skip("passt not installed (apt-get install passt)")


def processes_in(ns: str) -> list[str]:
    """``PID COMMAND`` of every process in network namespace ``ns``."""
    inode = os.stat(f"/run/netns/{ns}").st_ino
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino == inode:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{entry.name} {command}")
        except OSError:
            pass                      # gone meanwhile
    return found


def link(ns: str, name: str) -> dict | None:
    """``ip -j -d addr show NAME`` in ``ns`` as a dict; None when absent."""
    done = ip("-j", "-d", "addr", "show", "dev", name, netns=ns, check=False)
    found = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []
    return found[0] if found else None


@pytest.fixture
def netns(kvm: str, guest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Namespace]:
    """A fresh network namespace with ``lo`` up, where kvmlite runs: the
    ``kvmlite_command`` that conftest's runners call is wrapped in ``ip
    netns exec`` for this test.  kvmlite gets a private $TMPDIR (for
    passt's directory, which ``nobody`` must be able to enter) and
    $XDG_RUNTIME_DIR (for its control socket).  Deleted afterwards, with
    whatever was made in it."""
    need_root_netns()
    ns = Namespace(f"kvn-{os.getpid()}-{next(_counter)}")
    scratch = Path(tempfile.mkdtemp(prefix="kvn-", dir="/tmp"))
    (scratch / "tmp").mkdir()
    for where in (scratch, scratch / "tmp"):
        where.chmod(0o755)
    monkeypatch.setenv("TMPDIR", str(scratch / "tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(scratch))
    command = kvm_conftest.kvmlite_command
    monkeypatch.setattr(kvm_conftest, "kvmlite_command",
                        lambda *args: ["ip", "netns", "exec", ns.name, *command(*args)])
    ip("netns", "add", ns.name)
    try:
        ip("link", "set", "lo", "up", netns=ns.name)
        yield ns
    finally:
        ip("netns", "del", ns.name, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def routed(netns: Namespace) -> Namespace:
    """The namespace with a veth pair ``gw0``/``up0``: ``up0`` has
    ``addr`` and a default route via ``gateway`` on ``gw0``."""
    need_passt()
    n = netns.name
    ip("link", "add", "gw0", "type", "veth", "peer", "name", "up0", netns=n)
    ip("addr", "add", f"{netns.gateway}/{netns.prefix}", "dev", "gw0", netns=n)
    ip("addr", "add", f"{netns.addr}/{netns.prefix}", "dev", "up0", netns=n)
    ip("link", "set", "gw0", "up", netns=n)
    ip("link", "set", "up0", "up", netns=n)
    ip("route", "add", "default", "via", netns.gateway, "dev", "up0", netns=n)
    return netns


@pytest.fixture
def tap(netns: Namespace) -> str:
    """A tap ``kvt0`` the test made in the namespace, up."""
    need_tun()
    ip("tuntap", "add", "dev", "kvt0", "mode", "tap", netns=netns.name)
    ip("link", "set", "kvt0", "up", netns=netns.name)
    return "kvt0"


# --- the guest's output ------------------------------------------------------------


def guest_args(transport: str, params: str, *, virtio_transport: bool = False) -> list[str]:
    """``run`` arguments after ``-k``: the transport as ``--virtio-transport``
    or left to the -n option's ``trans=`` (the caller's)."""
    extra = ["--virtio-transport", transport] if virtio_transport else []
    return [*extra, "-p", f"transport={transport} {params}"]


def value(text: str, prefix: str, key: str) -> str:
    """``key=...`` of the first line starting with ``prefix``."""
    for line in text.splitlines():
        if line.startswith(prefix):
            match = re.search(rf"\b{key}=(\S*)", line)
            if match:
                return match.group(1)
    raise AssertionError(f"no {key}= on a line starting with {prefix!r} in:\n{text}")


def expected_location(transport: str) -> str:
    return "at pci 00:01.0" if transport == "pci" else "at mmio 0xd0000000 pin=16"


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


# --- frames on a tap ---------------------------------------------------------------


class TapSocket:
    """An AF_PACKET socket on tap ``name`` in namespace ``ns`` for frames of
    ETHERTYPE: what the guest sends arrives on it, what it sends goes to
    the guest."""

    def __init__(self, ns: str, name: str) -> None:
        def open_socket() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
            sock.bind((name, ETHERTYPE))
            return sock

        self.sock = run_in_netns(ns, open_socket)
        self.mac: bytes = self.sock.getsockname()[4]

    def close(self) -> None:
        self.sock.close()

    def receive(self, match: Callable[[bytes], bool], live: LiveKvmlite, timeout: float = FRAME_TIMEOUT) -> bytes:
        """The first frame ``match`` accepts (the guest's repeated hellos
        are passed over); fails with kvmlite's output when none comes
        within ``timeout`` or kvmlite exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(1.0)
            try:
                frame = self.sock.recv(65536)
            except TimeoutError:
                if live.proc.poll() is not None:
                    break
                continue
            if match(frame):
                return frame
        why = "kvmlite exited" if live.proc.poll() is not None else f"none within {timeout:.0f} s"
        live.kill()
        pytest.fail(f"no matching frame on the tap ({why})\n{live.finish(10)}")

    def send(self, dst: bytes, payload: bytes) -> None:
        self.sock.send(dst + self.mac + ETHERTYPE.to_bytes(2, "big") + payload)


def hello(seed: int) -> Callable[[bytes], bool]:
    return lambda f: f[14:].startswith(HELLO + str(seed).encode())


def echo_of(payload: bytes) -> Callable[[bytes], bool]:
    return lambda f: f[14:].startswith(ECHO + payload)


def wait_for_link(live: LiveKvmlite, ns: str, name: str, timeout: float = FRAME_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while link(ns, name) is None:
        if time.monotonic() > deadline or live.proc.poll() is not None:
            live.kill()
            pytest.fail(f"no interface {name} in namespace {ns}\n{live.finish(10)}")
        time.sleep(0.05)


def stat(name: str) -> dict:
    """``kvmlite stat -n NAME --json`` (through the test's private
    $XDG_RUNTIME_DIR, where the VM's control socket is)."""
    run = run_kvmlite("stat", "-n", name, "--json", timeout=30)
    assert run.status == 0, run
    return json.loads(run.stdout)


def exchange(live: LiveKvmlite, tap: TapSocket, seed: int, payloads: list[bytes],
             between: Callable[[], None] = lambda: None) -> bytes:
    """The guest's hello, then each payload to it and its echo back (with
    ``between()`` after the first); returns the guest's MAC."""
    frame = tap.receive(hello(seed), live)
    live.wait_for("virtio: net up")
    guest_mac = mac_bytes(value(live.text(), "virtio: net up", "mac"))
    assert frame[:6] == BROADCAST and frame[6:12] == guest_mac, frame
    for i, payload in enumerate(payloads):
        tap.send(guest_mac, payload)
        echo = tap.receive(echo_of(payload), live)
        assert echo[:6] == tap.mac and echo[6:12] == guest_mac, echo
        if i == 0:
            between()
    return guest_mac


def check_tap_run(run: Run, transport: str, tap_mac: bytes, payloads: list[bytes]) -> None:
    assert run.status == GUEST_OK, run
    assert f"virtio: found net type=1 {expected_location(transport)}" in run.stdout, run
    assert value(run.stdout, "virtio: net up", "link") == "up", run
    assert value(run.stdout, "virtio: net up", "mtu") == "0", run      # a tap names no MTU
    for i, payload in enumerate(payloads, 1):
        assert mac_bytes(value(run.stdout, f"virtio: net tap rx n={i} ", "src")) == tap_mac, run
        assert bytes.fromhex(value(run.stdout, f"virtio: net tap rx n={i} ", "payload")) == payload, run
    assert f"virtio: net tap ok frames={len(payloads)}" in run.stdout, run
    assert "Traceback" not in run.stderr, run


# --- mode=user: DHCP and ARP answered by passt -------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_net_user_dhcp_offers_the_namespace_address_and_passt_goes_at_exit(routed: Namespace,
                                                                           transport: str, guest) -> None:
    run = run_kvmlite("run", "-k", str(guest("virtio")), "-n", f"mode=user,trans={transport}",
                      *guest_args(transport, "mode=net-dhcp seed=3"))

    assert run.status == GUEST_OK, run
    assert f"virtio: found net type=1 {expected_location(transport)}" in run.stdout, run
    up = "virtio: net up"
    assert (value(run.stdout, up, "link"), value(run.stdout, up, "mtu"), value(run.stdout, up, "mrg_rxbuf")) \
        == ("up", "65520", "1"), run
    offer = "virtio: net dhcp offer"
    subnet = ipaddress.IPv4Network(f"{routed.addr}/{routed.prefix}", strict=False)
    assert ipaddress.IPv4Address(value(run.stdout, offer, "yiaddr")) in subnet, run
    assert value(run.stdout, offer, "yiaddr") == routed.addr, run       # passt offers the interface's own
    assert value(run.stdout, offer, "router") == routed.gateway, run
    assert value(run.stdout, offer, "mask") == str(subnet.netmask), run
    assert value(run.stdout, offer, "server") != "0.0.0.0", run
    assert value(run.stdout, "virtio: net dhcp ack", "yiaddr") == routed.addr, run
    assert value(run.stdout, "virtio: net arp reply", "ip") == routed.gateway, run
    router_mac = mac_bytes(value(run.stdout, "virtio: net arp reply", "mac"))
    guest_mac = mac_bytes(value(run.stdout, up, "mac"))
    assert router_mac not in (guest_mac, BROADCAST, bytes(6)) and not router_mac[0] & 1, run
    assert "virtio: net dhcp ok" in run.stdout, run
    assert "Traceback" not in run.stderr, run
    # kvmlite exited: passt with it, and passt's directory
    assert processes_in(routed.name) == []
    assert list(Path(os.environ["TMPDIR"]).iterdir()) == []


def test_net_user_dhcp_without_mergeable_buffers(routed: Namespace, guest) -> None:
    """Each frame in one buffer (virtio 1.2 §5.1.6.3.2 without MRG_RXBUF)."""
    run = run_kvmlite("run", "-k", str(guest("virtio")), "-n", "mode=user",
                      *guest_args("pci", "mode=net-dhcp mrg_rxbuf=0"))

    assert run.status == GUEST_OK, run
    assert value(run.stdout, "virtio: net up", "mrg_rxbuf") == "0", run
    assert value(run.stdout, "virtio: net dhcp offer", "yiaddr") == routed.addr, run
    assert "virtio: net dhcp ok" in run.stdout, run
    assert value(run.stdout, "virtio: net rx", "merged") == "0", run


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_net_user_dhcp_answers_merged_from_small_buffers(routed: Namespace, transport: str, guest) -> None:
    """64-byte receive buffers: each DHCP answer (~350 bytes) fills several,
    published together with num_buffers in the first (§5.1.6.4)."""
    run = run_kvmlite("run", "-k", str(guest("virtio")), "-n", f"mode=user,trans={transport}",
                      *guest_args(transport, "mode=net-dhcp rx_buffer=64"))

    assert run.status == GUEST_OK, run
    assert value(run.stdout, "virtio: net up", "rx_buffer") == "64", run
    assert value(run.stdout, "virtio: net dhcp offer", "yiaddr") == routed.addr, run
    assert "virtio: net dhcp ok" in run.stdout, run
    assert int(value(run.stdout, "virtio: net rx", "merged")) >= 2, run       # the offer and the ack


# --- mode=tap: frames both ways through a tap ---------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_net_tap_frames_both_ways_and_stat_counts_them(netns: Namespace, tap: str, transport: str,
                                                       guest) -> None:
    sock = TapSocket(netns.name, tap)
    vm = f"kvn-{transport}"
    payloads = [b"kvmlite host frame one " + bytes(range(32)), b"frame two"]
    counters: dict[str, int] = {}
    live = LiveKvmlite("run", "-k", str(guest("virtio")), "--name", vm, "-n", f"mode=tap,tapif={tap},trans={transport}",
                       *guest_args(transport, "mode=net-tap seed=7 frames=2"))
    try:
        exchange(live, sock, 7, payloads, lambda: counters.update(stat(vm)["devices"]["virtio-net0"]))
        run = live.finish()
    finally:
        live.kill()
        sock.close()

    check_tap_run(run, transport, sock.mac, payloads)
    # After one frame in and two out (hello, echo), the guest waiting for the second:
    assert counters["rx_packets"] >= 1 and counters["rx_bytes"] >= 14 + len(payloads[0]), counters
    assert counters["tx_packets"] >= 2 and counters["tx_bytes"] >= 2 * 60, counters
    assert counters["rx_errors"] == counters["tx_errors"] == 0, counters
    assert link(netns.name, tap) is not None          # tapif= leaves the tap where it was
    assert processes_in(netns.name) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_net_tap_kvmlite_makes_the_tap_and_removes_it_at_exit(netns: Namespace, transport: str,
                                                              guest) -> None:
    need_tun()
    live = LiveKvmlite("run", "-k", str(guest("virtio")), "-n", "mode=tap",
                       *guest_args(transport, "mode=net-tap seed=8", virtio_transport=True))
    sock = None
    try:
        wait_for_link(live, netns.name, KVMLITE_TAP)
        sock = TapSocket(netns.name, KVMLITE_TAP)
        exchange(live, sock, 8, [b"to the guest through kvmlite's own tap"])
        made = link(netns.name, KVMLITE_TAP)     # configured before the guest ran
        run = live.finish()
    finally:
        live.kill()
        if sock is not None:
            sock.close()

    assert made["linkinfo"]["info_kind"] == "tun" and "UP" in made["flags"], made
    assert [f"{a['local']}/{a['prefixlen']}" for a in made["addr_info"] if a["family"] == "inet"] \
        == [KVMLITE_HOST_IP], made
    check_tap_run(run, transport, sock.mac, [b"to the guest through kvmlite's own tap"])
    assert link(netns.name, KVMLITE_TAP) is None, "kvmlite left its tap behind"
    assert processes_in(netns.name) == []


def test_net_tap_frame_waits_in_the_device_until_the_guest_posts_buffers(netns: Namespace, tap: str,
                                                                         guest) -> None:
    """The guest posts no receive buffer until 2 s after its first hello; the
    host's answer, sent at once, must wait in the device (rx_no_buffer), not
    be dropped, and arrive once buffers come."""
    sock = TapSocket(netns.name, tap)
    payloads = [b"sent while the receiveq was empty", b"and one more"]
    counters: dict[str, int] = {}
    live = LiveKvmlite("run", "-k", str(guest("virtio")), "--name", "kvn-late", "-n", f"mode=tap,tapif={tap}",
                       *guest_args("pci", "mode=net-tap seed=5 frames=2 rx_late=2"))
    try:
        exchange(live, sock, 5, payloads, lambda: counters.update(stat("kvn-late")["devices"]["virtio-net0"]))
        run = live.finish()
    finally:
        live.kill()
        sock.close()

    check_tap_run(run, "pci", sock.mac, payloads)
    assert run.stdout.index("virtio: net rx buffers posted late") < run.stdout.index("virtio: net tap rx n=1"), run
    assert counters["rx_no_buffer"] >= 1 and counters["rx_packets"] >= 1, counters


def test_net_user_with_a_tmpdir_nobody_can_enter_is_a_one_line_error(routed: Namespace, guest,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """passt, started by root, runs as nobody: its directory under a private
    $TMPDIR is out of its reach, and kvmlite says which directory blocks it."""
    private = Path(os.environ["TMPDIR"]) / "private"
    (private / "tmp").mkdir(parents=True)
    private.chmod(0o700)
    monkeypatch.setenv("TMPDIR", str(private / "tmp"))

    run = run_kvmlite("run", "-k", str(guest("virtio")), "-n", "mode=user", *guest_args("pci", "mode=net-dhcp"))

    assert_one_line_error(run)
    assert run.status == 1, run                        # `kvmlite run --help`: 1 kvmlite failed
    assert f"passt runs as nobody, who may not enter {private}:" in run.stderr, run
    assert list((private / "tmp").iterdir()) == []
    assert processes_in(routed.name) == []
