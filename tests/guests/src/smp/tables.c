/* Find the CPUs the firmware tables list: the ACPI MADT (ACPI 6.3
 * §5.2.5 RSDP, §5.2.7/§5.2.8 RSDT/XSDT, §5.2.12 MADT) and the Intel
 * MultiProcessor Specification 1.4 table (§4.1 floating pointer, §4.2
 * configuration table header, §4.3.1 processor entries). */
#include "smp.h"

static int sig_is(uptr p, const char *sig, int n)
{
	for (int i = 0; i < n; i++)
		if (rd8(p + (uptr)i) != (u8)sig[i])
			return 0;
	return 1;
}

static u8 checksum(uptr p, u32 len)
{
	u8 sum = 0;
	for (u32 i = 0; i < len; i++)
		sum += rd8(p + i);
	return sum;
}

static void add_cpu(struct cpu_list *out, u8 apic_id)
{
	if (out->n < SMP_MAX_CPUS)
		out->apic_id[out->n] = apic_id;
	out->n++;
}

/* §5.2.5.1: the RSDP is on a 16-byte boundary in 0xE0000-0xFFFFF (or the
 * first KiB of the EBDA); kvmlite also hands it over in boot_params. */
uptr acpi_find_rsdp(void)
{
	for (uptr p = 0xE0000; p < 0x100000; p += 16)
		if (sig_is(p, "RSD PTR ", 8) && checksum(p, 20) == 0)
			return p;
	return 0;
}

/* RSDP: revision at 15, RsdtAddress at 16, XsdtAddress at 24 (rev >= 2).
 * SDT header (§5.2.6): signature, length at 4; 36 bytes.  MADT: local APIC
 * address and flags after the header, then structures of (type, length);
 * type 0 = Processor Local APIC: UID at 2, APIC ID at 3, flags at 4
 * (bit 0 Enabled, bit 1 Online Capable). */
int madt_cpus(uptr rsdp, struct cpu_list *out)
{
	out->n = 0;
	if (!rsdp || !sig_is(rsdp, "RSD PTR ", 8))
		return 0;
	int xsdt = rd8(rsdp + 15) >= 2 && rd64(rsdp + 24);
	uptr root = xsdt ? (uptr)rd64(rsdp + 24) : rd32(rsdp + 16);
	u32 esize = xsdt ? 8 : 4;
	u32 len = rd32(root + 4);
	for (u32 off = 36; off + esize <= len; off += esize) {
		uptr t = xsdt ? (uptr)rd64(root + off) : rd32(root + off);
		if (!sig_is(t, "APIC", 4))
			continue;
		u32 tlen = rd32(t + 4);
		if (checksum(t, tlen) != 0)
			return -1;
		for (u32 e = 44; e + 2 <= tlen && rd8(t + e + 1); e += rd8(t + e + 1))
			if (rd8(t + e) == 0 && (rd32(t + e + 4) & 1))
				add_cpu(out, rd8(t + e + 3));
		return 0;
	}
	return 0;
}

/* §4: the floating pointer is in the first KiB of the EBDA, the last KiB
 * of base memory, or 0xF0000-0xFFFFF, on a 16-byte boundary. */
static uptr mp_find_floating(void)
{
	static const uptr ranges[][2] = { { 0x9FC00, 0xA0000 }, { 0xF0000, 0x100000 } };
	for (int r = 0; r < 2; r++)
		for (uptr p = ranges[r][0]; p < ranges[r][1]; p += 16)
			if (sig_is(p, "_MP_", 4) && checksum(p, 16) == 0)
				return p;
	return 0;
}

/* Floating pointer: PHYSICAL ADDRESS POINTER at 4.  Table header: "PCMP",
 * base table length at 4 (16 bits), entry count at 34, entries from 44.
 * Processor entry (type 0, 20 bytes): APIC ID at 1, CPU flags at 3 (bit 0
 * EN); other entries are 8 bytes. */
int mptable_cpus(struct cpu_list *out)
{
	out->n = 0;
	uptr fp = mp_find_floating();
	if (!fp)
		return 0;
	uptr t = rd32(fp + 4);
	if (!t || !sig_is(t, "PCMP", 4))
		return 0;
	if (checksum(t, rd16(t + 4)) != 0)
		return -1;
	uptr e = t + 44;
	for (u32 i = 0; i < rd16(t + 34); i++) {
		if (rd8(e) == 0) {
			if (rd8(e + 3) & 1)
				add_cpu(out, rd8(e + 1));
			e += 20;
		} else {
			e += 8;
		}
	}
	return 0;
}
