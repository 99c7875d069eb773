"""Who a command runs as, and the environment it starts with.

A run request's ``user`` is a name or a uid.  The agent switches to it
through ``subprocess.Popen(user=, group=, extra_groups=)`` (setgroups,
setgid, setuid in the child, in that order), which only root may do; an
agent that is not root runs commands as itself and refuses any other user
with EPERM.
"""

from __future__ import annotations

import errno
import os
import pwd
from dataclasses import dataclass
from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    name: str
    home: str
    shell: str
    groups: tuple[int, ...] = ()


def current_identity() -> Identity:
    """The agent's own identity."""
    return _from_uid(os.geteuid(), os.getegid())


def resolve_user(user: str | int | None) -> Identity | None:
    """The identity a request names; None for the agent's own.

    Raises OSError(EINVAL) for an unknown user name and OSError(EPERM) when
    the agent is not root and the user is not itself.
    """
    if user is None or user == "":
        return None
    if isinstance(user, int) or user.isdigit():
        ident = _from_uid(int(user), None)
    else:
        ident = _from_name(user)
    if ident.uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise OSError(errno.EPERM, f"the agent is not root and cannot run as {user!r}")
    return ident


def popen_identity(ident: Identity | None) -> dict[str, Any]:
    """``Popen`` keyword arguments that switch to ``ident`` (none for the agent's own)."""
    if ident is None:
        return {}
    return {"user": ident.uid, "group": ident.gid, "extra_groups": list(ident.groups)}


def base_env(ident: Identity, extra: dict[str, str]) -> dict[str, str]:
    """The environment every command starts from, before the request's own.

    PATH, HOME, USER, LOGNAME, SHELL and LANG=C.UTF-8 for ``ident``, then the
    agent's ``--env`` values (``extra``) over them.
    """
    env = {"PATH": DEFAULT_PATH, "HOME": ident.home, "USER": ident.name,
           "LOGNAME": ident.name, "SHELL": ident.shell, "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def _from_name(name: str) -> Identity:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise OSError(errno.EINVAL, f"no such user: {name!r}") from None
    return _from_entry(entry)


def _from_uid(uid: int, gid: int | None) -> Identity:
    try:
        return _from_entry(pwd.getpwuid(uid))
    except KeyError:      # a uid with no passwd entry: its own group, home /
        return Identity(uid, uid if gid is None else gid, str(uid), "/", "/bin/sh")


def _from_entry(entry: pwd.struct_passwd) -> Identity:
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return Identity(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir or "/",
                    entry.pw_shell or "/bin/sh", groups)
