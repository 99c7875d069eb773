"""virtio-net with a real Linux guest (issue: virtio-net, "How it is shown").

One test-host boot (or one run on hardware KVM) runs kvmlite's default
guest several times, over ``trans=pci`` and again over ``trans=mmio``:

* tap (``-n mode=tap``): the guest pings the host side (192.168.33.1),
  then moves 64 MiB each way over TCP with busybox ``nc``: down from a
  server in the test host, then up (random bytes made in the guest) to
  another; both ends print the SHA-256 of what they sent and received;
* tap with ``vhost=1``: the same transfers through the kernel's vhost-net,
  when the test host has ``/dev/vhost-net``;
* user (``-n mode=user,hostfwd=tcp:8022-7777``): passt's DHCP gives eth0
  an address, the guest downloads 16 MiB with ``wget`` from an HTTP server
  in the test host (through the gateway address, which passt maps to the
  host's loopback) and checks its SHA-256, and a server in the guest
  (``nc -l -p 7777``) is reached from the test host at 127.0.0.1:8022.

After every run no ``kvmlite*`` tap and no passt process may be left.

The whole script runs in a network namespace of its own (``unshare
--net``), so on a machine with hardware KVM it touches nothing of the
machine's network; all traffic stays in it.  passt needs an interface
with a default route: a veth pair with 10.77.0.1/24 and a route through
10.77.0.2 gives it one.  The test host's side of each transfer is
:data:`PEER` (Python, run with the test host's Python).
"""

from __future__ import annotations

import re
import shlex
import sys

import pytest

from .linux import hardware_kvm, run_linux_script
from .testhost import RunResult, TestHost

nested = pytest.mark.nested
TIMEOUT = 3000              # six guests with transfers, under TCG on two cores
TRANSPORTS = ("pci", "mmio")
TAP_HOST = "192.168.33.1"   # kvmlite's default host_ip (and guest_ip 192.168.33.15)
BIG = 64 << 20              # each tap transfer
DOWNLOAD = 16 << 20         # the user-mode download
FORWARDED = 4 << 20         # through the host port forward
HOSTFWD_PORT, GUEST_PORT = 8022, 7777
HTTP_PORT = 8000
DOWN_PORT, UP_PORT = 5002, 5001

# The test host's end of the transfers: one connection each, its SHA-256,
# size and duration on one line.
PEER = r'''
import hashlib, socket, sys, time

def report(what, digest, count, start):
    secs = time.monotonic() - start
    print(f"{what} sha={digest.hexdigest()} bytes={count} secs={secs:.2f} "
          f"mbps={count / 1e6 / max(secs, 1e-6):.2f}", flush=True)

def serve(what, port, path=None):
    """Accept one connection; send the file at path (then wait for the
    peer's close), or receive until the peer closes."""
    with socket.create_server(("0.0.0.0", port)) as srv:
        srv.settimeout(900)
        conn, _ = srv.accept()
    with conn:
        digest, count, start = hashlib.sha256(), 0, time.monotonic()
        if path:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 16):
                    conn.sendall(chunk)
                    digest.update(chunk)
                    count += len(chunk)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(1 << 16):
                pass
        else:
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
                count += len(chunk)
    report(what, digest, count, start)

def push(what, port, path, tries=240):
    """Send the file at path to 127.0.0.1:port, close our side and read the
    guest's answer (the SHA-256 it computed), until a connection brings one:
    when the guest's server does not listen yet, passt closes the
    connection without an answer.  The host speaks first: Debian 12's passt
    completes a forwarded connection's handshake toward the guest only with
    the host's first data (or its close)."""
    for _ in range(tries):
        digest, count, start, answer = hashlib.sha256(), 0, time.monotonic(), b""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as conn, open(path, "rb") as f:
                while chunk := f.read(1 << 16):
                    conn.sendall(chunk)
                    digest.update(chunk)
                    count += len(chunk)
                conn.shutdown(socket.SHUT_WR)
                while chunk := conn.recv(1 << 16):
                    answer += chunk
        except OSError:
            pass
        if answer.strip():
            report(what, digest, count, start)
            print(f"{what}-answer sha={answer.split()[0].decode()}", flush=True)
            return
        time.sleep(1)
    print(f"{what} nothing", flush=True)

mode, what, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "push":
    push(what, port, sys.argv[4])
else:
    serve(what, port, sys.argv[4] if len(sys.argv) > 4 else None)
'''

# Shell helpers for the guest: the time since boot, and a rate.
GUEST_HELPERS = ("now() { cut -d' ' -f1 /proc/uptime; }; "
                 "rate() { awk -v a=$1 -v b=$2 -v n=$3 'BEGIN { s = b - a; if (s <= 0) s = 0.01; "
                 "printf \"secs=%.2f mbps=%.2f\", s, n / 1e6 / s }'; }; ")


def _tap_guest() -> str:
    return GUEST_HELPERS + f"""
ping -c 3 {TAP_HOST} || exit 1
t0=$(now); nc {TAP_HOST} {DOWN_PORT} </dev/null >/tmp/down; t1=$(now)
echo "guest-down sha=$(sha256sum </tmp/down | cut -d' ' -f1) bytes=$(wc -c </tmp/down) $(rate $t0 $t1 {BIG})"
rm -f /tmp/down
head -c {BIG} /dev/urandom >/tmp/up
echo "guest-up sha=$(sha256sum </tmp/up | cut -d' ' -f1) bytes=$(wc -c </tmp/up)"
t0=$(now); nc {TAP_HOST} {UP_PORT} </tmp/up; t1=$(now)
echo "guest-up-sent $(rate $t0 $t1 {BIG})"
"""


def _user_guest() -> str:
    return GUEST_HELPERS + f"""
ip -4 addr show dev eth0
gw=$(ip route | awk '/^default/ {{ print $3 }}')
echo "gateway=$gw"
t0=$(now); wget -q -O - http://$gw:{HTTP_PORT}/blob >/tmp/dl; t1=$(now)
echo "guest-download sha=$(sha256sum </tmp/dl | cut -d' ' -f1) bytes=$(wc -c </tmp/dl) $(rate $t0 $t1 {DOWNLOAD})"
printf '#!/bin/sh\ncat >/tmp/fwd\nsha256sum </tmp/fwd\n' >/tmp/answer && chmod +x /tmp/answer
timeout 300 nc -l -p {GUEST_PORT} -e /tmp/answer && echo "guest-forward bytes=$(wc -c </tmp/fwd)"
"""


def _run(net: str, guest: str) -> str:
    return f'timeout 900 $KVMLITE run -k "$KERNEL" -i "$INITRD" -m 512 -p quiet -n {net} -- {shlex.quote(guest)}'


def _step(name: str, peers: str, net: str, guest: str) -> str:
    """One kvmlite run with its host-side peers, as a shell function run by
    ``retried_section``: when the inner guest crashes the whole step (fresh
    peers, whose reports overwrite the first run's) runs again."""
    fn = "step_" + name.replace("-", "_")
    return f"""{fn}() {{
{peers.rstrip()}
    {_run(net, guest)}
    rc=$?
    kill $peers 2>/dev/null; wait $peers
    return $rc
}}
retried_section {name} {fn}
"""


def _leftovers(name: str) -> str:
    """What a run may not leave: a kvmlite* tap, a passt process or its directory."""
    return (f"section left-{name} sh -c 'echo taps=$(ip -o link show | grep -o \"kvmlite[0-9]*\" | sort -u); "
            f"echo passt=$(pgrep -x passt; pgrep -x passt.avx2); echo dirs=$(ls -d /tmp/kvmlite-passt-* 2>/dev/null)'")


def _tap_block(name: str, net: str) -> str:
    peers = f"""    peer serve host-down {DOWN_PORT} $T/down.bin > peer-{name}-down.txt 2>&1 &
    peers=$!
    peer serve host-up {UP_PORT} > peer-{name}-up.txt 2>&1 &
    peers="$peers $!"
"""
    return f"""
{_step(name, peers, net, _tap_guest())}
section peer-{name} cat peer-{name}-down.txt peer-{name}-up.txt
{_leftovers(name)}
"""


def _user_block(name: str, net: str) -> str:
    peers = f"""    peer push host-forward {HOSTFWD_PORT} $T/fwd.bin > peer-{name}-forward.txt 2>&1 &
    peers=$!"""
    return f"""
{_step(name, peers, net, _user_guest())}
section peer-{name} cat peer-{name}-forward.txt
{_leftovers(name)}
"""


def _script() -> str:
    blocks = []
    for t in TRANSPORTS:
        blocks.append(_tap_block(f"tap-{t}", f"mode=tap,trans={t}"))
        blocks.append(_user_block(f"user-{t}", f"mode=user,trans={t},hostfwd=tcp:{HOSTFWD_PORT}-{GUEST_PORT}"))
    vhost = "".join(_tap_block(f"vhost-{t}", f"mode=tap,vhost=1,trans={t}") for t in TRANSPORTS)
    return f"""
# A network namespace of its own: nothing here reaches the machine's network.
[ -n "$KVMLITE_NETNS" ] || exec env KVMLITE_NETNS=1 unshare --net /bin/sh "$0"
PY={shlex.quote(sys.executable)}
cat > peer.py <<'EOF'
{PEER}
EOF
peer() {{ "$PY" peer.py "$@"; }}
export T="$(mktemp -d /tmp/kvmlite-net-XXXXXX)"     # the test host's side of the data
trap 'rm -rf "$T"' EXIT
ip link set lo up
ip link add veth0 type veth peer name veth1
ip addr add 10.77.0.1/24 dev veth0
ip link set veth0 up && ip link set veth1 up
ip route add default via 10.77.0.2 dev veth0
mkdir -p $T/srv
head -c {BIG} /dev/urandom > $T/down.bin
head -c {DOWNLOAD} /dev/urandom > $T/srv/blob
head -c {FORWARDED} /dev/urandom > $T/fwd.bin
section files sh -c 'echo down sha=$(sha256sum < $T/down.bin | cut -d" " -f1); echo blob sha=$(sha256sum < $T/srv/blob | cut -d" " -f1)'
"$PY" -m http.server -d $T/srv -b 0.0.0.0 {HTTP_PORT} > http.log 2>&1 &
http=$!
{"".join(blocks)}
section vhost-net sh -c 'test -c /dev/vhost-net && echo present || echo "no /dev/vhost-net in $(uname -r)"'
if [ -c /dev/vhost-net ]; then
{vhost}
fi
kill $http
section segfaults sh -c 'dmesg | grep -i -e segfault -e "trap invalid" || echo none'
"""


Record = dict[str, str]


def _records(text: str) -> dict[str, Record]:
    """``name key=value ...`` lines by name."""
    out: dict[str, Record] = {}
    for line in text.splitlines():
        words = line.split()
        if words and all("=" in w for w in words[1:]) and len(words) > 1:
            out[words[0]] = dict(w.split("=", 1) for w in words[1:])
    return out


@pytest.fixture(scope="module")
def network(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    host: TestHost | None = None if hardware_kvm() else request.getfixturevalue("testhost")
    result = run_linux_script(host, _script(), TIMEOUT, tmp_path_factory.mktemp("network"))
    assert not result.timed_out, f"timed out after {TIMEOUT} s; {result.where()}"
    return result


def _files(network: RunResult) -> dict[str, Record]:
    return _records(network.section("files").output)


def _guest(network: RunResult, name: str) -> dict[str, Record]:
    return _records(network.section(name).output)


def _peer(network: RunResult, name: str) -> dict[str, Record]:
    return _records(network.section(f"peer-{name}").output)


def _vhost(network: RunResult) -> None:
    if network.section("vhost-net").output.strip() != "present":
        pytest.skip(f"vhost-net unavailable: {network.section('vhost-net').output.strip()}")


def _check_tap_transfers(network: RunResult, name: str) -> None:
    rc, out = network.section(name)
    guest, peer, files = _guest(network, name), _peer(network, name), _files(network)
    where = f"{out[-2000:]}\npeer: {network.section(f'peer-{name}').output}; {network.where()}"
    assert "guest-down" in guest and "host-down" in peer, where
    assert peer["host-down"]["sha"] == files["down"]["sha"] == guest["guest-down"]["sha"], where
    assert int(guest["guest-down"]["bytes"]) == BIG, where
    assert "guest-up" in guest and "host-up" in peer, where
    assert peer["host-up"]["sha"] == guest["guest-up"]["sha"], where
    assert int(peer["host-up"]["bytes"]) == BIG, where
    assert rc == 0, where
    print(f"{name}: down {peer['host-down']['mbps']} MB/s (host), {guest['guest-down']['mbps']} MB/s (guest); "
          f"up {peer['host-up']['mbps']} MB/s (host), {guest['guest-up-sent']['mbps']} MB/s (guest)")


@nested
@pytest.mark.parametrize("trans", TRANSPORTS)
def test_network_tap_guest_pings_host_ip(network: RunResult, trans: str) -> None:
    out = network.section(f"tap-{trans}").output
    assert re.search(r"3 packets transmitted, 3 packets received", out), f"{out[-2000:]}; {network.where()}"


@nested
@pytest.mark.parametrize("trans", TRANSPORTS)
def test_network_tap_64mib_each_way_checksums_match(network: RunResult, trans: str) -> None:
    _check_tap_transfers(network, f"tap-{trans}")


@nested
@pytest.mark.parametrize("trans", TRANSPORTS)
def test_network_user_dhcp_gives_eth0_an_address(network: RunResult, trans: str) -> None:
    out = network.section(f"user-{trans}").output
    # passt offers the address of the test host's interface with the default route
    assert re.search(r"inet 10\.77\.0\.1/\d+", out), f"{out[-2000:]}; {network.where()}"
    assert "gateway=10.77.0.2" in out, f"{out[-2000:]}; {network.where()}"


@nested
@pytest.mark.parametrize("trans", TRANSPORTS)
def test_network_user_download_through_passt_checksum_matches(network: RunResult, trans: str) -> None:
    name = f"user-{trans}"
    out = network.section(name).output
    guest = _guest(network, name)
    assert "guest-download" in guest, f"{out[-2000:]}; {network.where()}"
    assert guest["guest-download"]["sha"] == _files(network)["blob"]["sha"], f"{out[-2000:]}; {network.where()}"
    assert int(guest["guest-download"]["bytes"]) == DOWNLOAD
    print(f"{name}: download {guest['guest-download']['mbps']} MB/s (guest)")


@nested
@pytest.mark.parametrize("trans", TRANSPORTS)
def test_network_user_hostfwd_reaches_guest_server(network: RunResult, trans: str) -> None:
    name = f"user-{trans}"
    rc, out = network.section(name)
    guest, peer = _guest(network, name), _peer(network, name)
    where = f"{out[-2000:]}\npeer: {network.section(f'peer-{name}').output}; {network.where()}"
    assert "host-forward" in peer and "host-forward-answer" in peer, where
    # what the test host sent to 127.0.0.1:HOSTPORT is what the guest's server got
    assert peer["host-forward-answer"]["sha"] == peer["host-forward"]["sha"], where
    assert int(peer["host-forward"]["bytes"]) == FORWARDED, where
    assert "guest-forward" in guest and int(guest["guest-forward"]["bytes"]) == FORWARDED, where
    assert rc == 0, where


@nested
@pytest.mark.parametrize("name", [f"{mode}-{t}" for mode in ("tap", "user") for t in TRANSPORTS])
def test_network_run_leaves_no_tap_no_passt(network: RunResult, name: str) -> None:
    out = network.section(f"left-{name}").output
    assert out.splitlines() == ["taps=", "passt=", "dirs="], f"{out}; {network.where()}"


@nested
@pytest.mark.parametrize("trans", TRANSPORTS)
def test_network_vhost_64mib_each_way_checksums_match(network: RunResult, trans: str) -> None:
    _vhost(network)
    _check_tap_transfers(network, f"vhost-{trans}")
    out = network.section(f"left-vhost-{trans}").output
    assert out.splitlines() == ["taps=", "passt=", "dirs="], f"{out}; {network.where()}"


@nested
def test_network_passt_never_crashed(network: RunResult) -> None:
    out = network.section("segfaults").output
    assert out.strip() == "none", f"{out}; {network.where()}"


def test_records_parses_key_value_lines() -> None:
    text = "noise\nguest-down sha=ab bytes=3 secs=1.00 mbps=2.0\nPING x (y): 56 data bytes\nempty\n"
    assert _records(text) == {"guest-down": {"sha": "ab", "bytes": "3", "secs": "1.00", "mbps": "2.0"}}


def test_script_runs_in_its_own_network_namespace() -> None:
    lines = [l for l in _script().splitlines() if l.strip()]
    assert lines[1].startswith('[ -n "$KVMLITE_NETNS" ] || exec env KVMLITE_NETNS=1 unshare --net')
