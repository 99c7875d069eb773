/* bzImage guest: read struct boot_params (arch/x86/include/uapi/asm/bootparam.h). */
#include "../lib/io.h"
#include "report.h"

#define BP_ACPI_RSDP 0x070
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0
#define E820_RAM 1

void main64(uptr bp)
{
	struct bootinfo bi = { .entry = "bzimage64" };
	u64 cmd = rd32(bp + BP_CMD_LINE_PTR) | ((u64)rd32(bp + BP_EXT_CMD_LINE_PTR) << 32);
	u8 n = rd8(bp + BP_E820_ENTRIES);

	bi.cmdline = (const char *)(uptr)cmd;
	for (u8 i = 0; i < n; i++) {
		uptr e = bp + BP_E820_TABLE + 20u * i;
		if (rd32(e + 16) == E820_RAM)
			bi.ram_bytes += rd64(e + 8);
	}
	bi.map_entries = n;
	bi.initrd_addr = rd32(bp + BP_RAMDISK_IMAGE) | ((u64)rd32(bp + BP_EXT_RAMDISK_IMAGE) << 32);
	bi.initrd_size = rd32(bp + BP_RAMDISK_SIZE) | ((u64)rd32(bp + BP_EXT_RAMDISK_SIZE) << 32);
	bi.rsdp = rd64(bp + BP_ACPI_RSDP);
	bi.exit_code = exit_code_from(bi.cmdline);
	report(&bi);
}
