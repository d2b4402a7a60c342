/* 8 threads allocate blocks of random sizes (mostly 1 B..64 KiB, some 200 KiB+),
 * fill them with a pattern, and swap them through a mutex-protected exchange
 * array, so most blocks are freed (or realloc'd) by a thread other than the one
 * that allocated them.  Every block is verified before it is freed, calloc'd
 * blocks are checked for zeros.  Phases:
 *   1. 8 workers, while the main thread calls malloc_trim(0) every millisecond;
 *   2. 8 fresh workers, which free what the first wave's threads left behind;
 *   3. thread churn: 400 short-lived threads (16 at a time) whose pthread-key
 *      destructors free and allocate during thread exit.
 * Exit status 0 when every check passed. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctest.h"

enum { THREADS = 8, OPS = 15000, SLOTS = 512, LOCAL = 64 };

struct blk {
    unsigned char *p;
    size_t n;
    uint32_t seed;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct blk slots[SLOTS];
static volatile int failed;

static void fail(const char *what, const struct blk *b, size_t at) {
    printf("FAIL - %s: block %p size %zu seed %u, byte %zu\n", what, (void *)b->p, b->n, b->seed,
           at);
    failed = 1;
}

/* Pattern: every byte is the seed byte, except the first and last 8 bytes,
 * which hold the seed and size mixed (catches blocks swapped or shifted);
 * blocks under 16 bytes are all seed byte. */
static void fill(struct blk *b) {
    memset(b->p, (int)(b->seed & 0xff), b->n);
    uint64_t tag = ((uint64_t)b->seed << 32) ^ b->n;
    size_t k = b->n >= 16 ? 8 : 0;
    memcpy(b->p, &tag, k);
    memcpy(b->p + b->n - k, &tag, k);
}
static int check(const struct blk *b, const char *what) {
    uint64_t tag = ((uint64_t)b->seed << 32) ^ b->n;
    size_t k = b->n >= 16 ? 8 : 0;
    if (memcmp(b->p, &tag, k) != 0) {
        fail(what, b, 0);
        return 0;
    }
    if (memcmp(b->p + b->n - k, &tag, k) != 0) {
        fail(what, b, b->n - k);
        return 0;
    }
    unsigned char c = (unsigned char)(b->seed & 0xff);
    for (size_t i = k; i + k < b->n; i++)
        if (b->p[i] != c) {
            fail(what, b, i);
            return 0;
        }
    return 1;
}

static size_t pick_size(uint64_t *s) {
    uint64_t r = rnd(s);
    if (r % 100 == 0)
        return 200 * 1024 + (size_t)((r >> 8) % (600 * 1024)); /* large, mmapped */
    unsigned shift = (unsigned)((r >> 8) % 16);            /* log-uniform 1 B .. 64 KiB */
    return 1 + (size_t)((r >> 16) % ((size_t)1 << (shift + 1)));
}

static int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static int alloc_blk(struct blk *b, uint64_t *s, uint32_t seed) {
    b->n = pick_size(s);
    b->seed = seed;
    switch (rnd(s) % 8) {
    case 0:
        b->p = calloc(1, b->n);
        if (b->p && !all_zero(b->p, b->n)) {
            printf("FAIL - calloc(1, %zu) = %p is not zeroed\n", b->n, (void *)b->p);
            failed = 1;
        }
        break;
    case 1: b->p = memalign(64, b->n); break;
    default: b->p = malloc(b->n); break;
    }
    if (!b->p) {
        printf("FAIL - allocation of %zu returned NULL\n", b->n);
        failed = 1;
        return 0;
    }
    if (((uintptr_t)b->p & 15) != 0) {
        printf("FAIL - %p not 16-aligned\n", (void *)b->p);
        failed = 1;
    }
    if (malloc_usable_size(b->p) < b->n) {
        printf("FAIL - usable size %zu < %zu\n", malloc_usable_size(b->p), b->n);
        failed = 1;
    }
    fill(b);
    return 1;
}

static void *worker(void *arg) {
    uint64_t s = 0x1234567ull * ((uintptr_t)arg + 1) | 1;
    uint32_t seed = (uint32_t)(uintptr_t)arg << 24;
    struct blk local[LOCAL];
    memset(local, 0, sizeof local);
    for (int op = 0; op < OPS && !failed; op++) {
        struct blk b;
        if (!alloc_blk(&b, &s, ++seed))
            break;
        uint64_t r = rnd(&s);
        if (r % 4 != 0) {
            /* Swap with the shared exchange array: the old block came from some
             * other thread (usually) and is freed here. */
            struct blk old;
            size_t k = (size_t)((r >> 8) % SLOTS);
            pthread_mutex_lock(&lock);
            old = slots[k];
            slots[k] = b;
            pthread_mutex_unlock(&lock);
            if (old.p) {
                if (!check(&old, "cross-thread block corrupted"))
                    break;
                if ((r >> 20) % 5 == 0) {
                    /* realloc someone else's block, then free it */
                    size_t m = pick_size(&s);
                    unsigned char *q = realloc(old.p, m);
                    if (!q) {
                        printf("FAIL - realloc(%zu -> %zu) returned NULL\n", old.n, m);
                        failed = 1;
                        break;
                    }
                    /* The first min(n, m) bytes must have moved along. */
                    uint64_t tag = ((uint64_t)old.seed << 32) ^ old.n;
                    unsigned char c = (unsigned char)(old.seed & 0xff);
                    size_t keep = m < old.n ? m : old.n, k8 = old.n >= 16 ? 8 : 0;
                    for (size_t i = 0; i < keep; i++) {
                        unsigned char want =
                            i < k8 ? ((unsigned char *)&tag)[i]
                            : i >= old.n - k8 ? ((unsigned char *)&tag)[i - (old.n - k8)]
                                              : c;
                        if (q[i] != want) {
                            old.p = q;
                            fail("realloc lost contents", &old, i);
                            break;
                        }
                    }
                    old.p = q;
                    memset(q, 0xdd, m);
                }
                free(old.p);
            }
        } else {
            /* Keep it locally for a while. */
            size_t k = (size_t)((r >> 8) % LOCAL);
            if (local[k].p) {
                if (!check(&local[k], "thread-local block corrupted"))
                    break;
                free(local[k].p);
            }
            local[k] = b;
        }
    }
    for (int k = 0; k < LOCAL; k++)
        if (local[k].p) {
            check(&local[k], "thread-local block corrupted at exit");
            free(local[k].p);
        }
    return NULL;
}

enum { CHURN_BATCHES = 25, CHURN_BATCH = 16 };
static pthread_key_t key_a, key_b;
static volatile int dtor_runs;
static pthread_mutex_t dtor_lock = PTHREAD_MUTEX_INITIALIZER;

/* Runs at thread exit: verify and free the thread's block, and allocate and
 * free some more while the thread is being torn down. */
static void key_dtor(void *v) {
    struct blk *b = v;
    check(b, "block freed from a key destructor corrupted");
    free(b->p);
    free(b);
    void *tmp[32];
    for (int i = 0; i < 32; i++) {
        tmp[i] = malloc((size_t)(i * 57 + 1));
        if (!tmp[i]) {
            printf("FAIL - malloc in a key destructor\n");
            failed = 1;
            return;
        }
        memset(tmp[i], i, (size_t)(i * 57 + 1));
    }
    for (int i = 0; i < 32; i++)
        free(tmp[i]);
    pthread_mutex_lock(&dtor_lock);
    dtor_runs++;
    pthread_mutex_unlock(&dtor_lock);
}

static void *churn_thread(void *arg) {
    uint64_t s = 0xabcdefull * ((uintptr_t)arg + 7) | 1;
    uint32_t seed = 0x40000000u + (uint32_t)(uintptr_t)arg * 1000;
    void *local[100];
    for (int i = 0; i < 100; i++) {
        local[i] = malloc(1 + (size_t)(rnd(&s) % 3000));
        if (!local[i]) {
            printf("FAIL - malloc in churn thread\n");
            failed = 1;
            return NULL;
        }
    }
    for (int i = 0; i < 20; i++) {
        struct blk b, old;
        if (!alloc_blk(&b, &s, ++seed))
            return NULL;
        size_t k = (size_t)(rnd(&s) % SLOTS);
        pthread_mutex_lock(&lock);
        old = slots[k];
        slots[k] = b;
        pthread_mutex_unlock(&lock);
        if (old.p) {
            check(&old, "exchange block corrupted (churn)");
            free(old.p);
        }
    }
    for (int i = 0; i < 100; i++)
        free(local[i]);
    /* Two more blocks are freed by the key destructors during thread exit. */
    pthread_key_t keys[2] = {key_a, key_b};
    for (int k = 0; k < 2; k++) {
        struct blk *b = malloc(sizeof *b);
        if (!b || !alloc_blk(b, &s, ++seed)) {
            printf("FAIL - malloc for key value\n");
            failed = 1;
            return NULL;
        }
        pthread_setspecific(keys[k], b);
    }
    return NULL;
}

/* Checks and frees the blocks left in the exchange array (`what`: the message on damage). */
static void drain_slots(const char *what) {
    for (int k = 0; k < SLOTS; k++)
        if (slots[k].p) {
            check(&slots[k], what);
            free(slots[k].p);
            slots[k].p = NULL;
        }
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)i) != 0) {
            printf("FAIL - pthread_create\n");
            return 1;
        }
    /* Trim concurrently with the workers: purging free pages must not race
     * with blocks being handed out. */
    for (int i = 0; i < 200 && !failed; i++) {
        malloc_trim(0);
        usleep(1000);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    printf("ok - %d threads x %d ops joined (malloc_trim running alongside)\n", THREADS, OPS);
    /* Blocks left in the exchange array were allocated by threads that have exited. */
    drain_slots("exchange block corrupted after thread exit");
    /* Second wave: fresh threads reuse what the first wave's caches returned. */
    for (uintptr_t i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, worker, (void *)(i + 100));
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    drain_slots("exchange block corrupted after second wave");
    printf("ok - second wave\n");
    /* Third phase: thread churn.  Short-lived threads allocate, hand blocks
     * to the exchange array, and exit; pthread-key destructors (which run
     * after the allocator's own thread-exit flush for keys created later)
     * free and allocate again during thread exit. */
    if (pthread_key_create(&key_a, key_dtor) != 0 || pthread_key_create(&key_b, key_dtor) != 0) {
        printf("FAIL - pthread_key_create\n");
        return 1;
    }
    for (int batch = 0; batch < CHURN_BATCHES && !failed; batch++) {
        pthread_t c[CHURN_BATCH];
        for (uintptr_t i = 0; i < CHURN_BATCH; i++)
            if (pthread_create(&c[i], NULL, churn_thread, (void *)(batch * CHURN_BATCH + i)) != 0) {
                printf("FAIL - pthread_create (churn)\n");
                return 1;
            }
        for (int i = 0; i < CHURN_BATCH; i++)
            pthread_join(c[i], NULL);
    }
    drain_slots("exchange block corrupted after thread churn");
    if (dtor_runs != 2 * CHURN_BATCHES * CHURN_BATCH) {
        printf("FAIL - %d key destructor runs, want %d\n", (int)dtor_runs,
               2 * CHURN_BATCHES * CHURN_BATCH);
        failed = 1;
    }
    printf("ok - %d short-lived threads with key destructors\n", CHURN_BATCHES * CHURN_BATCH);
    if (failed) {
        printf("FAILED\n");
        return 1;
    }
    printf("ok - cross-thread exchange, all blocks verified\n");
    return 0;
}
