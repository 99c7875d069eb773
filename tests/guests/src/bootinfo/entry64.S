/* Protected-mode part of a bzImage, loaded at 1 MiB.  startup_32 (offset 0)
 * is never used by kvmlite; startup_64 (offset 0x200) is the 64-bit boot
 * protocol entry: long mode, identity paging, %rsi = boot_params. */
	.section .head, "ax"
	.code32
	.globl startup_32
startup_32:
	cli
1:	hlt
	jmp 1b

	.code64
	.org 0x200
	.globl startup_64
startup_64:
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
