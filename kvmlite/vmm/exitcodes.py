"""How a VM's end maps to the ``kvmlite run`` exit status.

    0   the guest powered off (ACPI S5, or a stop request that it honoured)
    1   kvmlite itself failed at run time (an error message says why)
    2   bad usage: a bad option or configuration
    3   the guest asked for a reset (i8042 0xFE, ACPI reset register, reboot)
    4   the guest crashed: triple fault, or KVM could not run it (internal error)
    N   a guest wrote N to the kvmlite exit port (0x501); the guest's own
        status, e.g. the exit status of ``kvmlite run -- CMD``
"""

from __future__ import annotations

import enum

EXIT_POWEROFF = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_RESET = 3
EXIT_CRASH = 4


class EndReason(enum.Enum):
    POWEROFF = "poweroff"
    RESET = "reset"
    CRASH = "crash"
    GUEST_EXIT = "guest-exit"     # the guest wrote its status to the exit port
    STOPPED = "stopped"           # stopped from outside (API, signal, control socket)
    ERROR = "error"               # the VMM failed


DEFAULT_CODES = {
    EndReason.POWEROFF: EXIT_POWEROFF,
    EndReason.RESET: EXIT_RESET,
    EndReason.CRASH: EXIT_CRASH,
    EndReason.STOPPED: EXIT_POWEROFF,
    EndReason.ERROR: EXIT_ERROR,
}
