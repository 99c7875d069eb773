"""The operations of protocol v1: argument checks and the call into the VM.

A server hands each decoded request to :func:`lookup` and :meth:`Op.run`;
the target is anything with :class:`ControlTarget`'s methods
(:class:`kvmlite.vmm.control.VmControl` for a real VM, a fake in tests).
Ops marked ``blocking`` may wait (for vCPUs to park, for instance) and must
run off the server's thread; the others only read counters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from kvmlite.control.protocol import BAD_ARGS, UNKNOWN_OP, ProtocolError

MAX_PAUSE_TIMEOUT = 60.0
MAX_STOP_TIMEOUT = 3600.0
MAX_LIFETIME = 366 * 86400.0       # set_timeout: as VmConfig.timeout allows
DEFAULT_PAUSE_TIMEOUT = 5.0
DEFAULT_STOP_TIMEOUT = 30.0


class ControlTarget(Protocol):
    """What the control plane needs of a VM (see kvmlite/vmm/control.py)."""

    def info(self) -> dict[str, Any]: ...
    def pause(self, timeout: float = DEFAULT_PAUSE_TIMEOUT) -> None: ...
    def resume(self) -> None: ...
    def state(self) -> str: ...
    def shutdown(self, timeout: float = DEFAULT_STOP_TIMEOUT, force: bool = False) -> str: ...
    def stats(self) -> dict[str, Any]: ...
    def registers(self) -> list[dict[str, Any]]: ...
    def inject_nmi(self, vcpu: int | None = None) -> list[int]: ...
    def sysrq(self, key: str) -> None: ...
    def set_timeout(self, seconds: float) -> float: ...
    def snapshot(self, directory: str, stop: bool = False) -> dict[str, Any]: ...


Args = dict[str, Any]
Result = dict[str, Any]


@dataclass(frozen=True)
class Op:
    name: str
    call: Callable[[ControlTarget, Args], Result]
    allowed: frozenset[str]
    blocking: bool

    def run(self, target: ControlTarget, args: Args) -> Result:
        unknown = sorted(set(args) - self.allowed)
        if unknown:
            raise ProtocolError(BAD_ARGS, f"{self.name}: unknown argument {unknown[0]!r}"
                                          f"{_known(self.allowed)}")
        return self.call(target, args)


# --- argument checks --------------------------------------------------------------


def _known(allowed: frozenset[str]) -> str:
    return f" (known: {', '.join(sorted(allowed))})" if allowed else " (it takes none)"


def number(args: Args, key: str, default: float, low: float, high: float) -> float:
    """A number in ``(low, high]``."""
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low < value <= high:
        raise ProtocolError(BAD_ARGS, f"{key!r} must be a number of seconds above {low:g} and at most {high:g}")
    return float(value)


def flag(args: Args, key: str) -> bool:
    value = args.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(BAD_ARGS, f"{key!r} must be true or false")
    return value


def vcpu_index(args: Args, key: str) -> int | None:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1024:
        raise ProtocolError(BAD_ARGS, f"{key!r} must be a vCPU index (0, 1, ...) or null for all")
    return value


def sysrq_key(args: Args, key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or len(value) != 1 or not "!" <= value <= "~":
        raise ProtocolError(BAD_ARGS, f"{key!r} must be one printable ASCII character (e.g. \"h\")")
    return value


# --- the operations ---------------------------------------------------------------


def _info(t: ControlTarget, a: Args) -> Result:
    return t.info()


def _pause(t: ControlTarget, a: Args) -> Result:
    t.pause(number(a, "timeout", DEFAULT_PAUSE_TIMEOUT, 0.0, MAX_PAUSE_TIMEOUT))
    return {"state": t.state()}


def _resume(t: ControlTarget, a: Args) -> Result:
    t.resume()
    return {"state": t.state()}


def _stop(t: ControlTarget, a: Args) -> Result:
    force = flag(a, "force")
    timeout = number(a, "timeout", DEFAULT_STOP_TIMEOUT, 0.0, MAX_STOP_TIMEOUT)
    return {"method": t.shutdown(timeout, force=force)}


def _set_timeout(t: ControlTarget, a: Args) -> Result:
    seconds = number(a, "seconds", -1.0, 0.0, MAX_LIFETIME)     # required: the default is refused
    return {"timeout_s": t.set_timeout(seconds)}


def _snapshot(t: ControlTarget, a: Args) -> Result:
    directory = a.get("dir")
    if not isinstance(directory, str) or not directory.startswith("/") or "\0" in directory:
        raise ProtocolError(BAD_ARGS, "'dir' must be an absolute path (the VMM's working directory is not yours)")
    return t.snapshot(directory, stop=flag(a, "stop"))


def _stats(t: ControlTarget, a: Args) -> Result:
    return t.stats()


def _registers(t: ControlTarget, a: Args) -> Result:
    return {"vcpus": t.registers()}


def _nmi(t: ControlTarget, a: Args) -> Result:
    return {"vcpus": t.inject_nmi(vcpu_index(a, "vcpu"))}


def _sysrq(t: ControlTarget, a: Args) -> Result:
    key = sysrq_key(a, "key")
    t.sysrq(key)
    return {"key": key}


def _op(name: str, call: Callable[[ControlTarget, Args], Result], *allowed: str, blocking: bool) -> Op:
    return Op(name, call, frozenset(allowed), blocking)


OPS: dict[str, Op] = {op.name: op for op in (
    _op("info", _info, blocking=False),
    _op("stats", _stats, blocking=False),
    _op("pause", _pause, "timeout", blocking=True),
    _op("resume", _resume, blocking=True),
    _op("stop", _stop, "force", "timeout", blocking=True),
    _op("registers", _registers, blocking=True),
    _op("nmi", _nmi, "vcpu", blocking=True),
    _op("sysrq", _sysrq, "key", blocking=True),
    _op("set_timeout", _set_timeout, "seconds", blocking=False),
    _op("snapshot", _snapshot, "dir", "stop", blocking=True),
)}


def lookup(name: str) -> Op:
    op = OPS.get(name)
    if op is None:
        raise ProtocolError(UNKNOWN_OP, f"unknown operation {name!r} (known: {', '.join(sorted(OPS))})")
    return op
