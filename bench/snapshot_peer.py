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
    snapshot_peer.py sdk ROUNDS           Sandbox.create() cold and from
                                          the start-up snapshot

The guest is the default guest (``$KERNEL``, ``$INITRD``) running a shell
loop that prints ``tick N`` ten times a second; "restored" is the first
tick a restored VM prints, timed from the moment its VMM process starts.
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
import time

LOOP = "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done"
TICK = re.compile(rb"tick (\d+)")
WORK = "/tmp/kvmlite-snbench"


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


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


# --- kvmlite ----------------------------------------------------------------------


def kvmlite_boot(name: str, mib: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(kvmlite("run", "-k", os.environ["KERNEL"], "-i", os.environ["INITRD"], "-m", str(mib),
                                    "-n", "mode=none", "-p", "quiet", "--name", name, "--", LOOP),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kvmlite_save(name: str, mib: int, directory: str) -> None:
    step(f"kvmlite {mib} MiB: booting {name}")
    proc = kvmlite_boot(name, mib)
    try:
        wait_tick(proc, 240, after=5)
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
        kvmlite_save(f"snb{mib}", mib, directory)
        times = []
        for i in range(3):
            step(f"kvmlite {mib} MiB: restore {i + 1}")
            seconds, proc = kvmlite_restore(directory, f"snb{mib}r{i}")
            stop(proc)
            times.append(seconds)
        emit("kvmlite", f"restore_{mib}_ms", statistics.median(times) * 1000)
    except Exception as exc:
        emit("kvmlite", f"restore_{mib}_ms_error", f"{type(exc).__name__}: {exc}"[:300])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- QEMU -------------------------------------------------------------------------


def qemu_argv(mib: int, monitor: str, incoming: str | None = None) -> list[str]:
    cmd = base64.b64encode(LOOP.encode()).decode()
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
    finally:
        for path in (file, monitor):
            if os.path.exists(path):
                os.unlink(path)


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
    elif what == "sdk":
        os.environ.setdefault("KVMLITE_SANDBOX_SNAPSHOTS", tempfile.mkdtemp(prefix="kvmlite-snb-cache-"))
        sdk(int(sys.argv[2]))
    else:
        sys.exit(f"unknown step {what!r}")


if __name__ == "__main__":
    main()
