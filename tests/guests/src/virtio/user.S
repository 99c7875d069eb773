/* Entering guest user mode (CPL3) and coming back, for bench.c.
 *
 * user_call(fn, arg, stack_top) saves the callee-saved registers and RSP,
 * then "returns" to CPL3 with iretq (SDM vol. 3A §6.14.3: in 64-bit mode
 * iretq pops RIP, CS, RFLAGS, RSP, SS) at fn(arg) on stack_top, with IF=1
 * and IOPL=3 (so fn may use COM1).  fn ends with "int $USER_EXIT_VECTOR";
 * that handler calls user_resume(), which drops the interrupt frame and
 * returns from user_call on the saved kernel stack. */
#define USER_CS (0x20 | 3)
#define USER_SS (0x18 | 3)
#define RFLAGS_USER 0x3202              /* IF, IOPL=3, bit 1 (always 1) */

	.text
	.code64
	.globl user_call, user_resume
user_call:
	push %rbx
	push %rbp
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rsp, saved_rsp(%rip)
	push $USER_SS
	push %rdx                       /* user stack */
	push $RFLAGS_USER
	push $USER_CS
	push %rdi                       /* fn */
	mov %rsi, %rdi                  /* arg */
	iretq

user_resume:
	mov saved_rsp(%rip), %rsp
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbp
	pop %rbx
	ret

	.section .bss
	.balign 8
saved_rsp:
	.quad 0
