"""virtio-vsock under the real /dev/kvm, end to end: the purpose-built
"virtio" guest in mode=vsock (tests/guests/src/virtio/vsock.c, a small
guest-side driver) against real Unix sockets on the host side, on both
transports.

In one run the guest, at once:

* reads its CID from the configuration space (the test's random one);
* connects to host port P1, which the test serves on ``<socket>_P1``: the
  guest sends 1 MiB and a bit (four times and more the device's 256 KiB
  credit).  The test reads nothing until the guest says it ran out of
  credit, and sends nothing until it has read it all, so only the
  device's unasked CREDIT_UPDATEs let the guest go on.  Then the test
  sends 1 MiB and a bit back (sixteen times the guest's 64 KiB buf_alloc)
  and half-closes; the guest sees SHUTDOWN SEND, closes (SHUTDOWN
  RCV|SEND), the test reads end-of-file and the guest gets the device's
  RST;
* connects to port P3, where nothing listens, and gets RST;
* listens on port P2: the test connects to the VM's socket, writes
  ``CONNECT P2`` and gets ``OK <host port>``; both sides send 1 MiB and a
  bit at the same time; the guest half-closes (SHUTDOWN SEND: the test
  reads end-of-file), the test closes, the guest sees SHUTDOWN RCV|SEND
  and answers RST.

What the guest sends is a pattern from the test's random seed; what the
test sends is random.  Each side checksums what it sent and received (FNV-1a
over 64-bit words, as vsock.c does) and the test compares them, the byte
counts, the pattern itself, the guest's credit checks (the device stayed
within the guest's buf_alloc and had to ask for more), the RST, the
SHUTDOWN flags, both end-of-files, the guest's exit status and the
device's counters (logged when the VM stops).
"""

from __future__ import annotations

import ast
import os
import random
import re
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmlite.devices.virtio.vsock import VsockLimits
from kvmlite.devices.virtio.vsock.mux import FIRST_HOST_PORT
from tests.kvm.conftest import LiveKvmlite, Run

pytestmark = pytest.mark.kvm

GUEST_OK = 42
TRANSPORTS = ("pci", "mmio")
DEVICE_BUF_ALLOC = VsockLimits().buf_alloc          # the credit the device gives each connection
GUEST_BUF_ALLOC = 64 * 1024                         # the guest's (vsock.c buf_alloc=)
TO_P1 = (1 << 20) + 4321                            # guest -> host on P1: over four device windows
FROM_P1 = (1 << 20) + 777                           # host -> guest on P1: sixteen guest windows
TO_P2 = (1 << 20) + 13                              # host -> guest on P2
FROM_P2 = (1 << 20) + 1001                          # guest -> host on P2
TIMEOUT = 120.0                                     # the guest boots in a second; PVM is slow at CPL0
SOCKET_TIMEOUT = 60.0
VSOCK_TIMEOUT = 20                                  # seconds the guest waits without progress
MASK = (1 << 64) - 1

assert TO_P1 > 4 * DEVICE_BUF_ALLOC and FROM_P2 > 4 * DEVICE_BUF_ALLOC
assert FROM_P1 > 16 * GUEST_BUF_ALLOC and TO_P2 > 16 * GUEST_BUF_ALLOC


# --- what vsock.c computes ----------------------------------------------------------


def pattern(seed: int, length: int) -> bytes:
    """The guest's stream: 64-bit LE words, word i = mix(seed + i)."""
    def word(i: int) -> int:
        z = ((seed + i) * 0x9E3779B97F4A7C15) & MASK
        return z ^ (z >> 31)

    words = (length + 7) // 8
    return struct.pack(f"<{words}Q", *map(word, range(words)))[:length]


def checksum(data: bytes) -> int:
    """FNV-1a over 64-bit LE words, the last zero-padded."""
    h = 0xCBF29CE484222325
    for (w,) in struct.iter_unpack("<Q", data + bytes(-len(data) % 8)):
        h = ((h ^ w) * 0x100000001B3) & MASK
    return h


# --- the host side ------------------------------------------------------------------


class Background:
    """``fn()`` on a thread; :meth:`result` re-raises what it raised."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self._value: object = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:   # handed to the test thread
            self._error = exc

    def result(self, timeout: float = TIMEOUT) -> object:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "a host-side thread is still running"
        if self._error is not None:
            raise self._error
        return self._value


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything until end-of-file (a socket timeout fails the test)."""
    data = bytearray()
    while chunk := sock.recv(1 << 16):
        data += chunk
    return bytes(data)


@dataclass
class HostConnect:
    """P2, the host's connection into the guest."""

    ok_line: bytes
    received: bytes


def connect_to_guest(path: str, port: int, data: bytes) -> HostConnect:
    """CONNECT to guest ``port`` through the VM's socket; send ``data``
    while reading to end-of-file (the guest's half-close), then close.
    No half-close here: the end-of-file the device reads from this stream
    must be the close, which the guest sees as SHUTDOWN RCV|SEND (after a
    half-close the device tells SHUTDOWN SEND, and a later close goes
    unseen, as a TCP peer's does, until the guest writes or closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(SOCKET_TIMEOUT)
        sock.connect(path)
        sock.sendall(f"CONNECT {port}\n".encode())
        line = b""
        while not line.endswith(b"\n"):             # the line alone: guest bytes may follow it
            byte = sock.recv(1)
            if not byte:
                return HostConnect(line, b"")       # refused: the assertions say so
            line += byte
        writer = Background(lambda: sock.sendall(data))
        received = read_to_eof(sock)
        writer.result()
    return HostConnect(line, received)


def serve_guest(listener: socket.socket, reply: bytes, live: LiveKvmlite, port: int) -> bytes:
    """Take the guest's connection on ``listener``: read nothing until the
    guest has run out of credit, then read its TO_P1 bytes; only then send
    ``reply`` (so nothing but the device's own CREDIT_UPDATEs can have
    given the guest more credit) and half-close; read to end-of-file.
    Returns what the guest sent."""
    listener.settimeout(SOCKET_TIMEOUT)
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(SOCKET_TIMEOUT)
        live.wait_for(f"virtio: vsock credit wait port={port} ", timeout=TIMEOUT)
        received = bytearray()
        while len(received) < TO_P1 and (chunk := conn.recv(TO_P1 - len(received))):
            received += chunk
        conn.sendall(reply)
        conn.shutdown(socket.SHUT_WR)
        received += read_to_eof(conn)
    return bytes(received)


# --- the guest's lines ----------------------------------------------------------------


def words(text: str, prefix: str) -> dict[str, str]:
    """``key=value`` words of the line starting with ``prefix`` (exactly one)."""
    found = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(found) == 1, f"{len(found)} lines start with {prefix!r} in:\n{text}"
    return dict(w.split("=", 1) for w in found[0][len(prefix):].split() if "=" in w)


def device_stats(stderr: str) -> dict[str, int]:
    """The device's counters, which kvmlite logs at debug level when the VM stops."""
    match = re.search(r"^kvmlite: debug: virtio-vsock: (\{.*\})$", stderr, re.MULTILINE)
    assert match, f"no virtio-vsock counters in kvmlite's log:\n{stderr}"
    return ast.literal_eval(match.group(1))


def expected_location(transport: str) -> str:
    return "at pci 00:01.0" if transport == "pci" else "at mmio 0xd0000000 pin=16"


# --- the test -----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    cid: int
    seed: int
    p1: int                 # the guest connects; the test listens on <socket>_p1
    p2: int                 # the guest listens; the test CONNECTs
    p3: int                 # nothing listens: RST
    to_p2: bytes
    from_p1: bytes

    @classmethod
    def random(cls) -> "Plan":
        rng = random.Random()
        p1, p2, p3 = rng.sample(range(1024, 1 << 31), 3)
        return cls(rng.randint(3, 0xFFFF_FFFE), rng.getrandbits(63), p1, p2, p3,
                   os.urandom(TO_P2), os.urandom(FROM_P1))

    def params(self, transport: str) -> str:
        return (f"transport={transport} mode=vsock seed={self.seed} port={self.p1} bytes={TO_P1} "
                f"closed_port={self.p3} listen={self.p2} listen_bytes={FROM_P2} buf_alloc={GUEST_BUF_ALLOC} "
                f"timeout={int(TIMEOUT)} vsock_timeout={VSOCK_TIMEOUT}")


@pytest.fixture
def vsock_dir(kvm: str) -> Iterator[Path]:
    """A short directory for the VM's socket (a Unix address holds 108 bytes)."""
    where = Path(tempfile.mkdtemp(prefix="kvvs-", dir="/tmp"))
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_vsock_streams_both_ways_past_credit_windows_rst_and_closes(vsock_dir: Path, transport: str,
                                                                     guest) -> None:
    plan = Plan.random()
    path = str(vsock_dir / "v.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{path}_{plan.p1}")
    listener.listen(1)
    live = LiveKvmlite("run", "-k", str(guest("virtio")), "--loglevel", "debug",
                       "--vsock", f"{plan.cid},socket={path},trans={transport}", "-p", plan.params(transport))
    try:
        live.wait_for(f"virtio: vsock listening port={plan.p2}", timeout=TIMEOUT)
        into_guest = Background(lambda: connect_to_guest(path, plan.p2, plan.to_p2))
        try:
            served = serve_guest(listener, plan.from_p1, live, plan.p1)
            connected = into_guest.result()
        except OSError as exc:          # a socket timeout, a reset: say what the guest said
            live.kill()
            pytest.fail(f"host side: {exc!r}\n{live.finish(10)}")
        run = live.finish(TIMEOUT)
    finally:
        live.kill()
        listener.close()
    assert isinstance(connected, HostConnect)

    check_guest(run, transport, plan)
    check_guest_to_host(run, plan, served)
    check_host_to_guest(run, plan, connected)
    check_device(run)
    assert not os.path.exists(path), "the VM left its vsock socket behind"


def check_guest(run: Run, transport: str, plan: Plan) -> None:
    assert run.status == GUEST_OK, run
    assert f"virtio: found vsock type=19 {expected_location(transport)}" in run.stdout, run
    up = words(run.stdout, "virtio: vsock up ")
    assert int(up["cid"]) == plan.cid, run
    assert int(up["buf_alloc"]) == GUEST_BUF_ALLOC, run
    assert f"virtio: vsock refused port={plan.p3} " in run.stdout, run
    refused = words(run.stdout, f"virtio: vsock stream port={plan.p3} ")
    assert refused["closed"] == "refused" and refused["sent"] == refused["received"] == "0", run
    assert "virtio: vsock unexpected=0" in run.stdout, run
    assert "virtio: vsock ok" in run.stdout and "virtio: done failures=0" in run.stdout, run
    assert "FAIL" not in run.stdout and "Traceback" not in run.stderr, run


def check_guest_to_host(run: Run, plan: Plan, served: bytes) -> None:
    """P1: the guest connected, sent its pattern, got the reply, closed."""
    p1 = words(run.stdout, f"virtio: vsock stream port={plan.p1} ")
    assert words(run.stdout, f"virtio: vsock connected port={plan.p1} ")["peer_buf_alloc"] \
        == str(DEVICE_BUF_ALLOC), run
    # what the guest sent is what the host read before end-of-file (the guest's close)
    assert len(served) == int(p1["sent"]) == TO_P1, run
    assert int(p1["sent_sum"], 16) == checksum(served), run
    assert served == pattern(plan.seed, TO_P1), "the host read other bytes than the guest's pattern"
    # the host's reply, all of it, then its half-close seen as SHUTDOWN SEND
    assert int(p1["received"]) == FROM_P1 and int(p1["received_sum"], 16) == checksum(plan.from_p1), run
    assert p1["shutdown"] == "2" and p1["closed"] == "rst", run
    # the guest ran out of the device's credit while the host did not read, and went on
    assert int(p1["credit_waits"]) >= 1, run
    assert_guest_credit_honoured(run, p1)


def check_host_to_guest(run: Run, plan: Plan, connected: HostConnect) -> None:
    """P2: the host connected through CONNECT/OK; data both ways; the guest
    half-closed, the host closed."""
    assert connected.ok_line.startswith(b"OK "), f"CONNECT {plan.p2} answered {connected.ok_line!r}\n{run}"
    host_port = int(connected.ok_line[3:])
    assert host_port >= FIRST_HOST_PORT, connected.ok_line
    accepted = words(run.stdout, f"virtio: vsock accepted port={plan.p2} ")
    assert int(accepted["peer"]) == host_port, run
    assert accepted["peer_buf_alloc"] == str(DEVICE_BUF_ALLOC), run
    p2 = words(run.stdout, f"virtio: vsock stream port={plan.p2} ")
    assert len(connected.received) == int(p2["sent"]) == FROM_P2, run
    assert int(p2["sent_sum"], 16) == checksum(connected.received), run
    assert connected.received == pattern(plan.seed, TO_P1 + FROM_P2)[TO_P1:], "the host read other bytes"
    assert int(p2["received"]) == TO_P2 and int(p2["received_sum"], 16) == checksum(plan.to_p2), run
    assert p2["shutdown"] == "3" and p2["closed"] == "shutdown", run
    assert_guest_credit_honoured(run, p2)


def assert_guest_credit_honoured(run: Run, stream: dict[str, str]) -> None:
    """The device sent within the guest's credit (vsock.c checks every
    packet: a FAIL line otherwise) and ran out of it: it asked for more
    (CREDIT_REQUEST) and waited, as 1 MiB through a 64 KiB window makes it."""
    assert 0 < int(stream["peak"]) <= GUEST_BUF_ALLOC, run
    assert int(stream["credit_requests"]) >= 1, run


def check_device(run: Run) -> None:
    stats = device_stats(run.stderr)
    assert stats["connections"] == 2 and stats["open"] == 0, stats
    assert stats["tx_bytes"] == TO_P1 + FROM_P2 and stats["rx_bytes"] == FROM_P1 + TO_P2, stats
    assert stats["rst_sent"] == 2, stats                # P3's refusal and the end of P1's close
    for name in ("dropped", "errors", "host_errors", "queue_errors"):
        assert stats[name] == 0, stats
