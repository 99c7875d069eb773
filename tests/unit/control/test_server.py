"""The control server over a real Unix socket, with a fake VM behind it:
replies, bad input, limits, and clients that stall or never read."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlite.control import protocol as p
from kvmlite.control.client import ControlClient, ControlError
from kvmlite.control.registry import Liveness, Registry
from kvmlite.control.server import ControlServer, Limits
from kvmlite.errors import KvmliteError

from .fakes import FakeTarget


def reply(conn) -> dict:
    return json.loads(conn.line())


def test_server_socket_mode_0600_removed_on_close(serve, registry: Registry) -> None:
    server = serve("web")
    mode = os.lstat(server.socket_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    server.close()
    assert not server.socket_path.exists() and registry.names() == []


def test_info_adds_name_pid_and_versions(serve, registry: Registry) -> None:
    serve("web")
    with ControlClient("web", registry=registry) as client:
        info = client.info()
    assert info["name"] == "web" and info["pid"] == os.getpid()
    assert info["protocol"] == p.VERSION and info["vcpus"] == 2


def test_client_calls_reach_target_in_order(serve, registry: Registry, target: FakeTarget) -> None:
    serve()
    with ControlClient("vm", registry=registry) as client:
        assert client.pause(2.0) == "paused"
        assert client.registers()[0]["regs"]["rip"] == 0x1000
        assert client.nmi(1) == [1]
        client.sysrq("h")
        assert client.resume() == "running"
    assert target.calls == [("pause", 2.0), ("registers",), ("nmi", 1), ("sysrq", "h"), ("resume",)]


def test_second_server_same_name_refused(serve) -> None:
    serve("web")
    with pytest.raises(KvmliteError, match="already running"):
        serve("web")


def test_close_after_failed_start_returns_promptly(serve, registry: Registry, target: FakeTarget) -> None:
    serve("web")
    second = ControlServer(target, "web", registry=registry)
    with pytest.raises(KvmliteError):
        second.start()
    start = time.monotonic()
    second.close()
    assert time.monotonic() - start < 1.0
    assert registry.probe("web") is Liveness.LIVE       # the first server's entry is untouched


def test_malformed_request_error_reply_connection_still_usable(serve, raw) -> None:
    server = serve()
    conn = raw(server.socket_path)
    conn.send(b"this is not json\n")
    first = reply(conn)
    conn.send(b'{"v":1,"id":2,"op":"info"}\n')
    second = reply(conn)
    assert first["ok"] is False and first["error"]["code"] == p.PARSE_ERROR
    assert second["ok"] is True and second["id"] == 2


@pytest.mark.parametrize("line, code", [
    (b'{"v":2,"id":1,"op":"info"}', p.UNSUPPORTED_VERSION),
    (b'{"v":1,"id":1,"op":"reboot"}', p.UNKNOWN_OP),
    (b'{"v":1,"id":1,"op":"pause","args":{"timeout":-5}}', p.BAD_ARGS),
    (b'\xff\xff\n', p.PARSE_ERROR),
    (b'[]', p.BAD_REQUEST),
])
def test_bad_requests_each_get_one_error_reply(serve, raw, line: bytes, code: str) -> None:
    conn = raw(serve().socket_path)
    conn.send(line.rstrip(b"\n") + b"\n")
    answer = reply(conn)
    assert answer["ok"] is False and answer["error"]["code"] == code and answer["error"]["message"]


def test_oversize_request_too_large_then_closed(serve, raw) -> None:
    server = serve(limits=Limits(max_request=1024))
    conn = raw(server.socket_path)
    conn.send(b"x" * 5000)                 # no newline: the limit applies before it arrives
    answer = reply(conn)
    assert answer["error"]["code"] == p.TOO_LARGE
    assert conn.closed()
    with ControlClient("vm", registry=server.registry) as other:   # the server goes on
        assert other.info()["name"] == "vm"


def test_half_request_stalled_client_does_not_block_another(serve, raw, registry: Registry) -> None:
    server = serve()
    staller = raw(server.socket_path)
    staller.send(b'{"v":1,"id":1,"op":"in')       # and then nothing
    start = time.monotonic()
    with ControlClient("vm", registry=registry, timeout=5) as client:
        for _ in range(20):
            client.stats()
    assert time.monotonic() - start < 2.0
    staller.send(b'fo"}\n')                         # finishing later still works
    assert reply(staller)["ok"] is True


def test_slow_operation_does_not_block_another_client(serve, registry: Registry, target: FakeTarget) -> None:
    serve()
    target.gate = threading.Event()
    paused: list[str] = []
    worker = threading.Thread(target=lambda: paused.append(ControlClient("vm", registry=registry).pause()))
    worker.start()
    time.sleep(0.2)                                 # the pause is now blocked in the target
    with ControlClient("vm", registry=registry, timeout=2) as other:
        assert other.info()["state"] == "running"
    target.gate.set()
    worker.join(5)
    assert paused == ["paused"]


def test_pipelined_requests_replied_in_order(serve, raw, target: FakeTarget) -> None:
    target.gate = threading.Event()
    conn = raw(serve().socket_path)
    conn.send(b"".join(p.encode_request(p.Request(op, {}, i)) for i, op in
                       enumerate(["pause", "info", "resume", "info"])))
    threading.Timer(0.2, target.gate.set).start()
    answers = [reply(conn) for _ in range(4)]
    assert [a["id"] for a in answers] == [0, 1, 2, 3]
    assert answers[1]["result"]["state"] == "paused" and answers[3]["result"]["state"] == "running"


def test_client_that_never_reads_does_not_block_others(serve, raw, registry: Registry) -> None:
    server = serve()
    hog = raw(server.socket_path)
    hog.sock.setblocking(False)
    request = p.encode_request(p.Request("stats", {}, 1))
    sent = 0
    try:
        for _ in range(200_000):                    # until the kernel buffers fill up
            sent += hog.sock.send(request)
    except BlockingIOError:
        pass
    assert sent > 0
    with ControlClient("vm", registry=registry, timeout=3) as other:
        assert other.info()["name"] == "vm"


def test_too_many_clients_busy_reply(serve, raw, registry: Registry) -> None:
    server = serve(limits=Limits(max_clients=2))
    a, b = raw(server.socket_path), raw(server.socket_path)
    c = raw(server.socket_path)
    answer = reply(c)
    assert answer["error"]["code"] == p.BUSY and c.closed()
    a.send(b'{"v":1,"op":"info"}\n')
    assert reply(a)["ok"] is True


def test_incomplete_request_times_out_and_closes(serve, raw) -> None:
    server = serve(limits=Limits(request_timeout=0.3, tick=0.05))
    conn = raw(server.socket_path)
    conn.send(b'{"v":1,')
    answer = reply(conn)
    assert answer["error"]["code"] == p.BAD_REQUEST and "incomplete" in answer["error"]["message"]
    assert conn.closed()


def test_target_failure_is_error_reply_and_server_goes_on(serve, registry: Registry,
                                                          target: FakeTarget) -> None:
    serve()
    with ControlClient("vm", registry=registry) as client:
        target.fail = KvmliteError("vCPU 0 did not pause within 5 s")
        with pytest.raises(ControlError, match="did not pause") as failed:
            client.stats()
        target.fail = ZeroDivisionError("bug")
        with pytest.raises(ControlError, match="internal error in stats") as bug:
            client.stats()
        target.fail = None
        assert client.stats()["rss_bytes"] > 0
    assert failed.value.code == p.FAILED and bug.value.code == p.INTERNAL


def test_stop_reply_arrives_even_when_vm_closes_server_at_once(serve, registry: Registry,
                                                               target: FakeTarget) -> None:
    server = serve()
    target.on_stop = lambda force: threading.Thread(target=server.close).start()   # like kvmlite run
    with ControlClient("vm", registry=registry) as client:
        assert client.stop(force=True) == "force"
        assert client.wait_closed(5)
    assert registry.names() == []


def test_client_eof_mid_request_server_unharmed(serve, raw, registry: Registry) -> None:
    server = serve()
    for _ in range(10):
        conn = raw(server.socket_path)
        conn.send(b'{"v":1,"op":"pause"}\n{"v":1,')
        conn.close()
    time.sleep(0.2)
    with ControlClient("vm", registry=registry) as client:
        assert client.info()["name"] == "vm"


def test_server_drops_closed_clients(serve, raw) -> None:
    server = serve()
    conns = [raw(server.socket_path) for _ in range(5)]
    for conn in conns:
        conn.close()
    deadline = time.monotonic() + 3
    while server.client_count() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.client_count() == 0


# --- fuzzing a live server ----------------------------------------------------------

chunks = st.lists(st.binary(max_size=120) | st.sampled_from([
    b"\n", b'{"v":1,"op":"info"}\n', b'{"v":1,"id":1,"op":"pause","args":{"timeout":0.5}}\n',
    b'{"v":1,"op":"resume"}\n', b'{"v":1,"op":"nmi","args":{"vcpu":', b"x" * 600]), max_size=8)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stream=chunks)
def test_server_fuzz_any_byte_stream_valid_replies_and_server_lives(serve, raw, registry: Registry,
                                                                   stream: list[bytes]) -> None:
    if not registry.names():                           # one server for every example
        serve(limits=Limits(max_request=512))
    conn = raw(registry.socket_path("vm"))
    try:
        for chunk in stream:
            conn.send(chunk)
        conn.sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass                                           # closed on us after "too-large": allowed
    conn.closed()                                      # read every reply until the server closes
    replies = [p.decode_reply(line) for line in conn.buf.split(b"\n") if line]
    assert len(replies) <= b"".join(stream).count(b"\n") + 1
    with ControlClient("vm", registry=registry, timeout=5) as client:
        assert client.info()["name"] == "vm"
