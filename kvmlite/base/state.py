"""Saved state of a VM part, for snapshots (docs/snapshot.md).

Every part of a VM that a snapshot covers — a vCPU, the in-kernel irqchip,
each device model — turns its state into a *state dict* and back:

    def save_state(self) -> dict: ...
    def restore_state(self, state: dict) -> None: ...

A state dict holds only JSON values (int, str, bool, None, list, dict);
raw bytes go in as base64 strings (:func:`pack_bytes`).  ``save_state`` is
called with every vCPU parked; a device finishes its in-flight requests
first.  ``restore_state`` is called on a freshly built part, before any
vCPU runs; it raises :class:`StateError` (one line, naming what is wrong)
when the dict is not one it can load, and leaves nothing half-applied
that would let the VM start.

:class:`Reader` is the checked way to take fields out of a state dict that
came from a file: a missing key or a value of the wrong type or range is a
StateError, never a KeyError or a silently wrong register.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from kvmlite.errors import KvmliteError


class StateError(KvmliteError):
    """A saved state that cannot be taken or loaded (one line, naming the part)."""


def pack_bytes(data: bytes | bytearray | memoryview) -> str:
    """Bytes as a base64 string, for a state dict."""
    return base64.b64encode(bytes(data)).decode("ascii")


def unpack_bytes(text: object, what: str = "value", size: int | None = None) -> bytes:
    """The bytes :func:`pack_bytes` made; ``size`` demands an exact length."""
    if not isinstance(text, str):
        raise StateError(f"{what}: expected base64 text, got {type(text).__name__}")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise StateError(f"{what}: not valid base64") from None
    if size is not None and len(data) != size:
        raise StateError(f"{what}: {len(data)} bytes, expected {size}")
    return data


class Reader:
    """Checked access to one part's state dict.

    ``Reader(state, "serial COM1").int("ier", 0, 0xFF)`` returns the value
    or raises StateError("serial COM1: ier ...")."""

    def __init__(self, state: object, part: str) -> None:
        if not isinstance(state, dict):
            raise StateError(f"{part}: saved state is {type(state).__name__}, expected an object")
        self.state = state
        self.part = part

    def _get(self, key: str) -> Any:
        if key not in self.state:
            raise StateError(f"{self.part}: saved state lacks {key!r}")
        return self.state[key]

    def int(self, key: str, low: int = 0, high: int = (1 << 64) - 1) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise StateError(f"{self.part}: {key} is {type(value).__name__}, expected an integer")
        if not low <= value <= high:
            raise StateError(f"{self.part}: {key}={value} is outside {low}..{high}")
        return value

    def int_or_none(self, key: str, low: int = 0, high: int = (1 << 64) - 1) -> "int | None":
        """:meth:`int`, or None when the key holds null."""
        if key in self.state and self.state[key] is None:
            return None
        return self.int(key, low, high)

    def bool(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise StateError(f"{self.part}: {key} is {type(value).__name__}, expected true or false")
        return value

    def str(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise StateError(f"{self.part}: {key} is {type(value).__name__}, expected a string")
        return value

    def bytes(self, key: str, size: int | None = None) -> bytes:
        return unpack_bytes(self._get(key), f"{self.part}: {key}", size)

    def list(self, key: str, length: int | None = None) -> list:
        value = self._get(key)
        if not isinstance(value, list):
            raise StateError(f"{self.part}: {key} is {type(value).__name__}, expected a list")
        if length is not None and len(value) != length:
            raise StateError(f"{self.part}: {key} has {len(value)} entries, expected {length}")
        return value

    def ints(self, key: str, length: int | None = None, low: int = 0, high: int = (1 << 64) - 1) -> list[int]:
        values = self.list(key, length)
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise StateError(f"{self.part}: {key}[{i}]={value!r} is not an integer in {low}..{high}")
        return values

    def sub(self, key: str, part: str | None = None) -> "Reader":
        """The nested state dict at ``key``, as a Reader."""
        return Reader(self._get(key), f"{self.part} {part or key}")
