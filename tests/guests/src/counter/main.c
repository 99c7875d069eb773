#include "../lib/io.h"

void report_tick(u64 count)
{
	puts("tick ");
	put_dec(count >> 14);
	puts("\n");
}
