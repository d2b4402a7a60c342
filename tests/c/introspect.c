/* glibc's introspection calls with real numbers (tests/options.rs).  argv[1]:
 *
 *   mallinfo      mallinfo2() follows a known pattern: uordblks rises by at
 *                 least N * size after N mallocs of 64 KiB (central heap: too
 *                 big for the thread caches, below the mmap threshold) and
 *                 falls by as much after the frees and malloc_trim(0); hblks
 *                 and hblkhd rise by exactly 10 blocks and about 10 MiB for
 *                 ten 1 MiB blocks, and come back after the frees; mallinfo()
 *                 is mallinfo2() truncated to int.
 *   mmap8k yes|no eight 8 KiB mallocs: with "yes" hblks must rise by 8 and
 *                 hblkhd by at least 64 KiB (mmap_threshold:4096), with "no"
 *                 neither may change.
 *   mallopt       mallopt(M_MMAP_THRESHOLD, 4096) returns 1 and 8 KiB mallocs
 *                 are then mmapped; M_ARENA_MAX returns 1; M_MXFAST returns
 *                 0 (brkmalloc has no fastbins).  brkmalloc only: glibc
 *                 accepts M_MXFAST, and keeps serving 8 KiB from its top
 *                 chunk while the top has room.
 *   stats         malloc_stats() (to stderr, checked by the test).
 *   info          malloc_info(0, stdout) (XML, parsed by the test), then
 *                 malloc_info(1, stdout) must return -1 with EINVAL (glibc
 *                 2.36 returns EINVAL instead: accepted without
 *                 CTEST_EXPECT_BRKMALLOC=1).
 *   trim          malloc_trim(0) returns 1 after freeing 12.5 MiB.
 *   toptrim trimmed|kept
 *                 frees 6.25 MiB at the top of the heap without malloc_trim:
 *                 "trimmed" requires arena to shrink by itself (the default
 *                 trim_threshold), "kept" requires it to stay, with keepcost
 *                 covering the free top (trim_threshold:64m).
 *
 * Every check prints one line; a failed one starts with "FAIL - " and makes
 * the exit status 1.  Everything is measured on the main thread with stdout
 * unbuffered, so no stdio buffer appears between two measurements. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* mallinfo() is deprecated in glibc; checking it is the point. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

static void *(*volatile x_malloc)(size_t) = malloc;
static void (*volatile x_free)(void *) = free;

static int failed;

/* x_malloc(size) with its first `fill` bytes set to `byte`; exits 1 when malloc fails. */
static void *filled(size_t size, int byte, size_t fill) {
    void *p = x_malloc(size);
    if (!p) {
        printf("FAIL - malloc(%zu) returned NULL\n", size);
        exit(1);
    }
    memset(p, byte, fill);
    return p;
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            printf("ok - ");                                                                       \
        } else {                                                                                   \
            printf("FAIL - ");                                                                     \
            failed = 1;                                                                            \
        }                                                                                          \
        printf(__VA_ARGS__);                                                                       \
        printf("\n");                                                                              \
    } while (0)

static int expect_brkmalloc(void) {
    const char *e = getenv("CTEST_EXPECT_BRKMALLOC");
    return e && strcmp(e, "1") == 0;
}

static void print_mi2(const char *label, struct mallinfo2 m) {
    printf("%s: arena=%zu ordblks=%zu hblks=%zu hblkhd=%zu uordblks=%zu fordblks=%zu "
           "keepcost=%zu\n",
           label, m.arena, m.ordblks, m.hblks, m.hblkhd, m.uordblks, m.fordblks, m.keepcost);
}

#define MID 100
#define MID_SIZE ((size_t)64 << 10)
#define BIG 10
#define BIG_SIZE ((size_t)1 << 20)

static void mallinfo_pattern(void) {
    static void *mid[MID], *big[BIG];
    /* A live block below everything, so the heap exists before the first snapshot. */
    void *guard = x_malloc(100);
    struct mallinfo2 m0 = mallinfo2();
    print_mi2("start", m0);
    for (int i = 0; i < MID; i++) {
        mid[i] = filled(MID_SIZE, 1, MID_SIZE);
    }
    struct mallinfo2 m1 = mallinfo2();
    print_mi2("after 100 x 64 KiB", m1);
    CHECK(m1.uordblks >= m0.uordblks + MID * MID_SIZE,
          "uordblks rose by %zd, at least %zu expected", (ssize_t)(m1.uordblks - m0.uordblks),
          MID * MID_SIZE);
    CHECK(m1.arena >= m1.uordblks + m1.fordblks - m1.hblkhd && m1.arena >= MID * MID_SIZE,
          "arena (%zu) covers the blocks in use and free", m1.arena);
    CHECK(m1.hblks == m0.hblks, "hblks unchanged by heap blocks (%zu -> %zu)", m0.hblks,
          m1.hblks);
    for (int i = 0; i < MID; i++)
        x_free(mid[i]);
    int t = malloc_trim(0);
    struct mallinfo2 m2 = mallinfo2();
    print_mi2("after free + malloc_trim(0)", m2);
    CHECK(t == 1, "malloc_trim(0) returned %d after freeing 6.25 MiB", t);
    CHECK(m2.uordblks + MID * MID_SIZE <= m1.uordblks, "uordblks fell by %zd, at least %zu expected",
          (ssize_t)(m1.uordblks - m2.uordblks), MID * MID_SIZE);
    CHECK(m2.arena + MID * MID_SIZE <= m1.arena, "arena fell by %zd after the trim, at least %zu "
          "expected", (ssize_t)(m1.arena - m2.arena), MID * MID_SIZE);

    struct mallinfo2 m3 = mallinfo2();
    for (int i = 0; i < BIG; i++) {
        big[i] = filled(BIG_SIZE, 2, 4096);
    }
    struct mallinfo2 m4 = mallinfo2();
    print_mi2("after 10 x 1 MiB", m4);
    CHECK(m4.hblks == m3.hblks + BIG, "hblks rose by %zd, %d expected",
          (ssize_t)(m4.hblks - m3.hblks), BIG);
    size_t d = m4.hblkhd - m3.hblkhd;
    CHECK(d >= BIG * BIG_SIZE && d <= BIG * (BIG_SIZE + (64 << 10)),
          "hblkhd rose by %zu, %zu plus at most 64 KiB per block expected", d, BIG * BIG_SIZE);
    CHECK(m4.uordblks < m3.uordblks + BIG_SIZE, "uordblks not changed by mmapped blocks "
          "(%zu -> %zu)", m3.uordblks, m4.uordblks);

    /* mallinfo() is mallinfo2() truncated; nothing allocates between the two calls. */
    struct mallinfo2 a = mallinfo2();
    struct mallinfo b = mallinfo();
    CHECK((int)a.arena == b.arena && (int)a.ordblks == b.ordblks && (int)a.smblks == b.smblks &&
              (int)a.hblks == b.hblks && (int)a.hblkhd == b.hblkhd &&
              (int)a.usmblks == b.usmblks && (int)a.fsmblks == b.fsmblks &&
              (int)a.uordblks == b.uordblks && (int)a.fordblks == b.fordblks &&
              (int)a.keepcost == b.keepcost,
          "mallinfo() agrees with mallinfo2(): arena %d hblks %d hblkhd %d uordblks %d "
          "fordblks %d keepcost %d",
          b.arena, b.hblks, b.hblkhd, b.uordblks, b.fordblks, b.keepcost);

    for (int i = 0; i < BIG; i++)
        x_free(big[i]);
    struct mallinfo2 m5 = mallinfo2();
    print_mi2("after freeing the 1 MiB blocks", m5);
    CHECK(m5.hblks == m3.hblks && m5.hblkhd == m3.hblkhd,
          "hblks/hblkhd back to %zu/%zu: %zu/%zu", m3.hblks, m3.hblkhd, m5.hblks, m5.hblkhd);
    x_free(guard);
}

/* Eight 8 KiB mallocs; `mmapped` says whether they must be mmapped blocks. */
static void mmap8k(int mmapped) {
    enum { N = 8, SIZE = 8 << 10 };
    void *p[N];
    struct mallinfo2 m0 = mallinfo2();
    for (int i = 0; i < N; i++) {
        p[i] = filled(SIZE, 3, SIZE);
    }
    struct mallinfo2 m1 = mallinfo2();
    print_mi2("before", m0);
    print_mi2("after 8 x 8 KiB", m1);
    if (mmapped) {
        CHECK(m1.hblks == m0.hblks + N, "hblks rose by %zd, %d expected",
              (ssize_t)(m1.hblks - m0.hblks), N);
        CHECK(m1.hblkhd >= m0.hblkhd + N * SIZE, "hblkhd rose by %zd, at least %d expected",
              (ssize_t)(m1.hblkhd - m0.hblkhd), N * SIZE);
    } else {
        CHECK(m1.hblks == m0.hblks && m1.hblkhd == m0.hblkhd,
              "8 KiB blocks are not mmapped: hblks %zu -> %zu, hblkhd %zu -> %zu", m0.hblks,
              m1.hblks, m0.hblkhd, m1.hblkhd);
    }
    for (int i = 0; i < N; i++)
        x_free(p[i]);
    struct mallinfo2 m2 = mallinfo2();
    CHECK(m2.hblks == m0.hblks && m2.hblkhd == m0.hblkhd,
          "hblks/hblkhd back after the frees: %zu/%zu", m2.hblks, m2.hblkhd);
}

static void mallopt_calls(void) {
    int r = mallopt(M_MMAP_THRESHOLD, 4096);
    CHECK(r == 1, "mallopt(M_MMAP_THRESHOLD, 4096) returned %d", r);
    mmap8k(1);
    r = mallopt(M_ARENA_MAX, 2);
    CHECK(r == 1, "mallopt(M_ARENA_MAX, 2) returned %d", r);
    r = mallopt(M_MXFAST, 0);
    CHECK(r == 1, "mallopt(M_MXFAST, 0) returned %d (glibc: 1)", r);
}

static void info(void) {
    /* Something in every part of the report. */
    void *small = x_malloc(100), *mid = x_malloc(64 << 10), *big = x_malloc(1 << 20);
    void *hole = x_malloc(64 << 10), *guard = x_malloc(100);
    x_free(hole);
    int r = malloc_info(0, stdout);
    fflush(stdout);
    if (r != 0) {
        fprintf(stderr, "FAIL - malloc_info(0, stdout) returned %d\n", r);
        failed = 1;
    }
    errno = 0;
    r = malloc_info(1, stdout);
    int e = errno;
    if (r == -1 && e == EINVAL) {
        fprintf(stderr, "ok - malloc_info(1, stdout) returned -1 with EINVAL\n");
    } else if (!expect_brkmalloc() && r == EINVAL) {
        /* glibc 2.36 returns EINVAL itself (its manual page says -1 and errno). */
        fprintf(stderr, "ok - malloc_info(1, stdout) returned EINVAL (glibc)\n");
    } else {
        fprintf(stderr, "FAIL - malloc_info(1, stdout) returned %d, errno %d (-1, EINVAL "
                        "expected)\n", r, e);
        failed = 1;
    }
    x_free(small);
    x_free(mid);
    x_free(big);
    x_free(guard);
}

static void trim(void) {
    enum { N = 200 };
    static void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = filled(64 << 10, 4, 64 << 10);
    }
    void *guard = x_malloc(100); /* the freed blocks are not the top of the heap */
    for (int i = 0; i < N; i++)
        x_free(p[i]);
    int r = malloc_trim(0);
    CHECK(r == 1, "malloc_trim(0) returned %d after freeing 12.5 MiB", r);
    x_free(guard);
}

/* 100 blocks of 64 KiB at the top of the heap, freed from the top down without
 * malloc_trim: with `trimmed` the heap must shrink on its own (the free top is above
 * trim_threshold, 128 KiB by default), with `kept` it must stay (trim_threshold:64m). */
static void top_trim(int trimmed) {
    static void *p[MID];
    void *guard = x_malloc(100);
    struct mallinfo2 m0 = mallinfo2();
    for (int i = 0; i < MID; i++) {
        p[i] = filled(MID_SIZE, 5, MID_SIZE);
    }
    struct mallinfo2 m1 = mallinfo2();
    for (int i = MID - 1; i >= 0; i--)
        x_free(p[i]);
    struct mallinfo2 m2 = mallinfo2();
    print_mi2("start", m0);
    print_mi2("after 100 x 64 KiB", m1);
    print_mi2("after the frees", m2);
    if (trimmed)
        CHECK(m2.arena + MID * MID_SIZE / 2 <= m1.arena, "the free top went back: arena %zu -> %zu",
              m1.arena, m2.arena);
    else
        CHECK(m2.arena >= m1.arena && m2.keepcost >= MID * MID_SIZE,
              "the free top stayed: arena %zu -> %zu, keepcost %zu", m1.arena, m2.arena,
              m2.keepcost);
    x_free(guard);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *m = argc > 1 ? argv[1] : "";
    if (strcmp(m, "mallinfo") == 0) {
        mallinfo_pattern();
    } else if (strcmp(m, "mmap8k") == 0 && argc > 2) {
        mmap8k(strcmp(argv[2], "yes") == 0);
    } else if (strcmp(m, "mallopt") == 0) {
        mallopt_calls();
    } else if (strcmp(m, "stats") == 0) {
        void *p = x_malloc(100), *q = x_malloc(64 << 10), *r = x_malloc(1 << 20);
        malloc_stats();
        x_free(p);
        x_free(q);
        x_free(r);
    } else if (strcmp(m, "info") == 0) {
        info();
    } else if (strcmp(m, "trim") == 0) {
        trim();
    } else if (strcmp(m, "toptrim") == 0 && argc > 2) {
        top_trim(strcmp(argv[2], "trimmed") == 0);
    } else {
        fprintf(stderr, "usage: introspect mallinfo|mmap8k yes|no|mallopt|stats|info|trim|"
                        "toptrim trimmed|kept\n");
        return 2;
    }
    return failed;
}
