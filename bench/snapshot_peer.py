"""The test host's side of bench/snapshot_nested.py (standard library and
kvmlite only; run with the test host's Python).  Every result is one line
``@@SN <vmm> <metric> <value>`` (``<metric>_error`` with a message when a
step failed).

    snapshot_peer.py restore MIB          kvmlite and QEMU: save a counting
                                          guest of MIB MiB, time its restore
    snapshot_peer.py clones N             kvmlite: N restores of one idle
                                          guest, their summed PSS: N
                                          processes (``run --restore``), and
                                          one process (``Vm.restore``) against
                                          one clone in a process
    snapshot_peer.py api-clones DIR N     one process: N ``Vm.restore`` of
                                          DIR, its PSS once they tick
    snapshot_peer.py api-restore DIR      one process with kvmlite loaded:
                                          five ``Vm.restore`` of DIR, each
                                          timed to its first tick

Restores are timed two ways: a new process per restore (``kvmlite run
--restore`` against ``qemu -incoming "exec:cat FILE"``), and in a VMM
process that is already running, as Firecracker times its snapshot load
(``Vm.restore`` in a Python process that has imported kvmlite, against a
QEMU started with ``-incoming defer`` and given ``migrate_incoming`` on
its monitor).
    snapshot_peer.py sdk ROUNDS           Sandbox.create() cold and from
                                          the start-up snapshot

The guest is the default guest (``$KERNEL``, ``$INITRD``) running a shell
loop that prints ``tick N`` without a pause (the restore steps) or ten
times a second (the idle clones); "restored" is the first tick a restored
VM prints, timed from the moment its VMM process starts (or the restore
call, in a running process).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

LOOP = "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done"        # the idle clones' guest
# The restored guest's first tick shows it runs again; with LOOP that tick
# comes up to 0.1 s after it does (its sleep goes on), more than kvmlite's
# restore in a running process takes, so the restore steps' guest ticks
# without a pause (the shell's builtin echo: no process per tick).
BUSY_LOOP = "i=0; while :; do i=$((i+1)); echo tick $i; done"
TICK = re.compile(rb"tick (\d+)")
WORK = "/tmp/kvmlite-snbench"
RESTORES = 5            # restores in a running process, each side (a new process: 3)


def emit(vmm: str, metric: str, value: float | str) -> None:
    print(f"@@SN {vmm} {metric} {value if isinstance(value, str) else round(value, 3)}", flush=True)


def step(text: str) -> None:
    """A progress line: what the peer does now (and proof of life for the
    test host's silence watch)."""
    print(f"snapshot_peer: {text}", flush=True)


def kvmlite(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvmlite", *args]


def wait_tick(proc: subprocess.Popen[bytes], timeout: float, after: int = 0) -> float:
    """Seconds until ``proc`` prints a tick above ``after`` (reads its stdout)."""
    start = time.monotonic()
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    while time.monotonic() - start < timeout:
        chunk = proc.stdout.read(65536)
        if chunk:
            seen = (seen + chunk)[-4096:]
            if any(int(n) > after for n in TICK.findall(seen)):
                return time.monotonic() - start
        elif proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}: {seen[-300:]!r}")
        else:
            time.sleep(0.005)
    raise RuntimeError(f"no tick within {timeout:g} s: {seen[-300:]!r}")


def drain(proc: subprocess.Popen[bytes]) -> None:
    """Read and drop ``proc``'s output from now on (a guest ticking without
    a pause fills a pipe nobody reads, and a VMM whose console blocks stops
    its guest, QEMU its monitor and migration too)."""
    assert proc.stdout is not None
    out = proc.stdout
    os.set_blocking(out.fileno(), True)
    threading.Thread(target=lambda: all(iter(lambda: out.read1(65536), b"")), daemon=True).start()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


# --- kvmlite ----------------------------------------------------------------------


def kvmlite_boot(name: str, mib: int, loop: str = LOOP) -> subprocess.Popen[bytes]:
    return subprocess.Popen(kvmlite("run", "-k", os.environ["KERNEL"], "-i", os.environ["INITRD"], "-m", str(mib),
                                    "-n", "mode=none", "-p", "quiet", "--name", name, "--", loop),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kvmlite_save(name: str, mib: int, directory: str, loop: str = LOOP) -> None:
    step(f"kvmlite {mib} MiB: booting {name}")
    proc = kvmlite_boot(name, mib, loop)
    try:
        wait_tick(proc, 240, after=5)
        drain(proc)
        step(f"kvmlite {mib} MiB: ticking; snapshot to {directory}")
        subprocess.run(kvmlite("snapshot", "-n", name, directory, "--stop"), check=True, capture_output=True,
                       timeout=300)
        proc.wait(60)
    finally:
        stop(proc)


def kvmlite_restore(directory: str, name: str) -> tuple[float, subprocess.Popen[bytes]]:
    proc = subprocess.Popen(kvmlite("run", "--restore", directory, "--name", name), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return wait_tick(proc, 300), proc


def restore_kvmlite(mib: int) -> None:
    directory = f"{WORK}/k{mib}"
    shutil.rmtree(directory, ignore_errors=True)
    try:
        kvmlite_save(f"snb{mib}", mib, directory, BUSY_LOOP)
        times = []
        for i in range(3):
            step(f"kvmlite {mib} MiB: restore {i + 1}")
            seconds, proc = kvmlite_restore(directory, f"snb{mib}r{i}")
            stop(proc)
            times.append(seconds)
        emit("kvmlite", f"restore_{mib}_ms", statistics.median(times) * 1000)
    except Exception as exc:
        emit("kvmlite", f"restore_{mib}_ms_error", f"{type(exc).__name__}: {exc}"[:300])
    try:
        step(f"kvmlite {mib} MiB: {RESTORES} restores in one running process (Vm.restore)")
        out = subprocess.run([sys.executable, __file__, "api-restore", directory], capture_output=True, text=True,
                             timeout=900)
        times = [float(t) for t in re.findall(r"^@@T (\S+)$", out.stdout, re.M)]
        if len(times) != RESTORES:
            raise RuntimeError(f"api-restore: status {out.returncode}: {(out.stdout + out.stderr)[-300:]}")
        emit("kvmlite", f"warm_restore_{mib}_ms", statistics.median(times) * 1000)
    except Exception as exc:
        emit("kvmlite", f"warm_restore_{mib}_ms_error", f"{type(exc).__name__}: {exc}"[:300])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def api_restore(directory: str) -> None:
    """RESTORES restores of ``directory`` in this process, kvmlite loaded
    first (the modules a restore uses): ``@@T SECONDS`` from the call to
    ``Vm.restore`` to the restored guest's first tick."""
    import importlib

    from kvmlite import Vm
    from kvmlite.sdk.launcher import WARM_MODULES

    for module in WARM_MODULES:
        importlib.import_module(module)
    for i in range(RESTORES):
        seen = bytearray()
        start = time.monotonic()
        vm = Vm.restore(directory, name=f"snbwarm{os.getpid()}x{i}", console_output=seen.extend)
        vm.start()
        while not TICK.search(bytes(seen[-4096:])):
            if time.monotonic() - start > 300:
                raise SystemExit(f"restore {i}: no tick within 300 s: {bytes(seen[-300:])!r}")
            time.sleep(0.002)
        print(f"@@T {time.monotonic() - start:.4f}", flush=True)
        vm.stop()
        vm.wait(30)
        vm.close()


# --- QEMU -------------------------------------------------------------------------


def qemu_argv(mib: int, monitor: str, incoming: str | None = None, loop: str = BUSY_LOOP) -> list[str]:
    cmd = base64.b64encode(loop.encode()).decode()
    argv = ["qemu-system-x86_64", "-enable-kvm", "-M", "pc", "-cpu", "host", "-m", str(mib), "-smp", "1",
            "-display", "none", "-serial", "stdio", "-nodefaults", "-nic", "none", "-no-reboot",
            "-monitor", f"unix:{monitor},server,nowait",
            "-kernel", os.environ["KERNEL"], "-initrd", os.environ["INITRD"],
            "-append", f"console=ttyS0 quiet panic=-1 kvmlite.cmd={cmd}"]
    return argv + (["-incoming", incoming] if incoming else [])


def hmp(path: str, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.settimeout(5)
        sock.sendall(command.encode() + b"\n")
        time.sleep(0.3)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except socket.timeout:
            pass
        return out.decode(errors="replace")


def qemu_save(mib: int, file: str, monitor: str) -> None:
    step(f"QEMU {mib} MiB: booting")
    proc = subprocess.Popen(qemu_argv(mib, monitor), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        wait_tick(proc, 240, after=5)
        drain(proc)
        # Migrated live, not after "stop": a VM stopped on the source stays
        # stopped after -incoming (QEMU migrates the run state too).
        step(f"QEMU {mib} MiB: ticking; migrate to {file}")
        hmp(monitor, f'migrate "exec:cat > {file}"')
        deadline = time.monotonic() + 240
        while "Migration status: completed" not in (status := hmp(monitor, "info migrate")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the migration to a file did not complete: {status[-300:]!r}")
            step(f"QEMU {mib} MiB: migrating: {status.strip().splitlines()[-1:]!r}")
            time.sleep(2)
        step(f"QEMU {mib} MiB: saved {os.path.getsize(file)} bytes")
        hmp(monitor, "quit")
    finally:
        stop(proc)


def restore_qemu(mib: int) -> None:
    file, monitor = f"{WORK}/q{mib}.mig", f"{WORK}/q{mib}.mon"
    try:
        qemu_save(mib, file, monitor)
        times = []
        for i in range(3):
            step(f"QEMU {mib} MiB: restore {i + 1}")
            proc = subprocess.Popen(qemu_argv(mib, monitor, f"exec:cat {file}"), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                times.append(wait_tick(proc, 300))
            finally:
                stop(proc)
        emit("qemu", f"restore_{mib}_ms", statistics.median(times) * 1000)
    except Exception as exc:
        emit("qemu", f"restore_{mib}_ms_error", f"{type(exc).__name__}: {exc}"[:300])
    try:
        times = []
        for i in range(RESTORES):
            step(f"QEMU {mib} MiB: restore {i + 1} in a running QEMU (-incoming defer)")
            times.append(qemu_deferred_restore(mib, file, monitor))
        emit("qemu", f"warm_restore_{mib}_ms", statistics.median(times) * 1000)
    except Exception as exc:
        emit("qemu", f"warm_restore_{mib}_ms_error", f"{type(exc).__name__}: {exc}"[:300])
    finally:
        for path in (file, monitor):
            if os.path.exists(path):
                os.unlink(path)


def qemu_deferred_restore(mib: int, file: str, monitor: str) -> float:
    """Seconds from ``migrate_incoming`` on a waiting QEMU's monitor to the
    restored guest's first tick."""
    if not os.path.exists(file):
        raise RuntimeError("no migration file (the save failed)")
    proc = subprocess.Popen(qemu_argv(mib, monitor, "defer"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        sock = socket.socket(socket.AF_UNIX)
        while True:
            try:
                sock.connect(monitor)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"QEMU's monitor did not open (status {proc.poll()})") from None
                time.sleep(0.05)
        with sock:
            sock.settimeout(30)
            banner = b""
            while b"(qemu)" not in banner:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError(f"QEMU's monitor closed: {banner[-200:]!r}")
                banner += chunk
            sock.sendall(f'migrate_incoming "exec:cat {file}"\n'.encode())
            return wait_tick(proc, 300)
    finally:
        stop(proc)


# --- clones -----------------------------------------------------------------------


def pss_kib(pid: int) -> tuple[int, int]:
    """(the process's PSS, the PSS of its guest RAM mapped from the memory file), KiB."""
    total = ram = 0
    current_is_ram = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:
                current_is_ram = line.rstrip().endswith("/memory")
            elif fields and fields[0] == "Pss:":
                total += int(fields[1])
                if current_is_ram:
                    ram += int(fields[1])
    return total, ram


def clones(count: int) -> None:
    directory = f"{WORK}/idle"
    shutil.rmtree(directory, ignore_errors=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        kvmlite_save("snbidle", 256, directory)
        _, one = kvmlite_restore(directory, "snbone")
        time.sleep(3)
        single, single_ram = pss_kib(one.pid)
        stop(one)
        step(f"{count} clones")
        for i in range(count):
            procs.append(kvmlite_restore(directory, f"snbc{i}")[1])
        time.sleep(3)
        sizes = [pss_kib(p.pid) for p in procs]
        total, ram = sum(s[0] for s in sizes), sum(s[1] for s in sizes)
        emit("kvmlite", "one_clone_pss_MiB", single / 1024)
        emit("kvmlite", "one_clone_guest_ram_pss_MiB", single_ram / 1024)
        emit("kvmlite", f"clones_{count}_pss_MiB", total / 1024)
        emit("kvmlite", f"clones_{count}_guest_ram_pss_MiB", ram / 1024)
    except Exception as exc:
        emit("kvmlite", f"clones_{count}_pss_MiB_error", f"{type(exc).__name__}: {exc}"[:300])
    finally:
        for proc in procs:
            stop(proc)
    try:
        for n, metric in ((1, "api_one_clone"), (count, f"api_clones_{count}")):
            step(f"{n} clone(s) in one process (Vm.restore)")
            out = subprocess.run([sys.executable, __file__, "api-clones", directory, str(n)], capture_output=True,
                                 text=True, timeout=600)
            found = re.search(r"^@@PSS (\d+) (\d+)$", out.stdout, re.M)
            if not found:
                raise RuntimeError(f"api-clones {n}: status {out.returncode}: {(out.stdout + out.stderr)[-300:]}")
            emit("kvmlite", f"{metric}_pss_MiB", int(found[1]) / 1024)
            emit("kvmlite", f"{metric}_guest_ram_pss_MiB", int(found[2]) / 1024)
    except Exception as exc:
        emit("kvmlite", f"api_clones_{count}_pss_MiB_error", f"{type(exc).__name__}: {exc}"[:300])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def api_clones(directory: str, count: int) -> None:
    """``count`` clones of ``directory`` in this process (the Python API),
    started, each ticking; then this process's PSS (``@@PSS total ram``, KiB)."""
    from kvmlite import Vm

    seen = [bytearray() for _ in range(count)]
    vms = [Vm.restore(directory, name=f"snbapi{count}x{i}", console_output=seen[i].extend) for i in range(count)]
    for vm in vms:
        vm.start()
    deadline = time.monotonic() + 300
    while not all(TICK.search(bytes(out[-4096:])) for out in seen):
        if time.monotonic() > deadline:
            raise SystemExit(f"not every clone ticked within 300 s: {[bytes(out[-80:]) for out in seen]}")
        time.sleep(0.05)
    time.sleep(3)
    total, ram = pss_kib(os.getpid())
    print(f"@@PSS {total} {ram}", flush=True)
    for vm in vms:
        vm.stop()
    for vm in vms:
        vm.wait(30)
        vm.close()


# --- the SDK ----------------------------------------------------------------------


def sdk(rounds: int) -> None:
    from kvmlite import Sandbox

    step("the SDK: cold creates, then creates from the start-up snapshot")
    try:
        cold = []
        for _ in range(rounds):
            start = time.monotonic()
            with Sandbox.create(timeout=600, snapshot_cache=False) as sb:
                sb.commands.run("true")
                cold.append(time.monotonic() - start)
            step(f"the SDK: cold create {len(cold)}: {cold[-1]:.1f} s")
        with Sandbox.create(timeout=600) as sb:      # a cold boot that saves the snapshot
            assert sb.restored_from is None and sb.snapshot_note is None, sb.snapshot_note
        step("the SDK: start-up snapshot saved")
        warm = []
        for _ in range(rounds):
            start = time.monotonic()
            with Sandbox.create(timeout=600) as sb:
                sb.commands.run("true")
                warm.append(time.monotonic() - start)
                assert sb.restored_from is not None, f"not started from the snapshot: {sb.snapshot_note}"
            step(f"the SDK: create from the snapshot {len(warm)}: {warm[-1]:.1f} s")
        emit("kvmlite", "sdk_cold_create_s", statistics.median(cold))
        emit("kvmlite", "sdk_snapshot_create_s", statistics.median(warm))
    except Exception as exc:
        emit("kvmlite", "sdk_cold_create_s_error", f"{type(exc).__name__}: {exc}"[:300])


def main() -> None:
    os.makedirs(WORK, exist_ok=True)
    what = sys.argv[1]
    if what == "restore":
        restore_kvmlite(int(sys.argv[2]))
        restore_qemu(int(sys.argv[2]))
    elif what == "clones":
        clones(int(sys.argv[2]))
    elif what == "api-clones":
        api_clones(sys.argv[2], int(sys.argv[3]))
    elif what == "api-restore":
        api_restore(sys.argv[2])
    elif what == "sdk":
        os.environ.setdefault("KVMLITE_SANDBOX_SNAPSHOTS", tempfile.mkdtemp(prefix="kvmlite-snb-cache-"))
        sdk(int(sys.argv[2]))
    else:
        sys.exit(f"unknown step {what!r}")


if __name__ == "__main__":
    main()
