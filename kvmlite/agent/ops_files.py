"""The agent's file requests: read, write, stat, list, remove, rename, mkdir.

Paths are the guest's; a relative one is taken from the agent's working
directory.  Every operation runs with the agent's own identity.  Symbolic
links are never followed by list, remove or rename; stat follows them only
when asked (``follow``); read and write follow them as open(2) does.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
from typing import Any, Callable

from .config import AgentConfig
from .protocol import (BAD_ARGS, CHUNK_SIZE, END, ENTRIES, ENTRY, FILE, LIST, MADE, MKDIR,
                       READ, REMOVE, RENAME, STAT, WRITE, FrameType, batches, dump_json,
                       encode_batch, error_from_oserror, field, path_field)
from .errors import ProtocolError
from .wire import Stream

Handler = Callable[[Stream, dict[str, Any]], None]
MAX_DEPTH = 64


def entry_info(path: str, st: os.stat_result) -> dict[str, Any]:
    """A file's description on the wire (docs/agent.md, "Entries")."""
    info = {"name": os.path.basename(path.rstrip("/")) or "/", "path": path,
            "type": _kind(st.st_mode), "size": st.st_size,
            "mode": stat.S_IMODE(st.st_mode), "permissions": stat.filemode(st.st_mode),
            "uid": st.st_uid, "gid": st.st_gid, "owner": _user_name(st.st_uid),
            "group": _group_name(st.st_gid), "mtime": st.st_mtime, "symlink_target": None}
    if stat.S_ISLNK(st.st_mode):
        try:
            info["symlink_target"] = os.readlink(path)
        except OSError:
            pass
    return info


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class FileOps:
    """File requests, relative paths resolved against ``config.workdir``."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config

    def handlers(self) -> dict[str, Handler]:
        return {READ: self.read, WRITE: self.write, STAT: self.stat, LIST: self.list,
                REMOVE: self.remove, RENAME: self.rename, MKDIR: self.mkdir}

    def _path(self, msg: dict[str, Any], key: str = "path") -> str:
        return self.config.resolve(path_field(msg, key))

    def read(self, stream: Stream, msg: dict[str, Any]) -> None:
        """A regular file's contents: ``file``, DATA frames, ``end`` with the size sent."""
        path = self._path(msg)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(21, "Is a directory", path)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(22, "Not a regular file", path)
            os.set_blocking(fd, True)
            stream.send_message({"type": FILE, "entry": entry_info(path, st)})
            sent = _send_file(stream, fd)
        finally:
            os.close(fd)
        stream.send_message({"type": END, "size": sent})

    def write(self, stream: Stream, msg: dict[str, Any]) -> None:
        """Create or truncate a file (and its missing parents) from DATA frames."""
        path = self._path(msg)
        mode = field(msg, "mode", int, 0o644) & 0o7777
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                         | os.O_NOCTTY, mode)
        except OSError as exc:
            stream.send_message(error_from_oserror(exc))
            stream.receive_data(FrameType.DATA, lambda _data: None)   # drop the data
            return
        try:
            written = stream.receive_data(FrameType.DATA, lambda data: _write_all(fd, data))
        finally:
            os.close(fd)
        if written:
            stream.send_message({"type": ENTRY, "entry": entry_info(path, os.stat(path))})

    def stat(self, stream: Stream, msg: dict[str, Any]) -> None:
        path = self._path(msg)
        st = os.stat(path) if field(msg, "follow", bool, False) else os.lstat(path)
        stream.send_message({"type": ENTRY, "entry": entry_info(path, st)})

    def list(self, stream: Stream, msg: dict[str, Any]) -> None:
        """A directory's entries to ``depth`` levels, in batches, then ``end``."""
        path = self._path(msg)
        depth = field(msg, "depth", int, 1)
        if not 1 <= depth <= MAX_DEPTH:
            raise ProtocolError(BAD_ARGS, f"list: 'depth' must be 1 to {MAX_DEPTH}")
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise NotADirectoryError(20, "Not a directory", path)
        items = [dump_json(info) for info in _walk(path, depth)]
        for run in batches(items):
            stream.writer.send_raw(encode_batch(ENTRIES, "entries", run))
        stream.send_message({"type": END, "count": len(items)})

    def remove(self, stream: Stream, msg: dict[str, Any]) -> None:
        """Remove a file, a symbolic link, or a whole directory tree."""
        path = self._path(msg)
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        stream.send_message({"type": "ok"})

    def rename(self, stream: Stream, msg: dict[str, Any]) -> None:
        """rename(2) ``path`` to ``new_path``; reply with the new entry."""
        old, new = self._path(msg), self._path(msg, "new_path")
        os.rename(old, new)
        stream.send_message({"type": ENTRY, "entry": entry_info(new, os.lstat(new))})

    def mkdir(self, stream: Stream, msg: dict[str, Any]) -> None:
        """Make a directory and its parents; ``created`` is False if it was there."""
        path = self._path(msg)
        try:
            os.makedirs(path)
            created = True
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            created = False
        stream.send_message({"type": MADE, "created": created})


def _send_file(stream: Stream, fd: int) -> int:
    sent = 0
    while True:
        data = os.read(fd, CHUNK_SIZE)
        if not data:
            return sent
        stream.send(FrameType.DATA, data)
        sent += len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _walk(top: str, depth: int) -> list[dict[str, Any]]:
    """Entries below ``top``, sorted by name per directory, to ``depth`` levels."""
    out: list[dict[str, Any]] = []
    with os.scandir(top) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        try:
            info = entry_info(entry.path, entry.stat(follow_symlinks=False))
        except OSError:          # gone since the listing
            continue
        out.append(info)
        if depth > 1 and info["type"] == "dir":
            try:
                out.extend(_walk(entry.path, depth - 1))
            except OSError:      # unreadable subdirectory: listed, not entered
                pass
    return out
