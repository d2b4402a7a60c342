/* Out of memory in the middle of multi-threaded work: 8 threads allocate, reallocate and free
 * blocks of mixed sizes (small ones in thread caches, medium ones from the heap, large ones
 * mapped), each block filled with its own byte and checked before it is resized or freed,
 * while the main thread toggles RLIMIT_AS between "no more address space than now" and no
 * limit every few milliseconds, so that sbrk, mmap and mremap fail at arbitrary points of
 * refills, merges, trims, purges and realloc's moves.
 *
 * Checked: every failure is NULL with errno ENOMEM; a failed realloc leaves its block as it
 * was; calloc's memory is zero; no block's contents change; after the limit is lifted each
 * thread can allocate again (small, medium and 4 MiB blocks) and everything is freed.
 *
 * stdout carries only what must be the same under every allocator (the Rust test compares it
 * with glibc's run); the number of failures seen goes to stderr as "failures: N". */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "ctest.h"

#define THREADS 8
#define SLOTS 256
#define OPS 60000

static int failures;
static atomic_int running = THREADS;
static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;

struct slot {
    unsigned char *p;
    size_t n;
    unsigned char tag;
};

struct worker {
    int id;
    uint64_t rng;
    struct slot slots[SLOTS];
    long oom;
    int bad_errno, bad_contents, bad_calloc, bad_realloc;
};

static size_t pick_size(uint64_t *s) {
    uint64_t r = rnd(s);
    switch (r % 100) {
    case 0:
        return (1u << 20) + (r >> 8) % (1u << 20); /* large: a mapping */
    case 1 ... 5:
        return 32768 + (r >> 8) % (256u << 10); /* medium-large */
    case 6 ... 30:
        return 256 + (r >> 8) % 8192;
    default:
        return 1 + (r >> 8) % 256;
    }
}

static void *work(void *arg) {
    struct worker *w = arg;
    for (long op = 0; op < OPS; op++) {
        struct slot *s = &w->slots[rnd(&w->rng) % SLOTS];
        if (s->p && !bytes_are(s->p, s->n, s->tag))
            w->bad_contents++;
        uint64_t what = rnd(&w->rng) % 8;
        if (!s->p) {
            size_t n = pick_size(&w->rng);
            errno = 0;
            unsigned char *p = what == 0 ? calloc(1, n) : malloc(n);
            if (!p) {
                w->oom++;
                w->bad_errno += errno != ENOMEM;
                continue;
            }
            if (what == 0 && !bytes_are(p, n, 0))
                w->bad_calloc++;
            s->p = p;
            s->n = n;
            s->tag = (unsigned char)(1 + rnd(&w->rng) % 255);
            memset(p, s->tag, n);
        } else if (what < 3) {
            size_t n = pick_size(&w->rng);
            errno = 0;
            unsigned char *q = realloc(s->p, n);
            if (!q) {
                w->oom++;
                w->bad_errno += errno != ENOMEM;
                /* The old block is still ours and unchanged (checked on its next use). */
                if (!bytes_are(s->p, s->n, s->tag))
                    w->bad_realloc++;
                continue;
            }
            size_t keep = n < s->n ? n : s->n;
            if (!bytes_are(q, keep, s->tag))
                w->bad_realloc++;
            s->p = q;
            s->n = n;
            memset(q, s->tag, n);
        } else {
            free(s->p);
            s->p = NULL;
        }
    }
    atomic_fetch_sub(&running, 1);
    return NULL;
}

/* After the limit is lifted: the heap serves every size again; then everything goes back. */
static void finish(struct worker *w) {
    static const size_t sizes[] = {24, 700, 20000, 200000, 4u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *p = malloc(sizes[i]);
        if (!p) {
            pthread_mutex_lock(&report_lock);
            CTEST_FAIL("thread %d: malloc(%zu) failed after the limit was lifted", w->id,
                       sizes[i]);
            pthread_mutex_unlock(&report_lock);
            continue;
        }
        memset(p, 0x5a, sizes[i]);
        free(p);
    }
    for (int i = 0; i < SLOTS; i++) {
        struct slot *s = &w->slots[i];
        if (s->p) {
            if (!bytes_are(s->p, s->n, s->tag))
                w->bad_contents++;
            free(s->p);
            s->p = NULL;
        }
    }
}

static long vm_size(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmSize:", 7) == 0)
            kb = strtol(line + 7, NULL, 10);
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

int main(void) {
    static struct worker workers[THREADS];
    pthread_t tid[THREADS];
    struct rlimit orig;
    getrlimit(RLIMIT_AS, &orig);
    for (int i = 0; i < THREADS; i++) {
        workers[i].id = i;
        workers[i].rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
        if (pthread_create(&tid[i], NULL, work, &workers[i]) != 0) {
            printf("FAIL - pthread_create\n");
            return 1;
        }
    }
    /* Toggle: 2 ms with no room beyond the address space in use when the toggler started
     * (plus 16 MiB, so the C library keeps working), 1 ms without a limit. */
    long base = vm_size();
    if (base < 0) {
        printf("FAIL - cannot read /proc/self/status\n");
        return 1;
    }
    struct rlimit tight = {(rlim_t)base + (16u << 20), orig.rlim_max};
    struct timespec tight_time = {0, 2000000}, open_time = {0, 1000000};
    long toggles = 0;
    while (atomic_load(&running) > 0) {
        setrlimit(RLIMIT_AS, &tight);
        nanosleep(&tight_time, NULL);
        setrlimit(RLIMIT_AS, &orig);
        nanosleep(&open_time, NULL);
        toggles++;
    }
    setrlimit(RLIMIT_AS, &orig);
    for (int i = 0; i < THREADS; i++)
        pthread_join(tid[i], NULL);
    long oom = 0;
    int bad_errno = 0, bad_contents = 0, bad_calloc = 0, bad_realloc = 0;
    for (int i = 0; i < THREADS; i++) {
        finish(&workers[i]);
        oom += workers[i].oom;
        bad_errno += workers[i].bad_errno;
        bad_contents += workers[i].bad_contents;
        bad_calloc += workers[i].bad_calloc;
        bad_realloc += workers[i].bad_realloc;
    }
    fprintf(stderr, "failures: %ld (in %d x %d operations, %ld limit toggles)\n", oom, THREADS,
            OPS, toggles);
    printf("%d threads x %d operations with RLIMIT_AS toggled\n", THREADS, OPS);
    if (bad_errno)
        CTEST_FAIL("%d failed allocations left errno other than ENOMEM", bad_errno);
    else
        printf("ok - every failed allocation set errno to ENOMEM\n");
    if (bad_realloc)
        CTEST_FAIL("%d reallocs lost contents (or changed the block when they failed)",
                   bad_realloc);
    else
        printf("ok - realloc kept the contents; a failed realloc left its block as it was\n");
    if (bad_calloc)
        CTEST_FAIL("%d calloc blocks were not zero", bad_calloc);
    else
        printf("ok - calloc memory was zero\n");
    if (bad_contents)
        CTEST_FAIL("%d blocks changed contents", bad_contents);
    else
        printf("ok - no block changed its contents\n");
    if (failures)
        return 1;
    printf("ok - every thread allocated again after the limit was lifted\n");
    printf("all checks passed\n");
    return 0;
}
