"""virtio-net against a hostile driver: every malformed transmit chain is
dropped, counted and returned while the device goes on (§5.1.6.2); bad
receive chains are returned unused; a malformed ring asks for a reset; and
random rings never make the device touch memory outside guest RAM or raise
on its event loop."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from kvmlite.devices.virtio.net import (MAX_GSO_FRAME, OFFLOAD_FEATURES, RECEIVEQ, TRANSMITQ, VIRTIO_NET_F_CSUM,
                                        VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
                                        VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_DATA_VALID,
                                        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
                                        VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
                                        VirtioNet)
from kvmlite.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, Queue
from tests.unit.devices.virtio.fakedriver import (FakeNetBackend, NeedsResetRecorder, RecordingInterrupt,
                                                  RecordingMemory, call_on_loop, wait_until)
from tests.unit.devices.virtio.hostile import RAM as HOSTILE_RAM
from tests.unit.devices.virtio.hostile import hostile_rings, install
from tests.unit.devices.virtio.test_virtio_net import (BASE_FEATURES, MAC, QUEUE, NetHarness, frame, header)

NEEDS_CSUM = VIRTIO_NET_HDR_F_NEEDS_CSUM
TSO4 = VIRTIO_NET_HDR_GSO_TCPV4
HOST_TSO = VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4     # a driver that takes TSO for IPv4 only
GOOD_GSO = dict(flags=NEEDS_CSUM, gso_type=TSO4, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16)


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory(8 << 20)
    yield mem
    mem.close()


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop("test-net-hostile")
    loop.start()
    yield loop
    loop.close()


@pytest.fixture
def make(memory: GuestMemory, loop: EventLoop) -> Iterator:
    made: list[NetHarness] = []

    def factory(features: int, **backend: object) -> NetHarness:
        harness = NetHarness(memory, loop, **backend)
        harness.activate(features)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.close()


def gso(**changes: int) -> bytes:
    return header(**(GOOD_GSO | changes))


# (id, driver features beyond BASE_FEATURES, chain buffers)
HOSTILE_TX = [
    ("shorter_than_header", 0, [header()[:8]]),
    ("header_only", 0, [header()]),
    ("shorter_than_ethernet_header", 0, [header() + frame(60)[:13]]),
    ("longer_than_mtu", 0, [header() + frame(1500 + 14 + 4 + 1)]),
    ("longer_than_64k_with_tso", HOST_TSO, [gso(), frame(MAX_GSO_FRAME + 1)]),
    ("unknown_gso_type", HOST_TSO, [gso(gso_type=2), frame(4000)]),
    ("udp_l4_gso_type", HOST_TSO, [gso(gso_type=5), frame(4000)]),
    ("gso_type_not_negotiated", HOST_TSO, [gso(gso_type=VIRTIO_NET_HDR_GSO_TCPV6), frame(4000)]),
    ("ufo_not_negotiated", HOST_TSO, [gso(gso_type=VIRTIO_NET_HDR_GSO_UDP), frame(4000)]),
    ("gso_without_any_tso", 0, [gso(), frame(1000)]),
    ("ecn_not_negotiated", HOST_TSO, [gso(gso_type=TSO4 | VIRTIO_NET_HDR_GSO_ECN), frame(4000)]),
    ("ecn_without_gso_type", HOST_TSO | VIRTIO_NET_F_HOST_ECN,
     [header(gso_type=VIRTIO_NET_HDR_GSO_ECN), frame(1000)]),
    ("gso_size_zero", HOST_TSO, [gso(gso_size=0), frame(4000)]),
    ("gso_without_needs_csum", HOST_TSO, [gso(flags=0), frame(4000)]),
    ("needs_csum_without_csum", 0, [header(NEEDS_CSUM, csum_start=34, csum_offset=16), frame(1000)]),
    ("csum_past_frame", VIRTIO_NET_F_CSUM, [header(NEEDS_CSUM, csum_start=990, csum_offset=9), frame(1000)]),
    ("csum_offset_huge", VIRTIO_NET_F_CSUM, [header(NEEDS_CSUM, csum_start=0, csum_offset=0xFFFF), frame(1000)]),
    ("hdr_len_past_frame", HOST_TSO, [gso(hdr_len=4001), frame(4000)]),
    ("data_valid_from_driver", 0, [header(VIRTIO_NET_HDR_F_DATA_VALID), frame(1000)]),
    ("unknown_flags", 0, [header(0x40), frame(1000)]),
]


@pytest.mark.parametrize("features,buffers", [case[1:] for case in HOSTILE_TX], ids=[case[0] for case in HOSTILE_TX])
def test_transmit_hostile_chain_is_dropped_counted_and_device_goes_on(make, features: int,
                                                                      buffers: list[bytes]) -> None:
    harness = make(BASE_FEATURES | features, offloads=OFFLOAD_FEATURES)
    bad = harness.tx.add(buffers)
    good = harness.tx.add([header() + frame(100)])

    harness.notify(TRANSMITQ)

    assert harness.tx.used() == [(bad.head, 0), (good.head, 0)]
    assert harness.backend.sent() == [header() + frame(100)]
    assert harness.device.stats()["tx_errors"] == 1
    assert harness.resets.reasons == []


def test_transmit_writable_descriptor_is_dropped_and_counted(make) -> None:
    harness = make(BASE_FEATURES)
    bad = harness.tx.add([header() + frame(100)], [64])
    good = harness.tx.add([header() + frame(100)])

    harness.notify(TRANSMITQ)

    assert harness.tx.used() == [(bad.head, 0), (good.head, 0)]
    assert len(harness.backend.sent()) == 1
    assert harness.device.stats()["tx_errors"] == 1


@pytest.mark.parametrize("features,buffers", [
    (HOST_TSO, [gso(), frame(MAX_GSO_FRAME)]),
    (HOST_TSO, [gso(gso_type=TSO4), frame(60000)]),
    (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO6, [gso(gso_type=VIRTIO_NET_HDR_GSO_TCPV6), frame(60000)]),
    (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_UFO, [gso(gso_type=VIRTIO_NET_HDR_GSO_UDP), frame(8000)]),
    (HOST_TSO | VIRTIO_NET_F_HOST_ECN, [gso(gso_type=TSO4 | VIRTIO_NET_HDR_GSO_ECN), frame(60000)]),
    (0, [header() + frame(1518)]),
    (VIRTIO_NET_F_CSUM, [header(NEEDS_CSUM, csum_start=990, csum_offset=8), frame(1000)]),
], ids=["largest_gso", "tso4", "tso6", "ufo", "ecn", "largest_vlan_frame", "csum_at_end"])
def test_transmit_edge_of_valid_is_sent(make, features: int, buffers: list[bytes]) -> None:
    harness = make(BASE_FEATURES | features, offloads=OFFLOAD_FEATURES)

    harness.transmit(*buffers)

    assert harness.backend.sent() == [b"".join(buffers)]
    assert harness.device.stats()["tx_errors"] == 0


def test_transmit_frame_within_backend_mtu_is_sent_past_it_dropped(make) -> None:
    harness = make(BASE_FEATURES, mtu=9000)

    harness.transmit(header() + frame(9018))
    harness.transmit(header() + frame(9019))

    assert len(harness.backend.sent()) == 1
    assert harness.device.stats()["tx_errors"] == 1


def loop_chain(harness: NetHarness, queue: str) -> None:
    """Two descriptors pointing at each other, published (§2.7.5.2)."""
    driver = harness.tx if queue == "tx" else harness.rx
    flags = VIRTQ_DESC_F_NEXT | (VIRTQ_DESC_F_WRITE if queue == "rx" else 0)
    buffer = driver.alloc(64)
    driver.write_desc(driver.desc_table, 0, buffer, 64, flags, 1)
    driver.write_desc(driver.desc_table, 1, buffer, 64, flags, 0)
    driver.publish(0)


def test_transmit_descriptor_loop_asks_for_reset_and_device_recovers(make) -> None:
    harness = make(BASE_FEATURES)
    loop_chain(harness, "tx")

    harness.notify(TRANSMITQ)

    assert len(harness.resets.reasons) == 1 and "visits more than" in harness.resets.reasons[0]
    harness.device.reset()
    harness.activate(BASE_FEATURES)
    harness.transmit(header() + frame(60))
    assert len(harness.backend.sent()) == 1


def test_receive_descriptor_loop_asks_for_reset_then_drops_without_spinning(make) -> None:
    harness = make(BASE_FEATURES)
    loop_chain(harness, "rx")

    harness.backend.feed(header() + frame(100))
    assert harness.resets.event.wait(10)
    harness.backend.feed(header() + frame(100))
    harness.wait_stat("rx_dropped", 2)       # the frame in hand, then the next: read and dropped

    assert harness.device.stats()["rx_packets"] == 0
    assert harness.backend.calls["recv_into"] <= 4


def test_receive_buffer_outside_ram_asks_for_reset(make, memory: GuestMemory) -> None:
    harness = make(BASE_FEATURES)
    driver = harness.rx
    driver.write_desc(driver.desc_table, 0, memory.size - 16, 4096, VIRTQ_DESC_F_WRITE)
    driver.publish(0)

    harness.backend.feed(header() + frame(100))

    assert harness.resets.event.wait(10)
    assert "RAM" in harness.resets.reasons[0]


def test_transmit_buffer_address_wrapping_asks_for_reset(make) -> None:
    harness = make(BASE_FEATURES)
    driver = harness.tx
    driver.write_desc(driver.desc_table, 0, (1 << 64) - 16, 4096, 0)
    driver.publish(0)

    harness.notify(TRANSMITQ)

    assert len(harness.resets.reasons) == 1
    assert harness.backend.sent() == []


def test_receive_chain_with_readable_descriptor_is_returned_unused(make) -> None:
    harness = make(BASE_FEATURES)
    bad = harness.rx.add([b"x" * 16], [2048])
    harness.post_rx(2048)

    harness.backend.feed(header() + frame(100))
    harness.wait_stat("rx_packets", 1)

    used = harness.rx.used()
    assert used[0] == (bad.head, 0) and used[1][1] == 112
    assert harness.device.stats()["rx_errors"] == 1


def test_receive_mergeable_unfit_chain_among_good_ones_is_returned_unused_first(make) -> None:
    harness = make(BASE_FEATURES)
    harness.post_rx(512)
    bad = harness.rx.add([b"x" * 16], [512])
    harness.post_rx(512)
    data = frame(700)

    harness.backend.feed(header() + data)
    harness.wait_stat("rx_packets", 1)

    used = harness.rx.used()
    assert used[0] == (bad.head, 0)        # returned as soon as it was popped
    assert [length for _, length in used] == [0, 512, 200]
    assert harness.received(used[1:]) == [header(num_buffers=2) + data]
    assert harness.device.stats()["rx_errors"] == 1


def test_receive_mergeable_chain_shorter_than_header_is_returned_unused(make) -> None:
    harness = make(BASE_FEATURES)
    harness.post_rx(8, 2048)

    harness.backend.feed(header() + frame(100))
    harness.wait_stat("rx_packets", 1)

    assert [length for _, length in harness.rx.used()] == [0, 112]
    assert harness.device.stats()["rx_errors"] == 1


def test_receive_chain_of_scattered_tiny_buffers_is_filled_in_order(make) -> None:
    harness = make(BASE_FEATURES & ~VIRTIO_NET_F_MRG_RXBUF)
    posted = harness.rx.add([], [1, 5, 7, 100, 0, 2000], indirect=True)
    harness.posted[posted.head] = posted

    harness.backend.feed(header() + frame(300))
    harness.wait_stat("rx_packets", 1)

    assert harness.received() == [header(num_buffers=1) + frame(300)]


# --- random rings ---

def _hostile_run(ring, queue_index: int) -> tuple[list[str], list[logging.LogRecord]]:
    """Lay ``ring`` out as queue ``queue_index``'s, let the device serve
    it on a loop, and return the reasons it asked for a reset and the loop's
    error records."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    loop_log = logging.getLogger("kvmlite.base.eventloop")
    loop_log.addHandler(handler)
    memory = RecordingMemory(HOSTILE_RAM)
    loop = EventLoop("test-net-fuzz")
    loop.start()
    backend = FakeNetBackend(offloads=OFFLOAD_FEATURES)
    device = VirtioNet(backend, MAC, loop, queue_size=QUEUE)
    resets = NeedsResetRecorder()
    device.on_needs_reset = resets
    try:
        queues = [Queue(QUEUE), Queue(QUEUE)]
        install(ring, memory, queues[queue_index])
        device.activate(memory, queues, device.device_features(), RecordingInterrupt())
        if queue_index == RECEIVEQ:
            backend.feed(header() + frame(100))
            backend.feed(header() + frame(60))
            assert wait_until(lambda: backend.calls["recv_into"] >= 2 or device.stats()["rx_no_buffer"] >= 1
                              or bool(resets.reasons))
        call_on_loop(loop, lambda: device.queue_notify(queue_index))
        call_on_loop(loop, lambda: None)
        assert set(device.stats()) >= {"rx_packets", "tx_packets"}
    finally:
        device.close()
        loop.close()
        backend.close()
        memory.close()
        loop_log.removeHandler(handler)
    return resets.reasons, [r for r in records if r.levelno >= logging.ERROR]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ring=hostile_rings())
def test_hostile_transmit_ring_never_escapes_ram_or_breaks_the_loop(ring) -> None:
    _, errors = _hostile_run(ring, TRANSMITQ)

    assert errors == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ring=hostile_rings())
def test_hostile_receive_ring_never_escapes_ram_or_breaks_the_loop(ring) -> None:
    _, errors = _hostile_run(ring, RECEIVEQ)

    assert errors == []
