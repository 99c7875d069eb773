"""Snapshot and restore against real VMMs on this machine's /dev/kvm: the
counter guest (tests/guests/src/counter: %rbx counts, every 2^14 counts it
prints "tick N") is saved mid-count with ``kvmlite snapshot`` and started
twice with ``kvmlite run --restore`` while the original keeps counting.

A restore must go on from the saved count: its first whole tick follows the
last tick the original printed before the snapshot (no restart at tick 1,
no value skipped), and since the guest is deterministic both restores print
the same ticks."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.kvm.conftest import LiveKvmlite, assert_one_line_error
from tests.kvm.test_control import counter, kl, launch, ok, runtime, wait_ticks  # noqa: F401  (fixtures)

pytestmark = pytest.mark.kvm

TICK = re.compile(r"^tick (\d+)$")


def tick_values(live: LiveKvmlite) -> list[int]:
    return [int(m.group(1)) for _t, line in list(live.lines) if (m := TICK.match(line.strip()))]


def wait_values(live: LiveKvmlite, count: int, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values = tick_values(live)
        if len(values) >= count:
            return values
        if live.proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"fewer than {count} ticks within {timeout:g} s\n{live.finish(5)}")


def restore(directory: Path, name: str) -> LiveKvmlite:
    return LiveKvmlite("run", "--restore", str(directory), "--name", name)


def test_snapshot_counter_restored_twice_continues_from_saved_count(launch, tmp_path: Path) -> None:
    # Arrange: the counter guest, ticking
    original = launch("snap-orig")
    wait_ticks(original, 5)
    snap = tmp_path / "snap"
    # Act: save it mid-count; it goes on running
    before = max(tick_values(original))
    run = ok("snapshot", "-n", "snap-orig", str(snap))
    after = max(tick_values(original))
    first, second = restore(snap, "snap-a"), restore(snap, "snap-b")
    try:
        a, b = wait_values(first, 20), wait_values(second, 20)
        # Assert: each restore starts right after the saved count and counts on without a gap
        assert "saved to" in run.stdout and (snap / "memory").exists() and (snap / "state").exists()
        assert before + 1 <= a[0] <= after + 2, (before, after, a[:5])
        assert a[:20] == list(range(a[0], a[0] + 20)), a[:20]
        assert b[:20] == a[:20]                     # the same saved machine, the same ticks
        # ...while the original keeps counting on its own
        n = max(tick_values(original))
        wait_ticks(original, len(tick_values(original)))
        assert max(tick_values(original)) > n
    finally:
        first.kill()
        second.kill()


def test_snapshot_stop_ends_the_original(launch, tmp_path: Path) -> None:
    original = launch("snap-stop")
    wait_ticks(original, 2)
    ok("snapshot", "-n", "snap-stop", str(tmp_path / "s"), "--stop")
    result = original.finish(10)
    assert result.status is not None
    restored = restore(tmp_path / "s", "snap-stop-r")
    try:
        assert len(wait_values(restored, 3)) >= 3
    finally:
        restored.kill()


def test_snapshot_into_non_empty_directory_is_one_line_error(launch, tmp_path: Path) -> None:
    launch("snap-busy")
    (tmp_path / "x").write_text("keep me")
    run = kl("snapshot", "-n", "snap-busy", str(tmp_path))
    assert run.status == 1
    assert_one_line_error(run)
    assert "not empty" in run.stderr, run
    assert (tmp_path / "x").read_text() == "keep me"


@pytest.mark.parametrize("damage, message", [
    ("truncate-memory", "truncated"),
    ("corrupt-state", "checksum"),
    ("wrong-format", "format"),
    ("no-state", "not a kvmlite snapshot"),
])
def test_restore_refuses_a_damaged_snapshot_in_one_line(launch, tmp_path: Path, damage: str, message: str) -> None:
    original = launch("snap-dmg")
    wait_ticks(original, 1)
    snap = tmp_path / "snap"
    ok("snapshot", "-n", "snap-dmg", str(snap))
    state = snap / "state"
    if damage == "truncate-memory":
        with open(snap / "memory", "r+b") as f:
            f.truncate(4096)
    elif damage == "corrupt-state":
        data = bytearray(state.read_bytes())
        data[-10] ^= 0x01
        state.write_bytes(bytes(data))
    elif damage == "wrong-format":
        header, _, body = state.read_bytes().partition(b"\n")
        state.write_bytes(header.replace(b'"format": 1', b'"format": 99') + b"\n" + body)
    else:
        state.unlink()
    run = kl("run", "--restore", str(snap), "--name", "snap-dmg-r")
    assert run.status == 1
    assert_one_line_error(run)
    assert message in run.stderr, run
    assert "tick" not in run.stdout                 # refused before any vCPU ran


def test_restore_with_boot_options_is_usage_error(tmp_path: Path) -> None:
    run = kl("run", "--restore", str(tmp_path), "-c", "2")
    assert run.status == 2
    assert_one_line_error(run)
    assert "cpus comes from the snapshot" in run.stderr, run


ROUND = re.compile(r"^round (\d+) (ok|bad)$")


def rounds(live: LiveKvmlite) -> list[tuple[int, str]]:
    return [(int(m.group(1)), m.group(2)) for _t, line in list(live.lines) if (m := ROUND.match(line.strip()))]


def wait_rounds(live: LiveKvmlite, count: int, timeout: float = 20.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while len(got := rounds(live)) < count:
        if time.monotonic() > deadline or live.proc.poll() is not None:
            pytest.fail(f"fewer than {count} rounds within {timeout:g} s\n{live.finish(5)}")
        time.sleep(0.05)
    return got


@pytest.mark.parametrize("transport", ["pci", "mmio"])
def test_snapshot_with_virtio_disk_restores_and_reads_back_what_was_written(
        kvm, guest, runtime, tmp_path: Path, transport: str) -> None:  # noqa: F811
    # Arrange: the virtio guest writing a sector per round and reading back the one before,
    # with an rng beside the disk (two virtio devices on the transport)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    name = f"snap-blk-{transport}"
    original = LiveKvmlite("run", "-k", str(guest("virtio")), "--name", name, "-d", str(disk), "--rng",
                           "--virtio-transport", transport, "-p", f"transport={transport} mode=blk-rounds timeout=600")
    clone_disk = tmp_path / "clone.img"
    try:
        wait_rounds(original, 5)
        snap = tmp_path / "snap"
        # Act: save (the disk is flushed first), copy the disk for the clone, restore on the copy
        ok("snapshot", "-n", name, str(snap), "--stop")
        original.finish(10)
        saved_rounds = rounds(original)
        clone_disk.write_bytes(disk.read_bytes())
        restored = LiveKvmlite("run", "--restore", str(snap), "--name", f"{name}-r", "--disk", str(clone_disk))
        try:
            got = wait_rounds(restored, 10)
        finally:
            restored.kill()
    finally:
        original.kill()
    # Assert: the restored guest goes on from the next round, each round reading back the
    # sector written the round before (the first one before the snapshot, from the copied disk)
    last = saved_rounds[-1][0]
    numbers = [n for n, _ in got]
    assert numbers[0] in (last + 1, last + 2), (last, numbers[:3])
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert all(status == "ok" for _, status in saved_rounds + got), saved_rounds[-3:] + got
    assert clone_disk.read_bytes() != disk.read_bytes()      # the clone wrote its own copy only
