"""Errors the user sees.

Every failure that reaches the command line is a :class:`KvmliteError` whose
message is one line; the CLI prints ``kvmlite: error: <message>`` and exits
with :attr:`KvmliteError.exit_code` (2 for usage, 1 for everything else).
"""

from __future__ import annotations


class KvmliteError(Exception):
    """A failure with a one-line, user-facing message."""

    exit_code = 1


class UsageError(KvmliteError):
    """Bad command-line input: wrong option, bad value, missing argument."""

    exit_code = 2


class ConfigError(UsageError):
    """A VM configuration that cannot be built (bad sizes, counts, paths)."""


class GuestError(KvmliteError):
    """The guest did something the VMM cannot continue from."""
