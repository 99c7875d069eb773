"""The host side of an interactive guest console.

Three parts, usable apart:

* :class:`EscapeParser` — a pure state machine over the input bytes that
  picks out QEMU-style escape commands (Ctrl-A x quits, Ctrl-A h prints help,
  Ctrl-A b sends a break, Ctrl-A Ctrl-A sends one Ctrl-A; any other key
  after Ctrl-A is dropped along with it).
* :class:`RawMode` — puts a terminal in raw mode and always puts it back:
  on leaving the ``with`` block, at interpreter exit (atexit), and on
  SIGTERM/SIGHUP (restore, then hand the signal on as it was handled before).
* :class:`OutputSink` — writes guest output to a file descriptor unbuffered,
  riding out EAGAIN and EPIPE.

:class:`HostConsole` puts them together around an :class:`EventLoop`:

    output = OutputSink(sys.stdout.fileno())
    serial = Serial(irq, sink=output)
    console = HostConsole(loop, serial.enqueue_input, on_quit=vm.request_stop,
                          send_break=serial.send_break, output=output)
    with console:             # raw mode, stdin registered with the loop
        vm.run()

Threads: input is read and parsed on the event loop's thread, and
``write_input``, ``on_quit`` and ``send_break`` are called there.
:class:`OutputSink` may be called from any thread (it has its own lock).
Signal handlers are installed only when :class:`RawMode` is entered on the
main thread (Python allows no other).
"""

from __future__ import annotations

import atexit
import enum
import errno
import functools
import logging
import os
import select
import signal
import stat
import termios
import threading
from types import FrameType
from typing import Any, Callable, Union

from kvmlite.base.eventloop import EventLoop

log = logging.getLogger(__name__)

CTRL_A = 0x01
READ_CHUNK = 4096
RESTORE_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

HELP_TEXT = (
    "\r\n"
    "C-a h    print this help\r\n"
    "C-a x    exit kvmlite\r\n"
    "C-a b    send a break (on a serial console, Linux then takes the next key as sysrq)\r\n"
    "C-a C-a  send C-a\r\n"
)


# --- escape sequences ---

class Command(enum.Enum):
    QUIT = "quit"
    HELP = "help"
    BREAK = "break"


Action = Union[bytes, Command]

_COMMAND_KEYS = {ord("x"): Command.QUIT, ord("h"): Command.HELP, ord("b"): Command.BREAK}


class EscapeParser:
    """Splits terminal input into bytes for the guest and escape commands,
    in order.  State carries across :meth:`feed` calls, so an escape split
    between two reads is still recognised."""

    def __init__(self, escape: int = CTRL_A) -> None:
        self.escape = escape
        self._armed = False          # the last byte seen was the escape key

    def feed(self, data: bytes) -> list[Action]:
        actions: list[Action] = []
        text = bytearray()
        for byte in data:
            if not self._armed and byte == self.escape:
                self._armed = True
            elif not self._armed:
                text.append(byte)
            else:
                self._armed = False
                command = self._command(byte, text)
                if command is not None:
                    _flush(actions, text)
                    actions.append(command)
        _flush(actions, text)
        return actions

    def _command(self, byte: int, text: bytearray) -> Command | None:
        if byte == self.escape:
            text.append(byte)        # escape twice: the key itself
            return None
        return _COMMAND_KEYS.get(byte)   # unknown keys are dropped, as QEMU does


def _flush(actions: list[Action], text: bytearray) -> None:
    if text:
        actions.append(bytes(text))
        text.clear()


# --- raw mode ---

TermAttrs = list[Any]          # termios.tcgetattr(): iflag, oflag, cflag, lflag, speeds, cc
SignalHandler = Union[Callable[[int, Union[FrameType, None]], object], int, signal.Handlers, None]


class RawMode:
    """Raw mode on a terminal for the life of a ``with`` block.

    Like cfmakeraw(3) — no echo, no line editing, no signals from Ctrl-C or
    Ctrl-Z, 8-bit input — except that output post-processing (OPOST/ONLCR)
    stays on, as QEMU keeps it: a guest writing a bare "\\n" still starts a
    new line.  A fd that is not a terminal is left alone.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: TermAttrs | None = None      # set while raw mode is on
        self._original: TermAttrs | None = None   # kept for the signal handler
        self._previous: dict[int, SignalHandler] = {}
        # Re-entrant: a signal handler runs on the main thread, possibly in
        # the middle of the main thread's own restore().
        self._lock = threading.RLock()

    @property
    def active(self) -> bool:
        return self._saved is not None

    def __enter__(self) -> "RawMode":
        self.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def enter(self) -> None:
        if self._saved is not None or not os.isatty(self.fd):
            return
        saved = termios.tcgetattr(self.fd)
        termios.tcsetattr(self.fd, termios.TCSANOW, _raw_attributes(saved))
        self._saved = self._original = saved
        atexit.register(self.restore)
        self._install_signal_handlers()

    def restore(self) -> None:
        """Put the terminal back as it was; safe to call more than once."""
        with self._lock:
            saved, self._saved = self._saved, None
        if saved is None:
            return
        self._set_attributes(saved)
        atexit.unregister(self.restore)
        self._uninstall_signal_handlers()

    def _set_attributes(self, attrs: TermAttrs) -> None:
        try:
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        except (termios.error, OSError) as err:   # the terminal may be gone (SIGHUP)
            log.debug("could not restore terminal attributes: %s", err)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.debug("raw mode entered off the main thread: no signal handlers")
            return
        for signum in RESTORE_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _uninstall_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.restore()
        if self._original is not None:
            # Again, in case the signal came in the middle of a restore()
            # that had taken the saved attributes but not yet set them.
            self._set_attributes(self._original)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            # The default action (terminate): die of the same signal, with
            # the terminal already restored.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def _raw_attributes(attrs: TermAttrs) -> TermAttrs:
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
               | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


# --- output ---

class OutputSink:
    """Writes guest output to ``fd`` as it comes, without Python's buffering.

    A non-blocking fd that is full is waited on for up to ``stall_timeout``
    seconds; what still does not fit is dropped and counted, so a stuck
    terminal cannot hang a vCPU forever.  Once the reader is gone (EPIPE,
    EIO, EBADF) all further output is dropped and counted.
    """

    def __init__(self, fd: int, stall_timeout: float = 1.0) -> None:
        self.fd = fd
        self.stall_timeout = stall_timeout
        self.dropped = 0
        self.closed = False
        self._lock = threading.Lock()

    def __call__(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view and not self.closed:
                written = self._write_some(view)
                if written is None:
                    break
                view = view[written:]
            self.dropped += len(view)

    def _write_some(self, view: memoryview) -> int | None:
        """Bytes written, or None when the rest must be dropped."""
        try:
            return os.write(self.fd, view)
        except BlockingIOError:
            return 0 if self._wait_writable() else None
        except InterruptedError:
            return 0
        except OSError as err:
            if err.errno in (errno.EPIPE, errno.EIO, errno.EBADF, errno.ENXIO):
                log.debug("console output closed: %s", err)
                self.closed = True
                return None
            raise

    def _wait_writable(self) -> bool:
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        events = poller.poll(int(self.stall_timeout * 1000))
        return any(mask & select.POLLOUT for _fd, mask in events)


# --- the console ---

class HostConsole:
    """Host terminal input and output for one guest console."""

    def __init__(self, loop: EventLoop, write_input: Callable[[bytes], object], *,
                 on_quit: Callable[[], None], send_break: Callable[[], None] | None = None,
                 input_fd: int = 0, output: Callable[[bytes], object] | None = None,
                 escape: int = CTRL_A) -> None:
        """``output`` shows the help text; by default an :class:`OutputSink`
        on fd 1.  ``send_break`` is None for consoles without a break
        (virtio-console): C-a b then does nothing."""
        self._loop = loop
        self._write_input = write_input
        self._on_quit = on_quit
        self._send_break = send_break
        self._input_fd = input_fd
        self._parser = EscapeParser(escape)
        self._raw = RawMode(input_fd)
        self._reading = False
        self.output = output if output is not None else OutputSink(1)

    def __enter__(self) -> "HostConsole":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Raw mode if the input is a terminal, and start reading it."""
        self._raw.enter()
        self._reading = True
        try:
            self._loop.add_reader(self._input_fd, self._on_readable)
        except PermissionError:
            # epoll refuses regular files and /dev/null: they are always
            # readable, so a thread reads them to EOF instead.
            self._loop.remove_reader(self._input_fd)
            self._start_pump()

    def close(self) -> None:
        self._stop_reading()
        self._raw.restore()

    @property
    def reading(self) -> bool:
        """False once input reached EOF (or the console was closed)."""
        return self._reading

    # --- input (event loop thread) ---

    def _on_readable(self) -> None:
        try:
            data = os.read(self._input_fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:                 # EIO: the terminal hung up
            log.debug("console input closed: %s", err)
            data = b""
        if not data:
            self._stop_reading()               # EOF ends input, not the VM
            return
        self.handle_input(data)

    def handle_input(self, data: bytes) -> None:
        """Parse ``data`` and act on it (called on the loop thread)."""
        for action in self._parser.feed(data):
            if isinstance(action, bytes):
                self._write_input(action)
            elif action is Command.QUIT:
                self._on_quit()
            elif action is Command.HELP:
                self.output(HELP_TEXT.encode())
            elif self._send_break is not None:
                self._send_break()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._input_fd)

    def _start_pump(self) -> None:
        mode = os.fstat(self._input_fd).st_mode
        log.debug("console input is not pollable (mode %o): reading it on a thread", stat.S_IFMT(mode))
        threading.Thread(target=self._pump, name="console-input", daemon=True).start()

    def _pump(self) -> None:
        while self._reading:
            try:
                data = os.read(self._input_fd, READ_CHUNK)
            except OSError:
                data = b""
            if not data:
                self._reading = False
                return
            self._loop.call_soon(functools.partial(self.handle_input, data))
