/* Memory return: allocate 1 GiB in mixed sizes (16 B..64 KiB, plus some
 * 1 MiB blocks), touch every page, free everything in random order, and
 * require the resident set size (/proc/self/statm) to drop below 100 MiB.
 *
 * glibc only trims the top of its heap, so this is expected to fail there;
 * tests/preload.rs runs it only under LD_PRELOAD=libbrkmalloc.so.
 * An optional argv[1] "trim" calls malloc_trim(0) before measuring. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctest.h"

static uint64_t rng_state = 0x853c49e6748fea9bull;

static long rss_mib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = -1;
    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &size, &res) != 2)
        res = -1;
    fclose(f);
    return res < 0 ? -1 : res * sysconf(_SC_PAGESIZE) / (1 << 20);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    const size_t target = (size_t)1 << 30;
    size_t cap = 1u << 20, count = 0, total = 0;
    void **v = malloc(cap * sizeof *v);
    if (!v) {
        printf("FAIL - index array\n");
        return 1;
    }
    printf("rss at start: %ld MiB\n", rss_mib());
    while (total < target && count < cap) {
        uint64_t r = rnd(&rng_state);
        size_t n;
        if (r % 200 == 0)
            n = 1u << 20;
        else {
            unsigned shift = 4 + (unsigned)((r >> 8) % 13); /* 16 B .. 64 KiB, log-uniform */
            n = ((size_t)1 << shift) + (size_t)((r >> 20) % ((size_t)1 << shift));
            if (n > (64u << 10))
                n = 64u << 10;
        }
        char *p = malloc(n);
        if (!p) {
            printf("FAIL - malloc(%zu) returned NULL after %zu MiB\n", n, total >> 20);
            return 1;
        }
        memset(p, (int)(count & 0xff), n); /* touch every page */
        v[count++] = p;
        total += n;
    }
    long peak = rss_mib();
    printf("allocated %zu blocks, %zu MiB; rss %ld MiB\n", count, total >> 20, peak);
    /* Free in random order (Fisher-Yates shuffle first). */
    for (size_t i = count - 1; i > 0; i--) {
        size_t j = (size_t)(rnd(&rng_state) % (i + 1));
        void *t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
    for (size_t i = 0; i < count; i++)
        free(v[i]);
    free(v);
    if (argc > 1 && strcmp(argv[1], "trim") == 0)
        malloc_trim(0);
    long after = rss_mib();
    printf("rss after freeing everything: %ld MiB (limit 100 MiB)\n", after);
    if (peak < 900) {
        printf("FAIL - peak rss %ld MiB: the memory was not really touched?\n", peak);
        return 1;
    }
    if (after < 0 || after >= 100) {
        printf("FAIL - rss %ld MiB after freeing 1 GiB: memory not returned to the OS\n", after);
        return 1;
    }
    printf("ok - memory returned\n");
    return 0;
}
