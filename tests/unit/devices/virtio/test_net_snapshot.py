"""Snapshot and restore of virtio-net (kvmlite.base.state; the design is in
kvmlite/devices/virtio/net.py and docs/network.md).

As in test_snapshot.py: the NIC is driven on a real transport (virtio-mmio
or virtio-pci) up to DRIVER_OK, frames go both ways, the transport's state
is saved and sent through JSON, and a fresh device on a fresh fake backend
(the restored VM's new tap or passt) is built over the *same* guest memory
and restored.  Then frames must go on at the saved ring positions, the new
backend must have been given the negotiated offloads, and the restored NIC
must serve its own MAC while naming the saved one (what the guest's driver
read) as ``restored_mac``.  On vhost-net a fake /dev/vhost-net stands in for the
kernel.
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace
from typing import Iterator

import pytest

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from kvmlite.base.state import StateError
from kvmlite.devices.virtio.net import (OFFLOAD_FEATURES, RECEIVEQ, TRANSMITQ, VIRTIO_NET_F_GUEST_TSO4,
                                        VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_S_LINK_UP, VNET_HDR,
                                        VirtioNet)
from kvmlite.devices.virtio.net_vhost import VHOST_FILE_UNBIND
from kvmlite.vmm.devices import DeviceManager
from tests.unit.devices.virtio.fakedriver import FakeNetBackend, Posted, wait_until
from tests.unit.devices.virtio.test_snapshot import Guest, queue_states, restored, rings_for
from tests.unit.devices.virtio.test_virtio_net_vhost import MAC as VHOST_MAC
from tests.unit.devices.virtio.test_virtio_net_vhost import LINUX_ACCEPTS, FakeVhostNet, pci_up
from tests.unit.devices.virtio.transport.conftest import make_pci_rig

MAC = bytes.fromhex("525400123456")
OTHER_MAC = bytes.fromhex("5254009abcde")      # what a VM restored under another name would make
SIZE = 16
RX_BUF = 1526                                   # a header and a 1514-byte frame
MTU = 1500


def header(num_buffers: int = 0) -> bytes:
    return VNET_HDR.pack(0, 0, 0, 0, 0, 0, num_buffers)


def frame(length: int, seed: int = 0) -> bytes:
    payload = random.Random(seed).randbytes(length - 14)
    return MAC + bytes.fromhex("02aabbccddee") + b"\x08\x00" + payload


def read_config(device: VirtioNet, offset: int, length: int) -> bytes:
    data = bytearray(length)
    device.read_config(offset, memoryview(data))
    return bytes(data)


def device_state(state: dict) -> dict:
    return (state["virtio"] if "virtio" in state else state)["device"]


class NetGuest:
    """A :class:`Guest` of test_snapshot.py carrying a VirtioNet, with the
    driver's receive buffers remembered so frames can be read back."""

    def __init__(self, guest: Guest, backend: FakeNetBackend) -> None:
        self.guest, self.backend = guest, backend
        self.posted: dict[int, Posted] = {}

    @property
    def device(self) -> VirtioNet:
        return self.guest.device          # type: ignore[return-value]

    @property
    def rx(self):
        return self.guest.rings[RECEIVEQ]

    @property
    def tx(self):
        return self.guest.rings[TRANSMITQ]

    def post_rx(self, *lengths: int) -> None:
        for n in lengths:
            posted = self.rx.add([], [n])
            self.posted[posted.head] = posted
        self.guest.notify(RECEIVEQ)

    def transmit(self, data: bytes) -> Posted:
        posted = self.tx.add([header() + data])
        self.guest.notify(TRANSMITQ)
        return posted

    def tx_done(self, count: int) -> None:
        assert wait_until(lambda: self.tx.used_idx() == count), f"tx used idx {self.tx.used_idx()}"

    def receive(self, used_idx: int) -> list[bytes]:
        """Wait for the receive used idx, then each frame delivered since
        the last call, its buffers joined by ``num_buffers``."""
        assert wait_until(lambda: self.rx.used_idx() == used_idx), f"rx used idx {self.rx.used_idx()}"
        entries = []
        for head, length in self.guest.used(RECEIVEQ):
            data = b""
            for addr, n in self.posted.pop(head).writable:
                data += self.guest.memory.read(addr, min(n, length - len(data)))
            entries.append(data)
        frames = []
        while entries:
            data = entries.pop(0)
            for _ in range(VNET_HDR.unpack_from(data)[6] - 1):
                data += entries.pop(0)
            frames.append(data)
        return frames

    def stat(self, name: str) -> int:
        return self.device.stats()[name]


@pytest.fixture(params=["mmio", "pci"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def backends() -> Iterator[list[FakeNetBackend]]:
    """Every fake backend a test made, closed after it (the VMM owns them)."""
    made: list[FakeNetBackend] = []
    yield made
    for backend in made:
        if not backend.closed:
            backend.close()


def new_backend(backends: list[FakeNetBackend], **options: object) -> FakeNetBackend:
    backend = FakeNetBackend(**{"offloads": OFFLOAD_FEATURES, "mtu": MTU, **options})
    backends.append(backend)
    return backend


def up(kind: str, memory: GuestMemory, loop: EventLoop, backend: FakeNetBackend, mac: bytes = MAC) -> NetGuest:
    device = VirtioNet(backend, mac, loop, queue_size=SIZE)
    guest = Guest(kind, memory, device, rings_for(memory, 2), loop)
    guest.bring_up()
    return NetGuest(guest, backend)


def restore(old: NetGuest, state: dict, loop: EventLoop, backend: FakeNetBackend, mac: bytes = OTHER_MAC) -> NetGuest:
    new = restored(old.guest, lambda: VirtioNet(backend, mac, loop, queue_size=SIZE), state, loop)
    net = NetGuest(new, backend)
    net.posted = old.posted
    return net


def sync(loop: EventLoop) -> None:
    done: list[int] = []
    loop.call_soon(lambda: done.append(1))
    assert wait_until(lambda: done)


# --- the round trip ---

def test_net_round_trip_goes_on_at_the_saved_ring_positions(kind: str, memory: GuestMemory, loop: EventLoop,
                                                            backends: list[FakeNetBackend]) -> None:
    old = up(kind, memory, loop, new_backend(backends))
    features = old.guest.transport.core.driver_features
    assert features & VIRTIO_NET_F_MRG_RXBUF and features & VIRTIO_NET_F_GUEST_TSO4
    for i in range(3):
        old.transmit(frame(100 + i, seed=i))
    old.tx_done(3)
    assert old.backend.sent() == [header() + frame(100 + i, seed=i) for i in range(3)]
    old.post_rx(RX_BUF, RX_BUF)
    old.backend.feed(header() + frame(200, seed=10))
    old.backend.feed(header() + frame(300, seed=11))
    assert old.receive(2) == [header(1) + frame(200, seed=10), header(1) + frame(300, seed=11)]
    # a frame that needs two buffers with only one posted: the device gathers
    # the small one and waits (a chain popped and not returned)
    old.post_rx(64)
    old.backend.feed(header() + frame(1000, seed=12))
    assert wait_until(lambda: old.stat("rx_no_buffer") == 1)
    sync(loop)

    state = json.loads(json.dumps(old.guest.transport.save_state()))
    saved = device_state(state)
    assert saved["rx_chains"] == [list(old.posted)[-1]] and saved["tx_held"] == -1
    assert saved["status"] == VIRTIO_NET_S_LINK_UP and saved["mtu"] == MTU
    rxq, txq = queue_states(state)
    assert (rxq["next_avail"], rxq["next_used"], txq["next_avail"], txq["next_used"]) == (3, 2, 3, 3)

    new = restore(old, state, loop, new_backend(backends))

    assert new.backend.negotiated == [features]      # TUNSETOFFLOAD, exactly what was negotiated
    # the clone serves its own MAC and names the one the guest was given
    assert read_config(new.device, 0, 8) == OTHER_MAC + VIRTIO_NET_S_LINK_UP.to_bytes(2, "little")
    assert new.device.mac == OTHER_MAC and new.device.restored_mac == MAC
    assert new.device.stats()["tx_packets"] == 3 and new.device.stats()["rx_packets"] == 2
    new.transmit(frame(400, seed=20))
    new.tx_done(4)
    assert new.tx.used()[-1][1] == 0
    assert new.backend.sent() == [header() + frame(400, seed=20)]
    assert old.backend.sent() == []                 # the old backend got nothing more
    # the saved frame was in flight and is lost; the gathered chain takes the next frame's start
    new.post_rx(RX_BUF)
    new.backend.feed(header() + frame(1000, seed=21))
    assert new.receive(4) == [header(2) + frame(1000, seed=21)]
    assert new.guest.interrupted(RECEIVEQ)
    new.guest.close()


def test_net_round_trip_before_driver_ok(kind: str, memory: GuestMemory, loop: EventLoop,
                                         backends: list[FakeNetBackend]) -> None:
    device = VirtioNet(new_backend(backends), MAC, loop, queue_size=SIZE)
    guest = Guest(kind, memory, device, rings_for(memory, 2), loop)
    guest.bring_up(driver_ok=False)
    state = json.loads(json.dumps(guest.transport.save_state()))

    new = restore(NetGuest(guest, device.backend), state, loop, new_backend(backends))

    assert new.backend.negotiated == []             # offloads come with DRIVER_OK
    assert read_config(new.device, 0, 6) == OTHER_MAC and new.device.restored_mac == MAC
    # what `info` (the SDK, then the agent's `restored`) learns of it
    devices = SimpleNamespace(virtio=[("virtio-net0", new.device, None), ("virtio-rng0", object(), None)])
    listed = DeviceManager.nics(devices)
    assert listed == [{"name": "virtio-net0", "mac": "52:54:00:9a:bc:de", "restored_mac": "52:54:00:12:34:56"}]
    new.guest.close()


def test_net_restored_under_the_same_mac_names_no_other(kind: str, memory: GuestMemory, loop: EventLoop,
                                                        backends: list[FakeNetBackend]) -> None:
    # a VM restored under its own name (the SDK's pause and connect) keeps its MAC
    old = up(kind, memory, loop, new_backend(backends))
    state = json.loads(json.dumps(old.guest.transport.save_state()))

    new = restore(old, state, loop, new_backend(backends), mac=MAC)

    assert read_config(new.device, 0, 6) == MAC and new.device.restored_mac is None
    new.guest.close()


def test_net_transmit_waiting_for_room_goes_to_the_new_backend(kind: str, memory: GuestMemory, loop: EventLoop,
                                                               backends: list[FakeNetBackend]) -> None:
    old = up(kind, memory, loop, new_backend(backends, sndbuf=4096))
    frames = [frame(1000, seed=i) for i in range(10)]
    for data in frames:
        old.tx.add([header() + data])
    old.guest.notify(TRANSMITQ)
    sync(loop)
    completed = old.tx.used_idx()
    assert completed < len(frames), "the backend never filled up"
    state = json.loads(json.dumps(old.guest.transport.save_state()))
    held = device_state(state)["tx_held"]
    assert held >= 0
    assert queue_states(state)[TRANSMITQ]["next_avail"] == completed + 1

    new = restore(old, state, loop, new_backend(backends))

    new.tx_done(len(frames))
    sent: list[bytes] = []

    def drained() -> bool:
        sent.extend(new.backend.sent())
        return len(sent) >= len(frames) - completed

    assert wait_until(drained)
    assert sent == [header() + data for data in frames[completed:]]
    assert [head for head, _ in new.tx.used()][-(len(frames) - completed)] == held
    new.guest.close()


def test_net_restore_reports_link_up_when_the_backend_had_gone(kind: str, memory: GuestMemory, loop: EventLoop,
                                                                backends: list[FakeNetBackend]) -> None:
    old = up(kind, memory, loop, new_backend(backends))
    old.backend.peer.close()            # the tap went away
    assert wait_until(lambda: not old.device.link_up)
    state = json.loads(json.dumps(old.guest.transport.save_state()))
    assert device_state(state)["status"] == 0 and device_state(state)["link_up"] is True
    generation = (state["virtio"] if "virtio" in state else state)["config_generation"]

    new = restore(old, state, loop, new_backend(backends))

    assert new.device.link_up
    assert wait_until(lambda: new.guest.transport.core.config_generation == generation + 1)
    new.guest.close()


def test_net_restore_keeps_a_link_the_host_set_down(kind: str, memory: GuestMemory, loop: EventLoop,
                                                     backends: list[FakeNetBackend]) -> None:
    old = up(kind, memory, loop, new_backend(backends))
    old.device.set_link(False)
    state = json.loads(json.dumps(old.guest.transport.save_state()))

    new = restore(old, state, loop, new_backend(backends))

    assert not new.device.link_up
    assert read_config(new.device, 6, 2) == b"\0\0"
    new.guest.close()


# --- what is refused ---

@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(mac="AAAA"), "mac: 3 bytes, expected 6"),
    (lambda d: d.pop("stats"), "lacks 'stats'"),
    (lambda d: d["stats"].update(rx_packets=-1), "rx_packets=-1"),
    (lambda d: d.update(rx_chains=[SIZE]), f"receive chain {SIZE} is outside a queue of {SIZE}"),
    (lambda d: d.update(tx_held="x"), "tx_held is str"),
    (lambda d: d.update(mtu=9000), "the driver was given MTU 9000, this backend has 1500"),
    (lambda d: d.update(tx_held=0), "saved transmit chain 0: "),
], ids=["mac", "no-stats", "stat", "rx-head", "tx-type", "mtu", "tx-chain"])
def test_net_corrupt_state_is_refused_naming_the_device(kind: str, memory: GuestMemory, loop: EventLoop,
                                                         backends: list[FakeNetBackend], change, message) -> None:
    old = up(kind, memory, loop, new_backend(backends))
    state = json.loads(json.dumps(old.guest.transport.save_state()))
    old.guest.close()
    change(device_state(state))
    device = VirtioNet(new_backend(backends), MAC, loop, queue_size=SIZE)
    guest = Guest(kind, memory, device, rings_for(memory, 2), loop)
    if kind == "pci":
        guest.program_msix()

    with pytest.raises(StateError, match=rf"^{guest.transport.name}: virtio-net\b.*{message}"):
        guest.transport.restore_state(state)

    assert guest.transport.core.status == 0         # left reset: the VM cannot start half-restored
    guest.close()


# --- vhost-net ---

class PositionedVhostNet(FakeVhostNet):
    """A fake vhost whose GET_VRING_BASE answers where its worker stopped."""

    def __init__(self, bases: dict[int, int] | None = None, **options: object) -> None:
        super().__init__(**options)
        self.bases = bases or {}

    def get_vring_base(self, index: int) -> int:
        super().get_vring_base(index)
        return self.bases.get(index, 0)


@pytest.fixture
def ram() -> Iterator[GuestMemory]:
    mem = GuestMemory(8 << 20)
    yield mem
    mem.close()


def test_net_vhost_positions_come_back_from_the_kernel(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = PositionedVhostNet({RECEIVEQ: 5, TRANSMITQ: 3})
    rig, backend = pci_up(ram, loop, vhost)
    for index, used in ((RECEIVEQ, 4), (TRANSMITQ, 3)):     # vhost used buffers; one rx chain it had
        ram.write_u16(rig.transport.core.queues[index].used_ring + 2, used)   # put back is in the ring
    del vhost.calls[:]

    state = json.loads(json.dumps(rig.transport.save_state()))

    fd = backend.fileno()
    assert vhost.calls == [("set_backend", 0, VHOST_FILE_UNBIND), ("set_backend", 1, VHOST_FILE_UNBIND),
                           ("get_vring_base", 0), ("get_vring_base", 1),
                           ("set_vring_base", 0, 5), ("set_vring_base", 1, 3),
                           ("set_backend", 0, fd), ("set_backend", 1, fd)]
    rxq, txq = queue_states(state)
    assert (rxq["next_avail"], rxq["next_used"], txq["next_avail"], txq["next_used"]) == (5, 4, 3, 3)
    rig.device.close()
    rig.transport.close()

    fresh = FakeVhostNet()
    new_backend_ = FakeNetBackend(offloads=OFFLOAD_FEATURES)
    device = VirtioNet(new_backend_, OTHER_MAC, loop, queue_size=16, vhost=fresh)
    new = make_pci_rig(ram, device=device, loop=loop)
    new.driver.enable_msix(3)
    new.transport.restore_state(state)

    assert ("set_vring_base", RECEIVEQ, 5) in fresh.calls and ("set_vring_base", TRANSMITQ, 3) in fresh.calls
    assert fresh.calls[-2:] == [("set_backend", 0, new_backend_.fileno()), ("set_backend", 1, new_backend_.fileno())]
    assert new_backend_.negotiated == [LINUX_ACCEPTS]
    assert read_config(device, 0, 6) == OTHER_MAC and device.restored_mac == VHOST_MAC
    device.close()
    new.transport.close()
    backend.close()
    new_backend_.close()


def test_net_vhost_that_cannot_stop_refuses_the_save_and_runs_on(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = PositionedVhostNet(fail="get_vring_base")
    rig, backend = pci_up(ram, loop, vhost)
    del vhost.calls[:]

    with pytest.raises(StateError, match="virtio-net: vhost-net did not give back its ring positions"):
        rig.transport.save_state()

    assert vhost.calls[-2:] == [("set_backend", 0, backend.fileno()), ("set_backend", 1, backend.fileno())]
    rig.device.close()
    rig.transport.close()
    backend.close()

