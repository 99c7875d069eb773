"""kvmlite: a KVM virtual machine monitor in Python.

The names below are imported on first use, so ``import kvmlite`` stays
cheap (the sandbox agent imports this package inside the guest)::

    from kvmlite import Sandbox          # the sandbox SDK (docs/sdk.md)
    from kvmlite import Vm, VmConfig     # embed a VM: Vm(VmConfig(kernel=...)).run()
"""

__version__ = "0.1.0"

_LAZY = {
    "Sandbox": "kvmlite.sdk", "SandboxInfo": "kvmlite.sdk", "SandboxError": "kvmlite.sdk",
    "CommandExitError": "kvmlite.sdk", "CommandTimeoutError": "kvmlite.sdk",
    "AgentConnectionError": "kvmlite.sdk",
    "Vm": "kvmlite.vmm.vm", "VmResult": "kvmlite.vmm.vm",
    "VmConfig": "kvmlite.vmm.config", "DiskConfig": "kvmlite.vmm.config", "NetConfig": "kvmlite.vmm.config",
    "ShareConfig": "kvmlite.vmm.config", "VsockConfig": "kvmlite.vmm.config",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kvmlite' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
