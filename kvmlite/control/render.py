"""Text for people: the ``list`` table, ``stat`` and ``debug`` output.

Input is what the control protocol returns (docs/control.md); ``--json``
prints that unchanged instead.
"""

from __future__ import annotations

from typing import Any, Sequence

from kvmlite.control.client import Instance

LIST_COLUMNS = ("NAME", "PID", "STATE", "VCPUS", "MEMORY", "UPTIME")
GPR_ROWS = (("rip", "rsp", "rflags"), ("rax", "rbx", "rcx", "rdx"), ("rsi", "rdi", "rbp", "r8"),
            ("r9", "r10", "r11", "r12"), ("r13", "r14", "r15"))
CR_ROWS = (("cr0", "cr2", "cr3", "cr4"), ("cr8", "efer", "apic_base"))
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


def duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h03m``, ``5d04h``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


# --- list -------------------------------------------------------------------------


def list_row(instance: Instance) -> tuple[str, ...]:
    info = instance.info or {}
    pid = info.get("pid", instance.pid)
    return (instance.name, str(pid) if pid else "-", instance.state,
            str(info.get("vcpus", "-")), f"{info['memory_mib']}M" if "memory_mib" in info else "-",
            duration(info["uptime_s"]) if "uptime_s" in info else "-")


def list_table(instances: Sequence[Instance]) -> str:
    rows = [LIST_COLUMNS, *(list_row(i) for i in instances)]
    widths = [max(len(row[c]) for row in rows) for c in range(len(LIST_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def list_json(instance: Instance) -> dict[str, Any]:
    info = instance.info or {}
    out = {"name": instance.name, "pid": info.get("pid", instance.pid), "state": instance.state}
    out.update({k: info[k] for k in ("vcpus", "memory_mib", "uptime_s") if k in info})
    if instance.problem:
        out["problem"] = instance.problem
    return out


# --- stat -------------------------------------------------------------------------


def stats_text(name: str, stats: dict[str, Any]) -> str:
    rss = stats.get("rss_bytes")
    head = f"{name}: {stats.get('state', '?')}, up {duration(stats.get('uptime_s', 0))}"
    if rss is not None:
        head += f", VMM RSS {size(rss)} (peak {size(stats.get('peak_rss_bytes', rss))})"
    lines = [head]
    for vcpu in stats.get("vcpus", []):
        exits = ", ".join(f"{k} {v}" for k, v in sorted(vcpu["exits"].items(), key=lambda kv: -kv[1]))
        lines.append(f"vCPU {vcpu['id']} ({vcpu['state']}): {vcpu['total_exits']} exits"
                     + (f": {exits}" if exits else ""))
    lines += _bus_lines(stats.get("io", {}))
    lines += _device_lines(stats.get("devices", {}))
    return "\n".join(lines)


def _bus_lines(io: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    rows = [(bus, dev, c["reads"], c["writes"]) for bus, devs in sorted(io.items())
            for dev, c in sorted(devs.items()) if c["reads"] or c["writes"]]
    if not rows:
        return ["I/O: none yet"]
    width = max(len(r[1]) for r in rows)
    return ["I/O (reads, writes):"] + [f"  {bus:<4} {dev:<{width}}  {r:>10} {w:>10}" for bus, dev, r, w in rows]


def _device_lines(devices: dict[str, dict[str, int]]) -> list[str]:
    rows = [(name, counters) for name, counters in sorted(devices.items()) if any(counters.values())]
    if not rows:
        return []
    return ["devices:"] + [f"  {name}: " + " ".join(f"{k}={v}" for k, v in counters.items())
                           for name, counters in rows]


# --- debug ------------------------------------------------------------------------


def registers_text(name: str, vcpus: list[dict[str, Any]]) -> str:
    lines = []
    for vcpu in vcpus:
        lines.append(f"{name}: vCPU {vcpu['id']}")
        regs, sregs = vcpu["regs"], vcpu["sregs"]
        lines += ["  " + "  ".join(f"{r:<6} {regs[r]:016x}" for r in row) for row in GPR_ROWS]
        lines += ["  " + "  ".join(f"{r:<9} {sregs[r]:016x}" for r in row) for row in CR_ROWS]
        lines += [f"  {s:<3} {_segment(sregs[s])}" for s in SEGMENTS]
        lines += [f"  {t:<3} base {sregs[t]['base']:016x} limit {sregs[t]['limit']:04x}" for t in ("gdt", "idt")]
        lines.append(f"  code at rip (linear {vcpu['rip_linear']:#x}): {_code(vcpu.get('code'))}")
    return "\n".join(lines)


def _segment(seg: dict[str, int]) -> str:
    return (f"sel {seg['selector']:04x} base {seg['base']:016x} limit {seg['limit']:08x} type {seg['type']:x} "
            f"dpl {seg['dpl']} {'P' if seg['present'] else '-'}{'L' if seg['l'] else '-'}{'D' if seg['db'] else '-'}")


def _code(code: str | None) -> str:
    if not code:
        return "not readable (unmapped)"
    return " ".join(code[i:i + 2] for i in range(0, len(code), 2))
