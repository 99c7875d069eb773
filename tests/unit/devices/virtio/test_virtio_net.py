"""virtio-net (virtio 1.2 §5.1): features, configuration space, transmit and
receive with and without mergeable buffers, waits for room on either side,
link state and a backend that goes away.

The device runs its work on a real event loop; a fake backend over a
SOCK_SEQPACKET socketpair stands in for a tap (``vnet_hdr=True``) or passt
(``vnet_hdr=False``), and the fake driver plays the guest.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
from typing import Iterator

import pytest

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from kvmlite.devices.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1
from kvmlite.devices.virtio.net import (MAX_GSO_FRAME, OFFLOAD_FEATURES, RECEIVEQ, STAT_NAMES, TRANSMITQ,
                                        VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN,
                                        VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
                                        VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
                                        VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
                                        VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_DATA_VALID,
                                        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_S_LINK_UP,
                                        VNET_HDR, VirtioNet, parse_mac)
from kvmlite.devices.virtio.queue import Queue
from kvmlite.net.stream import FramedStream
from tests.unit.devices.virtio.fakedriver import (FakeDriver, FakeNetBackend, NeedsResetRecorder, Posted,
                                                  RecordingInterrupt, call_on_loop, wait_until)

MAC = bytes.fromhex("525400123456")
QUEUE = 16
RAM = 8 << 20
BASE_FEATURES = (VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_NET_F_MAC
                 | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MRG_RXBUF)


def header(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0, csum_start: int = 0,
           csum_offset: int = 0, num_buffers: int = 0) -> bytes:
    return VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers)


def frame(length: int, seed: int = 0) -> bytes:
    """An Ethernet frame of ``length`` bytes: to the guest's MAC, IPv4, random payload."""
    payload = random.Random(seed).randbytes(length - 14)
    return MAC + bytes.fromhex("02aabbccddee") + b"\x08\x00" + payload


class NetHarness:
    """One device on a fake backend, its two queues driven by fake drivers."""

    def __init__(self, memory: GuestMemory, loop: EventLoop, *, use: object | None = None,
                 **backend: object) -> None:
        self.memory = memory
        self.loop = loop
        self.backend = use if use is not None else FakeNetBackend(**backend)
        self.device = VirtioNet(self.backend, MAC, loop, queue_size=QUEUE)
        self.interrupt = RecordingInterrupt()
        self.resets = NeedsResetRecorder()
        self.device.on_needs_reset = self.resets
        self.posted: dict[int, Posted] = {}
        self.features = 0

    def activate(self, features: int | None = None, *, rx_ready: bool = True) -> None:
        self.features = self.device.device_features() if features is None else features
        self.rxq, self.txq = Queue(QUEUE), Queue(QUEUE)
        self.rx = FakeDriver(self.memory, self.rxq, ring_base=0x1000, heap_end=RAM // 2)
        self.tx = FakeDriver(self.memory, self.txq, ring_base=RAM // 2)
        self.rxq.ready = rx_ready
        self.device.activate(self.memory, [self.rxq, self.txq], self.features, self.interrupt)

    def close(self) -> None:
        self.device.close()
        self.backend.close()

    # --- the loop ---

    def sync(self) -> None:
        """Wait until the loop has run everything handed to it so far."""
        call_on_loop(self.loop, lambda: None)

    def notify(self, queue_index: int) -> None:
        self.device.queue_notify(queue_index)
        self.sync()

    def stat(self, name: str) -> int:
        return self.device.stats()[name]

    def wait_stat(self, name: str, value: int) -> None:
        assert wait_until(lambda: self.stat(name) >= value), f"{name} = {self.stat(name)}, waited for {value}"
        self.sync()

    # --- transmit ---

    def transmit(self, *buffers: bytes, indirect: bool = False) -> Posted:
        posted = self.tx.add(list(buffers), indirect=indirect)
        self.notify(TRANSMITQ)
        return posted

    # --- receive ---

    def post_rx(self, *lengths: int) -> None:
        for n in lengths:
            posted = self.rx.add([], [n])
            self.posted[posted.head] = posted

    def received(self, used: list[tuple[int, int]] | None = None) -> list[bytes]:
        """Each delivered frame, header first, its buffers joined by
        ``num_buffers``: from ``used`` elements, or the new ones."""
        used = self.rx.used() if used is None else used
        entries = [self._read(self.posted[head], length) for head, length in used]
        frames = []
        while entries:
            data = entries.pop(0)
            count = VNET_HDR.unpack_from(data)[6] if self.features & VIRTIO_NET_F_MRG_RXBUF and data else 1
            for _ in range(count - 1):
                data += entries.pop(0)
            frames.append(data)
        return frames

    def _read(self, posted: Posted, length: int) -> bytes:
        data = b""
        for addr, n in posted.writable:
            data += self.memory.read(addr, min(n, length - len(data)))
        return data


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory(RAM)
    yield mem
    mem.close()


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop("test-net")
    loop.start()
    yield loop
    loop.close()


@pytest.fixture
def make(memory: GuestMemory, loop: EventLoop) -> Iterator:
    made: list[NetHarness] = []

    def factory(**backend: object) -> NetHarness:
        harness = NetHarness(memory, loop, **backend)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.close()


@pytest.fixture
def net(make) -> NetHarness:
    """A tap-like backend (headers, every offload), driver accepting all features."""
    harness = make(offloads=OFFLOAD_FEATURES)
    harness.activate()
    return harness


# --- features (§5.1.3) ---

def test_features_backend_without_offloads_offers_base_set(make) -> None:
    harness = make()

    assert harness.device.device_features() == BASE_FEATURES


def test_features_backend_offloads_are_offered(make) -> None:
    harness = make(offloads=OFFLOAD_FEATURES)

    assert harness.device.device_features() == BASE_FEATURES | OFFLOAD_FEATURES


def test_features_backend_offloads_missing_their_dependencies_are_not_offered(make) -> None:
    harness = make(offloads=VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_ECN | VIRTIO_NET_F_GUEST_TSO6
                   | VIRTIO_NET_F_GUEST_ECN | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_UFO)

    offered = harness.device.device_features()

    # HOST_* keep CSUM; GUEST_TSO6 has no GUEST_CSUM, and GUEST_ECN then no TSO
    assert offered & OFFLOAD_FEATURES == (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_ECN
                                          | VIRTIO_NET_F_HOST_UFO)


def test_features_host_ecn_without_host_tso_is_not_offered(make) -> None:
    harness = make(offloads=VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_ECN | VIRTIO_NET_F_HOST_UFO)

    assert harness.device.device_features() & OFFLOAD_FEATURES == VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_UFO


def test_features_backend_without_vnet_hdr_offers_no_offloads(make) -> None:
    harness = make(vnet_hdr=False, offloads=OFFLOAD_FEATURES)

    assert harness.device.device_features() == BASE_FEATURES


def test_features_backend_mtu_offers_mtu(make) -> None:
    assert make(mtu=9000).device.device_features() & VIRTIO_NET_F_MTU
    assert not make().device.device_features() & VIRTIO_NET_F_MTU


def test_features_backend_mtu_out_of_range_is_refused(make) -> None:
    backend = FakeNetBackend(mtu=67)
    try:
        with pytest.raises(ValueError, match="MTU"):
            VirtioNet(backend, MAC, EventLoop("unused"))
    finally:
        backend.close()


def test_activate_passes_accepted_features_to_backend(make) -> None:
    harness = make(offloads=OFFLOAD_FEATURES)
    accepted = BASE_FEATURES | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4

    harness.activate(accepted)

    assert harness.backend.negotiated == [accepted]
    assert harness.resets.reasons == []


@pytest.mark.parametrize("features", [
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6 | VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_UFO | VIRTIO_NET_F_HOST_ECN,
], ids=["guest_tso4", "guest_tso6", "guest_ufo", "guest_ecn", "host_tso4", "host_tso6", "host_ufo",
        "host_ecn", "host_ecn_ufo"])
def test_activate_features_violating_dependencies_ask_for_reset(make, features: int) -> None:
    harness = make(offloads=OFFLOAD_FEATURES)

    harness.activate(BASE_FEATURES | features)
    harness.tx.add([header() + frame(60)])
    harness.notify(TRANSMITQ)

    assert len(harness.resets.reasons) == 1 and "5.1.3.1" in harness.resets.reasons[0]
    assert harness.tx.used() == [] and harness.backend.sent() == []
    assert harness.backend.negotiated == []


# --- configuration space (§5.1.4) ---

def read_config(device: VirtioNet, offset: int, length: int) -> bytes:
    data = bytearray(length)
    device.read_config(offset, memoryview(data))
    return bytes(data)


def test_config_holds_mac_status_pairs_and_mtu(make) -> None:
    harness = make(mtu=9000)

    mac, status, pairs, mtu = struct.unpack("<6sHHH", read_config(harness.device, 0, 12))

    assert (mac, status, pairs, mtu) == (MAC, VIRTIO_NET_S_LINK_UP, 1, 9000)


def test_config_without_mtu_reads_zero_mtu_and_zero_past_end(make) -> None:
    harness = make()

    assert read_config(harness.device, 10, 2) == b"\0\0"
    assert read_config(harness.device, 12, 8) == bytes(8)
    assert read_config(harness.device, 4, 4) == MAC[4:] + b"\x01\x00"


def test_config_driver_write_changes_nothing(make) -> None:
    harness = make()

    harness.device.write_config(0, b"\xff" * 6)

    assert read_config(harness.device, 0, 6) == MAC


def test_set_link_down_clears_status_and_signals_config_change(net: NetHarness) -> None:
    net.device.set_link(False)

    assert read_config(net.device, 6, 2) == b"\0\0"
    assert net.interrupt.config_changes == 1

    net.device.set_link(True)

    assert read_config(net.device, 6, 2) == b"\x01\x00"
    assert net.interrupt.config_changes == 2


def test_set_link_unchanged_signals_nothing(net: NetHarness) -> None:
    net.device.set_link(True)

    assert net.interrupt.config_changes == 0


def test_parse_mac_text_gives_bytes_and_refuses_garbage() -> None:
    assert parse_mac("52:54:00:12:34:56") == MAC
    with pytest.raises(ValueError):
        parse_mac("52:54:00:12:34")


# --- transmit (§5.1.6.2) ---

def test_transmit_vnet_hdr_backend_gets_header_and_frame(net: NetHarness) -> None:
    data = frame(100)

    posted = net.transmit(header(), data)

    assert net.backend.sent() == [header() + data]
    assert net.tx.used() == [(posted.head, 0)]
    assert net.interrupt.used == [TRANSMITQ]
    assert (net.stat("tx_packets"), net.stat("tx_bytes")) == (1, 100)


def test_transmit_without_vnet_hdr_backend_gets_bare_frame(make) -> None:
    harness = make(vnet_hdr=False)
    harness.activate()
    data = frame(60)

    harness.transmit(header() + data)

    assert harness.backend.sent() == [data]


def test_transmit_header_across_descriptors_is_joined(net: NetHarness) -> None:
    data = frame(300, seed=1)
    whole = header() + data

    net.transmit(whole[:5], whole[5:20], whole[20:200], whole[200:], indirect=True)

    assert net.backend.sent() == [whole]


def test_transmit_gso_fields_pass_through_to_backend(net: NetHarness) -> None:
    gso = header(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, hdr_len=54, gso_size=1448,
                 csum_start=34, csum_offset=16)
    data = frame(60000, seed=2)

    net.transmit(gso, data)

    assert net.backend.sent() == [gso + data]
    assert net.stat("tx_errors") == 0


def test_transmit_many_frames_keep_their_order(net: NetHarness) -> None:
    frames = [frame(60 + i, seed=i) for i in range(10)]
    for data in frames:
        net.tx.add([header() + data], indirect=bool(data[-1] & 1))

    net.notify(TRANSMITQ)

    assert net.backend.sent() == [header() + data for data in frames]
    assert len(net.tx.used()) == 10


def test_transmit_backend_full_waits_for_room_without_spinning(make) -> None:
    harness = make(sndbuf=4096)
    harness.activate()
    frames = [frame(1000, seed=i) for i in range(12)]
    for data in frames:
        harness.tx.add([header() + data])

    harness.notify(TRANSMITQ)
    time.sleep(0.1)
    harness.sync()
    sends, flushes, completed = harness.backend.calls["send"], harness.backend.calls["flush"], len(harness.tx.used())

    assert completed < len(frames), "the backend never filled up"
    assert sends == completed + 1          # one refused send, then a wait
    assert flushes == completed            # one after each frame taken (a tail left?), none while waiting
    received: list[bytes] = []

    def drain() -> bool:                   # the peer reads: room again
        received.extend(harness.backend.sent())
        return harness.tx.used_idx() == len(frames)

    assert wait_until(drain)
    harness.sync()
    received += harness.backend.sent()
    assert received == [header() + data for data in frames]
    assert harness.stat("tx_packets") == len(frames)
    assert harness.backend.calls["flush"] >= 1


class StreamBackend:
    """passt's side as the device sees it: bare frames through
    :class:`FramedStream` on a SOCK_STREAM socketpair whose small buffers make
    the kernel take a big frame only in part."""

    vnet_hdr = False
    mtu = 65520                     # what passt offers

    def __init__(self) -> None:
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        self.sock.setblocking(False)
        self.stream = FramedStream(self.sock, "peer")

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_into(self, buf: memoryview) -> int:
        return self.stream.recv_into(buf)

    def send(self, parts) -> bool:
        return self.stream.send(parts)

    def flush(self) -> bool:
        return self.stream.flush()

    def offloads(self) -> int:
        return 0

    def set_offloads(self, negotiated: int) -> None:
        pass

    def close(self) -> None:
        self.sock.close()
        self.peer.close()

    def read(self, count: int, timeout: float) -> bytes:
        """What the peer reads of ``count`` bytes within ``timeout`` seconds."""
        got = bytearray()
        self.peer.settimeout(timeout)
        try:
            while len(got) < count:
                chunk = self.peer.recv(count - len(got))
                if not chunk:
                    break
                got += chunk
        except TimeoutError:
            pass
        return bytes(got)


def test_transmit_frame_taken_in_part_tail_follows_without_another_frame(memory: GuestMemory,
                                                                          loop: EventLoop) -> None:
    # Arrange: a stream backend that takes a 60000-byte frame only in part
    backend = StreamBackend()
    harness = NetHarness(memory, loop, use=backend)
    harness.activate()
    data = frame(60000, seed=3)
    try:
        # Act: the guest sends that one frame and nothing after it
        harness.transmit(header() + data)
        assert backend.stream.pending, "the kernel took the whole frame: the test did not test a tail"
        # Assert: the peer (passt) gets all of it, though no other frame pushes the tail
        assert backend.read(4 + len(data), timeout=5) == len(data).to_bytes(4, "big") + data
        assert harness.tx.used_idx() == 1
    finally:
        harness.close()


def test_transmit_notify_from_another_thread_runs_on_the_loop(make) -> None:
    harness = make()
    harness.activate()
    threads: list[int] = []
    original = harness.backend.send
    harness.backend.send = lambda parts: (threads.append(threading.get_ident()), original(parts))[1]
    loop_thread: list[int] = []
    call_on_loop(harness.loop, lambda: loop_thread.append(threading.get_ident()))

    harness.tx.add([header() + frame(60)])
    harness.device.queue_notify(TRANSMITQ)      # this (test) thread stands in for a vCPU
    harness.sync()

    assert threads == loop_thread


def test_transmit_backend_refusing_a_frame_counts_error_and_goes_on(net: NetHarness) -> None:
    net.backend.fail_send = OSError(22, "Invalid argument")
    net.tx.add([header() + frame(60, seed=1)])
    net.tx.add([header() + frame(60, seed=2)])

    net.notify(TRANSMITQ)

    assert net.backend.sent() == [header() + frame(60, seed=2)]
    assert (net.stat("tx_errors"), net.stat("tx_packets")) == (1, 1)
    assert len(net.tx.used()) == 2


def test_transmit_link_down_drops_frames(net: NetHarness) -> None:
    net.device.set_link(False)

    net.transmit(header() + frame(60))

    assert net.backend.sent() == []
    assert net.stat("tx_dropped") == 1 and len(net.tx.used()) == 1


def test_transmit_with_rx_queue_not_ready_still_works(make) -> None:
    harness = make()
    harness.activate(rx_ready=False)

    harness.transmit(header() + frame(60))

    assert len(harness.backend.sent()) == 1


# --- receive (§5.1.6.3, §5.1.6.4) ---

def test_receive_vnet_hdr_frame_fills_one_chain_without_mergeable(make) -> None:
    harness = make()
    harness.activate(BASE_FEATURES & ~VIRTIO_NET_F_MRG_RXBUF)
    harness.post_rx(2048, 2048)
    data = frame(1000)

    harness.backend.feed(header(num_buffers=0x7777) + data)
    harness.wait_stat("rx_packets", 1)

    assert harness.received() == [header(num_buffers=1) + data]
    assert harness.interrupt.used == [RECEIVEQ]
    assert harness.stat("rx_bytes") == 1000


def test_receive_without_vnet_hdr_writes_zero_header(make) -> None:
    harness = make(vnet_hdr=False)
    harness.activate()
    harness.post_rx(2048)
    data = frame(500)

    harness.backend.feed(data)
    harness.wait_stat("rx_packets", 1)

    assert harness.received() == [header(num_buffers=1) + data]


def test_receive_without_vnet_hdr_or_mergeable_sets_num_buffers_one(make) -> None:
    harness = make(vnet_hdr=False)
    harness.activate(BASE_FEATURES & ~VIRTIO_NET_F_MRG_RXBUF)
    harness.post_rx(2048)

    harness.backend.feed(frame(64))
    harness.wait_stat("rx_packets", 1)

    assert harness.received() == [header(num_buffers=1) + frame(64)]


def test_receive_mergeable_frame_spans_chains_with_num_buffers(net: NetHarness) -> None:
    net.post_rx(512, 512, 512, 512)
    data = frame(1400)

    net.backend.feed(header() + data)
    net.wait_stat("rx_packets", 1)
    used = net.rx.used()

    assert [length for _, length in used] == [512, 512, 388]
    assert net.received(used) == [header(num_buffers=3) + data]


class IndexStores(GuestMemory):
    """Guest RAM that remembers every 16-bit store (the ring indexes)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.stores: list[tuple[int, int]] = []

    def write_u16(self, addr: int, value: int) -> None:
        self.stores.append((addr, value))
        super().write_u16(addr, value)


def test_receive_mergeable_buffers_reach_the_driver_together(loop: EventLoop) -> None:
    memory = IndexStores(RAM)
    harness = NetHarness(memory, loop)
    try:
        harness.activate()
        harness.post_rx(100, 100, 100, 100)
        memory.stores.clear()

        harness.backend.feed(header() + frame(300))
        harness.wait_stat("rx_packets", 1)

        assert [value for addr, value in memory.stores if addr == harness.rx.used_ring + 2] == [4]
    finally:
        harness.close()
        memory.close()


def test_receive_mergeable_takes_every_posted_chain_and_keeps_the_rest_for_the_next_frame(net: NetHarness) -> None:
    net.post_rx(512, 512, 512, 512)
    heads = list(net.posted)

    net.backend.feed(header() + frame(300))
    net.wait_stat("rx_packets", 1)
    assert net.device.save_device_state()["rx_chains"] == heads[1:]    # popped at once, not used yet

    net.backend.feed(header() + frame(600, seed=1))
    net.wait_stat("rx_packets", 2)
    used = net.rx.used()
    assert [head for head, _ in used] == heads[:3]
    assert net.received(used) == [header(num_buffers=1) + frame(300), header(num_buffers=2) + frame(600, seed=1)]
    assert net.device.save_device_state()["rx_chains"] == heads[3:]


def test_receive_mergeable_frame_across_the_end_of_the_used_ring(net: NetHarness) -> None:
    for i in range(QUEUE - 2):          # move the ring positions to two before its end
        net.post_rx(64)
        net.backend.feed(header() + frame(40, seed=i))
        net.wait_stat("rx_packets", i + 1)
        net.received()
    net.post_rx(256, 256, 256, 256)
    data = frame(900, seed=99)

    net.backend.feed(header() + data)
    net.wait_stat("rx_packets", QUEUE - 1)

    used = net.rx.used()
    assert [length for _, length in used] == [256, 256, 256, 144]
    assert net.received(used) == [header(num_buffers=4) + data]


def test_receive_mergeable_small_frames_take_one_chain_each(net: NetHarness) -> None:
    net.post_rx(1536, 1536, 1536)
    frames = [frame(60 + i, seed=i) for i in range(3)]

    for data in frames:
        net.backend.feed(header() + data)
    net.wait_stat("rx_packets", 3)

    assert net.received() == [header(num_buffers=1) + data for data in frames]


def test_receive_gso_frame_header_reaches_the_guest(net: NetHarness) -> None:
    gso = header(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, hdr_len=54, gso_size=1448,
                 csum_start=34, csum_offset=16)
    data = frame(40000, seed=3)
    net.post_rx(*[4096] * 10)

    net.backend.feed(gso + data)
    net.wait_stat("rx_packets", 1)

    expected = gso[:10] + struct.pack("<H", 10)
    assert net.received() == [expected + data]


def test_receive_gso_frame_not_negotiated_is_dropped(make) -> None:
    harness = make(offloads=OFFLOAD_FEATURES)
    harness.activate(BASE_FEATURES | VIRTIO_NET_F_GUEST_CSUM)
    harness.post_rx(4096, 4096)
    gso = header(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, hdr_len=54, gso_size=1448,
                 csum_start=34, csum_offset=16)

    harness.backend.feed(gso + frame(1000))
    harness.backend.feed(header() + frame(200))
    harness.wait_stat("rx_packets", 1)

    assert harness.stat("rx_errors") == 1
    assert harness.received() == [header(num_buffers=1) + frame(200)]


def test_receive_partial_checksum_without_guest_csum_is_dropped(make) -> None:
    harness = make(offloads=OFFLOAD_FEATURES)
    harness.activate(BASE_FEATURES)
    harness.post_rx(2048)

    harness.backend.feed(header(VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=34, csum_offset=16) + frame(100))
    harness.wait_stat("rx_errors", 1)

    assert harness.stat("rx_packets") == 0 and harness.rx.used() == []


def test_receive_data_valid_without_guest_csum_is_cleared(make) -> None:
    harness = make(offloads=OFFLOAD_FEATURES)
    harness.activate(BASE_FEATURES)
    harness.post_rx(2048)

    harness.backend.feed(header(VIRTIO_NET_HDR_F_DATA_VALID) + frame(100))
    harness.wait_stat("rx_packets", 1)

    assert harness.received() == [header(num_buffers=1) + frame(100)]


def test_receive_data_valid_with_guest_csum_is_kept(net: NetHarness) -> None:
    net.post_rx(2048)

    net.backend.feed(header(VIRTIO_NET_HDR_F_DATA_VALID) + frame(100))
    net.wait_stat("rx_packets", 1)

    assert net.received() == [header(VIRTIO_NET_HDR_F_DATA_VALID, num_buffers=1) + frame(100)]


def test_receive_frame_too_big_for_chain_without_mergeable_is_dropped(make) -> None:
    harness = make()
    harness.activate(BASE_FEATURES & ~VIRTIO_NET_F_MRG_RXBUF)
    harness.post_rx(256, 2048)

    harness.backend.feed(header() + frame(1000, seed=1))
    harness.backend.feed(header() + frame(1000, seed=2))
    harness.wait_stat("rx_packets", 1)

    used = harness.rx.used()
    assert [length for _, length in used] == [0, 12 + 1000]
    assert harness.stat("rx_dropped") == 1
    assert harness.received(used)[1] == header(num_buffers=1) + frame(1000, seed=2)


def test_receive_frame_longer_than_mtu_is_dropped(make) -> None:
    harness = make()                           # no MTU: 1500, so 1518 bytes with a VLAN tag
    harness.activate()
    harness.post_rx(*[4096] * 4)

    harness.backend.feed(header() + frame(1519))
    harness.backend.feed(header() + frame(1518))
    harness.wait_stat("rx_packets", 1)

    assert harness.stat("rx_errors") == 1
    assert harness.received() == [header(num_buffers=1) + frame(1518)]


def test_receive_backend_mtu_raises_the_limit(make) -> None:
    harness = make(mtu=9000)
    harness.activate()
    harness.post_rx(*[4096] * 6)

    harness.backend.feed(header() + frame(9018))
    harness.backend.feed(header() + frame(9019))
    harness.wait_stat("rx_errors", 1)

    assert harness.stat("rx_packets") == 1


def test_receive_gso_limit_is_64k_ip_packet(net: NetHarness) -> None:
    net.post_rx(*[16384] * 8)

    net.backend.feed(header() + frame(MAX_GSO_FRAME, seed=4))
    net.wait_stat("rx_packets", 1)

    assert net.received() == [header(num_buffers=5) + frame(MAX_GSO_FRAME, seed=4)]


def test_receive_no_buffers_holds_one_frame_and_stops_reading(net: NetHarness) -> None:
    for i in range(3):
        net.backend.feed(header() + frame(100, seed=i))

    net.wait_stat("rx_no_buffer", 1)
    time.sleep(0.1)

    assert net.backend.calls["recv_into"] == 1, "the device read more than the frame it holds, or spun"
    assert net.stat("rx_no_buffer") == 1
    assert net.device.loop._callbacks.get(net.backend.fileno()) is None

    net.post_rx(2048, 2048, 2048)
    net.notify(RECEIVEQ)
    net.wait_stat("rx_packets", 3)

    assert net.received() == [header(num_buffers=1) + frame(100, seed=i) for i in range(3)]
    assert net.stat("rx_dropped") == 0


def test_receive_notify_without_new_buffers_waits_again(net: NetHarness) -> None:
    net.backend.feed(header() + frame(100))
    net.wait_stat("rx_no_buffer", 1)

    net.notify(RECEIVEQ)

    assert net.stat("rx_no_buffer") == 2
    assert net.backend.calls["recv_into"] == 1


def test_receive_mergeable_frame_waits_for_enough_buffers(net: NetHarness) -> None:
    net.post_rx(512)
    data = frame(1400)

    net.backend.feed(header() + data)
    net.wait_stat("rx_no_buffer", 1)
    assert net.rx.used() == []              # the first buffer is kept, not published alone

    net.post_rx(512, 512)
    net.notify(RECEIVEQ)
    net.wait_stat("rx_packets", 1)

    assert net.received() == [header(num_buffers=3) + data]


def test_receive_mergeable_ring_too_small_drops_frame_and_keeps_chains(net: NetHarness) -> None:
    net.post_rx(*[64] * QUEUE)                  # 1 KiB in all

    net.backend.feed(header() + frame(1400))
    net.backend.feed(header() + frame(500))
    net.wait_stat("rx_packets", 1)

    assert net.stat("rx_dropped") == 1
    assert net.received() == [header(num_buffers=8) + frame(500)]


def test_receive_before_activation_is_read_and_dropped(make) -> None:
    harness = make()

    for i in range(3):
        harness.backend.feed(header() + frame(100, seed=i))
    harness.wait_stat("rx_dropped", 3)

    assert harness.backend.calls["recv_into"] >= 3


def test_receive_queue_not_ready_is_read_and_dropped(make) -> None:
    harness = make()
    harness.activate(rx_ready=False)

    harness.backend.feed(header() + frame(100))
    harness.wait_stat("rx_dropped", 1)

    assert harness.stat("rx_no_buffer") == 0


def test_receive_link_down_is_read_and_dropped(net: NetHarness) -> None:
    net.post_rx(2048)
    net.device.set_link(False)

    net.backend.feed(header() + frame(100))
    net.wait_stat("rx_dropped", 1)

    assert net.rx.used() == []


def test_receive_link_down_while_waiting_drops_held_frame_and_reads_again(net: NetHarness) -> None:
    net.backend.feed(header() + frame(100))
    net.wait_stat("rx_no_buffer", 1)

    net.device.set_link(False)
    net.backend.feed(header() + frame(100))

    net.wait_stat("rx_dropped", 2)


def test_receive_event_idx_asks_for_notification_when_ring_empty(net: NetHarness) -> None:
    net.post_rx(2048)

    net.backend.feed(header() + frame(100, seed=1))
    net.backend.feed(header() + frame(100, seed=2))
    net.wait_stat("rx_no_buffer", 1)

    assert net.rx.avail_event() == 1           # notify me once buffer 1 is posted


# --- reset, close, stats ---

def test_reset_drops_held_frame_and_goes_back_to_reading(net: NetHarness) -> None:
    net.backend.feed(header() + frame(100))
    net.wait_stat("rx_no_buffer", 1)

    net.device.reset()
    net.backend.feed(header() + frame(100))

    net.wait_stat("rx_dropped", 2)              # the held frame, then the new one


def test_reset_then_activate_serves_the_new_driver(net: NetHarness) -> None:
    net.transmit(header() + frame(60, seed=1))
    net.device.reset()

    net.activate()
    net.transmit(header() + frame(60, seed=2))

    assert net.backend.sent() == [header() + frame(60, seed=1), header() + frame(60, seed=2)]


def test_queue_notify_after_reset_is_ignored(net: NetHarness) -> None:
    net.tx.add([header() + frame(60)])
    net.device.reset()

    net.notify(TRANSMITQ)

    assert net.backend.sent() == []


def test_close_stops_watching_but_leaves_backend_open(net: NetHarness) -> None:
    net.device.close()
    net.sync()

    assert net.backend.fileno() not in net.loop._callbacks
    assert not net.backend.closed
    net.backend.feed(header() + frame(60))
    time.sleep(0.05)
    assert net.backend.calls["recv_into"] == 0


def test_stats_has_every_counter(net: NetHarness) -> None:
    stats = net.device.stats()

    assert set(stats) == set(STAT_NAMES) == {"rx_packets", "rx_bytes", "rx_dropped", "rx_errors", "rx_no_buffer",
                                             "tx_packets", "tx_bytes", "tx_dropped", "tx_errors"}
    assert all(value == 0 for value in stats.values())


# --- the backend goes away ---

def test_backend_gone_on_receive_sets_link_down_and_keeps_running(net: NetHarness,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvmlite.devices.virtio.net")

    net.backend.peer.close()                    # recv_into raises ConnectionResetError
    assert wait_until(lambda: not net.device.link_up)
    net.sync()

    assert read_config(net.device, 6, 2) == b"\0\0"
    assert net.interrupt.config_changes == 1
    assert net.backend.fileno() not in net.loop._callbacks
    calls = net.backend.calls["recv_into"]
    net.tx.add([header() + frame(60)])
    net.notify(TRANSMITQ)
    assert net.stat("tx_dropped") == 1 and len(net.tx.used()) == 1
    assert net.backend.calls["recv_into"] == calls
    assert len([r for r in caplog.records if "backend gone" in r.getMessage()]) == 1


def test_backend_gone_on_send_sets_link_down(net: NetHarness) -> None:
    net.backend.fail_send = BrokenPipeError(32, "Broken pipe")

    net.transmit(header() + frame(60, seed=1))
    net.transmit(header() + frame(60, seed=2))

    assert not net.device.link_up
    assert net.interrupt.config_changes == 1
    assert net.stat("tx_dropped") == 2 and len(net.tx.used()) == 2
    assert net.backend.calls["send"] == 1


def test_backend_gone_set_link_up_still_reads_down(net: NetHarness) -> None:
    net.backend.fail_send = BrokenPipeError(32, "Broken pipe")
    net.transmit(header() + frame(60))

    net.device.set_link(True)

    assert not net.device.link_up
