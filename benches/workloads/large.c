/* Large blocks: a working set of slots replaced by blocks of 64 KiB-16 MiB
 * (log-uniform); a quarter of the operations realloc a block to a new large
 * size instead.  Every page of a block is written and checked.
 * usage: large THREADS(ignored) OPS [SLOTS] */
#include "common.h"

#define MINSZ (64u * 1024u)
#define MAXSZ (16u * 1024u * 1024u)

int main(int argc, char **argv) {
    (void)arg_long(argc, argv, 1, 1);
    long ops = arg_long(argc, argv, 2, 20000);
    long nslots = arg_long(argc, argv, 3, 16);
    void **slot = calloc((size_t)nslots, sizeof(void *));
    if (!slot) die_oom((size_t)nslots * 8);
    rng_t r;
    rng_seed(&r, 99);
    for (long i = 0; i < ops; i++) {
        size_t s = (size_t)(rng_next(&r) % (uint64_t)nslots);
        size_t n = rng_logsize(&r, MINSZ, MAXSZ);
        if (slot[s] && rng_next(&r) % 4 == 0) {
            size_t old = check_block(slot[s], 0, 0, MAXSZ);
            uint64_t tag = ((uint64_t *)slot[s])[1];
            void *p = xrealloc(slot[s], n);
            if (n >= old) check_block(p, old, tag, MAXSZ);
            fill_block(p, n, rng_next(&r) | 1);
            slot[s] = p;
        } else {
            drop_block(slot[s], MAXSZ);
            slot[s] = new_block(&r, n);
        }
    }
    for (long s = 0; s < nslots; s++) drop_block(slot[s], MAXSZ);
    free(slot);
    return 0;
}
