/* Serial input through the receive interrupt (long mode, bzImage).
 *
 * COM1 raises ISA IRQ 4 when it has received data; ISA IRQ 4 is IOAPIC pin 4
 * (identity-mapped, no override in kvmlite's MADT/MP table).  The guest
 * routes pin 4 to VEC_COM1 on its own local APIC, enables the UART's
 * "received data available" interrupt and halts.  The handler drains the
 * receive buffer and echoes each byte uppercased, so the test can tell the
 * echo came from the guest; '.' ends the run.
 *
 * 16550 contract (TI/National PC16550D datasheet, "Registers"): RBR at +0
 * (read), IER at +1 (bit 0 = ERBFI, received data available), MCR at +4
 * (bit 3 = OUT2, which on a PC gates the UART's interrupt line onto the
 * bus), LSR at +5 (bit 0 = DR, data ready). */
#include "../lib/x86.h"

#define UART_RBR 0
#define UART_IER 1
#define UART_MCR 4
#define UART_LSR 5
#define IER_ERBFI 0x01
#define MCR_DTR 0x01
#define MCR_RTS 0x02
#define MCR_OUT2 0x08
#define LSR_DR 0x01

#define COM1_PIN 4
#define VEC_COM1 0x34
#define VEC_SPURIOUS 0xFF
#define TERMINATOR '.'

static volatile u32 done, received, interrupts;

static void com1_interrupt(struct idt_frame *f)
{
	(void)f;
	interrupts++;
	while (inb(PORT_COM1 + UART_LSR) & LSR_DR) {
		u8 c = inb(PORT_COM1 + UART_RBR);
		received++;
		if (c == TERMINATOR)
			done = 1;
		serial_putc(c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : (char)c);
	}
	lapic_eoi();
}

static void timed_out(void)
{
	puts("\necho: timeout bytes=");
	put_dec(received);
	puts("\n");
}

void main64(uptr bp)
{
	u32 seconds = (u32)cmdline_num(bp_cmdline(bp), "timeout", 60);

	idt_init();
	idt_set_handler(VEC_COM1, com1_interrupt);
	pic_disable();
	lapic_enable(VEC_SPURIOUS);
	ioapic_route(COM1_PIN, VEC_COM1, lapic_id());
	outb(PORT_COM1 + UART_MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
	outb(PORT_COM1 + UART_IER, IER_ERBFI);
	watchdog_start(seconds, timed_out);
	puts("echo: ready\n");

	cli();
	while (!done) {
		sti_hlt();      /* woken by COM1 (or the watchdog) */
		cli();
	}
	puts("\necho: done bytes=");
	put_dec(received);
	puts(" interrupts=");
	put_dec(interrupts);
	puts("\n");
	guest_exit(EXIT_OK);
}
