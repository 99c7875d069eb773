/* Kernel command-line parsing for the test guests: words are separated by
 * spaces, options are "key=value". */
#include "pvh.h"

static int starts_with(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return 0;
	return 1;
}

/* The value of the word "key=..." in cmdline, or 0. */
static const char *cmdline_value(const char *cmdline, const char *key)
{
	u64 n = 0;
	while (key[n])
		n++;
	if (!cmdline)
		return 0;
	for (const char *p = cmdline; *p; p++)
		if ((p == cmdline || p[-1] == ' ') && starts_with(p, key) && p[n] == '=')
			return p + n + 1;
	return 0;
}

/* Value of "key=<decimal>" in cmdline, or dflt. */
u64 cmdline_num(const char *cmdline, const char *key, u64 dflt)
{
	const char *q = cmdline_value(cmdline, key);
	if (!q)
		return dflt;
	u64 v = 0;
	for (; *q >= '0' && *q <= '9'; q++)
		v = v * 10 + (u64)(*q - '0');
	return v;
}

/* 1 when cmdline holds the word "key=value". */
int cmdline_is(const char *cmdline, const char *key, const char *value)
{
	const char *q = cmdline_value(cmdline, key);
	if (!q)
		return 0;
	while (*value)
		if (*q++ != *value++)
			return 0;
	return *q == 0 || *q == ' ';
}
