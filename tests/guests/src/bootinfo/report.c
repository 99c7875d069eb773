/* Report what the VMM handed over: command line, RAM total from the memory
 * map, and an FNV-1a hash of the initrd bytes.  Shared by the bzImage
 * (64-bit boot protocol) and the PVH entry. */
#include "../lib/io.h"
#include "report.h"

static u32 fnv1a(const u8 *p, u64 n)
{
	u32 h = 2166136261u;
	for (u64 i = 0; i < n; i++) {
		h ^= p[i];
		h *= 16777619u;
	}
	return h;
}

void report(const struct bootinfo *bi)
{
	puts("bootinfo: entry=");
	puts(bi->entry);
	puts("\ncmdline=");
	puts(bi->cmdline ? bi->cmdline : "(none)");
	puts("\nram_bytes=");
	put_dec(bi->ram_bytes);
	puts("\nmap_entries=");
	put_dec(bi->map_entries);
	puts("\ninitrd_size=");
	put_dec(bi->initrd_size);
	puts("\ninitrd_fnv1a=");
	put_hex(bi->initrd_size ? fnv1a((const u8 *)(uptr)bi->initrd_addr, bi->initrd_size) : 0);
	puts("\nrsdp=");
	put_hex(bi->rsdp);
	puts("\nbootinfo: done\n");
	guest_exit(bi->exit_code);
}

/* "exit=N" on the command line picks the exit status (default 0). */
u8 exit_code_from(const char *cmdline)
{
	const char *p = cmdline;
	u8 code = 0;
	while (p && *p) {
		if (p[0] == 'e' && p[1] == 'x' && p[2] == 'i' && p[3] == 't' && p[4] == '=') {
			p += 5;
			while (*p >= '0' && *p <= '9')
				code = (u8)(code * 10 + (*p++ - '0'));
			return code;
		}
		p++;
	}
	return code;
}
