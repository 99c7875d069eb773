/* A 256-entry 64-bit IDT of interrupt gates (SDM vol. 3A §6.14.1, Figure
 * 6-8: offset 15:0, selector, IST, type/attributes, offset 31:16, offset
 * 63:32).  Gates use the code selector the CPU is running on, so the same
 * table serves the boot vCPU (kvmlite's GDT, selector 0x10) and APs brought
 * up through a trampoline GDT with the same layout. */
#include "x86.h"

#define GATE_INTERRUPT 0x8E        /* P=1, DPL=0, type 0xE: 64-bit interrupt gate */

struct gate {
	u16 off_lo, sel;
	u8 ist, attr;
	u16 off_mid;
	u32 off_hi, zero;
} __attribute__((packed));

extern char isr_stubs[];
static struct gate idt[256] __attribute__((aligned(16)));
static irq_handler_t handlers[256];

void idt_load(void)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) desc = { sizeof(idt) - 1, (u64)(uptr)idt };
	__asm__ volatile("lidt %0" : : "m"(desc));
}

void idt_init(void)
{
	u16 cs = read_cs();
	for (int i = 0; i < 256; i++) {
		u64 a = (u64)(uptr)isr_stubs + 16u * (u64)i;
		idt[i] = (struct gate){ (u16)a, cs, 0, GATE_INTERRUPT, (u16)(a >> 16), (u32)(a >> 32), 0 };
	}
	idt_load();
}

void idt_set_handler(u8 vector, irq_handler_t fn)
{
	handlers[vector] = fn;
}

void idt_dispatch(struct idt_frame *f)
{
	irq_handler_t fn = handlers[f->vector & 0xff];
	if (fn) {
		fn(f);
		return;
	}
	puts("\nidt: unexpected vector ");
	put_dec(f->vector);
	puts(" error ");
	put_hex(f->error);
	puts(" rip ");
	put_hex(f->rip);
	puts("\n");
	guest_exit(EXIT_UNEXPECTED_VECTOR);
}
