"""Snapshots, with real Linux in the nested test host (bench/snapshot_peer.py
does the work there; docs/snapshot.md).  One test-host boot:

* **Restore time**, kvmlite against QEMU, for a 256 MiB and a 2 GiB guest:
  the default guest (Debian's cloud kernel) runs a shell loop printing
  ``tick N`` without a pause; kvmlite saves it with ``kvmlite snapshot
  --stop``, QEMU with ``stop`` + ``migrate "exec:cat > FILE"``; then each is
  started from its files (``kvmlite run --restore``, ``qemu -incoming
  "exec:cat FILE"``) three times, timed from the process's start to the
  first tick it prints; and five times each in a VMM process already
  running, as Firecracker times a snapshot load (``Vm.restore`` in a
  Python process with kvmlite loaded; QEMU started with ``-incoming
  defer``, timed from ``migrate_incoming`` on its monitor).  Medians.
* **Memory of 10 clones**: ten ``kvmlite run --restore`` of one idle 256 MiB
  guest; their summed PSS against one restore's PSS (and the part of each
  that is guest RAM mapped from the memory file).  Then the same clones in
  one process through the Python API (``Vm.restore`` ten times, as
  ``vm.fork(10)`` makes them): that process's PSS against a process
  holding one clone.
* **The SDK**: ``Sandbox.create()`` + ``commands.run("true")`` from a cold
  boot against from the start-up snapshot, medians of ``SDK_ROUNDS``.

Targets (the snapshot issue): restore ≥ 10× faster than QEMU's and within
2× between 256 MiB and 2 GiB; create from a snapshot ≥ 10× faster than a
cold boot; 10 idle clones ≤ 2× the memory of one.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, console_error, keep_console, number_or_failure, ratio, share_guest

SDK_ROUNDS = int(os.environ.get("KVMLITE_BENCH_ROUNDS", "2"))
CLONES = 10
SIZES = (256, 2048)
RESULT = re.compile(r"^@@SN (\S+) (\S+) (.+)$", re.M)
TESTHOST_MEMORY_MB = 4096      # room for a 2 GiB guest under QEMU (its RAM is reserved) beside the rest
STEPS = ("restore256", "restore2048", "clones", "sdk")


def script(steps: tuple[str, ...] = STEPS) -> str:
    """The test host's script; ``steps`` (``$KVMLITE_BENCH_STEPS``, comma
    separated) picks some of :data:`STEPS`, to measure one again."""
    peer = f"{shlex.quote(sys.executable)} {REPO / 'bench' / 'snapshot_peer.py'}"
    lines = {"restore256": f"{peer} restore 256", "restore2048": f"{peer} restore 2048",
             "clones": f"{peer} clones {CLONES}", "sdk": f"{peer} sdk {SDK_ROUNDS}"}
    return "\n".join(["export KERNEL INITRD", *(lines[step] for step in steps)])


def chosen_steps() -> tuple[str, ...]:
    text = os.environ.get("KVMLITE_BENCH_STEPS", "")
    steps = tuple(s for s in text.split(",") if s) or STEPS
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SystemExit(f"KVMLITE_BENCH_STEPS: unknown step {unknown[0]!r} (known: {', '.join(STEPS)})")
    return steps


def speedup(ours: float | str, theirs: float | str) -> float | str:
    """theirs / ours (how many times faster kvmlite is), or why there is none."""
    if isinstance(ours, str) or isinstance(theirs, str):
        return ratio(ours, theirs)
    return ratio(theirs, ours)


def parse(console: str) -> dict:
    console = console.replace("\r", "")
    values: dict[tuple[str, str], list[float]] = {}
    errors: dict[tuple[str, str], str] = {}
    for vmm, metric, value in RESULT.findall(console):
        if metric.endswith("_error"):
            errors[(vmm, metric[:-len("_error")])] = value
            continue
        values.setdefault((vmm, metric), []).append(float(value))

    def get(vmm: str, metric: str, digits: int = 1) -> float | str:
        why = errors.get((vmm, metric)) or console_error(console, vmm) or f"{vmm} printed no {metric}"
        return number_or_failure(values.get((vmm, metric), []), [why], digits)

    out: dict = {}
    for mib in SIZES:
        for vmm in ("kvmlite", "qemu"):
            out[f"{vmm}_restore_{mib}_ms"] = get(vmm, f"restore_{mib}_ms")
        out[f"qemu_over_kvmlite_restore_{mib}"] = speedup(out[f"kvmlite_restore_{mib}_ms"],
                                                          out[f"qemu_restore_{mib}_ms"])
    out["kvmlite_restore_2048_over_256"] = ratio(out["kvmlite_restore_2048_ms"], out["kvmlite_restore_256_ms"])
    for mib in SIZES:               # in a running VMM process: Vm.restore against -incoming defer
        for vmm in ("kvmlite", "qemu"):
            out[f"{vmm}_warm_restore_{mib}_ms"] = get(vmm, f"warm_restore_{mib}_ms")
        out[f"qemu_over_kvmlite_warm_restore_{mib}"] = speedup(out[f"kvmlite_warm_restore_{mib}_ms"],
                                                               out[f"qemu_warm_restore_{mib}_ms"])
    out["kvmlite_warm_restore_2048_over_256"] = ratio(out["kvmlite_warm_restore_2048_ms"],
                                                      out["kvmlite_warm_restore_256_ms"])
    for metric in ("one_clone_pss_MiB", "one_clone_guest_ram_pss_MiB", f"clones_{CLONES}_pss_MiB",
                   f"clones_{CLONES}_guest_ram_pss_MiB"):
        why = errors.get(("kvmlite", f"clones_{CLONES}_pss_MiB"))
        out[metric] = number_or_failure(values.get(("kvmlite", metric), []), [why or f"no {metric}"])
    out[f"clones_{CLONES}_over_one"] = ratio(out[f"clones_{CLONES}_pss_MiB"], out["one_clone_pss_MiB"])
    out[f"clones_{CLONES}_guest_ram_over_one"] = ratio(out[f"clones_{CLONES}_guest_ram_pss_MiB"],
                                                       out["one_clone_guest_ram_pss_MiB"])
    for metric in ("api_one_clone_pss_MiB", "api_one_clone_guest_ram_pss_MiB", f"api_clones_{CLONES}_pss_MiB",
                   f"api_clones_{CLONES}_guest_ram_pss_MiB"):
        why = errors.get(("kvmlite", f"api_clones_{CLONES}_pss_MiB"))
        out[metric] = number_or_failure(values.get(("kvmlite", metric), []), [why or f"no {metric}"])
    out[f"api_clones_{CLONES}_over_one"] = ratio(out[f"api_clones_{CLONES}_pss_MiB"], out["api_one_clone_pss_MiB"])
    for metric in ("sdk_cold_create_s", "sdk_snapshot_create_s"):
        why = errors.get(("kvmlite", "sdk_cold_create_s"))
        out[metric] = number_or_failure(values.get(("kvmlite", metric), []), [why or f"no {metric}"], 2)
    out["sdk_cold_over_snapshot"] = speedup(out["sdk_snapshot_create_s"], out["sdk_cold_create_s"])
    return out


def run() -> dict:
    from kvmlite.paths import cache_dir
    from tests.nested.linux import script_env
    from tests.nested.testhost import TestHost

    sandbox_guest, why = share_guest()     # the SDK part boots it
    if sandbox_guest is None:
        return {"error": why}
    host = TestHost.prepare()
    host.memory_mb = TESTHOST_MEMORY_MB
    guest = host.files.guest
    with tempfile.TemporaryDirectory(prefix="kvmlite-snbench-") as tmp:
        env = (script_env(guest.kernel, guest.initrd)
               + f"export XDG_CACHE_HOME={shlex.quote(str(cache_dir().parent))}\n"
               + "export XDG_RUNTIME_DIR=$(mktemp -d /tmp/kr-XXXXXX)\n")
        result = host.run(env + script(chosen_steps()), 5400, Path(tmp))
        keep_console("snapshot_nested", result.console)
        return {"what": "restore time (256 MiB and 2 GiB, medians of 3 new processes and of 5 restores in a "
                        f"running one) against QEMU -incoming, {CLONES} clones' PSS, Sandbox.create() from a "
                        f"snapshot against a cold boot (median of {SDK_ROUNDS}); nested test host",
                **parse(result.console)}
