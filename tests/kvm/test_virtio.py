"""virtio devices under the real /dev/kvm, driven by the purpose-built
"virtio" guest (tests/guests/src/virtio): a small virtio 1.2 driver that
finds its devices on PCI bus 0 (MSI-X interrupts) or in the virtio-mmio
windows (IOAPIC pins 16..), and prints one "virtio: ..." line per result.
It exits 42 when every check passed and 43 when one failed.

What is checked from the host side, after kvmlite exited: the image file
holds exactly what the guest wrote (or, read-only, nothing changed), the
serial GET_ID returned is kvmlite's, the console marker went out through
the virtio transmit queue and the piped input came back through it.

Hostile mode: the guest queues a dozen kinds of garbage (out-of-range
indexes, a looping chain, buffers outside RAM, ...), each time on a freshly
initialised device; kvmlite must refuse every one (an error status or
DEVICE_NEEDS_RESET), never touch the image, keep running, and serve a good
request after the reset; repeating it keeps kvmlite's log bounded.

Benchmark mode (bench/blk.py): every phase runs, at CPL3 and CPL0, and a
guest spinning on the used idx never reads an impossible value.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest

from kvmlite.devices.virtio.disk import image_serial
from tests.kvm.conftest import LiveKvmlite, Run, assert_one_line_error

pytestmark = pytest.mark.kvm

SECTOR = 512
IMAGE_SECTORS = 8192                      # 4 MiB
GUEST_OK = 42
CONFIG_ERROR = 2                          # `kvmlite run --help`: 2 bad usage (configuration errors too)
TRANSPORTS = ("pci", "mmio")
# The guest's default write range (blk.c): sectors 16..79.
FIRST, COUNT = 16, 64


def stamp(seed: int, sector: int) -> bytes:
    """The 512 bytes the guest writes to ``sector`` (blk.h: blk_stamp)."""
    words = (0x5649000000000000 ^ (seed << 32) ^ (sector << 8) ^ w for w in range(SECTOR // 8))
    return struct.pack("<64Q", *words)


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def background(sectors: int = IMAGE_SECTORS) -> bytes:
    """What a fresh image holds: every sector says which one it is, so a
    write to the wrong place shows up."""
    return b"".join(f"background sector {s:08d}\n".encode().ljust(SECTOR, b".") for s in range(sectors))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(background())
    return path


def transport_args(transport: str) -> list[str]:
    return ["--virtio-transport", "mmio"] if transport == "mmio" else []


def run_guest(kvmlite, guest, transport: str, *args: str, params: str = "", input: bytes | None = None) -> Run:
    cmdline = f"transport={transport} {params}".strip()
    return kvmlite("run", "-k", str(guest("virtio")), *transport_args(transport), *args, "-p", cmdline,
                   input=input)


def lines(run: Run, prefix: str) -> list[str]:
    return [line for line in run.stdout.splitlines() if line.startswith(prefix)]


def value(run: Run, prefix: str, key: str) -> str:
    """``key=...`` of the first stdout line starting with ``prefix``."""
    for line in lines(run, prefix):
        match = re.search(rf"\b{key}=(\S*)", line)
        if match:
            return match.group(1)
    raise AssertionError(f"no {key}= on a line starting with {prefix!r}\n{run}")


def sectors(data: bytes, first: int, count: int) -> bytes:
    return data[first * SECTOR:(first + count) * SECTOR]


def expected_location(transport: str) -> str:
    """Where the first virtio device is: slot 1 of bus 0, or the first window."""
    return "at pci 00:01.0" if transport == "pci" else "at mmio 0xd0000000 pin=16"


# --- virtio-blk -------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_blk_write_flush_readback_reaches_the_image(kvmlite, guest, image: Path, transport: str) -> None:
    before = image.read_bytes()

    run = run_guest(kvmlite, guest, transport, "-d", str(image), params="seed=5")

    assert run.status == GUEST_OK, run
    assert f"virtio: found blk type=2 {expected_location(transport)}" in run.stdout, run
    writes = lines(run, "virtio: blk write sector=")
    assert len(writes) == COUNT // 8 and all(line.endswith("status=0") for line in writes), run
    for marker in ("virtio: blk write ok", "virtio: blk flush ok", "virtio: blk readback ok"):
        assert marker in run.stdout, run
    assert int(value(run, "virtio: blk capacity=", "capacity")) == IMAGE_SECTORS
    assert value(run, "virtio: blk capacity=", "ro") == "0"
    after = image.read_bytes()
    assert sectors(after, FIRST, COUNT) == b"".join(stamp(5, s) for s in range(FIRST, FIRST + COUNT))
    assert after[:FIRST * SECTOR] == before[:FIRST * SECTOR]
    assert after[(FIRST + COUNT) * SECTOR:] == before[(FIRST + COUNT) * SECTOR:]
    assert int(value(run, "virtio: blk read fnv1a=", "fnv1a"), 16) == fnv1a32(sectors(after, FIRST, COUNT))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_blk_get_id_returns_the_image_serial(kvmlite, guest, image: Path, transport: str) -> None:
    run = run_guest(kvmlite, guest, transport, "-d", str(image))

    assert run.status == GUEST_OK, run
    assert value(run, "virtio: blk get-id", "status") == "0"
    assert value(run, "virtio: blk get-id", "serial") == image_serial(os.stat(image)).decode()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_blk_read_past_the_end_fails_with_ioerr(kvmlite, guest, image: Path, transport: str) -> None:
    run = run_guest(kvmlite, guest, transport, "-d", str(image))

    assert run.status == GUEST_OK, run
    assert f"virtio: blk read-past-end sector={IMAGE_SECTORS} sectors=1 status=1" in run.stdout, run


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_blk_read_only_refuses_the_write_and_leaves_the_file(kvmlite, guest, image: Path, transport: str) -> None:
    before = image.read_bytes()
    mtime = image.stat().st_mtime_ns

    run = run_guest(kvmlite, guest, transport, "-d", f"{image},ro", params="seed=6")

    assert run.status == GUEST_OK, run
    assert value(run, "virtio: blk capacity=", "ro") == "1"
    assert f"virtio: blk write sector={FIRST} sectors={COUNT} status=1" in run.stdout, run
    assert "virtio: blk ro write refused" in run.stdout, run
    assert image.read_bytes() == before
    assert image.stat().st_mtime_ns == mtime
    assert int(value(run, "virtio: blk read fnv1a=", "fnv1a"), 16) == fnv1a32(sectors(before, FIRST, COUNT))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_blk_completions_arrive_as_interrupts(kvmlite, guest, image: Path, transport: str) -> None:
    """The guest sleeps in hlt; completions must wake it through MSI-X
    (the queue's vector 0x40) or IOAPIC pin 16 (the device's vector)."""
    run = run_guest(kvmlite, guest, transport, "-d", str(image))

    assert run.status == GUEST_OK, run
    assert int(value(run, "virtio: irqs blk", "total")) > 0, run
    assert int(value(run, "virtio: irqs blk", "vec0x40")) > 0, run


# --- virtio-rng and virtio-console ---------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rng_returns_64_varied_bytes(kvmlite, guest, transport: str) -> None:
    run = run_guest(kvmlite, guest, transport, "--rng")

    assert run.status == GUEST_OK, run
    assert "virtio: rng ok" in run.stdout, run
    data = bytes.fromhex(value(run, "virtio: rng bytes=", "hex"))
    assert len(data) == 64 and len(set(data)) > 8, run
    assert int(value(run, "virtio: irqs rng", "total")) > 0, run


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_console_marker_goes_out_and_input_comes_back(kvmlite, guest, transport: str) -> None:
    run = run_guest(kvmlite, guest, transport, "--console", "virtio", params="seed=77 console_rx=1",
                    input=b"hello from the host\n")

    assert run.status == GUEST_OK, run
    # The guest writes these two lines only to the virtio transmit queue.
    assert "virtio-console: marker seed=77" in run.stdout.splitlines(), run
    assert "virtio-console: echo HELLO FROM THE HOST" in run.stdout.splitlines(), run
    assert value(run, "virtio: console rx bytes=", "bytes") == str(len("hello from the host"))


def test_all_three_devices_share_the_bus(kvmlite, guest, image: Path) -> None:
    run = run_guest(kvmlite, guest, "pci", "-d", str(image), "--console", "virtio", "--rng",
                    params="console_rx=1", input=b"abc\n")

    assert run.status == GUEST_OK, run
    found = lines(run, "virtio: found")
    # -d disks first, then the console, then rng, from slot 1 (kvmlite/vmm/devices.py)
    assert [line.split(" at ")[1].split()[0:2] for line in found] == [
        ["pci", "00:01.0"], ["pci", "00:02.0"], ["pci", "00:03.0"]], run
    assert [line.split()[2] for line in found] == ["blk", "console", "rng"], run
    assert "virtio-console: echo ABC" in run.stdout, run


# --- a hostile driver ------------------------------------------------------------------

HOSTILE_CASES = 12
#: one round: a transport line per reset (9) and the block device's
#: rate-limited lines (5)
HOSTILE_LOG_LIMIT = 16


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hostile_driver_is_refused_and_the_device_recovers(kvmlite, guest, image: Path, transport: str) -> None:
    before = image.read_bytes()

    run = run_guest(kvmlite, guest, transport, "-d", str(image), params="mode=hostile seed=11")

    assert run.status == GUEST_OK, run
    assert f"virtio: hostile refused={HOSTILE_CASES}/{HOSTILE_CASES}" in run.stdout, run
    outcomes = [m.group(1) for m in re.finditer(r"^virtio: hostile .* outcome=(\S+)$", run.stdout, re.M)]
    assert len(outcomes) == HOSTILE_CASES, run
    assert all(o == "needs-reset" or o.startswith("error-status=") for o in outcomes), run
    assert "virtio: hostile good readback ok" in run.stdout, run
    # Only the final good write reached the file.
    after = image.read_bytes()
    assert sectors(after, FIRST, 1) == stamp(11, FIRST)
    assert after[:FIRST * SECTOR] == before[:FIRST * SECTOR]
    assert after[(FIRST + 1) * SECTOR:] == before[(FIRST + 1) * SECTOR:]
    assert "Traceback" not in run.stderr, run
    assert len(run.stderr.splitlines()) <= HOSTILE_LOG_LIMIT, run


#: kvmlite/devices/virtio/transport/common.py GuestErrorLog: 32 lines at
#: WARNING, one saying the rest go to DEBUG; plus the block device's own
#: rate-limited lines (5 a minute)
HOSTILE_LOG_BOUND = 32 + 1 + 5


def test_hostile_driver_repeating_cannot_flood_the_log(kvmlite, guest, image: Path) -> None:
    """30 rounds of the cases: 270 device resets, a bounded log."""
    run = run_guest(kvmlite, guest, "pci", "-d", str(image), params="mode=hostile rounds=30")

    assert run.status == GUEST_OK, run
    assert f"virtio: hostile refused={30 * HOSTILE_CASES}/{30 * HOSTILE_CASES}" in run.stdout, run
    assert len(run.stderr.splitlines()) <= HOSTILE_LOG_BOUND, run


# --- the benchmark mode (bench/blk.py) ------------------------------------------------

def bench_results(run: Run) -> dict[str, dict[str, int]]:
    """{phase: {ops, errors, irqs, torn}} from the "bench: result" lines."""
    out = {}
    for line in lines(run, "bench: result "):
        name, *words = line.split()[2:]
        out[name] = {k: int(v) for k, v in (w.split("=") for w in words)}
    return out


@pytest.mark.parametrize("cpl", [3, 0])
def test_bench_mode_runs_every_phase(kvmlite, guest, image: Path, cpl: int) -> None:
    run = run_guest(kvmlite, guest, "pci", "-d", str(image),
                    params=f"mode=bench user={1 if cpl == 3 else 0} seq_mb=16 rand_ops=512 calibrate=1000")

    assert run.status == GUEST_OK, run
    assert f"cpl={cpl}" in run.stdout, run
    results = bench_results(run)
    assert set(results) == {"calibrate", "seq-write", "flush", "seq-read", "rand-write", "rand-read"}, run
    assert results["seq-read"]["ops"] == 16 and results["rand-write"]["ops"] == 512, run
    assert all(r["errors"] == 0 for r in results.values()), run


def test_used_idx_is_never_seen_half_written(kvmlite, guest, image: Path) -> None:
    """The guest spins on the used idx at native speed (CPL3) while 100,000
    reads complete; every value it reads must be possible.  With the index
    written by struct.pack_into (which zeroes the field, then stores it) the
    guest saw 0 some 40-70 times in such a run."""
    run = run_guest(kvmlite, guest, "pci", "-d", str(image), "-m", "64",
                    params="mode=bench poll=1 phases=rand-read rand_ops=100000")

    assert run.status == GUEST_OK, run
    assert bench_results(run)["rand-read"]["torn"] == 0, run


# --- images kvmlite must refuse ----------------------------------------------------------

def test_blk_missing_image_is_a_one_line_error(kvmlite, guest, tmp_path: Path) -> None:
    run = kvmlite("run", "-k", str(guest("virtio")), "-d", str(tmp_path / "absent.img"), timeout=60)

    assert_one_line_error(run)
    assert "does not exist" in run.stderr
    assert run.status == CONFIG_ERROR


def test_blk_empty_image_is_a_one_line_error(kvmlite, guest, tmp_path: Path) -> None:
    empty = tmp_path / "empty.img"
    empty.touch()

    run = kvmlite("run", "-k", str(guest("virtio")), "-d", str(empty), timeout=60)

    assert_one_line_error(run)
    assert "empty" in run.stderr
    assert run.status == CONFIG_ERROR


@pytest.mark.parametrize("suffix", ["", ",ro"])
def test_blk_directory_is_a_one_line_error(kvmlite, guest, tmp_path: Path, suffix: str) -> None:
    run = kvmlite("run", "-k", str(guest("virtio")), "-d", f"{tmp_path}{suffix}", timeout=60)

    assert_one_line_error(run)
    assert "is a directory" in run.stderr
    assert run.status == CONFIG_ERROR


@pytest.mark.parametrize("second", ["", ",ro"])
def test_blk_image_in_use_by_a_running_vm_is_refused(kvmlite, guest, image: Path, second: str) -> None:
    """The first VM holds an exclusive lock on its writable image while it
    waits for console input; a second VM may neither write nor read it."""
    first = LiveKvmlite("run", "-k", str(guest("virtio")), "-d", str(image), "--console", "virtio",
                        "-p", "console_rx=1 rx_timeout=60")
    try:
        first.wait_for("virtio: console waiting for input")

        run = kvmlite("run", "-k", str(guest("virtio")), "-d", f"{image}{second}", timeout=60)

        assert_one_line_error(run)
        assert "in use" in run.stderr
        assert run.status == CONFIG_ERROR
        first.send(b"done\n")
        assert first.finish().status == GUEST_OK
    finally:
        first.kill()


def test_blk_read_only_image_can_be_shared(kvmlite, guest, image: Path) -> None:
    first = LiveKvmlite("run", "-k", str(guest("virtio")), "-d", f"{image},ro", "--console", "virtio",
                        "-p", "console_rx=1 rx_timeout=60")
    try:
        first.wait_for("virtio: console waiting for input")

        run = kvmlite("run", "-k", str(guest("virtio")), "-d", f"{image},ro")

        assert run.status == GUEST_OK, run
        first.send(b"done\n")
        assert first.finish().status == GUEST_OK
    finally:
        first.kill()
