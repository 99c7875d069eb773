"""The SDK end to end, run by tests/nested/test_sdk.py where a real Linux
guest boots (the nested test host).  Each check prints one line
``@@SDK {json}`` that the test asserts on; a check that raises prints its
exception instead, so one failure does not hide the others.

Usage: python3 tests/nested/sdk_probe.py WORKDIR
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kvmlite import AgentConnectionError, CommandExitError, Sandbox, SandboxError
from kvmlite.sdk.launcher import PROCESS_NAME

BIG = 64 << 20
# Seconds one check may take (the slowest, 64 MiB both ways under TCG, takes
# about a minute) before the probe reports it hung, with every thread's
# stack, and ends: a hang costs minutes, not the whole run's timeout.  Less
# than the harness's SILENT_STALL (300 s), so that a probe stuck in a test
# host that still runs says where before the harness takes the silence
# for a frozen test host; retried_section runs the step again
# (PROBE_HUNG in tests/nested/testhost.py), and the test names the hang.
CHECK_LIMIT = 240.0
PROBE_HUNG = "ProbeTimeout:"


def emit(name: str, **values: object) -> None:
    print("@@SDK " + json.dumps({"check": name, **values}), flush=True)


def _last_words(sb: Sandbox, exc: BaseException) -> str:
    """The sandbox's console tail; when the agent's stream broke (the guest
    may have died), after the VMM's own error line if it is ending."""
    proc = sb._proc
    if proc is not None and isinstance(exc, AgentConnectionError):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass                              # still running: the tail as it is
    return sb._console_tail()


def _watch(name: str, sb: Sandbox | None, done: threading.Event, limit: float) -> None:
    """Unless ``done`` is set within ``limit`` seconds: the check's error
    with every thread's stack and the sandbox's console, every sandbox's
    VMM killed, and the probe's end (the checks after it report nothing)."""
    if done.wait(limit):
        return
    stacks = "".join(f"--- {thread}\n" + "".join(traceback.format_stack(frame))
                     for thread, frame in sys._current_frames().items())
    console = sb._console_tail() if sb is not None else ""
    emit(name, error=f"{PROBE_HUNG} the check did not finish in {limit:g} s [sandbox console: {console}]",
         trace=stacks[-3000:])
    _kill_sandboxes()
    os._exit(3)


def _kill_sandboxes() -> None:
    """Every sandbox VMM in this (test) host."""
    subprocess.run(["pkill", "-9", "-f", "[-]m kvmlite (sandbox --agent|run --restore) "], check=False)
    subprocess.run(["pkill", "-9", "-x", PROCESS_NAME.decode()], check=False)     # forked by the launcher


def check(name: str, ends_sandbox: bool = False, limit: float | None = None):  # type: ignore[no-untyped-def]
    """A check's record, or its error with the sandbox's console.  Unless
    the check ``ends_sandbox`` on purpose, a sandbox (the first argument)
    that is no longer running afterwards is an error too: its guest died
    during the check, and the console says why.  A check that takes more
    than ``limit`` (``CHECK_LIMIT``) seconds ends the probe (``_watch``)."""
    def wrap(fn):  # type: ignore[no-untyped-def]
        def run(*args):  # type: ignore[no-untyped-def]
            start = time.monotonic()
            sb = args[0] if args and isinstance(args[0], Sandbox) else None
            done = threading.Event()
            threading.Thread(target=_watch, args=(name, sb, done, limit or CHECK_LIMIT), daemon=True).start()
            try:
                values = fn(*args) or {}
                if not ends_sandbox and sb is not None and not sb.is_running():
                    raise SandboxError(f"the sandbox ended during the check (it reported {values})")
            except BaseException as exc:       # reported, never hidden, with the sandbox's console
                console = _last_words(sb, exc) if sb is not None else ""
                emit(name, error=f"{type(exc).__name__}: {exc} [sandbox console: {console}]",
                     trace=traceback.format_exc()[-1500:])
                return
            finally:
                done.set()
            emit(name, seconds=round(time.monotonic() - start, 2), **values)
        return run
    return wrap


@check("create")
def create_info(sb: Sandbox, created_in: float) -> dict:
    listed = [info.sandbox_id for info in Sandbox.list()]
    info = sb.get_info()
    return {"created_in": round(created_in, 2), "listed": sb.sandbox_id in listed, "state": info.state,
            "metadata": info.metadata, "end_in": round((info.end_at or 0) - time.time()),
            "vmm_name": Path(f"/proc/{sb._proc.pid}/comm").read_text().strip() if sb._proc else None}


@check("serial")
def hundred_in_a_row(sb: Sandbox) -> dict:
    wrong = [i for i in range(100)
             if (r := sb.commands.run(f"echo line-{i}; exit 0")).stdout != f"line-{i}\n" or r.exit_code != 0]
    codes = []
    for code in (0, 1, 7, 255):
        try:
            codes.append(sb.commands.run(f"exit {code}").exit_code)
        except CommandExitError as exc:
            codes.append(exc.result.exit_code)
    return {"wrong": wrong, "codes": codes}


@check("parallel")
def eight_in_parallel(sb: Sandbox) -> dict:
    def one(i: int) -> tuple[str, int]:
        try:
            r = sb.commands.run(f"sleep 1; echo par-{i}; exit {i}")
            return r.stdout, r.exit_code
        except CommandExitError as exc:
            return exc.result.stdout, exc.result.exit_code
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    return {"results": results, "elapsed": round(time.monotonic() - start, 2)}


@check("streams")
def stdout_stderr_apart(sb: Sandbox) -> dict:
    chunks: list[str] = []
    r = sb.commands.run("echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf '\\377\\376bad\\n'",
                        on_stdout=chunks.append)
    env = sb.commands.run("echo $GREETING $KVMLITE_X; pwd; id -u", envs={"GREETING": "hello"}, cwd="/tmp")
    return {"stdout": r.stdout, "stderr": r.stderr, "streamed": "".join(chunks), "env": env.stdout}


@check("files")
def big_file_round_trip(sb: Sandbox, work: Path) -> dict:
    data = os.urandom(BIG)
    digest = hashlib.sha256(data).hexdigest()
    start = time.monotonic()
    sb.files.write("/home/user/big.bin", data)
    write_s = time.monotonic() - start
    start = time.monotonic()
    back = sb.files.read("/home/user/big.bin", format="bytes")
    read_s = time.monotonic() - start
    in_guest = sb.commands.run("sha256sum /home/user/big.bin").stdout.split()[0]
    sb.files.make_dir("/home/user/d/e")
    sb.files.write("/home/user/d/e/f.txt", "text")
    names = sorted(e.name for e in sb.files.list("/home/user/d/e"))
    sb.files.rename("/home/user/d/e/f.txt", "/home/user/d/g.txt")
    moved = sb.files.read("/home/user/d/g.txt")
    sb.files.remove("/home/user/d")
    missing = None
    try:
        sb.files.read("/home/user/nope")
    except FileNotFoundError as exc:
        missing = type(exc).__name__
    return {"sha_sent": digest, "sha_back": hashlib.sha256(back).hexdigest(), "sha_guest": in_guest,
            "bytes_back": len(back), "write_MBps": round(BIG / 1e6 / write_s, 1),
            "read_MBps": round(BIG / 1e6 / read_s, 1), "names": names, "moved": moved,
            "exists_after_remove": sb.files.exists("/home/user/d"), "missing": missing}


@check("timeout")
def command_timeout_kills(sb: Sandbox) -> dict:
    start = time.monotonic()
    kind = None
    try:
        sb.commands.run("sleep 1000", timeout=2)
    except CommandExitError as exc:
        kind = type(exc).__name__
    elapsed = time.monotonic() - start
    left = sb.commands.run("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>/dev/null "
                           "| grep -c '^sleep 1000' || true").stdout.strip()
    return {"raised": kind, "elapsed": round(elapsed, 2), "sleeps_left": left}


@check("background")
def background_handle(sb: Sandbox) -> dict:
    handle = sb.commands.run("echo started; sleep 1000", background=True)
    time.sleep(0.5)
    running = [p.pid for p in sb.commands.list()]
    killed = handle.kill()
    result = None
    try:
        result = handle.wait()
    except CommandExitError as exc:
        result = exc.result
    return {"pid_listed": handle.pid in running, "killed": killed, "stdout": result.stdout,
            "signal": result.signal}


@check("exec")
def kvmlite_exec(sb: Sandbox) -> dict:
    ok = subprocess.run([sys.executable, "-m", "kvmlite", "exec", "-n", sb.sandbox_id, "--",
                         "sh", "-c", "echo via-exec; echo to-err >&2; exit 3"], capture_output=True, text=True,
                        timeout=120)
    return {"rc": ok.returncode, "stdout": ok.stdout, "stderr": ok.stderr}


@check("kill_pending", ends_sandbox=True)
def kill_makes_pending_call_raise(sb: Sandbox) -> dict:
    outcome: dict = {}

    def pending() -> None:
        start = time.monotonic()
        try:
            sb.commands.run("sleep 1000", timeout=0)
            outcome["raised"] = None
        except SandboxError as exc:
            outcome["raised"] = type(exc).__name__
        outcome["after"] = round(time.monotonic() - start, 2)
    thread = threading.Thread(target=pending)
    thread.start()
    time.sleep(2)
    killed_at = time.monotonic()
    killed = sb.kill()
    thread.join(60)
    return {"killed": killed, "raised": outcome.get("raised"), "alive": thread.is_alive(),
            "raise_after_kill": round(time.monotonic() - killed_at, 2), "running": sb.is_running()}


@check("deadline", ends_sandbox=True)
def own_deadline(sb: Sandbox) -> dict:
    outcome: dict = {}

    def pending() -> None:
        try:
            sb.commands.run("sleep 1000", timeout=0)
        except SandboxError as exc:
            outcome["raised"] = type(exc).__name__
    thread = threading.Thread(target=pending)
    thread.start()
    sb.set_timeout(3)
    start = time.monotonic()
    while sb.is_running() and time.monotonic() - start < 60:
        time.sleep(0.2)
    ended = time.monotonic() - start
    thread.join(30)
    return {"ended_after": round(ended, 2), "running": sb.is_running(), "raised": outcome.get("raised")}


def leftovers(work: Path, names: list[str], pids: list[int]) -> None:
    """No VMM process (by its pid, and by its command line when it was
    started the plain way), no runtime socket or directory, no console
    file left."""
    procs = subprocess.run(["pgrep", "-af", "kvmlite sandbox --agent"], capture_output=True, text=True).stdout
    alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    run_dir = Path(os.environ.get("XDG_RUNTIME_DIR", "")) / "kvmlite"
    entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []
    tmp = sorted(p.name for p in Path("/tmp").iterdir() if p.name.startswith("kvmlite-sandbox-"))
    emit("leftovers", processes=[line for line in procs.splitlines() if any(n in line for n in names)] + alive,
         vmm_pids=len(pids),
         runtime=[e for e in entries if any(e.startswith(n) for n in names)], tmp=tmp)


def main() -> None:
    work = Path(sys.argv[1])
    start = time.monotonic()
    try:
        sb = Sandbox.create(timeout=900, metadata={"purpose": "nested-test"}, memory_mb=512,
                            envs={"KVMLITE_X": "sdk-env"})
    except BaseException as exc:
        emit("create", error=f"{type(exc).__name__}: {exc}")
        return
    created_in = time.monotonic() - start
    # The second sandbox boots now, before anything is killed (in the
    # emulated test host a boot right after a kill has met soft lockups).
    second = None
    try:
        second = Sandbox.create(timeout=900, memory_mb=256)
    except BaseException as exc:
        emit("deadline", error=f"second sandbox: {type(exc).__name__}: {exc}")
    create_info(sb, created_in)
    hundred_in_a_row(sb)
    eight_in_parallel(sb)
    stdout_stderr_apart(sb)
    big_file_round_trip(sb, work)
    command_timeout_kills(sb)
    background_handle(sb)
    kvmlite_exec(sb)
    kill_makes_pending_call_raise(sb)
    names, pids = [sb.sandbox_id], [sb._proc.pid if sb._proc else -1]
    if second is not None:
        names.append(second.sandbox_id)
        pids.append(second._proc.pid if second._proc else -1)
        own_deadline(second)
    time.sleep(1)
    leftovers(work, names, pids)


if __name__ == "__main__":
    main()
