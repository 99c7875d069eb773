"""A guest KVM cannot run gets a plain explanation, not a register dump.

The emufail guest executes ``lock cmpxchg16b`` in kernel mode.  A PVM-based
KVM (this kind of machine) cannot emulate it: kvmlite must name the
instruction, where it was, and that this KVM is PVM-based, on one line, with
exit status 4.  On hardware KVM the instruction runs and the guest exits 0.
"""

from __future__ import annotations

import pytest

from kvmlite.vmm.diagnose import is_pvm

pytestmark = pytest.mark.kvm


def test_emulation_failure_explained_in_one_line(kvm, guest, kvmlite) -> None:
    run = kvmlite("run", "-k", str(guest("emufail")))
    if not is_pvm():
        assert run.status == 0, run
        return
    assert run.status == 4, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    message = lines[0]
    assert "emulation failure" in message and "lock cmpxchg16b" in message, message
    assert "rip 0x1002" in message, "the address of the instruction (the guest is linked at 1 MiB)"
    assert "PVM" in message and "nested test host" in message, message
    assert "Traceback" not in run.stderr
