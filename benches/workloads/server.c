/* Server simulation: THREADS lineages, each a thread replacing random slots of
 * its own array with blocks of 16-1000 B.  Every HANDOFF operations the thread
 * hands its array to a newly created thread and exits, so the new thread frees
 * blocks allocated by a dead one (cross-thread frees, thread churn).
 * usage: server THREADS OPS(total) [SLOTS_PER_THREAD] [HANDOFF] */
#include "common.h"

#define MAXSZ 1000

typedef struct baton {
    void **slot;
    size_t nslots;
    long remaining;
    long handoff;
    uint64_t seed;
    struct baton *next; /* written by the thread before it exits */
    pthread_t next_tid;
} baton_t;

static void *worker(void *arg) {
    baton_t *b = arg;
    rng_t r;
    rng_seed(&r, b->seed);
    long n = b->remaining < b->handoff ? b->remaining : b->handoff;
    for (long i = 0; i < n; i++) {
        size_t s = (size_t)(rng_next(&r) % (uint64_t)b->nslots);
        drop_block(b->slot[s], MAXSZ);
        b->slot[s] = new_block(&r, rng_range(&r, 16, MAXSZ));
    }
    b->next = NULL;
    if (b->remaining > n) {
        baton_t *nb = xmalloc(sizeof *nb);
        *nb = *b;
        nb->remaining = b->remaining - n;
        nb->seed = rng_next(&r);
        nb->next = NULL;
        pthread_t t;
        xpthread_create(&t, worker, nb);
        b->next_tid = t;
        b->next = nb;
    }
    return NULL;
}

int main(int argc, char **argv) {
    long threads = arg_long(argc, argv, 1, 4);
    long ops = arg_long(argc, argv, 2, 2000000);
    long nslots = arg_long(argc, argv, 3, 2000);
    long handoff = arg_long(argc, argv, 4, 20000);
    baton_t **first = xmalloc(sizeof(baton_t *) * (size_t)threads);
    pthread_t *tid = xmalloc(sizeof(pthread_t) * (size_t)threads);
    long long mallocs = 2; /* first, tid; every block allocated is freed: calls = 2 x mallocs */
    for (long t = 0; t < threads; t++) {
        baton_t *b = xmalloc(sizeof *b);
        b->slot = calloc((size_t)nslots, sizeof(void *));
        if (!b->slot) die_oom((size_t)nslots * 8);
        b->nslots = (size_t)nslots;
        b->remaining = ops / threads;
        b->handoff = handoff;
        b->seed = 1000 + (uint64_t)t;
        mallocs += 2 + b->remaining; /* baton, slot array, one block per operation */
        b->next = NULL;
        first[t] = b;
        xpthread_create(&tid[t], worker, b);
    }
    for (long t = 0; t < threads; t++) {
        baton_t *b = first[t];
        pthread_t cur = tid[t];
        void **slot = b->slot;
        size_t ns = b->nslots;
        for (;;) {
            pthread_join(cur, NULL);
            baton_t *nb = b->next;
            if (!nb) break;
            cur = b->next_tid;
            mallocs++; /* the next baton */
            free(b); /* allocated by a thread that has exited */
            b = nb;
        }
        free(b);
        for (size_t s = 0; s < ns; s++) drop_block(slot[s], MAXSZ);
        free(slot);
    }
    free(first);
    free(tid);
    print_calls(2 * mallocs);
    return 0;
}
