"""Hostile bytes: random requests and mutations of valid ones never make
``handle`` raise, and always get one well-formed reply with the request's
tag (Rlerror, or the R-message of the request's type).  Nothing outside
the share changes, and no descriptor is left behind (conftest)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlite.devices.virtio.p9 import codec
from kvmlite.devices.virtio.p9.constants import DOTL_RDWR, NOTAG
from kvmlite.devices.virtio.p9.server import P9Server
from tests.unit.devices.virtio.p9.client import P9Client
from tests.unit.devices.virtio.p9.conftest import make_server
from tests.unit.devices.virtio.p9.test_server_escape import snapshot

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Sessions:
    """A fresh share and server for each example, with fids to hit: 0 the
    root, 1 a file open read-write, 2 the root open for listing, 3 a
    directory, 4 a symlink out to a host directory beside the shares."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self.host = tmp_path / "host"
        self.host.mkdir()
        (self.host / "secret").write_bytes(b"secret")
        self._count = 0
        self._server: P9Server | None = None

    def fresh(self) -> P9Server:
        self.close()
        self._count += 1
        share = self._tmp / f"share{self._count}"
        (share / "d").mkdir(parents=True)
        (share / "d" / "f").write_bytes(b"data" * 100)
        (share / "out").symlink_to(self.host)
        self._server = server = make_server(share, max_msize=64 * 1024)
        c = P9Client(server)
        c.version(64 * 1024)
        c.attach(0)
        c.open_path(1, b"d", b"f", flags=DOTL_RDWR)
        c.open_path(2)
        c.walk(0, 3, b"d")
        c.walk(0, 4, b"out")
        return server

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[Sessions]:
    s = Sessions(tmp_path)
    before = snapshot(s.host)
    yield s
    s.close()
    assert snapshot(s.host) == before


VALID = [
    codec.Tversion(65536, b"9P2000.L"), codec.Tattach(10, 0xFFFFFFFF, b"u", b"", 0),
    codec.Twalk(0, 11, (b"d", b"f")), codec.Twalk(3, 12, (b"..", b"out", b"secret")),
    codec.Tlopen(3, 0), codec.Tlcreate(3, b"new", DOTL_RDWR, 0o644, 0), codec.Tread(1, 0, 4096),
    codec.Twrite(1, 4, b"hello"), codec.Treaddir(2, 0, 4096), codec.Tgetattr(1, 0x3FFF),
    codec.Tsetattr(1, 0x1FF, 0o644, 0, 0, 10, 1, 2, 3, 4), codec.Tstatfs(0), codec.Tfsync(1, 0),
    codec.Tmkdir(3, b"dir", 0o755, 0), codec.Tmknod(3, b"node", 0o100644, 0, 0, 0),
    codec.Tsymlink(3, b"sym", b"/etc", 0), codec.Tlink(3, 1, b"hard"), codec.Treadlink(4),
    codec.Trename(1, 3, b"g"), codec.Trenameat(3, b"f", 0, b"top"), codec.Tunlinkat(3, b"f", 0),
    codec.Tremove(4), codec.Tlock(1, 1, 0, 0, 10, 1, b"c"), codec.Tgetlock(1, 0, 0, 0, 1, b"c"),
    codec.Txattrwalk(1, 13, b""), codec.Txattrcreate(3, b"user.x", 3, 0), codec.Tflush(1),
    codec.Tclunk(1), codec.Tauth(1, b"", b"", 0),
]


def check_reply(request: bytes, reply: bytes) -> None:
    tag, msg = codec.decode(reply)                       # well-formed, or this raises
    if len(request) < 7:
        assert tag == NOTAG and isinstance(msg, codec.Rlerror)
        return
    assert tag == struct.unpack_from("<H", request, 5)[0]
    if not isinstance(msg, codec.Rlerror):
        assert msg.TYPE == request[4] + 1


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(sessions: Sessions, raw: bytes) -> None:
    check_reply(raw, sessions.fresh().handle(raw))


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([m.TYPE for m in VALID]), st.integers(0, NOTAG))
def test_fuzz_random_body_with_consistent_header(sessions: Sessions, body: bytes, msg_type: int,
                                                tag: int) -> None:
    raw = struct.pack("<IBH", 7 + len(body), msg_type, tag) + body

    check_reply(raw, sessions.fresh().handle(raw))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(codec.encode(draw(st.integers(0, NOTAG)), draw(st.sampled_from(VALID))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "extend", "resize", "fix-size"]))
        if kind == "flip" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif kind == "cut":
            del raw[draw(st.integers(0, len(raw))):]
        elif kind == "extend":
            raw += draw(st.binary(min_size=1, max_size=40))
        elif kind == "resize" and len(raw) >= 4:
            struct.pack_into("<I", raw, 0, draw(st.integers(0, 2**32 - 1)))
        elif kind == "fix-size" and len(raw) >= 4:
            struct.pack_into("<I", raw, 0, len(raw))
    if len(raw) >= 4 and draw(st.booleans()):      # most mutations then pass the framing check
        struct.pack_into("<I", raw, 0, len(raw))
    return bytes(raw)


@FUZZ
@given(mutated())
def test_fuzz_mutated_valid_messages(sessions: Sessions, raw: bytes) -> None:
    check_reply(raw, sessions.fresh().handle(raw))


@FUZZ
@given(st.lists(st.sampled_from(VALID), min_size=1, max_size=12), st.data())
def test_fuzz_valid_messages_in_any_order(sessions: Sessions, msgs: list[codec.Message],
                                          data: st.DataObject) -> None:
    server = sessions.fresh()
    for msg in msgs:
        raw = codec.encode(data.draw(st.integers(0, NOTAG - 1)), msg)
        check_reply(raw, server.handle(raw))
