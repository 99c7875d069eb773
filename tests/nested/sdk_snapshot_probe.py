"""Run inside the nested test host by tests/nested/test_sdk_snapshot.py: the
SDK's snapshots end to end — a cold create saves the start-up snapshot, the
next creates start from it (clock set, RNG reseeded, nothing of another
sandbox in them), ``fork`` copies a running sandbox, ``pause`` and
``connect`` save one and bring it back with its files and processes.
Each check prints one ``@@SDK {json}`` line; an error is printed, never
hidden."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kvmlite import Sandbox  # noqa: E402
from kvmlite.sdk import snapshots  # noqa: E402
from tests.nested.sdk_probe import check, emit  # noqa: E402

HOME = "/home/user"
# A NIC on a tap of its own (the test host runs this as root): each clone
# must get its own MAC, in the VMM and in the guest.
NET = "mode=tap"


def macs(sb: Sandbox) -> list[str]:
    """The NIC's MAC as the VMM serves it, then as the guest uses it."""
    with sb._control() as control:
        nics = control.info().get("nics", [])
    guest = sb.commands.run("cat /sys/class/net/eth0/address").stdout.strip()
    return [nics[0]["mac"] if nics else "", guest]


def guest_time(sb: Sandbox) -> float:
    return float(sb.commands.run("date +%s.%N").stdout)


@check("cold")
def cold(sb: Sandbox, seconds: float) -> dict:
    return {"restored_from": sb.restored_from, "note": sb.snapshot_note, "created_in": round(seconds, 1),
            "cache": sorted(p.name for p in snapshots.cache_root().iterdir() if not p.name.startswith(".")),
            "macs": macs(sb)}


@check("cached")
def cached(b: Sandbox, c: Sandbox, seconds: float) -> dict:
    uuids = [sb.commands.run("cat /proc/sys/kernel/random/uuid").stdout.strip() for sb in (b, c)]
    return {"restored": [b.restored_from is not None, c.restored_from is not None],
            "notes": [b.snapshot_note, c.snapshot_note],
            "created_in": round(seconds, 1), "clock_skew": round(abs(guest_time(b) - time.time()), 1),
            "uuids_differ": uuids[0] != uuids[1],
            "sees_other": b.files.exists(f"{HOME}/note.txt"), "true": b.commands.run("true").exit_code,
            "macs": [macs(b), macs(c)]}


@check("fork")
def fork(a: Sandbox) -> dict:
    clones = a.fork(2)
    try:
        notes = [clone.files.read(f"{HOME}/note.txt") for clone in clones]
        clones[0].files.write(f"{HOME}/only-clone0", "c0")
        return {"notes": notes, "ids_distinct": len({c.sandbox_id for c in clones} | {a.sandbox_id}) == 3,
                "macs": [macs(a)] + [macs(clone) for clone in clones],
                "parent_sees_clone": a.files.exists(f"{HOME}/only-clone0"),
                "clone1_sees_clone0": clones[1].files.exists(f"{HOME}/only-clone0")}
    finally:
        for clone in clones:
            clone.kill()


@check("pause", ends_sandbox=True)
def pause_connect(a: Sandbox) -> dict:
    a.files.write(f"{HOME}/before-pause", "kept")
    handle = a.commands.run("sleep 1000", background=True)
    sandbox_id = a.pause()
    listed = {info.sandbox_id: info.state for info in Sandbox.list()}.get(sandbox_id)
    running = a.is_running()
    r = Sandbox.connect(sandbox_id, timeout=300)
    try:
        alive = r.commands.run(f"kill -0 {handle.pid} && echo alive").stdout.strip()
        return {"listed": listed, "running_while_paused": running, "file": r.files.read(f"{HOME}/before-pause"),
                "sleep": alive, "paused_dir_left": snapshots.paused_dir(sandbox_id).exists(),
                "same_id": r.sandbox_id == sandbox_id}
    finally:
        r.kill()


def main() -> None:
    start = time.monotonic()
    try:
        a = Sandbox.create(timeout=900, memory_mb=256, network=NET)
    except BaseException as exc:
        emit("cold", error=f"{type(exc).__name__}: {exc}")
        return
    cold(a, time.monotonic() - start)
    a.files.write(f"{HOME}/note.txt", "from-a")
    others: list[Sandbox] = []
    try:
        start = time.monotonic()
        others = [Sandbox.create(timeout=900, memory_mb=256, network=NET),
                  Sandbox.create(timeout=900, memory_mb=256, network=NET)]
        cached(*others, (time.monotonic() - start) / 2)
    except BaseException as exc:
        emit("cached", error=f"{type(exc).__name__}: {exc}")
    for sb in others:
        sb.kill()
    fork(a)
    pause_connect(a)
    a.kill()
    time.sleep(1)
    tmp = [p.name for p in snapshots.cache_root().iterdir() if p.name.startswith(".")]
    emit("leftovers", cache_tmp=tmp, sandboxes=[i.sandbox_id for i in Sandbox.list()],
         taps=sorted(n for n in os.listdir("/sys/class/net") if n.startswith("kvmlite")))


if __name__ == "__main__":
    main()
