"""Naming the instruction KVM failed to emulate, from its bytes."""

from __future__ import annotations

import pytest

from kvmlite.vmm.diagnose import name_instruction


@pytest.mark.parametrize("code, name", [
    (bytes.fromhex("f0480fc70f"), "lock cmpxchg16b"),
    (bytes.fromhex("0fc70f"), "cmpxchg8b"),
    (bytes.fromhex("480fae2f"), "xrstor"),
    (bytes.fromhex("0fae27"), "xsave"),
    (bytes.fromhex("cc"), "int3"),
    (bytes.fromhex("0f05"), "syscall"),
    (bytes.fromhex("660f6f07"), "SSE/MMX move (movdqa/movq)"),
    (bytes.fromhex("0f2807"), "SSE move (movaps)"),
])
def test_name_instruction_known_bytes_named(code: bytes, name: str) -> None:
    assert name_instruction(code) == name


@pytest.mark.parametrize("code", [b"", bytes.fromhex("90"), bytes.fromhex("4889c8"), bytes.fromhex("0f")])
def test_name_instruction_other_bytes_none(code: bytes) -> None:
    assert name_instruction(code) is None
