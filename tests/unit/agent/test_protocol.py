"""The wire codec on bytes alone: frames, messages, fields, errors, limits."""

from __future__ import annotations

import errno
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmlite.agent import errors as e
from kvmlite.agent import protocol as p
from kvmlite.agent.protocol import FrameType

frame_types = st.sampled_from([t for t in FrameType if t is not FrameType.KEEPALIVE])
payloads = st.binary(max_size=4096)


def decode_all(data: bytes, pieces: list[int]) -> list[p.Frame]:
    """Feed ``data`` in pieces of the given sizes, collecting every frame."""
    decoder = p.FrameDecoder()
    frames: list[p.Frame] = []
    offset = 0
    for size in pieces + [len(data)]:
        decoder.feed(data[offset:offset + size])
        offset += size
        while (frame := decoder.next()) is not None:
            frames.append(frame)
    assert decoder.buffered == 0
    return frames


@given(st.lists(st.tuples(frame_types, payloads), max_size=8),
       st.lists(st.integers(min_value=0, max_value=700), max_size=20))
@settings(max_examples=200, deadline=None)
def test_frames_round_trip_whatever_the_split(frames: list[tuple[FrameType, bytes]],
                                              pieces: list[int]) -> None:
    data = b"".join(p.encode_frame(t, payload) for t, payload in frames)
    decoded = decode_all(data, pieces)
    assert [(f.type, f.payload) for f in decoded] == frames


def test_frame_header_is_big_endian_length_then_type() -> None:
    assert p.encode_frame(FrameType.STDOUT, b"abc") == b"\x00\x00\x00\x03\x04abc"
    assert p.encode_frame(FrameType.KEEPALIVE) == b"\x00\x00\x00\x00\x06"


@given(st.dictionaries(st.text(max_size=10), st.one_of(st.integers(), st.text(), st.booleans(),
                                                        st.none(), st.floats(allow_nan=False)),
                       max_size=6),
       st.text(min_size=1, max_size=20))
def test_messages_round_trip(body: dict, msg_type: str) -> None:
    msg = {**body, "type": msg_type}
    frame = decode_all(p.encode_message(msg), [])[0]
    assert frame.type is FrameType.MSG
    assert p.decode_message(frame.payload) == msg


def test_undecodable_file_names_survive_json() -> None:
    name = b"caf\xe9-\xff".decode("utf-8", "surrogateescape")
    msg = p.decode_message(p.dump_json({"type": "stat", "path": "/tmp/" + name}))
    assert msg["path"].encode("utf-8", "surrogateescape") == b"/tmp/caf\xe9-\xff"


def test_unknown_frame_type_is_refused_from_its_header() -> None:
    decoder = p.FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x10\x63")         # type 99, payload not even sent
    with pytest.raises(e.ProtocolError) as info:
        decoder.next()
    assert info.value.name == p.BAD_FRAME


def test_over_long_frame_is_refused_before_its_payload() -> None:
    decoder = p.FrameDecoder()
    decoder.feed(p.HEADER.pack(p.MAX_PAYLOAD + 1, FrameType.DATA))
    with pytest.raises(e.ProtocolError) as info:
        decoder.next()
    assert info.value.name == p.TOO_LARGE


def test_longest_frame_is_accepted() -> None:
    data = p.encode_frame(FrameType.DATA, bytes(p.MAX_PAYLOAD))
    assert len(decode_all(data, [5, 1000])[0].payload) == p.MAX_PAYLOAD
    with pytest.raises(ValueError):
        p.encode_frame(FrameType.DATA, bytes(p.MAX_PAYLOAD + 1))


def test_keepalive_with_payload_is_refused() -> None:
    decoder = p.FrameDecoder()
    decoder.feed(p.HEADER.pack(1, FrameType.KEEPALIVE) + b"x")
    with pytest.raises(e.ProtocolError, match="KEEPALIVE"):
        decoder.next()


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"not json", b"[1, 2]", b'{"a": 1}',
                                     b'{"type": 3}', b""])
def test_bad_messages_are_refused(payload: bytes) -> None:
    with pytest.raises(e.ProtocolError) as info:
        p.decode_message(payload)
    assert info.value.name == p.BAD_MESSAGE


def test_field_checks_type_default_and_bool_is_not_int() -> None:
    msg = {"type": "run", "n": 3, "flag": True, "s": "x", "nothing": None}
    assert p.field(msg, "n", int) == 3
    assert p.field(msg, "nothing", int, 7) == 7
    assert p.field(msg, "missing", str, "d") == "d"
    with pytest.raises(e.ProtocolError, match="'flag' must be int"):
        p.field(msg, "flag", int)
    with pytest.raises(e.ProtocolError, match="'missing' is required"):
        p.field(msg, "missing", str)
    with pytest.raises(e.ProtocolError, match="'s' must be int/float"):
        p.field(msg, "s", (int, float))


def test_path_field_limits() -> None:
    assert p.path_field({"type": "stat", "path": "a" * p.MAX_PATH}) == "a" * p.MAX_PATH
    for bad in ["", "a\0b", "a" * (p.MAX_PATH + 1), "é" * (p.MAX_PATH // 2 + 1), "\ud800"]:
        with pytest.raises(e.ProtocolError) as info:
            p.path_field({"type": "stat", "path": bad})
        assert info.value.name == p.BAD_ARGS


def test_keepalive_is_clamped() -> None:
    assert p.clamp_keepalive(None) == p.DEFAULT_KEEPALIVE
    assert p.clamp_keepalive(0) == p.MIN_KEEPALIVE
    assert p.clamp_keepalive(1e9) == p.MAX_KEEPALIVE
    assert p.clamp_keepalive(2.5) == 2.5


def test_oserror_becomes_error_message_with_errno_name_and_path() -> None:
    msg = p.error_from_oserror(FileNotFoundError(errno.ENOENT, "No such file", "/x"))
    assert msg == {"type": "error", "name": "ENOENT", "errno": errno.ENOENT,
                   "message": "No such file", "path": "/x"}


@pytest.mark.parametrize("number, cls, builtin", [
    (errno.ENOENT, e.SandboxFileNotFoundError, FileNotFoundError),
    (errno.EEXIST, e.SandboxFileExistsError, FileExistsError),
    (errno.EISDIR, e.SandboxIsADirectoryError, IsADirectoryError),
    (errno.ENOTDIR, e.SandboxNotADirectoryError, NotADirectoryError),
    (errno.EACCES, e.SandboxPermissionError, PermissionError),
    (errno.ESRCH, e.ProcessNotFoundError, ProcessLookupError),
    (errno.ENOSPC, e.AgentOSError, OSError),
])
def test_error_messages_map_to_typed_exceptions(number: int, cls: type, builtin: type) -> None:
    msg = p.error_from_oserror(OSError(number, "text", "/p"))
    exc = e.error_from_wire(msg)
    assert type(exc) is cls and isinstance(exc, builtin) and isinstance(exc, e.SandboxError)
    assert exc.errno == number and exc.path == "/p" and exc.filename == "/p"
    assert str(exc) == f"[Errno {number}] text: '/p'"


def test_protocol_error_names_map_to_agent_or_version_errors() -> None:
    exc = e.error_from_wire(p.error_message(p.BAD_ARGS, "run: 'cmd' is required"))
    assert type(exc) is e.AgentError and exc.name == p.BAD_ARGS and exc.errno is None
    exc = e.error_from_wire(p.error_message(p.VERSION_MISMATCH, "speaks 1"))
    assert isinstance(exc, e.VersionMismatchError) and "speaks 1" in str(exc)


def test_batches_stay_under_budget_and_keep_order() -> None:
    items = [json.dumps({"i": i, "pad": "x" * (i % 50)}).encode() for i in range(500)]
    runs = p.batches(items, budget=2000)
    assert [item for run in runs for item in run] == items
    assert all(sum(len(i) + 1 for i in run) <= 2000 for run in runs) and len(runs) > 1
    frame = decode_all(p.encode_batch("entries", "entries", runs[0]), [])[0]
    assert p.decode_message(frame.payload)["entries"] == [json.loads(i) for i in runs[0]]


def test_connection_error_is_a_connection_error() -> None:
    assert issubclass(e.AgentConnectionError, ConnectionError)
    assert issubclass(e.CommandTimeoutError, (e.CommandExitError, TimeoutError))
