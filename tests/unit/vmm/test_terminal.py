"""The host console: escape parsing, raw mode on a real pty, output, input."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path
from typing import IO, Callable, Iterator

import pytest

from kvmlite.base.eventloop import EventLoop
from kvmlite.vmm.terminal import (HELP_TEXT, Command, EscapeParser, HostConsole, OutputSink,
                                  RawMode)

REPO = Path(__file__).resolve().parents[3]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    ev = EventLoop("test-io")
    ev.start()
    yield ev
    ev.close()


# --- EscapeParser ---

def test_escape_parser_plain_bytes_pass_through() -> None:
    assert EscapeParser().feed(b"echo hi\r") == [b"echo hi\r"]


def test_escape_parser_ctrl_a_x_quits_keeping_text_order() -> None:
    assert EscapeParser().feed(b"ab\x01xcd") == [b"ab", Command.QUIT, b"cd"]


def test_escape_parser_double_escape_sends_one_literal_ctrl_a() -> None:
    assert EscapeParser().feed(b"a\x01\x01b") == [b"a\x01b"]


def test_escape_parser_help_and_break_commands() -> None:
    assert EscapeParser().feed(b"\x01h\x01bs") == [Command.HELP, Command.BREAK, b"s"]


def test_escape_parser_escape_split_across_reads_is_recognised() -> None:
    parser = EscapeParser()

    first = parser.feed(b"ab\x01")
    second = parser.feed(b"x")

    assert (first, second) == ([b"ab"], [Command.QUIT])


def test_escape_parser_double_escape_split_across_reads() -> None:
    parser = EscapeParser()

    assert parser.feed(b"\x01") == []
    assert parser.feed(b"\x01") == [b"\x01"]


def test_escape_parser_unknown_key_after_escape_is_dropped() -> None:
    assert EscapeParser().feed(b"\x01zq") == [b"q"]


def test_escape_parser_other_escape_key() -> None:
    parser = EscapeParser(escape=0x1D)            # Ctrl-]

    assert parser.feed(b"\x01\x1dx") == [b"\x01", Command.QUIT]


# --- RawMode on a pty ---

def test_raw_mode_turns_off_echo_canonical_and_signals_and_restores(pty: tuple[int, int]) -> None:
    _master, slave = pty
    before = termios.tcgetattr(slave)

    with RawMode(slave) as raw:
        during = termios.tcgetattr(slave)
        active = raw.active

    lflag, oflag, cc = during[3], during[1], during[6]
    assert active
    assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
    assert oflag & termios.OPOST                  # guest "\n" still starts a line
    assert cc[termios.VMIN] == 1
    assert termios.tcgetattr(slave) == before


def test_raw_mode_on_a_pipe_does_nothing() -> None:
    r, w = os.pipe()
    try:
        with RawMode(r) as raw:
            assert raw.active is False
    finally:
        os.close(r)
        os.close(w)


def test_raw_mode_restore_twice_is_harmless(pty: tuple[int, int]) -> None:
    _master, slave = pty
    before = termios.tcgetattr(slave)
    raw = RawMode(slave)
    raw.enter()

    raw.restore()
    raw.restore()

    assert termios.tcgetattr(slave) == before


def test_raw_mode_sigterm_restores_then_calls_previous_handler(pty: tuple[int, int]) -> None:
    _master, slave = pty
    before = termios.tcgetattr(slave)
    seen: list[tuple[int, list]] = []

    def previous(signum: int, frame: object) -> None:
        seen.append((signum, termios.tcgetattr(slave)))

    old = signal.signal(signal.SIGTERM, previous)
    try:
        raw = RawMode(slave)
        raw.enter()
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_for(lambda: bool(seen))
        handler_after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, old)

    assert seen == [(signal.SIGTERM, before)]     # restored before the old handler ran
    assert handler_after == previous


CHILD = textwrap.dedent("""
    import sys, time
    from kvmlite.vmm.terminal import RawMode
    RawMode(0).enter()
    print("raw", flush=True)
    if sys.argv[1] == "wait":
        time.sleep(30)
""")


def default_signals() -> None:
    """The child starts with default SIGHUP/SIGTERM handling whatever this
    test run inherited (under nohup SIGHUP is ignored, and stays ignored
    across exec)."""
    for signum in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def run_child(slave: int, mode: str) -> tuple["subprocess.Popen[bytes]", IO[bytes]]:
    """A Python process with the pty as stdin, and its stdout."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdin=slave,
                             stdout=subprocess.PIPE, env=env, cwd=REPO, preexec_fn=default_signals)
    assert child.stdout is not None
    return child, child.stdout


def test_raw_mode_is_undone_at_exit_without_restore(pty: tuple[int, int]) -> None:
    _master, slave = pty
    before = termios.tcgetattr(slave)

    child, stdout = run_child(slave, "exit")
    line = stdout.readline()
    child.wait(timeout=30)
    stdout.close()

    assert line == b"raw\n" and child.returncode == 0
    assert termios.tcgetattr(slave) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_raw_mode_is_undone_when_killed_by_signal(pty: tuple[int, int], signum: int) -> None:
    _master, slave = pty
    before = termios.tcgetattr(slave)
    child, stdout = run_child(slave, "wait")
    assert stdout.readline() == b"raw\n"
    during = termios.tcgetattr(slave)

    child.send_signal(signum)
    child.wait(timeout=30)
    stdout.close()

    assert during != before
    assert child.returncode == -signum            # still dies of the signal
    assert termios.tcgetattr(slave) == before


# --- OutputSink ---

def test_output_sink_writes_bytes_unbuffered() -> None:
    r, w = os.pipe()
    sink = OutputSink(w)

    sink(b"hello ")
    sink(b"world")

    assert os.read(r, 100) == b"hello world"
    os.close(r)
    os.close(w)


def test_output_sink_survives_epipe_and_counts_drops() -> None:
    r, w = os.pipe()
    os.close(r)
    sink = OutputSink(w)

    sink(b"nobody reads this")
    sink(b"nor this")

    assert sink.closed
    assert sink.dropped == len(b"nobody reads this") + len(b"nor this")
    os.close(w)


def test_output_sink_full_nonblocking_pipe_drops_after_stall_timeout() -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    sink = OutputSink(w, stall_timeout=0.05)
    payload = b"x" * (4 << 20)                    # far more than a pipe holds

    started = time.monotonic()
    sink(payload)
    elapsed = time.monotonic() - started

    assert 0 < sink.dropped < len(payload)
    assert not sink.closed
    assert elapsed < 5
    os.close(r)
    os.close(w)


def test_output_sink_waits_for_a_slow_reader_without_losing_bytes() -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    sink = OutputSink(w, stall_timeout=5)
    payload = bytes(range(256)) * 4096            # 1 MiB
    received = bytearray()

    def reader() -> None:
        while len(received) < len(payload):
            time.sleep(0.001)
            received.extend(os.read(r, 65536))

    thread = threading.Thread(target=reader)
    thread.start()
    sink(payload)
    thread.join(timeout=30)

    assert sink.dropped == 0
    assert bytes(received) == payload
    os.close(r)
    os.close(w)


# --- HostConsole ---

class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []
        self.output = bytearray()

    def write_input(self, data: bytes) -> None:
        self.events.append(data)

    def quit(self) -> None:
        self.events.append("quit")

    def brk(self) -> None:
        self.events.append("break")

    def console(self, loop: EventLoop, fd: int) -> HostConsole:
        return HostConsole(loop, self.write_input, on_quit=self.quit, send_break=self.brk,
                           input_fd=fd, output=self.output.extend)


def test_host_console_pipe_input_reaches_guest_and_eof_does_not_quit(loop: EventLoop) -> None:
    rec = Recorder()
    r, w = os.pipe()
    console = rec.console(loop, r)

    with console:
        os.write(w, b"uname -a\n")
        assert wait_for(lambda: rec.events == [b"uname -a\n"])
        os.close(w)
        assert wait_for(lambda: not console.reading)

    assert rec.events == [b"uname -a\n"]
    os.close(r)


def test_host_console_tty_input_is_raw_and_ctrl_a_x_quits(loop: EventLoop, pty: tuple[int, int]) -> None:
    master, slave = pty
    before = termios.tcgetattr(slave)
    rec = Recorder()

    with rec.console(loop, slave):
        os.write(master, b"ab\x01")               # no newline: only raw mode delivers it
        assert wait_for(lambda: rec.events == [b"ab"])
        os.write(master, b"x")
        assert wait_for(lambda: rec.events == [b"ab", "quit"])

    assert termios.tcgetattr(slave) == before


def test_host_console_break_comes_before_the_sysrq_key(loop: EventLoop) -> None:
    rec = Recorder()
    r, w = os.pipe()

    with rec.console(loop, r):
        os.write(w, b"\x01bh")
        assert wait_for(lambda: len(rec.events) == 2)

    assert rec.events == ["break", b"h"]
    os.close(r)
    os.close(w)


def test_host_console_help_goes_to_output_not_guest(loop: EventLoop) -> None:
    rec = Recorder()
    r, w = os.pipe()

    with rec.console(loop, r):
        os.write(w, b"\x01h")
        assert wait_for(lambda: bytes(rec.output) == HELP_TEXT.encode())

    assert rec.events == []
    os.close(r)
    os.close(w)


def test_host_console_devnull_input_ends_quietly(loop: EventLoop) -> None:
    rec = Recorder()
    fd = os.open(os.devnull, os.O_RDONLY)

    with rec.console(loop, fd) as console:
        assert wait_for(lambda: not console.reading)

    assert rec.events == []
    os.close(fd)


def test_host_console_regular_file_input_is_delivered(loop: EventLoop, tmp_path: Path) -> None:
    script = tmp_path / "input.txt"
    script.write_bytes(b"poweroff\n")
    rec = Recorder()
    fd = os.open(script, os.O_RDONLY)

    with rec.console(loop, fd) as console:
        assert wait_for(lambda: b"".join(e for e in rec.events if isinstance(e, bytes)) == b"poweroff\n")
        assert wait_for(lambda: not console.reading)

    os.close(fd)


def test_host_console_without_break_support_ignores_ctrl_a_b(loop: EventLoop) -> None:
    events: list[bytes] = []
    r, w = os.pipe()
    console = HostConsole(loop, events.append, on_quit=lambda: None, input_fd=r,
                          output=lambda data: None)

    with console:
        os.write(w, b"\x01bk")
        assert wait_for(lambda: events == [b"k"])

    os.close(r)
    os.close(w)


def test_host_console_leaves_input_fd_blocking_flags_alone(loop: EventLoop, pty: tuple[int, int]) -> None:
    _master, slave = pty
    flags = fcntl.fcntl(slave, fcntl.F_GETFL)

    with Recorder().console(loop, slave):
        during = fcntl.fcntl(slave, fcntl.F_GETFL)

    assert during == flags                        # O_NONBLOCK would leak to the shell
