"""Typed values for the reasons ``KVM_RUN`` returns (``kvm_run.exit_reason``).

:meth:`kvmlite.kvm.vcpu.VcpuFd.run` decodes the shared ``kvm_run`` page into
one of these.  For reads (``IoIn``, ``MmioRead``) ``data`` is a writable view
into the ``kvm_run`` page: the handler fills it and KVM hands the bytes to
the guest on the next ``KVM_RUN``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class IoIn:
    """``in`` from a port; fill ``data`` (``size * count`` bytes)."""
    port: int
    size: int
    count: int
    data: memoryview


@dataclass(slots=True)
class IoOut:
    """``out`` to a port; ``data`` holds ``size * count`` bytes."""
    port: int
    size: int
    count: int
    data: bytes


@dataclass(slots=True)
class MmioRead:
    """A read of ``len(data)`` bytes at guest-physical ``addr``; fill ``data``."""
    addr: int
    data: memoryview


@dataclass(slots=True)
class MmioWrite:
    """A write of ``data`` at guest-physical ``addr``."""
    addr: int
    data: bytes


@dataclass(slots=True)
class Hlt:
    """The vCPU executed HLT (only without an in-kernel LAPIC)."""


@dataclass(slots=True)
class Shutdown:
    """Triple fault, or a shutdown the guest asked for through the CPU."""


@dataclass(slots=True)
class Interrupted:
    """``KVM_RUN`` returned because of a signal or ``immediate_exit``."""


@dataclass(slots=True)
class SystemEvent:
    """``KVM_EXIT_SYSTEM_EVENT``: type is ``KVM_SYSTEM_EVENT_*``."""
    type: int
    data: tuple[int, ...]


@dataclass(slots=True)
class InternalError:
    """``KVM_EXIT_INTERNAL_ERROR``: KVM could not go on (emulation failure...)."""
    suberror: int
    data: tuple[int, ...]


@dataclass(slots=True)
class FailEntry:
    """``KVM_EXIT_FAIL_ENTRY``: hardware refused to enter the guest."""
    reason: int
    cpu: int


@dataclass(slots=True)
class IoapicEoi:
    vector: int


@dataclass(slots=True)
class Other:
    """Any exit reason kvmlite does not decode."""
    reason: int
    hardware_exit_reason: int


Exit = (IoIn | IoOut | MmioRead | MmioWrite | Hlt | Shutdown | Interrupted | SystemEvent
        | InternalError | FailEntry | IoapicEoi | Other)
