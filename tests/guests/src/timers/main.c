/* Timer interrupts into the guest's IDT (long mode, bzImage): the 8254 PIT
 * through the IOAPIC and the local APIC timer, both periodic at hz=N
 * (default 100).
 *
 * PIT counter 0's output is ISA IRQ 0, which PC firmware tables map to
 * IOAPIC pin 2 (kvmlite's MADT: Interrupt Source Override IRQ0 -> GSI 2;
 * MP table: IRQ0 on pin 2).  The guest routes pin 2 and, to tell a wrong
 * wiring apart from a dead timer, pin 0 to separate vectors and counts
 * each.  The LAPIC timer (SDM vol. 3A §10.5.4) runs periodic with divide-by-
 * 16; KVM's APIC bus is 1 GHz (APIC_BUS_CYCLE_NS_DEFAULT), so an initial
 * count of 62.5 MHz / hz gives hz interrupts a second.
 *
 * Output: "timers: start" at the first PIT tick, then, once ticks=T more
 * PIT ticks have arrived (default 100), one line with the counts taken
 * between the two markers; the test times the markers. */
#include "../lib/x86.h"

#define VEC_PIT_PIN0 0x30
#define VEC_PIT_PIN2 0x32
#define VEC_LAPIC_TIMER 0x40
#define VEC_SPURIOUS 0xFF
#define LAPIC_HZ_DIV16 62500000u

static volatile u32 pin0, pin2, lapic;

static void pit_pin0(struct idt_frame *f) { (void)f; pin0++; lapic_eoi(); }
static void pit_pin2(struct idt_frame *f) { (void)f; pin2++; lapic_eoi(); }
static void lapic_timer(struct idt_frame *f) { (void)f; lapic++; lapic_eoi(); }

static void report(const char *what, u32 p2, u32 p0, u32 l)
{
	puts("timers: ");
	puts(what);
	puts(" pit_pin2=");
	put_dec(p2);
	puts(" pit_pin0=");
	put_dec(p0);
	puts(" lapic=");
	put_dec(l);
	puts("\n");
}

void main64(uptr bp)
{
	const char *cmdline = bp_cmdline(bp);
	u32 hz = (u32)cmdline_num(cmdline, "hz", 100);
	u32 ticks = (u32)cmdline_num(cmdline, "ticks", 100);

	idt_init();
	idt_set_handler(VEC_PIT_PIN0, pit_pin0);
	idt_set_handler(VEC_PIT_PIN2, pit_pin2);
	idt_set_handler(VEC_LAPIC_TIMER, lapic_timer);
	pic_disable();
	lapic_enable(VEC_SPURIOUS);
	ioapic_route(0, VEC_PIT_PIN0, lapic_id());
	ioapic_route(2, VEC_PIT_PIN2, lapic_id());

	lapic_write(LAPIC_TIMER_DIV, LAPIC_DIV_16);
	lapic_write(LAPIC_LVT_TIMER, LAPIC_TIMER_PERIODIC | VEC_LAPIC_TIMER);
	lapic_write(LAPIC_TIMER_INIT, LAPIC_HZ_DIV16 / hz);
	pit_start_periodic(hz);

	/* Wait for the first PIT tick on either pin; give up after 10 s worth
	 * of LAPIC ticks (and report) if the PIT never fires. */
	cli();
	while (pin0 + pin2 == 0 && lapic < 10 * hz) {
		sti_hlt();
		cli();
	}
	if (pin0 + pin2 == 0) {
		report("no-pit", pin2, pin0, lapic);
		guest_exit(EXIT_TIMEOUT);
	}
	u32 p2 = pin2, p0 = pin0, l = lapic;
	puts("timers: start\n");
	while (pin0 + pin2 - p0 - p2 < ticks) {
		sti_hlt();
		cli();
	}
	report("done", pin2 - p2, pin0 - p0, lapic - l);
	guest_exit(EXIT_OK);
}
