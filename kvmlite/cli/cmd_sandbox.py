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
``-c``, ``-n``, ``--9p`` for more shares, ...).
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
from kvmlite.vmm.config import ShareConfig, VmConfig

ROOT_TAG = "sandboxroot"
CWD_TAG = "sandboxcwd"
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
    parser.usage = "kvmlite sandbox [run options] -- CMD [ARGS...]"
    parser.epilog = EPILOG


def run(args: argparse.Namespace) -> int:
    log.setup(args.loglevel)
    command = list(getattr(args, "passthrough", None) or [])
    if not command:
        raise UsageError("give the command to run after '--': kvmlite sandbox -- CMD [ARGS...]")
    if args.kernel or args.image:
        raise UsageError("kvmlite sandbox boots the guest that can mount shares; -k is not taken")
    args.passthrough = None
    base = cmd_run.config_from_args(args, need_shares=True)
    config = sandbox_config(base, command, os.getcwd(), os.getuid(), os.getgid(), dict(os.environ))
    boot = BootFilter(READY_MARKER.encode())
    status = cmd_run.run_vm(config, wrap_output=boot.wrap)
    boot.show_unseen(sys.stderr.buffer)
    return status


def sandbox_config(base: VmConfig, command: list[str], cwd: str, uid: int, gid: int,
                   environ: dict[str, str]) -> VmConfig:
    """``base`` (what the run options gave, with the share guest's kernel)
    turned into the sandbox: the host's root as a read-only view with a
    tmpfs overlay, ``cwd`` shared read-write, ``command`` run in it as
    ``uid``/``gid``."""
    root = ShareConfig("/", ROOT_TAG, read_only=True, view_top=ROOT_TOP, view_hidden=ROOT_HIDDEN)
    here = ShareConfig.parse(f"{cwd},{CWD_TAG}")
    params = " ".join(p for p in (f"root={ROOT_TAG} rootfstype=9p rw kvmlite.overlay=1 quiet loglevel=1",
                                  base.params, encode_command(guest_command(command, here.path, uid, gid, environ)))
                      if p)
    return replace(base, shares=(root, here, *base.shares), params=params)


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
