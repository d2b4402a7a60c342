/* A deliberately broken malloc shim for the harness self-test (--self-test):
 * it proves that a corrupting, crashing or hanging allocator is reported as
 * VERIFY-FAIL, CRASH or TIMEOUT rather than hidden.  BADALLOC selects:
 *   corrupt  from the 20000th malloc on, flip the tag word of the previously
 *            returned (still live) block
 *   crash    SIGSEGV at the 20000th malloc
 *   hang     sleep forever at the 20000th malloc
 * Built with: gcc -O2 -shared -fPIC -o badalloc.so badalloc.c */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);

static long calls;
static int mode = -1;
static void *last;

void *malloc(size_t n) {
    if (mode < 0) {
        const char *e = getenv("BADALLOC");
        mode = !e ? 0 : !strcmp(e, "corrupt") ? 1 : !strcmp(e, "crash") ? 2 : !strcmp(e, "hang") ? 3 : 0;
    }
    long c = ++calls;
    if (c >= 20000 && mode != 0) {
        if (mode == 1 && last) ((volatile uint64_t *)last)[1] ^= 0x5555;
        if (mode == 2) raise(SIGSEGV);
        if (mode == 3)
            for (;;) pause();
    }
    void *p = __libc_malloc(n);
    last = n >= 16 ? p : NULL;
    return p;
}
