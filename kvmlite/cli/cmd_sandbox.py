"""``kvmlite sandbox [run options] -- CMD [ARGS...]``: run a host program in
a throwaway VM (kvmtool's ``lkvm sandbox``).

The guest's root is the host's userland, read-only over virtio-9p: the
directories that hold programs and libraries (:data:`ROOT_TOP`), with
``/etc`` less its secrets (:data:`ROOT_HIDDEN`); ``/home``, ``/root``,
``/run``, ``/tmp``, ``/var`` and the rest do not exist for the guest (the
9p server hides them: the guest cannot reach them however it asks). A tmpfs
overlay takes every write to that root, so ``pip install`` or a write to
``/usr`` stays inside the VM and is gone with it. The current directory is
shared read-write at the same path and is the command's working directory.
CMD runs as the caller's uid and gid with a small environment; its output
comes to the terminal (stdout and stderr both, through the guest console)
and its exit status is kvmlite's.

The guest is the default guest that can mount shares (``kvmlite setup``
prepares it). Everything ``kvmlite run`` takes works here too (``-m``,
``-c``, ``-n``, ``--9p`` for more shares, ``--timeout``, ...).

``kvmlite sandbox --agent`` (what the Python SDK starts, docs/sdk.md) runs
no command: the guest's init starts the sandbox agent
(:mod:`kvmlite.agent`, run by the host's python3 from the read-only root,
with this package shared read-only beside it) as root on vsock port
``--agent-port``, and the VM lives until it is stopped, its timeout passes
or the agent ends.  The current directory is not shared then: an agent
sandbox sees nothing of the host's files but its programs and the shares
it is given.  Host programs reach the agent through the VM's vsock socket
(``kvmlite exec``, the SDK).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import replace
from typing import Callable

from kvmlite import log
from kvmlite.cli import cmd_run
from kvmlite.errors import UsageError
from kvmlite.guest.cmdline import encode_command
from kvmlite.guest.initscript import READY_MARKER
from kvmlite.vmm.config import ShareConfig, VmConfig, VsockConfig

ROOT_TAG = "sandboxroot"
CWD_TAG = "sandboxcwd"
PACKAGE_TAG = "kvmlitepkg"              # this package, read-only, for the agent
AGENT_PORT = 1024                       # the agent's vsock port (kvmlite.agent's default)
AGENT_CID = 3                           # the guest's vsock CID when --vsock is not given
AGENT_HOME = "/home/user"               # the agent's working directory and HOME, on the overlay
SANDBOX_LABEL = "kvmlite.sandbox"       # labels: marks an agent sandbox for Sandbox.list()
PORT_LABEL = "kvmlite.agent_port"
# What of the host's root the guest sees: programs and libraries.
ROOT_TOP = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "opt")
# Never shown, even read-only: credentials, keys and the like.
ROOT_HIDDEN = ("etc/shadow", "etc/shadow-", "etc/gshadow", "etc/gshadow-", "etc/ssh", "etc/sudoers",
               "etc/sudoers.d", "etc/ssl/private", "etc/security/opasswd", "etc/krb5.keytab",
               "etc/credstore", "etc/credstore.encrypted", "etc/NetworkManager/system-connections",
               "etc/wireguard", "etc/ppp/chap-secrets", "etc/ppp/pap-secrets")
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EPILOG = """The guest sees the host's programs and libraries read-only (writes go to a tmpfs
and vanish), the current directory read-write at the same path, and nothing of
/home, /root, /run, /tmp or /etc's secrets. Exit status: the command's, or as
for 'kvmlite run' when the guest fails."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cmd_run.add_arguments(parser)
    a = parser.add_argument_group("agent options (the Python SDK's sandboxes)")
    a.add_argument("--agent", action="store_true",
                   help="run no command: start the sandbox agent in the guest and keep the VM until it is "
                        "stopped or its --timeout passes; host programs reach it through the vsock socket "
                        "(kvmlite exec -n NAME -- CMD)")
    a.add_argument("--agent-port", type=int, default=AGENT_PORT, metavar="PORT",
                   help=f"the agent's vsock port (default {AGENT_PORT})")
    parser.usage = "kvmlite sandbox [run options] -- CMD [ARGS...]\n       kvmlite sandbox --agent [run options]"
    parser.epilog = EPILOG


def run(args: argparse.Namespace) -> int:
    log.setup(args.loglevel)
    if args.restore is not None:
        if args.agent:
            raise UsageError("--restore: the snapshot holds the sandbox and its agent; drop --agent")
        return cmd_run.run_restored(args)        # the saved VM is the sandbox, as it was
    command = list(getattr(args, "passthrough", None) or [])
    if args.agent and command:
        raise UsageError("--agent runs no command: drop what follows '--' (use kvmlite exec to run one)")
    if not command and not args.agent:
        raise UsageError("give the command to run after '--': kvmlite sandbox -- CMD [ARGS...]")
    if args.kernel or args.image:
        raise UsageError("kvmlite sandbox boots the guest that can mount shares; -k is not taken")
    args.passthrough = None
    base = cmd_run.config_from_args(args, need_shares=True)
    if args.agent:
        labels = base.labels
        config = agent_config(replace(base, labels=()), args.agent_port, os.getuid(), os.getgid(), labels)
        return cmd_run.run_vm(config)
    config = sandbox_config(base, command, os.getcwd(), os.getuid(), os.getgid(), dict(os.environ))
    boot = BootFilter(READY_MARKER.encode())
    status = cmd_run.run_vm(config, wrap_output=boot.wrap)
    boot.show_unseen(sys.stderr.buffer)
    return status


def root_share() -> ShareConfig:
    """The host's root as the guest sees it: programs and libraries, read-only."""
    return ShareConfig("/", ROOT_TAG, read_only=True, view_top=ROOT_TOP, view_hidden=ROOT_HIDDEN)


def _root_params(base: VmConfig, command: str) -> str:
    return " ".join(p for p in (f"root={ROOT_TAG} rootfstype=9p rw kvmlite.overlay=1 quiet loglevel=1",
                                base.params, encode_command(command)) if p)


def sandbox_config(base: VmConfig, command: list[str], cwd: str, uid: int, gid: int,
                   environ: dict[str, str]) -> VmConfig:
    """``base`` (what the run options gave, with the share guest's kernel)
    turned into the sandbox: the host's root as a read-only view with a
    tmpfs overlay, ``cwd`` shared read-write, ``command`` run in it as
    ``uid``/``gid``."""
    here = ShareConfig.parse(f"{cwd},{CWD_TAG}")
    params = _root_params(base, guest_command(command, here.path, uid, gid, environ))
    return replace(base, shares=(root_share(), here, *base.shares), params=params)


def agent_config(base: VmConfig, port: int, uid: int, gid: int,
                 labels: tuple[tuple[str, str], ...] = ()) -> VmConfig:
    """``base`` turned into an agent sandbox: the read-only root and overlay,
    this package shared read-only, a vsock device (CID 3 unless ``base``
    has one), and the agent started as root on ``port``; the agent's
    working directory :data:`AGENT_HOME` belongs to ``uid``/``gid``."""
    if not 1 <= port <= 0xFFFF_FFFE:
        raise UsageError(f"--agent-port {port}: give a vsock port from 1 to 4294967294")
    package = ShareConfig(str(package_parent()), PACKAGE_TAG, read_only=True, view_top=("kvmlite",))
    vsock = base.vsock or VsockConfig(AGENT_CID)
    marks = ((SANDBOX_LABEL, "1"), (PORT_LABEL, str(port)), *labels)
    return replace(base, shares=(root_share(), package, *base.shares), vsock=vsock,
                   params=_root_params(base, agent_command(port, uid, gid, guest_python())),
                   labels=base.labels + marks)


def package_parent() -> "Path":
    """The directory that holds this ``kvmlite`` package."""
    from pathlib import Path

    import kvmlite

    return Path(kvmlite.__file__).resolve().parent.parent


def guest_python() -> str:
    """The host's python3 as the guest sees it: this interpreter when it lives
    in the directories the root view shows, else /usr/bin/python3."""
    for candidate in (sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3"):
        top = candidate.lstrip("/").split("/", 1)[0]
        if candidate and top in ROOT_TOP and os.access(candidate, os.X_OK):
            return candidate
    raise UsageError(f"the agent needs a python3 the sandbox can see (under /{', /'.join(ROOT_TOP)}); "
                     f"{sys.executable} is not, and /usr/bin/python3 is missing")


def agent_command(port: int, uid: int, gid: int, python: str) -> str:
    """The shell line the guest's init runs as root: /tmp and the agent's
    home made, then the agent (which ends the VM when it exits)."""
    q = shlex.quote
    env = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "PYTHONPATH": f"/mnt/{PACKAGE_TAG}",
           "PYTHONDONTWRITEBYTECODE": "1"}
    steps = [
        "mkdir -p /tmp",
        "mount -t tmpfs -o mode=1777 tmpfs /tmp",
        f"mkdir -p {AGENT_HOME}",
        f"chown {uid}:{gid} {AGENT_HOME}",
        f"cd {AGENT_HOME}",
        "exec env -i {0} {1} -B -m kvmlite.agent --vsock-port {2} --workdir {3} --env HOME={3}".format(
            " ".join(q(f"{k}={v}") for k, v in env.items()), q(python), port, AGENT_HOME),
    ]
    return " && ".join(steps)


def guest_command(command: list[str], cwd: str, uid: int, gid: int, environ: dict[str, str]) -> str:
    """The shell line the guest's init runs as root after switching to the
    sandbox root: /tmp and the home directory made, the current directory
    mounted at its host path, then ``command`` as ``uid``/``gid``."""
    home = environ.get("HOME") or cwd
    env = {"PATH": GUEST_PATH, "HOME": home, "PWD": cwd, "TERM": environ.get("TERM", "linux"),
           "LANG": environ.get("LANG", "C.UTF-8"), "USER": environ.get("USER", str(uid)),
           "LOGNAME": environ.get("LOGNAME", environ.get("USER", str(uid)))}
    q = shlex.quote
    steps = [
        "mkdir -p /tmp",
        "mount -t tmpfs -o mode=1777 tmpfs /tmp",
        f"mkdir -p {q(cwd)} {q(home)}",
        f"chown {uid}:{gid} {q(home)}",
        f"mount --bind /mnt/{CWD_TAG} {q(cwd)}",
        f"cd {q(cwd)}",
        "exec setpriv --reuid={0} --regid={1} --clear-groups env -i {2} {3}".format(
            uid, gid, " ".join(q(f"{k}={v}") for k, v in env.items()), shlex.join(command)),
    ]
    return " && ".join(steps)


class BootFilter:
    """Hides the guest's boot (kernel messages, the init's ready line): the
    console reaches the terminal only after the init's ready marker, which
    comes before the command starts.  If the marker never comes, what was
    held back (the boot's own error) is shown when the VM ends."""

    KEEP = 1 << 16                  # bytes of a boot that never got ready kept to show

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.passing = False
        self.held = bytearray()

    def wrap(self, sink: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def output(data: bytes) -> None:
            if self.passing:
                sink(data)
                return
            rest = self.feed(data)
            if rest:
                sink(rest)
        return output

    def feed(self, data: bytes) -> bytes:
        """Take console bytes before the marker line ended; what follows it."""
        self.held.extend(data)
        at = self.held.find(self.marker)
        end = self.held.find(b"\n", at) if at >= 0 else -1
        if end < 0:
            if len(self.held) > 4 * self.KEEP:
                del self.held[: len(self.held) - self.KEEP]
            return b""
        self.passing = True
        rest = bytes(self.held[end + 1:])
        self.held.clear()
        return rest

    def show_unseen(self, out) -> None:   # type: ignore[no-untyped-def]
        if not self.passing and self.held:
            out.write(bytes(self.held))
            out.flush()
