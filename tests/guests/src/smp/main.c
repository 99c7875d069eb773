/* SMP bring-up (long mode, bzImage).  The boot CPU finds the other CPUs in
 * the MADT (falling back to the MP table, then to "cpus=N" on the command
 * line, meaning APIC IDs 0..N-1), starts each with INIT + STARTUP IPIs
 * (SDM vol. 3A §8.4.4.1 "Typical BSP Initialization Sequence") into the
 * real-mode trampoline (trampoline.S), and halts until every AP has
 * reported.  Each AP reaches long mode, prints its local APIC ID under a
 * spinlock, counts itself in and wakes the BSP with a fixed IPI.
 *
 * Output: "smp: madt_cpus=A mptable_cpus=M source=S cpus=N", "smp: bsp
 * apic_id=I", one "smp: ap apic_id=I cpuid=C" per AP (C: CPUID.1:EBX[31:24],
 * the initial APIC ID), then "smp: all N cpus up". */
#include "smp.h"

#define VEC_WAKE 0x50
#define VEC_SPURIOUS 0xFF

extern char trampoline_start[], trampoline_end[], tramp_cr3[], tramp_efer[], tramp_entry[];
extern char ap_entry64[];

u8 ap_stacks[SMP_MAX_CPUS * 4096] __attribute__((aligned(4096)));
static volatile u32 print_lock, aps_up;

static void locked_line(const char *what, u32 id, int with_cpuid)
{
	spin_lock(&print_lock);
	puts("smp: ");
	puts(what);
	puts(" apic_id=");
	put_dec(id);
	if (with_cpuid) {
		u32 a, b, c, d;
		cpuid(1, &a, &b, &c, &d);
		puts(" cpuid=");
		put_dec(b >> 24);
	}
	puts("\n");
	spin_unlock(&print_lock);
}

void ap_main(u32 apic_id)
{
	idt_load();
	lapic_enable(VEC_SPURIOUS);
	locked_line("ap", apic_id, 1);
	atomic_inc(&aps_up);
	lapic_send_ipi(0, ICR_FIXED | VEC_WAKE);   /* the BSP is APIC ID 0 (checked in main64) */
	for (;;)
		__asm__ volatile("cli; hlt");
}

static void wake(struct idt_frame *f) { (void)f; lapic_eoi(); }

static void timed_out(void)
{
	puts("smp: timeout aps_up=");
	put_dec(aps_up);
	puts("\n");
}

static void copy_trampoline(void)
{
	u8 *dst = (u8 *)TRAMP_BASE;
	for (char *s = trampoline_start; s < trampoline_end; s++)
		*dst++ = (u8)*s;
	wr32(TRAMP_BASE + (uptr)(tramp_cr3 - trampoline_start), (u32)read_cr3());
	wr32(TRAMP_BASE + (uptr)(tramp_efer - trampoline_start), (u32)rdmsr(MSR_EFER) & ~EFER_LMA);
	*(volatile u64 *)(TRAMP_BASE + (uptr)(tramp_entry - trampoline_start)) = (u64)(uptr)ap_entry64;
}

/* A short pause between IPIs.  §8.4.4.1 asks for 10 ms after INIT and
 * 200 us after each SIPI on real hardware; KVM latches INIT and SIPI in the
 * in-kernel LAPIC, so a token delay keeps the instruction count low. */
static void delay(u32 n)
{
	for (volatile u32 i = 0; i < n; i++)
		;
}

static void start_ap(u32 apic_id)
{
	lapic_send_ipi(apic_id, ICR_INIT | ICR_ASSERT);
	delay(100);
	for (int i = 0; i < 2; i++) {
		lapic_send_ipi(apic_id, ICR_STARTUP | (TRAMP_BASE >> 12));
		delay(20);
	}
}

static const char *pick_cpus(uptr bp, struct cpu_list *cpus)
{
	struct cpu_list madt, mp;
	uptr rsdp = rd64(bp + BP_ACPI_RSDP);
	if (!rsdp)
		rsdp = acpi_find_rsdp();
	int madt_ok = madt_cpus(rsdp, &madt);
	int mp_ok = mptable_cpus(&mp);

	puts("smp: madt_cpus=");
	put_dec(madt.n);
	puts(madt_ok ? " (bad checksum)" : "");
	puts(" mptable_cpus=");
	put_dec(mp.n);
	puts(mp_ok ? " (bad checksum)" : "");
	if (madt_ok == 0 && madt.n) {
		*cpus = madt;
		return "madt";
	}
	if (mp_ok == 0 && mp.n) {
		*cpus = mp;
		return "mptable";
	}
	cpus->n = (u32)cmdline_num(bp_cmdline(bp), "cpus", 1);
	for (u32 i = 0; i < cpus->n && i < SMP_MAX_CPUS; i++)
		cpus->apic_id[i] = (u8)i;
	return "cmdline";
}

void main64(uptr bp)
{
	struct cpu_list cpus;
	u32 seconds = (u32)cmdline_num(bp_cmdline(bp), "timeout", 60);
	u32 self = lapic_id();

	idt_init();
	idt_set_handler(VEC_WAKE, wake);
	pic_disable();
	lapic_enable(VEC_SPURIOUS);

	const char *source = pick_cpus(bp, &cpus);
	puts(" source=");
	puts(source);
	puts(" cpus=");
	put_dec(cpus.n);
	puts("\n");
	if (cpus.n > SMP_MAX_CPUS || self != 0) {
		puts("smp: unsupported: more than 16 CPUs or BSP APIC ID not 0\n");
		guest_exit(EXIT_BAD_SETUP);
	}
	locked_line("bsp", self, 1);

	copy_trampoline();
	watchdog_start(seconds, timed_out);
	u32 expected = 0;
	for (u32 i = 0; i < cpus.n; i++) {
		if (cpus.apic_id[i] == self)
			continue;
		start_ap(cpus.apic_id[i]);
		expected++;
	}
	cli();
	while (aps_up < expected) {
		sti_hlt();      /* woken by an AP's IPI (or the watchdog) */
		cli();
	}
	spin_lock(&print_lock);
	puts("smp: all ");
	put_dec(expected + 1);
	puts(" cpus up\n");
	guest_exit(EXIT_OK);
}
