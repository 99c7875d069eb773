"""Exceptions of the sandbox agent, its protocol and its client.

Every failure the client raises is a :class:`SandboxError`:

* :class:`AgentConnectionError` (also a :class:`ConnectionError`): the stream
  to the agent could not be opened, broke, reached EOF early, or carried no
  frame for the client's idle timeout.  Nothing waits past that.
* :class:`ProtocolError`: a peer broke the wire protocol (bad frame, bad
  message); :class:`VersionMismatchError` when the two ends speak different
  protocol versions.
* :class:`AgentError`: the agent refused or failed a request and said why in
  an error frame (``name``, ``errno``, ``message``).  An error that carries an
  errno is an :class:`AgentOSError`, which is also an :class:`OSError`; the
  common ones are also the matching built-in exception, so ``except
  FileNotFoundError`` works on a missing file in the sandbox.
* :class:`CommandExitError`: a command exited non-zero or died of a signal;
  :class:`CommandTimeoutError` (also a :class:`TimeoutError`): the agent
  killed it at its timeout.  Both carry the :class:`CommandResult`.

Standard library only: the agent runs in the guest (docs/agent.md).
"""

from __future__ import annotations

import errno as errno_codes
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .results import CommandResult


class SandboxError(Exception):
    """Base of every error of the agent, its protocol and its client."""


class AgentConnectionError(SandboxError, ConnectionError):
    """The stream to the agent failed: refused, broken, closed early or idle too long."""


class ProtocolError(SandboxError):
    """A frame or message that breaks the protocol; ``name`` is the wire error name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class VersionMismatchError(ProtocolError):
    """The agent does not speak the client's protocol version (or the reverse)."""


class AgentError(SandboxError):
    """The agent answered a request with an error frame.

    ``name`` is the wire error name (an errno name such as ``ENOENT`` or a
    protocol name such as ``bad-args``), ``errno`` the errno number or None,
    ``message`` the agent's text, ``path`` the path concerned or None.
    """

    def __init__(self, message: str, *, name: str = "error", errno: int | None = None,
                 path: str | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.path = path
        self.errno = errno


class AgentOSError(AgentError, OSError):
    """An error frame that carries an errno (OSError's ``errno``, ``strerror``
    and ``filename`` are set, so ``str()`` reads as a local OSError's)."""

    def __init__(self, message: str, *, name: str = "error", errno: int | None = None,
                 path: str | None = None) -> None:
        super().__init__(message, name=name, errno=errno, path=path)
        self.strerror = message
        if path is not None:
            self.filename = path


class SandboxFileNotFoundError(AgentOSError, FileNotFoundError):
    """ENOENT in the sandbox."""


class SandboxFileExistsError(AgentOSError, FileExistsError):
    """EEXIST in the sandbox."""


class SandboxIsADirectoryError(AgentOSError, IsADirectoryError):
    """EISDIR in the sandbox."""


class SandboxNotADirectoryError(AgentOSError, NotADirectoryError):
    """ENOTDIR in the sandbox."""


class SandboxPermissionError(AgentOSError, PermissionError):
    """EACCES or EPERM in the sandbox."""


class SandboxBrokenPipeError(AgentOSError, BrokenPipeError):
    """EPIPE: the command's stdin is closed."""


class ProcessNotFoundError(AgentOSError, ProcessLookupError):
    """ESRCH: the agent has no such process (never started, or gone)."""


ERRNO_CLASSES: dict[int, type[AgentOSError]] = {
    errno_codes.ENOENT: SandboxFileNotFoundError,
    errno_codes.EEXIST: SandboxFileExistsError,
    errno_codes.EISDIR: SandboxIsADirectoryError,
    errno_codes.ENOTDIR: SandboxNotADirectoryError,
    errno_codes.EACCES: SandboxPermissionError,
    errno_codes.EPERM: SandboxPermissionError,
    errno_codes.EPIPE: SandboxBrokenPipeError,
    errno_codes.ESRCH: ProcessNotFoundError,
}


def error_from_wire(msg: dict[str, Any]) -> SandboxError:
    """The exception an error message (``{"type": "error", ...}``) stands for."""
    name = str(msg.get("name") or "error")
    message = str(msg.get("message") or name)
    number = msg.get("errno")
    path = msg.get("path") if isinstance(msg.get("path"), str) else None
    if name == "version-mismatch":
        return VersionMismatchError(name, message)
    if isinstance(number, int) and not isinstance(number, bool):
        cls = ERRNO_CLASSES.get(number, AgentOSError)
        return cls(message, name=name, errno=number, path=path)
    return AgentError(message, name=name, path=path)


class CommandExitError(SandboxError):
    """A command finished with a non-zero exit code (or a signal).

    Mirrors E2B's ``CommandExitException``: ``stdout``, ``stderr``,
    ``exit_code`` and ``error`` are those of :attr:`result`.
    """

    def __init__(self, result: CommandResult) -> None:
        super().__init__(_exit_summary(result))
        self.result = result

    @property
    def stdout(self) -> str:
        return self.result.stdout

    @property
    def stderr(self) -> str:
        return self.result.stderr

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    @property
    def error(self) -> str | None:
        return self.result.error

    @property
    def signal(self) -> int | None:
        return self.result.signal


class CommandTimeoutError(CommandExitError, TimeoutError):
    """The agent killed the command's process group at its timeout."""


def _exit_summary(result: CommandResult) -> str:
    """One line: how the command ended and the end of its stderr."""
    what = result.error or f"exited with code {result.exit_code}"
    tail = result.stderr.strip().splitlines()[-1:] if result.stderr else []
    return f"command {what}" + (f": {tail[0][:200]}" if tail else "")
