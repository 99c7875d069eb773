"""Build kvmlite's purpose-built test guests from the sources in src/.

Guests are freestanding C and assembly, compiled with the machine's gcc, as
and ld at test time; nothing binary is committed.  Outputs are cached in
tests/guests/build/ under a hash of the sources, so a second run costs
nothing.

Formats:
- ``bzimage(name)``: a genuine bzImage.  The protected-mode payload is linked
  at 1 MiB with ``startup_64`` at offset 0x200; the setup part (real-mode
  sectors with the setup header) is written here the way the kernel's
  arch/x86/boot/tools/build.c finishes its own: setup_sects, syssize and
  init_size are filled from the linked payload.
- ``elf32(name)``: an i386 ELF with a PVH note (XEN_ELFNOTE_PHYS32_ENTRY).
- ``pvh64(name)``: an x86-64 ELF with a PVH note; its entry code switches
  to long mode itself, so the same file boots under kvmlite and QEMU.

Compiler flags keep guests to general-purpose registers (-mgeneral-regs-only):
no SSE, which a PVM-based KVM cannot emulate at CPL0.

Run ``python3 -m tests.guests.build`` to build every guest and print paths.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

SRC = Path(__file__).parent / "src"
OUT = Path(__file__).parent / "build"
LIB = ["lib/serial.c", "lib/cmdline.c"]

CFLAGS = ["-ffreestanding", "-fno-pic", "-fno-pie", "-fno-stack-protector", "-nostdlib",
          "-mgeneral-regs-only", "-mno-red-zone", "-fno-asynchronous-unwind-tables",
          "-fno-builtin", "-O2", "-Wall", "-Werror", "-g0"]

# name -> (sources relative to src/, linker script)
# Interrupt-driven 64-bit guests: bootinfo's startup_64 (calls main64(boot_params)),
# the IDT stubs and the APIC/PIT/PIC helpers.
_LONG = ["bootinfo/entry64.S", "lib/idt64.S", "lib/idt64.c", "lib/apic.c"]

BZIMAGE_GUESTS: dict[str, tuple[list[str], str]] = {
    "emufail": (["emufail/entry.S"], "bootinfo/linker64.ld"),
    "counter": (["counter/entry.S", "counter/main.c"], "bootinfo/linker64.ld"),
    "bootinfo": (["bootinfo/entry64.S", "bootinfo/main64.c", "bootinfo/report.c"], "bootinfo/linker64.ld"),
    "serial-echo": ([*_LONG, "serial_echo/main.c"], "bootinfo/linker64.ld"),
    "timers": ([*_LONG, "timers/main.c"], "bootinfo/linker64.ld"),
    "smp": ([*_LONG, "smp/trampoline.S", "smp/tables.c", "smp/main.c"], "bootinfo/linker64.ld"),
    "lifecycle": ([*_LONG, "lifecycle/main.c"], "bootinfo/linker64.ld"),
}
ELF32_GUESTS: dict[str, tuple[list[str], str]] = {
    "bootinfo-pvh": (["bootinfo/entry_pvh.S", "bootinfo/main32.c", "bootinfo/report.c"], "bootinfo/linker32.ld"),
    "pingpong": (["bootinfo/entry_pvh.S", "pingpong/main.c"], "bootinfo/linker32.ld"),
    "first": (["first/entry.S"], "bootinfo/linker32.ld"),
}
# 64-bit ELFs with a PVH note whose 32-bit entry switches to long mode
# itself: they boot under kvmlite and under QEMU (-kernel on -M pc).
_VIRTIO = ["virtio/main.c", "virtio/pci.c", "virtio/mmio.c", "virtio/virtq.c", "virtio/blk.c",
           "virtio/hostile.c", "virtio/bench.c", "virtio/user.c", "virtio/user.S", "virtio/rng.c",
           "virtio/console.c", "virtio/net.c", "virtio/vsock.c"]
PVH64_GUESTS: dict[str, tuple[list[str], str]] = {
    "virtio": (["virtio/entry.S", "lib/idt64.S", "lib/idt64.c", "lib/apic.c", *_VIRTIO], "virtio/linker.ld"),
}


class BuildError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    return [t for t in ("gcc", "ld", "objcopy", "nm") if shutil.which(t) is None]


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return proc.stdout


def _digest(files: list[str], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for rel in sorted(set(files) | {"lib/io.h"} | {str(p.relative_to(SRC)) for p in SRC.rglob("*.h")}):
        h.update(rel.encode())
        h.update((SRC / rel).read_bytes())
    return h.hexdigest()[:16]


def _compile_link(name: str, sources: list[str], script: str, bits: int) -> Path:
    files = sources + LIB + [script]
    key = _digest(files, f"{bits} {' '.join(CFLAGS)} {Path(__file__).read_bytes()!r}")
    outdir = OUT / f"{name}-{key}"
    elf = outdir / f"{name}.elf"
    if elf.exists():
        return elf
    tmp = OUT / f".{name}-{key}.{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    arch = ["-m64", "-mcmodel=small"] if bits == 64 else ["-m32", "-march=i686"]
    objs = []
    for src in sources + LIB:
        obj = tmp / (Path(src).name + ".o")
        _run(["gcc", *arch, *CFLAGS, "-c", str(SRC / src), "-o", str(obj)])
        objs.append(str(obj))
    ld_arch = ["-m", "elf_x86_64"] if bits == 64 else ["-m", "elf_i386"]
    _run(["ld", *ld_arch, "-nostdlib", "-static", "--no-warn-rwx-segments", "-T", str(SRC / script),
          "-o", str(tmp / elf.name), *objs])
    tmp.rename(outdir) if not outdir.exists() else shutil.rmtree(tmp)
    return elf


def _symbol(elf: Path, name: str) -> int:
    for line in _run(["nm", str(elf)]).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise BuildError(f"{elf}: no symbol {name}")


LOAD_ADDR = 0x100000
SETUP_SECTS = 1
HEADER_END = 0x26C            # end of the 2.15 setup header (kernel_info_offset + 4)


def setup_sectors(payload_len: int, init_size: int) -> bytes:
    """The real-mode part of a bzImage: boot sector + setup sectors holding
    the setup header (Documentation/arch/x86/boot.rst, "The real-mode kernel header")."""
    setup = bytearray((SETUP_SECTS + 1) * 512)
    setup[0x1F1] = SETUP_SECTS
    struct.pack_into("<I", setup, 0x1F4, (payload_len + 15) // 16)         # syssize
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)                           # boot_flag
    setup[0x200:0x202] = bytes([0xEB, HEADER_END - 0x202])                 # jmp over the header
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)                           # protocol 2.15
    setup[0x211] = 0x01                                                    # LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, LOAD_ADDR)                        # code32_start
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)                       # initrd_addr_max
    struct.pack_into("<I", setup, 0x230, 0x200000)                         # kernel_alignment
    struct.pack_into("<H", setup, 0x236, 0x01 | 0x02)                      # XLF_KERNEL_64 | ABOVE_4G
    struct.pack_into("<I", setup, 0x238, 2047)                             # cmdline_size
    struct.pack_into("<Q", setup, 0x258, LOAD_ADDR)                        # pref_address
    struct.pack_into("<I", setup, 0x260, init_size)                        # init_size
    return bytes(setup)


def bzimage(name: str) -> Path:
    """Build (or reuse) the bzImage guest ``name``; return its path."""
    sources, script = BZIMAGE_GUESTS[name]
    elf = _compile_link(name, sources, script, 64)
    out = elf.with_suffix(".bzImage")
    if not out.exists():
        payload = elf.with_suffix(".bin")
        _run(["objcopy", "-O", "binary", "--only-section=.head", "--only-section=.text",
              "--only-section=.rodata", "--only-section=.data", str(elf), str(payload)])
        data = payload.read_bytes()
        data += bytes(-len(data) % 16)   # syssize counts 16-byte paragraphs, as build.c pads
        init_size = _symbol(elf, "_end") - LOAD_ADDR
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(setup_sectors(len(data), init_size) + data)
        tmp.rename(out)
    return out


def elf32(name: str) -> Path:
    sources, script = ELF32_GUESTS[name]
    return _compile_link(name, sources, script, 32)


def pvh64(name: str) -> Path:
    sources, script = PVH64_GUESTS[name]
    return _compile_link(name, sources, script, 64)


def build_all() -> dict[str, Path]:
    out = {name: bzimage(name) for name in BZIMAGE_GUESTS}
    out.update({name: elf32(name) for name in ELF32_GUESTS})
    out.update({name: pvh64(name) for name in PVH64_GUESTS})
    return out


if __name__ == "__main__":
    for guest, path in build_all().items():
        print(f"{guest}: {path}")
