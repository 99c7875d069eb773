/* How a guest ends (long mode, bzImage), chosen by "action=" on the
 * command line:
 *
 *   reset   pulse the CPU reset line through the i8042 (command 0xFE to port
 *           0x64, as Linux's reboot=k does: arch/x86/kernel/reboot.c, after
 *           waiting for the input buffer to drain, status bit 1) -> kvmlite
 *           exits 3
 *   triple  load an IDT with limit 0 and raise an exception: the exception,
 *           then the #GP for its missing gate, then the double fault's
 *           missing gate make a triple fault (SDM vol. 3A §6.15, interrupt
 *           8 "Double Fault Exception": a fault while delivering #DF is a
 *           shutdown) -> kvmlite exits 4.  "fault=ud|pf|de" picks the
 *           first exception (default ud: ud2).
 *   spin    print "lifecycle: spinning" and loop forever with interrupts off
 *   halt    print "lifecycle: halted" and cli; hlt forever
 *   exit    write "code=N" to the exit port 0x501 -> kvmlite exits N
 */
#include "../lib/x86.h"

#define I8042_STATUS 0x64
#define I8042_STATUS_INPUT_FULL 0x02
#define I8042_CMD_PULSE_RESET 0xFE

static void reset_via_i8042(void)
{
	for (int i = 0; i < 1000 && (inb(I8042_STATUS) & I8042_STATUS_INPUT_FULL); i++)
		;
	outb(I8042_STATUS, I8042_CMD_PULSE_RESET);
}

static void triple_fault(const char *cmdline)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) empty = { 0, 0 };
	__asm__ volatile("lidt %0" : : "m"(empty));
	if (cmdline_is(cmdline, "fault", "pf"))
		(void)rd8(0x100000000000ul);              /* not mapped: only 4 GiB are */
	else if (cmdline_is(cmdline, "fault", "de"))
		__asm__ volatile("xor %%ecx, %%ecx; div %%ecx" : : : "eax", "ecx", "edx");
	else
		__asm__ volatile("ud2");
}

void main64(uptr bp)
{
	const char *cmdline = bp_cmdline(bp);

	if (cmdline_is(cmdline, "action", "reset")) {
		puts("lifecycle: reset\n");
		reset_via_i8042();
	} else if (cmdline_is(cmdline, "action", "triple")) {
		puts("lifecycle: triple fault\n");
		triple_fault(cmdline);
	} else if (cmdline_is(cmdline, "action", "spin")) {
		puts("lifecycle: spinning\n");
		for (;;)
			__asm__ volatile("");           /* jmp . : never leaves guest mode */
	} else if (cmdline_is(cmdline, "action", "halt")) {
		puts("lifecycle: halted\n");
		for (;;)
			__asm__ volatile("cli; hlt");
	} else if (cmdline_is(cmdline, "action", "exit")) {
		puts("lifecycle: exit\n");
		guest_exit((u8)cmdline_num(cmdline, "code", 0));
	}
	puts("lifecycle: still running after the action\n");
	guest_exit(EXIT_BAD_SETUP);
}
