/* Heap misuse that the allocator must detect and abort on.  argv[1] picks it:
 *   double-free          free(p); free(p) on a small block
 *   double-free-medium   the same with a 4 KiB block
 *   invalid-free-static  free() of a pointer into a static array
 *   invalid-free-stack   free() of a pointer into the stack
 *   interior-free        free(p + 16) where p came from malloc
 * Under LD_PRELOAD=libbrkmalloc.so each must die by SIGABRT with a message
 * starting "brkmalloc: free(): " on stderr (checked by tests/preload.rs).
 * Reaching the end of main is a failure: exit status 3. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "ctest.h"

static void (*volatile x_free)(void *) = free;
static void *(*volatile x_malloc)(size_t) = malloc;

static char static_area[256] __attribute__((aligned(64)));

static void double_free(size_t n) {
    /* Some live neighbours so the block is not at the edge of anything. */
    void *a = x_malloc(n), *p = x_malloc(n), *b = x_malloc(n);
    memset(p, 1, n);
    x_free(p);
    x_free(p);
    x_free(a);
    x_free(b);
}

int main(int argc, char **argv) {
    const char *m = misuse_mode(argc, argv, "misuse");
    if (strcmp(m, "double-free") == 0) {
        double_free(40);
    } else if (strcmp(m, "double-free-medium") == 0) {
        double_free(4096);
    } else if (strcmp(m, "invalid-free-static") == 0) {
        x_free(static_area + 32);
    } else if (strcmp(m, "interior-free") == 0) {
        char *p = x_malloc(100);
        memset(p, 7, 100);
        x_free(p + 16);
    } else if (strcmp(m, "invalid-free-stack") == 0) {
        char local[128] __attribute__((aligned(64)));
        memset(local, 0, sizeof local);
        x_free(local + 16);
    } else {
        fprintf(stderr, "unknown mode %s\n", m);
        return 2;
    }
    printf("misuse was not detected\n");
    return 3;
}
