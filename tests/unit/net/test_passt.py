"""PasstBackend with a real passt, started inside a network namespace the
test makes (a veth pair with an address and a default route, which passt
needs), plus the pure parts: hostfwd rules and passt's argv."""

from __future__ import annotations

import gc
import ipaddress
import os
import re
import select
import shutil
import signal
import socket
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmlite.net import passt as passt_mod
from kvmlite.net.errors import NetError
from kvmlite.net.netns import run_in_netns
from kvmlite.net.passt import HostForward, PasstBackend, parse_hostfwd

from .conftest import RoutedNetns, in_netns, ip

GUEST_MAC = bytes.fromhex("525400123456")
BROADCAST = b"\xff" * 6
XID = 0x6B766D6C


def need_passt() -> None:
    if shutil.which("passt") is None:
        pytest.skip("passt not installed (apt-get install passt)")


@pytest.fixture
def passt(routed_netns: RoutedNetns) -> Iterator[PasstBackend]:
    need_passt()
    backend = PasstBackend(netns=routed_netns.name)
    yield backend
    backend.close()


def passt_processes(marker: str) -> list[int]:
    """Pids of processes whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


# --- frames the test builds: a guest's ARP and DHCP ---

def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp_request(sender_ip: str, target_ip: str) -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, GUEST_MAC, ipaddress.IPv4Address(sender_ip).packed,
                      bytes(6), ipaddress.IPv4Address(target_ip).packed)
    return (BROADCAST + GUEST_MAC + b"\x08\x06" + arp).ljust(60, b"\0")


def dhcp_discover() -> bytes:
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, XID, 0, 0x8000, bytes(4), bytes(4), bytes(4),
                        bytes(4), GUEST_MAC, b"", b"")
    options = bytes([99, 130, 83, 99, 53, 1, 1, 55, 4, 1, 3, 6, 26, 255])
    payload = (bootp + options).ljust(300, b"\0")
    udp = struct.pack("!HHHH", 68, 67, 8 + len(payload), 0) + payload
    ip_hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes(4), b"\xff" * 4)
    ip_hdr = ip_hdr[:10] + struct.pack("!H", checksum(ip_hdr)) + ip_hdr[12:]
    return BROADCAST + GUEST_MAC + b"\x08\x00" + ip_hdr + udp


def udp_frame(dst_mac: bytes, src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload      # checksum 0: none (IPv4)
    ip_hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, 0x4000, 64, 17, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    ip_hdr = ip_hdr[:10] + struct.pack("!H", checksum(ip_hdr)) + ip_hdr[12:]
    return dst_mac + GUEST_MAC + b"\x08\x00" + ip_hdr + udp


def arp_reply(frame: bytes) -> tuple[int, bytes, bytes, bytes] | None:
    if frame[12:14] != b"\x08\x06":
        return None
    op, sha, spa, tha = struct.unpack("!6xH6s4s6s4x", frame[14:42])
    return (op, sha, spa, tha) if op == 2 else None


def dhcp_reply(frame: bytes) -> dict[int, bytes] | None:
    """The options of a DHCP reply to our DISCOVER (plus 0: yiaddr), or None."""
    if frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 0xF) * 4
    udp = frame[14 + ihl:]
    if struct.unpack("!HH", udp[:4]) != (67, 68):
        return None
    bootp = udp[8:]
    op, xid, yiaddr = bootp[0], struct.unpack("!I", bootp[4:8])[0], bootp[16:20]
    if op != 2 or xid != XID or bootp[236:240] != bytes([99, 130, 83, 99]):
        return None
    options, i = {0: yiaddr}, 240
    while i < len(bootp) and bootp[i] != 255:
        if bootp[i] == 0:
            i += 1
            continue
        options[bootp[i]] = bootp[i + 2:i + 2 + bootp[i + 1]]
        i += 2 + bootp[i + 1]
    return options


def wait_for(backend: PasstBackend, match: Callable[[bytes], object], timeout: float = 5.0) -> object:
    """Frames from ``backend`` until ``match`` gives something true."""
    buf = bytearray(70000)
    for _ in range(200):
        if not select.select([backend], [], [], timeout)[0]:
            break
        try:
            n = backend.recv_into(memoryview(buf))
        except BlockingIOError:
            continue                     # a frame arrived in part
        found = match(bytes(buf[:n]))
        if found:
            return found
    raise AssertionError("passt never answered")


# --- pure parts ---

@pytest.mark.parametrize("rule, forward, args", [
    ("tcp:8080-80", HostForward("tcp", 8080, 80), ["-t", "8080:80"]),
    ("udp:5353-53", HostForward("udp", 5353, 53), ["-u", "5353:53"]),
    ("tcp:127.0.0.1:2222-22", HostForward("tcp", 2222, 22, "127.0.0.1"), ["-t", "127.0.0.1/2222:22"]),
    ("tcp::2222-:22", HostForward("tcp", 2222, 22), ["-t", "2222:22"]),
])
def test_passt_hostfwd_rules_become_passt_options(rule: str, forward: HostForward, args: list[str]) -> None:
    assert parse_hostfwd(rule) == forward
    assert forward.passt_args() == args


@pytest.mark.parametrize("rule, why", [
    ("tcp:80", "expected tcp:HOSTPORT-GUESTPORT"),
    ("sctp:1-2", "expected tcp:HOSTPORT-GUESTPORT"),
    ("tcp:0-80", "ports are 1 to 65535"),
    ("udp:70000-53", "ports are 1 to 65535"),
    ("tcp:1.2.3:80-80", "bad address"),
    ("tcp::2222-10.0.2.15:22", "passt forwards to the guest's own address"),
])
def test_passt_bad_hostfwd_is_one_line_error(rule: str, why: str) -> None:
    with pytest.raises(NetError) as info:
        parse_hostfwd(rule)
    assert why in str(info.value) and "\n" not in str(info.value)


def test_passt_not_installed_is_one_line_error() -> None:
    with pytest.raises(NetError) as info:
        PasstBackend(binary="kvt-no-such-passt")
    assert str(info.value) == "passt is not installed: apt-get install passt"


def test_passt_rundir_too_long_for_a_socket_is_one_line_error_and_leaves_nothing(tmp_path: Path) -> None:
    need_passt()
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    with pytest.raises(NetError, match="is too long for a Unix socket: choose a shorter rundir"):
        PasstBackend(rundir=deep)
    assert list(deep.iterdir()) == []


def test_passt_rundir_missing_is_one_line_error(tmp_path: Path) -> None:
    need_passt()
    with pytest.raises(NetError, match="cannot make passt's directory in .*: No such file or directory"):
        PasstBackend(rundir=tmp_path / "none")


def test_passt_last_words_skip_syslog_noise(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("Failed to send 47 bytes to syslog\nDon't run as root. Changing to nobody...\n"
                   "Failed to send 46 bytes to syslog\nNo external routable interface for IPv4\n"
                   "Failed to send 20 bytes to syslog\n")
    assert passt_mod._last_words(log) == ("No external routable interface for IPv4 "
                                          "(passt needs an interface with a default route)")
    log.write_text("one\ntwo\nFailed to send 3 bytes to syslog\nthree\nfour\n")
    assert passt_mod._last_words(log) == "two; three; four"


def test_passt_last_words_skip_the_connection_banner(tmp_path: Path) -> None:
    """What passt prints once its socket is bound (here before it failed to
    write its pid file) says how to start QEMU, not what went wrong."""
    log = tmp_path / "log"
    log.write_text("No external routable interface for IPv6\nFailed to send 58 bytes to syslog\n"
                   "UNIX domain socket bound at /tmp/x/passt.socket\n\n"
                   "You can now start qemu (>= 7.2, with commit 13c6be96618c):\n"
                   "    kvm ... -device virtio-net-pci,netdev=s -netdev stream,id=s,server=off,addr.type=unix\n"
                   "or qrap, for earlier qemu versions:\n    ./qrap 5 kvm ... -net socket,fd=5 -net nic,model=virtio\n"
                   "PID file open: Permission denied\n")
    assert passt_mod._last_words(log) == "No external routable interface for IPv6; PID file open: Permission denied"


def test_passt_rundir_nobody_cannot_enter_is_one_line_error_and_leaves_nothing(tmp_path: Path) -> None:
    """As root passt drops to nobody, who must reach its directory: pytest's
    tmp_path lies under a 0700 directory, so a rundir there cannot work."""
    need_passt()
    if os.geteuid() != 0:
        pytest.skip("needs root: passt drops to nobody only when started by root")
    tmp_path.chmod(0o700)
    rundir = tmp_path / "run"
    rundir.mkdir()
    rundir.chmod(0o755)
    with pytest.raises(NetError) as info:
        PasstBackend(rundir=rundir)
    message = re.fullmatch(r"passt runs as nobody, who may not enter (\S+): "
                           r"choose a rundir \(or \$TMPDIR\) nobody can reach", str(info.value))
    assert message, str(info.value)
    blocked = Path(message.group(1))
    assert blocked in rundir.parents and not blocked.stat().st_mode & 0o001
    assert list(rundir.iterdir()) == []


# --- a real passt ---

def test_passt_argv_and_files(passt: PasstBackend, routed_netns: RoutedNetns) -> None:
    argv = passt.argv
    assert argv[:4] == ["ip", "netns", "exec", routed_netns.name]
    assert argv[5:9] == ["-f", "-e", "-q", "-1"]
    assert passt.pid == passt.proc.pid          # foreground: no fork, and ip netns exec execs
    assert passt.dir.parent == Path(tempfile.gettempdir())
    assert not passt.socket_path.exists()       # unlinked once connected
    assert passt.vnet_hdr is False and passt.mtu == 65520 and passt.offloads() == 0


def test_passt_answers_arp_for_the_gateway(passt: PasstBackend, routed_netns: RoutedNetns) -> None:
    assert passt.send([arp_request(routed_netns.addr, routed_netns.gateway)]) is True
    op, sha, spa, tha = wait_for(passt, arp_reply)
    assert spa == ipaddress.IPv4Address(routed_netns.gateway).packed
    assert tha == GUEST_MAC
    assert sha != GUEST_MAC and not sha[0] & 1


def test_passt_offers_the_namespace_address_by_dhcp(passt: PasstBackend, routed_netns: RoutedNetns) -> None:
    assert passt.send([dhcp_discover()]) is True
    offer = wait_for(passt, dhcp_reply)
    assert offer[53] == b"\x02"                                             # DHCPOFFER
    assert offer[0] == ipaddress.IPv4Address(routed_netns.addr).packed     # yiaddr
    assert offer[3] == ipaddress.IPv4Address(routed_netns.gateway).packed  # router
    assert offer[1] == ipaddress.IPv4Network(f"0.0.0.0/{routed_netns.prefix}").netmask.packed
    if 26 in offer:
        assert struct.unpack("!H", offer[26])[0] == 65520


def test_passt_carries_udp_both_ways_in_large_frames(passt: PasstBackend, routed_netns: RoutedNetns) -> None:
    # A server on an address of the namespace's lo, reached through passt's
    # gateway; ~60 KB datagrams fit one frame (MTU 65520), so each crosses
    # the stream as one long frame in several reads.
    ip("addr", "add", "10.88.0.1/32", "dev", "lo", netns=routed_netns.name)

    def server() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("10.88.0.1", 5000))
        return sock
    srv = run_in_netns(routed_netns.name, server)
    try:
        passt.send([arp_request(routed_netns.addr, routed_netns.gateway)])
        gateway_mac = wait_for(passt, arp_reply)[1]
        payload = bytes(range(256)) * 234
        assert passt.send([udp_frame(gateway_mac, routed_netns.addr, "10.88.0.1", 40000, 5000, payload)]) is True
        assert select.select([srv], [], [], 5)[0], "the server got nothing"
        data, peer = srv.recvfrom(70000)
        assert data == payload and peer[1] == 40000
        srv.sendto(payload[::-1], peer)

        def reply(frame: bytes) -> bytes | None:
            if frame[12:14] != b"\x08\x00" or frame[23] != 17:
                return None
            udp = frame[14 + (frame[14] & 0xF) * 4:]
            return udp[8:] if struct.unpack("!HH", udp[:4]) == (5000, 40000) else None
        assert wait_for(passt, reply) == payload[::-1]
    finally:
        srv.close()


def test_passt_close_leaves_nothing_behind(routed_netns: RoutedNetns) -> None:
    need_passt()
    backend = PasstBackend(netns=routed_netns.name)
    where, pid = backend.dir, backend.proc.pid
    assert where.is_dir() and passt_processes(str(where)) == [pid]
    backend.close()
    backend.close()
    assert not where.exists()
    assert passt_processes(str(where)) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_passt_never_closed_is_cleaned_up_when_collected(routed_netns: RoutedNetns) -> None:
    need_passt()
    backend = PasstBackend(netns=routed_netns.name)
    where, pid = backend.dir, backend.proc.pid
    del backend
    gc.collect()
    assert not where.exists()
    assert passt_processes(str(where)) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_passt_dying_is_connection_error(passt: PasstBackend) -> None:
    os.kill(passt.proc.pid, signal.SIGKILL)
    passt.proc.wait(5)
    assert select.select([passt], [], [], 5)[0]
    with pytest.raises(ConnectionError, match=r"passt exited \(status -9\)"):
        passt.recv_into(memoryview(bytearray(2048)))
    with pytest.raises(ConnectionError, match="passt"):
        passt.send([arp_request("10.77.0.2", "10.77.0.1")])
    where = passt.dir
    passt.close()
    assert not where.exists()


def test_passt_hostfwd_listens_in_its_namespace(routed_netns: RoutedNetns) -> None:
    need_passt()
    with PasstBackend(netns=routed_netns.name, hostfwd=["tcp:18080-80", "udp:15353-53"]) as backend:
        assert backend.argv[-4:] == ["-t", "18080:80", "-u", "15353:53"]
        tcp = in_netns(routed_netns.name, "ss", "-ltnH").stdout
        udp = in_netns(routed_netns.name, "ss", "-lunH").stdout
    assert ":18080 " in tcp
    assert ":15353 " in udp


def test_passt_without_default_route_is_one_line_error_and_leaves_nothing(netns: str) -> None:
    need_passt()
    rundir = Path(tempfile.mkdtemp(prefix="kvt-run-", dir="/tmp"))     # nobody must reach it: not tmp_path
    try:
        rundir.chmod(0o755)
        with pytest.raises(NetError) as info:
            PasstBackend(netns=netns, rundir=rundir)
        assert str(info.value).startswith("passt exited at start (status ")
        assert "No external routable interface for IPv4" in str(info.value)
        assert list(rundir.iterdir()) == []
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
