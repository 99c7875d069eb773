"""The agent's wire protocol, version 1: frames, messages, limits.

Documented for users in docs/agent.md; keep the two in step.  This module
is pure (bytes in, values out, no sockets) and standard library only.

A stream is a sequence of frames, each a 5-byte header and a payload::

    +---------------------+-------------+------------------------+
    | length: u32, big-   | type: u8    | payload: ``length``    |
    | endian, payload only| (FrameType) | bytes                  |
    +---------------------+-------------+------------------------+

``MSG`` payloads are one UTF-8 JSON object whose ``type`` member names the
message; every other frame type carries raw bytes (file contents, process
input and output), never base64.  A payload is at most :data:`MAX_PAYLOAD`
bytes; a longer length, an unknown type, a ``KEEPALIVE`` with a payload or a
``MSG`` that is not a JSON object is a :class:`ProtocolError`.

One stream serves one operation: the client sends ``hello`` and its request
back to back, the agent answers ``hello`` and then the request's replies,
and the stream ends (docs/agent.md, "Streams").
"""

from __future__ import annotations

import enum
import errno as errno_codes
import json
import struct
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError

VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

HEADER = struct.Struct(">IB")          # payload length, frame type
MAX_PAYLOAD = 1 << 20                  # bytes in one frame's payload
MAX_PATH = 4096                        # bytes of a path (PATH_MAX), fs-encoded
CHUNK_SIZE = 128 * 1024                # data frames the agent and client send
BATCH_BYTES = 256 * 1024               # JSON bytes in one "entries"/"processes" frame
DEFAULT_KEEPALIVE = 5.0                # seconds, when the hello names none
MIN_KEEPALIVE = 0.05
MAX_KEEPALIVE = 3600.0


class FrameType(enum.IntEnum):
    """The byte after the length (docs/agent.md, "Frames")."""

    MSG = 1          # a JSON object
    DATA = 2         # file contents; an empty DATA ends a write's data
    STDIN = 3        # bytes for a process's stdin; an empty STDIN closes it
    STDOUT = 4       # a process's stdout, as it comes
    STDERR = 5       # a process's stderr, as it comes
    KEEPALIVE = 6    # empty; the agent sends it on an idle stream


# Wire error names that are not errno names (docs/agent.md, "Errors").
BAD_FRAME = "bad-frame"                # unknown type, truncated frame
TOO_LARGE = "too-large"                # a length above MAX_PAYLOAD
BAD_MESSAGE = "bad-message"            # a MSG that is not a JSON object with a type
UNEXPECTED = "unexpected"              # a frame the stream does not allow here
UNKNOWN_REQUEST = "unknown-request"
VERSION_MISMATCH = "version-mismatch"
BAD_ARGS = "bad-args"
BUSY = "busy"                          # too many streams open at once
INTERNAL = "internal"                  # a bug in the agent; it keeps serving

# Requests (client to agent).
HELLO = "hello"
RUN = "run"
ATTACH = "attach"
SIGNAL = "signal"
STDIN = "stdin"
PS = "ps"
READ = "read"
WRITE = "write"
STAT = "stat"
LIST = "list"
REMOVE = "remove"
RENAME = "rename"
MKDIR = "mkdir"
RESTORED = "restored"
REQUESTS = (RUN, ATTACH, SIGNAL, STDIN, PS, READ, WRITE, STAT, LIST, REMOVE, RENAME, MKDIR, RESTORED)

# Replies (agent to client).
ERROR = "error"
STARTED = "started"
ATTACHED = "attached"
EXIT = "exit"
OK = "ok"
ENTRY = "entry"
ENTRIES = "entries"
PROCESSES = "processes"
FILE = "file"
END = "end"
MADE = "made"


@dataclass(frozen=True)
class Frame:
    type: FrameType
    payload: bytes = b""


# --- frames -----------------------------------------------------------------------

def encode_header(ftype: FrameType, length: int) -> bytes:
    """The 5-byte header of a frame with a ``length``-byte payload."""
    if not 0 <= length <= MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes (at most {MAX_PAYLOAD})")
    return HEADER.pack(length, ftype)


def encode_frame(ftype: FrameType, payload: bytes = b"") -> bytes:
    """One whole frame."""
    return encode_header(ftype, len(payload)) + bytes(payload)


def encode_message(msg: dict[str, Any]) -> bytes:
    """A whole ``MSG`` frame holding ``msg`` as JSON."""
    return encode_frame(FrameType.MSG, dump_json(msg))


def dump_json(msg: dict[str, Any]) -> bytes:
    """``msg`` as compact JSON; lone surrogates (undecodable file names) survive."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def decode_message(payload: bytes) -> dict[str, Any]:
    """The JSON object in a ``MSG`` payload; ProtocolError unless it has a str type."""
    try:
        msg = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(BAD_MESSAGE, f"message is not UTF-8 JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError(BAD_MESSAGE, "message is not a JSON object with a string 'type'")
    return msg


class FrameDecoder:
    """Frames out of a byte stream fed in pieces of any size.

    ``feed()`` bytes as they arrive, then call ``next()`` until it returns
    None.  A bad header raises ProtocolError as soon as its 5 bytes are in,
    before any of its payload: a too-large length is never buffered.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max = max_payload

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._buf)

    def next(self) -> Frame | None:
        """The next whole frame, or None until more bytes are fed."""
        if len(self._buf) < HEADER.size:
            return None
        length, raw_type = HEADER.unpack_from(self._buf)
        ftype = self._check_header(length, raw_type)
        end = HEADER.size + length
        if len(self._buf) < end:
            return None
        with memoryview(self._buf) as view:        # one copy, not two
            payload = bytes(view[HEADER.size:end])
        del self._buf[:end]
        return Frame(ftype, payload)

    def _check_header(self, length: int, raw_type: int) -> FrameType:
        if length > self._max:
            raise ProtocolError(TOO_LARGE, f"frame of {length} bytes (at most {self._max})")
        try:
            ftype = FrameType(raw_type)
        except ValueError:
            raise ProtocolError(BAD_FRAME, f"unknown frame type {raw_type}") from None
        if ftype is FrameType.KEEPALIVE and length:
            raise ProtocolError(BAD_FRAME, "KEEPALIVE frame with a payload")
        return ftype


# --- messages ----------------------------------------------------------------------

_REQUIRED = object()


def field(msg: dict[str, Any], key: str, kinds: type | tuple[type, ...],
          default: Any = _REQUIRED) -> Any:
    """``msg[key]`` checked against ``kinds`` (a bool is never an int here).

    A missing key or a JSON null gives ``default``, or a ``bad-args``
    ProtocolError when there is none.
    """
    value = msg.get(key)
    if value is None:
        if default is _REQUIRED:
            raise ProtocolError(BAD_ARGS, f"{msg.get('type')}: '{key}' is required")
        return default
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ProtocolError(BAD_ARGS, f"{msg.get('type')}: '{key}' must be {names}")
    return value


def path_field(msg: dict[str, Any], key: str = "path") -> str:
    """A path member: a non-empty str without NUL of at most MAX_PATH bytes."""
    path: str = field(msg, key, str)
    if not path or "\0" in path:
        raise ProtocolError(BAD_ARGS, f"{msg.get('type')}: '{key}' is empty or holds NUL")
    try:
        size = len(path.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        raise ProtocolError(BAD_ARGS, f"{msg.get('type')}: '{key}' is not a file name") from None
    if size > MAX_PATH:
        raise ProtocolError(BAD_ARGS, f"{msg.get('type')}: '{key}' is {size} bytes "
                                      f"(at most {MAX_PATH})")
    return path


def clamp_keepalive(value: float | None) -> float:
    """The keepalive interval the agent uses for a hello's request."""
    if value is None:
        return DEFAULT_KEEPALIVE
    return min(max(float(value), MIN_KEEPALIVE), MAX_KEEPALIVE)


def error_message(name: str, message: str, errno: int | None = None,
                  path: str | None = None) -> dict[str, Any]:
    """An error reply."""
    msg: dict[str, Any] = {"type": ERROR, "name": name, "errno": errno, "message": message}
    if path is not None:
        msg["path"] = path
    return msg


def error_from_oserror(exc: OSError) -> dict[str, Any]:
    """The error reply for a failed system call."""
    number = exc.errno
    name = errno_codes.errorcode.get(number, "EIO") if number else "EIO"
    text = exc.strerror or str(exc)
    path = exc.filename if isinstance(exc.filename, str) else None
    return error_message(name, text, number or errno_codes.EIO, path)


def error_from_protocol(exc: ProtocolError) -> dict[str, Any]:
    return error_message(exc.name, exc.message)


def batches(items: list[bytes], budget: int = BATCH_BYTES) -> list[list[bytes]]:
    """Split JSON-encoded items into runs whose total stays under ``budget``.

    An item alone is one run even when it is larger (the callers' items are
    bounded well below MAX_PAYLOAD by MAX_PATH).
    """
    runs: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for item in items:
        if current and size + len(item) + 1 > budget:
            runs.append(current)
            current, size = [], 0
        current.append(item)
        size += len(item) + 1
    if current:
        runs.append(current)
    return runs


def encode_batch(msg_type: str, key: str, items: list[bytes]) -> bytes:
    """A whole MSG frame ``{"type": msg_type, key: [items...]}`` from encoded items."""
    head = dump_json({"type": msg_type})[:-1] + b',"' + key.encode() + b'":['
    return encode_frame(FrameType.MSG, head + b",".join(items) + b"]}")
