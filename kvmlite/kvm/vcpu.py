"""A vCPU file descriptor: one method per vCPU ioctl, and :meth:`VcpuFd.run`,
which decodes the shared ``struct kvm_run`` page into a typed exit."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

from kvmlite.kvm import exits as ex
from kvmlite.kvm import structs as s
from kvmlite.kvm import uapi
from kvmlite.kvm.ioctl import KvmError, ioctl, libc_ioctl

# Offsets inside struct kvm_run (linux/kvm.h); checked against the structs.
_OFF_IMMEDIATE_EXIT = s.kvm_run.immediate_exit.offset
_OFF_EXIT_REASON = s.kvm_run.exit_reason.offset
_OFF_UNION = s.kvm_run.u.offset
_EXIT_REASON = struct.Struct("<I")
_IO = struct.Struct("<BBHIQ")          # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")        # phys_addr, data[8], len, is_write
_U64X2 = struct.Struct("<QI")
_U32X2 = struct.Struct("<II")
_U64 = struct.Struct("<Q")
_MMIO_DATA = _OFF_UNION + 8

_INTERRUPTED = ex.Interrupted()
_HLT = ex.Hlt()
_SHUTDOWN = ex.Shutdown()


class VcpuFd:
    """One virtual CPU.

    ``run`` is called only from the vCPU's own thread.  ``kick`` (setting
    ``immediate_exit``) may be called from any thread.
    """

    def __init__(self, fd: int, vcpu_id: int, run_size: int) -> None:
        self.fd = fd
        self.id = vcpu_id
        self._mm = mmap.mmap(fd, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._mm)
        self.run_struct = s.kvm_run.from_buffer(self._mm)

    def close(self) -> None:
        if self.fd < 0:
            return
        del self.run_struct
        self._view.release()
        self._mm.close()
        os.close(self.fd)
        self.fd = -1

    # --- KVM_RUN -----------------------------------------------------------

    def set_immediate_exit(self, value: bool) -> None:
        """Make the next (or current, once signalled) KVM_RUN return at once."""
        self._mm[_OFF_IMMEDIATE_EXIT] = 1 if value else 0

    def run(self) -> ex.Exit:
        """KVM_RUN once and return why the guest stopped.

        Returns :class:`~kvmlite.kvm.exits.Interrupted` when a signal or
        ``immediate_exit`` ended the call (``EINTR``/``EAGAIN``).
        """
        if libc_ioctl(self.fd, uapi.KVM_RUN, None) < 0:
            err = ctypes.get_errno()
            if err in (errno.EINTR, errno.EAGAIN):
                return _INTERRUPTED
            raise KvmError("KVM_RUN", err)
        mm = self._mm
        reason = _EXIT_REASON.unpack_from(mm, _OFF_EXIT_REASON)[0]
        if reason == uapi.KVM_EXIT_IO:
            direction, size, port, count, offset = _IO.unpack_from(mm, _OFF_UNION)
            if direction == uapi.KVM_EXIT_IO_OUT:
                return ex.IoOut(port, size, count, mm[offset:offset + size * count])
            return ex.IoIn(port, size, count, self._view[offset:offset + size * count])
        if reason == uapi.KVM_EXIT_MMIO:
            addr, data, length, is_write = _MMIO.unpack_from(mm, _OFF_UNION)
            length = min(length, 8)
            if is_write:
                return ex.MmioWrite(addr, data[:length])
            return ex.MmioRead(addr, self._view[_MMIO_DATA:_MMIO_DATA + length])
        return self._decode_rare(reason)

    def _decode_rare(self, reason: int) -> ex.Exit:
        run = self.run_struct
        if reason == uapi.KVM_EXIT_HLT:
            return _HLT
        if reason == uapi.KVM_EXIT_INTR:
            return _INTERRUPTED
        if reason == uapi.KVM_EXIT_SHUTDOWN:
            return _SHUTDOWN
        if reason == uapi.KVM_EXIT_SYSTEM_EVENT:
            ev = run.system_event
            return ex.SystemEvent(ev.type, tuple(ev.data[:min(ev.ndata, 16)]))
        if reason == uapi.KVM_EXIT_INTERNAL_ERROR:
            ie = run.internal
            return ex.InternalError(ie.suberror, tuple(ie.data[:min(ie.ndata, 16)]))
        if reason == uapi.KVM_EXIT_FAIL_ENTRY:
            fe = run.fail_entry
            return ex.FailEntry(fe.hardware_entry_failure_reason, fe.cpu)
        if reason == uapi.KVM_EXIT_IOAPIC_EOI:
            return ex.IoapicEoi(self._mm[_OFF_UNION])   # kvm_run.eoi.vector (u8)
        return ex.Other(reason, run.hardware_exit_reason)

    # --- register state ----------------------------------------------------

    def get_regs(self) -> s.kvm_regs:
        regs = s.kvm_regs()
        ioctl(self.fd, uapi.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: s.kvm_regs) -> None:
        ioctl(self.fd, uapi.KVM_SET_REGS, regs)

    def get_sregs(self) -> s.kvm_sregs:
        sregs = s.kvm_sregs()
        ioctl(self.fd, uapi.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: s.kvm_sregs) -> None:
        ioctl(self.fd, uapi.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> s.kvm_fpu:
        fpu = s.kvm_fpu()
        ioctl(self.fd, uapi.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: s.kvm_fpu) -> None:
        ioctl(self.fd, uapi.KVM_SET_FPU, fpu)

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS; MSRs KVM does not know are left out of the result."""
        buf = _msrs_buffer([(i, 0) for i in indices])
        done = ioctl(self.fd, uapi.KVM_GET_MSRS, buf)
        return {buf.entries[i].index: buf.entries[i].data for i in range(done)}

    def set_msrs(self, values: list[tuple[int, int]]) -> int:
        """KVM_SET_MSRS; returns how many were set.  Raises if KVM refused one."""
        buf = _msrs_buffer(values)
        done = ioctl(self.fd, uapi.KVM_SET_MSRS, buf)
        if done != len(values):
            index = values[done][0]
            raise KvmError("KVM_SET_MSRS", errno.EINVAL, f"MSR {index:#x} was refused")
        return done

    def set_cpuid2(self, entries: list[s.kvm_cpuid_entry2]) -> None:
        from kvmlite.kvm.system import _Cpuid2Buffer

        ioctl(self.fd, uapi.KVM_SET_CPUID2, _Cpuid2Buffer.of(entries).raw)

    def get_cpuid2(self, max_entries: int = 256) -> list[s.kvm_cpuid_entry2]:
        """KVM_GET_CPUID2: the CPUID leaves set on this vCPU (growing the
        buffer while KVM answers E2BIG)."""
        from kvmlite.kvm.system import get_cpuid2

        return get_cpuid2(self.fd, uapi.KVM_GET_CPUID2, max_entries)

    def get_xsave(self) -> s.kvm_xsave:
        """KVM_GET_XSAVE: the 4096-byte XSAVE area (x87, SSE, AVX, ...)."""
        xsave = s.kvm_xsave()
        ioctl(self.fd, uapi.KVM_GET_XSAVE, xsave)
        return xsave

    def get_xsave2(self, size: int) -> bytes:
        """KVM_GET_XSAVE2: the XSAVE area, ``size`` bytes as
        KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM reports (>= 4096)."""
        buf = (ctypes.c_char * max(size, ctypes.sizeof(s.kvm_xsave)))()
        ioctl(self.fd, uapi.KVM_GET_XSAVE2, buf)
        return bytes(buf)

    def set_xsave(self, data: bytes) -> None:
        """KVM_SET_XSAVE: KVM reads as many bytes as KVM_CAP_XSAVE2 says, so
        ``data`` must be at least that long (and at least 4096)."""
        if len(data) < ctypes.sizeof(s.kvm_xsave):
            raise ValueError(f"XSAVE area of {len(data)} bytes, KVM_SET_XSAVE needs at least 4096")
        ioctl(self.fd, uapi.KVM_SET_XSAVE, (ctypes.c_char * len(data)).from_buffer_copy(data))

    def get_xcrs(self) -> s.kvm_xcrs:
        xcrs = s.kvm_xcrs()
        ioctl(self.fd, uapi.KVM_GET_XCRS, xcrs)
        return xcrs

    def set_xcrs(self, xcrs: s.kvm_xcrs) -> None:
        ioctl(self.fd, uapi.KVM_SET_XCRS, xcrs)

    def get_debugregs(self) -> s.kvm_debugregs:
        dregs = s.kvm_debugregs()
        ioctl(self.fd, uapi.KVM_GET_DEBUGREGS, dregs)
        return dregs

    def set_debugregs(self, dregs: s.kvm_debugregs) -> None:
        ioctl(self.fd, uapi.KVM_SET_DEBUGREGS, dregs)

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ: the guest TSC frequency (KVM_CAP_GET_TSC_KHZ)."""
        return ioctl(self.fd, uapi.KVM_GET_TSC_KHZ)

    def set_tsc_khz(self, khz: int) -> None:
        """KVM_SET_TSC_KHZ: scaling needs KVM_CAP_TSC_CONTROL; without it KVM
        accepts only (about) the host's own frequency."""
        ioctl(self.fd, uapi.KVM_SET_TSC_KHZ, khz)

    def get_lapic(self) -> s.kvm_lapic_state:
        lapic = s.kvm_lapic_state()
        ioctl(self.fd, uapi.KVM_GET_LAPIC, lapic)
        return lapic

    def set_lapic(self, lapic: s.kvm_lapic_state) -> None:
        ioctl(self.fd, uapi.KVM_SET_LAPIC, lapic)

    def get_vcpu_events(self) -> s.kvm_vcpu_events:
        events = s.kvm_vcpu_events()
        ioctl(self.fd, uapi.KVM_GET_VCPU_EVENTS, events)
        return events

    def set_vcpu_events(self, events: s.kvm_vcpu_events) -> None:
        ioctl(self.fd, uapi.KVM_SET_VCPU_EVENTS, events)

    def get_mp_state(self) -> int:
        state = s.kvm_mp_state()
        ioctl(self.fd, uapi.KVM_GET_MP_STATE, state)
        return state.mp_state

    def set_mp_state(self, mp_state: int) -> None:
        ioctl(self.fd, uapi.KVM_SET_MP_STATE, s.kvm_mp_state(mp_state=mp_state))

    def nmi(self) -> None:
        """KVM_NMI: queue an NMI on this vCPU's local APIC."""
        ioctl(self.fd, uapi.KVM_NMI)

    def translate(self, linear_address: int) -> int | None:
        """KVM_TRANSLATE: guest-virtual to guest-physical, None if unmapped."""
        tr = s.kvm_translation(linear_address=linear_address)
        ioctl(self.fd, uapi.KVM_TRANSLATE, tr)
        return tr.physical_address if tr.valid else None


def _msrs_buffer(values: list[tuple[int, int]]) -> ctypes.Structure:
    class Buf(ctypes.Structure):
        _fields_ = [("nmsrs", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                    ("entries", s.kvm_msr_entry * max(1, len(values)))]
    buf = Buf(nmsrs=len(values))
    for i, (index, data) in enumerate(values):
        buf.entries[i].index = index
        buf.entries[i].data = data
    return buf
