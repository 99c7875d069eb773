/* PVH guest: read struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h). */
#include "../lib/io.h"
#include "report.h"

#define SI_MAGIC 0x336ec578u
#define E820_RAM 1

struct hvm_start_info {
	u32 magic, version, flags, nr_modules;
	u64 modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	u32 memmap_entries, reserved;
};
struct hvm_modlist_entry { u64 paddr, size, cmdline_paddr, reserved; };
struct hvm_memmap_table_entry { u64 addr, size; u32 type, reserved; };

void main32(const struct hvm_start_info *si)
{
	struct bootinfo bi = { .entry = "pvh32" };

	if (si->magic != SI_MAGIC) {
		puts("pvh: bad start_info magic\n");
		guest_exit(99);
	}
	bi.cmdline = (const char *)(uptr)si->cmdline_paddr;
	const struct hvm_memmap_table_entry *m = (const void *)(uptr)si->memmap_paddr;
	for (u32 i = 0; i < si->memmap_entries; i++)
		if (m[i].type == E820_RAM)
			bi.ram_bytes += m[i].size;
	bi.map_entries = si->memmap_entries;
	if (si->nr_modules) {
		const struct hvm_modlist_entry *mod = (const void *)(uptr)si->modlist_paddr;
		bi.initrd_addr = mod->paddr;
		bi.initrd_size = mod->size;
	}
	bi.rsdp = si->rsdp_paddr;
	bi.exit_code = exit_code_from(bi.cmdline);
	report(&bi);
}
