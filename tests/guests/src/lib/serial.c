/* Polled output on COM1 (16550: wait for LSR.THRE, then write THR) and the
 * kvmlite exit port. */
#include "io.h"

#define UART_LSR 5
#define UART_LSR_THRE 0x20

void serial_putc(char c)
{
	while (!(inb(PORT_COM1 + UART_LSR) & UART_LSR_THRE))
		;
	outb(PORT_COM1, (u8)c);
}

void puts(const char *s)
{
	while (*s)
		serial_putc(*s++);
}

void put_hex(u64 v)
{
	char buf[19];
	int i = 18;
	buf[i--] = 0;
	do {
		buf[i--] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	buf[i--] = 'x';
	buf[i] = '0';
	puts(&buf[i]);
}

void put_dec(u64 v)
{
	char buf[21];
	int i = 20;
	buf[i--] = 0;
	do {
		buf[i--] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts(&buf[i + 1]);
}

void guest_exit(u8 code)
{
	outb(PORT_GUEST_EXIT, code);
	for (;;)
		__asm__ volatile("cli; hlt");
}
