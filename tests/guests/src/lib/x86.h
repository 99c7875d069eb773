/* CPU, interrupt-controller and timer helpers for kvmlite's 64-bit test
 * guests.  Each constant names the document that defines it:
 *   - Intel SDM vol. 3A ch. 6 (IDT, gates), ch. 10 / ch. 11 in newer editions
 *     ("Advanced Programmable Interrupt Controller"): the local APIC;
 *   - Intel 82093AA I/O APIC datasheet (order 290566): IOREGSEL/IOWIN and the
 *     redirection table;
 *   - Intel 8254 PIT datasheet (order 231164): control word, counter 0;
 *   - Intel 8259A PIC datasheet (order 231468): ICW1-4, OCW1.
 * Everything here is general-purpose-register code: guests are built with
 * -mgeneral-regs-only because a PVM-based KVM cannot emulate SSE at CPL0. */
#ifndef GUEST_X86_H
#define GUEST_X86_H
#include "io.h"

/* Exit statuses shared by the interrupt-driven guests (written to 0x501).
 * Success is 42 so that neither a poweroff (0) nor a kvmlite error (1) can
 * pass for it. */
#define EXIT_OK 42
#define EXIT_UNEXPECTED_VECTOR 100
#define EXIT_TIMEOUT 101
#define EXIT_BAD_SETUP 102

static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
/* sti's one-instruction interrupt shadow makes "sti; hlt" race-free: an
 * interrupt that became pending while IF was 0 wakes this very hlt
 * (SDM vol. 2B, STI). */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }

static inline void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}
static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return lo | ((u64)hi << 32);
}
static inline u64 read_cr3(void) { u64 v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline u16 read_cs(void) { u16 v; __asm__ volatile("mov %%cs, %0" : "=r"(v)); return v; }

#define MSR_EFER 0xC0000080u
#define EFER_LMA (1u << 10)

/* --- IDT (SDM vol. 3A §6.14.1, 64-bit IDT gate descriptors) --- */
struct idt_frame {                  /* what lib/idt64.S pushes, lowest first */
	u64 r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
	u64 vector, error;              /* error = 0 for vectors without one */
	u64 rip, cs, rflags, rsp, ss;   /* pushed by the CPU */
};
typedef void (*irq_handler_t)(struct idt_frame *f);
void idt_init(void);                /* all 256 gates; unexpected vectors exit 100 */
void idt_load(void);                /* lidt of the shared table (APs) */
void idt_set_handler(u8 vector, irq_handler_t fn);

/* --- local APIC (SDM vol. 3A §10.4.1 "The Local APIC Block Diagram",
 *     Table 10-1 "Local APIC Register Address Map") --- */
#define LAPIC_BASE 0xFEE00000ul
#define LAPIC_ID 0x020              /* bits 31:24 = APIC ID */
#define LAPIC_TPR 0x080
#define LAPIC_EOI 0x0B0
#define LAPIC_SVR 0x0F0             /* bit 8: APIC software enable */
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310          /* bits 31:24 = destination APIC ID */
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3E0
#define LAPIC_SVR_ENABLE (1u << 8)
#define LAPIC_LVT_MASKED (1u << 16)
#define LAPIC_TIMER_PERIODIC (1u << 17) /* §10.5.4: LVT timer mode bits 18:17 = 01 */
#define LAPIC_DIV_16 0x3            /* §10.5.4 Figure 10-10: divide by 16 */
/* ICR (§10.6.1, Figure 10-12): delivery mode bits 10:8, level bit 14,
 * delivery status bit 12. */
#define ICR_FIXED (0u << 8)
#define ICR_INIT (5u << 8)
#define ICR_STARTUP (6u << 8)
#define ICR_ASSERT (1u << 14)
#define ICR_BUSY (1u << 12)

static inline u32 lapic_read(u32 reg) { return rd32(LAPIC_BASE + reg); }
static inline void lapic_write(u32 reg, u32 v) { wr32(LAPIC_BASE + reg, v); }
static inline u32 lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }
static inline void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }
void lapic_enable(u8 spurious_vector);
void lapic_send_ipi(u32 apic_id, u32 icr_low);
/* Periodic LAPIC-timer watchdog (vector 0xEE, 100 Hz nominal): after
 * `seconds` it calls expired() (which should report) and exits 101. */
void watchdog_start(u32 seconds, void (*expired)(void));

/* --- I/O APIC (82093AA datasheet §3.0: IOREGSEL at +0x00, IOWIN at +0x10;
 *     §3.2.4: redirection entry n is registers 0x10+2n (low) and 0x11+2n) --- */
#define IOAPIC_BASE 0xFEC00000ul
#define IOAPIC_VER 0x01             /* bits 23:16 = maximum redirection entry */
#define IOREDTBL_MASKED (1u << 16)
#define IOREDTBL_LEVEL (1u << 15)
#define IOREDTBL_ACTIVE_LOW (1u << 13)
u32 ioapic_read(u32 reg);
void ioapic_write(u32 reg, u32 v);
/* Fixed delivery, physical destination, edge, active high, unmasked. */
void ioapic_route(u32 pin, u8 vector, u32 dest_apic_id);

/* --- 8259A PICs: remapped and fully masked, so that ISA interrupts reach
 *     the CPU only through the IOAPIC --- */
void pic_disable(void);

/* --- 8254 PIT (datasheet "Control Word Format"): port 0x43 control,
 *     0x40 counter 0; input clock 1.193182 MHz --- */
#define PIT_HZ 1193182u
void pit_start_periodic(u32 hz);    /* counter 0, mode 2 (rate generator) */

/* --- small spinlock on an xchg (implicitly locked, SDM vol. 2B XCHG) --- */
static inline void spin_lock(volatile u32 *l)
{
	u32 v;
	do {
		while (*l)
			cpu_relax();
		v = 1;
		__asm__ volatile("xchg %0, %1" : "+r"(v), "+m"(*l) : : "memory");
	} while (v);
}
static inline void spin_unlock(volatile u32 *l) { __asm__ volatile("" ::: "memory"); *l = 0; }
static inline void atomic_inc(volatile u32 *p) { __asm__ volatile("lock incl %0" : "+m"(*p) : : "memory"); }

/* --- boot_params (arch/x86/include/uapi/asm/bootparam.h) --- */
#define BP_ACPI_RSDP 0x070
#define BP_CMD_LINE_PTR 0x228
static inline const char *bp_cmdline(uptr bp) { return (const char *)(uptr)rd32(bp + BP_CMD_LINE_PTR); }

/* cmdline.c */
u64 cmdline_num(const char *cmdline, const char *key, u64 dflt);
/* 1 when cmdline has the word "key=value". */
int cmdline_is(const char *cmdline, const char *key, const char *value);

#endif
