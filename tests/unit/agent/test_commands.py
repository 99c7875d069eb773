"""Commands through a real agent (threads of this process, Unix socket) running
real subprocesses on this host: output, streaming, stdin, exits, signals,
timeouts, background handles, users, limits."""

from __future__ import annotations

import os
import pwd
import signal
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from kvmlite.agent.client import AgentClient
from kvmlite.agent.errors import (AgentError, CommandExitError, CommandTimeoutError,
                                  ProcessNotFoundError, SandboxFileNotFoundError,
                                  SandboxPermissionError)
from kvmlite.agent.handle import CommandHandle

from tests.procs import gone_or_zombie

from .conftest import AgentProcess, ServedAgent, wait_until


def test_run_shell_string_gives_stdout_stderr_and_zero(client: AgentClient) -> None:
    result = client.run("echo out; echo err >&2")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 0)
    assert result.error is None and result.signal is None and result.pid > 0


def test_run_argv_is_not_parsed_by_a_shell(client: AgentClient) -> None:
    result = client.run(["printf", "%s|", "a b", "$HOME", ";", "*"])
    assert result.stdout == "a b|$HOME|;|*|"


def test_run_env_merges_over_defaults_and_cwd_applies(client: AgentClient,
                                                      workdir: Path) -> None:
    (workdir / "sub").mkdir()
    result = client.run('echo "$FOO|$LANG|$KVMLITE_TEST|$HOME|${PATH:+set}|${USER:+set}"; pwd',
                        envs={"FOO": "bar baz", "LANG": "C"}, cwd=str(workdir / "sub"))
    home = pwd.getpwuid(os.geteuid()).pw_dir
    assert result.stdout == f"bar baz|C|1|{home}|set|set\n{workdir / 'sub'}\n"


def test_run_defaults_to_agent_workdir_and_a_small_environment(client: AgentClient,
                                                               workdir: Path) -> None:
    result = client.run("pwd; env | cut -d= -f1 | sort")
    lines = result.stdout.split()
    assert lines[0] == str(workdir)
    assert set(lines[1:]) - {"PWD", "SHLVL", "_", "OLDPWD"} == \
        {"HOME", "KVMLITE_TEST", "LANG", "LOGNAME", "PATH", "SHELL", "USER"}


def test_relative_cwd_resolves_against_workdir(client: AgentClient, workdir: Path) -> None:
    (workdir / "rel").mkdir()
    assert client.run("pwd", cwd="rel").stdout == f"{workdir / 'rel'}\n"


def test_stdin_small_and_large_reach_the_command(client: AgentClient) -> None:
    assert client.run("cat", stdin="hello\n").stdout == "hello\n"
    data = os.urandom(3 * 1024 * 1024 + 7)
    result = client.run(["sha256sum"], stdin=data)
    import hashlib
    assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()


def test_large_stdin_while_command_writes_a_lot_does_not_deadlock(client: AgentClient) -> None:
    data = bytes(range(256)) * 16384            # 4 MiB in, 4 MiB out, read as written
    result = client.run(["cat"], stdin=data, timeout=30)
    assert result.stdout_bytes == data


def test_no_stdin_is_dev_null(client: AgentClient) -> None:
    assert client.run("wc -c").stdout.strip() == "0"


def test_callbacks_see_each_stream_before_the_command_exits(client: AgentClient,
                                                           workdir: Path) -> None:
    # The command waits for files only the callbacks create: it ends only
    # if each chunk reached its callback while the command still ran.
    seen: list[tuple[str, str]] = []

    def on_out(text: str) -> None:
        seen.append(("out", text))
        (workdir / "go-err").touch()

    def on_err(text: str) -> None:
        seen.append(("err", text))
        (workdir / "go-end").touch()

    script = ("echo first; until [ -e go-err ]; do sleep 0.01; done; "
              "echo second >&2; until [ -e go-end ]; do sleep 0.01; done; echo last")
    result = client.run(script, on_stdout=on_out, on_stderr=on_err, timeout=20)
    assert seen == [("out", "first\n"), ("err", "second\n"), ("out", "last\n")]
    assert result.stdout == "first\nlast\n" and result.stderr == "second\n"


@pytest.mark.parametrize("code", [1, 3, 255])
def test_nonzero_exit_raises_with_the_result(client: AgentClient, code: int) -> None:
    with pytest.raises(CommandExitError) as info:
        client.run(f"echo partial; echo why >&2; exit {code}")
    assert info.value.exit_code == code and info.value.stdout == "partial\n"
    assert info.value.stderr == "why\n" and info.value.result.signal is None
    assert f"code {code}: why" in str(info.value)


def test_signal_death_reports_the_signal(client: AgentClient) -> None:
    with pytest.raises(CommandExitError) as info:
        client.run(["sh", "-c", "kill -TERM $$"])
    result = info.value.result
    assert result.signal == signal.SIGTERM and result.exit_code == 128 + signal.SIGTERM
    assert result.error == "killed by signal 15 (SIGTERM)" and not result.timed_out


def test_timeout_kills_the_whole_process_group(client: AgentClient, workdir: Path) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as info:
        client.run("sleep 60 & echo $! > child; echo up; sleep 60", timeout=0.5)
    assert time.monotonic() - started < 10      # the pipes closed: the child died too
    result = info.value.result
    assert result.timed_out and result.signal == signal.SIGKILL and result.stdout == "up\n"
    assert isinstance(info.value, TimeoutError)
    child = int((workdir / "child").read_text())
    wait_until(lambda: gone_or_zombie(child), timeout=5)


def test_missing_program_and_bad_cwd_are_typed_errors(client: AgentClient) -> None:
    with pytest.raises(SandboxFileNotFoundError) as info:
        client.run(["/no/such/program"])
    assert info.value.path == "/no/such/program"
    with pytest.raises(FileNotFoundError):
        client.run("true", cwd="/no/such/dir")
    assert client.run("/no/such/program; echo $?", timeout=5).stdout.endswith("127\n")


def test_bad_requests_are_refused_without_harm(client: AgentClient) -> None:
    with pytest.raises(AgentError, match="bad environment name"):
        client.run("true", envs={"A=B": "x"})
    with pytest.raises(AgentError, match="non-empty list"):
        client.run([])
    with pytest.raises(AgentError, match="no such user"):
        client.run("true", user="no-such-user-kvmlite")
    assert client.run("echo still").stdout == "still\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_user_switches_uid_gid_and_home(client: AgentClient) -> None:
    nobody = pwd.getpwnam("nobody")
    result = client.run('id -u; id -g; echo "$HOME|$USER"', user="nobody")
    assert result.stdout == f"{nobody.pw_uid}\n{nobody.pw_gid}\n{nobody.pw_dir}|nobody\n"
    assert client.run("id -u", user=nobody.pw_uid).stdout == f"{nobody.pw_uid}\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="needs an agent that is not root")
def test_user_switch_refused_when_not_root(client: AgentClient) -> None:
    with pytest.raises(SandboxPermissionError):
        client.run("true", user="root")


def test_non_utf8_output_decodes_with_replacement(client: AgentClient) -> None:
    chunks: list[str] = []
    result = client.run(["printf", r"ok \377\376 \303\251"], on_stdout=chunks.append)
    assert result.stdout_bytes == b"ok \xff\xfe \xc3\xa9"
    assert result.stdout == "ok \ufffd\ufffd é" == "".join(chunks)


def test_multibyte_character_split_between_chunks_is_not_broken(client: AgentClient) -> None:
    chunks: list[str] = []
    script = r"printf '\342'; sleep 0.2; printf '\202\254\n'"   # € in two writes
    result = client.run(script, on_stdout=chunks.append)
    assert "".join(chunks) == "€\n" == result.stdout and "\ufffd" not in chunks[0]


def test_output_cap_bounds_memory_and_reports_truncation(agent_process: AgentProcess) -> None:
    client = agent_process.client(max_output=1 << 20, idle_timeout=30.0)
    total = 100 * 1024 * 1024
    seen = 0

    def count(text: str) -> None:
        nonlocal seen
        seen += len(text)

    tracemalloc.start()
    try:
        result = client.run(["head", "-c", str(total), "/dev/zero"], on_stdout=count,
                            timeout=120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.stdout_truncated and result.stdout_size == total and seen == total
    assert len(result.stdout_bytes) == 1 << 20 and not result.stderr_truncated
    assert peak < 12 * 1024 * 1024, f"client peak {peak} bytes"
    with open(f"/proc/{agent_process.pid}/status") as f:
        hwm_kib = int(next(line for line in f if line.startswith("VmHWM")).split()[1])
    assert hwm_kib < 64 * 1024, f"agent peak RSS {hwm_kib} KiB"


def test_background_handle_waits_with_late_callbacks(client: AgentClient,
                                                     workdir: Path) -> None:
    handle = client.run("echo one; until [ -e go ]; do sleep 0.01; done; echo two",
                        background=True)
    assert isinstance(handle, CommandHandle) and handle.exit_code is None
    wait_until(lambda: handle.stdout == "one\n")
    (workdir / "go").touch()
    chunks: list[str] = []
    result = handle.wait(on_stdout=chunks.append)
    assert "".join(chunks) == "one\ntwo\n" == result.stdout and handle.exit_code == 0


def test_background_kill_from_a_second_connection(served: ServedAgent) -> None:
    first, second = served.client(idle_timeout=10.0), served.client(idle_timeout=10.0)
    handle = first.run(["sleep", "30"], background=True)
    watcher = second.connect(handle.pid)
    assert [p.pid for p in second.list_processes()] == [handle.pid]
    assert second.kill(handle.pid)
    for h in (handle, watcher):
        with pytest.raises(CommandExitError) as info:
            h.wait(timeout=10)
        assert info.value.signal == signal.SIGKILL
    assert second.kill(handle.pid) is False
    assert second.list_processes() == []
    assert [p.exit_code for p in second.list_processes(include_exited=True)] == [137]


def test_background_survives_disconnect_and_is_found_again(client: AgentClient,
                                                           workdir: Path) -> None:
    handle = client.run("sleep 0.1; echo early; touch said; until [ -e go ]; do sleep 0.01;"
                        " done; echo late", background=True)
    handle.disconnect()
    wait_until(lambda: (workdir / "said").exists())
    again = client.connect(handle.pid)
    (workdir / "go").touch()
    result = again.wait(timeout=10)
    assert result.stdout == "late\n" and result.stdout_dropped == len("early\n")


def test_connect_to_an_exited_background_command_gives_its_end(client: AgentClient) -> None:
    handle = client.run("exit 7", background=True)
    with pytest.raises(CommandExitError):
        handle.wait(timeout=10)
    with pytest.raises(CommandExitError) as info:
        client.connect(handle.pid).wait(timeout=10)
    assert info.value.exit_code == 7


def test_stdin_pipe_kept_open_for_send_stdin(served: ServedAgent) -> None:
    client = served.client(idle_timeout=10.0)
    handle = client.run("read a; echo got $a; cat", background=True, stdin=True)
    handle.send_stdin("first\n")
    wait_until(lambda: handle.stdout == "got first\n")
    served.client().send_stdin(handle.pid, b"more")     # from another client too
    handle.close_stdin()
    assert handle.wait(timeout=10).stdout == "got first\nmore"


def test_send_stdin_to_a_command_without_a_pipe_fails(client: AgentClient) -> None:
    handle = client.run(["sleep", "30"], background=True)
    try:
        with pytest.raises(BrokenPipeError):
            handle.send_stdin("x")
    finally:
        handle.kill()
    with pytest.raises(ProcessNotFoundError):
        client.send_stdin(999999999, "x")


def test_signal_to_the_group_reaches_children(client: AgentClient) -> None:
    handle = client.run("trap 'echo got-usr1; exit 0' USR1; echo ready; "
                        "while :; do sleep 0.01; done", background=True)
    wait_until(lambda: handle.stdout == "ready\n")
    assert handle.send_signal(signal.SIGUSR1)
    assert handle.wait(timeout=10).stdout == "ready\ngot-usr1\n"


def test_foreground_command_dies_with_its_client(served: ServedAgent, workdir: Path) -> None:
    client = served.client(idle_timeout=10.0)
    errors: list[BaseException] = []

    def stop_reading(text: str) -> None:
        raise RuntimeError("the caller gives up")

    def run() -> None:
        try:
            client.run("echo $$ > pid; echo x; sleep 60", on_stdout=stop_reading)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert errors and not thread.is_alive()
    pid = int((workdir / "pid").read_text())
    wait_until(lambda: gone_or_zombie(pid), timeout=5)
    wait_until(lambda: client.list_processes() == [], timeout=5)


def test_output_of_a_daemonised_child_does_not_hold_the_command(client: AgentClient,
                                                                workdir: Path) -> None:
    started = time.monotonic()
    result = client.run("(sleep 30; echo never) & echo $! > child; echo done")
    assert result.stdout == "done\n" and time.monotonic() - started < 10
    os.kill(int((workdir / "child").read_text()), signal.SIGKILL)
