/* Mixed: every thread keeps its own slots and replaces them with small
 * (16-256 B), medium (256 B-16 KiB) and occasional large (64 KiB-1 MiB)
 * blocks, grows some with realloc, and swaps some with a shared exchange
 * array, so blocks are freed by threads other than their allocator.
 * usage: mixed THREADS OPS(total) [SLOTS_PER_THREAD] */
#include "common.h"

#define MAXSZ (2u * 1024u * 1024u)
#define NEXCH 256

static void *exch[NEXCH];
static long per_thread, nslots;

static size_t pick_size(rng_t *r) {
    uint64_t x = rng_next(r) % 1000;
    if (x < 750) return rng_skewed(r, 16, 256);
    if (x < 995) return rng_logsize(r, 257, 16384);
    return rng_logsize(r, 65536, 1024 * 1024);
}

static void *worker(void *arg) {
    long id = (long)arg;
    rng_t r;
    rng_seed(&r, 500 + (uint64_t)id);
    void **slot = calloc((size_t)nslots, sizeof(void *));
    if (!slot) die_oom((size_t)nslots * 8);
    for (long i = 0; i < per_thread; i++) {
        size_t s = (size_t)(rng_next(&r) % (uint64_t)nslots);
        uint64_t x = rng_next(&r) % 100;
        if (x < 80) { /* replace */
            drop_block(slot[s], MAXSZ);
            slot[s] = new_block(&r, pick_size(&r));
        } else if (x < 93) { /* realloc growth */
            if (!slot[s]) {
                slot[s] = new_block(&r, pick_size(&r));
                continue;
            }
            size_t old = check_block(slot[s], 0, 0, MAXSZ);
            uint64_t tag = ((uint64_t *)slot[s])[1];
            size_t n = old + old / 2 + 16;
            if (n > MAXSZ) n = 16;
            void *p = xrealloc(slot[s], n);
            if (n > old) check_block(p, old, tag, MAXSZ); /* the old contents survived */
            fill_block(p, n, rng_next(&r) | 1);
            slot[s] = p;
        } else { /* exchange with another thread */
            if (!slot[s]) slot[s] = new_block(&r, pick_size(&r));
            size_t e = (size_t)(rng_next(&r) % NEXCH);
            slot[s] = __atomic_exchange_n(&exch[e], slot[s], __ATOMIC_ACQ_REL);
        }
    }
    for (long s = 0; s < nslots; s++) drop_block(slot[s], MAXSZ);
    free(slot);
    return NULL;
}

int main(int argc, char **argv) {
    long threads = arg_long(argc, argv, 1, 4);
    long ops = arg_long(argc, argv, 2, 1000000);
    nslots = arg_long(argc, argv, 3, 1000);
    per_thread = ops / threads;
    pthread_t *tid = xmalloc(sizeof(pthread_t) * (size_t)threads);
    for (long t = 0; t < threads; t++) xpthread_create(&tid[t], worker, (void *)t);
    for (long t = 0; t < threads; t++) pthread_join(tid[t], NULL);
    for (int e = 0; e < NEXCH; e++) drop_block(exch[e], MAXSZ);
    free(tid);
    return 0;
}
