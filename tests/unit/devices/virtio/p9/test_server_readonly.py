"""A read-only share answers EROFS to every change and still serves reads."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterator

import pytest

from kvmlite.devices.virtio.p9 import codec
from kvmlite.devices.virtio.p9.constants import (ATTR_ATIME, ATTR_GID, ATTR_MODE, ATTR_MTIME, ATTR_SIZE, ATTR_UID,
                                                 DOTL_AT_REMOVEDIR, DOTL_APPEND, DOTL_RDWR, DOTL_TRUNC, DOTL_WRONLY,
                                                 LOCK_TYPE_RDLCK, LOCK_SUCCESS)
from tests.unit.devices.virtio.p9.client import P9Client
from tests.unit.devices.virtio.p9.conftest import make_server
from tests.unit.devices.virtio.p9.test_server_escape import snapshot


@pytest.fixture
def ro(share: Path) -> Iterator[P9Client]:
    """A read-only share holding a file f, a directory d and a symlink l;
    fid 1 is f, fid 2 is d, fid 3 is f opened for reading."""
    (share / "f").write_bytes(b"content")
    os.setxattr(share / "f", "user.a", b"1")
    (share / "d").mkdir()
    (share / "l").symlink_to("f")
    before = snapshot(share)
    server = make_server(share, readonly=True)
    c = P9Client(server)
    c.version()
    c.attach(0)
    c.walk(0, 1, b"f")
    c.walk(0, 2, b"d")
    c.open_path(3, b"f")
    yield c
    server.close()
    assert snapshot(share) == before


def _setattr(valid: int) -> codec.Tsetattr:
    return codec.Tsetattr(1, valid, 0o777, 0, 0, 0, 0, 0, 0, 0)


MUTATIONS = {
    "lcreate": codec.Tlcreate(2, b"new", DOTL_RDWR, 0o644, 0),
    "lcreate-existing": codec.Tlcreate(0, b"f", DOTL_RDWR, 0o644, 0),
    "write": codec.Twrite(3, 0, b"x"),
    "chmod": _setattr(ATTR_MODE),
    "chown": _setattr(ATTR_UID | ATTR_GID),
    "truncate": _setattr(ATTR_SIZE),
    "utimes": _setattr(ATTR_ATIME | ATTR_MTIME),
    "mkdir": codec.Tmkdir(0, b"x", 0o755, 0),
    "mknod": codec.Tmknod(0, b"x", 0o100644, 0, 0, 0),
    "symlink": codec.Tsymlink(0, b"x", b"f", 0),
    "link": codec.Tlink(0, 1, b"x"),
    "rename": codec.Trename(1, 2, b"x"),
    "renameat": codec.Trenameat(0, b"f", 0, b"x"),
    "unlinkat": codec.Tunlinkat(0, b"f", 0),
    "rmdir": codec.Tunlinkat(0, b"d", DOTL_AT_REMOVEDIR),
    "remove": codec.Tremove(1),
    "xattrcreate": codec.Txattrcreate(1, b"user.b", 1, 0),
    "xattr-remove": codec.Txattrcreate(1, b"user.a", 0, 0),
    "open-write": codec.Tlopen(1, DOTL_WRONLY),
    "open-rdwr": codec.Tlopen(1, DOTL_RDWR),
    "open-trunc": codec.Tlopen(1, DOTL_TRUNC),
    "open-append": codec.Tlopen(1, DOTL_WRONLY | DOTL_APPEND),
}


@pytest.mark.parametrize("msg", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_readonly_every_change_is_erofs(ro: P9Client, msg: codec.Message) -> None:
    assert ro.error(msg) == errno.EROFS


def test_readonly_reads_still_served(ro: P9Client) -> None:
    assert ro.read(3) == b"content"
    ro.open_path(4)
    assert ro.names(4) == {b"f", b"d", b"l"}
    assert ro.getattr(1).size == 7
    assert ro.ok(codec.Txattrwalk(1, 5, b"user.a")).size == 1
    ro.walk(0, 6, b"l")
    assert ro.ok(codec.Treadlink(6)).target == b"f"
    assert ro.ok(codec.Tstatfs(0)).namelen > 0
    assert ro.ok(codec.Tfsync(3, 0)) == codec.Rfsync()
    assert ro.ok(codec.Tlock(3, LOCK_TYPE_RDLCK, 0, 0, 0, 1, b"")).status == LOCK_SUCCESS


def test_readonly_remove_still_clunks(ro: P9Client) -> None:
    ro.error(codec.Tremove(1))

    assert ro.error(codec.Tclunk(1)) == errno.EBADF
