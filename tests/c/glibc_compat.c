/* glibc's behaviour in five cases where brkmalloc used to differ (issue 14), modelled on
 * glibc's own malloc tests. Run on plain glibc (the control) and under the preload.
 *
 *   fork_stdio      thread A: fflush(NULL) in a loop (holds the stdio list lock, waits for
 *                   stream S); thread B: getline on S, a pipe fed with long lines (holds S,
 *                   reallocs); thread C (main): fork in a loop. Deadlocks if the allocator's
 *                   prepare handler takes its lock before fork takes the list lock. Bounded
 *                   by alarm(): a hang ends with SIGALRM.
 *   fork_signal     single-threaded: a SIGALRM handler forks; the timer is armed from a
 *                   prepare handler (registered after the allocator's, so it runs before it)
 *                   to fire while fork copies a 64 MiB heap, i.e. with the allocator's fork
 *                   locks held. Deadlocks if the nested prepare waits for its own thread's
 *                   locks. A watchdog process kills the tester after 20 s ("deadlock").
 *   memalign_errno  posix_memalign out of memory: ENOMEM returned and in errno.
 *   mallopt         glibc's tst-mallopt values all return 1; M_MXFAST out of range 0.
 *   perturb         mallopt(M_PERTURB, 0x42): new memory is 0xbd, freed memory 0x42.
 *   stats_cancel    malloc_stats() in a thread with a cancel pending: everything printed
 *                   (cancellation disabled while printing), with the 100-byte block of main
 *                   counted ("in use bytes" not 0).
 *   fork_children   the parent and 3 forked children allocate and exit (stats_file tests),
 *                   while 4 threads of the parent that allocated are alive.
 *
 * Prints one line per check; exits non-zero on a failure. Compile with -fno-builtin: gcc
 * otherwise assumes that malloc-family calls leave errno alone. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctest.h"

static int failures;
/* A failed check is counted; the mode goes on. */
#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) CTEST_FAIL(__VA_ARGS__);                                                  \
    } while (0)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- fork_stdio ------------------------------------------------------------------------ */

static FILE *stream_s;
static volatile int stop_threads;

static void *flusher(void *arg) {
    (void)arg;
    while (!stop_threads) fflush(NULL);
    return NULL;
}

static void *reader(void *arg) {
    (void)arg;
    while (!stop_threads) {
        char *line = NULL;
        size_t cap = 0;
        if (getline(&line, &cap, stream_s) < 0) {
            free(line);
            break;
        }
        free(line);
    }
    return NULL;
}

static void *feeder(void *arg) {
    int fd = (int)(intptr_t)arg;
    static char buf[300000];
    memset(buf, 'x', sizeof buf);
    unsigned r = 1;
    while (!stop_threads) {
        r = r * 1103515245u + 12345u;
        size_t n = 1000 + (r >> 8) % (sizeof buf - 1000);
        buf[n - 1] = '\n';
        if (write(fd, buf, n) < 0) break;
        buf[n - 1] = 'x';
    }
    close(fd);
    return NULL;
}

static void fork_stdio(void) {
    int p[2];
    if (pipe(p) != 0) {
        perror("pipe");
        exit(2);
    }
    stream_s = fdopen(p[0], "r");
    alarm(60);
    pthread_t a, b, f;
    pthread_create(&f, NULL, feeder, (void *)(intptr_t)p[1]);
    pthread_create(&a, NULL, flusher, NULL);
    pthread_create(&b, NULL, reader, NULL);
    int forks = 0;
    double end = now() + 3.0;
    while (now() < end) {
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid < 0) {
            perror("fork");
            exit(2);
        }
        int st;
        waitpid(pid, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
        forks++;
    }
    stop_threads = 1;
    alarm(0);
    printf("fork_stdio: %d forks while one thread flushed all streams and one read a pipe "
           "with getline, no deadlock\n",
           forks);
    _exit(failures ? 1 : 0); /* the threads may still block on the pipe */
}

/* ---- fork_signal ----------------------------------------------------------------------- */

static volatile sig_atomic_t in_fork, in_handler, nested_in_fork, handler_forks;

static void alarm_fork(int sig) {
    (void)sig;
    in_handler = 1;
    if (in_fork) nested_in_fork++;
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    if (pid > 0) {
        int st;
        waitpid(pid, &st, 0);
        handler_forks++;
    }
    in_handler = 0;
}

static long timer_us;

static void arm_timer(void) {
    if (in_handler) return; /* the nested fork: no second timer */
    in_fork = 1;
    struct itimerval it = {{0, 0}, {0, timer_us}};
    setitimer(ITIMER_REAL, &it, NULL);
}

static void fork_signal_tester(void) {
    /* A big heap makes fork slow (page tables are copied), so the timer fires inside it. */
    size_t big = 64u << 20;
    char *mem = malloc(big);
    if (!mem) exit(2);
    memset(mem, 1, big);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = alarm_fork;
    sigaction(SIGALRM, &sa, NULL);
    pthread_atfork(arm_timer, NULL, NULL);
    int rounds = 0;
    for (long us = 20; us <= 3000 && nested_in_fork < 5; us = us * 5 / 4 + 1, rounds++) {
        timer_us = us;
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        in_fork = 0;
        int st;
        waitpid(pid, &st, 0);
        /* Let a late timer fire outside fork before the next round. */
        struct timespec ts = {0, 4000000};
        nanosleep(&ts, NULL);
        free(malloc(100));
    }
    printf("fork_signal: %d rounds, %d forks from the handler, %d of them interrupting fork\n",
           rounds, (int)handler_forks, (int)nested_in_fork);
    CHECK(nested_in_fork > 0, "the timer never landed inside fork: nothing tested");
    free(mem);
    exit(failures ? 1 : 0);
}

static void fork_signal(void) {
    fflush(stdout);
    pid_t tester = fork();
    if (tester == 0) fork_signal_tester();
    double end = now() + 20;
    int st = 0;
    while (waitpid(tester, &st, WNOHANG) == 0) {
        if (now() > end) {
            kill(tester, SIGKILL);
            waitpid(tester, &st, 0);
            printf("FAIL fork_signal: deadlock (the tester hung for 20 s)\n");
            exit(1);
        }
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "tester status %#x", st);
}

/* ---- memalign_errno, mallopt, perturb -------------------------------------------------- */

static void memalign_errno(void) {
    void *p = (void *)1;
    errno = 0;
    /* 64 TiB: past the size checks, refused by the OS (what running out of memory is). */
    int rc = posix_memalign(&p, 64, (size_t)1 << 46), e = errno;
    CHECK(rc == ENOMEM, "posix_memalign(64, 64 TiB) = %d", rc);
    CHECK(e == ENOMEM, "errno %d after the ENOMEM, want ENOMEM (%d)", e, ENOMEM);
    errno = 0;
    rc = posix_memalign(&p, 3, 100), e = errno;
    CHECK(rc == EINVAL && e == 0, "posix_memalign(3, 100) = %d, errno %d", rc, e);
    errno = 1234;
    rc = posix_memalign(&p, 64, 100), e = errno;
    CHECK(rc == 0 && e == 1234, "posix_memalign(64, 100) = %d, errno %d", rc, e);
    free(p);
    printf("memalign_errno: checked\n");
}

static void mallopt_values(void) {
    static const struct {
        const char *name;
        int param, value, want;
    } cases[] = {
        {"M_CHECK_ACTION, 1", M_CHECK_ACTION, 1, 1},
        {"M_MMAP_MAX, 65536", M_MMAP_MAX, 64 * 1024, 1},
        {"M_MMAP_THRESHOLD, 65536", M_MMAP_THRESHOLD, 64 * 1024, 1},
        {"M_MXFAST, 0", M_MXFAST, 0, 1},
        {"M_PERTURB, 0xa5", M_PERTURB, 0xa5, 1},
        {"M_PERTURB, 0", M_PERTURB, 0, 1},
        {"M_TOP_PAD, 65536", M_TOP_PAD, 64 * 1024, 1},
        {"M_TRIM_THRESHOLD, -1", M_TRIM_THRESHOLD, -1, 1},
        {"M_TRIM_THRESHOLD, 131072", M_TRIM_THRESHOLD, 128 * 1024, 1},
        {"M_ARENA_TEST, 0", M_ARENA_TEST, 0, 1},
        {"M_ARENA_MAX, 2", M_ARENA_MAX, 2, 1},
        {"M_MXFAST, 161", M_MXFAST, 161, 0},
        {"M_MXFAST, -1", M_MXFAST, -1, 0},
        {"M_MMAP_THRESHOLD, 64 MiB", M_MMAP_THRESHOLD, 64 << 20, 1},
        {"M_MMAP_THRESHOLD, 131072", M_MMAP_THRESHOLD, 128 * 1024, 1},
        {"12345 (unknown), 1", 12345, 1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int r = mallopt(cases[i].param, cases[i].value);
        CHECK(r == cases[i].want, "mallopt(%s) = %d, glibc returns %d", cases[i].name, r,
              cases[i].want);
    }
    /* The heap still works with those settings. */
    for (int i = 0; i < 1000; i++) {
        char *p = malloc(i * 37 % 5000 + 1);
        CHECK(p != NULL, "malloc after mallopt");
        memset(p, i, i * 37 % 5000 + 1);
        free(p);
    }
    printf("mallopt: %zu calls checked\n", sizeof cases / sizeof *cases);
}

/* Sizes above glibc's tcache (1032 bytes), below the mmap threshold: glibc perturbs them. */
static void perturb(void) {
    CHECK(mallopt(M_PERTURB, 0x42) == 1, "mallopt(M_PERTURB, 0x42)");
    static const size_t sizes[] = {2000, 4000, 20000, 60000};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        unsigned char *p = malloc(n), *guard = malloc(100);
        size_t bad = 0;
        for (size_t j = 0; j < n; j++) bad += p[j] != 0xbd;
        CHECK(bad == 0, "malloc(%zu): %zu bytes not 0xbd (the complement of 0x42)", n, bad);
        memset(p, 0x11, n);
        unsigned char *volatile freed = p; /* read after free on purpose: the test's point */
        free(p);
        /* The allocator keeps its own links in the first and last words of a free block. */
        bad = 0;
        for (size_t j = 32; j < n - 32; j++) bad += freed[j] != 0x42;
        CHECK(bad == 0, "free of %zu bytes: %zu bytes not 0x42", n, bad);
        free(guard);
    }
    mallopt(M_PERTURB, 0);
    unsigned char *q = malloc(3000);
    memset(q, 7, 3000);
    free(q);
    printf("perturb: new memory 0xbd, freed memory 0x42\n");
}

/* ---- stats_cancel ---------------------------------------------------------------------- */

static pthread_barrier_t stats_gate;

static void *stats_thread(void *arg) {
    (void)arg;
    pthread_barrier_wait(&stats_gate);
    /* The cancel is pending now; malloc_stats must print everything first. */
    malloc_stats();
    pthread_testcancel();
    return NULL;
}

static void stats_cancel(void) {
    char *block = malloc(100);
    memset(block, 1, 100);
    char path[] = "/tmp/brkmalloc-stats-XXXXXX";
    int fd = mkstemp(path);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    pthread_t t;
    pthread_barrier_init(&stats_gate, NULL, 2);
    pthread_create(&t, NULL, stats_thread, NULL);
    pthread_cancel(t);
    pthread_barrier_wait(&stats_gate);
    void *ret;
    pthread_join(t, &ret);
    dup2(saved, 2);
    close(saved);
    CHECK(ret == PTHREAD_CANCELED, "the thread was not cancelled");
    char out[4096] = {0};
    ssize_t n = pread(fd, out, sizeof out - 1, 0);
    close(fd);
    unlink(path);
    CHECK(n > 0 && strstr(out, "max mmap bytes") != NULL,
          "malloc_stats printed %zd bytes under a pending cancel:\n%s", n, out);
    const char *use = strstr(out, "in use bytes");
    long in_use = use ? strtol(strchr(use, '=') + 1, NULL, 10) : 0;
    CHECK(in_use >= 100, "in use bytes = %ld with a 100-byte block allocated:\n%s", in_use, out);
    free(block);
    printf("stats_cancel: %zd bytes printed, in use bytes = %ld\n", n, in_use);
}

/* ---- fork_children --------------------------------------------------------------------- */

static pthread_barrier_t children_barrier;

/* A thread that allocates (its cache becomes active), waits while main forks, then exits. */
static void *fork_children_thread(void *arg) {
    free(malloc(100 + (size_t)(intptr_t)arg));
    pthread_barrier_wait(&children_barrier);
    pthread_barrier_wait(&children_barrier);
    return NULL;
}

static void fork_children(void) {
    /* 4 threads with caches are alive while main forks: a child has only main's. */
    pthread_t th[4];
    pthread_barrier_init(&children_barrier, NULL, 5);
    for (intptr_t i = 0; i < 4; i++)
        CHECK(pthread_create(&th[i], NULL, fork_children_thread, (void *)i) == 0, "thread");
    pthread_barrier_wait(&children_barrier);
    void *keep[3];
    for (int i = 0; i < 3; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            for (int j = 0; j < 1000; j++) free(malloc(j * 13 % 3000 + 1));
            exit(0); /* through exit(): the report is written */
        }
        int st;
        waitpid(pid, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d status %#x", i, st);
        keep[i] = malloc(1000);
    }
    for (int i = 0; i < 3; i++) free(keep[i]);
    pthread_barrier_wait(&children_barrier);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&children_barrier);
    printf("fork_children: parent %d, 3 children\n", (int)getpid());
}

static const struct {
    const char *name;
    void (*run)(void);
} modes[] = {
    {"fork_stdio", fork_stdio},     {"fork_signal", fork_signal},
    {"memalign_errno", memalign_errno}, {"mallopt", mallopt_values},
    {"perturb", perturb},           {"stats_cancel", stats_cancel},
    {"fork_children", fork_children},
};

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; argc > 1 && i < sizeof modes / sizeof *modes; i++)
        if (strcmp(argv[1], modes[i].name) == 0) {
            modes[i].run();
            return failures ? 1 : 0;
        }
    fprintf(stderr, "usage: glibc_compat fork_stdio|fork_signal|memalign_errno|mallopt|"
                    "perturb|stats_cancel|fork_children\n");
    return 2;
}
