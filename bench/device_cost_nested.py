"""bench/device_cost.py twice: on this machine and inside the nested test
host (where every ratio against QEMU is measured), so that the emulation's
slow-down of kvmlite's Python is a number next to the per-request budgets
the ratio benchmarks leave (BENCHMARKS.md)."""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, keep_console
from bench.device_cost import REPEAT, measure

MARK = "DEVCOST "


def run() -> dict:
    from tests.nested.testhost import TestHost

    here = measure()
    host = TestHost.prepare()
    with tempfile.TemporaryDirectory(prefix="kvmlite-devcost-") as tmp:
        script = (f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m bench.device_cost "
                  f"| sed 's/^/{MARK}/'")
        result = host.run(script, 1800, Path(tmp))
    keep_console("device_cost_nested", result.console)
    return {"what": f"Python device time per request with the fake driver (median of {REPEAT}), "
                    "on this machine and in the nested test host; see bench/device_cost.py",
            **parse(result.console, here)}


def parse(console: str, here: dict) -> dict:
    """Both sets of figures and, for each time, how many times slower the
    test host ran it; the test host's side names what it printed instead
    when it gave no result."""
    lines = [line.split(MARK, 1)[1] for line in console.replace("\r", "").splitlines() if MARK in line]
    try:
        nested = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = " | ".join(console.strip().splitlines()[-3:]) or "nothing"
        nested = {key: f"failed: no result from the test host; its console ended: {tail}" for key in here}
    out: dict = {}
    for key, value in here.items():
        theirs = nested.get(key, "failed: the test host printed no such figure")
        out[f"here_{key}"] = value
        out[f"nested_{key}"] = theirs
        if "_us" in key:
            out[f"slowdown_{key}"] = round(theirs / value, 1) if isinstance(theirs, (int, float)) else theirs
    return out
