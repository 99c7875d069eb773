"""A command's output on the client side, and the handle of a background command.

Output arrives as STDOUT and STDERR frames.  :class:`CommandOutput` keeps
the first ``max_output`` bytes of each stream (the rest is counted, not
kept) and hands every chunk, decoded as UTF-8 with invalid bytes replaced
and multi-byte characters never split, to the callbacks.

A foreground command is read in the caller's thread (callbacks run there).
A :class:`CommandHandle` reads its stream in a thread of its own from the
start, so a background command never stalls on output nobody reads yet;
its callbacks run in that thread.
"""

from __future__ import annotations

import codecs
import threading
from typing import TYPE_CHECKING, Any, Callable

from .channel import Channel
from .errors import (AgentConnectionError, CommandExitError, CommandTimeoutError,
                     ProtocolError)
from .protocol import EXIT, UNEXPECTED, FrameType
from .results import CommandResult

if TYPE_CHECKING:
    from .client import AgentClient

OutputCallback = Callable[[str], object]


class OutputBuffer:
    """One output stream: the first ``cap`` bytes kept, all of it decoded for callbacks."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.size = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)

    def feed(self, chunk: bytes) -> str:
        """Keep what fits under the cap; return the chunk's text."""
        self.size += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        return self._decoder.decode(chunk)

    def flush(self) -> str:
        """The text of an incomplete character at the end (U+FFFD), if any."""
        return self._decoder.decode(b"", final=True)

    def text_so_far(self) -> str:
        """The kept output as callbacks have seen it (for a late callback)."""
        held = len(self._decoder.getstate()[0])
        end = len(self.data) if self.truncated else len(self.data) - held
        return self.data[:end].decode("utf-8", "replace")


class CommandOutput:
    """Both output streams of one command, and the callbacks that follow them.

    Callbacks are called under a reentrant lock, in order, so one added
    late (``add_callbacks``) first gets the kept output and then every new
    chunk, none twice.
    """

    def __init__(self, max_output: int, on_stdout: OutputCallback | None = None,
                 on_stderr: OutputCallback | None = None) -> None:
        self.buffers = {FrameType.STDOUT: OutputBuffer(max_output),
                        FrameType.STDERR: OutputBuffer(max_output)}
        self._callbacks: dict[FrameType, list[OutputCallback]] = {
            FrameType.STDOUT: [], FrameType.STDERR: []}
        self._lock = threading.RLock()
        self.add_callbacks(on_stdout, on_stderr)

    def feed(self, ftype: FrameType, chunk: bytes) -> None:
        with self._lock:
            self._emit(ftype, self.buffers[ftype].feed(chunk))

    def flush(self) -> None:
        with self._lock:
            for ftype, buf in self.buffers.items():
                self._emit(ftype, buf.flush())

    def add_callbacks(self, on_stdout: OutputCallback | None,
                      on_stderr: OutputCallback | None) -> None:
        with self._lock:
            for ftype, callback in ((FrameType.STDOUT, on_stdout),
                                    (FrameType.STDERR, on_stderr)):
                if callback is not None:
                    text = self.buffers[ftype].text_so_far()
                    if text:
                        callback(text)
                    self._callbacks[ftype].append(callback)

    def text(self, ftype: FrameType) -> str:
        with self._lock:
            return self.buffers[ftype].data.decode("utf-8", "replace")

    def result(self, exit_msg: dict[str, Any]) -> CommandResult:
        """The result of a command that ended with ``exit_msg``."""
        with self._lock:
            out, err = self.buffers[FrameType.STDOUT], self.buffers[FrameType.STDERR]
            return CommandResult(
                exit_code=int(exit_msg["exit_code"]), stdout_bytes=bytes(out.data),
                stderr_bytes=bytes(err.data), error=exit_msg.get("error"),
                signal=exit_msg.get("signal"), pid=exit_msg.get("pid"),
                timed_out=bool(exit_msg.get("timed_out")), stdout_truncated=out.truncated,
                stderr_truncated=err.truncated, stdout_size=out.size, stderr_size=err.size,
                stdout_dropped=int(exit_msg.get("stdout_dropped") or 0),
                stderr_dropped=int(exit_msg.get("stderr_dropped") or 0))

    def _emit(self, ftype: FrameType, text: str) -> None:
        if text:
            for callback in self._callbacks[ftype]:
                callback(text)


def follow(channel: Channel, output: CommandOutput) -> dict[str, Any]:
    """Read a run or attach stream to its ``exit`` message, feeding ``output``."""
    while True:
        frame = channel.frame()
        if frame.type in (FrameType.STDOUT, FrameType.STDERR):
            output.feed(frame.type, frame.payload)
        elif frame.type is FrameType.MSG:
            msg = channel.as_message(frame, EXIT)
            output.flush()
            return msg
        else:
            raise ProtocolError(UNEXPECTED, f"the agent sent a {frame.type.name} frame "
                                            "in a command's output")


def checked(result: CommandResult) -> CommandResult:
    """``result``, or CommandTimeoutError / CommandExitError when it is not a success."""
    if result.timed_out:
        raise CommandTimeoutError(result)
    if result.exit_code != 0:
        raise CommandExitError(result)
    return result


class CommandHandle:
    """A command running in the sandbox (E2B's ``CommandHandle``).

    Made by ``AgentClient.run(background=True)`` and ``AgentClient.connect``.
    Its stream is read in a thread from the start; ``wait()`` blocks until the
    command ends.  ``kill``, ``send_signal``, ``send_stdin`` and
    ``close_stdin`` each open a stream of their own.
    """

    def __init__(self, client: AgentClient, channel: Channel, pid: int,
                 output: CommandOutput) -> None:
        self._client = client
        self._channel = channel
        self._output = output
        self._pid = pid
        self._exit: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"agent-command-{pid}",
                                        daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        """The command's pid in the sandbox (also its process group and session)."""
        return self._pid

    @property
    def exit_code(self) -> int | None:
        """The exit code once the command ended, else None."""
        return None if self._exit is None else int(self._exit["exit_code"])

    @property
    def stdout(self) -> str:
        """The output kept so far."""
        return self._output.text(FrameType.STDOUT)

    @property
    def stderr(self) -> str:
        return self._output.text(FrameType.STDERR)

    def wait(self, on_stdout: OutputCallback | None = None,
             on_stderr: OutputCallback | None = None,
             timeout: float | None = None) -> CommandResult:
        """Wait for the end; raise CommandExitError if it is not a success.

        Callbacks given here first get the output kept so far, then the rest.
        ``timeout`` (seconds) bounds the wait only (TimeoutError; the command
        goes on).  Raises AgentConnectionError if the stream broke.
        """
        self._output.add_callbacks(on_stdout, on_stderr)
        if not self._done.wait(timeout):
            raise TimeoutError(f"command {self._pid} still running after {timeout:g} s")
        if self._error is not None:
            raise self._error
        assert self._exit is not None
        return checked(self._output.result(self._exit))

    def kill(self) -> bool:
        """SIGKILL the command's process group; False if it had exited."""
        return self._client.kill(self._pid)

    def send_signal(self, sig: int) -> bool:
        """Send ``sig`` to the command's process group; False if it had exited."""
        return self._client.send_signal(self._pid, sig)

    def send_stdin(self, data: str | bytes) -> None:
        """Write to the command's stdin (it was started with ``stdin=True``)."""
        self._client.send_stdin(self._pid, data)

    def close_stdin(self) -> None:
        self._client.close_stdin(self._pid)

    def disconnect(self) -> None:
        """Stop following the command; it goes on (``AgentClient.connect`` finds it again)."""
        self._channel.close()
        self._thread.join(5.0)

    def _read(self) -> None:
        try:
            self._exit = follow(self._channel, self._output)
        except BaseException as exc:         # handed to wait()
            self._error = exc if not isinstance(exc, AgentConnectionError) else \
                AgentConnectionError(f"command {self._pid}: {exc}")
        finally:
            self._channel.close()
            self._done.set()
