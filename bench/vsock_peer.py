"""The test host's side of bench/vsock_nested.py (standard library and
kvmlite only; run with the test host's Python).  Every result is one line
``@@VS <vmm> <metric> <value>``.

    vsock_peer.py up VMM LISTEN           accept one stream, read to its end
    vsock_peer.py down VMM TARGET BYTES   connect (retrying while the guest
                                          boots), send BYTES, wait for the end
    vsock_peer.py sdk ROUNDS FILE_MIB     the sandbox SDK's latencies

LISTEN is a Unix socket path (kvmlite's ``<socket>_PORT``) or ``vsock:PORT``
(an AF_VSOCK listener for QEMU's vhost-vsock); TARGET is
``hybrid:PATH:PORT`` (kvmlite: ``CONNECT PORT`` on the VM's socket) or
``vsock:CID:PORT``.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time

CHUNK = 1 << 18


def emit(vmm: str, metric: str, value: float | str) -> None:
    print(f"@@VS {vmm} {metric} {value if isinstance(value, str) else round(value, 3)}", flush=True)


def listener(spec: str) -> socket.socket:
    if spec.startswith("vsock:"):
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.bind((socket.VMADDR_CID_ANY, int(spec.split(":")[1])))
    else:
        if os.path.exists(spec):
            os.unlink(spec)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(spec)
    sock.listen(1)
    return sock


def connect(spec: str, deadline: float) -> socket.socket:
    """A stream to the guest's listener, retried until it exists."""
    kind, *rest = spec.split(":")
    while True:
        try:
            if kind == "vsock":
                sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
                sock.connect((int(rest[0]), int(rest[1])))
                return sock
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(rest[0])
            sock.sendall(f"CONNECT {rest[1]}\n".encode())
            line = b""
            while not line.endswith(b"\n"):
                byte = sock.recv(1)
                if not byte:
                    raise ConnectionError("no listener yet")
                line += byte
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def up(vmm: str, spec: str) -> None:
    with listener(spec) as srv:
        srv.settimeout(600)
        conn, _ = srv.accept()
    with conn:
        total, start = 0, time.monotonic()
        while chunk := conn.recv(CHUNK):
            total += len(chunk)
        seconds = time.monotonic() - start
    emit(vmm, "up_MBps", total / 1e6 / seconds)
    emit(vmm, "up_bytes", total)


def down(vmm: str, spec: str, count: int) -> None:
    with connect(spec, time.monotonic() + 600) as conn:
        block = bytes(CHUNK)
        start, sent = time.monotonic(), 0
        while sent < count:
            conn.sendall(block[: min(CHUNK, count - sent)])
            sent += min(CHUNK, count - sent)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(CHUNK):          # the guest closes once it has read everything
            pass
        seconds = time.monotonic() - start
    emit(vmm, "down_MBps", count / 1e6 / seconds)


def sdk(rounds: int, file_mib: int) -> None:
    from kvmlite import Sandbox
    from kvmlite.agent.client import connect_hybrid

    start = time.monotonic()
    sb = Sandbox.create(timeout=900)
    try:
        sb.commands.run("true")
        emit("kvmlite", "create_to_first_result_s", time.monotonic() - start)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            sb.commands.run("true")
            times.append(time.perf_counter() - t0)
        emit("kvmlite", "run_true_ms", statistics.median(times) * 1000)
        sb.commands.run("socat VSOCK-LISTEN:6000,fork EXEC:/bin/cat", background=True, user=0)
        path = sb._socket_path                # the VM's vsock socket
        deadline = time.monotonic() + 60
        while True:                           # until socat listens
            try:
                connect_hybrid(path, 6000, timeout=60).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        echo = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            with connect_hybrid(path, 6000, timeout=60) as conn:
                conn.sendall(b"x")
                assert conn.recv(1) == b"x"
            echo.append(time.perf_counter() - t0)
        emit("kvmlite", "echo_ms", statistics.median(echo) * 1000)
        data = os.urandom(file_mib << 20)
        t0 = time.perf_counter()
        sb.files.write("/home/user/bench.bin", data)
        emit("kvmlite", "file_write_MBps", len(data) / 1e6 / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        back = sb.files.read("/home/user/bench.bin", format="bytes")
        emit("kvmlite", "file_read_MBps", len(back) / 1e6 / (time.perf_counter() - t0))
        assert back == data
    finally:
        sb.kill()


def main() -> None:
    mode = sys.argv[1]
    try:
        if mode == "up":
            up(sys.argv[2], sys.argv[3])
        elif mode == "down":
            down(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        else:
            sdk(int(sys.argv[2]), int(sys.argv[3]))
    except Exception as exc:                  # the reason, on the console, for the report
        vmm = "kvmlite" if mode == "sdk" else sys.argv[2]
        emit(vmm, f"{mode}_error", f"{type(exc).__name__}: {exc}".replace("\n", " "))


if __name__ == "__main__":
    main()
