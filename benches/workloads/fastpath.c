/* The fast-path probe: 64 live blocks of 16-128 B; each step frees one at
 * random and allocates a new one of a random size in its place.  Nothing
 * else happens between the calls (the header word pair is written and
 * checked, not the whole block), so under callgrind the instructions
 * inside malloc and free are those of the allocators' cached paths.
 * The harness runs it at STEPS and STEPS/2 and takes the difference.
 * usage: fastpath THREADS(ignored, 1) STEPS */
#include "common.h"

#define LIVE 64
#define MINSZ 16
#define MAXSZ 128

int main(int argc, char **argv) {
    (void)arg_long(argc, argv, 1, 1);
    long steps = arg_long(argc, argv, 2, 12800000);
    void *slot[LIVE];
    uint64_t tag[LIVE];
    size_t size[LIVE];
    rng_t r;
    rng_seed(&r, 7);
    for (int s = 0; s < LIVE; s++) {
        size[s] = rng_range(&r, MINSZ, MAXSZ);
        tag[s] = rng_next(&r) | 1;
        slot[s] = xmalloc(size[s]);
        ((uint64_t *)slot[s])[0] = size[s];
        ((uint64_t *)slot[s])[1] = tag[s];
    }
    for (long i = 0; i < steps; i++) {
        uint64_t x = rng_next(&r);
        size_t s = (size_t)(x % LIVE);
        const uint64_t *w = (const uint64_t *)slot[s];
        if (w[0] != size[s] || w[1] != tag[s]) die_verify(slot[s], size[s], tag[s], 0, "header changed");
        free(slot[s]);
        size_t n = MINSZ + (size_t)((x >> 32) % (MAXSZ - MINSZ + 1));
        void *p = xmalloc(n);
        ((uint64_t *)p)[0] = n;
        ((uint64_t *)p)[1] = tag[s] = (x >> 8) | 1;
        slot[s] = p;
        size[s] = n;
    }
    for (int s = 0; s < LIVE; s++) free(slot[s]);
    return 0;
}
