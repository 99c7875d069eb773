"""The control server: one Unix socket per VM, serving protocol v1.

Threads: the server runs its own selector loop on one thread ("control"),
never on a vCPU thread or the VM's I/O thread, so a slow device callback
cannot stall control and a stalled client cannot stall the VM.  It owns
every socket; sockets are non-blocking and each client has its own input
and output buffers, so a client that sends half a request, or never reads
its replies, holds only its own connection.

An operation that may wait (``pause`` waits for vCPUs to park) runs on a
short-lived worker thread; its reply comes back to the loop through a queue
and a wake-up socket.  Each client has at most one request in flight, so
replies keep request order; while one is in flight (or its unread output
passes :attr:`Limits.out_high`) the server stops reading that client,
leaving back-pressure to the kernel's socket buffer.

Limits (:class:`Limits`): request size (reply ``too-large`` and close), the
number of clients (reply ``busy`` and close), how long a started request may
stay incomplete, and how long unread output may sit without progress.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kvmlite import __version__
from kvmlite.control import protocol as p
from kvmlite.control.ops import ControlTarget, Op, lookup
from kvmlite.control.registry import SOCKET_MODE, Claim, Registry, generated_name
from kvmlite.errors import KvmliteError

if TYPE_CHECKING:
    from kvmlite.vmm.vm import Vm

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")          # struct ucred: pid, uid, gid
CLOSE_GRACE_S = 2.0


@dataclass(frozen=True)
class Limits:
    max_request: int = p.MAX_REQUEST_BYTES
    max_clients: int = 32
    request_timeout: float = 10.0      # seconds a started request may stay incomplete
    write_timeout: float = 30.0        # seconds unread output may sit without progress
    out_high: int = 1 << 20            # stop reading a client whose unread output passes this
    tick: float = 0.5                  # how often the loop checks the timeouts


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    buffer: p.LineBuffer
    out: bytearray = field(default_factory=bytearray)
    busy: bool = False                 # a request is being served on a worker
    closing: bool = False              # close once ``out`` is flushed
    partial_since: float | None = None
    out_since: float | None = None
    events: int = 0                    # what the selector watches now


class ControlServer:
    """Serves ``target`` at ``registry``'s socket for ``name``.

    ``start()`` claims the name (KvmliteError if a live VM has it), binds the
    socket (mode 0600) and starts the loop; ``close()`` stops it and removes
    the socket and lock file.  Both are for the VMM's main thread.
    """

    def __init__(self, target: ControlTarget, name: str, *, registry: Registry | None = None,
                 limits: Limits = Limits()) -> None:
        self.target = target
        self.name = name
        self.registry = registry or Registry()
        self.limits = limits
        self._claim: Claim | None = None
        self._listener: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._done: collections.deque[tuple[_Client, bytes]] = collections.deque()
        self._clients: set[_Client] = set()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()
        self._close_lock = threading.Lock()

    @classmethod
    def for_vm(cls, vm: "Vm", *, registry: Registry | None = None) -> "ControlServer":
        """A server for ``vm`` under ``vm.name`` (or ``guest-<pid>``)."""
        from kvmlite.vmm.control import controller

        return cls(controller(vm), vm.name or generated_name(), registry=registry)

    @property
    def socket_path(self) -> Path:
        return self.registry.socket_path(self.name)

    # --- lifetime (VMM main thread) ---

    def start(self) -> None:
        self._claim = self.registry.claim(self.name)
        try:
            self._listener = self._bind(self._claim.socket_path)
        except BaseException:
            self._claim.release()
            raise
        self._listener.setblocking(False)
        for sock, callback in ((self._listener, self._accept), (self._wake_r, self._drain_done)):
            self._selector.register(sock, selectors.EVENT_READ, callback)
        self._thread = threading.Thread(target=self._loop, name="control", daemon=True)
        self._thread.start()

    @staticmethod
    def _bind(path: Path) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(path))
            os.chmod(path, SOCKET_MODE)     # the directory is 0700, so nobody raced us here
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise KvmliteError(f"cannot create the control socket {path}: {exc.strerror}") from None
        return sock

    def close(self) -> None:
        """Stop serving; clients see the connection close.  Idempotent.

        Requests in flight get up to :data:`CLOSE_GRACE_S` to finish, so the
        client of a ``stop`` sees its reply before the connection closes.
        """
        with self._close_lock:
            deadline = time.monotonic() + CLOSE_GRACE_S
            for worker in list(self._workers):
                if worker is not threading.current_thread():
                    worker.join(max(0.0, deadline - time.monotonic()))
            if self._claim is not None:
                self._claim.release()        # first: once a client sees EOF, the name is free
            self._closing = True
            self._wake()
            if self._thread is None:
                self._close_sockets()
            elif self._thread is not threading.current_thread():
                self._thread.join(timeout=5)

    def __enter__(self) -> "ControlServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the loop (control thread) ---

    def _loop(self) -> None:
        try:
            while not self._closing:
                for key, mask in self._selector.select(self.limits.tick):
                    if isinstance(key.data, _Client):
                        self._serve_event(key.data, mask)
                    else:
                        key.data(mask)
                self._check_timeouts(time.monotonic())
        except Exception:                    # a bug here must not take the VMM down
            log.exception("control server failed; control socket %s closed", self.socket_path)
            if self._claim is not None:
                self._claim.release()
        finally:
            self._close_sockets()

    def _close_sockets(self) -> None:
        if self._wake_r.fileno() < 0:
            return
        self._drain_done(0)
        for client in list(self._clients):
            self._flush(client)               # last replies: small, they fit the socket buffer
            self._drop(client)
        if self._listener is not None:
            self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._selector.close()

    def _accept(self, mask: int) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:           # EMFILE and friends: try again on the next event
                log.warning("control: accept failed: %s", exc)
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        client = _Client(sock, p.LineBuffer(self.limits.max_request))
        self._clients.add(client)
        refusal = self._refusal(sock)
        if refusal is not None:
            self._reply(client, p.encode_error(None, *refusal), closing=True)
        self._update(client)

    def _refusal(self, sock: socket.socket) -> tuple[str, str] | None:
        uid = _peer_uid(sock)
        if uid is not None and uid not in (0, os.geteuid()):
            return p.FAILED, f"uid {uid} may not control this VM"
        if len(self._clients) > self.limits.max_clients:
            return p.BUSY, f"too many control clients (at most {self.limits.max_clients}); try again later"
        return None

    def _serve_event(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(client)
        if mask & selectors.EVENT_READ and client in self._clients:
            self._receive(client)
        if client in self._clients:
            self._update(client)

    def _receive(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.buffer.feed(data)
        self._handle_lines(client)

    def _handle_lines(self, client: _Client) -> None:
        while not client.busy and not client.closing:
            try:
                line = client.buffer.next_line()
            except p.LineTooLong as exc:
                self._reply(client, p.encode_error(None, exc.code, exc.message), closing=True)
                return
            if line is None:
                break
            client.partial_since = None
            self._handle(client, line)
        if client.busy or not client.buffer.pending:
            client.partial_since = None
        elif client.partial_since is None:
            client.partial_since = time.monotonic()

    def _handle(self, client: _Client, line: bytes) -> None:
        try:
            request = p.decode_request(line)
            op = lookup(request.op)
        except p.ProtocolError as exc:
            self._reply(client, p.encode_error(exc.request_id, exc.code, exc.message))
            return
        if not op.blocking:
            self._reply(client, self._call(op, request))
            return
        client.busy = True
        worker = threading.Thread(target=self._work, args=(client, op, request), name=f"control-{op.name}",
                                  daemon=True)
        self._workers.add(worker)
        worker.start()

    # --- operations (control thread or a worker) ---

    def _call(self, op: Op, request: p.Request) -> bytes:
        """Run ``op``; every failure becomes an error reply."""
        try:
            result = op.run(self.target, request.args)
            if op.name == "info":
                result = {**result, "name": self.name, "pid": os.getpid(), "version": __version__,
                          "protocol": p.VERSION}
            return p.encode_ok(request.id, result)
        except p.ProtocolError as exc:
            return p.encode_error(request.id, exc.code, exc.message)
        except KvmliteError as exc:
            return p.encode_error(request.id, p.FAILED, str(exc))
        except Exception as exc:
            log.exception("control: %s failed", op.name)
            return p.encode_error(request.id, p.INTERNAL, f"internal error in {op.name}: {exc!r}")

    def _work(self, client: _Client, op: Op, request: p.Request) -> None:
        try:
            self._done.append((client, self._call(op, request)))
            self._wake()
        finally:
            self._workers.discard(threading.current_thread())

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass                             # already awake, or closed

    def _drain_done(self, mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._done:
            client, reply = self._done.popleft()
            if client in self._clients:
                client.busy = False
                self._reply(client, reply)
                if client in self._clients and not self._closing:
                    self._handle_lines(client)
                    self._update(client)

    # --- output and bookkeeping (control thread) ---

    def _reply(self, client: _Client, data: bytes, closing: bool = False) -> None:
        client.out += data
        client.closing = client.closing or closing
        client.out_since = client.out_since or time.monotonic()
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        if client.out:
            try:
                sent = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(client)
                return
            del client.out[:sent]
            client.out_since = time.monotonic() if client.out else None
        if not client.out and client.closing:
            self._drop(client)

    def _update(self, client: _Client) -> None:
        """Watch for what the client can do next."""
        if client not in self._clients:
            return
        events = 0
        if not client.busy and not client.closing and len(client.out) < self.limits.out_high:
            events |= selectors.EVENT_READ
        if client.out:
            events |= selectors.EVENT_WRITE
        if events == client.events:
            return
        if client.events and events:
            self._selector.modify(client.sock, events, client)
        elif events:
            self._selector.register(client.sock, events, client)
        else:
            self._selector.unregister(client.sock)
        client.events = events

    def _check_timeouts(self, now: float) -> None:
        for client in list(self._clients):
            if client.partial_since is not None and now - client.partial_since > self.limits.request_timeout:
                client.partial_since = None
                self._reply(client, p.encode_error(None, p.BAD_REQUEST, f"request incomplete after "
                                                   f"{self.limits.request_timeout:g} s"), closing=True)
            elif client.out_since is not None and now - client.out_since > self.limits.write_timeout:
                self._drop(client)
            if client in self._clients:
                self._update(client)

    def _drop(self, client: _Client) -> None:
        if client not in self._clients:
            return
        self._clients.discard(client)
        if client.events:
            try:
                self._selector.unregister(client.sock)
            except (KeyError, ValueError):
                pass
        client.sock.close()

    # for tests: how many clients are connected now
    def client_count(self) -> int:
        return len(self._clients)


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    return _UCRED.unpack(raw)[1]

