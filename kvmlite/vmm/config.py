"""A VM's whole configuration, frozen.

The CLI, the Python API and the control socket all build a :class:`VmConfig`
and hand it to :class:`kvmlite.vmm.vm.Vm`; nothing else shapes a VM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kvmlite.errors import ConfigError

MiB = 1 << 20
MIN_MEM_MIB = 16
DEFAULT_MEM_MIB = 256
CONSOLES = ("serial", "virtio")
TRANSPORTS = ("pci", "mmio")


@dataclass(frozen=True)
class DiskConfig:
    path: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> "DiskConfig":
        """lkvm syntax: ``PATH[,ro]``."""
        path, *opts = text.split(",")
        if not path:
            raise ConfigError(f"--disk {text!r}: missing image path")
        read_only = False
        for opt in opts:
            if opt == "ro":
                read_only = True
            elif opt:
                raise ConfigError(f"--disk {text!r}: unknown option {opt!r} (only 'ro' is known)")
        return cls(path, read_only)


@dataclass(frozen=True)
class VmConfig:
    kernel: str
    initrd: str | None = None
    params: str = ""                 # appended to the default command line
    mem_mib: int = DEFAULT_MEM_MIB
    cpus: int = 1
    name: str | None = None
    console: str = "serial"
    disks: tuple[DiskConfig, ...] = ()
    rng: bool = False
    virtio_transport: str = "pci"
    hugepages: bool = False
    default_cmdline: bool = True     # False: use params as the whole command line
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.mem_mib < MIN_MEM_MIB:
            raise ConfigError(f"-m {self.mem_mib}: a guest needs at least {MIN_MEM_MIB} MiB")
        if self.cpus < 1:
            raise ConfigError(f"-c {self.cpus}: a guest needs at least one vCPU")
        if self.console not in CONSOLES:
            raise ConfigError(f"--console {self.console!r}: choose one of {', '.join(CONSOLES)}")
        if self.virtio_transport not in TRANSPORTS:
            raise ConfigError(f"--virtio-transport {self.virtio_transport!r}: choose one of "
                              f"{', '.join(TRANSPORTS)}")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.name):
            raise ConfigError(f"--name {self.name!r}: use 1-64 letters, digits, '.', '_' or '-'")

    @property
    def mem_bytes(self) -> int:
        return self.mem_mib * MiB


_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_mem_mib(text: str) -> int:
    """``-m`` values: a number of MiB (lkvm), or with a K/M/G/T suffix."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"-m {text!r}: not a size (e.g. 512, 512M, 2G)")
    value, unit = int(m.group(1)), (m.group(2) or "M").upper()
    scaled = value * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    if scaled % MiB:
        raise ConfigError(f"-m {text!r}: memory size must be a whole number of MiB")
    return scaled // MiB
