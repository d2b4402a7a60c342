/* Thread churn: OPS short-lived threads, THREADS of them alive at a time
 * (created in waves and joined).  Each allocates 64 small blocks, churns them,
 * frees most and hands 8 back to the main thread, which frees them after the
 * thread has exited.
 * usage: threadchurn THREADS OPS(threads created in total) [CHURN] */
#include "common.h"

#define MAXSZ 512
#define LIVE 64
#define HANDBACK 8

static long churn;

static void *worker(void *arg) {
    rng_t r;
    rng_seed(&r, (uint64_t)(uintptr_t)arg);
    void *live[LIVE];
    for (int i = 0; i < LIVE; i++) live[i] = new_block(&r, rng_skewed(&r, 16, MAXSZ));
    for (long i = 0; i < churn; i++) {
        size_t s = (size_t)(rng_next(&r) % LIVE);
        drop_block(live[s], MAXSZ);
        live[s] = new_block(&r, rng_skewed(&r, 16, MAXSZ));
    }
    void **back = xmalloc(sizeof(void *) * HANDBACK);
    for (int i = 0; i < LIVE; i++) {
        if (i < HANDBACK) back[i] = live[i];
        else drop_block(live[i], MAXSZ);
    }
    return back;
}

int main(int argc, char **argv) {
    long threads = arg_long(argc, argv, 1, 4);
    long total = arg_long(argc, argv, 2, 2000);
    churn = arg_long(argc, argv, 3, 200);
    pthread_t *tid = xmalloc(sizeof(pthread_t) * (size_t)threads);
    long made = 0;
    while (made < total) {
        long wave = total - made < threads ? total - made : threads;
        for (long t = 0; t < wave; t++) xpthread_create(&tid[t], worker, (void *)(uintptr_t)(made + t + 1));
        for (long t = 0; t < wave; t++) {
            void *ret = NULL;
            pthread_join(tid[t], &ret);
            void **back = ret;
            for (int i = 0; i < HANDBACK; i++) drop_block(back[i], MAXSZ);
            free(back);
        }
        made += wave;
    }
    free(tid);
    /* per thread: LIVE + churn blocks and the hand-back array, each allocated and freed once;
     * plus tid */
    print_calls(2LL * total * (LIVE + churn + 1) + 2);
    return 0;
}
