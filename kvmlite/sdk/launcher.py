"""A warm launcher for sandbox VMMs: one helper process per SDK process
that has already started Python and imported the VMM, and forks a VMM for
each sandbox (docs/sdk.md, "What a sandbox is"; ARCHITECTURE.md, "A
sandbox from Python").

Starting a VMM the plain way (``python -m kvmlite ...``) costs an
interpreter start and the VMM's imports every time; a sandbox restored
from a snapshot spends most of its start on that (over a second in the
emulated test host).  The launcher pays it once: it imports the VMM,
freezes its objects out of the garbage collector's reach (so children do
not dirty the pages they share with it) and then, per request, forks a
child that runs ``kvmlite ARGS...`` as the plain command would, in a new
session, with the request's environment, working directory and console.

The SDK talks to it over a ``SOCK_SEQPACKET`` pair: one message per
start (JSON ``{"argv", "env", "cwd"}`` with two descriptors, the console
file and one end of a status stream).  On the status stream the launcher
writes ``pid N`` after the fork and ``exit STATUS`` (negative: the signal)
when it has reaped the child.  The launcher stays single-threaded (it
forks) and ends when the SDK's end of its socket closes; VMMs it started
run on, as those started the plain way do.  ``KVMLITE_SANDBOX_LAUNCHER=0``
turns it off: every VMM is then started the plain way.
"""

from __future__ import annotations

import array
import gc
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import IO, Any, Sequence

ENV_SWITCH = "KVMLITE_SANDBOX_LAUNCHER"
PROCESS_NAME = b"kvmlite-vmm"             # what ps and top show for a launched VMM (comm)
REPLY_TIMEOUT = 30.0                      # seconds to wait for the launcher's "pid N"
MAX_REQUEST = 1 << 20
SERVE = "from kvmlite.sdk.launcher import main; main()"     # the launcher's command (python -c)
# What a sandbox's VMM imports: warm in the launcher, shared with every child.
WARM_MODULES = ("kvmlite.cli.main", "kvmlite.cli.cmd_run", "kvmlite.cli.cmd_sandbox", "kvmlite.vmm.vm",
                "kvmlite.vmm.snapshot.restore", "kvmlite.vmm.snapshot.save", "kvmlite.vmm.snapshot.cpustate",
                "kvmlite.devices.virtio.ninep", "kvmlite.devices.virtio.vsock", "kvmlite.devices.virtio.net",
                "kvmlite.devices.virtio.block", "kvmlite.devices.virtio.console", "kvmlite.devices.virtio.rng",
                "kvmlite.control.server", "kvmlite.guest.setup")


# --- the SDK's side ---------------------------------------------------------------------


class LaunchedProcess:
    """A VMM the launcher forked: the part of ``subprocess.Popen`` the SDK
    uses (``pid``, ``returncode``, ``poll``, ``wait``, ``kill``,
    ``terminate``).  A thread reads the status stream; when the launcher
    is gone before the child's exit is reported, the child's pidfd tells
    when it ends (its status is then unknown: 255)."""

    def __init__(self, status: socket.socket, pid: int, name: str, already: bytes = b"") -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._ended = threading.Event()
        self._pidfd_lock = threading.Lock()     # a closed pidfd's number could be another's by now
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:                         # already reaped: its status is on the stream
            self._pidfd = None
        threading.Thread(target=self._read_status, args=(status, already), daemon=True,
                         name=f"{name}:status").start()

    def _read_status(self, status: socket.socket, data: bytes) -> None:
        with status:
            try:
                while chunk := status.recv(256):
                    data += chunk
            except OSError:
                pass
        code: int | None = None
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("exit "):
                try:
                    code = int(line.split()[1])
                except (IndexError, ValueError):
                    pass
                break
        if code is None and self._pidfd is not None:        # the launcher died first: wait for the VMM
            select.select([self._pidfd], [], [])
        self.returncode = 255 if code is None else code
        with self._pidfd_lock:
            self._ended.set()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"VMM {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._pidfd_lock:
            if self._ended.is_set() or self._pidfd is None:
                return
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:          # exited, not yet reported
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class Launcher:
    """The SDK process's connection to its launcher (started on first use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.broken: str | None = None          # why it is not used (then VMMs start the plain way)

    def _ensure(self, env: dict[str, str]) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._proc = subprocess.Popen([sys.executable, "-c", SERVE], stdin=theirs,
                                          stdout=subprocess.DEVNULL, env=env, start_new_session=True)
        ours.set_inheritable(False)
        self._sock = ours
        return ours

    def start(self, args: Sequence[str], console: IO[bytes], env: dict[str, str], name: str) -> LaunchedProcess:
        """Fork ``kvmlite ARGS`` in the launcher; OSError when it cannot."""
        request = json.dumps({"argv": list(args), "env": env, "cwd": os.getcwd()}).encode()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                sock = self._ensure(env)
                fds = array.array("i", [console.fileno(), theirs.fileno()])
                sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            theirs.close()
            ours.settimeout(REPLY_TIMEOUT)
            line = b""
            while not line.endswith(b"\n"):
                chunk = ours.recv(64)
                if not chunk:
                    raise OSError("the launcher ended without starting the VMM")
                line += chunk
            ours.settimeout(None)
            first, _, rest = line.partition(b"\n")
            if not first.startswith(b"pid "):
                raise OSError(f"the launcher answered {first[:80]!r}")
        except BaseException:
            theirs.close()
            ours.close()
            raise
        return LaunchedProcess(ours, int(first.split()[1]), name, already=rest)     # rest: an exit already

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


_LAUNCHER = Launcher()


def plain_command(args: Sequence[str]) -> list[str]:
    """The command line that runs ``kvmlite ARGS`` the plain way."""
    return [sys.executable, "-m", "kvmlite", *args]


def start_vmm(args: Sequence[str], console: IO[bytes], env: dict[str, str],
              name: str) -> subprocess.Popen[bytes] | LaunchedProcess:
    """``kvmlite ARGS`` with its output to ``console``, in a session of its
    own: forked by the launcher, or started the plain way when the launcher
    is turned off or fails (once broken, it is not tried again).  Either
    way the process is reaped as soon as it ends."""
    if os.environ.get(ENV_SWITCH, "1") != "0" and _LAUNCHER.broken is None:
        try:
            return _LAUNCHER.start(args, console, env, name)
        except OSError as exc:
            _LAUNCHER.broken = str(exc)
            _LAUNCHER.close()
    proc = subprocess.Popen(plain_command(args), stdin=subprocess.DEVNULL, stdout=console,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)
    threading.Thread(target=proc.wait, daemon=True, name=f"{name}:reaper").start()
    return proc


# --- the launcher -----------------------------------------------------------------------


def _warm() -> None:
    for module in WARM_MODULES:
        try:
            importlib.import_module(module)
        except Exception:                       # the child imports it again and reports the error
            pass
    gc.collect()
    gc.freeze()


def _set_process_name() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(PROCESS_NAME), 0, 0, 0)    # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _child(request: dict[str, Any], console: int, keep_closed: list[int]) -> None:
    """In the forked child: become ``kvmlite ARGS`` and never return."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in keep_closed:
            os.close(fd)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(console, 1)
        os.dup2(console, 2)
        os.close(devnull)
        os.close(console)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        _set_process_name()
        sys.argv = ["kvmlite", *request["argv"]]
        from kvmlite.cli.main import main

        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


def _receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One request and its descriptors; None when the SDK's end closed."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(2 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    try:
        request = json.loads(data)
    except ValueError:
        request = None
    if not isinstance(request, dict) or len(fds) != 2:      # not from the SDK: dropped
        for fd in fds:
            os.close(fd)
        return {}, []
    return request, list(fds)


def _send(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode())
    except OSError:                             # the SDK is gone: nobody to tell
        pass


def serve(sock: socket.socket) -> None:
    """Fork a VMM per request until the SDK's end closes; report exits."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, int] = {}               # pid -> status stream fd
    while True:
        ready, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in ready:
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
            _reap(children)
        if sock not in ready:
            continue
        got = _receive(sock)
        if got is None:
            return
        request, fds = got
        if not fds:
            continue
        console, status = fds
        pid = os.fork()
        if pid == 0:
            _child(request, console, [sock.fileno(), wake_r, wake_w, status, *children.values()])
        os.close(console)
        children[pid] = status
        _send(status, f"pid {pid}\n")
        _reap(children)


def _reap(children: dict[int, int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = children.pop(pid, None)
        if fd is not None:
            _send(fd, f"exit {os.waitstatus_to_exitcode(status)}\n")
            os.close(fd)


def main() -> None:
    sock = socket.socket(fileno=os.dup(0))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _warm()
    serve(sock)
