"""The control protocol, version 1: JSON lines over a Unix stream socket.

Documented for users in docs/control.md; keep the two in step.

* A request is one JSON object on one line (UTF-8, ending in ``\\n``), at
  most :data:`MAX_REQUEST_BYTES` bytes including the newline::

      {"v": 1, "id": 7, "op": "pause", "args": {"timeout": 5}}

  ``v`` (required) is the protocol version; ``id`` (optional: an integer,
  a string of at most :data:`MAX_ID_CHARS` characters, or null) is echoed in
  the reply; ``op`` (required) names the operation; ``args`` (optional, an
  object) holds its arguments.  Other members are ignored.
* Every request gets exactly one reply line, in request order::

      {"v": 1, "id": 7, "ok": true, "result": {...}}
      {"v": 1, "id": 7, "ok": false, "error": {"code": "bad-args", "message": "..."}}

* A request longer than the limit gets a ``too-large`` error and the server
  closes the connection (the rest of the line cannot be told apart from the
  next request).  Any other bad request gets an error and the connection
  stays usable.

This module is pure: bytes in, values out, no sockets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024
MAX_REPLY_BYTES = 16 * 1024 * 1024     # what a client accepts
MAX_ID_CHARS = 64
MAX_OP_CHARS = 32

# Error codes (docs/control.md, "Errors").
PARSE_ERROR = "parse-error"            # not UTF-8, not JSON
BAD_REQUEST = "bad-request"            # JSON, but not a request object
UNSUPPORTED_VERSION = "unsupported-version"
UNKNOWN_OP = "unknown-op"
BAD_ARGS = "bad-args"
TOO_LARGE = "too-large"                # the connection is closed after it
BUSY = "busy"                          # too many clients; closed after it
FAILED = "failed"                      # the operation itself failed
INTERNAL = "internal"                  # a bug in kvmlite; the VM goes on

RequestId = int | str | None


class ProtocolError(Exception):
    """A request or reply that breaks the protocol; ``code`` is an error code."""

    def __init__(self, code: str, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    id: RequestId = None
    v: int = VERSION


@dataclass(frozen=True)
class Reply:
    id: RequestId
    ok: bool
    result: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None


# --- requests ---------------------------------------------------------------------


def encode_request(request: Request) -> bytes:
    """One request line, newline included."""
    obj = {"v": request.v, "id": request.id, "op": request.op, "args": request.args}
    return _dump_line(obj)


def decode_request(line: bytes) -> Request:
    """Parse one request line (with or without its newline).

    Raises :class:`ProtocolError` for anything that is not a valid v1
    request; nothing else.
    """
    obj = _load_object(line)
    request_id = _request_id(obj)
    version = obj.get("v")
    if type(version) is not int:
        raise ProtocolError(BAD_REQUEST, 'member "v" (the protocol version, an integer) is missing', request_id)
    if version != VERSION:
        raise ProtocolError(UNSUPPORTED_VERSION, f"protocol version {version} is not supported "
                                                 f"(this kvmlite speaks version {VERSION})", request_id)
    op = obj.get("op")
    if not isinstance(op, str) or not op or len(op) > MAX_OP_CHARS:
        raise ProtocolError(BAD_REQUEST, 'member "op" must be a non-empty string', request_id)
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(BAD_REQUEST, 'member "args" must be an object', request_id)
    return Request(op, args, request_id)


def _request_id(obj: dict[str, Any]) -> RequestId:
    value = obj.get("id")
    if value is None or (type(value) is int and abs(value) < 2 ** 63):
        return value
    if isinstance(value, str) and len(value) <= MAX_ID_CHARS:
        return value
    raise ProtocolError(BAD_REQUEST, f'member "id" must be an integer, a string of at most '
                                     f'{MAX_ID_CHARS} characters, or null')


# --- replies ----------------------------------------------------------------------


def encode_ok(request_id: RequestId, result: dict[str, Any]) -> bytes:
    return _dump_line({"v": VERSION, "id": request_id, "ok": True, "result": result})


def encode_error(request_id: RequestId, code: str, message: str) -> bytes:
    return _dump_line({"v": VERSION, "id": request_id, "ok": False,
                       "error": {"code": code, "message": message}})


def decode_reply(line: bytes) -> Reply:
    """Parse one reply line; raises :class:`ProtocolError` if it is not one."""
    obj = _load_object(line)
    if obj.get("v") != VERSION or not isinstance(obj.get("ok"), bool):
        raise ProtocolError(BAD_REQUEST, "not a version 1 reply")
    request_id = obj.get("id")
    if obj["ok"]:
        result = obj.get("result")
        if not isinstance(result, dict):
            raise ProtocolError(BAD_REQUEST, 'reply without a "result" object')
        return Reply(request_id, True, result=result)
    error = obj.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        raise ProtocolError(BAD_REQUEST, 'error reply without an "error" object')
    return Reply(request_id, False, error_code=error["code"], error_message=str(error.get("message", "")))


# --- framing ----------------------------------------------------------------------


class LineTooLong(ProtocolError):
    def __init__(self, limit: int) -> None:
        super().__init__(TOO_LARGE, f"request longer than {limit} bytes")


class LineBuffer:
    """Splits a byte stream into lines of at most ``limit`` bytes each
    (newline included).  A longer line raises :class:`LineTooLong`; after
    that the buffer is unusable (the stream has lost its framing)."""

    def __init__(self, limit: int = MAX_REQUEST_BYTES) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._scanned = 0          # bytes of _buf already known to hold no newline

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_line(self) -> bytes | None:
        """The next complete line without its newline, or None for now."""
        end = self._buf.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buf)
            if len(self._buf) >= self.limit:
                raise LineTooLong(self.limit)
            return None
        if end + 1 > self.limit:
            raise LineTooLong(self.limit)
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        self._scanned = 0
        return line

    @property
    def pending(self) -> int:
        """Bytes received that are not yet a complete line."""
        return len(self._buf)


# --- helpers ----------------------------------------------------------------------


def _dump_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode() + b"\n"


def _load_object(line: bytes) -> dict[str, Any]:
    try:
        text = bytes(line).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(PARSE_ERROR, "request is not valid UTF-8") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(PARSE_ERROR, f"request is not valid JSON: {_short(exc)}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, f"a request must be a JSON object, not {type(obj).__name__}")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]
