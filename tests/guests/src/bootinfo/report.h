#ifndef BOOTINFO_REPORT_H
#define BOOTINFO_REPORT_H
#include "../lib/io.h"

struct bootinfo {
	const char *entry;
	const char *cmdline;
	u64 ram_bytes;
	u64 map_entries;
	u64 initrd_addr;
	u64 initrd_size;
	u64 rsdp;
	u8 exit_code;
};

void report(const struct bootinfo *bi) __attribute__((noreturn));
u8 exit_code_from(const char *cmdline);
#endif
