/* Helpers shared by the C test programs in tests/c/. */
#ifndef CTEST_H
#define CTEST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

/* xorshift64: the programs' deterministic random numbers (*s must not be 0). */
static inline uint64_t rnd(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Reports a failed check: prints "FAIL - <function>:<line>: " and the printf-style message,
 * and counts it in `failures`, a `static int` the including program defines. */
#define CTEST_FAIL(...)                                                                            \
    do {                                                                                           \
        printf("FAIL - %s:%d: ", __func__, __LINE__);                                              \
        printf(__VA_ARGS__);                                                                       \
        printf("\n");                                                                              \
        failures++;                                                                                \
    } while (0)

/* The start of a misuse program: no core dumps from the expected aborts, unbuffered stdout
 * (a run shows how far it got), and the mode from argv[1], printed; exits 2 without one. */
static inline const char *misuse_mode(int argc, char **argv, const char *prog) {
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODE\n", prog);
        exit(2);
    }
    printf("mode %s\n", argv[1]);
    return argv[1];
}

/* Whether the n bytes at p all equal tag (blocks filled with one byte, checked on their next
 * use). */
static inline int bytes_are(const unsigned char *p, size_t n, unsigned char tag) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != tag)
            return 0;
    return 1;
}

#endif
