/* 64-bit interrupt entry: one 16-byte stub per vector, all funnelling into
 * isr_common, which saves the caller-saved registers, calls
 * idt_dispatch(struct idt_frame *) (lib/idt64.c) and returns with iretq.
 *
 * SDM vol. 3A §6.14.2 "64-Bit Mode Stack Frame": the CPU aligns RSP to 16,
 * then pushes SS, RSP, RFLAGS, CS, RIP and, for vectors 8, 10-14, 17, 21,
 * 29 and 30, an error code (§6.15).  Stubs of the other vectors push a zero
 * in its place so the frame is always the same shape (struct idt_frame). */
	.text
	.code64
	.globl isr_stubs
	.balign 16
isr_stubs:
	vec = 0
	.rept 256
	.balign 16
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	pushq $vec
	.else
	pushq $0
	pushq $vec
	.endif
	jmp isr_common
	vec = vec + 1
	.endr

isr_common:
	push %rax
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11
	mov %rsp, %rdi          /* 40 + 16 + 72 bytes above a 16-aligned RSP: aligned */
	cld
	call idt_dispatch
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rax
	add $16, %rsp           /* vector and error code */
	iretq
