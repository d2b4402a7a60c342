/* More heap misuse that brkmalloc must detect: each mode on argv[1] misuses the heap once and
 * must die by SIGABRT with a "brkmalloc: <func>(): <check>" line on stderr (checked by
 * tests/misuse.rs under LD_PRELOAD=libbrkmalloc.so). Reaching the end of main means the misuse
 * went unnoticed: exit status 3. Modes:
 *
 *   double-free-cached        free(p); free(p): p is still in the thread cache
 *   double-free-flushed       free(p); malloc_trim(0) (flushes the cache); free(p)
 *   double-free-in-layer      free(p) and 199 more blocks of its class (the full list hands its
 *                             older blocks, p among them, to the middle layer); free(p)
 *   double-free-central       the same as double-free-cached with a 64 KiB block (no cache)
 *   double-free-large         free(p); free(p) of a 1 MiB (mmapped) block
 *   double-free-trimmed       free(p); free(p) of a 100 KB heap block whose pages went back
 *                             to the OS in between (the top of the heap was trimmed)
 *   invalid-free-static       free() of a pointer into a static array
 *   invalid-free-stack        free() of a pointer into the stack
 *   invalid-free-mmap         free() of a pointer into a foreign mapping (base + 64)
 *   invalid-free-mmap-page    free() of a page-aligned foreign pointer; the page before it
 *                             is unmapped (the header word cannot be read)
 *   invalid-free-mmap-odd     free(base + 4) of a foreign mapping whose previous page is
 *                             unmapped (p - 8 lies on that page)
 *   interior-free-small       free(p + 16) of a 100-byte block
 *   interior-free-large       free(p + 4096) of a 1 MiB block
 *   overflow-free-neighbour   8 bytes written past malloc_usable_size(p) (the next block's
 *                             header; that block is in use), then free(next)
 *   overflow-free-self        the same overflow of a 40000-byte block, then free(p)
 *   overflow-free-self-small  the same overflow of a 40-byte block, then free(p) (cached,
 *                             unchecked), then malloc_trim(0) (the flush checks it)
 *   write-after-free          free(p) of a 40-byte block, 16 bytes of garbage over its cache
 *                             link, then malloc(40) a few times
 *   write-after-free-aligned  the same, with garbage whose decoded link is 16-byte aligned
 *   write-after-free-forged   the same, with a link forged to point at a static array
 *   realloc-after-free        free(p), then realloc(p, 40) (p still in the thread cache)
 *   realloc-after-free-grow   free(p), then realloc(p, 4000) (p still in the thread cache)
 *   realloc-after-free-inplace free(p) of a 16000-byte block (cached, its next block free),
 *                             then realloc(p, 40000), then malloc(16000)
 *   realloc-after-free-flushed free(p); malloc_trim(0); realloc(p, 100)
 *   realloc-after-free-large  free(p), then realloc(p, 2 MiB) of a 1 MiB block
 *   realloc-after-free-merged free(a), free(p) of two 40000-byte neighbours (p merges into a,
 *                             its header word left behind), then realloc(p, 36000): a shrink
 *                             that realloc keeps in place (it must still be detected)
 *   usable-size-static        malloc_usable_size() of a pointer into a static array
 *   usable-size-stack         malloc_usable_size() of a stack address
 *   usable-size-mmap-page     malloc_usable_size() of a page-aligned foreign pointer
 *   quarantine-write-after-free  (with BRKMALLOC_CONF=quarantine:64k) free(p) of a 100-byte
 *                             block, one byte written into it, then 2000 malloc/free pairs:
 *                             p leaves the quarantine changed
 *   quarantine-double-free    (with quarantine:64k) free(p); free(p) while p waits
 *
 * Each mode prints "step: ..." lines to stdout (unbuffered) so a run shows how far it got. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "ctest.h"

/* Called through volatile pointers so that gcc neither warns about nor removes the misuse. */
static void (*volatile x_free)(void *) = free;
static void *(*volatile x_malloc)(size_t) = malloc;
static void *(*volatile x_realloc)(void *, size_t) = realloc;
static size_t (*volatile x_usable)(void *) = malloc_usable_size;
static int (*volatile x_trim)(size_t) = malloc_trim;

static char static_area[256] __attribute__((aligned(64)));
static uint64_t forged[8] __attribute__((aligned(64)));

#define PAGE 4096

static void step(const char *what) { printf("step: %s\n", what); }

/* Three mallocs of n bytes; the middle one has live neighbours on both sides. */
static char *middle(size_t n, void **keep) {
    keep[0] = x_malloc(n);
    char *p = x_malloc(n);
    keep[1] = x_malloc(n);
    memset(p, 1, n);
    return p;
}

/* A mapping of 3 pages of which the first is unmapped again: returns the second page, whose
 * previous page is not readable. */
static char *foreign_page(void) {
    char *m = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    munmap(m, PAGE);
    memset(m + PAGE, 0, 2 * PAGE);
    return m + PAGE;
}

/* Two blocks of n bytes where the second's header is the word right after the first's usable
 * bytes (so an 8-byte overflow of the first hits it). Both are live. */
static void adjacent(size_t n, char **a, char **b) {
    char *blk[16];
    for (int i = 0; i < 16; i++) {
        blk[i] = x_malloc(n);
        memset(blk[i], 2, n);
    }
    for (int i = 0; i + 1 < 16; i++) {
        size_t u = x_usable(blk[i]);
        if (blk[i] + u + 8 == blk[i + 1]) {
            *a = blk[i];
            *b = blk[i + 1];
            printf("step: adjacent blocks %p and %p (usable %zu)\n", (void *)*a, (void *)*b, u);
            return;
        }
    }
    printf("no two adjacent blocks of %zu bytes found\n", n);
    exit(2);
}

/* 8 bytes of garbage right after p's usable bytes. */
static void overflow(char *p) {
    size_t u = x_usable(p);
    memset(p + u, 0x41, 8);
    step("overflowed 8 bytes past malloc_usable_size");
}

/* A freed 40-byte block whose cache link (first word) and key (second word) are overwritten;
 * `link` is the value stored in the first word. Then malloc(40) four times. */
static void write_after_free(uint64_t (*link)(char *p)) {
    void *keep[2];
    char *p = middle(40, keep);
    x_free(p);
    step("freed p");
    uint64_t words[2] = {link(p), 0x4141414141414141ull};
    memcpy(p, words, 16);
    step("overwrote 16 bytes of the freed block");
    for (int i = 0; i < 4; i++) {
        char *q = x_malloc(40);
        printf("step: malloc(40) returned %p%s\n", (void *)q,
               (char *)q >= static_area && (char *)q < static_area + sizeof static_area ? " (static_area)"
               : (char *)q >= (char *)forged && (char *)q < (char *)(forged + 8) ? " (the forged address)"
                                                                              : "");
    }
}

/* Garbage whose decoded link is misaligned (safe-linking: stored = next ^ (slot >> 12)). */
static uint64_t garbage_misaligned(char *p) {
    uint64_t g = 0x4141414141414141ull;
    if (((g ^ ((uintptr_t)p >> 12)) & 15) == 0) g ^= 1;
    return g;
}

/* Garbage whose decoded link is 16-byte aligned (1 in 16 random overwrites look like this). */
static uint64_t garbage_aligned(char *p) {
    return 0x4141414141414140ull ^ ((uintptr_t)p >> 12);
}

/* A link forged to decode to `forged`, whose own link decodes to NULL. */
static uint64_t link_forged(char *p) {
    forged[0] = (uintptr_t)forged >> 12; /* encodes next = NULL */
    return (uintptr_t)forged ^ ((uintptr_t)p >> 12);
}

int main(int argc, char **argv) {
    const char *m = misuse_mode(argc, argv, "misuse2");
    void *keep[2];
    if (strcmp(m, "double-free-cached") == 0) {
        char *p = middle(40, keep);
        x_free(p);
        step("first free");
        x_free(p);
    } else if (strcmp(m, "double-free-flushed") == 0) {
        char *p = middle(40, keep);
        x_free(p);
        x_trim(0);
        step("first free, cache flushed");
        x_free(p);
    } else if (strcmp(m, "double-free-in-layer") == 0) {
        static char *more[200];
        for (int i = 0; i < 200; i++) more[i] = x_malloc(40);
        for (int i = 0; i < 200; i++) x_free(more[i]);
        step("200 frees, the oldest handed to the middle layer");
        x_free(more[0]);
    } else if (strcmp(m, "double-free-central") == 0) {
        char *p = middle(64 << 10, keep);
        x_free(p);
        step("first free");
        x_free(p);
    } else if (strcmp(m, "double-free-large") == 0) {
        char *p = x_malloc(1 << 20);
        memset(p, 1, 1 << 20);
        x_free(p);
        step("first free");
        x_free(p);
    } else if (strcmp(m, "double-free-trimmed") == 0) {
        /* Ten 100 KB blocks at the top of the heap, all freed: they merge into the free top,
         * and everything beyond the top pad (128 KiB) is trimmed, the last block included. */
        char *ps[10];
        for (int i = 0; i < 10; i++) {
            ps[i] = x_malloc(100000);
            memset(ps[i], 1, 100000);
        }
        for (int i = 0; i < 10; i++) x_free(ps[i]);
        step("freed ten blocks, the heap top was trimmed");
        x_free(ps[9]);
    } else if (strcmp(m, "invalid-free-static") == 0) {
        x_free(static_area + 32);
    } else if (strcmp(m, "invalid-free-stack") == 0) {
        char local[128] __attribute__((aligned(64)));
        memset(local, 0, sizeof local);
        x_free(local + 16);
    } else if (strcmp(m, "invalid-free-mmap") == 0) {
        x_free(foreign_page() + 64);
    } else if (strcmp(m, "invalid-free-mmap-page") == 0) {
        x_free(foreign_page());
    } else if (strcmp(m, "invalid-free-mmap-odd") == 0) {
        x_free(foreign_page() + 4);
    } else if (strcmp(m, "interior-free-small") == 0) {
        char *p = x_malloc(100);
        memset(p, 7, 100);
        x_free(p + 16);
    } else if (strcmp(m, "interior-free-large") == 0) {
        char *p = x_malloc(1 << 20);
        memset(p, 7, 1 << 20);
        x_free(p + 4096);
    } else if (strcmp(m, "overflow-free-neighbour") == 0) {
        char *a, *b;
        adjacent(40, &a, &b);
        overflow(a);
        x_free(b);
    } else if (strcmp(m, "overflow-free-self") == 0) {
        char *a, *b;
        adjacent(40000, &a, &b);
        overflow(a);
        x_free(a);
    } else if (strcmp(m, "overflow-free-self-small") == 0) {
        char *a, *b;
        adjacent(40, &a, &b);
        overflow(a);
        x_free(a);
        step("free(p) returned");
        x_trim(0);
        step("malloc_trim(0) returned");
    } else if (strcmp(m, "write-after-free") == 0) {
        write_after_free(garbage_misaligned);
    } else if (strcmp(m, "write-after-free-aligned") == 0) {
        write_after_free(garbage_aligned);
    } else if (strcmp(m, "write-after-free-forged") == 0) {
        write_after_free(link_forged);
    } else if (strcmp(m, "realloc-after-free") == 0) {
        char *p = middle(40, keep);
        x_free(p);
        step("freed p");
        printf("step: realloc returned %p (p = %p)\n", x_realloc(p, 40), (void *)p);
    } else if (strcmp(m, "realloc-after-free-grow") == 0) {
        char *p = middle(40, keep);
        x_free(p);
        step("freed p");
        printf("step: realloc returned %p (p = %p)\n", x_realloc(p, 4000), (void *)p);
    } else if (strcmp(m, "realloc-after-free-inplace") == 0) {
        /* A 16000-byte class caches one block and refills one at a time: the block is carved
         * from the free top, so the block after it is free and realloc can grow in place. */
        char *p = x_malloc(16000);
        memset(p, 1, 16000);
        x_free(p);
        step("freed p");
        char *q = x_realloc(p, 40000);
        printf("step: realloc returned %p (p = %p)\n", (void *)q, (void *)p);
        char *r = x_malloc(16000);
        printf("step: malloc(16000) returned %p%s\n", (void *)r,
               r == q ? " (the block realloc returned: now owned twice)" : "");
    } else if (strcmp(m, "realloc-after-free-flushed") == 0) {
        char *p = middle(40, keep);
        x_free(p);
        x_trim(0);
        step("freed p, cache flushed");
        printf("step: realloc returned %p (p = %p)\n", x_realloc(p, 100), (void *)p);
    } else if (strcmp(m, "realloc-after-free-large") == 0) {
        char *p = x_malloc(1 << 20);
        memset(p, 1, 1 << 20);
        x_free(p);
        step("freed p");
        printf("step: realloc returned %p (p = %p)\n", x_realloc(p, 2 << 20), (void *)p);
    } else if (strcmp(m, "realloc-after-free-merged") == 0) {
        char *a = x_malloc(40000);
        char *p = x_malloc(40000);
        keep[0] = x_malloc(40000); /* p is not the top */
        memset(a, 1, 40000);
        memset(p, 1, 40000);
        x_free(a);
        x_free(p);
        step("freed a and p");
        printf("step: realloc returned %p (p = %p)\n", x_realloc(p, 36000), (void *)p);
    } else if (strcmp(m, "usable-size-static") == 0) {
        printf("step: usable size %zu\n", x_usable(static_area + 32));
    } else if (strcmp(m, "usable-size-stack") == 0) {
        char local[128] __attribute__((aligned(64)));
        memset(local, 0, sizeof local);
        printf("step: usable size %zu\n", x_usable(local + 16));
    } else if (strcmp(m, "usable-size-mmap-page") == 0) {
        printf("step: usable size %zu\n", x_usable(foreign_page()));
    } else if (strcmp(m, "quarantine-write-after-free") == 0) {
        char *p = x_malloc(100);
        memset(p, 1, 100);
        x_free(p);
        p[60] = 2;
        printf("step: freed %p, then one byte written\n", (void *)p);
        for (int i = 0; i < 2000; i++) x_free(x_malloc(100));
    } else if (strcmp(m, "quarantine-double-free") == 0) {
        char *p = x_malloc(100);
        x_free(p);
        step("first free");
        x_free(p);
    } else {
        fprintf(stderr, "unknown mode %s\n", m);
        return 2;
    }
    printf("misuse was not detected\n");
    return 3;
}
