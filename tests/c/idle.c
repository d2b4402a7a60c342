/* Memory going back to the OS after a burst of small allocations, measured
 * with the resident set size (/proc/self/statm).
 *
 *   idle MODE [KEEP]
 *
 * Allocates about 200 MiB in 1000-byte blocks (small: they pass through the
 * thread cache) and touches every byte, then frees every block except one in
 * KEEP (default 20000: about 10 scattered blocks) and the last one, so the
 * top of the heap cannot simply be trimmed. The blocks are freed in
 * bit-reversed index order, the way a program that drops a large structure
 * piece by piece does: the free runs grow everywhere at once and reach the
 * allocator's purge size (128 KiB) only in the last 1/128 of the frees, so
 * the purge that runs every few MiB freed does not return them, and RSS stays
 * at its peak until one of the mechanisms below acts. Then:
 *
 *   none    measure at once (the control);
 *   trim    call malloc_trim(0) and measure (prints its return value);
 *   spin    malloc/free one 24-byte block in a loop for 0.5 s, then
 *           measure (the idle purge of purge_delay_ms must run although every
 *           call is served by the thread cache);
 *   spin-central
 *           the same with a 40 KiB block (above the thread-cache limit, so
 *           every call reaches the central heap's slow path);
 *   sleep   sleep 0.5 s without calling the allocator, then measure (the
 *           background_purge thread must do the work).
 *
 * Prints "rss_peak_kib=N", "rss_freed_kib=N", "rss_final_kib=N" and
 * "trim_ret=N" (trim only). Nothing between the frees and the last
 * measurement allocates except what the mode names (stdout is unbuffered,
 * /proc/self/statm is read with read(2)). tests/options.rs sets
 * BRKMALLOC_CONF and judges the numbers; this program exits non-zero only if
 * it failed itself (malloc returned NULL, or the memory was never resident).
 * With KEEP = 64 (one live block per 64 KiB) no free run ever reaches 128 KiB:
 * then only malloc_trim gives the memory back. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 1000
#define TOTAL ((size_t)200 << 20)

#include "statm.h"

/* 2^ORDER_BITS >= TOTAL / BLOCK. */
#define ORDER_BITS 18

static size_t bitrev(size_t t) {
    size_t r = 0;
    for (int b = 0; b < ORDER_BITS; b++)
        r |= ((t >> b) & 1) << (ORDER_BITS - 1 - b);
    return r;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Keeps the compiler from pairing or dropping the loop's malloc/free. */
static void *(*volatile x_malloc)(size_t) = malloc;
static void (*volatile x_free)(void *) = free;

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: idle none|trim|spin|spin-central|sleep [KEEP]\n");
        return 2;
    }
    const char *mode = argv[1];
    size_t keep = argc > 2 ? (size_t)strtoul(argv[2], NULL, 10) : 20000;
    if (keep == 0)
        keep = 1;
    size_t count = TOTAL / BLOCK;
    /* The index array is mmapped (large): it does not sit in the heap being measured. */
    char **v = malloc(count * sizeof *v);
    if (!v) {
        printf("FAIL - index array\n");
        return 1;
    }
    for (size_t i = 0; i < count; i++) {
        v[i] = x_malloc(BLOCK);
        if (!v[i]) {
            printf("FAIL - malloc(%d) returned NULL after %zu blocks\n", BLOCK, i);
            return 1;
        }
        memset(v[i], 0x11, BLOCK);
    }
    long peak = rss_kib();
    printf("rss_peak_kib=%ld\n", peak);
    /* Free all but every keep-th block and the last one, in bit-reversed index order. */
    for (size_t t = 0; t < ((size_t)1 << ORDER_BITS); t++) {
        size_t i = bitrev(t);
        if (i >= count || i % keep == keep / 2 || i == count - 1)
            continue;
        x_free(v[i]);
        v[i] = NULL;
    }
    long freed = rss_kib();
    printf("rss_freed_kib=%ld\n", freed);
    if (strcmp(mode, "trim") == 0) {
        printf("trim_ret=%d\n", malloc_trim(0));
    } else if (strcmp(mode, "spin") == 0 || strcmp(mode, "spin-central") == 0) {
        size_t size = strcmp(mode, "spin") == 0 ? 24 : 40 << 10;
        double end = now_s() + 0.5;
        unsigned long n = 0;
        while (now_s() < end) {
            void *p = x_malloc(size);
            if (!p) {
                printf("FAIL - malloc in the spin loop returned NULL\n");
                return 1;
            }
            *(volatile char *)p = 1;
            x_free(p);
            n++;
        }
        printf("spin_iterations=%lu\n", n);
    } else if (strcmp(mode, "sleep") == 0) {
        struct timespec ts = {0, 500 * 1000 * 1000};
        while (nanosleep(&ts, &ts) != 0) {
        }
    } else if (strcmp(mode, "none") != 0) {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    long final = rss_kib();
    printf("rss_final_kib=%ld\n", final);
    size_t live = 0;
    for (size_t i = 0; i < count; i++) {
        if (v[i]) {
            live++;
            free(v[i]);
        }
    }
    printf("live_blocks=%zu\n", live);
    free(v);
    if (peak < 180 * 1024) {
        printf("FAIL - peak rss %ld KiB: the memory was not really touched?\n", peak);
        return 1;
    }
    return 0;
}
