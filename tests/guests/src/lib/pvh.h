/* struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h). */
#ifndef GUEST_PVH_H
#define GUEST_PVH_H
#include "io.h"

#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
	u32 magic, version, flags, nr_modules;
	u64 modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	u32 memmap_entries, reserved;
};
struct hvm_modlist_entry { u64 paddr, size, cmdline_paddr, reserved; };
struct hvm_memmap_table_entry { u64 addr, size; u32 type, reserved; };

/* Value of "key=<decimal>" in cmdline, or dflt. */
u64 cmdline_num(const char *cmdline, const char *key, u64 dflt);
#endif
