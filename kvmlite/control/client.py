"""The control client: what ``kvmlite list/stop/pause/...`` and user programs use.

    from kvmlite.control.client import ControlClient

    with ControlClient("web") as vm:
        vm.pause()
        print(vm.registers()[0]["regs"]["rip"])
        vm.resume()

Every method sends one request and waits for its reply (protocol in
docs/control.md); an error reply raises :class:`ControlError` (a
KvmliteError, so the CLI prints it as one line).  The client refuses a
socket that belongs to another user, and a VMM that died is reported as
not running (its stale socket is removed on the way).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from kvmlite.control import protocol as p
from kvmlite.control.registry import Liveness, NoSuchVm, Registry, read_pid
from kvmlite.errors import KvmliteError

DEFAULT_TIMEOUT = 15.0
LIST_TIMEOUT = 3.0
SNAPSHOT_TIMEOUT = 600.0      # saving many GiB of RAM to a slow disk takes a while
_UCRED = struct.Struct("3i")


class ControlError(KvmliteError):
    """An error reply, or a connection that failed; ``code`` is the protocol's."""

    def __init__(self, message: str, code: str = p.FAILED) -> None:
        super().__init__(message)
        self.code = code


class ControlClient:
    """A connection to the VM called ``name`` (or to ``path`` directly)."""

    def __init__(self, name: str | None = None, *, path: str | None = None, registry: Registry | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if (name is None) == (path is None):
            raise ValueError("give either a name or a path")
        self.name = name or os.path.basename(str(path))
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._buffer = bytearray()
        self._sock = self._connect(name, path, registry or Registry())

    def _connect(self, name: str | None, path: str | None, registry: Registry) -> socket.socket:
        target = str(path) if name is None else str(registry.check_socket_owner(name))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(target)
        except OSError as exc:
            sock.close()
            raise self._connect_error(exc, name, registry, target) from None
        _check_peer(sock, target)
        return sock

    def _connect_error(self, exc: OSError, name: str | None, registry: Registry, target: str) -> KvmliteError:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT) and name is not None:
            stale = registry.probe(name, clean=True) is not Liveness.LIVE
            return NoSuchVm(name, stale=stale)
        if isinstance(exc, TimeoutError):
            return ControlError(f"{target}: the VM did not accept the connection within {self.timeout:g} s")
        return ControlError(f"cannot connect to {target}: {exc.strerror or exc}")

    # --- lifetime ---

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ---

    def call(self, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        """Send one request; return its result or raise ControlError."""
        request = p.Request(op, dict(args or {}), next(self._ids))
        self._sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            self._sock.sendall(p.encode_request(request))
            reply = p.decode_reply(self._read_line())
        except TimeoutError:
            raise ControlError(f"{self.name}: no reply to {op!r} within "
                               f"{self.timeout if timeout is None else timeout:g} s") from None
        except p.ProtocolError as exc:
            raise ControlError(f"{self.name}: bad reply to {op!r}: {exc.message}", exc.code) from None
        except OSError as exc:
            raise ControlError(f"{self.name}: connection failed during {op!r}: {exc.strerror or exc}") from None
        if not reply.ok:
            raise ControlError(f"{self.name}: {reply.error_message}", reply.error_code or p.FAILED)
        assert reply.result is not None
        return reply.result

    def _read_line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return line
            if len(self._buffer) > p.MAX_REPLY_BYTES:
                raise p.ProtocolError(p.TOO_LARGE, f"reply longer than {p.MAX_REPLY_BYTES} bytes")
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ControlError(f"{self.name}: the VM closed the connection (did it stop?)")
            self._buffer += chunk

    def wait_closed(self, timeout: float) -> bool:
        """Wait until the VMM closes the connection (it exits); False on timeout."""
        self._sock.settimeout(timeout)
        try:
            while self._sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    # --- the operations (docs/control.md) ---

    def info(self) -> dict[str, Any]:
        return self.call("info")

    def pause(self, timeout: float = 5.0) -> str:
        return str(self.call("pause", {"timeout": timeout}, timeout=timeout + self.timeout)["state"])

    def resume(self) -> str:
        return str(self.call("resume")["state"])

    def stop(self, *, force: bool = False, timeout: float = 30.0) -> str:
        """Start stopping the VM; returns the method.  See :meth:`wait_closed`."""
        return str(self.call("stop", {"force": force, "timeout": timeout})["method"])

    def stats(self) -> dict[str, Any]:
        return self.call("stats")

    def registers(self) -> list[dict[str, Any]]:
        return list(self.call("registers")["vcpus"])

    def nmi(self, vcpu: int | None = None) -> list[int]:
        return list(self.call("nmi", {"vcpu": vcpu})["vcpus"])

    def sysrq(self, key: str) -> None:
        self.call("sysrq", {"key": key})

    def set_timeout(self, seconds: float) -> float:
        """Stop the VM ``seconds`` from now."""
        return float(self.call("set_timeout", {"seconds": seconds})["timeout_s"])

    def snapshot(self, directory: str, *, stop: bool = False, timeout: float = SNAPSHOT_TIMEOUT) -> dict[str, Any]:
        """Save the VM to ``directory`` (absolute; new or empty); a summary."""
        return self.call("snapshot", {"dir": directory, "stop": stop}, timeout=timeout)


def _check_peer(sock: socket.socket, target: str) -> None:
    """Refuse a server running as another user (the socket's owner can lie)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return
    uid = _UCRED.unpack(raw)[1]
    if uid != os.geteuid():
        sock.close()
        raise ControlError(f"{target} is served by uid {uid}, not by you (uid {os.geteuid()}); "
                           f"refusing to talk to it")


# --- listing ----------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """One entry of ``kvmlite list``: ``info`` is the VM's own answer, or
    None when it did not give one (``problem`` says why)."""

    name: str
    info: dict[str, Any] | None
    pid: int | None
    problem: str | None = None

    @property
    def state(self) -> str:
        return str(self.info.get("state", "unknown")) if self.info else "unresponsive"


def list_instances(registry: Registry | None = None, timeout: float = LIST_TIMEOUT) -> list[Instance]:
    """Every live VM in the runtime directory; stale entries are removed."""
    registry = registry or Registry()
    registry.check_directory()
    found = []
    for name in registry.names():
        if registry.probe(name, clean=True) is Liveness.LIVE:
            instance = _query(registry, name, timeout)
            if instance is not None:
                found.append(instance)
    return found


def _query(registry: Registry, name: str, timeout: float) -> Instance | None:
    pid = read_pid(registry.lock_path(name))
    try:
        with ControlClient(name, registry=registry, timeout=timeout) as client:
            info = client.info()
    except NoSuchVm:
        return None                          # it exited while we looked
    except KvmliteError as exc:
        return Instance(name, None, pid, str(exc))
    return Instance(name, info, info.get("pid", pid))
