"""Text output of the control commands."""

from __future__ import annotations

import pytest

from kvmlite.control.client import Instance
from kvmlite.control.render import duration, list_json, list_table, registers_text, size

from .fakes import sample_registers


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (3599, "59m59s"),
                                           (3600, "1h00m"), (86399, "23h59m"), (86400 * 3 + 3600, "3d01h")])
def test_duration_each_range(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize("nbytes, text", [(512, "512 B"), (1536, "1.5 KiB"), (23 << 20, "23.0 MiB"),
                                          (3 << 30, "3.0 GiB")])
def test_size_units(nbytes: int, text: str) -> None:
    assert size(nbytes) == text


def test_list_table_unresponsive_vm_shows_dashes_and_lock_pid() -> None:
    wedged = Instance("wedged", None, 4321, "no reply to 'info' within 3 s")
    row = list_table([wedged]).splitlines()[1].split()
    assert row == ["wedged", "4321", "unresponsive", "-", "-", "-"]
    assert list_json(wedged) == {"name": "wedged", "pid": 4321, "state": "unresponsive",
                                 "problem": "no reply to 'info' within 3 s"}


def test_registers_text_one_block_per_vcpu_code_spaced() -> None:
    text = registers_text("web", [sample_registers(0), {**sample_registers(1), "code": None}])
    assert text.count("web: vCPU ") == 2
    assert "rip    0000000000001000" in text and "f4 eb fd" in text and "not readable" in text
