"""Run the real ACPICA tools (iasl, acpiexec from acpica-tools) on bytes
the ACPI code produced.  A test that needs them and finds them missing is
skipped with a message saying what to install; it never passes silently."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

MISSING = "{} not installed (apt-get install acpica-tools)"
HEADER_SIZE = 36
# What iasl/acpiexec print when a table is wrong: bad checksums, repaired
# names, FADT 32/64-bit conflicts, unknown opcodes.
PROBLEM = re.compile(r"error|warning|incorrect|invalid|unknown", re.IGNORECASE)


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(MISSING.format(tool))
    return path


def _run(args: Sequence[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{output}"
    return output


def compile_asl(tmp_path: Path, body: str) -> bytes:
    """Compile ``body`` inside a DSDT DefinitionBlock with iasl (named
    reference optimization off, so paths stay as written) and return the
    AML after the table header."""
    iasl = require("iasl")
    src = tmp_path / "snippet.asl"
    src.write_text('DefinitionBlock ("", "DSDT", 2, "KVMLIT", "KVMLITE", 1)\n{\n' + body + "\n}\n")
    _run([iasl, "-on", str(src)], tmp_path)
    return (tmp_path / "snippet.aml").read_bytes()[HEADER_SIZE:]


def compile_data_table(tmp_path: Path, source: str, name: str) -> bytes:
    """Compile an iasl data-table source (``[0004] Field : value`` lines)."""
    iasl = require("iasl")
    src = tmp_path / f"{name}.asl"
    src.write_text(source)
    _run([iasl, str(src)], tmp_path)
    return (tmp_path / f"{name}.aml").read_bytes()


def disassemble(tmp_path: Path, blob: bytes, name: str) -> tuple[str, str]:
    """``iasl -d`` one table; returns (tool output, the .dsl text)."""
    iasl = require("iasl")
    dat = tmp_path / f"{name}.dat"
    dat.write_bytes(blob)
    output = _run([iasl, "-d", str(dat)], tmp_path)
    return output, (tmp_path / f"{name}.dsl").read_text()


def recompile(tmp_path: Path, dsl_name: str) -> bytes:
    """Compile a .dsl iasl produced back into a table."""
    iasl = require("iasl")
    _run([iasl, "-on", f"{dsl_name}.dsl"], tmp_path)
    return (tmp_path / f"{dsl_name}.aml").read_bytes()


def acpiexec(tmp_path: Path, tables: dict[str, bytes], commands: Sequence[str]) -> str:
    """Load ``tables`` into ACPICA's interpreter (acpiexec, which builds
    its own RSDP/XSDT around them) and run debugger ``commands``."""
    tool = require("acpiexec")
    files = []
    for name, blob in tables.items():
        (tmp_path / f"{name}.dat").write_bytes(blob)
        files.append(f"{name}.dat")
    return _run([tool, "-b", "; ".join(commands), *files], tmp_path)


def problems(text: str) -> list[str]:
    """Lines of tool output that report a problem."""
    return [line for line in text.splitlines() if PROBLEM.search(line)]
