"""SMP bring-up: INIT + STARTUP IPIs into a real-mode trampoline.

The smp guest (tests/guests/src/smp) lists the CPUs from the MADT (and the
MP table), starts every AP with INIT/SIPI/SIPI at a trampoline copied to
0x10000, and each AP goes real -> protected -> long mode and prints its
local APIC ID under a spinlock before halting.
"""

from __future__ import annotations

import re

import pytest

from tests.kvm.conftest import fields, run_kvmlite

pytestmark = pytest.mark.kvm

EXIT_OK = 42


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda n: f"c{n}")
def smp(request, kvm, guest):

    cpus = request.param
    run = run_kvmlite("run", "-k", str(guest("smp")), "-c", str(cpus), "-p", "timeout=90", timeout=180)
    return cpus, run


def test_every_cpu_reports_its_apic_id_once(smp) -> None:
    cpus, run = smp
    assert run.status == EXIT_OK, run
    ids = [int(m) for m in re.findall(r"^smp: (?:bsp|ap) apic_id=(\d+)", run.stdout, re.M)]
    assert sorted(ids) == list(range(cpus)), run
    assert f"smp: all {cpus} cpus up" in run.stdout, run


def test_cpuid_initial_apic_id_matches_the_lapic(smp) -> None:
    """CPUID.1:EBX[31:24] (kvmlite's per-vCPU CPUID) agrees with the local
    APIC ID register on every CPU."""
    cpus, run = smp
    pairs = re.findall(r"^smp: (?:bsp|ap) apic_id=(\d+) cpuid=(\d+)", run.stdout, re.M)
    assert len(pairs) == cpus, run
    assert all(a == c for a, c in pairs), run


def test_cpus_are_found_in_the_madt(smp) -> None:
    cpus, run = smp
    tables = fields(run.stdout, "smp: madt_cpus=")
    assert (tables["source"], int(tables["cpus"])) == ("madt", cpus), run


def test_madt_and_mp_table_list_every_cpu(smp) -> None:
    cpus, run = smp
    line = next(line for line in run.stdout.splitlines() if line.startswith("smp: madt_cpus="))
    assert "bad checksum" not in line, run
    assert re.search(rf"madt_cpus={cpus}\b", line), run
    assert re.search(rf"mptable_cpus={cpus}\b", line), run
