/* False sharing (Hoard's cache-scratch): the main thread allocates one small
 * object per thread, back to back, and hands object i to thread i, which frees
 * it and then repeatedly allocates a small object, writes it hard, checks it
 * and frees it.  An allocator that gives a thread memory on a cache line that
 * another thread writes makes the cores fight over the line.
 * usage: falseshare THREADS OPS(total iterations) [OBJSIZE] [WRITES] */
#include "common.h"

static long per_thread, objsize, writes;

typedef struct {
    void *initial;
    long id;
} targ_t;

static void *worker(void *arg) {
    targ_t *a = arg;
    uint8_t *init = a->initial;
    for (long j = 0; j < objsize; j++)
        if (init[j] != (uint8_t)(a->id + j)) {
            fprintf(stderr, "VERIFY-FAIL falseshare: handed-over object %p byte %ld\n", (void *)init, j);
            exit(EXIT_VERIFY);
        }
    free(init);
    for (long i = 0; i < per_thread; i++) {
        volatile uint8_t *o = xmalloc((size_t)objsize);
        uint8_t seed = (uint8_t)(i * 31 + a->id);
        for (long j = 0; j < objsize; j++) o[j] = seed;
        for (long w = 0; w < writes; w++) o[w % objsize] += 1;
        for (long j = 0; j < objsize; j++) {
            long hits = writes / objsize + (j < writes % objsize ? 1 : 0);
            if (o[j] != (uint8_t)(seed + hits)) {
                fprintf(stderr, "VERIFY-FAIL falseshare: object %p byte %ld\n", (void *)o, j);
                exit(EXIT_VERIFY);
            }
        }
        free((void *)o);
    }
    return NULL;
}

int main(int argc, char **argv) {
    long threads = arg_long(argc, argv, 1, 4);
    long ops = arg_long(argc, argv, 2, 200000);
    objsize = arg_long(argc, argv, 3, 8);
    writes = arg_long(argc, argv, 4, 500);
    per_thread = ops / threads;
    targ_t *args = xmalloc(sizeof(targ_t) * (size_t)threads);
    pthread_t *tid = xmalloc(sizeof(pthread_t) * (size_t)threads);
    for (long t = 0; t < threads; t++) {
        uint8_t *o = xmalloc((size_t)objsize);
        for (long j = 0; j < objsize; j++) o[j] = (uint8_t)(t + j);
        args[t].initial = o;
        args[t].id = t;
    }
    for (long t = 0; t < threads; t++) xpthread_create(&tid[t], worker, &args[t]);
    for (long t = 0; t < threads; t++) pthread_join(tid[t], NULL);
    free(args);
    free(tid);
    return 0;
}
