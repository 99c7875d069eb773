/* Local APIC, I/O APIC, 8259A and 8254 set-up used by the interrupt-driven
 * guests.  Register contracts are cited in x86.h. */
#include "x86.h"

/* SDM vol. 3A §10.9: a spurious-interrupt vector sets no ISR bit, so its
 * handler must not write EOI. */
static void spurious(struct idt_frame *f) { (void)f; }

void lapic_enable(u8 spurious_vector)
{
	idt_set_handler(spurious_vector, spurious);
	lapic_write(LAPIC_TPR, 0);                        /* accept every priority class */
	lapic_write(LAPIC_SVR, LAPIC_SVR_ENABLE | spurious_vector);
}

/* SDM vol. 3A §10.6.1: write the destination to ICR[63:32] first; the write
 * to ICR[31:0] sends the IPI. */
void lapic_send_ipi(u32 apic_id, u32 icr_low)
{
	while (lapic_read(LAPIC_ICR_LO) & ICR_BUSY)
		cpu_relax();
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr_low);
}

/* 82093AA §3.1: select a register through IOREGSEL, then access IOWIN. */
u32 ioapic_read(u32 reg)
{
	wr32(IOAPIC_BASE, reg);
	return rd32(IOAPIC_BASE + 0x10);
}

void ioapic_write(u32 reg, u32 v)
{
	wr32(IOAPIC_BASE, reg);
	wr32(IOAPIC_BASE + 0x10, v);
}

/* 82093AA §3.2.4 (IOREDTBL): bits 7:0 vector, 10:8 delivery mode (000
 * fixed), 11 destination mode (0 physical), 13 polarity (0 high), 15
 * trigger mode (0 edge), 16 mask; bits 63:56 destination APIC ID. */
void ioapic_route(u32 pin, u8 vector, u32 dest_apic_id)
{
	ioapic_write(0x10 + 2 * pin, IOREDTBL_MASKED);
	ioapic_write(0x11 + 2 * pin, dest_apic_id << 24);
	ioapic_write(0x10 + 2 * pin, vector);
}

/* 8259A datasheet, "Initialization Command Words": ICW1 (0x11: edge,
 * cascade, ICW4 follows), ICW2 (vector base), ICW3 (master: slave on IR2;
 * slave: cascade identity 2), ICW4 (8086 mode); then OCW1 = 0xFF masks every
 * input.  Vectors 0xF0-0xFF keep a stray PIC interrupt recognisable. */
void pic_disable(void)
{
	outb(0x20, 0x11);
	outb(0xA0, 0x11);
	outb(0x21, 0xF0);
	outb(0xA1, 0xF8);
	outb(0x21, 0x04);
	outb(0xA1, 0x02);
	outb(0x21, 0x01);
	outb(0xA1, 0x01);
	outb(0x21, 0xFF);
	outb(0xA1, 0xFF);
}

/* 8254 datasheet, "Control Word Format": 0x34 = counter 0 (SC=00), LSB
 * then MSB (RW=11), mode 2 rate generator (M=010), binary (BCD=0).  Counter
 * 0's OUT is ISA IRQ0. */
void pit_start_periodic(u32 hz)
{
	u32 reload = (PIT_HZ + hz / 2) / hz;
	outb(0x43, 0x34);
	outb(0x40, (u8)reload);
	outb(0x40, (u8)(reload >> 8));
}

/* --- watchdog on the LAPIC timer ---
 * SDM vol. 3A §10.5.4: the timer counts down at the bus clock divided by
 * the divide configuration.  KVM's emulated APIC bus runs at 1 GHz
 * (arch/x86/kvm/lapic.h: APIC_BUS_CYCLE_NS_DEFAULT = 1), so with divide-by-16
 * an initial count of 625000 is 10 ms.  The watchdog only bounds how long a
 * broken guest hangs, so being off by a factor is harmless. */
#define LAPIC_TICKS_10MS_DIV16 625000u
#define VEC_WATCHDOG 0xEE

static volatile u32 wd_ticks, wd_limit;
static void (*wd_expired)(void);

static void watchdog_tick(struct idt_frame *f)
{
	(void)f;
	lapic_eoi();
	if (++wd_ticks >= wd_limit) {
		lapic_write(LAPIC_LVT_TIMER, LAPIC_LVT_MASKED);
		wd_expired();
		guest_exit(EXIT_TIMEOUT);
	}
}

void watchdog_start(u32 seconds, void (*expired)(void))
{
	wd_limit = seconds * 100;
	wd_expired = expired;
	idt_set_handler(VEC_WATCHDOG, watchdog_tick);
	lapic_write(LAPIC_TIMER_DIV, LAPIC_DIV_16);
	lapic_write(LAPIC_LVT_TIMER, LAPIC_TIMER_PERIODIC | VEC_WATCHDOG);
	lapic_write(LAPIC_TIMER_INIT, LAPIC_TICKS_10MS_DIV16);
}
