/* A guest that counts forever: %rbx counts loop iterations and every
 * 2^14 iterations the count goes out on COM1 as "tick N".  Control-plane
 * tests pause it (ticks stop), resume it (ticks go on) and read its
 * registers (RIP lies between count_loop and count_loop_end).
 * bzImage payload: startup_64 at +0x200, long mode, paging on. */
#include "../lib/bzhead.h"
	cli
	lea stack_top(%rip), %rsp
	xor %ebx, %ebx
	.globl count_loop
count_loop:
	inc %rbx
	test $0x3fff, %ebx
	jnz count_loop
	mov %rbx, %rdi
	call report_tick
	jmp count_loop
	.globl count_loop_end
count_loop_end:

	.section .bss
	.balign 16
	.skip 16384
stack_top:
