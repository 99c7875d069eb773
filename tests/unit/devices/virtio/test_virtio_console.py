"""virtio-console, one port (virtio 1.2 §5.3)."""

from __future__ import annotations

import threading
from typing import Iterator

import pytest

from kvmlite.devices.virtio.console import RECEIVEQ, TRANSMITQ, VirtioConsole
from kvmlite.devices.virtio.queue import Queue
from kvmlite.base.memory import GuestMemory
from tests.unit.devices.virtio.fakedriver import FakeDriver, NeedsResetRecorder, RecordingInterrupt

QUEUE = 8


class ConsoleHarness:
    def __init__(self, memory: GuestMemory, input_limit: int = 1 << 20) -> None:
        self.memory = memory
        self.output: list[bytes] = []
        self.device = VirtioConsole(self.output.append, queue_size=QUEUE, input_limit=input_limit)
        self.interrupt = RecordingInterrupt()
        self.resets = NeedsResetRecorder()
        self.device.on_needs_reset = self.resets

    def activate(self) -> None:
        self.rxq, self.txq = Queue(QUEUE), Queue(QUEUE)
        # two rings side by side in the same RAM
        self.rx = FakeDriver(self.memory, self.rxq, ring_base=0x1000, heap_end=0x40000)
        self.tx = FakeDriver(self.memory, self.txq, ring_base=0x40000)
        self.device.activate(self.memory, [self.rxq, self.txq], self.device.device_features(), self.interrupt)


@pytest.fixture
def console(memory: GuestMemory) -> Iterator[ConsoleHarness]:
    harness = ConsoleHarness(memory)
    harness.activate()
    yield harness
    harness.device.reset()


def receive_all(console: ConsoleHarness, posted: dict[int, tuple[int, int]]) -> bytes:
    """The bytes the device put into posted receive buffers, in used order."""
    data = b""
    for head, length in console.rx.used():
        addr, _ = posted[head]
        data += console.memory.read(addr, length)
    return data


def post(console: ConsoleHarness, *lengths: int) -> dict[int, tuple[int, int]]:
    posted = {}
    for n in lengths:
        chain = console.rx.add([], [n])
        posted[chain.head] = chain.writable[0]
    console.device.queue_notify(RECEIVEQ)
    return posted


# --- transmit: guest to host ---

def test_console_transmit_passes_guest_bytes_to_output(console: ConsoleHarness) -> None:
    console.tx.add([b"hello, ", b"world\n"])

    console.device.queue_notify(TRANSMITQ)

    assert b"".join(console.output) == b"hello, world\n"
    assert [length for _, length in console.tx.used()] == [0]
    assert console.interrupt.used == [TRANSMITQ]


def test_console_transmit_keeps_order_across_chains(console: ConsoleHarness) -> None:
    for i in range(5):
        console.tx.add([f"line {i}\n".encode()], indirect=bool(i % 2))

    console.device.queue_notify(TRANSMITQ)

    assert b"".join(console.output) == b"".join(f"line {i}\n".encode() for i in range(5))


def test_console_output_failure_is_counted_and_guest_continues(memory: GuestMemory) -> None:
    def broken(data: bytes) -> None:
        raise BrokenPipeError("stdout closed")

    harness = ConsoleHarness(memory)
    harness.device = VirtioConsole(broken, queue_size=QUEUE)
    harness.activate()
    harness.tx.add([b"lost"])

    harness.device.queue_notify(TRANSMITQ)

    assert len(harness.tx.used()) == 1
    assert harness.device.stats()["output_errors"] == 1


# --- receive: host to guest ---

def test_console_input_with_buffers_posted_is_delivered_at_once(console: ConsoleHarness) -> None:
    posted = post(console, 16)

    console.device.enqueue_input(b"ls\n")

    assert receive_all(console, posted) == b"ls\n"
    assert console.interrupt.used == [RECEIVEQ]


def test_console_input_without_buffers_is_buffered_until_posted(console: ConsoleHarness) -> None:
    console.device.enqueue_input(b"typed ")
    console.device.enqueue_input(b"ahead")
    assert console.rx.used() == []

    posted = post(console, 4, 4, 4)

    assert receive_all(console, posted) == b"typed ahead"


def test_console_input_larger_than_one_buffer_spans_buffers(console: ConsoleHarness) -> None:
    posted = post(console, 3, 3)

    console.device.enqueue_input(b"abcdefgh")
    first = receive_all(console, posted)
    posted.update(post(console, 8))

    assert first == b"abcdef"
    assert receive_all(console, posted) == b"gh"


def test_console_input_over_limit_is_dropped_and_counted(memory: GuestMemory) -> None:
    harness = ConsoleHarness(memory, input_limit=4)
    harness.activate()

    harness.device.enqueue_input(b"123456")
    posted = post(harness, 16)

    assert receive_all(harness, posted) == b"1234"
    assert harness.device.stats()["rx_dropped"] == 2


def test_console_input_from_many_threads_loses_nothing(console: ConsoleHarness) -> None:
    def feed(tag: bytes) -> None:
        for _ in range(50):
            console.device.enqueue_input(tag)

    threads = [threading.Thread(target=feed, args=(bytes([65 + i]),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    posted = post(console, 64, 64, 64, 64)

    data = receive_all(console, posted)
    assert sorted(data) == sorted(b"A" * 50 + b"B" * 50 + b"C" * 50 + b"D" * 50)


# --- lifecycle ---

def test_console_input_buffer_survives_reset_and_reaches_new_driver(console: ConsoleHarness) -> None:
    console.device.reset()
    console.device.enqueue_input(b"early")

    console.activate()
    posted = post(console, 16)

    assert receive_all(console, posted) == b"early"


def test_console_after_reset_ignores_notifications(console: ConsoleHarness) -> None:
    console.tx.add([b"after reset"])
    console.device.reset()

    console.device.queue_notify(TRANSMITQ)

    assert console.output == []


def test_console_malformed_transmit_ring_requests_reset(console: ConsoleHarness) -> None:
    console.tx.publish(QUEUE + 1)   # head index outside the queue

    console.device.queue_notify(TRANSMITQ)

    assert console.resets.reasons and "outside a queue" in console.resets.reasons[0]
    console.device.enqueue_input(b"x")
    assert console.rx.used() == []


def test_console_config_space_reads_zero(console: ConsoleHarness) -> None:
    data = memoryview(bytearray(b"\xff" * 12))

    console.device.read_config(0, data)

    assert bytes(data) == bytes(12)
