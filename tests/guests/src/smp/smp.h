#ifndef SMP_H
#define SMP_H
#include "../lib/x86.h"

#define SMP_MAX_CPUS 16
#define TRAMP_BASE 0x10000          /* free in kvmlite's layout (0x10000-0x1FFFF) */

/* CPUs (local APIC IDs) a firmware table lists; n = 0 if the table is absent. */
struct cpu_list {
	u32 n;
	u8 apic_id[SMP_MAX_CPUS];
};

/* tables.c */
int madt_cpus(uptr rsdp, struct cpu_list *out);   /* 0 ok, -1 bad checksum */
int mptable_cpus(struct cpu_list *out);
uptr acpi_find_rsdp(void);
#endif
