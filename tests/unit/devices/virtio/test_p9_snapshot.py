"""Snapshot and restore of virtio-9p (docs/9p.md, "Snapshots").

The guest's side is played as in test_snapshot.py: a fake driver brings the
device up on a transport (virtio-mmio or virtio-pci), 9P requests go
through the ring to a real server over a temporary share, the transport's
state is saved and sent through JSON, and a fresh device with a fresh
server on the same share and the same guest memory is restored from it.
The restored fids must name the same files (open ones open again, not
truncated), a fid whose file is gone must answer ESTALE, and a hostile
state must be a StateError naming the device, with no descriptor left open.
"""

from __future__ import annotations

import copy
import errno
import functools
import os
import stat
import threading
from pathlib import Path
from typing import Callable

import pytest

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from kvmlite.base.state import StateError, pack_bytes
from kvmlite.devices.virtio import ninep
from kvmlite.devices.virtio.ninep import Virtio9p
from kvmlite.devices.virtio.p9 import codec
from kvmlite.devices.virtio.p9.codec import (Message, Rclunk, Rlerror, Tattach, Tclunk, Tfsync, Tgetattr, Tlopen,
                                             Tread, Treaddir, Tunlinkat, Tversion, Twalk, Twrite, Txattrwalk)
from kvmlite.devices.virtio.p9.constants import DOTL_DIRECTORY, DOTL_RDWR, DOTL_TRUNC, NOFID, STATS_BASIC
from kvmlite.devices.virtio.p9.server import P9Server, ReadInto, WriteSource
from kvmlite.vmm.snapshot.save import _held
from tests.unit.devices.virtio.fakedriver import call_on_loop, wait_until
from tests.unit.devices.virtio.p9.client import P9Client
from tests.unit.devices.virtio.test_snapshot import TRANSPORTS, Guest, queue_states, restored, rings_for

ROOM = 1024                     # writable bytes per request (the fake driver's heap is small)
MSIZE = 4096
UID = 1000
NAME = "virtio-9p"              # the device's name: every StateError must carry it

pytestmark = pytest.mark.usefixtures("no_fd_leak")


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    (root / "dir").mkdir()
    (root / "dir" / "hello.txt").write_bytes(b"hello from the host\n")
    for name in ("a.txt", "b.txt", "c.txt"):
        (root / "dir" / name).write_bytes(name.encode())
    return root


def make_device(share: Path, loop: EventLoop) -> Callable[[], Virtio9p]:
    return lambda: Virtio9p(P9Server(share, max_msize=MSIZE), "share0", loop, queue_size=16)


def call(guest: Guest, tag: int, msg: Message) -> Message:
    """One request through the ring; its decoded reply."""
    ring = guest.rings[0]
    posted = ring.add([codec.encode(tag, msg)], [ROOM])
    guest.notify(0)
    assert wait_until(lambda: ring.used_idx() != ring.last_used)
    [(head, length)] = guest.used(0)
    assert head == posted.head
    got_tag, reply = codec.decode(ring.read(posted.writable[0])[:length])
    assert got_tag == tag
    return reply


def ok(guest: Guest, tag: int, msg: Message) -> Message:
    reply = call(guest, tag, msg)
    assert not isinstance(reply, Rlerror), f"{msg!r}: {errno.errorcode.get(reply.ecode)}"
    return reply


def error(guest: Guest, tag: int, msg: Message) -> int:
    reply = call(guest, tag, msg)
    assert isinstance(reply, Rlerror), f"{msg!r} succeeded: {reply!r}"
    return reply.ecode


def names(data: bytes) -> list[bytes]:
    return [d.name for d in codec.decode_dirents(data)]


def device_part(state: dict) -> dict:
    return (state["virtio"] if "virtio" in state else state)["device"]


def up(guest: Guest) -> None:
    guest.bring_up()
    ok(guest, 1, Tversion(MSIZE, b"9P2000.L"))
    ok(guest, 2, Tattach(0, NOFID, b"user", b"", UID))


def test_9p_fids_are_restored_by_path_and_serve_the_same_files(kind: str, memory: GuestMemory, loop: EventLoop,
                                                               share: Path) -> None:
    make = make_device(share, loop)
    guest = Guest(kind, memory, make(), rings_for(memory, 1), loop)
    up(guest)
    ok(guest, 3, Twalk(0, 1, (b"dir", b"hello.txt")))
    ok(guest, 4, Tlopen(1, DOTL_RDWR | DOTL_TRUNC))                 # truncated now, never again
    assert ok(guest, 5, Twrite(1, 0, b"written before the snapshot")).count == 27
    ok(guest, 6, Twalk(0, 2, (b"dir",)))
    ok(guest, 7, Tlopen(2, DOTL_DIRECTORY))
    first = codec.decode_dirents(ok(guest, 8, Treaddir(2, 0, 40)).data)    # room for one entry
    assert len(first) == 1
    ok(guest, 9, Twalk(0, 3, (b"dir",)))                             # walked, not open
    state = guest.save()

    saved = {f["fid"]: f for f in device_part(state)["session"]["fids"]}
    assert device_part(state)["session"]["msize"] == MSIZE
    assert saved[1]["path"] == ["dir", "hello.txt"] and saved[1]["open"] == DOTL_RDWR | DOTL_TRUNC
    assert saved[2]["open"] == DOTL_DIRECTORY and saved[3]["open"] is None
    assert saved[0]["path"] == [] and saved[0]["uid"] == UID
    assert not any(f["gone"] for f in saved.values())

    new = restored(guest, make, copy.deepcopy(state), loop)
    try:
        assert new.device.server.msize == MSIZE and new.device.server.fid_count == 4
        assert ok(new, 10, Tread(1, 0, 100)).data == b"written before the snapshot"
        ok(new, 11, Twrite(1, 27, b", and after"))
        assert (share / "dir" / "hello.txt").read_bytes() == b"written before the snapshot, and after"
        rest = names(ok(new, 12, Treaddir(2, first[-1].offset, 800)).data)   # the listing goes on
        assert sorted([first[0].name] + rest) == [b".", b"..", b"a.txt", b"b.txt", b"c.txt", b"hello.txt"]
        assert names(ok(new, 13, Treaddir(2, 0, 800)).data)[:1] == [first[0].name]
        ok(new, 14, Twalk(3, 4, (b"b.txt",)))
        ok(new, 15, Tlopen(4, 0))
        assert ok(new, 16, Tread(4, 0, 100)).data == b"b.txt"
        assert ok(new, 17, Tgetattr(0, STATS_BASIC)).qid.type == 0x80
        for tag, number in enumerate((1, 2, 3, 4), 18):
            assert isinstance(ok(new, tag, Tclunk(number)), Rclunk)
        assert error(new, 30, Tread(1, 0, 10)) == errno.EBADF
        assert new.device.server.fid_count == 1
    finally:
        new.close()


def test_9p_fid_of_a_file_removed_on_the_host_answers_estale(memory: GuestMemory, loop: EventLoop,
                                                             share: Path) -> None:
    make = make_device(share, loop)
    guest = Guest("mmio", memory, make(), rings_for(memory, 1), loop)
    up(guest)
    ok(guest, 3, Twalk(0, 1, (b"dir", b"hello.txt")))
    ok(guest, 4, Tlopen(1, 0))
    ok(guest, 5, Twalk(0, 2, (b"dir", b"a.txt")))
    state = guest.save()
    (share / "dir" / "hello.txt").unlink()                  # on the host, between save and restore
    (share / "dir" / "a.txt").unlink()
    (share / "dir" / "a.txt").mkdir()                       # the name now holds a directory

    new = restored(guest, make, state, loop)                # no error: the VM restores
    try:
        for number in (1, 2):
            assert error(new, 6, Tread(number, 0, 10)) == errno.ESTALE
            assert error(new, 7, Tgetattr(number, STATS_BASIC)) == errno.ESTALE
            assert error(new, 8, Twalk(number, 9, ())) == errno.ESTALE
            assert error(new, 10, Twalk(0, number, (b"dir",))) == errno.EEXIST   # the number is still taken
            assert isinstance(ok(new, 11, Tclunk(number)), Rclunk)
            assert error(new, 12, Tread(number, 0, 10)) == errno.EBADF
        assert ok(new, 13, Tgetattr(0, STATS_BASIC))        # the rest of the session is fine
    finally:
        new.close()


def test_9p_fid_unlinked_by_the_guest_stays_gone_when_the_name_comes_back(memory: GuestMemory, loop: EventLoop,
                                                                          share: Path) -> None:
    """Deleted-but-open in the guest at the save: recorded as gone, so a new
    file at the old name is not mistaken for it."""
    make = make_device(share, loop)
    guest = Guest("mmio", memory, make(), rings_for(memory, 1), loop)
    up(guest)
    ok(guest, 3, Twalk(0, 1, (b"dir", b"hello.txt")))
    ok(guest, 4, Tlopen(1, 0))
    ok(guest, 5, Twalk(0, 2, (b"dir",)))
    ok(guest, 6, Tunlinkat(2, b"hello.txt", 0))
    assert ok(guest, 7, Tread(1, 0, 100)).data == b"hello from the host\n"     # still open
    state = guest.save()
    assert {f["fid"]: f["gone"] for f in device_part(state)["session"]["fids"]} == {0: False, 1: True, 2: False}
    (share / "dir" / "hello.txt").write_bytes(b"another file")

    new = restored(guest, make, state, loop)
    try:
        assert error(new, 8, Tread(1, 0, 100)) == errno.ESTALE
        ok(new, 9, Tclunk(1))
    finally:
        new.close()


def test_9p_restore_does_not_truncate_or_create(memory: GuestMemory, loop: EventLoop, share: Path) -> None:
    make = make_device(share, loop)
    guest = Guest("mmio", memory, make(), rings_for(memory, 1), loop)
    up(guest)
    ok(guest, 3, Twalk(0, 1, (b"dir", b"hello.txt")))
    ok(guest, 4, Tlopen(1, DOTL_RDWR | DOTL_TRUNC | os.O_CREAT | os.O_EXCL))
    state = guest.save()
    (share / "dir" / "hello.txt").write_bytes(b"kept")

    new = restored(guest, make, state, loop)
    try:
        assert (share / "dir" / "hello.txt").read_bytes() == b"kept"
        assert ok(new, 5, Tread(1, 0, 100)).data == b"kept"
    finally:
        new.close()


# --- hostile states -----------------------------------------------------------------------

def _fid(s: dict, number: int) -> dict:
    return next(f for f in s["session"]["fids"] if f["fid"] == number)


def _path(*components: object) -> Callable[[dict], None]:
    def corrupt(s: dict) -> None:
        _fid(s, 1)["path"] = list(components)
    return corrupt


def _set(key: str, value: object, fid: int = 1) -> Callable[[dict], None]:
    def corrupt(s: dict) -> None:
        _fid(s, fid)[key] = value
    return corrupt


def _session(key: str, value: object) -> Callable[[dict], None]:
    def corrupt(s: dict) -> None:
        s["session"][key] = value
    return corrupt


def _duplicate(s: dict) -> None:
    s["session"]["fids"].append(copy.deepcopy(_fid(s, 1)))


def _tag(s: dict) -> None:
    s["tag"] = "other"


HOSTILE: dict[str, tuple[Callable[[dict], None], str]] = {
    "dot-dot": (_path("dir", ".."), r"path component '\.\.' is not a single file name"),
    "dot-dot first": (_path("..", "etc", "passwd"), "is not a single file name"),
    "slash inside": (_path("dir/hello.txt"), "'dir/hello.txt' is not a single file name"),
    "absolute": (_path("/etc", "passwd"), "'/etc' is not a single file name"),
    "NUL": (_path("dir", "hello.txt\0x"), "is not a single file name"),
    "empty name": (_path("dir", ""), "is not a single file name"),
    "dot": (_path("."), "is not a single file name"),
    "too long": (_path("x" * 256), "is not a single file name"),
    "not encodable": (_path("\ud800"), "is not a single file name"),
    "component not a string": (_path("dir", 7), "path component 7 is not a string"),
    "path not a list": (_set("path", "dir/hello.txt"), "path is str, expected a list"),
    "fid number text": (_set("fid", "1"), "fid is str"),
    "fid NOFID": (_set("fid", NOFID), "outside"),
    "uid text": (_set("uid", "root"), "uid is str"),
    "open flags text": (_set("open", "rw"), "open is str"),
    "gone not bool": (_set("gone", 0), "gone is int"),
    "type not a file type": (_set("type", 0o7), "is not a file type"),
    "open xattr fid": (_set("xattr", {"read": ""}), "an xattr fid cannot be open"),
    "xattr bad name": (_set("xattr", {"name": pack_bytes(b"trusted.x"), "size": 1, "flags": 0, "value": ""}, 3),
                       "not a pending user"),
    "fid missing key": (lambda s: _fid(s, 1).pop("path"), "lacks 'path'"),
    "fids not a list": (_session("fids", {}), "fids is dict"),
    "msize past max": (_session("msize", MSIZE * 2), "msize=8192 is outside"),
    "msize tiny": (_session("msize", 100), "not a 9P2000.L session"),
    "fids without version": (_session("msize", 0), "fids without a Tversion"),
    "version": (_session("version", "9P2000.u"), "not a 9P2000.L session"),
    "duplicate fid": (_duplicate, "a fid number appears twice"),
    "session not an object": (lambda s: s.update(session=[]), "session: saved state is list"),
    "other tag": (_tag, "saved mount tag 'other'"),
}


@pytest.mark.parametrize("hostile", HOSTILE)
def test_9p_hostile_state_is_a_state_error_naming_the_device(memory: GuestMemory, loop: EventLoop, share: Path,
                                                             hostile: str) -> None:
    make = make_device(share, loop)
    guest = Guest("mmio", memory, make(), rings_for(memory, 1), loop)
    up(guest)
    ok(guest, 3, Twalk(0, 1, (b"dir", b"hello.txt")))
    ok(guest, 4, Tlopen(1, 0))
    ok(guest, 5, Twalk(0, 3, (b"dir",)))
    state = guest.save()
    corrupt, message = HOSTILE[hostile]
    corrupt(device_part(state))
    guest.close()

    new = Guest("mmio", memory, make(), guest.rings, loop)
    try:
        with pytest.raises(StateError, match=message) as raised:
            new.transport.restore_state(state)
        text = str(raised.value)
        assert text.startswith(new.transport.name) and NAME in text and "\n" not in text
        assert new.transport.core.status == 0 and new.device.server.fid_count == 0
    finally:
        new.close()


# --- the server alone ---------------------------------------------------------------------

def test_9p_server_session_with_an_xattr_fid_round_trips(share: Path) -> None:
    server = P9Server(share)
    client = P9Client(server)
    client.version()
    client.attach(0)
    size = client.ok(Txattrwalk(0, 1, b"")).size               # the name list, read through fid 1
    listing = client.ok(Tread(1, 0, 4096)).data
    assert len(listing) == size
    state = server.save_session()
    assert _fid({"session": state}, 1)["xattr"] == {"read": pack_bytes(listing)}
    server.close()

    again = P9Server(share)
    try:
        again.restore_session(copy.deepcopy(state), "virtio-9p0")
        assert P9Client(again).ok(Tread(1, 0, 4096)).data == listing
        assert isinstance(P9Client(again).ok(Tclunk(1)), Rclunk)
    finally:
        again.close()


def test_9p_server_restore_of_an_empty_session(share: Path) -> None:
    server = P9Server(share)
    state = server.save_session()
    assert state == {"msize": 0, "version": "", "fids": []}
    server.restore_session(state)
    assert server.msize == 0 and server.fid_count == 0
    assert P9Client(server).error(Tattach(0, NOFID, b"", b"", 0)) == errno.EPROTO    # still no Tversion
    server.close()


def test_9p_restore_into_a_smaller_fid_table_is_refused(share: Path) -> None:
    server = P9Server(share)
    client = P9Client(server)
    client.version()
    for number in range(5):
        client.attach(number)
    state = server.save_session()
    server.close()
    small = P9Server(share, max_fids=4)
    try:
        with pytest.raises(StateError, match="^virtio-9p7: 5 fids, more than this server's 4$"):
            small.restore_session(state, "virtio-9p7")
        assert small.fid_count == 0
    finally:
        small.close()


def test_9p_fid_of_another_type_at_its_path_is_gone(share: Path) -> None:
    server = P9Server(share)
    client = P9Client(server)
    client.version()
    client.attach(0)
    client.walk(0, 1, b"dir")
    state = server.save_session()
    assert _fid({"session": state}, 1)["type"] == stat.S_IFDIR
    server.close()
    (share / "dir" / "hello.txt").unlink()
    for name in ("a.txt", "b.txt", "c.txt"):
        (share / "dir" / name).unlink()
    (share / "dir").rmdir()
    (share / "dir").write_bytes(b"now a file")
    again = P9Server(share)
    try:
        again.restore_session(state)
        assert P9Client(again).error(Tgetattr(1, STATS_BASIC)) == errno.ESTALE
    finally:
        again.close()


# --- requests in flight at the save -------------------------------------------------------

class Gate:
    """Holds the server's handling of requests with tag ``tag`` until opened."""

    def __init__(self, server: P9Server, tag: int) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        real = server.handle

        def handle(request: bytes, on_reply: Callable[[bytes], None] | None = None,
                   read_into: ReadInto | None = None, write_from: WriteSource | None = None) -> bytes:
            if codec.decode(bytes(request))[0] == tag:
                self.entered.set()
                assert self.opened.wait(10)
            return real(request, on_reply, read_into, write_from)

        server.handle = handle      # type: ignore[method-assign]


def test_9p_save_waits_for_the_request_in_flight(memory: GuestMemory, loop: EventLoop, share: Path) -> None:
    """As Vm.snapshot does it: the device's loop held while the state is
    taken.  The save waits for the fsync running on a worker (its reply is
    in the saved used ring), pops nothing meanwhile (the chain stays in the
    ring, behind the saved ring position), and popping goes on once the
    loop is let go.  (Most requests run on the loop thread, so the hold
    itself waits for them; a Tfsync always runs on a worker.)"""
    make = make_device(share, loop)
    guest = Guest("mmio", memory, make(), rings_for(memory, 1), loop)
    up(guest)
    ring = guest.rings[0]
    ring.add([codec.encode(39, Twalk(0, 5, (b"dir",)))], [ROOM])
    guest.notify(0)
    assert wait_until(lambda: ring.used_idx() == 3)
    guest.used(0)
    gate = Gate(guest.device.server, 40)
    posted = ring.add([codec.encode(40, Tfsync(5, 0))], [ROOM])
    guest.notify(0)
    assert gate.entered.wait(10)
    saved: list[dict] = []
    saver = threading.Thread(target=lambda: saved.append(guest.save()))
    saver.start()
    saver.join(0.2)
    assert saver.is_alive() and not saved                   # waiting for the fsync
    later = ring.add([codec.encode(42, Tgetattr(5, STATS_BASIC))], [ROOM])
    requests = guest.device.stats()["requests"]
    loop.call_soon(functools.partial(guest.device._serve, guest.device._active))    # its doorbell, on the loop
    call_on_loop(loop, lambda: None)
    assert guest.device.stats()["requests"] == requests     # not popped while the save waits
    with _held([loop]):
        gate.opened.set()
        saver.join(10)
        assert [f["fid"] for f in device_part(saved[0])["session"]["fids"]] == [0, 5]
        state = queue_states(saved[0])[0]
        assert (state["next_avail"], state["next_used"]) == (4, 4)  # the fsync answered; not the Tgetattr
    assert wait_until(lambda: ring.used_idx() == 5)            # popped once the loop goes on
    assert [head for head, _ in guest.used(0)] == [posted.head, later.head]
    guest.close()


def test_9p_save_gives_up_on_a_stuck_request_and_serving_goes_on(memory: GuestMemory, loop: EventLoop,
                                                                 share: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ninep, "SAVE_TIMEOUT", 0.2)
    make = make_device(share, loop)
    guest = Guest("mmio", memory, make(), rings_for(memory, 1), loop)
    up(guest)
    gate = Gate(guest.device.server, 40)
    guest.rings[0].add([codec.encode(40, Twalk(0, 5, (b"dir",)))], [ROOM])
    guest.notify(0)
    assert gate.entered.wait(10)
    try:
        with pytest.raises(StateError, match=f"{NAME}: a request is still running in the shared directory"):
            guest.transport.save_state()
    finally:
        gate.opened.set()
    assert wait_until(lambda: guest.rings[0].used_idx() != guest.rings[0].last_used)
    guest.used(0)
    assert ok(guest, 41, Tgetattr(5, STATS_BASIC))       # the walk landed; requests are served again
    guest.close()


@pytest.mark.parametrize("resolver", ["openat2", "walk"])
def test_9p_restore_follows_no_symlink_out_of_the_share(share: Path, tmp_path: Path, resolver: str) -> None:
    """A directory on a saved path swapped for a symlink to outside the
    share: the fid is gone, the outside file never opened."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "hello.txt").write_bytes(b"secret")
    server = P9Server(share)
    client = P9Client(server)
    client.version()
    client.attach(0)
    client.walk(0, 1, b"dir", b"hello.txt")
    client.open(1)
    state = server.save_session()
    server.close()
    (share / "dir").rename(share / "moved")
    (share / "dir").symlink_to(outside)
    again = P9Server(share)
    if resolver == "walk":
        again._share._use_openat2 = False       # the O_PATH walk kept for kernels without openat2
    try:
        again.restore_session(state)
        assert P9Client(again).error(Tread(1, 0, 100)) == errno.ESTALE
    finally:
        again.close()
