"""Snapshot and restore of the virtio layer (kvmlite.base.state).

Each test drives a device on a transport (virtio-mmio or virtio-pci) the
way Linux does, up to DRIVER_OK with requests already served, saves the
transport's state, sends it through JSON, builds a fresh device and
transport over the *same* guest memory (guest RAM is saved whole, so the
rings and the fake driver's bookkeeping in it survive as they are),
restores, and then serves a new request: the device must continue from the
saved ring positions and interrupt the driver.

The PCI function's own state (configuration space, MSI-X table) is saved
by PciFunction, not by the virtio layer; until it is, the fresh PCI rig
stands in for its restore: the rig's firmware places the BAR at the same
address, and the driver programs the MSI-X table again.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import struct
from pathlib import Path
from typing import Callable

import pytest

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from kvmlite.base.state import StateError
from kvmlite.devices.virtio.block import VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VirtioBlock
from kvmlite.devices.virtio.console import VirtioConsole
from kvmlite.devices.virtio.device import VirtioDevice
from kvmlite.devices.virtio.disk import RawDisk
from kvmlite.devices.virtio.queue import Queue
from kvmlite.devices.virtio.rng import VirtioRng
from kvmlite.devices.virtio.vsock import VirtioVsock
from kvmlite.devices.virtio.vsock.device import EVENTQ, RXQ, TXQ
from kvmlite.devices.virtio.vsock.packet import HEADER_SIZE, HOST_CID, TYPE_STREAM, Header, Op
from tests.unit.devices.virtio.fakedriver import FakeDriver, Posted, wait_until
from tests.unit.devices.virtio.transport.conftest import make_mmio_rig, make_pci_rig
from tests.unit.devices.virtio.transport.fakes import FakeDevice
from tests.unit.devices.virtio.transport.mmiodriver import (DRIVER_OK, FEATURES_OK, QUEUE_NOTIFY,
                                                            VirtioMmioDriver)
from tests.unit.devices.virtio.transport.pcidriver import MSIX_CONFIG

SIZE = 16                   # entries per queue
SPACING = 0x10000           # each queue's rings and buffers in a window of their own
CID = 3
TRANSPORTS = ["mmio", "pci"]


def rings_for(memory: GuestMemory, count: int) -> list[FakeDriver]:
    return [FakeDriver(memory, Queue(SIZE), ring_base=SPACING * (i + 1), heap_end=SPACING * (i + 2))
            for i in range(count)]


class Guest:
    """One device on one transport, driven as Linux drives it, over ``rings``."""

    def __init__(self, kind: str, memory: GuestMemory, device: VirtioDevice, rings: list[FakeDriver],
                 loop: EventLoop | None = None) -> None:
        self.kind, self.memory, self.device, self.rings = kind, memory, device, rings
        if kind == "mmio":
            self.rig = make_mmio_rig(memory, device, loop)
            self.drv = VirtioMmioDriver(self.rig)
        else:
            self.rig = make_pci_rig(memory, device, loop)
            self.drv = self.rig.driver
        self.transport = self.rig.transport
        self._sent = [0] * len(rings)

    def bring_up(self, driver_ok: bool = True) -> None:
        assert self.drv.negotiate(self.device.device_features())
        if self.kind == "pci":
            self.program_msix()
            self.drv.write(MSIX_CONFIG, 2, 0)
        for index, ring in enumerate(self.rings):
            addresses = (ring.desc_table, ring.avail_ring, ring.used_ring)
            if self.kind == "mmio":
                assert self.drv.setup_queue(index, *addresses, size=ring.size)
            else:
                assert self.drv.setup_queue(index, *addresses, size=ring.size, vector=index + 1) == index + 1
                self.drv.enable_queue(index)
        if driver_ok:
            self.drv.add_status(DRIVER_OK)

    def program_msix(self) -> None:
        """The MSI-X table: the driver's at bring-up, PciFunction's state at a restore."""
        self.drv.enable_msix(len(self.rings) + 1)

    def notify(self, index: int) -> None:
        if self.kind == "mmio":
            self.rig.write(QUEUE_NOTIFY, index)
        else:
            self.drv.notify(index)

    def interrupted(self, index: int) -> bool:
        """Whether queue ``index`` interrupted since the last call (MMIO:
        InterruptStatus read and acknowledged; PCI: its MSI-X vector)."""
        if self.kind == "mmio":
            return bool(self.drv.interrupt() & 1)
        sent = len(self.transport.msix.vectors[index + 1].sent)
        new, self._sent[index] = sent > self._sent[index], sent
        return new

    def used(self, index: int) -> list[tuple[int, int]]:
        """Consume the used ring and ask for an interrupt at the next entry
        (§2.7.10 used_event, as Linux's virtqueue_enable_cb does)."""
        ring = self.rings[index]
        entries = ring.used()
        ring.set_used_event(ring.last_used)
        return entries

    def save(self) -> dict:
        """save_state through JSON, as a snapshot file carries it."""
        return json.loads(json.dumps(self.transport.save_state()))

    def close(self) -> None:
        self.transport.close()
        close = getattr(self.device, "close", None)
        if close is not None:
            close()


def restored(old: Guest, make: Callable[[], VirtioDevice], state: dict,
             loop: EventLoop | None = None) -> Guest:
    """``old`` closed (its disk unlocked, its socket removed), then a fresh
    device from ``make`` on a fresh transport over the same memory and
    rings, restored from ``state``."""
    old.close()
    new = Guest(old.kind, old.memory, make(), old.rings, loop)
    if new.kind == "pci":
        new.program_msix()          # stands in for PciFunction.restore_state (see the docstring)
    new.transport.restore_state(state)
    return new


def queue_states(state: dict) -> list[dict]:
    return (state["virtio"] if "virtio" in state else state)["queues"]


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


# --- the transports, around a fake device ------------------------------------

def test_transport_state_round_trips_and_reactivates(kind: str, memory: GuestMemory) -> None:
    guest = Guest(kind, memory, FakeDevice(), rings_for(memory, 2))
    guest.bring_up()
    guest.transport.signal_config_change()
    guest.rings[0].add(writable=[8])
    guest.notify(0)
    state = guest.save()

    new = restored(guest, FakeDevice, copy.deepcopy(state))

    assert new.device.names() == ["reset", "activate"]          # the live DRIVER_OK path
    assert new.device.calls[-1] == ("activate", guest.transport.core.driver_features, (True, True))
    assert new.device.interrupt is new.transport
    assert new.save() == state
    new.notify(1)
    assert new.device.notified() == [1]


def test_transport_restore_before_driver_ok_waits_for_the_driver(kind: str, memory: GuestMemory) -> None:
    guest = Guest(kind, memory, FakeDevice(), rings_for(memory, 2))
    guest.bring_up(driver_ok=False)
    guest.notify(0)                             # before DRIVER_OK: kept for activation
    state = guest.save()

    new = restored(guest, FakeDevice, state)

    assert "activate" not in new.device.names()
    assert new.drv.status() & FEATURES_OK
    new.drv.add_status(DRIVER_OK)
    assert new.device.names()[-2:] == ["activate", "notify"]
    assert new.device.notified() == [0]


def test_mmio_pending_interrupt_status_raises_the_line_again(memory: GuestMemory) -> None:
    guest = Guest("mmio", memory, FakeDevice(), rings_for(memory, 2))
    guest.bring_up()
    guest.transport.signal_used_queue(0)
    state = guest.save()
    assert state["interrupt_status"] == 1

    new = restored(guest, FakeDevice, state)

    assert new.rig.irq.level is True
    assert new.drv.interrupt() == 1


def test_pci_intx_isr_is_restored(memory: GuestMemory) -> None:
    guest = Guest("pci", memory, FakeDevice(), rings_for(memory, 2))
    assert guest.drv.negotiate(guest.device.device_features())
    for index, ring in enumerate(guest.rings):
        guest.drv.setup_queue(index, ring.desc_table, ring.avail_ring, ring.used_ring, size=SIZE)
        guest.drv.enable_queue(index)
    guest.drv.add_status(DRIVER_OK)
    guest.transport.signal_used_queue(1)
    state = guest.save()

    old = guest
    old.close()
    new = Guest("pci", memory, FakeDevice(), old.rings)
    new.transport.restore_state(state)

    assert new.rig.line.level is True
    assert new.drv.read_isr() == 1
    assert new.rig.line.level is False


# --- virtio-rng ----------------------------------------------------------------

def rng_request(guest: Guest) -> None:
    posted = guest.rings[0].add(writable=[32])
    guest.notify(0)
    assert guest.used(0) == [(posted.head, 32)]
    assert guest.rings[0].read(posted.writable[0]) != bytes(32)
    assert guest.interrupted(0)


def test_rng_continues_after_restore(kind: str, memory: GuestMemory) -> None:
    guest = Guest(kind, memory, VirtioRng(queue_size=SIZE), rings_for(memory, 1))
    guest.bring_up()
    for _ in range(3):
        rng_request(guest)
    state = guest.save()
    assert queue_states(state)[0]["next_avail"] == 3
    assert (state["virtio"] if kind == "pci" else state)["device"] == {}

    new = restored(guest, lambda: VirtioRng(queue_size=SIZE), state)

    rng_request(new)
    assert new.rings[0].used_idx() == 4


# --- virtio-blk ----------------------------------------------------------------

SECTORS = 64


def blk_request(guest: Guest, rtype: int, sector: int, out: bytes = b"", in_len: int = 0) -> bytes:
    readable = [struct.pack("<IIQ", rtype, 0, sector)] + ([out] if out else [])
    posted = guest.rings[0].add(readable, ([in_len] if in_len else []) + [1])
    guest.notify(0)
    assert guest.device.wait_idle(timeout=10)
    assert guest.used(0) == [(posted.head, in_len + 1)]
    assert guest.rings[0].read(posted.writable[-1]) == bytes([VIRTIO_BLK_S_OK])
    assert guest.interrupted(0)
    return guest.rings[0].read(posted.writable[0]) if in_len else b""


def make_blk(path: Path) -> VirtioBlock:
    return VirtioBlock(RawDisk.open(str(path)), queue_size=SIZE)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(SECTORS * 512))
    return path


def test_blk_written_data_reads_back_after_restore(kind: str, memory: GuestMemory, image: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    guest = Guest(kind, memory, make_blk(image), rings_for(memory, 1))
    guest.bring_up()
    before = bytes(range(256)) * 2
    blk_request(guest, VIRTIO_BLK_T_OUT, 1, out=before)
    assert blk_request(guest, VIRTIO_BLK_T_IN, 1, in_len=512) == before
    synced: list[int] = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real_fdatasync(fd))[1])

    state = guest.save()

    assert synced == [guest.device.disk.fd]        # durable before the snapshot exists
    new = restored(guest, lambda: make_blk(image), state)
    try:
        assert blk_request(new, VIRTIO_BLK_T_IN, 1, in_len=512) == before
        after = b"\xA5" * 512
        blk_request(new, VIRTIO_BLK_T_OUT, 2, out=after)
        assert blk_request(new, VIRTIO_BLK_T_IN, 2, in_len=512) == after
        assert new.rings[0].used_idx() == 5
    finally:
        new.close()


def test_blk_restore_refuses_a_disk_of_another_size(kind: str, memory: GuestMemory, image: Path,
                                                    tmp_path: Path) -> None:
    guest = Guest(kind, memory, make_blk(image), rings_for(memory, 1))
    guest.bring_up()
    state = guest.save()
    other = tmp_path / "other.img"
    other.write_bytes(bytes(2 * SECTORS * 512))
    guest.close()
    new = Guest(kind, memory, make_blk(other), guest.rings)
    if kind == "pci":
        new.program_msix()
    try:
        with pytest.raises(StateError, match=f"^{new.transport.name}: virtio-blk: saved configuration "
                                             f"\\({SECTORS} sectors.*differs"):
            new.transport.restore_state(state)
        assert new.transport.core.status == 0 and new.device._active is None
    finally:
        new.close()


# --- virtio-console --------------------------------------------------------------

def test_console_pending_input_and_output_continue_after_restore(kind: str, memory: GuestMemory) -> None:
    output: list[bytes] = []
    guest = Guest(kind, memory, VirtioConsole(output.append, queue_size=SIZE), rings_for(memory, 2))
    guest.bring_up()
    guest.rings[1].add([b"hello "])
    guest.notify(1)
    assert len(guest.used(1)) == 1
    posted = guest.rings[0].add(writable=[16])
    guest.notify(0)
    guest.device.enqueue_input(b"ab")
    assert guest.used(0) == [(posted.head, 2)]
    guest.device.enqueue_input(b"typed ahead")     # no receive buffer posted: pending
    state = guest.save()

    new = restored(guest, lambda: VirtioConsole(output.append, queue_size=SIZE), state)

    posted = new.rings[0].add(writable=[64])
    new.notify(0)
    assert new.used(0) == [(posted.head, 11)]
    assert new.rings[0].read(posted.writable[0])[:11] == b"typed ahead"
    assert new.interrupted(0)
    new.rings[1].add([b"world"])
    new.notify(1)
    assert len(new.used(1)) == 1
    assert b"".join(output) == b"hello world"
    assert new.interrupted(1)


# --- virtio-vsock ------------------------------------------------------------------

def guest_request(port: int) -> bytes:
    """A connection request from the guest to a host port nobody listens on."""
    return Header(CID, HOST_CID, 1024 + port, port, 0, TYPE_STREAM, int(Op.REQUEST), 0, 65536, 0).pack()


def vsock_reply(guest: Guest, posted: dict[int, Posted]) -> Header:
    """The device's answer in the rx queue (a RST: the host port is closed)."""
    assert wait_until(lambda: guest.rings[RXQ].used_idx() != guest.rings[RXQ].last_used)
    (head, length), = guest.used(RXQ)
    assert length == HEADER_SIZE
    data = guest.memory.read(posted.pop(head).writable[0][0], HEADER_SIZE)
    return Header.unpack(data)


def vsock_exchange(guest: Guest, posted: dict[int, Posted], port: int) -> None:
    rx = guest.rings[RXQ].add(writable=[4096])
    posted[rx.head] = rx
    guest.notify(RXQ)
    guest.rings[TXQ].used()
    guest.rings[TXQ].add([guest_request(port)])
    guest.notify(TXQ)
    reply = vsock_reply(guest, posted)
    assert (reply.op, reply.dst_port, reply.src_port) == (Op.RST, 1024 + port, port)
    assert wait_until(lambda: guest.interrupted(RXQ))


def make_vsock(path: Path, loop: EventLoop) -> VirtioVsock:
    return VirtioVsock(CID, str(path), loop, queue_size=SIZE)


def test_vsock_restore_posts_transport_reset_and_continues(kind: str, memory: GuestMemory, tmp_path: Path,
                                                           loop: EventLoop) -> None:
    path = tmp_path / "vsock"
    guest = Guest(kind, memory, make_vsock(path, loop), rings_for(memory, 3), loop)
    guest.bring_up()
    event = guest.rings[EVENTQ].add(writable=[4])
    guest.notify(EVENTQ)
    posted: dict[int, Posted] = {}
    for port in (5000, 5001):
        vsock_exchange(guest, posted, port)
    host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host.connect(str(path))                     # a host connection: not saved
    state = guest.save()
    device_state = state["device"] if "device" in state else state["virtio"]["device"]
    assert device_state == {"guest_cid": CID}
    assert queue_states(state)[TXQ]["next_avail"] == 2

    new = restored(guest, lambda: make_vsock(path, loop), state, loop)
    try:
        assert len(new.rig.ioevents.live) == 3      # doorbells: placed by the fresh build, as at VM start
        assert wait_until(lambda: new.rings[EVENTQ].used_idx() == 1)
        assert new.used(EVENTQ) == [(event.head, 4)]
        assert memory.read(event.writable[0][0], 4) == struct.pack("<I", 0)    # TRANSPORT_RESET
        assert wait_until(lambda: new.interrupted(EVENTQ))
        vsock_exchange(new, posted, 5002)
        assert new.rings[TXQ].used_idx() == 3
    finally:
        host.close()
        new.close()


def test_vsock_restore_refuses_a_bad_cid(kind: str, memory: GuestMemory, tmp_path: Path,
                                         loop: EventLoop) -> None:
    path = tmp_path / "vsock"
    guest = Guest(kind, memory, make_vsock(path, loop), rings_for(memory, 3), loop)
    guest.bring_up()
    state = guest.save()
    (state["virtio"] if kind == "pci" else state)["device"]["guest_cid"] = "three"
    guest.close()
    new = Guest(kind, memory, make_vsock(path, loop), guest.rings, loop)
    if kind == "pci":
        new.program_msix()
    try:
        with pytest.raises(StateError, match="guest_cid is str"):
            new.transport.restore_state(state)
        assert new.transport.core.status == 0
    finally:
        new.close()


# --- corrupt state ----------------------------------------------------------------

def _delete_status(s: dict) -> None:
    del s["status"]


def _status_text(s: dict) -> None:
    s["status"] = "15"


def _queue_size_not_power(s: dict) -> None:
    s["queues"][0]["size"] = 12


def _queue_size_too_big(s: dict) -> None:
    s["queues"][0]["size"] = 2 * SIZE


def _ring_outside_memory(s: dict) -> None:
    s["queues"][0]["desc_table"] = 1 << 40


def _queue_missing(s: dict) -> None:
    del s["queues"][0]


def _next_avail_too_big(s: dict) -> None:
    s["queues"][0]["next_avail"] = 1 << 16


def _features_unoffered(s: dict) -> None:
    s["driver_features"] |= 1 << 50


def _device_part_not_object(s: dict) -> None:
    s["device"] = []


CORRUPTIONS: dict[str, tuple[Callable[[dict], None], str]] = {
    "missing key": (_delete_status, "lacks 'status'"),
    "wrong type": (_status_text, "status is str"),
    "queue size not a power of 2": (_queue_size_not_power, "queue 0: size=12 is not a power of 2"),
    "queue size past the maximum": (_queue_size_too_big, "queue 0: size=32 is outside"),
    "ring outside memory": (_ring_outside_memory, "queue 0: desc_table .* is not guest RAM"),
    "a queue missing": (_queue_missing, "queues has 0 entries, expected 1"),
    "ring index past 16 bits": (_next_avail_too_big, "next_avail=65536 is outside"),
    "features never offered": (_features_unoffered, "were not accepted"),
    "device part not an object": (_device_part_not_object, "device: saved state is list"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_state_is_a_state_error_naming_the_device(kind: str, memory: GuestMemory,
                                                          corruption: str) -> None:
    guest = Guest(kind, memory, VirtioRng(queue_size=SIZE), rings_for(memory, 1))
    guest.bring_up()
    rng_request(guest)
    state = guest.save()
    corrupt, message = CORRUPTIONS[corruption]
    corrupt(state["virtio"] if kind == "pci" else state)

    guest.close()
    new = Guest(kind, memory, VirtioRng(queue_size=SIZE), guest.rings)
    with pytest.raises(StateError, match=message) as raised:
        new.transport.restore_state(state)

    assert str(raised.value).startswith(new.transport.name)
    assert "\n" not in str(raised.value)
    assert new.transport.core.status == 0 and not new.transport.core.activated   # nothing half-applied
    assert all(not q.ready for q in new.transport.core.queues)


def test_pci_state_without_virtio_part_is_a_state_error(memory: GuestMemory) -> None:
    guest = Guest("pci", memory, VirtioRng(queue_size=SIZE), rings_for(memory, 1))
    with pytest.raises(StateError, match=f"{guest.transport.name}: saved state lacks 'virtio'"):
        guest.transport.restore_state({})


def test_pci_queue_vector_past_the_table_is_a_state_error(memory: GuestMemory) -> None:
    guest = Guest("pci", memory, VirtioRng(queue_size=SIZE), rings_for(memory, 1))
    guest.bring_up()
    state = guest.save()
    state["virtio"]["queues"][0]["msix_vector"] = 7
    guest.close()
    new = Guest("pci", memory, VirtioRng(queue_size=SIZE), guest.rings)
    new.program_msix()

    with pytest.raises(StateError, match="queue 0: msix_vector=7 is not a vector"):
        new.transport.restore_state(state)


# --- devices that cannot be saved yet -------------------------------------------------

class _UnsaveableRng(VirtioRng):
    snapshot_supported = False


def test_saving_a_device_without_snapshot_support_is_refused(kind: str, memory: GuestMemory) -> None:
    guest = Guest(kind, memory, _UnsaveableRng(queue_size=SIZE), rings_for(memory, 1))
    try:
        with pytest.raises(StateError, match=rf"^{guest.transport.name} \(_UnsaveableRng\): saving its state "
                                             r"is not supported yet"):
            guest.transport.save_state()
    finally:
        guest.close()


