"""The kernel interface: ctypes mirrors of linux/kvm.h and one thin method
per ioctl.  Policy (what to create, in which order) lives above this package,
in :mod:`kvmlite.vmm`."""

from kvmlite.kvm.ioctl import KvmError
from kvmlite.kvm.system import Kvm, KvmUnavailable
from kvmlite.kvm.vcpu import VcpuFd
from kvmlite.kvm.vm import VmFd

__all__ = ["Kvm", "KvmError", "KvmUnavailable", "VcpuFd", "VmFd"]
