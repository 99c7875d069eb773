/* PVH entry of the virtio guest, which is a 64-bit ELF: the same file boots
 * under kvmlite (-k, PVH) and under QEMU (-kernel on -M pc, through
 * SeaBIOS's PVH option ROM), which cannot enter a bzImage without
 * real-mode setup code.
 *
 * PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h, "x86/HVM
 * direct boot ABI"): 32-bit protected mode, paging off, flat CS/DS,
 * %ebx = struct hvm_start_info.  From there this follows SDM vol. 3A §9.8.5
 * "Initializing IA-32e Mode": CR4.PAE, CR3, EFER.LME, CR0.PG, then a far
 * jump to a 64-bit code segment.
 *
 * The page tables are static: 4 GiB identity-mapped with 2 MiB pages
 * (§4.5, Table 4-18, PDE with PS=1), the top GiB (PCI BARs, virtio-mmio,
 * IOAPIC, LAPIC) uncached (PCD|PWT).  Every entry also has U/S set, which
 * costs nothing at CPL0. */
#define PTE_P 0x01
#define PTE_RW 0x02
#define PTE_US 0x04
#define PTE_PWT 0x08
#define PTE_PCD 0x10
#define PTE_PS 0x80
#define MSR_EFER 0xC0000080
#define EFER_LME 0x100
#define CR4_PAE 0x20
#define CR0_PE_PG 0x80000001
#define SEL_CODE64 0x08
#define SEL_DATA 0x10

	.section .text.entry, "ax"
	.code32
	.globl pvh_start
pvh_start:
	cli
	cld
	mov %ebx, %edi                  /* hvm_start_info: first argument of virtio_main */
	mov $stack_top, %esp
	lgdt gdt_desc
	mov %cr4, %eax
	or $CR4_PAE, %eax
	mov %eax, %cr4
	mov $pml4, %eax
	mov %eax, %cr3
	mov $MSR_EFER, %ecx
	rdmsr
	or $EFER_LME, %eax
	wrmsr
	mov %cr0, %eax
	or $CR0_PE_PG, %eax
	mov %eax, %cr0
	ljmp $SEL_CODE64, $long_mode

	.code64
long_mode:
	mov $SEL_DATA, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov %ax, %fs
	mov %ax, %gs
	mov $stack_top, %rsp
	mov %edi, %edi                  /* SDM §9.8.5.4: upper halves are undefined after the switch */
	call virtio_main
1:	cli
	hlt
	jmp 1b

	/* In .data: ltr sets the busy bit in the TSS descriptor (SDM vol. 3A
	 * §7.2.3), which user.c fills in at run time. */
	.section .data
	.balign 16
	.globl gdt
gdt:
	.quad 0
	.quad 0x00af9a000000ffff        /* 0x08: 64-bit code (L=1), DPL 0 */
	.quad 0x00cf92000000ffff        /* 0x10: data, base 0, 4 GiB */
	.quad 0x00cff2000000ffff        /* 0x18: data, DPL 3 */
	.quad 0x00affa000000ffff        /* 0x20: 64-bit code, DPL 3 */
	.quad 0, 0                      /* 0x28: 64-bit TSS (16 bytes) */
gdt_desc:
	.word gdt_desc - gdt - 1
	.long gdt

	.section .data
	.balign 4096
pml4:
	.quad pdpt + PTE_P + PTE_RW + PTE_US
	.fill 511, 8, 0
pdpt:
	.quad pd + 0x0000 + PTE_P + PTE_RW + PTE_US
	.quad pd + 0x1000 + PTE_P + PTE_RW + PTE_US
	.quad pd + 0x2000 + PTE_P + PTE_RW + PTE_US
	.quad pd + 0x3000 + PTE_P + PTE_RW + PTE_US
	.fill 508, 8, 0
pd:
	i = 0
	.rept 2048
	.if i >= 1536
	.quad (i << 21) + PTE_P + PTE_RW + PTE_US + PTE_PS + PTE_PWT + PTE_PCD
	.else
	.quad (i << 21) + PTE_P + PTE_RW + PTE_US + PTE_PS
	.endif
	i = i + 1
	.endr

	/* XEN_ELFNOTE_PHYS32_ENTRY (18): the 32-bit entry point.  In a 64-bit
	 * ELF the descriptor is 8 bytes, as Linux's vmlinux has it (QEMU reads
	 * a pointer-sized value there). */
	.section .note.Xen, "a"
	.balign 4
	.long 4                         /* namesz: "Xen\0" */
	.long 8                         /* descsz */
	.long 18                        /* type */
	.asciz "Xen"
	.quad pvh_start

	.section .bss
	.balign 16
stack:
	.skip 32768
stack_top:
