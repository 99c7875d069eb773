"""Protocol v1: request and reply lines, framing, and the parser under fuzzing."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlite.control import protocol as p


def test_request_roundtrip_keeps_every_member() -> None:
    request = p.Request("pause", {"timeout": 2.5}, 7)
    line = p.encode_request(request)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert p.decode_request(line) == request


def test_decode_request_without_args_or_id_defaults() -> None:
    assert p.decode_request(b'{"v":1,"op":"info"}') == p.Request("info", {}, None)


def test_decode_request_ignores_unknown_members() -> None:
    assert p.decode_request(b'{"v":1,"op":"info","future":true}').op == "info"


@pytest.mark.parametrize("line, code", [
    (b"", p.PARSE_ERROR),
    (b"not json", p.PARSE_ERROR),
    (b'{"v":1,"op":"info"', p.PARSE_ERROR),
    (b"\xff\xfe{}", p.PARSE_ERROR),
    (b'{"v":1,"op":"info","args":{"t":NaN}}', p.PARSE_ERROR),
    (b"[" * 50000, p.PARSE_ERROR),
    (b"[1,2]", p.BAD_REQUEST),
    (b'"info"', p.BAD_REQUEST),
    (b'{"op":"info"}', p.BAD_REQUEST),
    (b'{"v":"1","op":"info"}', p.BAD_REQUEST),
    (b'{"v":true,"op":"info"}', p.BAD_REQUEST),
    (b'{"v":2,"op":"info"}', p.UNSUPPORTED_VERSION),
    (b'{"v":1}', p.BAD_REQUEST),
    (b'{"v":1,"op":""}', p.BAD_REQUEST),
    (b'{"v":1,"op":7}', p.BAD_REQUEST),
    (b'{"v":1,"op":"' + b"x" * 100 + b'"}', p.BAD_REQUEST),
    (b'{"v":1,"op":"info","args":[]}', p.BAD_REQUEST),
    (b'{"v":1,"op":"info","id":{}}', p.BAD_REQUEST),
    (b'{"v":1,"op":"info","id":1.5}', p.BAD_REQUEST),
    (b'{"v":1,"op":"info","id":"' + b"i" * 65 + b'"}', p.BAD_REQUEST),
])
def test_decode_request_malformed_raises_protocol_error(line: bytes, code: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_request(line)
    assert info.value.code == code
    assert info.value.message and "\n" not in info.value.message


def test_decode_request_bad_version_keeps_request_id_for_the_reply() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_request(b'{"v":9,"id":"abc","op":"info"}')
    assert info.value.request_id == "abc"


def test_encode_ok_and_error_decode_back() -> None:
    ok = p.decode_reply(p.encode_ok(3, {"state": "paused"}))
    err = p.decode_reply(p.encode_error("x", p.FAILED, "vCPU 0 did not pause"))
    assert ok == p.Reply(3, True, result={"state": "paused"})
    assert err == p.Reply("x", False, error_code=p.FAILED, error_message="vCPU 0 did not pause")


@pytest.mark.parametrize("line", [b'{"v":1,"ok":true}', b'{"v":1,"ok":false,"error":"x"}',
                                  b'{"ok":true,"result":{}}', b"[]"])
def test_decode_reply_malformed_raises(line: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_reply(line)


def test_line_buffer_splits_lines_across_chunks() -> None:
    buf = p.LineBuffer(limit=64)
    buf.feed(b'{"a":1}\n{"b"')
    assert buf.next_line() == b'{"a":1}'
    assert buf.next_line() is None
    buf.feed(b":2}\n")
    assert buf.next_line() == b'{"b":2}'
    assert buf.pending == 0


def test_line_buffer_line_at_limit_passes_one_over_fails() -> None:
    buf = p.LineBuffer(limit=8)
    buf.feed(b"1234567\n")
    assert buf.next_line() == b"1234567"
    buf.feed(b"12345678\n")
    with pytest.raises(p.LineTooLong) as info:
        buf.next_line()
    assert info.value.code == p.TOO_LARGE


def test_line_buffer_endless_line_fails_before_newline_arrives() -> None:
    buf = p.LineBuffer(limit=1024)
    buf.feed(b"x" * 1023)
    assert buf.next_line() is None
    buf.feed(b"x")
    with pytest.raises(p.LineTooLong):
        buf.next_line()


# --- fuzzing ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)
# Values that are sometimes right for a member, so valid requests are generated too.
member_values = st.sampled_from([1, 2, "pause", "info", {}, None]) | json_values


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_decode_request_fuzz_bytes_only_protocol_errors(data: bytes) -> None:
    try:
        request = p.decode_request(data)
    except p.ProtocolError as exc:
        assert exc.code in {p.PARSE_ERROR, p.BAD_REQUEST, p.UNSUPPORTED_VERSION}
    else:
        assert isinstance(request.op, str) and isinstance(request.args, dict)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["v", "id", "op", "args", "x"]), member_values))
def test_decode_request_fuzz_objects_valid_or_protocol_error(obj: dict) -> None:
    line = json.dumps(obj).encode()
    try:
        request = p.decode_request(line)
    except p.ProtocolError:
        return
    assert obj["v"] == 1 and request.op == obj["op"]
    # Whatever was accepted can be answered: the echoed id encodes.
    assert p.decode_reply(p.encode_ok(request.id, {})).id == request.id


@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=10),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20))
def test_line_buffer_fuzz_any_chunking_same_lines(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    buf, got, pos, i = p.LineBuffer(limit=64), [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        buf.feed(stream[pos:pos + step])
        pos, i = pos + step, i + 1
        while (line := buf.next_line()) is not None:
            got.append(line)
    assert got == lines and buf.pending == 0


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=1, max_size=32), st.dictionaries(st.text(max_size=10), json_values, max_size=5),
       st.none() | st.integers(min_value=-2**62, max_value=2**62) | st.text(max_size=64))
def test_request_fuzz_roundtrip(op: str, args: dict, request_id) -> None:
    request = p.Request(op, args, request_id)
    assert p.decode_request(p.encode_request(request)) == request
