"""The agent against hostile or broken peers, its failures as the client sees
them, its resources, and its entry point and readiness signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kvmlite.agent import AGENT_VERSION
from kvmlite.agent import client as client_module
from kvmlite.agent import protocol as p
from kvmlite.agent.client import AgentClient, connect_hybrid, connect_unix
from kvmlite.agent.config import AgentConfig
from kvmlite.agent.errors import (AgentConnectionError, AgentError, CommandExitError,
                                  VersionMismatchError)
from kvmlite.agent.protocol import FrameType
from kvmlite.agent.server import Agent, listen_unix, send_hello
from kvmlite.agent.wire import FrameReader
from tests.procs import gone_or_zombie

from .conftest import REPO, AgentProcess, ServedAgent, start_agent_process, wait_until

HELLO = p.encode_message({"type": "hello", "version": p.VERSION})


def exchange(path: str, data: bytes) -> list[dict[str, Any]]:
    """Send raw bytes on a fresh stream and end it; the messages the agent sends back."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reader, out = FrameReader(sock), []
        while (frame := reader.read()) is not None:
            if frame.type is FrameType.MSG:
                out.append(p.decode_message(frame.payload))
        return out


@pytest.mark.parametrize("garbage, name", [
    (p.HEADER.pack(4, 99) + b"abcd", p.BAD_FRAME),
    (p.HEADER.pack(p.MAX_PAYLOAD + 1, FrameType.MSG), p.TOO_LARGE),
    (p.encode_frame(FrameType.MSG, b"{not json"), p.BAD_MESSAGE),
    (p.encode_frame(FrameType.DATA, b"data"), p.BAD_FRAME),
    (p.encode_message({"type": "format-disk"}), p.UNKNOWN_REQUEST),
    (p.encode_message({"type": "stat"}), p.BAD_ARGS),
])
def test_malformed_request_gets_an_error_and_the_agent_keeps_serving(
        served: ServedAgent, client: AgentClient, garbage: bytes, name: str) -> None:
    replies = exchange(served.socket_path, HELLO + garbage)
    assert [m["type"] for m in replies] == ["hello", "error"] and replies[1]["name"] == name
    assert client.run("echo alive").stdout == "alive\n"


def test_a_request_without_hello_is_refused(served: ServedAgent) -> None:
    replies = exchange(served.socket_path, p.encode_message({"type": "ps"}))
    assert replies[0]["type"] == "error" and replies[0]["name"] == p.BAD_MESSAGE


def test_stream_ending_inside_a_frame_is_survived(served: ServedAgent,
                                                  client: AgentClient) -> None:
    assert exchange(served.socket_path, HELLO + p.HEADER.pack(100, FrameType.MSG) + b"{")[1][
        "name"] == p.BAD_FRAME
    assert client.exists("/")


def test_version_mismatch_is_clear_both_ways(served: ServedAgent, client: AgentClient,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    replies = exchange(served.socket_path, p.encode_message({"type": "hello", "version": 99}))
    assert replies[0]["name"] == p.VERSION_MISMATCH and "speaks 1" in replies[0]["message"]
    monkeypatch.setattr(client_module, "VERSION", 99)
    with pytest.raises(VersionMismatchError, match="protocol version 99"):
        client.run("true")


def test_a_frame_other_than_stdin_after_run_ends_the_command(served: ServedAgent,
                                                            workdir: Path) -> None:
    run = p.encode_message({"type": "run", "cmd": "echo $$ > pid; exec sleep 60"})
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(served.socket_path)
        sock.sendall(HELLO + run)
        reader = FrameReader(sock)
        assert p.decode_message(reader.read().payload)["type"] == "hello"
        assert p.decode_message(reader.read().payload)["type"] == "started"
        pid = int(wait_until(lambda: (workdir / "pid").exists() and
                             (workdir / "pid").read_text().strip()))
        sock.sendall(p.encode_frame(FrameType.DATA, b"nope"))
        msgs = []
        while (frame := reader.read()) is not None:
            msgs.append(p.decode_message(frame.payload))
    assert {m["type"] for m in msgs} <= {"error", "exit"} and msgs[0]["name"] == p.UNEXPECTED
    wait_until(lambda: gone_or_zombie(pid))


def test_a_bug_in_a_handler_is_an_internal_error(served: ServedAgent, client: AgentClient,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(stream: Any, msg: Any) -> None:
        raise RuntimeError("oops")

    monkeypatch.setitem(served.agent._handlers, "ps", broken)
    with pytest.raises(AgentError) as info:
        client.list_processes()
    assert info.value.name == p.INTERNAL and "oops" in info.value.message
    assert client.run("echo fine").stdout == "fine\n"


def test_a_silent_client_is_dropped_at_the_handshake_timeout(workdir: Path,
                                                             sockdir: Path) -> None:
    agent = Agent(AgentConfig(workdir=str(workdir), handshake_timeout=0.3))
    path = str(sockdir / "a.sock")
    agent.serve_in_thread(listen_unix(path))
    try:
        with socket.socket(socket.AF_UNIX) as idle:
            idle.settimeout(10)
            idle.connect(path)
            client = AgentClient(lambda: connect_unix(path))
            assert client.run("echo meanwhile").stdout == "meanwhile\n"
            started = time.monotonic()
            assert idle.recv(100) == b""                 # closed, without a word
            assert time.monotonic() - started < 5
    finally:
        agent.close()


def test_too_many_streams_get_busy(workdir: Path, sockdir: Path) -> None:
    agent = Agent(AgentConfig(workdir=str(workdir), max_streams=1))
    path = str(sockdir / "a.sock")
    agent.serve_in_thread(listen_unix(path))
    client = AgentClient(lambda: connect_unix(path))
    try:
        handle = client.run(["sleep", "30"], background=True)    # holds the one stream
        with pytest.raises(AgentError) as info:
            client.exists("/")
        assert info.value.name == p.BUSY
        handle.disconnect()
        wait_until(lambda: _try_kill(client, handle.pid))
    finally:
        agent.close()


def _try_kill(client: AgentClient, pid: int) -> bool:
    try:
        return client.kill(pid)
    except AgentError:
        return False


def test_unreachable_agent_is_a_connection_error(sockdir: Path) -> None:
    client = AgentClient(lambda: connect_unix(str(sockdir / "nobody.sock")))
    with pytest.raises(AgentConnectionError, match="cannot connect"):
        client.run("true")

    def refuse() -> socket.socket:
        raise ConnectionRefusedError(111, "refused")

    with pytest.raises(AgentConnectionError, match="refused"):
        AgentClient(refuse).exists("/")


def test_agent_killed_mid_command_fails_every_waiter_promptly(
        agent_process: AgentProcess, workdir: Path) -> None:
    client = agent_process.client(idle_timeout=60.0)
    background = client.run(["sleep", "60"], background=True)
    failures: list[BaseException] = []

    def foreground() -> None:
        try:
            client.run("echo $$ > pid; exec sleep 60")
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=foreground)
    thread.start()
    pid = int(wait_until(lambda: (workdir / "pid").exists() and
                         (workdir / "pid").read_text().strip()))
    killed = time.monotonic()
    os.kill(agent_process.pid, signal.SIGKILL)
    thread.join(10)
    with pytest.raises(AgentConnectionError):
        background.wait(timeout=10)
    assert time.monotonic() - killed < 3
    assert len(failures) == 1 and isinstance(failures[0], AgentConnectionError)
    for orphan in (pid, background.pid):                 # the agent's children outlive it
        os.killpg(orphan, signal.SIGKILL)


def test_a_stopped_agent_is_detected_by_the_idle_timeout(agent_process: AgentProcess) -> None:
    client = agent_process.client(idle_timeout=1.0)
    assert client.run("sleep 2").exit_code == 0        # keepalives carry a silent command
    handle = client.run(["sleep", "60"], background=True)
    os.kill(agent_process.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    with pytest.raises(AgentConnectionError, match="no data for 1 s"):
        handle.wait(timeout=10)
    assert 0.9 < time.monotonic() - stopped < 4
    os.kill(agent_process.pid, signal.SIGCONT)
    os.killpg(handle.pid, signal.SIGKILL)


def test_agent_leaks_no_descriptors(agent_process: AgentProcess, workdir: Path) -> None:
    baseline = agent_process.open_fds()             # listening, no stream yet
    client = agent_process.client(idle_timeout=10.0)
    for _ in range(3):
        client.run("echo out; echo err >&2", stdin="in")
        with pytest.raises(CommandExitError):
            client.run("exit 2")
        with pytest.raises(CommandExitError):
            client.run("sleep 5", timeout=0.1)
        handle = client.run(["sleep", "30"], background=True, stdin=True)
        handle.send_stdin("x")
        client.connect(handle.pid).disconnect()
        handle.kill()
        with pytest.raises(CommandExitError):
            handle.wait(timeout=10)
        client.write(str(workdir / "f"), os.urandom(300000))
        client.read(str(workdir / "f"), format="bytes")
        client.read(str(workdir / "f"), format="stream").close()   # abandoned midway
        client.list(str(workdir), depth=2)
        with pytest.raises(FileNotFoundError):
            client.read(str(workdir / "missing"))
        with pytest.raises(IsADirectoryError):
            client.write(str(workdir), b"x")
        exchange(agent_process.socket_path, HELLO + p.HEADER.pack(9, 99))
    wait_until(lambda: agent_process.open_fds() == baseline, timeout=10)


def test_entry_point_prints_the_ready_line_and_serves(agent_process: AgentProcess,
                                                      sockdir: Path) -> None:
    assert agent_process.ready_line == \
        f"kvmlite-agent: ready unix={agent_process.socket_path} version={AGENT_VERSION}"
    info = agent_process.client().hello()
    assert info.pid == agent_process.pid and info.version == p.VERSION
    assert info.agent_version == AGENT_VERSION and info.uname["sysname"] == "Linux"


def test_entry_point_env_and_workdir_options(workdir: Path, sockdir: Path) -> None:
    (workdir / "wd").mkdir()
    proc = start_agent_process(workdir, sockdir, "--env", "ANSWER=42",
                               "--workdir", str(workdir / "wd"))
    try:
        result = proc.client().run('echo "$ANSWER"; pwd')
        assert result.stdout == f"42\n{workdir / 'wd'}\n"
    finally:
        proc.popen.kill()
        proc.popen.wait()
        proc.popen.stdout.close()
        proc.popen.stderr.close()


def test_entry_point_serves_an_already_connected_socket() -> None:
    ours, theirs = socket.socketpair()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "kvmlite.agent", "--connected-fd",
                             str(theirs.fileno())], pass_fds=[theirs.fileno()], env=env)
    theirs.close()
    try:
        result = AgentClient(lambda: ours, idle_timeout=10).run("echo over-fd")
        assert result.stdout == "over-fd\n"
        assert proc.wait(timeout=10) == 0        # one stream, then it exits
    finally:
        proc.kill()
        proc.wait()


def test_entry_point_listens_on_vsock_by_default() -> None:
    probe = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        probe.bind((socket.VMADDR_CID_ANY, 0))
        port = probe.getsockname()[1]
    except OSError as exc:
        pytest.skip(f"this machine cannot bind a vsock socket: {exc}")
    finally:
        probe.close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "kvmlite.agent", "--vsock-port", str(port)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline() == \
            f"kvmlite-agent: ready port={port} version={AGENT_VERSION}\n"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_ready_hello_goes_to_the_listener_and_failure_is_ignored(served: ServedAgent,
                                                                 sockdir: Path) -> None:
    path = str(sockdir / "ready.sock")
    with listen_unix(path) as listener:
        listener.settimeout(10)
        hello = {**served.agent.hello_message(), "ready": True, "port": 1024}
        assert send_hello(socket.AF_UNIX, path, hello)
        conn, _ = listener.accept()
        with conn:
            frame = FrameReader(conn).read()
    msg = p.decode_message(frame.payload)
    assert msg["type"] == "hello" and msg["ready"] is True and msg["pid"] == os.getpid()
    assert send_hello(socket.AF_UNIX, str(sockdir / "absent.sock"), hello) is False


class FakeVmm:
    """A Firecracker-style hybrid vsock socket: ``CONNECT <port>`` then a byte
    stream to the listener of that port (here the agent's Unix socket)."""

    def __init__(self, path: str, ports: dict[int, str], answer: bytes = b"OK 1073741824\n"):
        self.ports, self.answer = ports, answer
        self.listener = listen_unix(path)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        line = b""
        while not line.endswith(b"\n"):
            line += conn.recv(1)
        port = int(line.split()[1])
        if port not in self.ports:
            conn.close()                        # as Firecracker: no listener, no answer
            return
        guest = connect_unix(self.ports[port])
        conn.sendall(self.answer)
        for a, b in ((conn, guest), (guest, conn)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_connect_hybrid_does_the_connect_ok_dance(served: ServedAgent, sockdir: Path) -> None:
    uds = str(sockdir / "v.sock")
    vmm = FakeVmm(uds, {1024: served.socket_path})
    try:
        client = AgentClient(lambda: connect_hybrid(uds, 1024), idle_timeout=10)
        assert client.run("echo through-vsock").stdout == "through-vsock\n"
        with pytest.raises(AgentConnectionError, match="closed the connection.*port 1025"):
            AgentClient(lambda: connect_hybrid(uds, 1025)).hello()
        vmm.answer = b"FAILURE\n"
        with pytest.raises(AgentConnectionError, match="answered b'FAILURE"):
            AgentClient(lambda: connect_hybrid(uds, 1024)).hello()
        with pytest.raises(AgentConnectionError, match="CONNECT 1024"):
            connect_hybrid(str(sockdir / "no-vmm.sock"), 1024)
    finally:
        vmm.close()
