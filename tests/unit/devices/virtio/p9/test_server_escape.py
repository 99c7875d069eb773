"""A hostile guest against the share's confinement: symlinks out of the
share, symlink loops, ``..`` chains, names with slashes, a directory or
file swapped for a symlink between walk and use, path components renamed
away.  Each attempt is refused or stays inside, and the host files beside
the share are untouched.  Every test runs with openat2 and with the O_PATH
walk kept for kernels without it."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

from kvmlite.devices.virtio.p9 import codec
from kvmlite.devices.virtio.p9.constants import (ATTR_MODE, ATTR_SIZE, ATTR_UID, DOTL_AT_REMOVEDIR, DOTL_RDWR,
                                                 DOTL_TRUNC, DOTL_WRONLY, QT_SYMLINK)
from tests.unit.devices.virtio.p9.client import P9Client

Snapshot = dict[str, tuple[int, int, int, int, bytes, list[str]]]


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Path]:
    """A host directory beside the share, with a file ``f`` and ``secret``;
    checked unchanged after the test."""
    root = tmp_path / "host"
    root.mkdir()
    (root / "secret").write_bytes(b"host secret\n")
    (root / "f").write_bytes(b"host f\n")
    before = snapshot(root)
    yield root
    assert snapshot(root) == before, "a host file outside the share changed"


def snapshot(root: Path) -> Snapshot:
    out: Snapshot = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        xattrs = os.listxattr(path, follow_symlinks=False) if not stat.S_ISLNK(st.st_mode) else []
        out[str(path.relative_to(root))] = (st.st_mode, st.st_nlink, st.st_uid, st.st_mtime_ns, data, xattrs)
    return out


SETATTR = dict(mode=0, uid=0, gid=0, size=0, atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0)


def setattr(c: P9Client, fid: int, valid: int, **kw: int) -> codec.Message:
    return c.call(codec.Tsetattr(fid, valid, **{**SETATTR, **kw}))


@pytest.mark.parametrize("target", ["/etc", "/", "ABS_HOST", "../host", "../../"])
def test_escape_symlinked_directory_is_not_traversed(client: P9Client, share: Path, host: Path,
                                                     target: str) -> None:
    (share / "link").symlink_to(str(host) if target == "ABS_HOST" else target)

    qids = client.walk(0, 1, b"link")
    reply = client.ok(codec.Twalk(0, 2, (b"link", b"secret")))

    assert qids[0].type == QT_SYMLINK
    assert len(reply.wqids) == 1                               # stopped at the symlink
    assert client.error(codec.Twalk(1, 3, (b"secret",))) == errno.ENOTDIR
    assert client.error(codec.Twalk(1, 3, (b"passwd",))) == errno.ENOTDIR
    assert client.error(codec.Tlopen(1, 0)) == errno.ELOOP


@pytest.mark.parametrize("absolute", [True, False])
def test_escape_symlink_to_host_file_is_never_followed(client: P9Client, share: Path, host: Path,
                                                       absolute: bool) -> None:
    (share / "s").symlink_to(host / "secret" if absolute else "../host/secret")
    client.walk(0, 1, b"s")

    assert client.error(codec.Tlopen(1, 0)) == errno.ELOOP
    assert client.error(codec.Tlopen(1, DOTL_WRONLY | DOTL_TRUNC)) == errno.ELOOP
    assert stat.S_ISLNK(client.getattr(1).mode)
    assert setattr(client, 1, ATTR_SIZE, size=0) == codec.Rlerror(errno.EINVAL)
    assert setattr(client, 1, ATTR_MODE, mode=0o777) == codec.Rlerror(errno.EOPNOTSUPP)
    assert client.error(codec.Tlcreate(0, b"s", DOTL_RDWR, 0o644, 0)) == errno.ELOOP
    assert client.error(codec.Tlcreate(0, b"s", DOTL_WRONLY | DOTL_TRUNC, 0o644, 0)) == errno.ELOOP
    client.ok(codec.Tlink(0, 1, b"hard"))                      # a second name for the symlink, not the file
    assert os.readlink(share / "hard") == os.readlink(share / "s")


def test_escape_symlink_chown_and_xattr_touch_the_link_only(client: P9Client, share: Path, host: Path) -> None:
    (share / "s").symlink_to(host / "secret")
    client.walk(0, 1, b"s")

    setattr(client, 1, ATTR_UID, uid=4242)
    client.walk(1, 2)
    client.ok(codec.Txattrcreate(2, b"user.x", 1, 0))
    client.write(2, b"v")
    reply = client.call(codec.Tclunk(2))

    assert reply == codec.Rlerror(errno.EPERM)                 # no user.* xattrs on a symlink
    if client.server._share.owner_passthrough:
        assert (share / "s").lstat().st_uid == 4242


def test_escape_symlink_loop(client: P9Client, share: Path) -> None:
    (share / "a").symlink_to("b")
    (share / "b").symlink_to("a")
    (share / "self").symlink_to("self")

    assert client.walk(0, 1, b"a")[0].type == QT_SYMLINK
    assert client.error(codec.Tlopen(1, 0)) == errno.ELOOP
    assert len(client.ok(codec.Twalk(0, 2, (b"self", b"self", b"x"))).wqids) == 1


def test_escape_dotdot_chains_stay_in_the_share(client: P9Client, share: Path, host: Path) -> None:
    (share / "a").mkdir()

    qids = client.walk(0, 1, b"a", b"..", b"..", b"..", b"..")
    partial = client.ok(codec.Twalk(0, 2, (b"..", b"..", b"host", b"secret")))

    assert qids[-1].path == share.stat().st_ino
    assert len(partial.wqids) == 2
    client.open(1)
    assert client.names(1) == {b"a"}


@pytest.mark.parametrize("name", [b"../host", b"../../etc/passwd", b"/etc/passwd", b"a/../../host", b"..\0"])
def test_escape_names_with_separators_refused_everywhere(client: P9Client, share: Path, host: Path,
                                                          name: bytes) -> None:
    (share / "a").mkdir()
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")

    assert client.error(codec.Twalk(0, 2, (name,))) == errno.EINVAL
    assert client.error(codec.Tlcreate(0, name, DOTL_RDWR, 0o644, 0)) == errno.EINVAL
    assert client.error(codec.Tmkdir(0, name, 0o755, 0)) == errno.EINVAL
    assert client.error(codec.Tsymlink(0, name, b"x", 0)) == errno.EINVAL
    assert client.error(codec.Tlink(0, 1, name)) == errno.EINVAL
    assert client.error(codec.Trenameat(0, b"f", 0, name)) == errno.EINVAL
    assert client.error(codec.Trenameat(0, name, 0, b"g")) == errno.EINVAL
    assert client.error(codec.Tunlinkat(0, name, 0)) == errno.EINVAL
    assert client.error(codec.Tunlinkat(0, name, DOTL_AT_REMOVEDIR)) == errno.EINVAL
    assert client.error(codec.Trename(1, 0, name)) == errno.EINVAL


def test_escape_dotdot_as_a_name_to_change_is_refused(client: P9Client, share: Path, host: Path) -> None:
    (share / "a").mkdir()
    client.walk(0, 1, b"a")

    assert client.error(codec.Tunlinkat(1, b"..", DOTL_AT_REMOVEDIR)) == errno.EINVAL
    assert client.error(codec.Trenameat(1, b"..", 0, b"x")) == errno.EINVAL
    assert client.error(codec.Tlcreate(1, b"..", DOTL_RDWR, 0o644, 0)) == errno.EINVAL


def test_escape_directory_swapped_for_symlink_between_walk_and_lopen(client: P9Client, share: Path,
                                                                      host: Path) -> None:
    (share / "d").mkdir()
    (share / "d" / "f").write_bytes(b"inside\n")
    client.walk(0, 1, b"d", b"f")
    client.walk(0, 2, b"d")
    (share / "d").rename(share / "d.old")
    (share / "d").symlink_to(host)

    client.open(1, DOTL_RDWR)
    client.write(1, b"INSIDE\n")
    client.walk(2, 3, b"f")
    client.open(3)

    assert client.read(3) == b"INSIDE\n"                      # the walked file, not host/f
    assert (share / "d.old" / "f").read_bytes() == b"INSIDE\n"
    assert len(client.ok(codec.Twalk(0, 4, (b"d", b"f"))).wqids) == 1


def test_escape_file_swapped_for_symlink_between_walk_and_lopen(client: P9Client, share: Path,
                                                                 host: Path) -> None:
    (share / "f").write_bytes(b"inside\n")
    client.walk(0, 1, b"f")
    (share / "f").unlink()
    (share / "f").symlink_to(host / "secret")

    client.open(1, DOTL_RDWR | DOTL_TRUNC)
    client.write(1, b"guest data")
    setattr(client, 1, ATTR_MODE, mode=0o600)

    assert client.read(1) == b"guest data"


def test_escape_open_directory_swapped_lists_the_original(client: P9Client, share: Path, host: Path) -> None:
    (share / "d").mkdir()
    (share / "d" / "mine").write_text("")
    client.open_path(1, b"d")
    (share / "d").rename(share / "d.old")
    (share / "d").symlink_to(host)

    assert client.names(1) == {b"mine"}


def test_escape_create_in_directory_fid_swapped_for_symlink(client: P9Client, share: Path, host: Path) -> None:
    (share / "d").mkdir()
    client.walk(0, 1, b"d")
    client.walk(0, 2, b"d")
    (share / "d").rename(share / "d.old")
    (share / "d").symlink_to(host)

    client.create(1, b"new")
    client.ok(codec.Tmkdir(2, b"newdir", 0o755, 0))
    client.ok(codec.Tunlinkat(2, b"new", 0))

    assert (share / "d.old" / "newdir").is_dir()


def test_escape_symlink_fid_used_as_directory_is_refused(client: P9Client, share: Path, host: Path) -> None:
    (share / "l").symlink_to(host)
    client.walk(0, 1, b"l")

    assert client.error(codec.Tlcreate(1, b"x", DOTL_RDWR, 0o644, 0)) == errno.ENOTDIR
    assert client.error(codec.Tmkdir(1, b"x", 0o755, 0)) == errno.ENOTDIR
    assert client.error(codec.Tmknod(1, b"x", 0o100644, 0, 0, 0)) == errno.ENOTDIR
    assert client.error(codec.Tsymlink(1, b"x", b"y", 0)) == errno.ENOTDIR
    assert client.error(codec.Tunlinkat(1, b"secret", 0)) == errno.ENOTDIR
    assert client.error(codec.Trenameat(1, b"secret", 0, b"stolen")) == errno.ENOTDIR
    assert client.error(codec.Trenameat(0, b"l", 1, b"x")) == errno.ENOTDIR
    (share / "f").write_text("x")
    client.walk(0, 2, b"f")
    assert client.error(codec.Tlink(1, 2, b"x")) == errno.ENOTDIR


def test_escape_path_component_renamed_to_symlink_under_a_fid(client: P9Client, share: Path, host: Path) -> None:
    (share / "a" / "b").mkdir(parents=True)
    client.walk(0, 1, b"a", b"b")
    (share / "a").rename(share / "a.old")
    (share / "a").symlink_to(host)

    assert client.error(codec.Twalk(1, 2, (b"..",))) == errno.ENOENT
    assert client.error(codec.Tremove(1)) in (errno.ELOOP, errno.ENOTDIR)
    assert (share / "a.old" / "b").is_dir()


def test_escape_guest_renames_symlink_over_walked_component(client: P9Client, share: Path, host: Path) -> None:
    (share / "a").mkdir()
    (share / "a" / "f").write_text("inside")
    client.walk(0, 1, b"a")
    client.walk(0, 2, b"a", b"f")
    client.ok(codec.Tsymlink(0, b"l", str(host).encode(), 0))

    client.ok(codec.Trenameat(0, b"a", 0, b"moved"))
    client.ok(codec.Trenameat(0, b"l", 0, b"a"))

    assert client.walk(1, 3, b"..", b"moved", b"f")[-1].path == (share / "moved" / "f").stat().st_ino
    client.ok(codec.Tremove(2))
    assert not (share / "moved" / "f").exists()
    client.open(1)
    assert client.names(1) == set()
    assert len(client.ok(codec.Twalk(0, 4, (b"a", b"f"))).wqids) == 1


def test_escape_walk_from_deleted_directory_finds_nothing(client: P9Client, share: Path, host: Path) -> None:
    (share / "a").mkdir()
    client.walk(0, 1, b"a")
    client.ok(codec.Tunlinkat(0, b"a", DOTL_AT_REMOVEDIR))
    (share / "a").symlink_to(host)

    assert client.error(codec.Twalk(1, 2, (b"secret",))) == errno.ENOENT


def test_escape_fifo_in_share_is_never_opened(client: P9Client, share: Path) -> None:
    os.mkfifo(share / "fifo")
    client.walk(0, 1, b"fifo")

    assert client.error(codec.Tlopen(1, 0)) == errno.EPERM      # and did not block
    assert client.error(codec.Tlcreate(0, b"fifo", DOTL_RDWR, 0o644, 0)) == errno.EPERM
    assert setattr(client, 1, ATTR_SIZE, size=0) == codec.Rlerror(errno.EINVAL)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_escape_device_node_in_share_is_never_opened(client: P9Client, share: Path) -> None:
    os.mknod(share / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    client.walk(0, 1, b"null")

    assert client.error(codec.Tlopen(1, DOTL_RDWR)) == errno.EPERM
    assert client.getattr(1).rdev == (1 << 8) | 3


def test_escape_aname_is_ignored(client: P9Client, share: Path, host: Path) -> None:
    q = client.ok(codec.Tattach(7, 0xFFFFFFFF, b"", b"../host", 0)).qid

    assert q.path == share.stat().st_ino


def test_escape_hard_link_to_symlinked_file_links_the_symlink(client: P9Client, share: Path, host: Path) -> None:
    (share / "s").symlink_to(host / "secret")
    client.walk(0, 1, b"s")

    client.ok(codec.Tlink(0, 1, b"h"))

    assert (share / "h").is_symlink()
    assert (host / "secret").stat().st_nlink == 1
