/* A guest whose kernel-mode code uses an instruction that a PVM-based KVM
 * cannot emulate at CPL0 ("lock cmpxchg16b", as Linux's SLUB allocator
 * does).  On hardware KVM it simply runs and the guest exits with status 0
 * through the exit port; under PVM, KVM stops with an emulation failure
 * that kvmlite must explain.  bzImage payload: startup_64 at +0x200. */
#include "../lib/bzhead.h"
	cli
	lea slot(%rip), %rdi
	xor %eax, %eax
	xor %edx, %edx
	mov $1, %ebx
	xor %ecx, %ecx
	lock cmpxchg16b (%rdi)
	mov $0x501, %dx
	xor %al, %al
	out %al, %dx
2:	hlt
	jmp 2b

	.section .data
	.balign 16
slot:
	.quad 0, 0
