/* The smallest useful guest: its first instruction writes '!' to COM1, then
 * it exits through the kvmlite exit port (0x501).  The start-up benchmark
 * times process start to that first byte.  PVH entry (32-bit, paging off). */
	.section .text.entry, "ax"
	.code32
	.globl pvh_start
pvh_start:
	mov $0x3f8, %dx
	mov $'!', %al
	out %al, %dx
	mov $'\n', %al
	out %al, %dx
	mov $0x501, %dx
	xor %al, %al
	out %al, %dx
1:	hlt
	jmp 1b

	.section .note.Xen, "a"
	.balign 4
	.long 4
	.long 4
	.long 18                 /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_start
