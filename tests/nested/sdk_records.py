"""Running an SDK probe (tests/nested/sdk_probe.py, sdk_snapshot_probe.py)
where real Linux boots, and reading its ``@@SDK {json}`` records.

When the test host itself ends the run early (it stalled, or powered off
or panicked in the middle: the section never ended), the records that did
come are kept and asserted; the checks that never ran are expected failures
naming the log.  The emulated test host (QEMU TCG, nested SVM) now and then
crashes an inner guest with a triple fault under load (BENCHMARKS.md,
"Nested instability"); a check that failed because its sandbox's guest did
so is an expected failure of the environment, reported with the VMM's own
line.  Any other error fails the test.  A check that hung (the probe's
``ProbeTimeout``) makes ``retried_section`` run the probe again; a hang
the rerun got past is a warning in the test report, not a silence."""

from __future__ import annotations

import json
import shlex
import sys
import warnings
from pathlib import Path

import pytest

from kvmlite.paths import cache_dir

from .linux import hardware_kvm, run_linux_script
from .testhost import GUEST_CRASH as ENVIRONMENT_CRASH, PROBE_HUNG, REPO, RunResult, TestHost

TIMEOUT = 1800


def probe_script(probe: str) -> str:
    """The script that runs ``tests/nested/<probe>`` with private runtime,
    snapshot and state directories, the cache's guests visible."""
    path = shlex.quote(str(REPO / "tests" / "nested" / probe))
    return f"""
export XDG_CACHE_HOME={shlex.quote(str(cache_dir().parent))}
probe() {{
    export XDG_RUNTIME_DIR=$(mktemp -d /tmp/kr-XXXXXX)
    export KVMLITE_SANDBOX_SNAPSHOTS=$(mktemp -d /tmp/ks-XXXXXX) XDG_STATE_HOME=$(mktemp -d /tmp/kst-XXXXXX)
    {shlex.quote(sys.executable)} {path} "$TESTHOST_WORK"
}}
retried_section sdk probe
"""


def run_probe(request: pytest.FixtureRequest, probe: str, workdir: Path) -> dict[str, dict]:
    """The probe's records by check, plus ``_where`` (the log, whether the run ended)."""
    host: TestHost | None = None if hardware_kvm() else request.getfixturevalue("testhost")
    result: RunResult = run_linux_script(host, probe_script(probe), TIMEOUT, workdir)
    checks: dict[str, dict] = {}
    last_try = result.console.replace("\r", "").rpartition("@@BEGIN sdk\n")   # a retried run's records only
    for line in last_try[0].splitlines():                # a hang a rerun got past is still said
        if line.startswith("@@SDK ") and PROBE_HUNG in line:
            warnings.warn(f"an earlier run of {probe} hung, the rerun went on: {line[:600]}; {result.where()}")
    for line in (last_try[2] if last_try[1] else last_try[0]).splitlines():
        if line.startswith("@@SDK "):
            record = json.loads(line[len("@@SDK "):])
            checks[record["check"]] = record
    assert not result.timed_out, (f"timed out after {TIMEOUT} s, after the checks {sorted(checks)}; "
                                  f"{result.where()}")
    checks["_where"] = {"where": result.where(), "ended": "sdk" in result.sections, "stalled": result.stalled,
                        "tail": result.console[-3000:]}
    return checks


def record(probe: dict[str, dict], name: str) -> dict:
    """Check ``name``'s record; xfail/fail as the module docstring says."""
    found = probe.get(name)
    where = probe["_where"]
    if found is None and not where["ended"]:
        pytest.xfail(f"{name}: never ran: the emulated test host ended the run early "
                     f"(stalled={where['stalled']}); {where['where']}")
    assert found is not None, f"no {name!r} result: {where}"
    if "error" in found and ENVIRONMENT_CRASH in found["error"]:
        pytest.xfail(f"{name}: the sandbox's guest crashed under the emulated test host: {found['error'][-300:]}")
    assert "error" not in found, f"{name}: {found['error']}\n{found.get('trace', '')}"
    return found
