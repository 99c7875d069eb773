"""A read-only share with a view (what ``kvmlite sandbox`` serves of the
host's root): names outside ``top`` and hidden paths do not exist for the
guest, by walk, by listing or by ``..``."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Iterator

import pytest

from kvmlite.devices.virtio.p9.codec import Twalk
from kvmlite.devices.virtio.p9.fs import View
from kvmlite.devices.virtio.p9.server import P9Server
from tests.unit.devices.virtio.p9.client import P9Client
from tests.unit.devices.virtio.p9.conftest import make_server

VIEW = View.of(top=("usr", "etc"), hidden=("etc/shadow", "etc/ssh"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("usr/bin", "etc/ssh", "home/user", "root"):
        (root / d).mkdir(parents=True)
    (root / "usr/bin/tool").write_text("program\n")
    (root / "etc/passwd").write_text("user:x:1000:1000::/home/user:/bin/sh\n")
    (root / "etc/shadow").write_text("user:SECRET\n")
    (root / "etc/ssh/host_key").write_text("KEY\n")
    (root / "home/user/notes").write_text("private\n")
    return root


@pytest.fixture(params=["openat2", "walk"])
def viewed(tree: Path, request: pytest.FixtureRequest) -> Iterator[P9Client]:
    server = make_server(tree, request.param, readonly=True, view=VIEW)
    client = P9Client(server)
    client.version()
    client.attach(0)
    yield client
    server.close()


def test_view_visible_paths_read_as_usual(viewed: P9Client) -> None:
    viewed.open_path(1, b"etc", b"passwd")
    assert viewed.read(1) == b"user:x:1000:1000::/home/user:/bin/sh\n"
    viewed.open_path(2, b"usr", b"bin", b"tool")
    assert viewed.read(2) == b"program\n"


@pytest.mark.parametrize("names", [(b"home",), (b"home", b"user", b"notes"), (b"root",),
                                   (b"etc", b"shadow"), (b"etc", b"ssh"), (b"etc", b"ssh", b"host_key")])
def test_view_hidden_paths_do_not_exist(viewed: P9Client, names: tuple[bytes, ...]) -> None:
    reply = viewed.call(Twalk(0, 1, names))
    # a walk whose first name fails is an error; a partial walk returns the qids it made
    assert getattr(reply, "ecode", None) == errno.ENOENT or len(reply.wqids) < len(names)


def test_view_listings_leave_hidden_names_out(viewed: P9Client) -> None:
    viewed.open_path(1, flags=0)
    assert viewed.names(1) - {b".", b".."} == {b"usr", b"etc"}
    viewed.open_path(2, b"etc")
    assert viewed.names(2) - {b".", b".."} == {b"passwd"}


def test_view_dotdot_back_to_root_still_hides(viewed: P9Client) -> None:
    viewed.walk(0, 1, b"etc", b"..")
    assert getattr(viewed.call(Twalk(1, 2, (b"home",))), "ecode", None) == errno.ENOENT


def test_view_on_writable_share_refused(tree: Path) -> None:
    with pytest.raises(ValueError, match="read-only"):
        P9Server(tree, readonly=False, view=VIEW)


def test_view_of_strips_slashes_and_ignores_empty() -> None:
    view = View.of(top=("usr",), hidden=("/etc/shadow/", ""))
    assert view.hidden == frozenset({(b"etc", b"shadow")})
    assert view.hides((b"etc",)) and not view.hides((b"usr", b"bin")) and not view.hides(())
