/* Port I/O and a few freestanding helpers for kvmlite's test guests. */
#ifndef GUEST_IO_H
#define GUEST_IO_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long uptr;

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u8 rd8(uptr a) { return *(volatile u8 *)a; }
static inline u16 rd16(uptr a) { return *(volatile u16 *)a; }
static inline u32 rd32(uptr a) { return *(volatile u32 *)a; }
static inline u64 rd64(uptr a) { return *(volatile u64 *)a; }
static inline void wr32(uptr a, u32 v) { *(volatile u32 *)a = v; }

#define PORT_COM1 0x3f8
#define PORT_GUEST_EXIT 0x501

/* serial.c */
void serial_putc(char c);
void puts(const char *s);           /* no newline added */
void put_hex(u64 v);                /* 0x-prefixed */
void put_dec(u64 v);
void guest_exit(u8 code) __attribute__((noreturn));

#endif
