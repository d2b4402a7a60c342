/* Single-thread churn: a working set of slots replaced at random by blocks of
 * random small sizes (16-512 B, skewed small).
 * usage: churn THREADS(ignored, 1) OPS [SLOTS] */
#include "common.h"

#define MAXSZ 512

int main(int argc, char **argv) {
    (void)arg_long(argc, argv, 1, 1);
    long ops = arg_long(argc, argv, 2, 2000000);
    long nslots = arg_long(argc, argv, 3, 4096);
    void **slot = calloc((size_t)nslots, sizeof(void *));
    uint64_t *tag = calloc((size_t)nslots, sizeof(uint64_t));
    size_t *size = calloc((size_t)nslots, sizeof(size_t));
    if (!slot || !tag || !size) die_oom((size_t)nslots * 8);
    rng_t r;
    rng_seed(&r, 42);
    for (long i = 0; i < ops; i++) {
        size_t s = (size_t)(rng_next(&r) % (uint64_t)nslots);
        if (slot[s]) {
            check_block(slot[s], size[s], tag[s], MAXSZ);
            free(slot[s]);
        }
        size_t n = rng_skewed(&r, 16, MAXSZ);
        void *p = xmalloc(n);
        uint64_t t = rng_next(&r) | 1;
        fill_block(p, n, t);
        slot[s] = p;
        tag[s] = t;
        size[s] = n;
    }
    for (long s = 0; s < nslots; s++) {
        if (slot[s]) {
            check_block(slot[s], size[s], tag[s], MAXSZ);
            free(slot[s]);
        }
    }
    free(slot);
    free(tag);
    free(size);
    print_calls(2LL * (ops + 3)); /* every block and the three arrays: one malloc, one free */
    return 0;
}
