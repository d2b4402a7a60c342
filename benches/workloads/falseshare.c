/* False sharing (Hoard's cache-scratch): the main thread allocates one small
 * object per thread, back to back, and hands object i to thread i, which frees
 * it and then repeatedly allocates a small object, writes it hard, checks it
 * and frees it.  An allocator that gives a thread memory on a cache line that
 * another thread writes makes the cores fight over the line.  The timing shows
 * that only on as many idle cores as threads; the placement shows it anywhere:
 * every thread records where its first loop object is and waits (a barrier)
 * until all threads hold theirs, and the last line of stdout, "shared-lines S
 * of T", counts the threads whose object shares a 64-byte line with another
 * thread's live one (0 for an allocator that keeps them apart).
 * usage: falseshare THREADS OPS(total iterations) [OBJSIZE] [WRITES] */
#include "common.h"

static long per_thread, objsize, writes;
static pthread_barrier_t all_hold_one;

typedef struct {
    void *initial;
    long id;
    uintptr_t first; /* address of this thread's first loop object */
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
        if (i == 0) {
            a->first = (uintptr_t)o;
            pthread_barrier_wait(&all_hold_one);
        }
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
    pthread_barrier_init(&all_hold_one, NULL, (unsigned)threads);
    for (long t = 0; t < threads; t++) xpthread_create(&tid[t], worker, &args[t]);
    for (long t = 0; t < threads; t++) pthread_join(tid[t], NULL);
    long shared = 0;
    for (long t = 0; t < threads; t++)
        for (long u = 0; u < threads; u++)
            if (u != t && args[t].first / 64 == args[u].first / 64) {
                shared++;
                break;
            }
    printf("shared-lines %ld of %ld\n", shared, threads);
    free(args);
    free(tid);
    return 0;
}
