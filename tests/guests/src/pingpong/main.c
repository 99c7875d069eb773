/* Exit round trips: "n=N" port writes to 0x80 (POST port; always handled by
 * the VMM in user space), between two markers on COM1.  The host times the
 * markers.  With "in=1" the loop reads port 0x80 instead. */
#include "../lib/io.h"
#include "../lib/pvh.h"

void main32(const struct hvm_start_info *si)
{
	const char *cmdline = (const char *)(uptr)si->cmdline_paddr;
	u64 n = cmdline_num(cmdline, "n", 100000);
	u64 use_in = cmdline_num(cmdline, "in", 0);

	puts("pingpong: start\n");
	if (use_in)
		for (u64 i = 0; i < n; i++)
			(void)inb(0x80);
	else
		for (u64 i = 0; i < n; i++)
			outb(0x80, (u8)i);
	puts("pingpong: end n=");
	put_dec(n);
	puts("\n");
	guest_exit(0);
}
