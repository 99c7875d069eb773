"""``kvmlite-exit N``: a tiny static x86-64 program, generated here, that
writes the byte N to kvmlite's guest exit port.

Why a program: busybox has no applet for port I/O, and ``/dev/port`` exists
only when the kernel has CONFIG_DEVPORT, which Debian's cloud kernel lacks.
``ioperm(2)`` (CONFIG_X86_IOPL_IOPERM, on in Debian's kernels) lets a root
process use ``out`` on one port.  The guest init uses ``/dev/port`` when it
exists and this program otherwise.

Exit status: 2 for a missing or bad argument (not a decimal 0..255), 1 when
``ioperm`` fails, 0 after the write (normally the VM is gone by then).

The machine code is listed with its assembly (Intel syntax) so it can be
checked with ``objdump -D -b binary -m i386:x86-64``.
"""

from __future__ import annotations

import struct

from kvmlite.arch.x86.layout import PORT_GUEST_EXIT

LOAD_ADDR = 0x400000
SYS_IOPERM = 173   # arch/x86/entry/syscalls/syscall_64.tbl
SYS_EXIT = 60
EHDR_SIZE = 64
PHDR_SIZE = 56


def _imm32(value: int) -> bytes:
    return struct.pack("<I", value)


def machine_code(port: int = PORT_GUEST_EXIT) -> bytes:
    """``_start``: parse argv[1], ``ioperm(port, 1, 1)``, ``out dx, al``, exit."""
    return b"".join((
        b"\x48\x8b\x74\x24\x10",                 # 00 mov rsi, [rsp+16]   ; argv[1]
        b"\xbf" + _imm32(2),                     # 05 mov edi, 2          ; usage status
        b"\x48\x85\xf6",                         # 0a test rsi, rsi
        b"\x74\x56",                             # 0d je exit
        b"\x31\xc0",                             # 0f xor eax, eax        ; value
        b"\x31\xc9",                             # 11 xor ecx, ecx        ; digit count
        b"\x0f\xb6\x16",                         # 13 parse: movzx edx, byte [rsi]
        b"\x85\xd2",                             # 16 test edx, edx
        b"\x74\x1b",                             # 18 je parsed
        b"\x83\xea\x30",                         # 1a sub edx, '0'
        b"\x83\xfa\x09",                         # 1d cmp edx, 9
        b"\x77\x43",                             # 20 ja exit             ; not a digit
        b"\x6b\xc0\x0a",                         # 22 imul eax, eax, 10
        b"\x01\xd0",                             # 25 add eax, edx
        b"\x3d" + _imm32(255),                   # 27 cmp eax, 255
        b"\x77\x37",                             # 2c ja exit             ; too large
        b"\x48\xff\xc6",                         # 2e inc rsi
        b"\xff\xc1",                             # 31 inc ecx
        b"\xeb\xde",                             # 33 jmp parse
        b"\x85\xc9",                             # 35 parsed: test ecx, ecx
        b"\x74\x2c",                             # 37 je exit             ; empty
        b"\x89\xc3",                             # 39 mov ebx, eax
        b"\xbf" + _imm32(port),                  # 3b mov edi, port
        b"\xbe" + _imm32(1),                     # 40 mov esi, 1          ; one port
        b"\xba" + _imm32(1),                     # 45 mov edx, 1          ; turn on
        b"\xb8" + _imm32(SYS_IOPERM),            # 4a mov eax, SYS_ioperm
        b"\x0f\x05",                             # 4f syscall
        b"\xbf" + _imm32(1),                     # 51 mov edi, 1
        b"\x48\x85\xc0",                         # 56 test rax, rax
        b"\x75\x0a",                             # 59 jne exit            ; ioperm failed
        b"\x89\xd8",                             # 5b mov eax, ebx
        b"\xba" + _imm32(port),                  # 5d mov edx, port
        b"\xee",                                 # 62 out dx, al
        b"\x31\xff",                             # 63 xor edi, edi
        b"\xb8" + _imm32(SYS_EXIT),              # 65 exit: mov eax, SYS_exit
        b"\x0f\x05",                             # 6a syscall
    ))


def _elf_header(entry: int) -> bytes:
    """elf.h Elf64_Ehdr for an x86-64 ET_EXEC with one program header."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)   # ELFCLASS64, LSB, EV_CURRENT, SYSV
    return ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, entry, EHDR_SIZE, 0, 0,
                               EHDR_SIZE, PHDR_SIZE, 1, 0, 0, 0)


def _program_header(size: int) -> bytes:
    """elf.h Elf64_Phdr: one PT_LOAD, R+X, mapping the whole file."""
    return struct.pack("<IIQQQQQQ", 1, 5, 0, LOAD_ADDR, LOAD_ADDR, size, size, 0x1000)


def build(port: int = PORT_GUEST_EXIT) -> bytes:
    """The complete static ELF executable."""
    code = machine_code(port)
    start = EHDR_SIZE + PHDR_SIZE
    return _elf_header(LOAD_ADDR + start) + _program_header(start + len(code)) + code
