"""The 9P2000.L wire format: every message round-trips; malformed bytes
raise MessageError with the errno the server answers."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmlite.devices.virtio.p9 import codec
from kvmlite.devices.virtio.p9.codec import MESSAGES, Dirent, MessageError, Qid
from kvmlite.devices.virtio.p9.constants import NOTAG, MsgType

Q = Qid(0x80, 7, 0x1122334455667788)

SAMPLES: list[codec.Message] = [
    codec.Rlerror(errno.ENOENT),
    codec.Tversion(8192, b"9P2000.L"), codec.Rversion(8192, b"9P2000.L"),
    codec.Tauth(5, b"user", b"/", 1000), codec.Rauth(Q),
    codec.Tattach(1, 0xFFFFFFFF, b"user", b"", 1000), codec.Rattach(Q),
    codec.Tflush(3), codec.Rflush(),
    codec.Twalk(1, 2, (b"a", b"bb", b"")), codec.Rwalk((Q, Qid(0, 1, 2))),
    codec.Tread(1, 1 << 40, 4096), codec.Rread(b"data\0more"),
    codec.Twrite(1, 12, b"payload"), codec.Rwrite(7),
    codec.Tclunk(9), codec.Rclunk(),
    codec.Tremove(9), codec.Rremove(),
    codec.Tstatfs(1), codec.Rstatfs(0x01021997, 4096, 1, 2, 3, 4, 5, 6, 255),
    codec.Tlopen(1, 0o2), codec.Rlopen(Q, 0),
    codec.Tlcreate(1, b"new", 0o102, 0o644, 100), codec.Rlcreate(Q, 8192),
    codec.Tsymlink(1, b"link", b"/target", 100), codec.Rsymlink(Q),
    codec.Tmknod(1, b"node", 0o100644, 1, 2, 100), codec.Rmknod(Q),
    codec.Trename(1, 2, b"renamed"), codec.Rrename(),
    codec.Treadlink(1), codec.Rreadlink(b"../x"),
    codec.Tgetattr(1, 0x3FFF), codec.Rgetattr(0x7FF, Q, 0o100644, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                               14, 15, 16, 17),
    codec.Tsetattr(1, 0x1FF, 0o755, 1, 2, 3, 4, 5, 6, 7), codec.Rsetattr(),
    codec.Txattrwalk(1, 2, b"user.x"), codec.Rxattrwalk(12),
    codec.Txattrcreate(1, b"user.x", 12, 1), codec.Rxattrcreate(),
    codec.Treaddir(1, 0, 8192), codec.Rreaddir(Dirent(Q, 5, 4, b"dir").encode()),
    codec.Tfsync(1, 1), codec.Rfsync(),
    codec.Tlock(1, 1, 1, 0, 100, 42, b"guest"), codec.Rlock(0),
    codec.Tgetlock(1, 0, 0, 0, 42, b"guest"), codec.Rgetlock(2, 0, 0, 42, b"guest"),
    codec.Tlink(1, 2, b"hard"), codec.Rlink(),
    codec.Tmkdir(1, b"dir", 0o755, 100), codec.Rmkdir(Q),
    codec.Trenameat(1, b"a", 2, b"b"), codec.Rrenameat(),
    codec.Tunlinkat(1, b"a", 0x200), codec.Runlinkat(),
]


def test_codec_samples_cover_every_message() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGES.values())
    assert set(MESSAGES) == set(MsgType) - {MsgType.TLERROR}


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_codec_message_round_trips(msg: codec.Message) -> None:
    raw = codec.encode(0x1234, msg)

    assert struct.unpack_from("<IBH", raw) == (len(raw), msg.TYPE, 0x1234)
    assert codec.decode(raw) == (0x1234, msg)


def test_codec_twalk_layout_matches_the_protocol() -> None:
    raw = codec.encode(1, codec.Twalk(5, 6, (b"ab",)))

    assert raw == struct.pack("<IBHIIHH", 21, 110, 1, 5, 6, 1, 2) + b"ab"


def test_codec_rgetattr_is_160_bytes() -> None:
    assert len(codec.encode(0, SAMPLES[[type(m) for m in SAMPLES].index(codec.Rgetattr)])) == 160


def _field_values(kind: str) -> st.SearchStrategy[object]:
    qids = st.builds(Qid, st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
    return {
        "b": st.integers(0, 255), "w": st.integers(0, 2**16 - 1), "d": st.integers(0, 2**32 - 1),
        "q": st.integers(0, 2**64 - 1), "s": st.binary(max_size=300), "Q": qids, "D": st.binary(max_size=600),
        "S": st.lists(st.binary(max_size=20), max_size=20).map(tuple),
        "R": st.lists(qids, max_size=20).map(tuple),
    }[kind]


def _messages() -> st.SearchStrategy[codec.Message]:
    return st.one_of(*(st.builds(cls, **{name: _field_values(kind) for name, kind in cls.FIELDS})
                       for cls in MESSAGES.values()))


@given(_messages(), st.integers(0, NOTAG))
def test_codec_any_message_round_trips(msg: codec.Message, tag: int) -> None:
    assert codec.decode(codec.encode(tag, msg)) == (tag, msg)


@given(_messages(), st.data())
def test_codec_truncated_message_is_refused(msg: codec.Message, data: st.DataObject) -> None:
    raw = codec.encode(7, msg)
    cut = data.draw(st.integers(7, len(raw) - 1)) if len(raw) > 7 else None
    if cut is None:
        return
    short = struct.pack("<I", cut) + raw[4:cut]       # a consistent size field, fields cut short

    with pytest.raises(MessageError) as info:
        codec.decode(short)
    assert info.value.errno == errno.EPROTO and info.value.tag == 7


def test_codec_short_header_has_no_tag() -> None:
    with pytest.raises(MessageError) as info:
        codec.decode(b"\x07\x00\x00")
    assert (info.value.errno, info.value.tag) == (errno.EPROTO, NOTAG)


@pytest.mark.parametrize("size", [0, 6, 8, 1 << 31])
def test_codec_size_field_disagreeing_with_buffer_is_refused(size: int) -> None:
    raw = bytearray(codec.encode(9, codec.Tclunk(1)))
    struct.pack_into("<I", raw, 0, size)

    with pytest.raises(MessageError) as info:
        codec.decode(bytes(raw))
    assert (info.value.errno, info.value.tag) == (errno.EPROTO, 9)


def test_codec_trailing_bytes_are_refused() -> None:
    raw = codec.encode(9, codec.Tclunk(1)) + b"\0"
    raw = struct.pack("<I", len(raw)) + raw[4:]

    with pytest.raises(MessageError, match="left over"):
        codec.decode(raw)


def test_codec_string_overrunning_message_is_refused() -> None:
    raw = struct.pack("<IBH", 7 + 4 + 2 + 3, 104, 2) + struct.pack("<I", 1) + struct.pack("<H", 500) + b"abc"

    with pytest.raises(MessageError, match="overruns"):
        codec.decode(raw)


def test_codec_name_count_beyond_message_is_refused_before_reading() -> None:
    body = struct.pack("<IIH", 1, 2, 60000)
    raw = struct.pack("<IBH", 7 + len(body), 110, 3) + body

    with pytest.raises(MessageError, match="cannot fit"):
        codec.decode(raw)


def test_codec_data_count_beyond_message_is_refused() -> None:
    body = struct.pack("<IQI", 1, 0, 0xFFFFFFFF) + b"xy"
    raw = struct.pack("<IBH", 7 + len(body), 118, 4) + body

    with pytest.raises(MessageError, match="overruns"):
        codec.decode(raw)


@pytest.mark.parametrize("msg_type", [0, 6, 112, 124, 126, 255])
def test_codec_unknown_type_is_eopnotsupp(msg_type: int) -> None:
    raw = struct.pack("<IBH", 11, msg_type, 5) + b"\0" * 4

    with pytest.raises(MessageError) as info:
        codec.decode(raw)
    assert (info.value.errno, info.value.tag) == (errno.EOPNOTSUPP, 5)


def test_codec_dirents_round_trip() -> None:
    entries = [Dirent(Q, 1, 4, b"."), Dirent(Qid(0, 0, 9), 2**63 - 1, 8, b"file\xff")]

    data = b"".join(e.encode() for e in entries)

    assert codec.decode_dirents(data) == entries
    assert len(data) == codec.dirent_size(1) + codec.dirent_size(5)


def test_codec_messages_are_frozen() -> None:
    with pytest.raises(AttributeError):
        codec.Tclunk(1).fid = 2   # type: ignore[misc]
    with pytest.raises(AttributeError):
        codec.Tclunk(1).other = 2   # type: ignore[attr-defined]


def test_codec_messages_equal_only_their_own_type_and_are_true() -> None:
    # Rlopen and Rlcreate have the same fields: a reply of the wrong type must not compare equal
    assert codec.Rlopen(Q, 4096) == codec.Rlopen(Q, 4096) != codec.Rlcreate(Q, 4096)
    assert codec.Rlopen(Q, 4096) != (Q, 4096) and hash(codec.Rlopen(Q, 4096)) == hash(codec.Rlopen(Q, 4096))
    assert bool(codec.Rclunk()) and codec.Rclunk() == codec.Rclunk() != codec.Rremove()
    assert repr(codec.Tclunk(7)) == "Tclunk(fid=7)" and isinstance(codec.Tclunk(7), codec.Message)
