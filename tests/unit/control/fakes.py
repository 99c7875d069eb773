"""A stand-in for a VM behind the control server: records calls, can be
made to block or fail.  It has VmControl's methods (kvmlite/control/ops.py:
ControlTarget)."""

from __future__ import annotations

import threading
from typing import Any


class FakeTarget:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.paused = False
        self.gate: threading.Event | None = None      # pause() waits on it when set
        self.fail: BaseException | None = None        # stats() raises it when set
        self.on_stop = lambda force: None

    def info(self) -> dict[str, Any]:
        return {"state": self.state(), "vcpus": 2, "memory_mib": 64, "uptime_s": 1.5, "kernel": "fake"}

    def state(self) -> str:
        return "paused" if self.paused else "running"

    def pause(self, timeout: float = 5.0) -> None:
        self.calls.append(("pause", timeout))
        if self.gate is not None:
            self.gate.wait(30)
        self.paused = True

    def resume(self) -> None:
        self.calls.append(("resume",))
        self.paused = False

    def shutdown(self, timeout: float = 30.0, force: bool = False) -> str:
        self.calls.append(("stop", timeout, force))
        self.on_stop(force)
        return "force" if force else "ctrl-alt-del"

    def stats(self) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        return {"state": self.state(), "uptime_s": 1.5, "vcpus": [{"id": 0, "state": "running",
                "exits": {"IoOut": 3}, "total_exits": 3}], "io": {"pio": {"com1": {"reads": 1, "writes": 3}}},
                "devices": {"com1": {"tx_bytes": 3}}, "rss_bytes": 1 << 20}

    def registers(self) -> list[dict[str, Any]]:
        self.calls.append(("registers",))
        return [sample_registers(0)]

    def inject_nmi(self, vcpu: int | None = None) -> list[int]:
        self.calls.append(("nmi", vcpu))
        return [0, 1] if vcpu is None else [vcpu]

    def sysrq(self, key: str) -> None:
        self.calls.append(("sysrq", key))

    def set_timeout(self, seconds: float) -> float:
        self.calls.append(("set_timeout", seconds))
        return seconds


def sample_registers(vcpu: int) -> dict[str, Any]:
    """One vCPU's entry of a ``registers`` reply, as VmControl builds it."""
    gprs = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
            "r14", "r15", "rip", "rflags")
    seg = {"selector": 0x10, "base": 0, "limit": 0xFFFFFFFF, "type": 11, "present": 1, "dpl": 0, "db": 0, "l": 1}
    sregs: dict[str, Any] = {r: 0 for r in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")}
    sregs.update({s: dict(seg) for s in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")})
    sregs.update({t: {"base": 0x500, "limit": 0x27} for t in ("gdt", "idt")})
    regs = {r: i for i, r in enumerate(gprs)}
    regs["rip"] = 0x1000
    return {"id": vcpu, "regs": regs, "sregs": sregs, "rip_linear": 0x1000, "code": "f4eb fd".replace(" ", "")}
