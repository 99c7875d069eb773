"""The control plane against real VMMs: ``kvmlite run -k counter.bzImage
--name X`` subprocesses on this machine's /dev/kvm, driven by the real
``kvmlite list/pause/resume/debug/stat/stop`` commands.

The counter guest (tests/guests/src/counter) prints "tick N" about fifty
times a second here; its loop lies between the ELF symbols ``count_loop``
and ``count_loop_end``.  Every test has its own runtime directory
($XDG_RUNTIME_DIR), so it sees only its own VMs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from kvmlite.control.registry import Liveness, Registry
from tests.kvm.conftest import LiveKvmlite, Run, assert_one_line_error, run_kvmlite

pytestmark = pytest.mark.kvm

QUIET_S = 1.0          # a paused guest must print nothing for this long
START_TIMEOUT = 60.0


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    """A private $XDG_RUNTIME_DIR, short enough for socket paths; the
    subprocesses inherit it through os.environ."""
    base = Path(tempfile.mkdtemp(prefix="klk-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    yield Registry(base / "kvmlite")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def counter(kvm: str, guest) -> Path:
    return guest("counter")


@pytest.fixture
def launch(counter: Path, runtime: Registry) -> Iterator[Callable[..., LiveKvmlite]]:
    """``launch(name)``: ``kvmlite run`` of the counter guest, ticking and
    listed in the registry; killed at the end if still running."""
    started: list[LiveKvmlite] = []

    def start(name: str | None = None) -> LiveKvmlite:
        args = ["run", "-k", str(counter)] + (["--name", name] if name else [])
        live = LiveKvmlite(*args)
        started.append(live)
        live.wait_for("tick 1", START_TIMEOUT)
        wait_live(runtime, name or f"guest-{live.proc.pid}", live)
        return live

    yield start
    for live in started:
        live.kill()


def wait_live(registry: Registry, name: str, live: LiveKvmlite, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while registry.probe(name, clean=False) is not Liveness.LIVE:
        if time.monotonic() > deadline or live.proc.poll() is not None:
            live.kill()
            pytest.fail(f"VM {name!r} never appeared in {registry.directory} (is the control server wired "
                        f"into 'kvmlite run'?)\n{live.finish(5)}")
        time.sleep(0.05)


def kl(*args: str, timeout: float = 60.0) -> Run:
    return run_kvmlite(*args, timeout=timeout)


def ok(*args: str, timeout: float = 60.0) -> Run:
    run = kl(*args, timeout=timeout)
    assert run.status == 0 and "Traceback" not in run.stderr, run
    return run


def ticks(live: LiveKvmlite) -> int:
    return sum(1 for _, line in list(live.lines) if line.startswith("tick "))


def wait_ticks(live: LiveKvmlite, more_than: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (n := ticks(live)) > more_than:
            return n
        time.sleep(0.05)
    pytest.fail(f"no new tick within {timeout:g} s (still {more_than})")


def quiet_while_paused(live: LiveKvmlite) -> bool:
    """True if no tick arrives for QUIET_S (after output already in flight has landed)."""
    time.sleep(0.3)
    before = ticks(live)
    time.sleep(QUIET_S)
    return ticks(live) == before


def text_symbols(counter: Path) -> dict[str, int]:
    """The guest's code symbols (nm type T) and their addresses."""
    out = subprocess.run(["nm", str(counter.with_suffix(".elf"))], capture_output=True, text=True,
                         check=True).stdout
    rows = [line.split() for line in out.splitlines()]
    return {row[2]: int(row[0], 16) for row in rows if len(row) == 3 and row[1] == "T"}


def loop_bytes(counter: Path, start: int, end: int) -> bytes:
    """The loop's machine code, from objdump's listing of the ELF."""
    out = subprocess.run(["objdump", "-d", f"--start-address={start:#x}", f"--stop-address={end:#x}",
                          str(counter.with_suffix(".elf"))], capture_output=True, text=True, check=True).stdout
    code = bytearray()
    for line in out.splitlines():
        m = re.match(r"^\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)", line)
        if m:
            code += bytes.fromhex(m.group(1))
    assert len(code) == end - start, out
    return bytes(code)


# --- list ---------------------------------------------------------------------------


def test_list_shows_named_vm_text_and_json(launch) -> None:
    live = launch("ctl-list")
    table = ok("list").stdout.splitlines()
    json_rows = json.loads(ok("list", "--json").stdout)
    assert table[0].split() == ["NAME", "PID", "STATE", "VCPUS", "MEMORY", "UPTIME"]
    assert table[1].split()[:5] == ["ctl-list", str(live.proc.pid), "running", "1", "256M"]
    assert len(json_rows) == 1
    row = json_rows[0]
    assert (row["name"], row["pid"], row["state"], row["vcpus"], row["memory_mib"]) == \
        ("ctl-list", live.proc.pid, "running", 1, 256)
    assert row["uptime_s"] > 0


def test_list_unnamed_vm_gets_generated_name(launch) -> None:
    live = launch(None)
    names = [row["name"] for row in json.loads(ok("list", "--json").stdout)]
    assert names == [f"guest-{live.proc.pid}"]


def test_name_in_use_refused_one_line(launch, counter: Path) -> None:
    launch("dup")
    run = kl("run", "-k", str(counter), "--name", "dup")
    assert run.status == 1, run
    assert_one_line_error(run)
    assert "already running" in run.stderr and "'dup'" in run.stderr


# --- pause / resume -----------------------------------------------------------------


def test_pause_stops_ticks_resume_restarts(launch) -> None:
    live = launch("ctl-pause")
    assert ok("pause", "--name", "ctl-pause").stdout == "ctl-pause: paused\n"
    assert quiet_while_paused(live), "ticks went on while paused"
    assert json.loads(ok("list", "--json").stdout)[0]["state"] == "paused"
    paused_at = ticks(live)
    assert ok("resume", "--name", "ctl-pause").stdout == "ctl-pause: running\n"
    wait_ticks(live, paused_at)
    assert json.loads(ok("list", "--json").stdout)[0]["state"] == "running"


def test_two_vms_controlled_independently(launch) -> None:
    a, b = launch("ctl-a"), launch("ctl-b")
    ok("pause", "-n", "ctl-a")
    b_before = ticks(b)
    assert quiet_while_paused(a)
    assert ticks(b) > b_before + 5, "the other VM stopped ticking too"
    states = {row["name"]: row["state"] for row in json.loads(ok("list", "--json").stdout)}
    assert states == {"ctl-a": "paused", "ctl-b": "running"}
    ok("resume", "-n", "ctl-a")
    wait_ticks(a, ticks(a))
    out = ok("stop", "--all", "--force").stdout
    assert "ctl-a: stopped" in out and "ctl-b: stopped" in out
    assert a.finish(15).status == 0 and b.finish(15).status == 0


# --- debug --------------------------------------------------------------------------


def test_debug_rip_in_count_loop_code_bytes_match(launch, counter: Path) -> None:
    # The guest spends most of its time in count_loop, the rest printing a
    # tick (report_tick, serial_putc): sample until a dump lands in the loop.
    launch("ctl-debug")
    symbols = text_symbols(counter)
    start, end = symbols["count_loop"], symbols["count_loop_end"]
    for _ in range(10):
        vcpu = json.loads(ok("debug", "-n", "ctl-debug", "--json").stdout)[0]
        rip = vcpu["regs"]["rip"]
        assert symbols["startup_64"] <= rip < max(symbols.values()) + 0x100, f"rip {rip:#x} outside the guest"
        if start <= rip < end:
            break
    else:
        pytest.fail(f"10 dumps, none with rip in count_loop [{start:#x}, {end:#x})")
    code = bytes.fromhex(vcpu["code"])
    expected = loop_bytes(counter, start, end)[rip - start:]
    shown = min(len(code), len(expected))
    assert shown >= 8 and code[:shown] == expected[:shown]
    text = ok("debug", "-n", "ctl-debug").stdout
    assert re.search(r"rip\s+0000000000100[0-9a-f]{3}", text), text
    assert "code at rip" in text and "not readable" not in text


def test_debug_keeps_running_vm_running(launch) -> None:
    live = launch("ctl-debug2")
    ok("debug", "-n", "ctl-debug2")
    wait_ticks(live, ticks(live))
    assert json.loads(ok("list", "--json").stdout)[0]["state"] == "running"


def test_debug_nmi_reaches_guest_without_idt_entry_triple_faults(launch) -> None:
    # The counter guest's IDT has no NMI vector (limit 7): a delivered NMI
    # faults, double-faults and triple-faults, so kvmlite exits 4.
    live = launch("ctl-nmi")
    assert ok("debug", "-n", "ctl-nmi", "--nmi").stdout == "ctl-nmi: NMI sent to vCPU 0\n"
    run = live.finish(30)
    assert run.status == 4 and "triple fault" in run.stderr, run


def test_debug_sysrq_break_and_key_reach_com1(launch) -> None:
    launch("ctl-sysrq")
    assert ok("debug", "-n", "ctl-sysrq", "--sysrq", "h").stdout == "ctl-sysrq: sysrq h sent\n"
    com1 = json.loads(ok("stat", "-n", "ctl-sysrq", "--json").stdout)["devices"]["com1"]
    assert (com1["breaks"], com1["rx_bytes"]) == (1, 1)


# --- stat ---------------------------------------------------------------------------


def test_stat_exits_io_and_rss(launch) -> None:
    live = launch("ctl-stat")
    stats = json.loads(ok("stat", "-n", "ctl-stat", "--json").stdout)
    vcpu = stats["vcpus"][0]
    assert vcpu["exits"]["IoOut"] >= ticks(live) * len("tick 1\n") // 2
    assert stats["io"]["pio"]["com1"]["writes"] > 0
    assert stats["devices"]["com1"]["tx_bytes"] > 0
    assert stats["rss_bytes"] > 1 << 20
    text = ok("stat", "-n", "ctl-stat").stdout
    assert "IoOut" in text and "com1" in text and "VMM RSS" in text


# --- stop ---------------------------------------------------------------------------


def test_stop_force_exits_and_list_forgets(launch, runtime: Registry) -> None:
    live = launch("ctl-stop")
    run = ok("stop", "-n", "ctl-stop", "--force", timeout=30)
    assert run.stdout.splitlines() == ["ctl-stop: stopping (force)", "ctl-stop: stopped"]
    assert live.finish(15).status == 0
    assert json.loads(ok("list", "--json").stdout) == []
    assert runtime.names() == []


def test_stop_graceful_guest_ignores_it_hard_stop_after_timeout(launch) -> None:
    live = launch("ctl-grace")
    start = time.monotonic()
    run = ok("stop", "-n", "ctl-grace", "--timeout", "2", timeout=60)
    took = time.monotonic() - start
    assert run.stdout.splitlines() == ["ctl-grace: stopping (ctrl-alt-del)", "ctl-grace: stopped"]
    assert 2.0 <= took < 15.0, took
    assert live.finish(15).status == 0


def test_sigkilled_vmm_stale_socket_cleaned_by_list(launch, runtime: Registry) -> None:
    live = launch("ctl-dead")
    live.proc.send_signal(signal.SIGKILL)
    live.proc.wait(10)
    assert runtime.socket_path("ctl-dead").exists()
    assert json.loads(ok("list", "--json").stdout) == []
    assert not runtime.socket_path("ctl-dead").exists() and runtime.names() == []
    gone = kl("pause", "-n", "ctl-dead")
    assert gone.status == 1 and "no VM named 'ctl-dead'" in gone.stderr
    assert_one_line_error(gone)


def test_sigkilled_vmm_stale_socket_reported_by_pause(launch, runtime: Registry) -> None:
    live = launch("ctl-dead2")
    os.kill(live.proc.pid, signal.SIGKILL)
    live.proc.wait(10)
    run = kl("pause", "-n", "ctl-dead2")
    assert run.status == 1 and "stale control socket" in run.stderr, run
    assert_one_line_error(run)
    assert runtime.names() == []


# --- the Python API -----------------------------------------------------------------


def test_api_pause_holds_guest_clock(counter: Path) -> None:
    from kvmlite.vmm.config import VmConfig
    from kvmlite.vmm.control import controller
    from kvmlite.vmm.vm import Vm

    out = bytearray()
    vm = Vm(VmConfig(kernel=str(counter), mem_mib=64), console_output=out.extend)
    control = controller(vm)
    try:
        vm.start()
        deadline = time.monotonic() + START_TIMEOUT
        while b"tick 2" not in out and time.monotonic() < deadline:
            time.sleep(0.05)
        control.pause()
        at_pause = vm.vm_fd.get_clock().clock
        time.sleep(1.5)
        control.resume()
        after = vm.vm_fd.get_clock().clock
        printed = len(out)
        time.sleep(0.5)
        assert len(out) > printed, "the guest did not run again after resume"
    finally:
        vm.close()
    assert 0 <= after - at_pause < 300_000_000, f"guest clock moved {(after - at_pause) / 1e9:.3f} s over a 1.5 s pause"
