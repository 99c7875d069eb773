/* Protected-mode part of a bzImage (lib/bzhead.h): startup_32 (offset 0)
 * is never used by kvmlite; startup_64 (offset 0x200) is the 64-bit boot
 * protocol entry: long mode, identity paging, %rsi = boot_params. */
#include "../lib/bzhead.h"
	cli
	lea stack_top(%rip), %rsp
	mov %rsi, %rdi
	call main64
2:	hlt
	jmp 2b

	.section .bss
	.balign 16
stack:
	.skip 16384
stack_top:
