"""TapBackend on real taps, each inside a network namespace the test makes
(so names and addresses never meet the machine's), plus the pure parts
(offload mapping, argument checks) that need no privileges."""

from __future__ import annotations

import os
import pwd
import select
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlite.net import features as f
from kvmlite.net import tap as tap_mod
from kvmlite.net import tuntap
from kvmlite.net.errors import NetError
from kvmlite.net.netns import run_in_netns
from kvmlite.net.tap import TapBackend, parse_host_ip, tun_offload_flags

from .conftest import in_netns, ip, link_info, need_tun

REPO = Path(__file__).resolve().parents[3]
ETH_P_ALL = 0x0003
ETHERTYPE_TEST = 0x88B5                 # IEEE 802 local experimental
GUEST_MAC = bytes.fromhex("525400aabbcc")
NO_OFFLOAD_HDR = bytes(f.VNET_HDR_LEN)  # flags 0, GSO_NONE


def test_frame(payload: bytes) -> bytes:
    return b"\xff" * 6 + GUEST_MAC + ETHERTYPE_TEST.to_bytes(2, "big") + payload.ljust(46, b"\0")


test_frame.__test__ = False             # a helper, not a test


@pytest.fixture
def tapns(netns: str) -> str:
    need_tun()
    return netns


@pytest.fixture
def tap(tapns: str) -> Iterator[TapBackend]:
    backend = TapBackend("kvtap0", host_ip="10.77.1.1", netns=tapns)
    yield backend
    backend.close()


def packet_socket(netns: str, ifname: str) -> socket.socket:
    """An AF_PACKET socket of ``netns`` bound to ``ifname``."""
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((ifname, 0))
        return sock
    return run_in_netns(netns, make)


def recv_test_frame(read, timeout: float = 5.0) -> bytes:
    """Frames from ``read()`` until one of ours (the test ethertype) comes."""
    buf = bytearray(70000)
    for _ in range(100):
        frame = read(buf, timeout)
        if frame is None:
            break
        if frame.find(ETHERTYPE_TEST.to_bytes(2, "big") + b"kvmlite") >= 0:
            return frame
    raise AssertionError("test frame never arrived")


# --- pure parts ---

def test_tap_offload_flags_follow_virtio_dependencies() -> None:
    every = (f.VIRTIO_NET_F_GUEST_CSUM | f.VIRTIO_NET_F_GUEST_TSO4 | f.VIRTIO_NET_F_GUEST_TSO6
             | f.VIRTIO_NET_F_GUEST_ECN | f.VIRTIO_NET_F_GUEST_UFO)
    assert tun_offload_flags(every, ufo=True) == (tuntap.TUN_F_CSUM | tuntap.TUN_F_TSO4 | tuntap.TUN_F_TSO6
                                                  | tuntap.TUN_F_TSO_ECN | tuntap.TUN_F_UFO)
    assert tun_offload_flags(every, ufo=False) & tuntap.TUN_F_UFO == 0
    assert tun_offload_flags(every & ~f.VIRTIO_NET_F_GUEST_CSUM, ufo=True) == 0
    assert tun_offload_flags(f.VIRTIO_NET_F_GUEST_CSUM | f.VIRTIO_NET_F_GUEST_ECN, ufo=True) == tuntap.TUN_F_CSUM
    assert tun_offload_flags(0, ufo=True) == 0
    # host-side features are the guest's business, not the tap's reader's
    host = f.VIRTIO_NET_F_CSUM | f.VIRTIO_NET_F_HOST_TSO4 | f.VIRTIO_NET_F_HOST_UFO | f.VIRTIO_NET_F_MRG_RXBUF
    assert tun_offload_flags(host, ufo=True) == 0


def test_tap_host_ip_defaults_to_24() -> None:
    assert str(parse_host_ip("192.168.33.1").network) == "192.168.33.0/24"
    assert str(parse_host_ip("10.1.2.3/16").network) == "10.1.0.0/16"
    with pytest.raises(NetError, match="bad host_ip"):
        parse_host_ip("300.1.1.1")


def test_tap_tapif_with_host_ip_is_refused() -> None:
    with pytest.raises(NetError, match="tapif= uses an existing tap as it is"):
        TapBackend(tapif="tap0", host_ip="10.0.0.1")


def test_tap_without_dev_net_tun_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tap_mod, "TUN_PATH", "/nonexistent/net/tun")
    with pytest.raises(NetError) as info:
        TapBackend()
    assert str(info.value) == "/nonexistent/net/tun does not exist (modprobe tun)"


def test_tap_missing_netns_is_one_line_error() -> None:
    with pytest.raises(NetError, match="network namespace kvt-no-such-ns does not exist"):
        TapBackend(netns="kvt-no-such-ns")


# --- real taps ---

def test_tap_create_has_address_is_up_and_carries_vnet_header(tap: TapBackend, tapns: str) -> None:
    info = link_info("kvtap0", tapns)
    assert info is not None
    assert "UP" in info["flags"]
    assert [(a["local"], a["prefixlen"]) for a in info["addr_info"] if a["family"] == "inet"] == [("10.77.1.1", 24)]
    name, flags = tuntap.tun_get_iff(tap.fileno())
    assert name == "kvtap0"
    assert flags & (tuntap.IFF_TAP | tuntap.IFF_NO_PI | tuntap.IFF_VNET_HDR) == \
        tuntap.IFF_TAP | tuntap.IFF_NO_PI | tuntap.IFF_VNET_HDR
    assert tuntap.tun_get_vnet_hdr_sz(tap.fileno()) == 12
    assert os.get_blocking(tap.fileno()) is False
    assert tap.vnet_hdr is True and tap.mtu is None


def test_tap_kernel_chooses_the_name(tapns: str) -> None:
    with TapBackend(netns=tapns) as backend:
        assert backend.name.startswith("kvmlite") and backend.name[7:].isdigit()
        assert link_info(backend.name, tapns) is not None


def test_tap_send_reaches_the_host_without_vnet_header(tap: TapBackend, tapns: str) -> None:
    sock = packet_socket(tapns, "kvtap0")
    try:
        frame = test_frame(b"kvmlite to host")
        assert tap.send([NO_OFFLOAD_HDR, memoryview(frame)[:20], frame[20:]]) is True

        def read(buf: bytearray, timeout: float) -> bytes | None:
            if not select.select([sock], [], [], timeout)[0]:
                return None
            n = sock.recv_into(buf)
            return bytes(buf[:n])
        assert recv_test_frame(read) == frame
    finally:
        sock.close()


def test_tap_recv_into_gets_host_frame_after_vnet_header(tap: TapBackend, tapns: str) -> None:
    sock = packet_socket(tapns, "kvtap0")
    try:
        frame = test_frame(b"kvmlite from host")
        with pytest.raises(BlockingIOError):
            while True:                 # whatever the host sent on its own (IPv6 noise)
                tap.recv_into(memoryview(bytearray(70000)))
        sock.send(frame)

        def read(buf: bytearray, timeout: float) -> bytes | None:
            if not select.select([tap], [], [], timeout)[0]:
                return None
            n = tap.recv_into(memoryview(buf))
            return bytes(buf[:n])
        got = recv_test_frame(read)
    finally:
        sock.close()
    hdr = f.virtio_net_hdr_v1.from_buffer_copy(got[:f.VNET_HDR_LEN])
    assert hdr.gso_type == f.VIRTIO_NET_HDR_GSO_NONE
    assert got[f.VNET_HDR_LEN:] == frame


def test_tap_offloads_offered_and_set_offloads_applied(tap: TapBackend, tapns: str) -> None:
    if shutil.which("ethtool") is None:
        pytest.skip("ethtool not installed (apt-get install ethtool): cannot read the tap's offloads back")
    offered = tap.offloads()
    assert offered & f.TAP_OFFLOADS == f.TAP_OFFLOADS
    assert offered & ~(f.TAP_OFFLOADS | f.VIRTIO_NET_F_GUEST_UFO) == 0

    def features() -> dict[str, str]:
        out = in_netns(tapns, "ethtool", "-k", "kvtap0").stdout
        return {k.strip(): v.split()[0] for k, v in (line.split(":", 1) for line in out.splitlines()[1:] if ":" in line)}

    tap.set_offloads(offered)
    on = features()
    assert on["tx-checksumming"] == "on"
    assert on["tx-tcp-segmentation"] == "on" and on["tx-tcp6-segmentation"] == "on"
    assert on["tx-tcp-ecn-segmentation"] == "on"
    tap.set_offloads(f.VIRTIO_NET_F_GUEST_CSUM)
    csum_only = features()
    assert csum_only["tx-checksumming"] == "on" and csum_only["tx-tcp-segmentation"] == "off"
    tap.set_offloads(0)
    assert features()["tx-checksumming"] == "off"


def ip_checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def udp_to_host(tap: TapBackend, dst: str, port: int, payload: bytes, *, partial_csum: bool) -> list[bytes]:
    """A vnet header and a guest's UDP datagram to the host; with
    ``partial_csum`` the UDP checksum holds only the pseudo-header sum and
    the header asks for it to be finished (NEEDS_CSUM), as a driver does
    when CSUM was negotiated."""
    src = bytes([10, 77, 1, 2])
    dst_ip = socket.inet_aton(dst)
    udp_len = 8 + len(payload)
    pseudo = ip_checksum(src + dst_ip + struct.pack("!BBH", 0, 17, udp_len)) & 0xFFFF
    udp = struct.pack("!HHHH", 40000, port, udp_len, pseudo) + payload
    ip_hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0x4000, 64, 17, 0, src, dst_ip)
    ip_hdr = ip_hdr[:10] + struct.pack("!H", ~ip_checksum(ip_hdr) & 0xFFFF) + ip_hdr[12:]
    mac = bytes.fromhex(link_info(tap.name, tap.netns)["address"].replace(":", ""))
    hdr = f.virtio_net_hdr_v1()
    if partial_csum:
        hdr.flags, hdr.csum_start, hdr.csum_offset = f.VIRTIO_NET_HDR_F_NEEDS_CSUM, 14 + 20, 6
    return [bytes(hdr), mac + GUEST_MAC + b"\x08\x00" + ip_hdr + udp]


def test_tap_host_side_checksum_offload_is_honoured(tap: TapBackend, tapns: str) -> None:
    # The same datagram with an unfinished checksum: dropped as corrupt
    # without NEEDS_CSUM, delivered with it (virtio 1.2 §5.1.6.2).
    srv = run_in_netns(tapns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        srv.bind(("10.77.1.1", 5000))
        ip("neigh", "replace", "10.77.1.2", "lladdr", "52:54:00:aa:bb:cc", "dev", "kvtap0", netns=tapns)
        assert tap.send(udp_to_host(tap, "10.77.1.1", 5000, b"kvmlite bad sum", partial_csum=False))
        assert not select.select([srv], [], [], 0.3)[0], "a datagram with a wrong checksum was delivered"
        assert tap.send(udp_to_host(tap, "10.77.1.1", 5000, b"kvmlite partial", partial_csum=True))
        assert select.select([srv], [], [], 5)[0], "the NEEDS_CSUM datagram was not delivered"
        assert srv.recv(100) == b"kvmlite partial"
    finally:
        srv.close()


def test_tap_guest_side_checksum_offload_follows_set_offloads(tap: TapBackend, tapns: str) -> None:
    # With GUEST_CSUM the kernel hands the guest unfinished checksums
    # (NEEDS_CSUM in the header); without it, finished ones.
    ip("neigh", "replace", "10.77.1.2", "lladdr", "52:54:00:aa:bb:cc", "dev", "kvtap0", netns=tapns)
    client = run_in_netns(tapns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

    def datagram_header(payload: bytes) -> f.virtio_net_hdr_v1:
        client.sendto(payload, ("10.77.1.2", 5000))

        def read(buf: bytearray, timeout: float) -> bytes | None:
            if not select.select([tap], [], [], timeout)[0]:
                return None
            n = tap.recv_into(memoryview(buf))
            return bytes(buf[:n])
        buf = bytearray(70000)
        for _ in range(100):
            frame = read(buf, 5)
            assert frame is not None, "the datagram never reached the tap"
            if frame.endswith(payload):
                return f.virtio_net_hdr_v1.from_buffer_copy(frame)
        raise AssertionError("the datagram never reached the tap")
    try:
        tap.set_offloads(f.VIRTIO_NET_F_GUEST_CSUM)
        assert datagram_header(b"kvmlite offloaded").flags & f.VIRTIO_NET_HDR_F_NEEDS_CSUM
        tap.set_offloads(0)
        assert not datagram_header(b"kvmlite finished").flags & f.VIRTIO_NET_HDR_F_NEEDS_CSUM
    finally:
        client.close()


def test_tap_send_refused_frame_is_oserror_not_gone(tap: TapBackend) -> None:
    bad = bytes([0, 99]) + bytes(f.VNET_HDR_LEN - 2)       # gso_type 99: no such type
    with pytest.raises(NetError) as info:
        tap.send([bad, test_frame(b"kvmlite")])
    assert isinstance(info.value, OSError) and not isinstance(info.value, ConnectionError)
    assert str(info.value).startswith("write to tap kvtap0 failed: Invalid argument (EINVAL)")
    assert tap.send([NO_OFFLOAD_HDR, test_frame(b"kvmlite")]) is True     # the next one goes


def test_tap_close_removes_the_tap(tapns: str) -> None:
    backend = TapBackend("kvtap1", netns=tapns)
    assert link_info("kvtap1", tapns) is not None
    backend.close()
    backend.close()                     # twice is fine
    assert link_info("kvtap1", tapns) is None


def test_tap_create_with_taken_name_is_one_line_error(tap: TapBackend, tapns: str) -> None:
    with pytest.raises(NetError) as info:
        TapBackend("kvtap0", netns=tapns)
    assert str(info.value) == "interface kvtap0 already exists (tapif=kvtap0 attaches to an existing tap)"


def test_tap_tapif_attaches_and_leaves_the_tap(tapns: str) -> None:
    ip("tuntap", "add", "dev", "kvtap2", "mode", "tap", netns=tapns)
    backend = TapBackend(tapif="kvtap2", netns=tapns)
    assert backend.name == "kvtap2" and not backend.created
    with pytest.raises(NetError, match="tap kvtap2 is in use by another process"):
        TapBackend(tapif="kvtap2", netns=tapns)
    # the tap is down, as made: the kernel refuses frames (EIO), they are dropped
    assert backend.send([NO_OFFLOAD_HDR, test_frame(b"kvmlite")]) is True
    assert backend.dropped == 1
    backend.close()
    info = link_info("kvtap2", tapns)
    assert info is not None and "UP" not in info["flags"]
    TapBackend(tapif="kvtap2", netns=tapns).close()      # free again


def test_tap_tapif_missing_is_one_line_error(tapns: str) -> None:
    with pytest.raises(NetError) as info:
        TapBackend(tapif="kvtap9", netns=tapns)
    assert str(info.value) == "tap kvtap9 does not exist (ip tuntap add dev kvtap9 mode tap)"
    assert link_info("kvtap9", tapns) is None


def test_tap_deleted_under_backend_is_connection_error(tap: TapBackend, tapns: str) -> None:
    ip("link", "del", "kvtap0", netns=tapns)
    poller = select.poll()
    poller.register(tap.fileno(), select.POLLIN)
    assert poller.poll(1000), "the deleted tap's fd did not wake a poller"
    with pytest.raises(ConnectionError, match="tap kvtap0 is gone"):
        tap.recv_into(memoryview(bytearray(2048)))
    with pytest.raises(ConnectionError, match="tap kvtap0 is gone"):
        tap.send([NO_OFFLOAD_HDR, test_frame(b"kvmlite")])
    with pytest.raises(ConnectionError):
        tap.set_offloads(0)


def test_tap_script_runs_with_the_tap_name(tapns: str, tmp_path: Path) -> None:
    out = tmp_path / "ran"
    script = tmp_path / "ifup"
    script.write_text(f'#!/bin/sh\necho "$1 $(cat /sys/class/net/$1/operstate)" > {out}\n')
    script.chmod(0o755)
    with TapBackend("kvtap3", script=str(script), netns=tapns):
        assert out.read_text().split()[0] == "kvtap3"


def test_tap_script_failure_is_one_line_error_and_removes_tap(tapns: str, tmp_path: Path) -> None:
    script = tmp_path / "ifup"
    script.write_text("#!/bin/sh\necho starting\necho 'bridge br9: no such device' >&2\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(NetError) as info:
        TapBackend("kvtap4", script=str(script), netns=tapns)
    assert str(info.value) == f"tap script {script} kvtap4 failed (exit status 3): bridge br9: no such device"
    assert link_info("kvtap4", tapns) is None


def test_tap_script_missing_is_one_line_error(tapns: str, tmp_path: Path) -> None:
    with pytest.raises(NetError, match="tap script .* does not exist"):
        TapBackend("kvtap5", script=str(tmp_path / "none"), netns=tapns)
    assert link_info("kvtap5", tapns) is None


# --- without CAP_NET_ADMIN: a child in the test's namespace, as nobody ---

CHILD = """
import os, sys
from kvmlite.net import tap                     # imported first: the interpreter's files may be root's only
from kvmlite.net.errors import NetError
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([]); os.setgid(gid); os.setuid(uid)
if len(sys.argv) > 3:
    tap.TUN_PATH = sys.argv[3]
try:
    tap.TapBackend("kvtap6").close()
except NetError as e:
    print(e)
    sys.exit(1)
print("created a tap without CAP_NET_ADMIN")
"""


def run_as_nobody(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    nobody = pwd.getpwnam("nobody")
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CHILD, str(nobody.pw_uid),
                           str(nobody.pw_gid), *args], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"})


def test_tap_as_nobody_says_cap_net_admin_is_missing(tapns: str) -> None:
    done = run_as_nobody(tapns)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and "CAP_NET_ADMIN is missing" in lines[0], done.stdout + done.stderr
    assert link_info("kvtap6", tapns) is None


def test_tap_as_nobody_with_open_device_fails_tunsetiff_with_cap_net_admin_line(tapns: str) -> None:
    # A world-usable copy of /dev/net/tun gets nobody past open() to TUNSETIFF's EPERM.
    where = Path(tempfile.mkdtemp(prefix="kvt-tun-"))
    try:
        where.chmod(0o755)
        node = where / "tun"
        rdev = os.stat("/dev/net/tun").st_rdev
        try:
            os.mknod(node, stat.S_IFCHR | 0o666, rdev)
            node.chmod(0o666)
            os.close(os.open(node, os.O_RDWR))
        except OSError as e:
            pytest.skip(f"cannot make a device node in {where} ({e.strerror}): /tmp is mounted nodev?")
        done = run_as_nobody(tapns, str(node))
    finally:
        shutil.rmtree(where)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines() == ["cannot create tap kvtap6: CAP_NET_ADMIN is missing "
                                        "(run kvmlite as root or give it CAP_NET_ADMIN)"], done.stderr
    assert link_info("kvtap6", tapns) is None
