"""``from kvmlite import Sandbox``: throwaway VMs from Python, in the shape
of E2B's SDK (docs/sdk.md lists where it differs).

A sandbox is ``kvmlite sandbox --agent`` run as a process of its own (the
VMM; it outlives the Python process that made it, until it is killed or
its timeout passes, as an E2B sandbox does), forked by this process's
warm launcher (:mod:`kvmlite.sdk.launcher`) so that it pays no Python
start or imports.  Its guest sees the host's
programs read-only with a tmpfs overlay for writes, and nothing of the
host's files but the shares it is given; the agent (:mod:`kvmlite.agent`)
in it serves ``sb.commands`` and ``sb.files`` over virtio-vsock, reached
through the VM's vsock Unix socket (one stream per operation).

Lifecycle:

* :meth:`Sandbox.create` starts the VMM with its console going to an
  unlinked temporary file (read back when the boot fails, gone with the
  last descriptor) and waits until the agent answers a hello; a VMM that
  exits first raises :class:`SandboxError` with its last console lines.
* The deadline lives in the VMM (``--timeout``; ``set_timeout`` moves it
  through the control socket), so it holds even when this process ends.
* :meth:`kill` stops the VMM; its sockets and directory go with it.
  Every call waiting on the agent then raises at once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any, Mapping, Sequence

from kvmlite.agent.client import AgentClient, connect_hybrid
from kvmlite.agent.errors import AgentConnectionError, SandboxError
from kvmlite.cli.cmd_sandbox import AGENT_PORT, PORT_LABEL, SANDBOX_LABEL
from kvmlite.sdk import snapshots
from kvmlite.sdk.commands import Commands
from kvmlite.sdk.files import Filesystem
from kvmlite.sdk.launcher import LaunchedProcess, plain_command, start_vmm

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT = 300            # seconds a sandbox lives (E2B's default)
DEFAULT_BOOT_TIMEOUT = 120.0     # seconds to wait for the agent's first answer
CONSOLE_TAIL = 4096              # bytes of console shown when a boot fails
POLL = 0.1


@dataclass(frozen=True)
class SandboxInfo:
    """What :meth:`Sandbox.get_info` and :meth:`Sandbox.list` tell (E2B's names)."""

    sandbox_id: str
    state: str
    started_at: float | None            # seconds since the epoch
    end_at: float | None                # when its timeout stops it
    metadata: dict[str, str] = field(default_factory=dict)
    cpu_count: int = 0
    memory_mb: int = 0


class Sandbox:
    """One sandbox.  ``Sandbox(...)`` and ``Sandbox.create(...)`` are the same."""

    def __init__(self, template: str | None = None, timeout: float = DEFAULT_TIMEOUT, *,
                 metadata: Mapping[str, str] | None = None, envs: Mapping[str, str] | None = None,
                 cpus: int = 1, memory_mb: int = 512, shares: Sequence[str] = (),
                 network: bool | str = False, name: str | None = None,
                 boot_timeout: float = DEFAULT_BOOT_TIMEOUT, request_timeout: float | None = None,
                 snapshot_cache: bool = True,
                 _attach: dict[str, Any] | None = None, _restore: str | None = None) -> None:
        """Start a sandbox and wait until its agent answers.

        ``template`` must be None (one template: the host's userland).
        ``timeout``: seconds until the sandbox is killed.  ``envs``: the
        environment every command gets (a command's own ``envs`` win).
        ``shares``: host directories, ``DIR[,TAG][,ro]`` as ``--9p`` takes
        them (mounted at /mnt/TAG).  ``network``: False for none, True for
        user-mode networking (passt), or an ``-n`` option string.
        ``snapshot_cache``: start from the snapshot of a sandbox with the
        same settings saved right after its agent first answered (and save
        one, after a cold boot, when there is none): docs/sdk.md.
        """
        self.envs = dict(envs or {})
        self._proc: subprocess.Popen[bytes] | LaunchedProcess | None = None
        self._console: IO[bytes] | None = None
        self.restored_from: str | None = None     # the snapshot it started from, if any
        self.snapshot_note: str | None = None     # why the start-up snapshot was not used or not saved
        if _attach is not None:
            self.sandbox_id, socket_path, port = _attach["name"], _attach["socket"], _attach["port"]
        else:
            if template is not None:
                raise SandboxError(f"template {template!r}: kvmlite has one template, the host's userland "
                                   "(leave template unset)")
            self.sandbox_id = name or f"sb-{secrets.token_hex(4)}"
            socket_path, port = self._socket_path_of(self.sandbox_id), AGENT_PORT
        self._socket_path, self._port = socket_path, port
        self._agent = AgentClient(lambda: connect_hybrid(self._socket_path, self._port, request_timeout or 10.0))
        self.commands = Commands(self._agent, self.envs)
        self.files = Filesystem(self._agent)
        if _attach is not None:
            return
        argv = self._argv(timeout, metadata or {}, cpus, memory_mb, shares, network)
        if _restore is not None:
            self._start_restored(_restore, timeout, metadata or {}, boot_timeout)
        elif snapshot_cache:
            self._start_cached(argv, timeout, metadata or {}, boot_timeout)
        else:
            self._start(argv)
            self._wait_ready(boot_timeout)

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> "Sandbox":
        """E2B's spelling of ``Sandbox(...)``."""
        return cls(*args, **kwargs)

    # --- starting ----------------------------------------------------------------------

    @staticmethod
    def _socket_path_of(sandbox_id: str) -> str:
        from kvmlite.control.registry import Registry

        return str(Registry().vm_dir(sandbox_id) / "vsock.sock")

    def _argv(self, timeout: float, metadata: Mapping[str, str], cpus: int, memory_mb: int,
              shares: Sequence[str], network: bool | str) -> list[str]:
        argv = ["sandbox", "--agent", "--name", self.sandbox_id,
                "-c", str(cpus), "-m", str(memory_mb), "--timeout", f"{timeout:g}",
                "-n", network if isinstance(network, str) else ("mode=user" if network else "mode=none")]
        for share in shares:
            argv += ["--9p", share]
        argv += _label_args(metadata)
        return argv

    def _start(self, args: list[str]) -> None:
        """Start the VMM (``kvmlite sandbox --agent`` or ``run --restore``),
        forked by this process's warm launcher (:mod:`kvmlite.sdk.launcher`)."""
        self._console = _console_file()
        env = dict(os.environ, PYTHONPATH=_package_path(os.environ.get("PYTHONPATH")))
        self._proc = start_vmm(args, self._console, env, self.sandbox_id)

    def _start_cached(self, argv: list[str], timeout: float, metadata: Mapping[str, str],
                      boot_timeout: float) -> None:
        """From the start-up snapshot when there is one; else boot, and save
        one for next time.  A snapshot that fails to start is dropped and the
        sandbox boots cold instead."""
        key = snapshots.cache_key(plain_command(argv), _guest_files())
        snap = snapshots.cached(key)
        if snap is not None:
            try:
                self._start_restored(str(snap), timeout, metadata, boot_timeout)
                return
            except SandboxError as exc:
                self._note(f"the start-up snapshot {snap} did not start ({exc}); dropped it and booted")
                shutil.rmtree(snap, ignore_errors=True)
        self._start(argv)
        self._wait_ready(boot_timeout)
        try:
            tmp = snapshots.new_cache_dir()
        except OSError as exc:                      # a read-only cache: no snapshot kept
            self._note(f"no start-up snapshot saved: {exc}")
            return
        try:
            with self._control() as control:
                control.snapshot(str(tmp))          # the sandbox runs on
        except Exception as exc:                    # no cache this time; the sandbox is fine
            self._note(f"no start-up snapshot saved: {exc}")
            shutil.rmtree(tmp, ignore_errors=True)
            return
        snapshots.publish(tmp, key)

    def _note(self, text: str) -> None:
        self.snapshot_note = text
        log.warning("sandbox %s: %s", self.sandbox_id, text)

    def _start_restored(self, directory: str, timeout: float, metadata: Mapping[str, str],
                        boot_timeout: float) -> None:
        argv = ["run", "--restore", directory, "--name", self.sandbox_id,
                "--timeout", f"{timeout:g}", *_label_args(metadata)]
        self._start(argv)
        self._wait_ready(boot_timeout)
        self.restored_from = directory
        self._after_restore()

    def _after_restore(self) -> None:
        """What a restored guest needs and the snapshot cannot give: its wall
        clock set to now (it went on from the instant it was saved), its
        random number generator reseeded with fresh host randomness, so
        sandboxes started from one snapshot do not share random numbers,
        and each NIC's MAC changed to the one this sandbox's VM gave it
        (the VMM's ``info`` names the saved one the guest still uses).  The
        agent (root) does it all in its own process: ``restored``."""
        with self._control() as control:
            nics = control.info().get("nics", [])
        macs = [(nic["restored_mac"], nic["mac"]) for nic in nics if "restored_mac" in nic]
        self._agent.restored(time.time(), os.urandom(64), macs)

    def _wait_ready(self, boot_timeout: float) -> None:
        deadline = time.monotonic() + boot_timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                message = (f"sandbox {self.sandbox_id}: the VM exited with status {self._proc.returncode} "
                           f"before its agent answered: {self._console_tail()}")
                self.kill()                   # closes the console file
                raise SandboxError(message)
            if os.path.exists(self._socket_path):
                try:
                    self._agent.hello()
                    return
                except AgentConnectionError:
                    pass
            if time.monotonic() > deadline:
                message = (f"sandbox {self.sandbox_id}: no answer from its agent within "
                           f"{boot_timeout:g} s: {self._console_tail()}")
                self.kill()                   # closes the console file: read it first
                raise SandboxError(message)
            time.sleep(POLL)

    def _console_tail(self) -> str:
        """The last lines of the VMM's console (its own error line last when it failed)."""
        if self._console is None:
            return "(no console)"
        self._console.seek(0, os.SEEK_END)
        size = self._console.tell()
        self._console.seek(max(0, size - CONSOLE_TAIL))
        lines = [line for line in self._console.read().decode(errors="replace").splitlines() if line.strip()]
        return " | ".join(lines[-8:]) or "(the console is empty)"

    # --- the running sandbox -----------------------------------------------------------

    def _control(self):  # type: ignore[no-untyped-def]
        from kvmlite.control.client import ControlClient

        return ControlClient(self.sandbox_id)

    def is_running(self) -> bool:
        try:
            with self._control() as control:
                return control.info().get("state") in ("running", "paused", "created")
        except Exception:
            return False

    def kill(self) -> bool:
        """Stop the sandbox now; False when it was not running."""
        stopped = False
        try:
            with self._control() as control:
                control.stop(force=True)
                stopped = True
        except Exception:
            pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            stopped = stopped or self._proc.returncode is not None
        if self._console is not None:
            self._console.close()
            self._console = None
        return stopped

    def set_timeout(self, timeout: float) -> None:
        """Kill the sandbox ``timeout`` seconds from now (replaces the earlier deadline)."""
        with self._control() as control:
            control.set_timeout(timeout)

    def pause(self) -> str:
        """E2B's pause: save the sandbox (its memory and every process in it)
        and stop it; ``Sandbox.connect(sandbox_id)`` resumes it where it
        was.  Returns the sandbox's id."""
        directory = snapshots.paused_dir(self.sandbox_id)
        if directory.exists():
            shutil.rmtree(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        with self._control() as control:
            control.snapshot(str(directory), stop=True)
        if self._proc is not None:
            self._proc.wait(timeout=60)
        if self._console is not None:
            self._console.close()
            self._console = None
        return self.sandbox_id

    def fork(self, count: int = 1, *, timeout: float = DEFAULT_TIMEOUT,
             metadata: Mapping[str, str] | None = None) -> list["Sandbox"]:
        """``count`` new sandboxes, each going on from this one's state now
        (its files, processes and memory); this one runs on.  Each gets its
        own id, socket and deadline (``timeout``)."""
        if count < 1:
            raise SandboxError(f"fork: count {count} must be at least 1")
        tmp = snapshots.new_cache_dir()
        clones: list[Sandbox] = []
        try:
            with self._control() as control:
                control.snapshot(str(tmp))
            for _ in range(count):
                clones.append(Sandbox(timeout=timeout, metadata=metadata, envs=self.envs, _restore=str(tmp)))
        except BaseException:
            for clone in clones:
                clone.kill()
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)      # the clones' mappings keep the memory
        return clones

    def get_info(self) -> SandboxInfo:
        with self._control() as control:
            return _info(self.sandbox_id, control.info())

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def __repr__(self) -> str:
        return f"Sandbox(sandbox_id={self.sandbox_id!r})"

    # --- every sandbox -----------------------------------------------------------------

    @classmethod
    def connect(cls, sandbox_id: str, *, timeout: float = DEFAULT_TIMEOUT,
                request_timeout: float | None = None) -> "Sandbox":
        """The sandbox ``sandbox_id`` (made by this or another process):
        attached to when it runs, resumed (with ``timeout``) when it was
        paused with :meth:`pause`."""
        from kvmlite.control.client import ControlClient

        paused = snapshots.paused_dir(sandbox_id)
        try:
            with ControlClient(sandbox_id) as control:
                info = control.info()
        except Exception as exc:
            if (paused / "state").is_file():
                return cls._resume(sandbox_id, str(paused), timeout, request_timeout)
            raise SandboxError(f"sandbox {sandbox_id}: not running and not paused ({exc})") from None
        labels = info.get("labels", {})
        if labels.get(SANDBOX_LABEL) != "1" or "vsock" not in info:
            raise SandboxError(f"{sandbox_id} is a VM but not a sandbox (no agent)")
        attach = {"name": sandbox_id, "socket": info["vsock"]["socket"],
                  "port": int(labels.get(PORT_LABEL, AGENT_PORT))}
        return cls(_attach=attach, request_timeout=request_timeout)

    @classmethod
    def _resume(cls, sandbox_id: str, directory: str, timeout: float,
                request_timeout: float | None) -> "Sandbox":
        from kvmlite.vmm.snapshot.files import read_state

        _header, state = read_state(directory)
        labels = {k: v for k, v in state.get("config", {}).get("labels", []) if not k.startswith("kvmlite.")}
        sandbox = cls(name=sandbox_id, timeout=timeout, metadata=labels, request_timeout=request_timeout,
                      _restore=directory)
        shutil.rmtree(directory, ignore_errors=True)    # its mapping keeps the memory
        return sandbox

    @staticmethod
    def list() -> list[SandboxInfo]:
        """Every running sandbox of this user."""
        from kvmlite.control.client import ControlClient
        from kvmlite.control.registry import Registry

        found = []
        for name in Registry().names():
            try:
                with ControlClient(name) as control:
                    info = control.info()
            except Exception:
                continue
            if info.get("labels", {}).get(SANDBOX_LABEL) == "1":
                found.append(_info(name, info))
        paused_root = snapshots.paused_dir("x").parent
        if paused_root.is_dir():
            running = {info.sandbox_id for info in found}
            found += [SandboxInfo(sandbox_id=p.name, state="paused", started_at=None, end_at=None)
                      for p in sorted(paused_root.iterdir()) if (p / "state").is_file() and p.name not in running]
        return found


def _info(name: str, info: dict[str, Any]) -> SandboxInfo:
    labels = info.get("labels", {})
    uptime = float(info.get("uptime_s", 0.0))
    return SandboxInfo(sandbox_id=name, state=str(info.get("state")), started_at=round(time.time() - uptime, 3),
                       end_at=info.get("end_at"),
                       metadata={k: v for k, v in labels.items() if not k.startswith("kvmlite.")},
                       cpu_count=int(info.get("vcpus", 0)), memory_mb=int(info.get("memory_mib", 0)))


def _label_args(metadata: Mapping[str, str]) -> list[str]:
    return [arg for key, value in metadata.items() for arg in ("--label", f"{key}={value}")]


def _console_file() -> IO[bytes]:
    """An unlinked temporary file for a VMM's console, in append mode: the
    VMM writes through the same open file (and offset) as this process
    seeks in to read the tail, so without it a write could land where the
    tail was being read instead of at the end."""
    console = tempfile.TemporaryFile(prefix="kvmlite-sandbox-")
    flags = fcntl.fcntl(console.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(console.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)
    return console


def _guest_files() -> list[str]:
    """The kernel and initramfs a sandbox boots (what the start-up cache depends on)."""
    from kvmlite.guest.setup import default_guest

    guest = default_guest(shares=True)
    return [str(guest.kernel), str(guest.initrd)] if guest is not None else []


def _package_path(current: str | None) -> str:
    """PYTHONPATH for the VMM: this package first, so the VMM is this kvmlite."""
    from kvmlite.cli.cmd_sandbox import package_parent

    here = str(package_parent())
    return here if not current else f"{here}{os.pathsep}{current}"
