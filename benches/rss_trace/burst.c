/* RSS over time for a burst of large blocks followed by idleness (issue 13).
 *
 *   burst [BLOCKS] [IDLE_MS]
 *
 * Allocates BLOCKS (default 48) blocks of 1-8 MiB (deterministic sizes), writes
 * every page, holds them 200 ms, frees them all, then stays idle for IDLE_MS
 * (default 3000) without calling the allocator. Throughout, every 10 ms, it
 * prints "T_MS RSS_KIB" read from /proc/self/statm with open/read on a stack
 * buffer (no malloc), and a line "# phase NAME T_MS" where a phase starts. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "../../tests/c/statm.h"

static double t0;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6 - t0;
}

static void sample(void) {
    char line[64];
    int n = snprintf(line, sizeof line, "%.0f %ld\n", now_ms(), rss_kib());
    if (write(1, line, (size_t)n) < 0)
        exit(2);
}

static void phase(const char *name) {
    char line[64];
    int n = snprintf(line, sizeof line, "# phase %s %.0f\n", name, now_ms());
    if (write(1, line, (size_t)n) < 0)
        exit(2);
    sample();
}

/* Sleeps `ms` in 10 ms steps, sampling after each. */
static void idle(double ms) {
    double end = now_ms() + ms;
    struct timespec ts = {0, 10 * 1000 * 1000};
    while (now_ms() < end) {
        nanosleep(&ts, NULL);
        sample();
    }
}

int main(int argc, char **argv) {
    int blocks = argc > 1 ? atoi(argv[1]) : 48;
    double idle_ms = argc > 2 ? atof(argv[2]) : 3000;
    t0 = 0;
    t0 = now_ms();
    void *blk[256];
    if (blocks > 256)
        blocks = 256;
    idle(100);
    phase("burst");
    unsigned long x = 88172645463325252ul;
    for (int i = 0; i < blocks; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t n = ((size_t)1 << 20) + (size_t)(x % (7u << 20));
        char *p = malloc(n);
        if (!p)
            return 4;
        for (size_t k = 0; k < n; k += 4096)
            p[k] = (char)k;
        blk[i] = p;
        sample();
    }
    phase("hold");
    idle(200);
    phase("free");
    for (int i = 0; i < blocks; i++)
        free(blk[i]);
    phase("idle");
    idle(idle_ms);
    return 0;
}
