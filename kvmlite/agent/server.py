"""The sandbox agent: serves the wire protocol on vsock, a Unix socket or one stream.

Threads: one accept loop per listener, one thread per stream (it reads the
hello and the request and runs the request's handler), one pump thread per
process (processes.py), a timer per command with a timeout, and one ticker
that sends KEEPALIVE frames on idle streams.  No failure of one stream —
a malformed frame, a peer that vanishes, a bug in a handler — ends the
agent: the stream gets an error frame if it can still take one and is
closed.

Started in the guest as ``python3 -m kvmlite.agent`` (docs/agent.md,
"Starting the agent").
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable

from . import AGENT_VERSION
from .config import AgentConfig
from .errors import AgentConnectionError, ProtocolError, VersionMismatchError
from .ops_files import FileOps
from .ops_process import ProcessOps
from .ops_system import SystemOps
from .processes import ProcessTable
from .protocol import (BAD_MESSAGE, BUSY, HELLO, INTERNAL, SUPPORTED_VERSIONS,
                       UNKNOWN_REQUEST, VERSION, VERSION_MISMATCH, clamp_keepalive,
                       encode_message, error_from_oserror, error_from_protocol,
                       error_message, field)
from .wire import Stream

DEFAULT_VSOCK_PORT = 1024
HOST_CID = 2                      # VMADDR_CID_HOST
READY_TIMEOUT = 5.0               # seconds for the --ready-port connection


def log(message: str) -> None:
    """One line on stderr (the guest's console)."""
    print(f"kvmlite-agent: {message}", file=sys.stderr, flush=True)


class Agent:
    """Serves streams: ``serve(listener)`` for a listening socket,
    ``serve_connection(sock)`` for one connected stream.  ``close()`` stops
    it and kills the process groups it started."""

    def __init__(self, config: AgentConfig | None = None) -> None:
        self.config = config or AgentConfig()
        self.processes = ProcessTable(self.config.keep_exited)
        self._handlers: dict[str, Callable[[Stream, dict[str, Any]], None]] = {
            **ProcessOps(self.processes, self.config).handlers(),
            **FileOps(self.config).handlers(),
            **SystemOps().handlers()}
        self._lock = threading.Lock()
        self._streams: set[Stream] = set()
        self._listeners: list[socket.socket] = []
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # --- serving -------------------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        """Accept streams on ``listener`` until ``close()``; one thread each."""
        with self._lock:
            self._listeners.append(listener)
        while not self._stop.is_set():
            try:
                sock, _ = listener.accept()
            except OSError as exc:
                if self._stop.is_set():
                    return
                log(f"accept: {exc}")        # EMFILE and the like: wait, go on
                time.sleep(0.1)
                continue
            threading.Thread(target=self.serve_connection, args=(sock,),
                             name="agent-stream", daemon=True).start()

    def serve_in_thread(self, listener: socket.socket) -> threading.Thread:
        thread = threading.Thread(target=self.serve, args=(listener,), name="agent-accept",
                                  daemon=True)
        thread.start()
        return thread

    def serve_connection(self, sock: socket.socket) -> None:
        """Serve one connected stream to its end, then close it. Never raises."""
        stream = Stream(sock)
        try:
            if self._register(stream):
                self._serve(stream)
            else:
                _send_error(stream, error_message(BUSY, "too many streams open"))
        except AgentConnectionError:
            pass
        except ProtocolError as exc:
            _send_error(stream, error_from_protocol(exc))
        except OSError as exc:
            _send_error(stream, error_from_oserror(exc))
        except Exception as exc:            # a bug: report it, keep serving others
            log(f"internal error: {exc!r}\n{traceback.format_exc()}")
            _send_error(stream, error_message(INTERNAL, f"internal error: {exc!r}"))
        finally:
            with self._lock:
                self._streams.discard(stream)
            stream.close()

    def close(self) -> None:
        """Stop accepting, kill every running process group, wake every stream."""
        self._stop.set()
        with self._lock:
            listeners, streams = list(self._listeners), list(self._streams)
        for listener in listeners:
            _shutdown(listener)
            listener.close()
        self.processes.kill_all()
        for stream in streams:
            _shutdown(stream.sock)

    def hello_message(self, keepalive: float | None = None) -> dict[str, Any]:
        """The agent's hello: versions, pid, uname (and the stream's keepalive)."""
        u = os.uname()
        msg = {"type": HELLO, "version": VERSION, "agent_version": AGENT_VERSION,
               "pid": os.getpid(), "uname": {"sysname": u.sysname, "nodename": u.nodename,
                                             "release": u.release, "version": u.version,
                                             "machine": u.machine}}
        if keepalive is not None:
            msg["keepalive"] = keepalive
        return msg

    # --- one stream ----------------------------------------------------------------

    def _serve(self, stream: Stream) -> None:
        """Handshake, then the one request of this stream."""
        stream.sock.settimeout(self.config.handshake_timeout)
        hello = stream.read_message()
        if hello is None:
            return
        keepalive = self._check_hello(hello)
        stream.send_message(self.hello_message(keepalive))
        request = stream.read_message()
        if request is None:
            return
        handler = self._handlers.get(request["type"])
        if handler is None:
            raise ProtocolError(UNKNOWN_REQUEST, f"unknown request {request['type']!r}")
        stream.sock.settimeout(None)    # blocking from here: keepalives use MSG_DONTWAIT
        stream.writer.keepalive = keepalive
        handler(stream, request)

    @staticmethod
    def _check_hello(msg: dict[str, Any]) -> float:
        """The keepalive interval for a valid hello; ProtocolError otherwise."""
        if msg["type"] != HELLO:
            raise ProtocolError(BAD_MESSAGE, f"expected hello, got {msg['type']!r}")
        version = field(msg, "version", int)
        if version not in SUPPORTED_VERSIONS:
            supported = ", ".join(map(str, SUPPORTED_VERSIONS))
            raise VersionMismatchError(
                VERSION_MISMATCH, f"the client speaks protocol version {version}, the agent "
                                  f"{AGENT_VERSION} speaks {supported}")
        return clamp_keepalive(field(msg, "keepalive", (int, float), None))

    def _register(self, stream: Stream) -> bool:
        with self._lock:
            if len(self._streams) >= self.config.max_streams:
                return False
            self._streams.add(stream)
            if self._ticker is None and not self._stop.is_set():
                self._ticker = threading.Thread(target=self._tick, name="agent-keepalive",
                                                daemon=True)
                self._ticker.start()
            return True

    def _tick(self) -> None:
        """Send KEEPALIVE on every idle stream, twice per shortest interval."""
        interval = 1.0
        while not self._stop.wait(interval):
            with self._lock:
                writers = [s.writer for s in self._streams]
            now = time.monotonic()
            for writer in writers:
                writer.keepalive_if_idle(now)
            periods = [w.keepalive for w in writers if w.keepalive is not None]
            interval = min([1.0] + [p / 2 for p in periods])


def _send_error(stream: Stream, msg: dict[str, Any]) -> None:
    """Best effort: the peer may be gone already."""
    try:
        stream.send_message(msg)
    except AgentConnectionError:
        pass


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# --- listeners and readiness ----------------------------------------------------------

def listen_vsock(port: int) -> socket.socket:
    """A vsock listener on ``port`` of any CID (the guest's own)."""
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.bind((socket.VMADDR_CID_ANY, port))
    sock.listen(128)
    return sock


def listen_unix(path: str) -> socket.socket:
    """A Unix listener at ``path`` (a stale socket file there is replaced)."""
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            os.unlink(path)
    except OSError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    return sock


def ready_line(where: str) -> str:
    """The line the agent prints once it listens (docs/agent.md, "Readiness")."""
    return f"kvmlite-agent: ready {where} version={AGENT_VERSION}"


def send_hello(family: int, address: Any, hello: dict[str, Any]) -> bool:
    """Connect to ``address``, send ``hello`` as one MSG frame, close.

    For ``--ready-port`` (AF_VSOCK to the host, CID 2).  Failures are
    ignored (False): the console line is the other signal.
    """
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(READY_TIMEOUT)
            sock.connect(address)
            sock.sendall(encode_message(hello))
        return True
    except OSError:
        return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m kvmlite.agent",
                                     description="kvmlite's sandbox agent (docs/agent.md)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--vsock-port", type=int, default=DEFAULT_VSOCK_PORT, metavar="PORT",
                       help=f"listen on this vsock port (default {DEFAULT_VSOCK_PORT})")
    where.add_argument("--unix", metavar="PATH", help="listen on a Unix socket instead")
    where.add_argument("--connected-fd", type=int, metavar="FD",
                       help="serve one already-connected stream socket, then exit")
    parser.add_argument("--ready-port", type=int, metavar="PORT",
                        help="once listening, send a hello to the host's vsock PORT")
    parser.add_argument("--workdir", metavar="DIR",
                        help="default directory of commands and relative paths (default: cwd)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="add to every command's default environment (repeatable)")
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> AgentConfig:
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"kvmlite-agent: --env wants KEY=VALUE, got {item!r}")
        env[key] = value
    return AgentConfig(workdir=os.path.abspath(args.workdir or os.getcwd()), env=env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    agent = Agent(_config(args))
    if args.connected_fd is not None:
        agent.serve_connection(socket.socket(fileno=args.connected_fd))
        agent.close()
        return 0
    try:
        if args.unix:
            listener, where = listen_unix(args.unix), f"unix={args.unix}"
        else:
            listener, where = listen_vsock(args.vsock_port), f"port={args.vsock_port}"
    except OSError as exc:
        log(f"cannot listen: {exc}")
        return 1
    print(ready_line(where), flush=True)
    if args.ready_port is not None:
        send_hello(socket.AF_VSOCK, (HOST_CID, args.ready_port),
                   {**agent.hello_message(), "ready": True,
                    "port": None if args.unix else args.vsock_port})
    try:
        agent.serve(listener)
    except KeyboardInterrupt:
        pass
    finally:
        agent.close()
    return 0
