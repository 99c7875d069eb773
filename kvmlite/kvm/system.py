"""The ``/dev/kvm`` system file descriptor."""

from __future__ import annotations

import ctypes
import errno
import os

from kvmlite.kvm import structs as s
from kvmlite.kvm import uapi
from kvmlite.kvm.ioctl import KvmError, ioctl
from kvmlite.kvm.vm import VmFd

DEFAULT_DEVICE = "/dev/kvm"


class KvmUnavailable(KvmError):
    """/dev/kvm is missing, not permitted, or speaks another API version."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__("open", err)
        self.args = (message,)

    def __str__(self) -> str:
        return self.args[0]


class Kvm:
    """An open ``/dev/kvm``: one method per system ioctl."""

    def __init__(self, path: str = DEFAULT_DEVICE) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(
                f"{path} does not exist: this machine has no KVM (load kvm_intel/kvm_amd, "
                "or enable virtualisation)", errno.ENOENT) from None
        except PermissionError:
            raise KvmUnavailable(
                f"{path}: permission denied (run as root or join the group that owns {path})",
                errno.EACCES) from None
        except OSError as exc:
            raise KvmUnavailable(f"{path}: {exc.strerror}", exc.errno or errno.EIO) from None
        version = self.api_version()
        if version != uapi.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmUnavailable(f"{path}: KVM API version {version}, kvmlite needs "
                                 f"{uapi.KVM_API_VERSION}", errno.EINVAL)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Kvm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def api_version(self) -> int:
        return ioctl(self.fd, uapi.KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        """Return the value of capability ``cap`` (0 when absent)."""
        return ioctl(self.fd, uapi.KVM_CHECK_EXTENSION, cap)

    def vcpu_mmap_size(self) -> int:
        return ioctl(self.fd, uapi.KVM_GET_VCPU_MMAP_SIZE)

    def max_vcpus(self) -> int:
        """The largest vCPU count a VM may have (KVM_CAP_MAX_VCPUS, falling
        back to KVM_CAP_NR_VCPUS, then 4, as api.rst says)."""
        return (self.check_extension(uapi.KVM_CAP_MAX_VCPUS)
                or self.check_extension(uapi.KVM_CAP_NR_VCPUS) or 4)

    def supported_cpuid(self, max_entries: int = 256) -> list[s.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can offer a guest."""
        return get_cpuid2(self.fd, uapi.KVM_GET_SUPPORTED_CPUID, max_entries)

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: MSRs KVM saves and restores for a guest."""
        header = s.kvm_msr_list(nmsrs=0)
        try:
            ioctl(self.fd, uapi.KVM_GET_MSR_INDEX_LIST, header)
        except KvmError as exc:
            if exc.errno != errno.E2BIG:
                raise
        count = header.nmsrs
        buf = (ctypes.c_uint32 * (count + 1))(count)
        ioctl(self.fd, uapi.KVM_GET_MSR_INDEX_LIST, buf)
        return list(buf[1:1 + buf[0]])

    def create_vm(self) -> VmFd:
        return VmFd(ioctl(self.fd, uapi.KVM_CREATE_VM, 0), self)


def get_cpuid2(fd: int, request: int, max_entries: int = 256) -> list[s.kvm_cpuid_entry2]:
    """A ``struct kvm_cpuid2`` ioctl that fills the entries (KVM_GET_SUPPORTED_CPUID
    on /dev/kvm, KVM_GET_CPUID2 on a vCPU), growing the buffer while KVM answers E2BIG."""
    while True:
        buf = _Cpuid2Buffer(max_entries)
        try:
            ioctl(fd, request, buf.raw)
        except KvmError as exc:
            if exc.errno == errno.E2BIG and max_entries < 4096:
                max_entries *= 2
                continue
            raise
        return buf.entries()


class _Cpuid2Buffer:
    """A ``struct kvm_cpuid2`` followed by room for ``n`` entries."""

    def __init__(self, n: int) -> None:
        class Buf(ctypes.Structure):
            _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32),
                        ("entries", s.kvm_cpuid_entry2 * n)]
        self.raw = Buf(nent=n)

    @classmethod
    def of(cls, entries: list[s.kvm_cpuid_entry2]) -> "_Cpuid2Buffer":
        buf = cls(len(entries))
        for i, entry in enumerate(entries):
            buf.raw.entries[i] = entry
        return buf

    def entries(self) -> list[s.kvm_cpuid_entry2]:
        return [s.kvm_cpuid_entry2.from_buffer_copy(self.raw.entries[i]) for i in range(self.raw.nent)]
