"""Booting under the real /dev/kvm: the seed's real-mode example, the
bootinfo guests through the 64-bit bzImage protocol and through PVH, and
the CLI's error paths against real files.

The bootinfo guests report what the VMM handed over (command line, RAM
total from the memory map, the initrd's FNV-1a, the RSDP) and exit with
the status given as exit=N on their command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlite.arch.x86 import e820
from kvmlite.base.memory import x86_ram_ranges
from tests.kvm.conftest import REPO, assert_one_line_error, kvmlite_env

pytestmark = pytest.mark.kvm

MiB = 1 << 20
EXAMPLE = REPO / "examples" / "realmode_add.py"


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def bootinfo(stdout: str) -> dict[str, str]:
    """The key=value lines between "bootinfo: entry=" and "bootinfo: done"."""
    assert "bootinfo: done" in stdout, stdout
    out = {}
    for line in stdout.splitlines():
        if line.startswith("bootinfo: entry="):
            out["entry"] = line.split("=", 1)[1]
        elif "=" in line and not line.startswith("bootinfo:"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


@pytest.fixture
def initrd(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(64 * 1024 + 123)       # odd size: the guest must hash exactly this many bytes
    path = tmp_path / "initrd.bin"
    path.write_bytes(data)
    return path, data


# --- (a) the seed's real-mode example --------------------------------------

def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=REPO, env=kvmlite_env(),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("a, b", [(2, 3), (0, 0), (4, 5)])
def test_realmode_add_prints_the_sum(kvm: str, a: int, b: int) -> None:
    proc = run_example(str(a), str(b))
    assert (proc.returncode, proc.stdout) == (0, f"{a + b}\n"), proc.stderr


def test_realmode_add_accepts_every_one_digit_sum(kvm: str) -> None:
    """5 + 4 = 9 is one digit; the example must not reject it."""
    proc = run_example("5", "4")
    assert (proc.returncode, proc.stdout) == (0, "9\n"), proc.stderr


@pytest.mark.parametrize("args", [("9", "9"), ("7",), ("x", "1")])
def test_realmode_add_wrong_input_prints_usage(kvm: str, args: tuple[str, ...]) -> None:
    proc = run_example(*args)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "usage:" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


# --- (b) bzImage, 64-bit boot protocol ---------------------------------------

def expected_ram(mem_mib: int) -> tuple[int, int]:
    """(RAM bytes, entries) of the E820 map kvmlite builds for -m mem_mib."""
    entries = e820.memory_map(x86_ram_ranges(mem_mib * MiB))
    return e820.ram_total(entries), len(entries)


def check_bootinfo(run, entry: str, data: bytes, params: str, status: int) -> None:
    assert run.status == status, run
    info = bootinfo(run.stdout)
    assert info["entry"] == entry
    assert params in info["cmdline"], run
    ram, entries = expected_ram(64)
    assert int(info["ram_bytes"]) == ram, run
    assert int(info["map_entries"]) == entries, run
    assert int(info["initrd_size"]) == len(data), run
    assert int(info["initrd_fnv1a"], 16) == fnv1a32(data), run
    # The ACPI tables are always built (kvmlite/vmm/devices.py), so the RSDP
    # must be handed over in the legacy BIOS area.
    rsdp = int(info["rsdp"], 16)
    assert 0xE0000 <= rsdp < 0x100000, run


def test_bzimage_bootinfo(kvmlite, guest, initrd) -> None:
    path, data = initrd
    params = "exit=7 hello=world"
    run = kvmlite("run", "-k", str(guest("bootinfo")), "-i", str(path), "-p", params, "-m", "64")
    check_bootinfo(run, "bzimage64", data, params, 7)


# --- (c) PVH -------------------------------------------------------------------

def test_pvh_bootinfo(kvmlite, guest, initrd) -> None:
    path, data = initrd
    params = "exit=9 hello=pvh"
    run = kvmlite("run", "-k", str(guest("bootinfo-pvh")), "-i", str(path), "-p", params, "-m", "64")
    check_bootinfo(run, "pvh32", data, params, 9)


def test_bzimage_without_initrd_reports_none(kvmlite, guest) -> None:
    run = kvmlite("run", "-k", str(guest("bootinfo")), "-p", "exit=0")
    assert run.status == 0, run
    info = bootinfo(run.stdout)
    assert (info["initrd_size"], info["initrd_fnv1a"]) == ("0", "0x0")


# --- CLI error paths against real files ------------------------------------------
# kvmlite/errors.py and `kvmlite run --help`: 2 for usage and configuration
# errors (UsageError, ConfigError), 1 for run-time failures (KvmliteError);
# every failure is one "kvmlite: error: ..." line.

USAGE, RUNTIME = 2, 1


def test_missing_kernel_file(kvmlite, tmp_path: Path) -> None:
    run = kvmlite("run", "-k", str(tmp_path / "no-such-bzImage"), timeout=60)
    assert_one_line_error(run)
    assert "no such file" in run.stderr
    assert run.status == RUNTIME


def test_kernel_neither_bzimage_nor_elf(kvmlite, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not a kernel\n" * 200)
    run = kvmlite("run", "-k", str(junk), timeout=60)
    assert_one_line_error(run)
    assert "neither a bzImage nor an ELF" in run.stderr
    assert run.status == RUNTIME


def test_truncated_bzimage(kvmlite, guest, tmp_path: Path) -> None:
    whole = guest("bootinfo").read_bytes()
    cut = tmp_path / "cut.bzImage"
    cut.write_bytes(whole[: len(whole) - 100])
    run = kvmlite("run", "-k", str(cut), timeout=60)
    assert_one_line_error(run)
    assert "truncated" in run.stderr
    assert run.status == RUNTIME


def test_initrd_too_big_for_memory(kvmlite, guest, tmp_path: Path) -> None:
    big = tmp_path / "big.initrd"
    with open(big, "wb") as f:
        f.truncate(40 * MiB)                   # sparse: costs no disk
    run = kvmlite("run", "-k", str(guest("bootinfo")), "-i", str(big), "-m", "32", timeout=60)
    assert_one_line_error(run)
    assert "does not fit" in run.stderr
    assert run.status == USAGE


@pytest.mark.parametrize("args, needle", [
    (("-m", "8"), "-m 8"),
    (("-c", "0"), "-c 0"),
    (("-c", "100000"), "-c 100000"),
    (("-m", "lots"), "-m"),
])
def test_bad_configuration(kvmlite, guest, args: tuple[str, ...], needle: str) -> None:
    run = kvmlite("run", "-k", str(guest("bootinfo")), *args, timeout=60)
    assert_one_line_error(run)
    assert needle in run.stderr
    assert run.status == USAGE


def test_help_documents_exit_statuses(kvmlite) -> None:
    run = kvmlite("run", "--help", timeout=60)
    assert run.status == 0
    for text in ("0 guest powered off", "1 kvmlite failed", "2 bad usage", "3 guest reset", "4 guest crashed"):
        assert text in " ".join(run.stdout.split()), run.stdout
