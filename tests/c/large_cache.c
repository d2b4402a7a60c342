/* The cache of freed large mappings and large-block realloc, checked from
 * outside (issue 13).
 *
 *   large_cache MODE
 *
 *   Every mode but "cold" first runs one churn cycle (warm_up): under the
 *   automatic bound the cache admits freed mappings only once the program maps
 *   again what it freed (large_cache.rs, C3).
 *
 *   reuse    malloc/touch/free an 8 MiB block, then malloc it again: prints
 *            the minor page faults of touching the second block
 *            ("refault_pages"), the mappings in /proc/self/maps before and
 *            after ("maps_freed", "maps_again"), and checks that calloc of a
 *            reused mapping reads as zero (exits 1 if not);
 *   none / cold / trim / sleep / spin
 *            allocate 12 blocks of 8 MiB, touch them, free them, then:
 *            none: measure at once; cold: the same without the churn cycle
 *            first (a burst freed for good); trim: malloc_trim(0) then measure
 *            ("trim_ret"); sleep: sleep 0.6 s without calling the allocator
 *            (the background purge thread must decay the cache); spin:
 *            malloc/free a 40 KiB block for 0.6 s (the idle purge of the
 *            allocation paths must). Prints "rss_peak_kib", "rss_freed_kib",
 *            "rss_final_kib".
 *   fork     a thread allocates and frees large blocks while the main thread
 *            forks 40 times with cached mappings; each child allocates,
 *            checks and frees large blocks, then exits 0.
 *   realloc  a block through every realloc transition (small -> large across
 *            the threshold, large -> larger, much larger, smaller, small),
 *            twice (the second time the cache is warm); the contents are
 *            checked after every step (exits 1 on a mismatch).
 *
 * tests/options.rs sets BRKMALLOC_CONF and judges the numbers; the program
 * exits non-zero only when a check of its own fails. /proc files are read with
 * open/read on stack buffers (no malloc between the measured steps). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)
#define NBLOCKS 12

#include "statm.h"

/* Lines of /proc/self/maps (one per mapping), counted without malloc. */
static long maps(void) {
    char buf[4096];
    long lines = 0;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        for (ssize_t i = 0; i < n; i++)
            lines += buf[i] == '\n';
    close(fd);
    return lines;
}

static long minflt(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) {
        printf("FAIL malloc(%zu) returned NULL\n", n);
        exit(2);
    }
    return p;
}

/* Byte i of a block tagged `tag`. */
static unsigned char pat(size_t i, unsigned tag) {
    return (unsigned char)((i * 131 + tag) ^ (i >> 12));
}

static void fill(unsigned char *p, size_t n, unsigned tag) {
    for (size_t i = 0; i < n; i++)
        p[i] = pat(i, tag);
}

static int check(const unsigned char *p, size_t n, unsigned tag, const char *step) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat(i, tag)) {
            printf("FAIL %s: byte %zu is %#x, expected %#x\n", step, i, p[i], pat(i, tag));
            return 1;
        }
    return 0;
}

/* Writes every page through a volatile pointer (a memset before free may be
 * removed by the compiler as a dead store). */
static void touch(unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i += 4096)
        ((volatile unsigned char *)p)[i] = v;
}

/* One churn cycle: an 8 MiB block mapped, freed, mapped again and freed. */
static void warm_up(void) {
    for (int i = 0; i < 2; i++) {
        unsigned char *w = xmalloc(8 * MIB);
        touch(w, 8 * MIB, 0x5a);
        free(w);
    }
}

static int mode_reuse(void) {
    size_t n = 8 * MIB;
    warm_up();
    unsigned char *a = xmalloc(n);
    touch(a, n, 0xab);
    free(a);
    long m_freed = maps();
    long f0 = minflt();
    unsigned char *b = xmalloc(n);
    touch(b, n, 0xcd);
    long f1 = minflt();
    long m_again = maps();
    printf("refault_pages=%ld\nmaps_freed=%ld\nmaps_again=%ld\n", f1 - f0, m_freed, m_again);
    free(b);
    unsigned char *c = calloc(1, n);
    if (!c) {
        printf("FAIL calloc returned NULL\n");
        return 2;
    }
    for (size_t i = 0; i < n; i++)
        if (c[i] != 0) {
            printf("FAIL calloc of a reused mapping: byte %zu is %#x\n", i, c[i]);
            return 1;
        }
    free(c);
    printf("calloc_zero=1\n");
    return 0;
}

static int mode_rss(const char *mode) {
    void *blk[NBLOCKS];
    if (strcmp(mode, "cold") != 0)
        warm_up();
    for (int i = 0; i < NBLOCKS; i++) {
        blk[i] = xmalloc(8 * MIB);
        touch(blk[i], 8 * MIB, (unsigned char)(i + 1));
    }
    long peak = rss_kib();
    for (int i = 0; i < NBLOCKS; i++)
        free(blk[i]);
    long freed = rss_kib();
    if (strcmp(mode, "trim") == 0) {
        printf("trim_ret=%d\n", malloc_trim(0));
    } else if (strcmp(mode, "sleep") == 0) {
        struct timespec ts = {0, 600 * 1000 * 1000};
        nanosleep(&ts, NULL);
    } else if (strcmp(mode, "spin") == 0) {
        double end = now_s() + 0.6;
        while (now_s() < end) {
            void *p = xmalloc(40 << 10);
            ((volatile char *)p)[0] = 1;
            free(p);
        }
    }
    printf("rss_peak_kib=%ld\nrss_freed_kib=%ld\nrss_final_kib=%ld\n", peak, freed, rss_kib());
    if (peak < NBLOCKS * 8 * 1024) {
        printf("FAIL the blocks were never resident (peak %ld KiB)\n", peak);
        return 1;
    }
    return 0;
}

static volatile int stop;

static void *churn(void *arg) {
    (void)arg;
    unsigned tag = 1;
    while (!stop) {
        size_t n = (size_t)(1 + tag % 7) * MIB;
        unsigned char *p = xmalloc(n);
        fill(p, 4096, tag);
        if (check(p, 4096, tag, "thread"))
            exit(1);
        free(p);
        tag++;
    }
    return NULL;
}

static int mode_fork(void) {
    for (int i = 0; i < 6; i++)
        free(xmalloc((size_t)(i + 1) * MIB)); /* cached mappings */
    pthread_t t;
    if (pthread_create(&t, NULL, churn, NULL) != 0)
        return 2;
    for (int i = 0; i < 40; i++) {
        pid_t pid = fork();
        if (pid < 0)
            return 2;
        if (pid == 0) {
            for (unsigned k = 1; k <= 8; k++) {
                size_t n = (size_t)k * MIB;
                unsigned char *p = xmalloc(n);
                fill(p, n, k);
                if (check(p, n, k, "child"))
                    _exit(1);
                p = realloc(p, 2 * n);
                if (!p || check(p, n, k, "child realloc"))
                    _exit(1);
                free(p);
            }
            _exit(0);
        }
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            printf("FAIL child %d: status %#x\n", i, st);
            return 1;
        }
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("forks=40\n");
    return 0;
}

static int mode_realloc(void) {
    /* size, what the step exercises */
    static const struct {
        size_t n;
        const char *step;
    } steps[] = {
        {100, "small"},
        {300 << 10, "small -> large (crosses the threshold)"},
        {3 * MIB, "large -> larger"},
        {24 * MIB, "large -> much larger"},
        {24 * MIB + 5000, "large -> a little larger"},
        {2 * MIB, "large -> smaller"},
        {200 << 10, "large -> just above the threshold"},
        {20 << 10, "large -> small"},
        {40, "small -> smaller"},
        {5 * MIB, "small -> large again"},
    };
    for (int round = 0; round < 2; round++) {
        unsigned char *p = xmalloc(steps[0].n);
        size_t have = steps[0].n;
        unsigned tag = 7 + round;
        fill(p, have, tag);
        for (size_t s = 1; s < sizeof steps / sizeof steps[0]; s++) {
            size_t n = steps[s].n;
            p = realloc(p, n);
            if (!p) {
                printf("FAIL realloc to %zu returned NULL\n", n);
                return 2;
            }
            if (malloc_usable_size(p) < n) {
                printf("FAIL %s: usable %zu < %zu\n", steps[s].step, malloc_usable_size(p), n);
                return 1;
            }
            if (check(p, have < n ? have : n, tag, steps[s].step))
                return 1;
            tag++;
            fill(p, n, tag);
            have = n;
        }
        free(p);
        /* Warm the cache for the second round: big freed mappings. */
        for (int i = 0; i < 4; i++)
            free(xmalloc(32 * MIB));
    }
    printf("realloc_steps_ok=1\n");
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *mode = argc > 1 ? argv[1] : "reuse";
    if (strcmp(mode, "reuse") == 0)
        return mode_reuse();
    if (strcmp(mode, "fork") == 0)
        return mode_fork();
    if (strcmp(mode, "realloc") == 0)
        return mode_realloc();
    return mode_rss(mode);
}
