/* The start of a bzImage's protected-mode part, loaded at 1 MiB (included by
 * each bzImage guest's entry.S, before its startup_64 body).  startup_32
 * (offset 0) is never used by kvmlite; startup_64 (offset 0x200) is the
 * 64-bit boot protocol entry: long mode, identity paging, %rsi =
 * boot_params. */
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
