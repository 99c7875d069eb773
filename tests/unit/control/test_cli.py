"""The control commands end to end against fake VMs on real sockets:
what they print, their exit statuses, their one-line errors."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from kvmlite.cli.main import main
from kvmlite.control.registry import Registry

from .fakes import FakeTarget


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:            # argparse's own errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmlite"), err
    return lines[0]


def test_list_no_vms_header_only_and_empty_json(capsys, runtime) -> None:
    assert cli(capsys, "list")[1].split() == ["NAME", "PID", "STATE", "VCPUS", "MEMORY", "UPTIME"]
    assert json.loads(cli(capsys, "list", "--json")[1]) == []


def test_list_two_vms_rows_and_json(capsys, serve) -> None:
    serve("alpha")
    serve("beta", target_=FakeTarget())
    status, out, _ = cli(capsys, "list")
    rows = [line.split() for line in out.splitlines()[1:]]
    assert status == 0 and [r[0] for r in rows] == ["alpha", "beta"]
    assert rows[0][2:] == ["running", "2", "64M", "1s"]
    listed = json.loads(cli(capsys, "list", "--json")[1])
    assert [(v["name"], v["state"], v["vcpus"], v["memory_mib"]) for v in listed] == \
        [("alpha", "running", 2, 64), ("beta", "running", 2, 64)]


def test_list_removes_stale_socket(capsys, registry: Registry, serve) -> None:
    serve("live")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(registry.socket_path("dead")))
    dead.close()                                     # what a SIGKILLed VMM leaves
    _, out, _ = cli(capsys, "list")
    assert "live" in out and "dead" not in out
    assert not registry.socket_path("dead").exists()


def test_pause_resume_by_name(capsys, serve, target: FakeTarget) -> None:
    serve("web")
    assert cli(capsys, "pause", "--name", "web")[:2] == (0, "web: paused\n")
    assert cli(capsys, "resume", "-n", "web")[:2] == (0, "web: running\n")
    assert target.calls == [("pause", 5.0), ("resume",)]


def test_pause_all_each_vm(capsys, serve) -> None:
    a, b = FakeTarget(), FakeTarget()
    serve("a", target_=a)
    serve("b", target_=b)
    status, out, _ = cli(capsys, "pause", "--all")
    assert status == 0 and out.splitlines() == ["a: paused", "b: paused"]
    assert a.paused and b.paused


@pytest.mark.parametrize("argv, needle", [
    (["pause"], "give --name NAME or --all"),
    (["pause", "-n", "x", "--all"], "not both"),
    (["debug"], "give --name NAME"),
    (["stop", "-n", "../x"], "--name '../x'"),
    (["pause", "-n", "x", "--timeout", "0"], "not a number of seconds"),
    (["debug", "-n", "x", "--sysrq", "ab"], "one printable character"),
    (["debug", "-n", "x", "--nmi", "-1"], "not a vCPU number"),
])
def test_usage_errors_exit_2_one_line(capsys, runtime, argv: list[str], needle: str) -> None:
    status, _, err = cli(capsys, *argv)
    assert status == 2 and needle in one_line_error(err)


def test_unknown_name_exit_1_one_line(capsys, runtime) -> None:
    status, _, err = cli(capsys, "stat", "--name", "ghost")
    assert status == 1 and "no VM named 'ghost' is running" in one_line_error(err)


def test_stop_force_waits_until_vm_gone(capsys, serve, registry: Registry, target: FakeTarget) -> None:
    server = serve("web")
    target.on_stop = lambda force: threading.Timer(0.2, server.close).start()
    status, out, _ = cli(capsys, "stop", "-n", "web", "--force")
    assert status == 0 and out.splitlines() == ["web: stopping (force)", "web: stopped"]
    assert target.calls == [("stop", 30.0, True)] and registry.names() == []


def test_stop_no_wait_returns_after_request(capsys, serve, target: FakeTarget) -> None:
    serve("web")
    status, out, _ = cli(capsys, "stop", "-n", "web", "--timeout", "7", "--no-wait")
    assert status == 0 and out == "web: stopping (ctrl-alt-del)\n"
    assert target.calls == [("stop", 7.0, False)]


def test_debug_dump_nmi_sysrq(capsys, serve, target: FakeTarget) -> None:
    serve("web")
    status, out, _ = cli(capsys, "debug", "-n", "web", "--dump", "--nmi", "--sysrq", "h")
    assert status == 0
    assert "rip    0000000000001000" in out and "code at rip (linear 0x1000): f4 eb fd" in out
    assert "web: NMI sent to vCPU 0, 1" in out and "web: sysrq h sent" in out
    assert target.calls == [("registers",), ("nmi", None), ("sysrq", "h")]


def test_debug_json_parses(capsys, serve) -> None:
    serve("web")
    vcpus = json.loads(cli(capsys, "debug", "-n", "web", "--json")[1])
    assert vcpus[0]["regs"]["rip"] == 0x1000


def test_stat_text_and_json(capsys, serve) -> None:
    serve("web")
    status, out, _ = cli(capsys, "stat", "-n", "web")
    assert status == 0 and "vCPU 0 (running): 3 exits: IoOut 3" in out
    assert "pio  com1" in out and "VMM RSS 1.0 MiB" in out
    assert json.loads(cli(capsys, "stat", "-n", "web", "--json")[1])["rss_bytes"] == 1 << 20


def test_stat_all_json_keyed_by_name(capsys, serve) -> None:
    serve("a")
    serve("b", target_=FakeTarget())
    assert sorted(json.loads(cli(capsys, "stat", "--all", "--json")[1])) == ["a", "b"]
