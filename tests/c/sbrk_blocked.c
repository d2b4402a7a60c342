/* sbrk blocked: map a page with MAP_FIXED_NOREPLACE right above the current
 * program break, so the heap cannot grow with brk, then allocate 100 MiB in
 * small pieces (16..1024 B) and verify them all.  The allocator must carry on
 * with its mmap fallback.  The blocker page is filled with a pattern that must
 * survive, and no block may overlap it.  Exit status 0 when all checks pass. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ctest.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static unsigned char pat(size_t idx, size_t i) { return (unsigned char)(idx * 31 + i); }

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    long pg = sysconf(_SC_PAGESIZE);
    /* Make sure the allocator is initialised and has touched the heap first. */
    free(malloc(100));

    uintptr_t brk0 = (uintptr_t)sbrk(0);
    uintptr_t above = (brk0 + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    unsigned char *blocker = mmap((void *)above, (size_t)pg, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (blocker == MAP_FAILED) {
        printf("FAIL - mmap at %#lx: %s\n", (unsigned long)above, strerror(errno));
        return 1;
    }
    if ((uintptr_t)blocker != above) {
        printf("FAIL - kernel ignored MAP_FIXED_NOREPLACE (got %p, wanted %#lx)\n",
               (void *)blocker, (unsigned long)above);
        return 1;
    }
    memset(blocker, 0xb1, (size_t)pg);
    /* Prove that brk really cannot grow now. */
    void *r = sbrk(pg);
    if (r != (void *)-1) {
        printf("FAIL - sbrk still grows past the blocker (break was %#lx)\n",
               (unsigned long)brk0);
        return 1;
    }
    printf("ok - break %#lx blocked by a page at %#lx\n", (unsigned long)brk0,
           (unsigned long)above);

    const size_t target = 100u << 20;
    size_t cap = target / 16 + 1, count = 0, total = 0;
    unsigned char **v = malloc(cap * sizeof *v);
    size_t *len = malloc(cap * sizeof *len);
    if (!v || !len) {
        printf("FAIL - could not allocate the index arrays\n");
        return 1;
    }
    int failed = 0;
    while (total < target) {
        size_t n = 16 + (size_t)(rnd(&rng_state) % 1009);
        unsigned char *p = malloc(n);
        if (!p) {
            printf("FAIL - malloc(%zu) returned NULL after %zu bytes (errno %d)\n", n, total,
                   errno);
            return 1;
        }
        if (((uintptr_t)p & 15) != 0) {
            printf("FAIL - %p not 16-aligned\n", (void *)p);
            failed = 1;
        }
        if ((uintptr_t)p < above + (uintptr_t)pg && (uintptr_t)p + n > above) {
            printf("FAIL - block %p+%zu overlaps the blocker page %#lx\n", (void *)p, n,
                   (unsigned long)above);
            return 1;
        }
        for (size_t i = 0; i < n; i++)
            p[i] = pat(count, i);
        v[count] = p;
        len[count] = n;
        count++;
        total += n;
        /* some churn: free and reallocate now and then */
        if (count % 16 == 0) {
            size_t k = (size_t)(rnd(&rng_state) % count);
            free(v[k]);
            total -= len[k];
            size_t m = 16 + (size_t)(rnd(&rng_state) % 1009);
            v[k] = malloc(m);
            if (!v[k]) {
                printf("FAIL - malloc(%zu) returned NULL during churn\n", m);
                return 1;
            }
            len[k] = m;
            total += m;
            for (size_t i = 0; i < m; i++)
                v[k][i] = pat(k, i);
        }
    }
    size_t bad = 0;
    for (size_t k = 0; k < count; k++) {
        for (size_t i = 0; i < len[k]; i++)
            if (v[k][i] != pat(k, i)) {
                if (bad++ < 5)
                    printf("FAIL - block %zu (%p, %zu B) corrupted at byte %zu\n", k,
                           (void *)v[k], len[k], i);
                break;
            }
        free(v[k]);
    }
    if (bad) {
        printf("FAIL - %zu corrupted blocks\n", bad);
        failed = 1;
    } else {
        printf("ok - %zu blocks, %zu MiB verified and freed\n", count, total >> 20);
    }
    free(v);
    free(len);
    for (long i = 0; i < pg; i++)
        if (blocker[i] != 0xb1) {
            printf("FAIL - blocker page overwritten at byte %ld\n", i);
            failed = 1;
            break;
        }
    if ((uintptr_t)sbrk(0) > above) {
        printf("FAIL - the break moved above the blocker\n");
        failed = 1;
    }
    /* The heap still works after all that. */
    for (int i = 0; i < 1000; i++) {
        void *p = malloc((size_t)i * 13 + 1);
        if (!p) {
            printf("FAIL - malloc after the run\n");
            return 1;
        }
        free(p);
    }
    if (failed)
        return 1;
    printf("all checks passed\n");
    return 0;
}
