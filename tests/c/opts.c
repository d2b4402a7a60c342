/* Programs for the BRKMALLOC_CONF options (tests/options.rs).  argv[1]:
 *
 *   work          a deterministic workload on two threads (small blocks that
 *                 hit the thread cache, mid-size blocks from the central
 *                 heap, mmapped blocks, realloc, calloc), verifying every
 *                 byte it wrote; prints one checksum line.  Its stdout must
 *                 not depend on the options.
 *   junk          checks that malloc (not calloc) returns bytes of 0xa5 for
 *                 small, mid-size and mmapped requests, also for a block
 *                 freed and malloc'd again at the same size; calloc still
 *                 returns zeros.  Exit 0 iff every malloc'd byte was 0xa5, 1
 *                 otherwise (so without junk:1 it fails, as the control).
 *   double-free   frees a 40-byte block and a 64 KiB block twice each, then
 *                 prints "survived" and exits 0 (it dies by SIGABRT unless
 *                 abort_on_error:0).
 *   overflow      writes 8 bytes past the usable size of a 50000-byte block
 *                 (over the next block's header), then mallocs 70000 bytes:
 *                 check:1 must abort on that malloc; otherwise it exits 0.
 *   churn         2000 live small blocks, then 20000 malloc/free pairs;
 *                 prints the CPU time of the pairs as "cpu_us=N" on stderr
 *                 (check:1 walks the heap on every one of them).
 *
 * A failed check prints "FAIL - ..." and exits 1. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static void *(*volatile x_malloc)(size_t) = malloc;
static void (*volatile x_free)(void *) = free;

static int failed;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("FAIL - " __VA_ARGS__);                                                         \
            printf("\n");                                                                          \
            failed = 1;                                                                            \
        }                                                                                          \
    } while (0)

/* ---- work --------------------------------------------------------------- */

struct rng {
    uint64_t s;
};

static uint64_t rnd(struct rng *r) {
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return r->s;
}

#define SLOTS 512

struct work {
    uint64_t seed;
    uint64_t sum;
    int bad;
};

static size_t pick_size(struct rng *r) {
    uint64_t k = rnd(r) % 100;
    if (k < 85)
        return 1 + rnd(r) % 512; /* small: thread cache */
    if (k < 99)
        return 33 * 1024 + rnd(r) % (60 * 1024); /* central heap */
    return 200 * 1024 + rnd(r) % (300 * 1024); /* mmapped */
}

static void fill(unsigned char *p, size_t n, unsigned char tag) {
    memset(p, tag, n);
}

static int verify(const unsigned char *p, size_t n, unsigned char tag) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != tag)
            return 0;
    return 1;
}

static void *work_thread(void *arg) {
    struct work *w = arg;
    struct rng r = {w->seed};
    unsigned char *ptr[SLOTS] = {0};
    size_t len[SLOTS] = {0};
    unsigned char tag[SLOTS] = {0};
    for (int step = 0; step < 20000; step++) {
        size_t i = rnd(&r) % SLOTS;
        if (ptr[i]) {
            if (!verify(ptr[i], len[i], tag[i]))
                w->bad = 1;
            w->sum = w->sum * 31 + len[i] + tag[i];
            if (rnd(&r) % 4 == 0) {
                size_t n = pick_size(&r);
                unsigned char *q = realloc(ptr[i], n);
                if (!q) {
                    w->bad = 1;
                    continue;
                }
                if (!verify(q, n < len[i] ? n : len[i], tag[i]))
                    w->bad = 1;
                ptr[i] = q;
                len[i] = n;
                fill(q, n, tag[i]);
                continue;
            }
            x_free(ptr[i]);
            ptr[i] = NULL;
            continue;
        }
        size_t n = pick_size(&r);
        tag[i] = (unsigned char)(1 + rnd(&r) % 250);
        if (rnd(&r) % 8 == 0) {
            ptr[i] = calloc(1, n);
            if (ptr[i] && !verify(ptr[i], n, 0))
                w->bad = 1;
        } else {
            ptr[i] = x_malloc(n);
        }
        if (!ptr[i]) {
            w->bad = 1;
            continue;
        }
        len[i] = n;
        fill(ptr[i], n, tag[i]);
    }
    for (size_t i = 0; i < SLOTS; i++) {
        if (ptr[i]) {
            if (!verify(ptr[i], len[i], tag[i]))
                w->bad = 1;
            x_free(ptr[i]);
        }
    }
    return NULL;
}

static int work(void) {
    struct work a = {0x9e3779b97f4a7c15ull, 0, 0}, b = {0xd1b54a32d192ed03ull, 0, 0};
    pthread_t t;
    if (pthread_create(&t, NULL, work_thread, &b) != 0) {
        printf("FAIL - pthread_create\n");
        return 1;
    }
    work_thread(&a);
    pthread_join(t, NULL);
    CHECK(!a.bad && !b.bad, "a block's contents changed under the program");
    printf("work checksum %016llx %016llx\n", (unsigned long long)a.sum,
           (unsigned long long)b.sum);
    return failed;
}

/* ---- junk --------------------------------------------------------------- */

/* The number of bytes of p[0..n) that are not `byte`. */
static size_t count_not(const unsigned char *p, size_t n, unsigned char byte) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += p[i] != byte;
    return bad;
}

static int junk(void) {
    static const size_t sizes[] = {24, 100, 1000, 4000, 20000, 50000, 300000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        /* Some live neighbours, so the block does not simply melt into the top. */
        void *before = x_malloc(n);
        unsigned char *p = x_malloc(n);
        void *after = x_malloc(n);
        if (!before || !p || !after) {
            printf("FAIL - malloc(%zu) returned NULL\n", n);
            return 1;
        }
        size_t bad = count_not(p, n, 0xa5);
        printf("malloc(%zu): %zu of %zu bytes are not 0xa5\n", n, bad, n);
        CHECK(bad == 0, "malloc(%zu) is not junk-filled", n);
        /* Overwrite it, free it, malloc the same size again: the new block (most likely
         * the same one) must be junk again, not our zeros. */
        memset(p, 0, n);
        x_free(p);
        p = x_malloc(n);
        if (!p) {
            printf("FAIL - malloc(%zu) returned NULL\n", n);
            return 1;
        }
        bad = count_not(p, n, 0xa5);
        printf("malloc(%zu) after free: %zu of %zu bytes are not 0xa5\n", n, bad, n);
        CHECK(bad == 0, "malloc(%zu) of a reused block is not junk-filled", n);
        memset(p, 0x77, n);
        x_free(p);
        unsigned char *z = calloc(1, n);
        if (!z) {
            printf("FAIL - calloc(1, %zu) returned NULL\n", n);
            return 1;
        }
        bad = count_not(z, n, 0);
        CHECK(bad == 0, "calloc(1, %zu): %zu bytes are not zero", n, bad);
        x_free(z);
        x_free(before);
        x_free(after);
    }
    printf(failed ? "junk: not every malloc'd byte was 0xa5\n" : "junk: ok\n");
    return failed;
}

/* ---- double free ---------------------------------------------------------- */

static int double_free(void) {
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    static const size_t sizes[] = {40, 64 * 1024};
    for (size_t k = 0; k < 2; k++) {
        size_t n = sizes[k];
        void *a = x_malloc(n), *p = x_malloc(n), *b = x_malloc(n);
        memset(p, 1, n);
        x_free(p);
        printf("freeing a %zu-byte block twice\n", n);
        x_free(p);
        x_free(a);
        x_free(b);
    }
    /* The allocator still works. */
    for (int i = 0; i < 1000; i++) {
        void *q = x_malloc((size_t)(i % 300) + 1);
        if (!q) {
            printf("FAIL - malloc after the double free\n");
            return 1;
        }
        memset(q, 2, (size_t)(i % 300) + 1);
        x_free(q);
    }
    printf("survived\n");
    return 0;
}

/* ---- check ------------------------------------------------------------- */

/* Overwrites the header of the block after a 50000-byte block (a heap overflow), then makes
 * one unrelated central allocation.  With check:1 the heap verifier runs on that operation
 * and aborts; without it nothing looks at the damaged block and the program exits 0. */
static int overflow(void) {
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    unsigned char *p = x_malloc(50000);
    void *q = x_malloc(50000);
    if (!p || !q) {
        printf("FAIL - malloc(50000) returned NULL\n");
        return 1;
    }
    size_t n = malloc_usable_size(p);
    printf("overflowing a %zu-byte block by 8 bytes\n", n);
    memset(p + n, 0x41, 8);
    void *r = x_malloc(70000);
    printf("overflow not detected (r=%p)\n", r);
    return 0;
}

static long cpu_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000L + ru.ru_utime.tv_usec +
           ru.ru_stime.tv_usec;
}

/* 2000 live small blocks, then 20000 malloc/free pairs; prints the CPU time they took
 * ("cpu_us=N" on stderr: stdout is the same with every option). */
static int churn(void) {
    enum { LIVE = 2000, OPS = 20000 };
    static void *live[LIVE];
    for (int i = 0; i < LIVE; i++) {
        live[i] = x_malloc(64 + (size_t)(i % 7) * 16);
        if (!live[i]) {
            printf("FAIL - malloc returned NULL\n");
            return 1;
        }
    }
    long t0 = cpu_us();
    for (int i = 0; i < OPS; i++) {
        void *p = x_malloc(32 + (size_t)(i % 5) * 48);
        if (!p) {
            printf("FAIL - malloc returned NULL\n");
            return 1;
        }
        *(volatile char *)p = 1;
        x_free(p);
    }
    long t1 = cpu_us();
    for (int i = 0; i < LIVE; i++)
        x_free(live[i]);
    fprintf(stderr, "cpu_us=%ld\n", t1 - t0);
    printf("churn done\n");
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: opts work|junk|double-free|overflow|churn\n");
        return 2;
    }
    if (strcmp(argv[1], "work") == 0)
        return work();
    if (strcmp(argv[1], "junk") == 0)
        return junk();
    if (strcmp(argv[1], "double-free") == 0)
        return double_free();
    if (strcmp(argv[1], "overflow") == 0)
        return overflow();
    if (strcmp(argv[1], "churn") == 0)
        return churn();
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
