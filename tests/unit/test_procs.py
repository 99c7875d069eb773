"""The process helpers the test layers share (tests/procs.py): a leak check
that sees a new descriptor, even one reusing a closed one's number, and
ignores one closed meanwhile; a process that is gone or a zombie."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.procs import gone_or_zombie, leaked_descriptors, open_descriptors


def test_a_descriptor_opened_after_the_snapshot_is_leaked_and_closed_is_not() -> None:
    before = open_descriptors()
    r, w = os.pipe()
    try:
        assert {fd for fd, *_ in leaked_descriptors(before)} == {r, w}
    finally:
        os.close(r)
        os.close(w)
    assert not leaked_descriptors(before)


def test_a_descriptor_closed_meanwhile_is_no_leak_but_its_number_reused_is() -> None:
    r, w = os.pipe()
    before = open_descriptors()
    os.close(r)
    assert not leaked_descriptors(before)              # fewer is not a leak
    again = os.open(os.devnull, os.O_RDONLY)           # the lowest free number: r's
    try:
        assert again == r and {fd for fd, *_ in leaked_descriptors(before)} == {again}
    finally:
        os.close(again)
        os.close(w)


def test_gone_or_zombie_follows_a_child_to_its_end() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    assert not gone_or_zombie(child.pid)
    child.stdin.close()
    child.wait(timeout=30)
    assert gone_or_zombie(child.pid)                   # reaped: no /proc entry
