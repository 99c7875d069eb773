/* AP start-up trampoline.  The BSP copies trampoline_start..trampoline_end
 * to TRAMP_BASE (below 1 MiB, 4 KiB aligned) and patches tramp_cr3,
 * tramp_efer and tramp_entry in the copy; the STARTUP IPI's vector is
 * TRAMP_BASE >> 12.
 *
 * SDM vol. 3A §8.4.4.1 / §9.1.4 ("Typical AP Initialization Sequence",
 * "First Instruction Executed"): an AP leaves wait-for-SIPI in real mode at
 * CS = vector << 8, IP = 0.  It then follows §9.9.1 (switching to
 * protected mode: load a GDT, set CR0.PE, far jump) and §9.8.5
 * (initializing IA-32e mode: CR4.PAE, CR3, EFER.LME, CR0.PG, far jump to a
 * 64-bit code segment).  The page tables are the ones the VMM built for the
 * boot vCPU (the BSP passes its CR3), identity-mapping the first 4 GiB. */
#define TRAMP_BASE 0x10000
#define SMP_MAX_CPUS 16                  /* = smp.h */
/* Absolute address of a trampoline label once copied to TRAMP_BASE. */
#define T(label) (TRAMP_BASE + (label) - trampoline_start)

	.section .rodata.trampoline, "a"
	.globl trampoline_start, trampoline_end, tramp_cr3, tramp_efer, tramp_entry
	.code16
trampoline_start:
	cli
	cld
	mov %cs, %ax
	mov %ax, %ds
	lgdtl tramp_gdt_desc - trampoline_start      /* DS-relative, DS = CS */
	mov %cr0, %eax
	and $0x9fffffff, %eax                         /* caches on: clear CD, NW */
	or $1, %eax                                   /* CR0.PE */
	mov %eax, %cr0
	ljmpl $0x08, $T(tramp_pm32)

	.code32
tramp_pm32:
	mov $0x18, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov %ax, %fs
	mov %ax, %gs
	mov %cr4, %eax
	or $0x20, %eax                                /* CR4.PAE */
	mov %eax, %cr4
	mov T(tramp_cr3), %eax
	mov %eax, %cr3
	mov $0xC0000080, %ecx                         /* IA32_EFER */
	mov T(tramp_efer), %eax
	xor %edx, %edx
	wrmsr                                         /* LME (and NXE if the BSP has it) */
	mov %cr0, %eax
	or $0x80000000, %eax                          /* CR0.PG: IA-32e mode active */
	mov %eax, %cr0
	ljmp $0x10, $T(tramp_lm64)

	.code64
tramp_lm64:
	mov T(tramp_entry), %rax
	jmp *%rax

	.balign 8
tramp_gdt:                                       /* same selectors as kvmlite's boot GDT */
	.quad 0
	.quad 0x00cf9a000000ffff                      /* 0x08: 32-bit code, base 0, 4 GiB */
	.quad 0x00af9a000000ffff                      /* 0x10: 64-bit code (L=1) */
	.quad 0x00cf92000000ffff                      /* 0x18: data, base 0, 4 GiB */
tramp_gdt_desc:
	.word tramp_gdt_desc - tramp_gdt - 1
	.long T(tramp_gdt)
	.balign 8
tramp_cr3:
	.long 0
tramp_efer:
	.long 0
tramp_entry:
	.quad 0
trampoline_end:

/* 64-bit AP entry, in place in the image: a stack per APIC ID, then
 * ap_main(apic_id).  The APIC ID comes from the local APIC ID register
 * (SDM vol. 3A §10.4.6, bits 31:24 at 0xFEE00020). */
	.text
	.globl ap_entry64
ap_entry64:
	mov $0xFEE00020, %eax
	mov (%rax), %eax
	shr $24, %eax
	cmp $SMP_MAX_CPUS, %eax
	jae 1f
	lea 1(%rax), %rdx
	shl $12, %rdx                                 /* 4 KiB per AP */
	lea ap_stacks(%rip), %rsp
	add %rdx, %rsp
	mov %eax, %edi
	call ap_main
1:	cli
	hlt
	jmp 1b
