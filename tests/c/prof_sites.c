/* Heap profile accuracy: three allocation sites hold 64 MiB, 8 MiB and 1 MiB at exit, in
 * blocks of varied sizes, allocated from several threads; a fourth site allocates 256 MiB
 * and frees it all (it must hold nothing). Each site is its own non-inlined function that
 * touches the block after malloc (so the call is not a tail call, and the return address lies
 * inside the site's function).
 *
 * Usage: prof_sites [DUMP_PATH]  -- with a path, also calls brkmalloc_prof_dump(DUMP_PATH)
 * (looked up with dlsym, so the program runs on plain glibc too) and prints its result.
 * Prints the number of blocks held and exits 0. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define MAX_BLOCKS 300000

static void *held[MAX_BLOCKS];
static size_t nheld;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void keep(void *p) {
    pthread_mutex_lock(&lock);
    if (nheld == MAX_BLOCKS) { fprintf(stderr, "too many blocks\n"); exit(2); }
    held[nheld++] = p;
    pthread_mutex_unlock(&lock);
}

static void *check(void *p, size_t n) {
    if (!p) { fprintf(stderr, "malloc(%zu) failed\n", n); exit(4); }
    memset(p, 0x5a, n < 64 ? n : 64);
    return p;
}

__attribute__((noinline)) void *site_64m(size_t n) { return check(malloc(n), n); }
__attribute__((noinline)) void *site_8m(size_t n) { return check(malloc(n), n); }
__attribute__((noinline)) void *site_1m(size_t n) { return check(malloc(n), n); }
__attribute__((noinline)) void *site_temp(size_t n) { return check(malloc(n), n); }

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

/* Allocates `total` bytes through `site` in blocks of lo..hi bytes (log-uniform). */
static void fill(void *(*site)(size_t), size_t total, size_t lo, size_t hi, uint64_t *rng) {
    size_t sum = 0;
    while (sum < total) {
        int lg_lo = 63 - __builtin_clzll(lo), lg_hi = 63 - __builtin_clzll(hi);
        int lg = lg_lo + (int)(next(rng) % (uint64_t)(lg_hi - lg_lo + 1));
        size_t n = ((size_t)1 << lg) + next(rng) % ((size_t)1 << lg);
        if (n < lo) n = lo;
        if (n > total - sum) n = total - sum;
        keep(site(n));
        sum += n;
    }
}

static void *worker(void *arg) {
    uint64_t rng = 0x9e3779b97f4a7c15ull * (uintptr_t)arg + 1;
    for (int round = 0; round < 4; round++) {
        fill(site_64m, (64u << 20) / THREADS / 4, 256, 512 << 10, &rng);
        fill(site_8m, (8u << 20) / THREADS / 4, 32, 16 << 10, &rng);
        fill(site_1m, (1u << 20) / THREADS / 4, 8, 1024, &rng);
        /* Transient memory: allocated and freed, from the same thread and the others'. */
        void *tmp[256];
        for (int k = 0; k < 64; k++) {
            for (int i = 0; i < 256; i++) tmp[i] = site_temp(64 + next(&rng) % 8192);
            for (int i = 0; i < 256; i++) free(tmp[i]);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)(i + 1)) != 0) return 5;
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    if (argc > 1) {
        int (*dump)(const char *) = (int (*)(const char *))dlsym(RTLD_DEFAULT, "brkmalloc_prof_dump");
        /* 0, or ENOENT when profiling is off; glibc has no such function. */
        printf("dump %d\n", dump ? dump(argv[1]) : -1);
    }
    printf("blocks %zu\n", nheld);
    return 0;
}
