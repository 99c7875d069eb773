/* PVH entry: 32-bit protected mode, paging off, %ebx = hvm_start_info.
 * The Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18) advertises pvh_start. */
	.section .text.entry, "ax"
	.code32
	.globl pvh_start
pvh_start:
	cli
	mov $stack_top, %esp
	push %ebx
	call main32
1:	hlt
	jmp 1b

	.section .note.Xen, "a"
	.balign 4
	.long 4                  /* namesz: "Xen\0" */
	.long 4                  /* descsz */
	.long 18                 /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_start

	.section .bss
	.balign 16
stack:
	.skip 16384
stack_top:
