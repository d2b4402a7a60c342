/* Shared helpers for the brkmalloc benchmark workloads.
 *
 * Every block a workload allocates is "self-describing": its first 16 bytes
 * hold its requested size and a random tag, and the rest holds a pattern
 * derived from the tag.  Before a block is freed (or after it is
 * realloc'ed) the pattern is checked; any mismatch prints a diagnostic and
 * exits with EXIT_VERIFY.  Blocks larger than SPARSE_LIMIT get a sparse
 * pattern (one word per 4 KiB page plus the last 64 bytes), so that the
 * large-block workload measures page faults and mapping, not memset.
 *
 * Exit codes: 0 ok, 2 usage, 3 verification failure, 4 allocation failure.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_USAGE 2
#define EXIT_VERIFY 3
#define EXIT_OOM 4

#define HDR_BYTES 16u
#define SPARSE_LIMIT (64u * 1024u)
#define PAGE 4096u

typedef struct {
    uint64_t state;
} rng_t;

static inline void rng_seed(rng_t *r, uint64_t seed) {
    /* splitmix64 of the seed, never zero */
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    r->state = z ? z : 0x1234567ULL;
}

static inline uint64_t rng_next(rng_t *r) { /* xorshift64* */
    uint64_t x = r->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* uniform in [lo, hi] */
static inline size_t rng_range(rng_t *r, size_t lo, size_t hi) {
    return lo + (size_t)(rng_next(r) % (uint64_t)(hi - lo + 1));
}

/* Skewed towards small sizes: octave k above lo is chosen with probability
 * 2^-(k+1) (the remainder goes to the last octave), then uniform inside it. */
static inline size_t rng_skewed(rng_t *r, size_t lo, size_t hi) {
    uint64_t x = rng_next(r);
    size_t a = lo;
    while (a * 2 <= hi && (x & 1)) {
        a *= 2;
        x >>= 1;
    }
    size_t b = a * 2 - 1;
    if (b > hi) b = hi;
    return rng_range(r, a, b);
}

/* log-uniform in [lo, hi] */
static inline size_t rng_logsize(rng_t *r, size_t lo, size_t hi) {
    size_t a = lo;
    int octaves = 0;
    while (a * 2 <= hi) {
        a *= 2;
        octaves++;
    }
    int k = (int)(rng_next(r) % (uint64_t)(octaves + 1));
    size_t base = lo << k;
    size_t top = base * 2 - 1;
    if (top > hi) top = hi;
    return rng_range(r, base, top);
}

/* The workload's name in messages: the program's own name (the harness names each binary
 * after its workload). */
#define g_workload program_invocation_short_name

static void die_verify(const void *p, size_t size, uint64_t tag, size_t off, const char *what) {
    fprintf(stderr, "VERIFY-FAIL %s: block %p size %zu tag %016llx offset %zu: %s\n", g_workload,
            p, size, (unsigned long long)tag, off, what);
    fflush(stderr);
    exit(EXIT_VERIFY);
}

static void die_oom(size_t size) {
    fprintf(stderr, "ALLOC-FAIL %s: allocation of %zu bytes returned NULL\n", g_workload, size);
    fflush(stderr);
    exit(EXIT_OOM);
}

static inline void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) die_oom(n);
    uintptr_t align = n >= 16 ? 16 : (n >= 8 ? 8 : 1);
    if (((uintptr_t)p & (align - 1)) != 0) {
        fprintf(stderr, "VERIFY-FAIL %s: malloc(%zu) returned misaligned %p\n", g_workload, n, p);
        exit(EXIT_VERIFY);
    }
    return p;
}

static inline void *xrealloc(void *old, size_t n) {
    void *p = realloc(old, n);
    if (!p) die_oom(n);
    return p;
}

static inline uint64_t pat_word(uint64_t tag, size_t i) {
    return (tag * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)i * 0xD6E8FEB86659FD93ULL);
}

static inline uint8_t pat_byte(uint64_t tag, size_t i) { return (uint8_t)(pat_word(tag, i) >> 29); }

/* Write header and pattern.  size must be >= HDR_BYTES. */
static void fill_block(void *p, size_t size, uint64_t tag) {
    uint64_t *w = (uint64_t *)p;
    w[0] = (uint64_t)size;
    w[1] = tag;
    uint8_t *b = (uint8_t *)p;
    if (size <= SPARSE_LIMIT) {
        size_t nw = size / 8;
        for (size_t i = 2; i < nw; i++) w[i] = pat_word(tag, i);
        for (size_t i = nw * 8; i < size; i++) b[i] = pat_byte(tag, i);
    } else {
        for (size_t off = PAGE; off + 8 <= size - 64; off += PAGE) w[off / 8] = pat_word(tag, off);
        for (size_t i = size - 64; i < size; i++) b[i] = pat_byte(tag, i);
    }
}

/* Check header and pattern; expect_size / expect_tag of 0 mean "take it
 * from the header" (blocks that travelled between threads). Returns the size. */
static size_t check_block(const void *p, size_t expect_size, uint64_t expect_tag, size_t max_size) {
    const uint64_t *w = (const uint64_t *)p;
    size_t size = (size_t)w[0];
    uint64_t tag = w[1];
    if (expect_size && size != expect_size) die_verify(p, expect_size, expect_tag, 0, "size word changed");
    if (expect_tag && tag != expect_tag) die_verify(p, size, expect_tag, 8, "tag word changed");
    if (size < HDR_BYTES || size > max_size) die_verify(p, size, tag, 0, "size word out of range");
    const uint8_t *b = (const uint8_t *)p;
    if (size <= SPARSE_LIMIT) {
        size_t nw = size / 8;
        for (size_t i = 2; i < nw; i++)
            if (w[i] != pat_word(tag, i)) die_verify(p, size, tag, i * 8, "pattern mismatch");
        for (size_t i = nw * 8; i < size; i++)
            if (b[i] != pat_byte(tag, i)) die_verify(p, size, tag, i, "pattern mismatch (tail)");
    } else {
        for (size_t off = PAGE; off + 8 <= size - 64; off += PAGE)
            if (w[off / 8] != pat_word(tag, off)) die_verify(p, size, tag, off, "pattern mismatch (page)");
        for (size_t i = size - 64; i < size; i++)
            if (b[i] != pat_byte(tag, i)) die_verify(p, size, tag, i, "pattern mismatch (tail)");
    }
    return size;
}

/* Allocate, fill, return. */
static inline void *new_block(rng_t *r, size_t size) {
    void *p = xmalloc(size);
    fill_block(p, size, rng_next(r) | 1);
    return p;
}

/* Check and free a self-describing block (NULL is fine). */
static inline void drop_block(void *p, size_t max_size) {
    if (!p) return;
    check_block(p, 0, 0, max_size);
    free(p);
}

static inline long arg_long(int argc, char **argv, int i, long dflt) {
    if (argc > i) {
        char *end = NULL;
        long v = strtol(argv[i], &end, 10);
        if (!end || *end || v <= 0) {
            fprintf(stderr, "%s: bad argument %d: '%s'\n", g_workload, i, argv[i]);
            exit(EXIT_USAGE);
        }
        return v;
    }
    return dflt;
}

/* The workload's own count of malloc+free calls (calloc counts as a malloc), printed as the
 * last line of stdout, "calls N": the harness divides brkmalloc's central lock acquisitions
 * by it (benches/README.md, scaling mode). */
static inline void print_calls(long long calls) {
    printf("calls %lld\n", calls);
    fflush(stdout);
}

static inline void xpthread_create(pthread_t *t, void *(*fn)(void *), void *arg) {
    int e = pthread_create(t, NULL, fn, arg);
    if (e) {
        fprintf(stderr, "%s: pthread_create failed: %s\n", g_workload, strerror(e));
        exit(EXIT_OOM);
    }
}

#endif
