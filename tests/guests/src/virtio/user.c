/* Guest user mode for the benchmark's request loop.
 *
 * On this machine's PVM-based KVM, guest kernel-mode (CPL0) instructions
 * are emulated at ~0.5 us each while user-mode (CPL3) code runs natively,
 * so the loop that builds and reaps requests runs at CPL3 and enters the
 * kernel only to sleep (sti; hlt until the used ring moves) and to finish.
 * Every page is mapped with U/S set (entry.S), so user code reaches the
 * rings, the buffers and the device's MMIO registers directly.
 *
 * System calls are "ud2; .byte N": the invalid-opcode exception (#UD,
 * vector 6) is the way in.  "int n" would be the usual one, but this PVM
 * raises #UD for "int n" at CPL3 (seen here: int $0x81 from user mode
 * arrived as vector 6 at the int), while exceptions from CPL3 are
 * delivered normally.  The handler checks that the #UD came from CPL3 at
 * a ud2 followed by a known call number, does the call, and resumes after
 * it.
 *
 * Set-up (SDM vol. 3A): a 64-bit TSS whose RSP0 is the stack interrupts
 * and exceptions from CPL3 switch to (§7.7, §6.14.5), its descriptor in the
 * GDT (§7.2.3, a 16-byte system descriptor, type 9), and ltr. */
#include "virtio.h"

#define SEL_TSS 0x28
#define GDT_TSS_INDEX 5
#define TSS_AVAILABLE_64 0x89ull        /* P=1, DPL=0, type 9 */
#define KERNEL_STACK 32768
#define VEC_INVALID_OPCODE 6
#define USER_CALL_WAIT 1
#define USER_CALL_EXIT 2
#define STR(x) #x
#define XSTR(x) STR(x)

struct tss64 {
	u32 reserved0;
	u64 rsp0, rsp1, rsp2;
	u64 reserved1;
	u64 ist[7];
	u64 reserved2;
	u16 reserved3, iomap_base;
} __attribute__((packed));

extern u64 gdt[];
void user_resume(void) __attribute__((noreturn));

static struct tss64 tss __attribute__((aligned(16)));
static int (*wait_cond)(void *);
static int ready;

/* #UD: a system call from CPL3 ("ud2; .byte call"), else a real #UD. */
static void invalid_opcode(struct idt_frame *f)
{
	const u8 *ip = (const u8 *)(uptr)f->rip;
	if ((f->cs & 3) != 3 || ip[0] != 0x0F || ip[1] != 0x0B) {
		puts("\nvirtio: invalid opcode at ");
		put_hex(f->rip);
		puts("\n");
		guest_exit(EXIT_UNEXPECTED_VECTOR);
	}
	switch (ip[2]) {
	case USER_CALL_WAIT:
		f->rax = (u64)wait_until(wait_cond, (void *)(uptr)f->rdi, f->rsi);
		break;
	case USER_CALL_EXIT:
		user_resume();
	default:
		puts("\nvirtio: unknown user call\n");
		guest_exit(EXIT_UNEXPECTED_VECTOR);
	}
	f->rip += 3;
}

void user_init(int (*cond)(void *))
{
	wait_cond = cond;
	if (ready)
		return;
	u8 *stack = alloc_pages(KERNEL_STACK);
	tss.rsp0 = (u64)(uptr)(stack + KERNEL_STACK);
	tss.iomap_base = sizeof(tss);           /* no I/O bitmap: IOPL decides */
	u64 base = (u64)(uptr)&tss, limit = sizeof(tss) - 1;
	gdt[GDT_TSS_INDEX] = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (TSS_AVAILABLE_64 << 40)
			     | (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56);
	gdt[GDT_TSS_INDEX + 1] = base >> 32;
	__asm__ volatile("ltr %w0" : : "r"(SEL_TSS));
	idt_set_handler(VEC_INVALID_OPCODE, invalid_opcode);
	ready = 1;
}

/* From CPL3: sleep until cond(arg) or `timeout` ticks; 1 if cond held. */
int user_sleep(void *arg, u64 timeout)
{
	u64 rax;
	__asm__ volatile("ud2; .byte " XSTR(USER_CALL_WAIT) : "=a"(rax) : "D"(arg), "S"(timeout) : "memory");
	return (int)rax;
}

void user_return(void)
{
	__asm__ volatile("ud2; .byte " XSTR(USER_CALL_EXIT) ::: "memory");
	__builtin_unreachable();
}
