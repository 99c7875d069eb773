"""Tversion, Tattach, Twalk, Tclunk, Tflush: the session and the fid table."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from kvmlite.devices.virtio.p9 import codec
from kvmlite.devices.virtio.p9.constants import NOTAG, QT_DIR, QT_FILE
from kvmlite.devices.virtio.p9.server import P9Server
from tests.unit.devices.virtio.p9.client import P9Client


def test_version_msize_negotiated_down_to_server_max(server: P9Server) -> None:
    c = P9Client(server)

    assert c.version(64 << 20) == codec.Rversion(server.max_msize, b"9P2000.L")
    assert server.max_msize >= 512 * 1024


def test_version_smaller_client_msize_wins(server: P9Server) -> None:
    assert P9Client(server).version(8192).msize == 8192
    assert server.msize == 8192


@pytest.mark.parametrize("version", [b"9P2000", b"9P2000.u", b"9P2000.Lx", b"", b"\xff"])
def test_version_unknown_answers_unknown(server: P9Server, version: bytes) -> None:
    reply = P9Client(server).ok(codec.Tversion(8192, version))

    assert reply.version == b"unknown"
    assert server.msize == 0


def test_version_msize_below_4096_refused(server: P9Server) -> None:
    assert P9Client(server).error(codec.Tversion(2048, b"9P2000.L")) == errno.EINVAL


def test_version_required_before_anything_else(server: P9Server) -> None:
    assert P9Client(server).error(codec.Tattach(0, 0xFFFFFFFF, b"", b"", 0)) == errno.EPROTO


def test_version_again_clunks_every_fid(client: P9Client) -> None:
    client.walk(0, 1)

    client.version()

    assert client.server.fid_count == 0
    assert client.error(codec.Tclunk(0)) == errno.EBADF


def test_attach_gives_root_directory_qid(server: P9Server, share: Path) -> None:
    c = P9Client(server)
    c.version()

    q = c.attach(0)

    assert q.type == QT_DIR and q.path == share.stat().st_ino


def test_attach_fid_in_use_is_eexist(client: P9Client) -> None:
    assert client.error(codec.Tattach(0, 0xFFFFFFFF, b"", b"", 0)) == errno.EEXIST


def test_attach_with_auth_fid_is_ebadf(client: P9Client) -> None:
    assert client.error(codec.Tattach(5, 3, b"", b"", 0)) == errno.EBADF


def test_auth_not_supported(client: P9Client) -> None:
    assert client.error(codec.Tauth(5, b"", b"", 0)) == errno.EOPNOTSUPP


def test_walk_zero_names_clones_fid(client: P9Client) -> None:
    assert client.walk(0, 1) == ()
    assert client.getattr(1).qid == client.getattr(0).qid


def test_walk_several_names_returns_each_qid(client: P9Client, share: Path) -> None:
    (share / "a" / "b").mkdir(parents=True)
    (share / "a" / "b" / "f").write_text("x")

    qids = client.walk(0, 1, b"a", b"b", b"f")

    assert [q.type for q in qids] == [QT_DIR, QT_DIR, QT_FILE]
    assert qids[-1].path == (share / "a" / "b" / "f").stat().st_ino


def test_walk_partial_returns_prefix_and_leaves_newfid_unset(client: P9Client, share: Path) -> None:
    (share / "a").mkdir()

    reply = client.ok(codec.Twalk(0, 1, (b"a", b"missing", b"x")))

    assert len(reply.wqids) == 1
    assert client.error(codec.Tclunk(1)) == errno.EBADF


def test_walk_first_name_missing_is_enoent(client: P9Client) -> None:
    assert client.error(codec.Twalk(0, 1, (b"missing",))) == errno.ENOENT


def test_walk_more_than_16_names_is_einval(client: P9Client) -> None:
    assert client.error(codec.Twalk(0, 1, (b"a",) * 17)) == errno.EINVAL


def test_walk_newfid_in_use_is_eexist(client: P9Client) -> None:
    client.walk(0, 1)

    assert client.error(codec.Twalk(0, 1, ())) == errno.EEXIST


def test_walk_from_file_is_enotdir(client: P9Client, share: Path) -> None:
    (share / "f").write_text("x")
    client.walk(0, 1, b"f")

    assert client.error(codec.Twalk(1, 2, (b"x",))) == errno.ENOTDIR


def test_walk_onto_itself_moves_the_fid(client: P9Client, share: Path) -> None:
    (share / "d").mkdir()
    client.walk(0, 1)

    client.walk(1, 1, b"d")

    assert client.getattr(1).qid.path == (share / "d").stat().st_ino


def test_walk_open_fid_onto_itself_is_refused(client: P9Client) -> None:
    client.walk(0, 1)
    client.open(1)

    assert client.error(codec.Twalk(1, 1, ())) == errno.EBUSY


@pytest.mark.parametrize("name", [b".", b"", b"a/b", b"/", b"a\0b", b"x" * 256])
def test_walk_bad_names_refused(client: P9Client, share: Path, name: bytes) -> None:
    (share / "a").mkdir()

    assert client.error(codec.Twalk(0, 1, (name,))) in (errno.EINVAL, errno.ENAMETOOLONG)


def test_walk_dotdot_from_subdirectory_is_parent(client: P9Client, share: Path) -> None:
    (share / "a" / "b").mkdir(parents=True)

    qids = client.walk(0, 1, b"a", b"b", b"..")

    assert qids[-1].path == (share / "a").stat().st_ino


def test_walk_dotdot_at_root_stays_at_root(client: P9Client, share: Path) -> None:
    qids = client.walk(0, 1, b"..", b"..", b"..")

    assert {q.path for q in qids} == {share.stat().st_ino}


def test_clunked_fid_is_ebadf(client: P9Client) -> None:
    client.walk(0, 1)
    client.clunk(1)

    assert client.error(codec.Tgetattr(1, 0)) == errno.EBADF
    assert client.error(codec.Tclunk(1)) == errno.EBADF


def test_fid_number_reusable_after_clunk(client: P9Client) -> None:
    client.walk(0, 1)
    client.clunk(1)

    assert client.walk(0, 1) == ()


def test_flush_of_unknown_tag_answers_at_once(client: P9Client) -> None:
    assert client.ok(codec.Tflush(4321)) == codec.Rflush()


def test_unknown_type_is_eopnotsupp_with_the_tag(client: P9Client) -> None:
    raw = struct.pack("<IBH", 12, 112, 77) + b"\0" * 5         # Topen: 9P2000, not .L

    assert codec.decode(client.server.handle(raw)) == (77, codec.Rlerror(errno.EOPNOTSUPP))


def test_reply_type_sent_as_request_is_eopnotsupp(client: P9Client) -> None:
    assert client.error(codec.Rclunk()) == errno.EOPNOTSUPP


def test_short_request_answered_with_notag(server: P9Server) -> None:
    assert codec.decode(server.handle(b"\x01\x02")) == (NOTAG, codec.Rlerror(errno.EPROTO))


def test_request_larger_than_msize_is_eproto(client: P9Client) -> None:
    client.version(8192)
    client.attach(0)
    client.walk(0, 1)
    raw = codec.encode(5, codec.Twrite(1, 0, b"x" * 9000))

    assert codec.decode(client.server.handle(raw)) == (5, codec.Rlerror(errno.EPROTO))


def test_reply_larger_than_msize_becomes_emsgsize(client: P9Client, share: Path) -> None:
    client.version(4096)
    client.attach(0)
    (share / "long").symlink_to("x" * 4090)
    client.walk(0, 1, b"long")

    assert client.error(codec.Treadlink(1)) == errno.EMSGSIZE


def test_closed_server_answers_eio(share: Path) -> None:
    server = P9Server(share)
    server.close()

    assert codec.decode(server.handle(codec.encode(1, codec.Tversion(8192, b"9P2000.L")))) == \
        (1, codec.Rlerror(errno.EIO))


def test_server_rejects_max_msize_out_of_range(share: Path) -> None:
    with pytest.raises(ValueError):
        P9Server(share, max_msize=100)


def test_missing_root_is_one_line_error(tmp_path: Path) -> None:
    from kvmlite.devices.virtio.p9 import ShareError

    with pytest.raises(ShareError, match="No such file"):
        P9Server(tmp_path / "missing")


def test_fid_table_is_bounded(share: Path) -> None:
    server = P9Server(share, max_fids=3)
    c = P9Client(server)
    c.version()
    c.attach(0)
    c.walk(0, 1)
    c.walk(0, 2)

    assert c.error(codec.Twalk(0, 3, ())) == errno.EMFILE
    assert c.error(codec.Tattach(3, 0xFFFFFFFF, b"", b"", 0)) == errno.EMFILE
    c.clunk(2)
    assert c.walk(0, 3) == ()
    server.close()


def test_default_fid_limit_leaves_descriptors_for_the_vmm() -> None:
    import resource

    from kvmlite.devices.virtio.p9.server import default_max_fids

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 64 <= default_max_fids() <= max(64, soft // 4)
