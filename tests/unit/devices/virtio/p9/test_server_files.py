"""Files and directories through the server: create, I/O, listing,
attributes, links, renames, removal, against a temporary directory."""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import pytest

from kvmlite.devices.virtio.p9 import codec
from kvmlite.devices.virtio.p9.constants import (ATTR_ATIME, ATTR_ATIME_SET, ATTR_GID, ATTR_MODE, ATTR_MTIME,
                                                 ATTR_MTIME_SET, ATTR_SIZE, ATTR_UID, DOTL_AT_REMOVEDIR,
                                                 DOTL_DIRECTORY, DOTL_EXCL, DOTL_RDWR, DOTL_TRUNC, DOTL_WRONLY,
                                                 QT_DIR, QT_FILE, QT_SYMLINK, V9FS_MAGIC)
from tests.unit.devices.virtio.p9.client import P9Client

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="ownership passes through only when the VMM runs as root")


def test_lcreate_write_read_back(client: P9Client, share: Path) -> None:
    client.walk(0, 1)

    q = client.create(1, b"hello", DOTL_RDWR, 0o640)
    written = client.write(1, b"hello, world", 0)

    assert q.type == QT_FILE and q.path == (share / "hello").stat().st_ino
    assert written == 12
    assert client.read(1, 7, 100) == b"world"
    assert (share / "hello").read_bytes() == b"hello, world"


def test_lcreate_sets_exact_mode_whatever_the_umask(client: P9Client, share: Path) -> None:
    old = os.umask(0o077)
    try:
        client.walk(0, 1)
        client.create(1, b"f", DOTL_RDWR, 0o666)
    finally:
        os.umask(old)

    assert stat.S_IMODE((share / "f").stat().st_mode) == 0o666


def test_lcreate_strips_setuid_and_setgid(client: P9Client, share: Path) -> None:
    client.walk(0, 1)
    client.create(1, b"f", DOTL_RDWR, 0o6755)

    assert stat.S_IMODE((share / "f").stat().st_mode) == 0o755


def test_lcreate_exclusive_on_existing_name_is_eexist(client: P9Client, share: Path) -> None:
    (share / "f").write_text("old")
    client.walk(0, 1)

    assert client.error(codec.Tlcreate(1, b"f", DOTL_RDWR | DOTL_EXCL, 0o644, 0)) == errno.EEXIST


def test_lcreate_without_excl_opens_existing_file(client: P9Client, share: Path) -> None:
    (share / "f").write_text("old")
    client.walk(0, 1)

    client.create(1, b"f", DOTL_RDWR)

    assert client.read(1) == b"old"


def test_lcreate_on_file_fid_is_enotdir(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")

    assert client.error(codec.Tlcreate(1, b"g", DOTL_RDWR, 0o644, 0)) == errno.ENOTDIR


@needs_root
def test_lcreate_passes_guest_uid_and_gid_through_as_root(client: P9Client, share: Path) -> None:
    client.attach(5, uid=1234)
    client.walk(5, 1)

    client.create(1, b"f", DOTL_RDWR, 0o644, gid=4321)

    st = (share / "f").stat()
    assert (st.st_uid, st.st_gid) == (1234, 4321)


def test_lopen_twice_is_einval(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.open_path(1, b"f")

    assert client.error(codec.Tlopen(1, 0)) == errno.EINVAL


def test_lopen_directory_for_writing_is_eisdir(client: P9Client) -> None:
    client.walk(0, 1)

    assert client.error(codec.Tlopen(1, DOTL_WRONLY)) == errno.EISDIR


def test_lopen_file_with_directory_flag_is_enotdir(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")

    assert client.error(codec.Tlopen(1, DOTL_DIRECTORY)) == errno.ENOTDIR


def test_lopen_truncate(client: P9Client, share: Path) -> None:
    (share / "f").write_text("content")

    client.open_path(1, b"f", flags=DOTL_WRONLY | DOTL_TRUNC)

    assert (share / "f").read_bytes() == b""


def test_lopen_access_mode_3_is_einval(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")

    assert client.error(codec.Tlopen(1, 3)) == errno.EINVAL


def test_read_directory_fid_is_eisdir(client: P9Client) -> None:
    client.open_path(1)

    assert client.error(codec.Tread(1, 0, 100)) == errno.EISDIR


def test_readdir_on_file_fid_is_enotdir(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.open_path(1, b"f")

    assert client.error(codec.Treaddir(1, 0, 4096)) == errno.ENOTDIR


def test_read_unopened_fid_is_ebadf(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")

    assert client.error(codec.Tread(1, 0, 10)) == errno.EBADF
    assert client.error(codec.Twrite(1, 0, b"x")) == errno.EBADF
    assert client.error(codec.Treaddir(1, 0, 4096)) == errno.EBADF


def test_write_on_read_only_open_is_ebadf(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.open_path(1, b"f")

    assert client.error(codec.Twrite(1, 0, b"y")) == errno.EBADF


def test_read_count_is_clamped_to_msize(client: P9Client, share: Path) -> None:
    client.version(8192)
    client.attach(0)
    (share / "big").write_bytes(b"z" * 100000)
    client.open_path(1, b"big")

    data = client.read(1, 0, 0xFFFFFFFF)

    assert data == b"z" * (8192 - 11)


def test_read_absurd_offset_is_einval(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.open_path(1, b"f")

    assert client.error(codec.Tread(1, 1 << 63, 10)) == errno.EINVAL
    assert client.read(1, 1 << 40, 10) == b""


def test_large_read_and_write_at_512k_msize(client: P9Client, share: Path) -> None:
    client.version(512 * 1024)
    client.attach(0)
    client.walk(0, 1)
    client.create(1, b"big", DOTL_RDWR)
    payload = os.urandom(512 * 1024 - 23)

    assert client.write(1, payload) == len(payload)
    assert client.read(1, 0, 512 * 1024) == payload[:512 * 1024 - 11]


def test_read_in_place_reply_is_the_header_counting_the_placed_data(client: P9Client, share: Path) -> None:
    """With ``read_into`` the data goes where the transport says and the
    reply is the Rread's 11 header bytes, its size counting the data; None
    from it means the server reads as usual."""
    (share / "f").write_bytes(b"0123456789" * 100)
    client.version(8192)
    client.attach(0)
    client.walk(0, 1, b"f")
    client.open(1, 0)
    sink = bytearray(4096)
    calls: list[tuple[int, int]] = []

    def read_into(fd: int, count: int, offset: int) -> int:
        calls.append((count, offset))
        return os.preadv(fd, [memoryview(sink)[:count]], offset)
    reply = client.server.handle(codec.encode(9, codec.Tread(1, 995, 4096)), read_into=read_into)
    assert reply == struct.pack("<IBHI", 11 + 5, codec.Rread.TYPE, 9, 5) and sink[:5] == b"56789"
    assert calls == [(4096, 995)]
    usual = client.server.handle(codec.encode(10, codec.Tread(1, 0, 10)), read_into=lambda *a: None)
    assert codec.decode(usual) == (10, codec.Rread(b"0123456789"))


class Source:
    """A Twrite's data held elsewhere (the transport's WriteSource)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.count, self.calls = data, len(data), []

    def write_to(self, fd: int, offset: int) -> int:
        self.calls.append(("write_to", offset))
        return os.pwrite(fd, self.data, offset)

    def gather(self) -> bytes:
        self.calls.append(("gather",))
        return self.data


def _write_head(tag: int, fid: int, offset: int, count: int, size: int | None = None) -> bytes:
    return struct.pack("<IBHIQI", 23 + count if size is None else size, codec.Twrite.TYPE, tag, fid, offset, count)


def test_write_in_place_from_the_source(client: P9Client, share: Path) -> None:
    """With ``write_from`` the request is the Twrite's 23 header bytes and
    the data is written from the source; a size field or count that
    disagrees with the source is EPROTO and nothing is written; an xattr
    fid takes the source's bytes."""
    (share / "f").write_bytes(b"." * 10)
    client.version(8192)
    client.attach(0)
    client.walk(0, 1, b"f")
    client.open(1, DOTL_RDWR)
    source = Source(b"in place")
    reply = client.server.handle(_write_head(9, 1, 2, 8), write_from=source)
    assert codec.decode(reply) == (9, codec.Rwrite(8)) and source.calls == [("write_to", 2)]
    assert (share / "f").read_bytes() == b"..in place"
    for head in (_write_head(10, 1, 0, 7), _write_head(11, 1, 0, 8, size=40), _write_head(12, 1, 0, 8)[:22],
                 _write_head(13, 1, 0, 8).replace(bytes([codec.Twrite.TYPE]), bytes([codec.Tread.TYPE]), 1)):
        bad = Source(b"XXXXXXXX")
        tag, msg = codec.decode(client.server.handle(head, write_from=bad))
        assert msg == codec.Rlerror(errno.EPROTO) and bad.calls == []
    assert (share / "f").read_bytes() == b"..in place"
    client.walk(1, 2)
    client.ok(codec.Txattrcreate(2, b"user.k", 3, 0))
    value = Source(b"val")
    assert codec.decode(client.server.handle(_write_head(14, 2, 0, 3), write_from=value))[1] == codec.Rwrite(3)
    assert value.calls == [("gather",)]


def test_readdir_over_several_calls_lists_each_entry_once(client: P9Client, share: Path) -> None:
    names = {f"file-{i:03d}-{'x' * (i % 40)}".encode() for i in range(150)}
    for name in names:
        (share / os.fsdecode(name)).write_text("")
    (share / "sub").mkdir()
    client.open_path(1)

    entries = client.readdir(1, count=300)

    listed = [e.name for e in entries if e.name not in (b".", b"..")]
    assert sorted(listed) == sorted(names | {b"sub"})
    assert {e.name for e in entries} >= {b".", b".."}
    by_name = {e.name: e for e in entries}
    assert by_name[b"sub"].qid.type == QT_DIR and by_name[b"sub"].type == 4
    assert by_name[b"file-000-"].qid.path == (share / "file-000-").stat().st_ino


def test_readdir_cookie_resumes_listing_on_another_fid(client: P9Client, share: Path) -> None:
    for i in range(20):
        (share / f"f{i}").write_text("")
    client.open_path(1)
    client.open_path(2)
    first = codec.decode_dirents(client.ok(codec.Treaddir(1, 0, 200)).data)

    data = client.ok(codec.Treaddir(2, first[-1].offset, 65536)).data
    rest = codec.decode_dirents(data)

    assert {e.name for e in first}.isdisjoint({e.name for e in rest})
    assert len(first) + len(rest) == 22


def test_readdir_root_dotdot_shows_the_root(client: P9Client, share: Path) -> None:
    client.open_path(1)

    entries = {e.name: e for e in client.readdir(1)}

    assert entries[b".."].qid.path == share.stat().st_ino


def test_readdir_count_too_small_for_an_entry_is_einval(client: P9Client, share: Path) -> None:
    client.open_path(1)

    assert client.error(codec.Treaddir(1, 0, 10)) == errno.EINVAL


def test_readdir_past_the_end_is_empty(client: P9Client) -> None:
    client.open_path(1)
    entries = client.readdir(1)

    assert client.ok(codec.Treaddir(1, entries[-1].offset, 4096)).data == b""


def test_getattr_reports_host_stat(client: P9Client, share: Path) -> None:
    (share / "f").write_bytes(b"12345")
    os.utime(share / "f", ns=(1_000_000_123, 2_000_000_456))
    client.walk(0, 1, b"f")

    attr = client.getattr(1)

    st = (share / "f").stat()
    assert (attr.mode, attr.uid, attr.gid, attr.nlink, attr.size) == (st.st_mode, st.st_uid, st.st_gid, 1, 5)
    assert (attr.atime_sec, attr.atime_nsec, attr.mtime_sec, attr.mtime_nsec) == (1, 123, 2, 456)
    assert attr.valid == 0x7FF


def test_setattr_chmod(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")

    client.ok(codec.Tsetattr(1, ATTR_MODE, 0o100600, 0, 0, 0, 0, 0, 0, 0))

    assert stat.S_IMODE((share / "f").stat().st_mode) == 0o600


def test_setattr_chmod_keeps_setgid_on_directories_only(client: P9Client, share: Path) -> None:
    (share / "d").mkdir()
    (share / "f").write_text("x")
    client.walk(0, 1, b"d")
    client.walk(0, 2, b"f")

    client.ok(codec.Tsetattr(1, ATTR_MODE, 0o2775, 0, 0, 0, 0, 0, 0, 0))
    client.ok(codec.Tsetattr(2, ATTR_MODE, 0o4755, 0, 0, 0, 0, 0, 0, 0))

    assert stat.S_IMODE((share / "d").stat().st_mode) == 0o2775
    assert stat.S_IMODE((share / "f").stat().st_mode) == 0o755


def test_setattr_size_truncates_and_extends(client: P9Client, share: Path) -> None:
    (share / "f").write_bytes(b"0123456789")
    client.walk(0, 1, b"f")

    client.ok(codec.Tsetattr(1, ATTR_SIZE, 0, 0, 0, 4, 0, 0, 0, 0))
    assert (share / "f").read_bytes() == b"0123"
    client.ok(codec.Tsetattr(1, ATTR_SIZE, 0, 0, 0, 6, 0, 0, 0, 0))
    assert (share / "f").read_bytes() == b"0123\0\0"


def test_setattr_size_on_directory_is_eisdir(client: P9Client) -> None:
    assert client.error(codec.Tsetattr(0, ATTR_SIZE, 0, 0, 0, 0, 0, 0, 0, 0)) == errno.EISDIR


def test_setattr_explicit_times(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")
    valid = ATTR_ATIME | ATTR_ATIME_SET | ATTR_MTIME | ATTR_MTIME_SET

    client.ok(codec.Tsetattr(1, valid, 0, 0, 0, 0, 100, 5, 200, 7))

    st = (share / "f").stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (100_000_000_005, 200_000_000_007)


def test_setattr_mtime_now_leaves_atime(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    os.utime(share / "f", (100, 100))
    client.walk(0, 1, b"f")

    client.ok(codec.Tsetattr(1, ATTR_MTIME, 0, 0, 0, 0, 0, 0, 0, 0))

    st = (share / "f").stat()
    assert st.st_atime == 100 and st.st_mtime > 1_000_000_000


def test_setattr_nanoseconds_out_of_range_is_einval(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")

    assert client.error(codec.Tsetattr(1, ATTR_MTIME | ATTR_MTIME_SET, 0, 0, 0, 0, 0, 0, 1, 10**9)) == \
        errno.EINVAL


@needs_root
def test_setattr_chown_as_root(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")

    client.ok(codec.Tsetattr(1, ATTR_UID | ATTR_GID, 0, 1001, 1002, 0, 0, 0, 0, 0))

    st = (share / "f").stat()
    assert (st.st_uid, st.st_gid) == (1001, 1002)


def test_setattr_chown_ignored_without_root(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")
    client.server._share.owner_passthrough = False
    before = (share / "f").stat()

    client.ok(codec.Tsetattr(1, ATTR_UID | ATTR_GID, 0, 1001, 1002, 0, 0, 0, 0, 0))

    assert (share / "f").stat().st_uid == before.st_uid


def test_statfs(client: P9Client, share: Path) -> None:
    reply = client.ok(codec.Tstatfs(0))

    sv = os.statvfs(share)
    assert reply.type == V9FS_MAGIC
    assert (reply.bsize, reply.blocks, reply.namelen) == (sv.f_frsize, sv.f_blocks, sv.f_namemax)


@pytest.mark.parametrize("datasync", [0, 1])
def test_fsync(client: P9Client, datasync: int) -> None:
    client.walk(0, 1)
    client.create(1, b"f")
    client.write(1, b"x")

    assert client.ok(codec.Tfsync(1, datasync)) == codec.Rfsync()


def test_fsync_unopened_is_ebadf(client: P9Client) -> None:
    assert client.error(codec.Tfsync(0, 0)) == errno.EBADF


def test_mkdir_exact_mode(client: P9Client, share: Path) -> None:
    q = client.ok(codec.Tmkdir(0, b"d", 0o40775, 0)).qid

    assert q.type == QT_DIR
    assert stat.S_IMODE((share / "d").stat().st_mode) == 0o775


def test_mkdir_existing_is_eexist(client: P9Client, share: Path) -> None:
    (share / "d").mkdir()

    assert client.error(codec.Tmkdir(0, b"d", 0o755, 0)) == errno.EEXIST


def test_mknod_regular_file(client: P9Client, share: Path) -> None:
    q = client.ok(codec.Tmknod(0, b"f", stat.S_IFREG | 0o600, 0, 0, 0)).qid

    st = (share / "f").stat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and q.path == st.st_ino


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK])
def test_mknod_special_files_refused(client: P9Client, share: Path, kind: int) -> None:
    assert client.error(codec.Tmknod(0, b"n", kind | 0o666, 1, 3, 0)) == errno.EPERM
    assert not (share / "n").exists()


def test_symlink_and_readlink(client: P9Client, share: Path) -> None:
    q = client.ok(codec.Tsymlink(0, b"l", b"../../anywhere", 0)).qid
    client.walk(0, 1, b"l")

    assert q.type == QT_SYMLINK
    assert os.readlink(share / "l") == "../../anywhere"
    assert client.ok(codec.Treadlink(1)).target == b"../../anywhere"


@pytest.mark.parametrize("target,code", [(b"", errno.ENOENT), (b"a\0b", errno.EINVAL),
                                         (b"x" * 4096, errno.ENAMETOOLONG)])
def test_symlink_bad_target(client: P9Client, target: bytes, code: int) -> None:
    assert client.error(codec.Tsymlink(0, b"l", target, 0)) == code


def test_readlink_of_file_is_einval(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")

    assert client.error(codec.Treadlink(1)) == errno.EINVAL


def test_link_makes_hard_link(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    (share / "d").mkdir()
    client.walk(0, 1, b"f")
    client.walk(0, 2, b"d")

    client.ok(codec.Tlink(2, 1, b"g"))

    assert (share / "d" / "g").stat().st_ino == (share / "f").stat().st_ino
    assert (share / "f").stat().st_nlink == 2


def test_link_of_symlink_links_the_symlink(client: P9Client, share: Path) -> None:
    (share / "l").symlink_to("/etc/passwd")
    client.walk(0, 1, b"l")

    client.ok(codec.Tlink(0, 1, b"l2"))

    assert os.readlink(share / "l2") == "/etc/passwd"
    assert (share / "l2").lstat().st_ino == (share / "l").lstat().st_ino


def test_link_of_directory_is_eperm(client: P9Client, share: Path) -> None:
    (share / "d").mkdir()
    client.walk(0, 1, b"d")

    assert client.error(codec.Tlink(0, 1, b"d2")) == errno.EPERM


def test_rename_by_fid_moves_the_file_and_the_fid(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    (share / "d").mkdir()
    client.walk(0, 1, b"f")
    client.walk(0, 2, b"d")

    client.ok(codec.Trename(1, 2, b"g"))
    client.ok(codec.Tremove(1))

    assert not (share / "f").exists() and not (share / "d" / "g").exists()


def test_renameat_moves_and_fids_beneath_follow(client: P9Client, share: Path) -> None:
    (share / "a" / "b").mkdir(parents=True)
    (share / "c").mkdir()
    client.walk(0, 1, b"a", b"b")
    client.walk(0, 2, b"c")

    client.ok(codec.Trenameat(0, b"a", 2, b"a2"))

    assert (share / "c" / "a2" / "b").is_dir()
    assert client.walk(1, 3, b"..")[-1].path == (share / "c" / "a2").stat().st_ino
    client.ok(codec.Tremove(1))
    assert not (share / "c" / "a2" / "b").exists()


def test_renameat_over_existing_file_replaces_it(client: P9Client, share: Path) -> None:
    (share / "a").write_text("a")
    (share / "b").write_text("b")

    client.ok(codec.Trenameat(0, b"a", 0, b"b"))

    assert (share / "b").read_text() == "a" and not (share / "a").exists()


def test_renameat_directory_into_itself_is_einval(client: P9Client, share: Path) -> None:
    (share / "a").mkdir()
    client.walk(0, 1, b"a")

    assert client.error(codec.Trenameat(0, b"a", 1, b"x")) == errno.EINVAL


def test_unlinkat_file_and_directory(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    (share / "d").mkdir()

    client.ok(codec.Tunlinkat(0, b"f", 0))
    client.ok(codec.Tunlinkat(0, b"d", DOTL_AT_REMOVEDIR))

    assert list(share.iterdir()) == []


def test_unlinkat_errors(client: P9Client, share: Path) -> None:
    (share / "d").mkdir()
    (share / "d" / "f").write_text("x")

    assert client.error(codec.Tunlinkat(0, b"d", 0)) == errno.EISDIR
    assert client.error(codec.Tunlinkat(0, b"d", DOTL_AT_REMOVEDIR)) == errno.ENOTEMPTY
    assert client.error(codec.Tunlinkat(0, b"d", 0x1)) == errno.EINVAL
    assert client.error(codec.Tunlinkat(0, b"missing", 0)) == errno.ENOENT


def test_remove_deletes_and_clunks(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")

    client.ok(codec.Tremove(1))

    assert not (share / "f").exists()
    assert client.error(codec.Tclunk(1)) == errno.EBADF


def test_remove_root_is_ebusy_and_still_clunks(client: P9Client, share: Path) -> None:
    client.walk(0, 1)

    assert client.error(codec.Tremove(1)) == errno.EBUSY
    assert client.error(codec.Tclunk(1)) == errno.EBADF
    assert share.is_dir()


def test_remove_after_host_swapped_the_name_is_estale(client: P9Client, share: Path) -> None:
    (share / "f").write_text("walked")
    client.walk(0, 1, b"f")
    (share / "f").rename(share / "moved")
    (share / "f").write_text("other")

    assert client.error(codec.Tremove(1)) == errno.ESTALE
    assert (share / "f").read_text() == "other" and (share / "moved").exists()


def test_create_names_refused(client: P9Client) -> None:
    for name in (b".", b"..", b"a/b", b"", b"a\0"):
        assert client.error(codec.Tmkdir(0, name, 0o755, 0)) == errno.EINVAL
        assert client.error(codec.Tunlinkat(0, name, 0)) == errno.EINVAL
