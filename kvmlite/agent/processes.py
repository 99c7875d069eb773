"""The agent's processes: spawning, output pumps, timeouts, the process table.

Each command runs in a session (and process group) of its own, its stdout
and stderr on two pipes.  One pump thread per process reads both pipes and
the process's pidfd with ``selectors`` and sends each chunk, as it comes, to
every stream attached to the process (:class:`Subscriber`).  Sends block:
a client that reads slowly slows the pump, the pipes fill and the command
waits — memory stays bounded.  Output produced while no stream is attached
(a background command whose client left) is counted and dropped.

The leader's exit ends the command: once it is reaped the pump drains what
the pipes already hold without waiting, publishes the exit, and then keeps
reading (and dropping) until descendants that still hold the pipes close
them, so that they never get SIGPIPE.

Locks: ``Process._lock`` guards the subscriber list, the exit and the pair
(reap, signal): a signal goes to the group only while the leader is not yet
reaped, so its pid — the group's id — cannot have been reused.  A
subscriber's sends take that stream's writer lock, never ``Process._lock``.
"""

from __future__ import annotations

import collections
import os
import selectors
import signal as signals
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

from .config import AgentConfig
from .errors import AgentConnectionError, ProtocolError
from .protocol import (BAD_ARGS, CHUNK_SIZE, EXIT, FrameType, field)
from .users import Identity, base_env, popen_identity, resolve_user
from .wire import Stream

POLL_INTERVAL = 0.05        # seconds between reap attempts when pidfds are missing


@dataclass(frozen=True)
class RunSpec:
    """A validated run request."""

    argv: list[str]
    display: str                 # the command as given, for listings
    env: dict[str, str]          # the whole environment
    request_env: dict[str, str]  # the request's own part of it
    cwd: str
    identity: Identity | None    # None: the agent's own
    user: str | None             # as the request named it
    stdin: bool                  # a pipe (True) or /dev/null
    timeout: float | None
    background: bool


def parse_run(msg: dict[str, Any], config: AgentConfig) -> RunSpec:
    """Check a run request and resolve its user, environment and directory."""
    argv, display = _command(msg)
    request_env = _env(msg)
    user = field(msg, "user", (str, int), None)
    identity = resolve_user(user)
    env = base_env(identity or config.identity, config.env)
    env.update(request_env)
    for key in [k for k, v in request_env.items() if v is None]:
        env.pop(key, None)
    cwd = config.resolve(field(msg, "cwd", str, config.workdir))
    timeout = field(msg, "timeout", (int, float), 0) or None
    if timeout is not None and timeout < 0:
        raise ProtocolError(BAD_ARGS, "run: 'timeout' must be positive")
    return RunSpec(argv, display, env, request_env, cwd, identity,
                   None if user is None else str(user), field(msg, "stdin", bool, False),
                   timeout, field(msg, "background", bool, False))


def _command(msg: dict[str, Any]) -> tuple[list[str], str]:
    """argv from a shell string (``/bin/sh -c``) or an argv list."""
    cmd = field(msg, "cmd", (str, list))
    if isinstance(cmd, str):
        if not cmd or "\0" in cmd:
            raise ProtocolError(BAD_ARGS, "run: 'cmd' is empty or holds NUL")
        return ["/bin/sh", "-c", cmd], cmd
    if not cmd or not all(isinstance(a, str) and "\0" not in a for a in cmd):
        raise ProtocolError(BAD_ARGS, "run: 'cmd' must be a non-empty list of strings")
    return list(cmd), " ".join(cmd)


def _env(msg: dict[str, Any]) -> dict[str, Any]:
    env: dict[str, Any] = field(msg, "env", dict, {})
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise ProtocolError(BAD_ARGS, f"run: bad environment name {key!r}")
        if value is not None and (not isinstance(value, str) or "\0" in value):
            raise ProtocolError(BAD_ARGS, f"run: environment value of {key} is not a string")
    return env


class Subscriber:
    """A stream that gets a process's output frames and, at the end, its exit."""

    def __init__(self, stream: Stream, owner: bool) -> None:
        self.stream = stream
        self.owner = owner           # the stream that started the process

    def send(self, ftype: FrameType, data: bytes) -> bool:
        """Send one output frame; False once the stream is gone."""
        try:
            self.stream.send(ftype, data)
            return True
        except AgentConnectionError:
            return False

    def finish(self, exit_msg: dict[str, Any]) -> None:
        """Send the exit and wake the stream's own thread, which then closes it."""
        try:
            self.stream.send_message(exit_msg)
        except AgentConnectionError:
            pass
        self.stream.shutdown_read()


class Process:
    """One command the agent started, from spawn to its exit."""

    def __init__(self, popen: subprocess.Popen[bytes], spec: RunSpec,
                 on_exit: Any) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.spec = spec
        self.started_at = time.time()
        self.exit: dict[str, Any] | None = None
        self.timed_out = False
        self.dropped = {FrameType.STDOUT: 0, FrameType.STDERR: 0}
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._stdin_lock = threading.Lock()
        self._subscribers: list[Subscriber] = []
        self._timer: threading.Timer | None = None

    # --- connection threads --------------------------------------------------------

    def attach(self, sub: Subscriber) -> dict[str, Any] | None:
        """Attach ``sub`` for the output from now on; the exit if already exited."""
        with self._lock:
            if self.exit is not None:
                return self.exit
            self._subscribers.append(sub)
            return None

    def detach(self, sub: Subscriber) -> None:
        """Detach ``sub``; a foreground command whose starter left is killed."""
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)
        if sub.owner and not self.spec.background:
            self.signal(signals.SIGKILL)

    def signal(self, sig: int, group: bool = True) -> bool:
        """Send ``sig`` to the process group (or the leader); False once reaped."""
        with self._lock:
            if self.popen.returncode is not None:
                return False
            try:
                (os.killpg if group else os.kill)(self.pid, sig)
            except ProcessLookupError:
                return False
            return True

    def write_stdin(self, data: bytes) -> None:
        """Write ``data`` to the command's stdin (blocking); EPIPE when it is closed."""
        with self._stdin_lock:
            pipe = self.popen.stdin
            if pipe is None or pipe.closed:
                raise BrokenPipeError(32, "the command's stdin is closed")
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(pipe.fileno(), view):]
            finally:
                if self.exit is not None:      # finish() could not close it
                    pipe.close()

    def close_stdin(self, wait: bool = True) -> None:
        """Close the command's stdin; with ``wait=False`` only if no write is under way."""
        if not self._stdin_lock.acquire(blocking=wait):
            return
        try:
            if self.popen.stdin is not None and not self.popen.stdin.closed:
                self.popen.stdin.close()
        finally:
            self._stdin_lock.release()

    def info(self) -> dict[str, Any]:
        """The process as the ``ps`` and ``attached`` replies describe it."""
        exit_msg = self.exit
        return {"pid": self.pid, "cmd": self.spec.display, "args": self.spec.argv,
                "env": self.spec.request_env, "cwd": self.spec.cwd, "user": self.spec.user,
                "background": self.spec.background, "started_at": self.started_at,
                "running": exit_msg is None,
                "exit_code": None if exit_msg is None else exit_msg["exit_code"]}

    # --- the pump thread -----------------------------------------------------------

    def start(self) -> None:
        """Start the timeout timer and the pump thread."""
        if self.spec.timeout is not None:
            self._timer = threading.Timer(self.spec.timeout, self._on_timeout)
            self._timer.daemon = True
            self._timer.start()
        threading.Thread(target=_OutputPump(self).run, name=f"agent-pump-{self.pid}",
                         daemon=True).start()

    def deliver(self, ftype: FrameType, data: bytes) -> None:
        """Send one chunk of output to every subscriber (blocking), or drop it."""
        with self._lock:
            subs = list(self._subscribers)
        if not subs:
            self.dropped[ftype] += len(data)
        for sub in subs:
            if not sub.send(ftype, data):
                self.detach(sub)

    def reap(self) -> bool:
        """Reap the leader if it exited (never blocks); True once reaped."""
        with self._lock:
            return self.popen.poll() is not None

    def finish(self) -> None:
        """Publish the exit to every subscriber; the process leaves the table's running set."""
        if self._timer is not None:
            self._timer.cancel()
        exit_msg = self._exit_message()
        with self._lock:
            self.exit = exit_msg
            subs, self._subscribers = self._subscribers, []
        self.close_stdin(wait=False)    # a writer blocked on a full pipe closes it itself
        for sub in subs:
            sub.finish(exit_msg)
        self._on_exit(self)

    def _on_timeout(self) -> None:
        with self._lock:
            if self.popen.returncode is not None:
                return
            self.timed_out = True
            try:
                os.killpg(self.pid, signals.SIGKILL)
            except ProcessLookupError:
                pass

    def _exit_message(self) -> dict[str, Any]:
        code = self.popen.returncode
        sig = -code if code < 0 else None
        error = None
        if sig is not None:
            error = f"killed by signal {sig} ({_signal_name(sig)})"
            code = 128 + sig
        if self.timed_out:
            error = f"timed out after {self.spec.timeout:g} s, process group killed"
        return {"type": EXIT, "pid": self.pid, "exit_code": code, "signal": sig,
                "timed_out": self.timed_out, "error": error,
                "stdout_dropped": self.dropped[FrameType.STDOUT],
                "stderr_dropped": self.dropped[FrameType.STDERR]}


def _signal_name(sig: int) -> str:
    try:
        return signals.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


class _OutputPump:
    """The pump thread of one process (see the module docstring)."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.sel = selectors.DefaultSelector()
        self.pipes: dict[int, tuple[Any, FrameType]] = {}
        for pipe, ftype in ((proc.popen.stdout, FrameType.STDOUT),
                            (proc.popen.stderr, FrameType.STDERR)):
            assert pipe is not None              # both are PIPE (ProcessTable.spawn)
            self.pipes[pipe.fileno()] = (pipe, ftype)
            self.sel.register(pipe.fileno(), selectors.EVENT_READ)
        self.pidfd = _pidfd_open(proc.pid)
        if self.pidfd is not None:
            self.sel.register(self.pidfd, selectors.EVENT_READ)

    def run(self) -> None:
        try:
            self._until_exit()
            self._drain_buffered()
            self.proc.finish()
            self._discard_until_eof()
        finally:
            self._close()

    def _until_exit(self) -> None:
        """Forward output until the leader is reaped."""
        while True:
            timeout = None if self.pidfd is not None else POLL_INTERVAL
            exited = self.pidfd is None
            for key, _ in self.sel.select(timeout):
                if key.fd == self.pidfd:
                    exited = True
                else:
                    self._forward(key.fd)
            if exited and self.proc.reap():
                return

    def _forward(self, fd: int) -> None:
        data = self._read(fd)
        if data:
            self.proc.deliver(self.pipes[fd][1], data)

    def _read(self, fd: int) -> bytes | None:
        """One chunk from a pipe; b"" at EOF (the pipe is then closed); None if empty."""
        try:
            data = os.read(fd, CHUNK_SIZE)
        except BlockingIOError:
            return None
        if not data:
            self.sel.unregister(fd)
            self.pipes.pop(fd)[0].close()
        return data

    def _drain_buffered(self) -> None:
        """After the leader's exit: forward what the pipes hold, without waiting."""
        for fd in list(self.pipes):
            os.set_blocking(fd, False)
            while fd in self.pipes:
                data = self._read(fd)
                if not data:
                    break
                self.proc.deliver(self.pipes[fd][1], data)

    def _discard_until_eof(self) -> None:
        """Read and drop what descendants still write, until they close the pipes."""
        if self.pidfd is not None:
            self.sel.unregister(self.pidfd)
        while self.pipes:
            for key, _ in self.sel.select():
                self._read(key.fd)

    def _close(self) -> None:
        for pipe, _ in self.pipes.values():
            pipe.close()
        self.pipes.clear()
        if self.pidfd is not None:
            os.close(self.pidfd)
        self.sel.close()


def _pidfd_open(pid: int) -> int | None:
    """A pidfd for ``pid`` (readable once it exits); None where Linux has none (< 5.3)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class ProcessTable:
    """The agent's processes by pid: running ones and recently exited background ones."""

    def __init__(self, keep_exited: int = 256) -> None:
        self._lock = threading.Lock()
        self._procs: dict[int, Process] = {}
        self._exited: collections.deque[Process] = collections.deque()
        self._keep = keep_exited

    def spawn(self, spec: RunSpec) -> Process:
        """Start ``spec``'s command (not yet pumped: call ``Process.start``)."""
        popen = subprocess.Popen(
            spec.argv, stdin=subprocess.PIPE if spec.stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=spec.env, cwd=spec.cwd,
            start_new_session=True, close_fds=True, **popen_identity(spec.identity))
        proc = Process(popen, spec, self._on_exit)
        with self._lock:
            self._procs[proc.pid] = proc
        return proc

    def get(self, pid: int) -> Process:
        """The process ``pid``; OSError(ESRCH) when the table has none."""
        with self._lock:
            proc = self._procs.get(pid)
        if proc is None:
            raise ProcessLookupError(3, f"no process {pid} started by the agent")
        return proc

    def list(self, include_exited: bool = False) -> list[Process]:
        with self._lock:
            procs = list(self._procs.values())
        return [p for p in procs if include_exited or p.exit is None]

    def kill_all(self) -> None:
        """SIGKILL every running process group (the agent is stopping)."""
        for proc in self.list():
            proc.signal(signals.SIGKILL)

    def _on_exit(self, proc: Process) -> None:
        with self._lock:
            if not proc.spec.background:
                if self._procs.get(proc.pid) is proc:
                    del self._procs[proc.pid]
                return
            self._exited.append(proc)
            while len(self._exited) > self._keep:
                old = self._exited.popleft()
                if self._procs.get(old.pid) is old:
                    del self._procs[old.pid]
