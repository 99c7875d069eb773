"""The host's client of the sandbox agent (docs/agent.md).

:class:`AgentClient` opens a fresh stream for every operation through the
``connect`` factory it is given — :func:`connect_hybrid` for a VM's
virtio-vsock Unix socket (Firecracker's ``CONNECT <port>`` handshake),
:func:`connect_unix` for an agent listening on a Unix socket — so
operations from several threads never share a stream.  The API follows
E2B's ``sandbox.commands`` and ``sandbox.files``; docs/agent.md lists the
differences.

Failures are exceptions of kvmlite.agent.errors, never silent, never a
hang: a stream that breaks or stays silent (no frame, not even a keepalive,
for ``idle_timeout`` seconds) raises :class:`AgentConnectionError`.
"""

from __future__ import annotations

import signal as signals
import socket
import threading
from typing import IO, Any, Callable, Iterator, Literal, Sequence

from .channel import Channel
from .errors import (AgentConnectionError, ProcessNotFoundError, SandboxFileNotFoundError,
                     SandboxNotADirectoryError, VersionMismatchError)
from .handle import CommandHandle, CommandOutput, OutputCallback, checked, follow
from .protocol import (ATTACH, ATTACHED, CHUNK_SIZE, END, ENTRIES, ENTRY, FILE, HELLO, LIST,
                       MADE, MKDIR, OK, PROCESSES, PS, READ, REMOVE, RENAME, RESTORED, RUN, SIGNAL,
                       STARTED, STAT, STDIN, VERSION, VERSION_MISMATCH, WRITE, FrameType,
                       encode_frame, encode_message)
from .results import AgentInfo, CommandResult, EntryInfo, ProcessInfo

DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024      # bytes of each output stream a result keeps
DEFAULT_IDLE_TIMEOUT = 30.0                # seconds without a frame before giving up
INLINE_STDIN = 16 * 1024                   # stdin up to this goes out with the request
CONNECT_LINE_MAX = 64


# --- connecting ------------------------------------------------------------------------

def connect_unix(path: str, timeout: float | None = 10.0) -> socket.socket:
    """A stream to an agent listening on the Unix socket ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise AgentConnectionError(f"cannot connect to the agent at {path}: {exc}") from None
    return sock


def connect_hybrid(uds_path: str, port: int, timeout: float | None = 10.0) -> socket.socket:
    """A stream to the guest's vsock ``port`` through the VMM's Unix socket.

    Firecracker's hybrid vsock: connect to ``uds_path``, send
    ``CONNECT <port>\\n``, read ``OK <host port>\\n``; from there on the
    socket is a plain byte stream to the guest's listener.  Raises
    AgentConnectionError when any step fails (the VMM closes the connection
    when nothing in the guest listens on ``port``).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(uds_path)
        sock.sendall(f"CONNECT {port}\n".encode("ascii"))
        line = _read_line(sock)
    except OSError as exc:
        sock.close()
        raise AgentConnectionError(f"vsock {uds_path}: CONNECT {port}: {exc}") from None
    if not line.startswith(b"OK "):
        sock.close()
        said = f"answered {line!r}" if line else "closed the connection"
        raise AgentConnectionError(f"vsock {uds_path}: CONNECT {port}: the VMM {said} "
                                   f"(no listener on guest port {port}?)")
    return sock


def _read_line(sock: socket.socket) -> bytes:
    """One line, byte by byte: what follows it belongs to the stream."""
    line = b""
    while not line.endswith(b"\n") and len(line) < CONNECT_LINE_MAX:
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
    return line


# --- the client -------------------------------------------------------------------------

class AgentClient:
    """Commands and files in a sandbox, through its agent.

    ``connect`` returns a new connected stream socket each call.
    ``idle_timeout`` bounds every wait for the agent (it sends keepalives at
    a quarter of it).  ``max_output`` is the default number of bytes of each
    output stream a :class:`CommandResult` keeps.
    """

    def __init__(self, connect: Callable[[], socket.socket], *,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_output: int = DEFAULT_MAX_OUTPUT) -> None:
        self._connect = connect
        self.idle_timeout = idle_timeout
        self.max_output = max_output

    # --- streams ---------------------------------------------------------------------

    def _open(self, request: dict[str, Any] | None, extra: bytes = b"") -> Channel:
        """A stream whose hello, request and ``extra`` frames went out at once."""
        channel = Channel(self._socket(), self.idle_timeout)
        try:
            hello = {"type": HELLO, "version": VERSION, "keepalive": self.idle_timeout / 4}
            frames = encode_message(hello)
            if request is not None:
                frames += encode_message(_drop_none(request)) + extra
            channel.send_raw(frames)
            self._check_version(channel.message(HELLO))
            return channel
        except BaseException:
            channel.close()
            raise

    def _socket(self) -> socket.socket:
        try:
            return self._connect()
        except AgentConnectionError:
            raise
        except OSError as exc:
            raise AgentConnectionError(f"cannot connect to the agent: {exc}") from None

    @staticmethod
    def _check_version(msg: dict[str, Any]) -> AgentInfo:
        info = AgentInfo.from_wire(msg)
        if info.version != VERSION:
            raise VersionMismatchError(VERSION_MISMATCH, f"the agent {info.agent_version} "
                                       f"speaks protocol version {info.version}, this "
                                       f"client {VERSION}")
        return info

    def _call(self, request: dict[str, Any], reply: str) -> dict[str, Any]:
        with self._open(request) as channel:
            return channel.message(reply)

    def _collect(self, request: dict[str, Any], batch: str) -> list[dict[str, Any]]:
        """Items of every ``batch`` message up to ``end``."""
        items: list[dict[str, Any]] = []
        with self._open(request) as channel:
            while True:
                msg = channel.message(batch, END)
                if msg["type"] == END:
                    return items
                items.extend(msg[batch])

    def hello(self) -> AgentInfo:
        """The agent's versions, pid and uname (a handshake and nothing more)."""
        channel = Channel(self._socket(), self.idle_timeout)
        with channel:
            channel.send_raw(encode_message({"type": HELLO, "version": VERSION}))
            return self._check_version(channel.message(HELLO))

    # --- commands --------------------------------------------------------------------

    def run(self, cmd: str | Sequence[str], *, envs: dict[str, str] | None = None,
            cwd: str | None = None, user: str | int | None = None,
            stdin: str | bytes | bool | None = None, timeout: float | None = None,
            on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None,
            background: bool = False,
            max_output: int | None = None) -> CommandResult | CommandHandle:
        """Run ``cmd`` — a shell string (``/bin/sh -c``) or an argv list.

        ``stdin``: bytes or str are written to the command and then closed;
        True leaves a pipe open for ``send_stdin``/``close_stdin``; None or
        False gives /dev/null.  ``timeout`` (seconds; None or 0: none) makes
        the agent SIGKILL the command's process group.  ``user`` is a name
        or uid (the agent must be root to switch).  Callbacks get the output
        as text chunks as it comes.

        Foreground: returns the CommandResult; raises CommandExitError for a
        non-zero exit or a signal, CommandTimeoutError at the timeout.
        ``background=True``: returns a CommandHandle once the command started.
        """
        data = _stdin_bytes(stdin)
        request = {"type": RUN, "cmd": cmd if isinstance(cmd, str) else list(cmd),
                   "env": envs or {}, "cwd": cwd, "user": user,
                   "stdin": stdin is not None and stdin is not False,
                   "timeout": timeout or None, "background": background}
        inline = data is not None and len(data) <= INLINE_STDIN
        channel = self._open(request, _stdin_frames(data) if inline else b"")
        output = CommandOutput(max_output or self.max_output, on_stdout, on_stderr)
        try:
            if data is not None and not inline:
                _start_feeder(channel, data)
            pid = int(channel.message(STARTED)["pid"])
        except BaseException:
            channel.close()
            raise
        if background:
            return CommandHandle(self, channel, pid, output)
        with channel:
            return checked(output.result(follow(channel, output)))

    def connect(self, pid: int, *, on_stdout: OutputCallback | None = None,
                on_stderr: OutputCallback | None = None,
                max_output: int | None = None) -> CommandHandle:
        """A handle on a command the agent runs: its output from now on, its end."""
        channel = self._open({"type": ATTACH, "pid": pid})
        try:
            channel.message(ATTACHED)
        except BaseException:
            channel.close()
            raise
        output = CommandOutput(max_output or self.max_output, on_stdout, on_stderr)
        return CommandHandle(self, channel, pid, output)

    def list_processes(self, include_exited: bool = False) -> list[ProcessInfo]:
        """The commands the agent runs (and recently exited background ones if asked)."""
        items = self._collect({"type": PS, "all": include_exited}, PROCESSES)
        return [ProcessInfo.from_wire(item) for item in items]

    def kill(self, pid: int) -> bool:
        """SIGKILL a command's process group; False if there is no such command running."""
        return self.send_signal(pid, signals.SIGKILL)

    def send_signal(self, pid: int, sig: int, *, group: bool = True) -> bool:
        """Send ``sig`` to a command's process group (or the command alone).

        False if the agent has no such command or it has exited.
        """
        try:
            self._call({"type": SIGNAL, "pid": pid, "signal": int(sig), "group": group}, OK)
            return True
        except ProcessNotFoundError:
            return False

    def send_stdin(self, pid: int, data: str | bytes) -> None:
        """Write to the stdin of a command started with ``stdin=True``."""
        self._send_stdin(pid, _stdin_bytes(data) or b"", eof=False)

    def close_stdin(self, pid: int) -> None:
        """Close the stdin of a command started with ``stdin=True`` (it reads EOF)."""
        self._send_stdin(pid, b"", eof=True)

    def _send_stdin(self, pid: int, data: bytes, eof: bool) -> None:
        with self._open({"type": STDIN, "pid": pid, "eof": eof}) as channel:
            channel.send_data(FrameType.STDIN, _chunks(data))
            channel.message(OK)

    # --- files -----------------------------------------------------------------------

    def read(self, path: str, format: Literal["text", "bytes", "stream"] = "text"
             ) -> str | bytes | FileStream:
        """A file's contents as text (UTF-8, invalid bytes replaced), bytes, or a
        stream of chunks (a :class:`FileStream`; close it if not read to the end)."""
        if format not in ("text", "bytes", "stream"):
            raise ValueError(f"format must be text, bytes or stream, not {format!r}")
        channel = self._open({"type": READ, "path": path})
        try:
            stream = FileStream(channel, EntryInfo.from_wire(channel.message(FILE)["entry"]))
        except BaseException:
            channel.close()
            raise
        if format == "stream":
            return stream
        with stream:
            data = b"".join(stream)
        return data if format == "bytes" else data.decode("utf-8", "replace")

    def write(self, path: str, data: str | bytes | IO[Any], *,
              mode: int | None = None) -> EntryInfo:
        """Create or overwrite a file (and its missing parent directories).

        ``data`` is text (written as UTF-8), bytes, or a file object read in
        chunks.  ``mode`` applies when the file is created (default 0o644).
        """
        with self._open({"type": WRITE, "path": path, "mode": mode}) as channel:
            channel.send_data(FrameType.DATA, _chunks(data))
            return EntryInfo.from_wire(channel.message(ENTRY)["entry"])

    def list(self, path: str, depth: int = 1) -> list[EntryInfo]:
        """The entries of a directory, ``depth`` levels down (1: its children)."""
        if depth < 1:
            raise ValueError("depth must be at least 1")
        items = self._collect({"type": LIST, "path": path, "depth": depth}, ENTRIES)
        return [EntryInfo.from_wire(item) for item in items]

    def exists(self, path: str) -> bool:
        """True if ``path`` exists (symbolic links followed, as os.path.exists)."""
        try:
            self._call({"type": STAT, "path": path, "follow": True}, ENTRY)
            return True
        except (SandboxFileNotFoundError, SandboxNotADirectoryError):
            return False

    def get_info(self, path: str) -> EntryInfo:
        """What ``path`` is (a symbolic link itself, not its target)."""
        return EntryInfo.from_wire(self._call({"type": STAT, "path": path}, ENTRY)["entry"])

    def remove(self, path: str) -> None:
        """Remove a file, a symbolic link or a directory with all it holds."""
        self._call({"type": REMOVE, "path": path}, OK)

    def rename(self, old_path: str, new_path: str) -> EntryInfo:
        """Rename (move) within the sandbox; an existing file at ``new_path`` is replaced."""
        msg = self._call({"type": RENAME, "path": old_path, "new_path": new_path}, ENTRY)
        return EntryInfo.from_wire(msg["entry"])

    def make_dir(self, path: str) -> bool:
        """Make a directory and its parents; False if it existed already."""
        return bool(self._call({"type": MKDIR, "path": path}, MADE)["created"])

    # --- system ----------------------------------------------------------------------

    def restored(self, now: float, seed: bytes, macs: Sequence[tuple[str, str]] = ()) -> list[str]:
        """Tell the agent its VM was just restored: it adds ``seed`` (host
        randomness) to the guest's pool, reseeds the generator, sets the
        wall clock to ``now`` (Unix time) and gives each interface whose
        MAC is the first of a ``macs`` pair the second.  Returns the
        interfaces changed.  Needs an agent running as root."""
        msg = self._call({"type": RESTORED, "time": now, "seed": seed.hex(), "macs": [list(m) for m in macs]}, OK)
        return list(msg.get("interfaces", []))


class FileStream:
    """The chunks of a file being read; ``entry`` describes the file."""

    def __init__(self, channel: Channel, entry: EntryInfo) -> None:
        self._channel = channel
        self.entry = entry
        self.received = 0
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        while not self._done:
            frame = self._channel.frame()
            if frame.type is FrameType.DATA:
                self.received += len(frame.payload)
                return frame.payload
            self._end(self._channel.as_message(frame, END))
        raise StopIteration

    def _end(self, msg: dict[str, Any]) -> None:
        self._done = True
        self.close()
        if msg.get("size") != self.received:
            raise AgentConnectionError(f"read {self.entry.path}: the agent sent "
                                       f"{msg.get('size')} bytes, {self.received} arrived")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FileStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers ---------------------------------------------------------------------------

def _drop_none(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if v is not None}


def _stdin_bytes(stdin: str | bytes | bool | None) -> bytes | None:
    """The bytes to write to a command's stdin; None when there are none to write."""
    if stdin is None or isinstance(stdin, bool):
        return None
    return stdin.encode("utf-8") if isinstance(stdin, str) else bytes(stdin)


def _stdin_frames(data: bytes | None) -> bytes:
    """Small stdin as frames to send with the request, EOF included."""
    if data is None:
        return b""
    return (encode_frame(FrameType.STDIN, data) if data else b"") + \
        encode_frame(FrameType.STDIN)


def _start_feeder(channel: Channel, data: bytes) -> None:
    """Write large stdin from a thread while the caller reads the output.

    Failures are left to the reader, which sees the stream's end or error.
    """
    def feed() -> None:
        try:
            for chunk in _chunks(data):
                channel.send(FrameType.STDIN, chunk)
            channel.send(FrameType.STDIN, b"")
        except (AgentConnectionError, OSError):
            pass

    threading.Thread(target=feed, name="agent-stdin", daemon=True).start()


def _chunks(data: str | bytes | bytearray | memoryview | IO[Any]) -> Iterator[bytes]:
    """``data`` in pieces of at most CHUNK_SIZE bytes."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        for start in range(0, len(view), CHUNK_SIZE):
            yield bytes(view[start:start + CHUNK_SIZE])
        return
    if not hasattr(data, "read"):
        raise TypeError(f"cannot write {type(data).__name__}: give str, bytes or a file")
    while True:
        chunk = data.read(CHUNK_SIZE)
        if not chunk:
            return
        yield chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)
