/* C ABI semantics of the malloc family, checked the way glibc behaves.
 *
 * Every check prints "ok - NAME" or "FAIL - NAME: details"; the exit status is
 * 1 if any check failed.  The program must pass on plain glibc (no LD_PRELOAD)
 * and under LD_PRELOAD=libbrkmalloc.so.  Where glibc 2.36 and brkmalloc's
 * promise differ (memalign/aligned_alloc with a non-power-of-two alignment),
 * the strict brkmalloc behaviour is required only when CTEST_EXPECT_BRKMALLOC=1
 * is set (tests/preload.rs sets it together with LD_PRELOAD).
 *
 * All allocator calls go through volatile function pointers so that gcc cannot
 * fold malloc/free pairs away or reason about huge sizes at compile time.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctest.h"

static void *(*volatile x_malloc)(size_t) = malloc;
static void (*volatile x_free)(void *) = free;
static void *(*volatile x_calloc)(size_t, size_t) = calloc;
static void *(*volatile x_realloc)(void *, size_t) = realloc;
static void *(*volatile x_reallocarray)(void *, size_t, size_t) = reallocarray;
static int (*volatile x_posix_memalign)(void **, size_t, size_t) = posix_memalign;
static void *(*volatile x_aligned_alloc)(size_t, size_t) = aligned_alloc;
static void *(*volatile x_memalign)(size_t, size_t) = memalign;
static void *(*volatile x_valloc)(size_t) = valloc;
static void *(*volatile x_pvalloc)(size_t) = pvalloc;
static size_t (*volatile x_usable)(void *) = malloc_usable_size;
static int (*volatile x_malloc_trim)(size_t) = malloc_trim;

/* C23 / brkmalloc extras, looked up at run time (glibc 2.36 lacks them). */
typedef void (*free_sized_fn)(void *, size_t);
typedef void (*free_aligned_sized_fn)(void *, size_t, size_t);
typedef void (*cfree_fn)(void *);

static int failures;
static int strict; /* CTEST_EXPECT_BRKMALLOC=1 */
static long page_size;

/* A failed check ends the test function. */
#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            CTEST_FAIL(__VA_ARGS__);                                           \
            return;                                                            \
        }                                                                      \
    } while (0)

#define OK() printf("ok - %s\n", __func__)

/* ---- small helpers ---------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static unsigned char pat(uint64_t seed, size_t i) {
    return (unsigned char)((seed * 131u + i * 7u + (i >> 8)) & 0xff);
}
static void fill(void *p, size_t n, uint64_t seed) {
    unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        c[i] = pat(seed, i);
}
/* Returns the first bad index, or (size_t)-1 when all n bytes match. */
static size_t verify(const void *p, size_t n, uint64_t seed) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != pat(seed, i))
            return i;
    return (size_t)-1;
}
static int aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* ---- checks ----------------------------------------------------------- */

static void malloc_zero_unique(void) {
    enum { N = 256 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = x_malloc(0);
        CHECK(p[i] != NULL, "malloc(0) #%d returned NULL", i);
        CHECK(aligned(p[i], 16), "malloc(0) %p not 16-aligned", p[i]);
        for (int j = 0; j < i; j++)
            CHECK(p[i] != p[j], "malloc(0) returned %p twice (live)", p[i]);
    }
    for (int i = 0; i < N; i++)
        x_free(p[i]);
    void *q = x_realloc(NULL, 0);
    CHECK(q != NULL, "realloc(NULL, 0) returned NULL");
    x_free(q);
    q = x_calloc(0, 0);
    CHECK(q != NULL, "calloc(0, 0) returned NULL");
    x_free(q);
    q = x_calloc(0, 1000);
    CHECK(q != NULL, "calloc(0, 1000) returned NULL");
    x_free(q);
    OK();
}

static void free_null(void) {
    errno = 1234;
    x_free(NULL);
    CHECK(errno == 1234, "free(NULL) changed errno to %d", errno);
    OK();
}

static void free_preserves_errno(void) {
    static const size_t sizes[] = {1, 16, 100, 1000, 5000, 70000, 200000, 4u << 20};
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            void *p = x_malloc(sizes[i]);
            CHECK(p, "malloc(%zu) failed", sizes[i]);
            memset(p, 0x5a, sizes[i]);
            errno = 1234;
            x_free(p);
            CHECK(errno == 1234, "free of a %zu-byte block changed errno to %d", sizes[i], errno);
        }
    }
    /* Free many blocks so the thread cache flushes to the central heap. */
    void *v[2000];
    for (int i = 0; i < 2000; i++) {
        v[i] = x_malloc(32 + (i % 7) * 16);
        CHECK(v[i], "malloc failed");
    }
    for (int i = 0; i < 2000; i++) {
        errno = 1234;
        x_free(v[i]);
        CHECK(errno == 1234, "free #%d changed errno to %d", i, errno);
    }
    OK();
}

static void malloc_failure_enomem(void) {
    static const size_t sizes[] = {
        SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 4095, SIZE_MAX - 65536,
        (size_t)PTRDIFF_MAX + 1, (size_t)PTRDIFF_MAX, (size_t)PTRDIFF_MAX - 4096,
        (size_t)1 << 62, (size_t)1 << 56,
    };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        errno = 0;
        void *p = x_malloc(sizes[i]);
        CHECK(p == NULL, "malloc(%#zx) returned %p", sizes[i], p);
        CHECK(errno == ENOMEM, "malloc(%#zx): errno %d, want ENOMEM", sizes[i], errno);
    }
    /* The heap still works afterwards. */
    void *p = x_malloc(100);
    CHECK(p, "malloc(100) after failures returned NULL");
    x_free(p);
    OK();
}

static void calloc_overflow(void) {
    static const size_t pairs[][2] = {
        {SIZE_MAX, 2},
        {2, SIZE_MAX},
        {SIZE_MAX / 2 + 1, 2},
        {(size_t)1 << 32, (size_t)1 << 32},
        {((size_t)1 << 33) + 1, ((size_t)1 << 31) + 1},
        {SIZE_MAX, SIZE_MAX},
        {(size_t)PTRDIFF_MAX, 2},
        {SIZE_MAX / 16 + 1, 16},
        {1, SIZE_MAX},          /* no overflow, just too big */
        {(size_t)PTRDIFF_MAX + 1, 1},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++) {
        errno = 0;
        void *p = x_calloc(pairs[i][0], pairs[i][1]);
        CHECK(p == NULL, "calloc(%#zx, %#zx) returned %p", pairs[i][0], pairs[i][1], p);
        CHECK(errno == ENOMEM, "calloc(%#zx, %#zx): errno %d, want ENOMEM", pairs[i][0],
              pairs[i][1], errno);
    }
    OK();
}

static void reallocarray_overflow(void) {
    void *p = x_malloc(64);
    CHECK(p, "malloc");
    fill(p, 64, 7);
    static const size_t pairs[][2] = {
        {SIZE_MAX, 2}, {SIZE_MAX / 2 + 1, 2}, {(size_t)1 << 32, (size_t)1 << 32},
        {3, SIZE_MAX / 3 + 1}, {SIZE_MAX, SIZE_MAX},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++) {
        errno = 0;
        void *q = x_reallocarray(p, pairs[i][0], pairs[i][1]);
        CHECK(q == NULL, "reallocarray(p, %#zx, %#zx) returned %p", pairs[i][0], pairs[i][1], q);
        CHECK(errno == ENOMEM, "reallocarray overflow: errno %d, want ENOMEM", errno);
        CHECK(verify(p, 64, 7) == (size_t)-1, "old block changed after failed reallocarray");
    }
    errno = 0;
    void *q = x_reallocarray(NULL, SIZE_MAX / 4, 8);
    CHECK(q == NULL && errno == ENOMEM, "reallocarray(NULL, overflow) = %p errno %d", q, errno);
    /* A valid reallocarray works like realloc. */
    q = x_reallocarray(p, 100, 3);
    CHECK(q, "reallocarray(p, 100, 3) failed");
    CHECK(verify(q, 64, 7) == (size_t)-1, "reallocarray lost the contents");
    memset((char *)q + 64, 1, 236);
    x_free(q);
    OK();
}

static void realloc_failure_keeps_block(void) {
    static const size_t sizes[] = {SIZE_MAX, SIZE_MAX - 100, (size_t)PTRDIFF_MAX + 1,
                                   (size_t)PTRDIFF_MAX, (size_t)1 << 60};
    static const size_t starts[] = {24, 4000, 300000};
    for (size_t s = 0; s < sizeof starts / sizeof *starts; s++) {
        size_t n = starts[s];
        void *p = x_malloc(n);
        CHECK(p, "malloc(%zu)", n);
        fill(p, n, n);
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            errno = 0;
            void *q = x_realloc(p, sizes[i]);
            CHECK(q == NULL, "realloc(%zu-byte block, %#zx) returned %p", n, sizes[i], q);
            CHECK(errno == ENOMEM, "realloc(.., %#zx): errno %d, want ENOMEM", sizes[i], errno);
            size_t bad = verify(p, n, n);
            CHECK(bad == (size_t)-1, "old %zu-byte block corrupted at %zu after failed realloc", n,
                  bad);
        }
        /* Still a valid block: it can grow and be freed. */
        void *q = x_realloc(p, n * 2);
        CHECK(q, "realloc after failure");
        CHECK(verify(q, n, n) == (size_t)-1, "contents lost");
        x_free(q);
    }
    OK();
}

static void realloc_null_is_malloc(void) {
    for (size_t n = 1; n < (1u << 22); n = n * 3 + 1) {
        void *p = x_realloc(NULL, n);
        CHECK(p, "realloc(NULL, %zu) returned NULL", n);
        CHECK(aligned(p, 16), "realloc(NULL, %zu) = %p not 16-aligned", n, p);
        CHECK(x_usable(p) >= n, "usable %zu < %zu", x_usable(p), n);
        fill(p, n, n);
        CHECK(verify(p, n, n) == (size_t)-1, "pattern");
        x_free(p);
    }
    OK();
}

static void realloc_zero_frees(void) {
    /* glibc: realloc(p, 0) with p != NULL frees p and returns NULL. */
    static const size_t sizes[] = {1, 100, 5000, 300000};
    for (int r = 0; r < 200; r++) {
        size_t n = sizes[r % 4];
        void *p = x_malloc(n);
        CHECK(p, "malloc(%zu)", n);
        memset(p, 0x33, n);
        void *q = x_realloc(p, 0);
        CHECK(q == NULL, "realloc(p, 0) returned %p, want NULL (glibc frees)", q);
    }
    OK();
}

static void realloc_preserves(void) {
    /* Grow by small steps, then by doubling well past the mmap threshold. */
    size_t n = 1;
    char *p = x_malloc(n);
    CHECK(p, "malloc(1)");
    fill(p, n, 99);
    while (n < (8u << 20)) {
        size_t m = n < 4096 ? n + 1 + n / 3 : n * 2;
        char *q = x_realloc(p, m);
        CHECK(q, "realloc grow %zu -> %zu", n, m);
        CHECK(aligned(q, 16), "realloc result %p not 16-aligned", q);
        size_t bad = verify(q, n, 99);
        CHECK(bad == (size_t)-1, "grow %zu -> %zu lost byte %zu", n, m, bad);
        fill(q, m, 99);
        p = q;
        n = m;
    }
    /* Shrink step by step back to 1 byte (large -> small crosses the mmap threshold). */
    while (n > 1) {
        size_t m = n > 4096 ? n / 2 : n - 1 - n / 3;
        if (m == 0)
            m = 1;
        char *q = x_realloc(p, m);
        CHECK(q, "realloc shrink %zu -> %zu", n, m);
        size_t bad = verify(q, m, 99);
        CHECK(bad == (size_t)-1, "shrink %zu -> %zu lost byte %zu", n, m, bad);
        p = q;
        n = m;
    }
    x_free(p);

    /* Same size and slightly smaller/larger: in place or not, contents must survive. */
    static const size_t sizes[] = {16, 24, 100, 1000, 4096, 65536, 131072, 200000, 1u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t s = sizes[i];
        p = x_malloc(s);
        CHECK(p, "malloc(%zu)", s);
        fill(p, s, s);
        char *q = x_realloc(p, s);
        CHECK(q && verify(q, s, s) == (size_t)-1, "realloc same size %zu", s);
        q = x_realloc(p = q, s - 8);
        CHECK(q && verify(q, s - 8, s) == (size_t)-1, "realloc %zu -> %zu", s, s - 8);
        q = x_realloc(p = q, s + 8);
        CHECK(q && verify(q, s - 8, s) == (size_t)-1, "realloc %zu -> %zu", s - 8, s + 8);
        size_t u = x_usable(q);
        fill(q, u, s + 1);
        /* Growing within the usable size must keep everything. */
        char *r = x_realloc(q, u);
        CHECK(r && verify(r, u, s + 1) == (size_t)-1, "realloc to usable size %zu", u);
        x_free(r);
    }

    /* small -> large (>= 128 KiB, mmapped) and large -> small, with neighbours around. */
    static const size_t trans[][2] = {
        {100, 256 << 10},  {4000, 128 << 10}, {64, 8u << 20},       {256 << 10, 100},
        {1u << 20, 4000},  {8u << 20, 64},    {200 << 10, 300 << 10}, {300 << 10, 200 << 10},
        {128 << 10, 129 << 10}, {4u << 20, 16u << 20}, {16u << 20, 1u << 20},
    };
    for (size_t i = 0; i < sizeof trans / sizeof *trans; i++) {
        size_t a = trans[i][0], b = trans[i][1];
        char *before = x_malloc(48), *after;
        p = x_malloc(a);
        after = x_malloc(48);
        CHECK(before && p && after, "malloc");
        fill(before, 48, 1);
        fill(after, 48, 2);
        fill(p, a, a ^ b);
        char *q = x_realloc(p, b);
        CHECK(q, "realloc %zu -> %zu", a, b);
        size_t keep = a < b ? a : b;
        size_t bad = verify(q, keep, a ^ b);
        CHECK(bad == (size_t)-1, "realloc %zu -> %zu lost byte %zu", a, b, bad);
        memset(q, 0xee, b);
        CHECK(verify(before, 48, 1) == (size_t)-1, "neighbour before changed (%zu -> %zu)", a, b);
        CHECK(verify(after, 48, 2) == (size_t)-1, "neighbour after changed (%zu -> %zu)", a, b);
        x_free(q);
        x_free(before);
        x_free(after);
    }

    /* Grow in place into a freed neighbour, and when the neighbour is busy. */
    for (int busy = 0; busy < 2; busy++) {
        char *a = x_malloc(200), *b = x_malloc(200), *c = x_malloc(200);
        CHECK(a && b && c, "malloc");
        fill(a, 200, 11);
        fill(c, 200, 13);
        if (!busy)
            x_free(b);
        char *q = x_realloc(a, 390);
        CHECK(q && verify(q, 200, 11) == (size_t)-1, "realloc into neighbour (busy=%d)", busy);
        fill(q, 390, 12);
        CHECK(verify(c, 200, 13) == (size_t)-1, "third block changed (busy=%d)", busy);
        x_free(q);
        x_free(c);
        if (busy)
            x_free(b);
    }
    OK();
}

static void calloc_zeroed(void) {
    /* Dirty memory, free it, calloc the same size again: it must be all zero. */
    for (size_t n = 1; n <= (1u << 20); n = n < 64 ? n + 1 : n + n / 5 + 1) {
        int rounds = n <= 4096 ? 8 : 3;
        for (int r = 0; r < rounds; r++) {
            unsigned char *d = x_malloc(n);
            CHECK(d, "malloc(%zu)", n);
            memset(d, 0xff, x_usable(d));
            x_free(d);
            size_t cnt = (r & 1) && n % 4 == 0 ? n / 4 : n, sz = cnt == n ? 1 : 4;
            unsigned char *z = x_calloc(cnt, sz);
            CHECK(z, "calloc(%zu, %zu)", cnt, sz);
            CHECK(aligned(z, 16), "calloc %p not 16-aligned", z);
            for (size_t i = 0; i < n; i++)
                CHECK(z[i] == 0, "calloc(%zu, %zu)[%zu] = %#x (round %d)", cnt, sz, i, z[i], r);
            memset(z, 0xff, n);
            x_free(z);
        }
    }
    /* Many small blocks dirtied together, freed together, calloc'd together. */
    enum { N = 3000 };
    static unsigned char *v[N];
    for (int r = 0; r < 4; r++) {
        for (int i = 0; i < N; i++) {
            size_t n = 1 + (size_t)(rnd(&rng_state) % 600);
            v[i] = x_malloc(n);
            CHECK(v[i], "malloc");
            memset(v[i], 0xa5, n);
        }
        for (int i = 0; i < N; i++)
            x_free(v[i]);
        for (int i = 0; i < N; i++) {
            size_t n = 1 + (size_t)(rnd(&rng_state) % 600);
            v[i] = x_calloc(1, n);
            CHECK(v[i], "calloc");
            for (size_t j = 0; j < n; j++)
                CHECK(v[i][j] == 0, "calloc(1, %zu)[%zu] = %#x", n, j, v[i][j]);
            memset(v[i], 0x5a, n);
        }
        for (int i = 0; i < N; i++)
            x_free(v[i]);
    }
    /* realloc to a larger size then calloc: the grown part must not leak into calloc. */
    for (int r = 0; r < 50; r++) {
        size_t n = 100 + (size_t)(rnd(&rng_state) % 100000);
        unsigned char *p = x_malloc(n);
        CHECK(p, "malloc");
        memset(p, 0xcc, n);
        p = x_realloc(p, n * 2);
        CHECK(p, "realloc");
        memset(p, 0xdd, n * 2);
        x_free(p);
        unsigned char *z = x_calloc(n * 2, 1);
        CHECK(z, "calloc");
        for (size_t i = 0; i < n * 2; i++)
            CHECK(z[i] == 0, "calloc(%zu)[%zu] = %#x after realloc", n * 2, i, z[i]);
        x_free(z);
    }
    OK();
}

/* Memory purged by malloc_trim (or madvise) and handed out again by calloc
 * must read as zero, headers and all. */
static void calloc_after_trim(void) {
    enum { N = 3000 };
    static unsigned char *v[N];
    static size_t len[N];
    for (int r = 0; r < 3; r++) {
        for (int i = 0; i < N; i++) {
            len[i] = rnd(&rng_state) % 16 == 0 ? 20000 + (size_t)(rnd(&rng_state) % 200000) : 1 + (size_t)(rnd(&rng_state) % 3000);
            v[i] = x_malloc(len[i]);
            CHECK(v[i], "malloc(%zu)", len[i]);
            memset(v[i], 0xff, x_usable(v[i]));
        }
        for (int i = 0; i < N; i++)
            x_free(v[i]);
        x_malloc_trim(0);
        for (int i = 0; i < N; i++) {
            v[i] = x_calloc(len[i], 1);
            CHECK(v[i], "calloc(%zu)", len[i]);
            for (size_t j = 0; j < len[i]; j++)
                CHECK(v[i][j] == 0, "calloc(%zu, 1)[%zu] = %#x after malloc_trim", len[i], j,
                      v[i][j]);
            memset(v[i], 0xee, len[i]);
        }
        for (int i = 0; i < N; i++)
            x_free(v[i]);
    }
    OK();
}

/* realloc of blocks from the aligned allocators keeps the contents. */
static void realloc_aligned_blocks(void) {
    for (size_t a = 32; a <= (1u << 16); a *= 4) {
        static const size_t sizes[] = {1, 100, 5000, 150000};
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            size_t n = sizes[i];
            for (int kind = 0; kind < 4; kind++) {
                char *p;
                switch (kind) {
                case 0: p = x_memalign(a, n); break;
                case 1: p = x_aligned_alloc(a, n); break;
                case 2: p = x_valloc(n); break;
                default: p = x_pvalloc(n); break;
                }
                CHECK(p, "aligned allocation kind %d (%zu, %zu)", kind, a, n);
                fill(p, n, a + n + (size_t)kind);
                char *q = x_realloc(p, n * 3 + 7);
                CHECK(q, "realloc grow kind %d", kind);
                CHECK(verify(q, n, a + n + (size_t)kind) == (size_t)-1,
                      "realloc of an aligned block (kind %d, align %zu, size %zu) lost data", kind,
                      a, n);
                fill(q, n * 3 + 7, 5);
                char *r = x_realloc(q, n / 2 + 1);
                CHECK(r && verify(r, n / 2 + 1, 5) == (size_t)-1, "realloc shrink kind %d", kind);
                CHECK(x_usable(r) >= n / 2 + 1, "usable after shrink");
                x_free(r);
            }
        }
    }
    OK();
}

static void posix_memalign_einval(void) {
    static const size_t bad[] = {0, 1, 2, 3, 4, 5, 7, 12, 24, 40, 48, 96, 4097, 3 << 20,
                                 SIZE_MAX, SIZE_MAX / 2};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        void *p = (void *)0x1234;
        errno = 1234;
        int rc = x_posix_memalign(&p, bad[i], 64);
        CHECK(rc == EINVAL, "posix_memalign(align %#zx) = %d, want EINVAL", bad[i], rc);
        CHECK(errno == 1234, "posix_memalign(align %#zx) changed errno to %d", bad[i], errno);
    }
    OK();
}

static void posix_memalign_ok(void) {
    for (size_t a = sizeof(void *); a <= (1u << 20); a *= 2) {
        static const size_t sizes[] = {0, 1, 8, 100, 4096, 100000, 300000};
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            void *p = NULL;
            errno = 1234;
            int rc = x_posix_memalign(&p, a, sizes[i]);
            CHECK(rc == 0, "posix_memalign(%zu, %zu) = %d", a, sizes[i], rc);
            CHECK(errno == 1234, "posix_memalign success changed errno to %d", errno);
            CHECK(p && aligned(p, a) && aligned(p, 16), "posix_memalign(%zu, %zu) = %p", a,
                  sizes[i], p);
            CHECK(x_usable(p) >= sizes[i], "usable %zu < %zu", x_usable(p), sizes[i]);
            memset(p, 0x77, sizes[i]);
            x_free(p);
        }
    }
    /* ENOMEM for huge sizes, errno untouched. */
    static const size_t huge[][2] = {
        {64, SIZE_MAX},   {4096, SIZE_MAX - 4096}, {16, (size_t)PTRDIFF_MAX + 1},
        {1u << 20, (size_t)PTRDIFF_MAX}, {(size_t)1 << 40, SIZE_MAX - 1000},
        {(size_t)1 << 62, (size_t)1 << 62}, {(size_t)1 << 63, 1},
    };
    for (size_t i = 0; i < sizeof huge / sizeof *huge; i++) {
        void *p = NULL;
        errno = 1234;
        int rc = x_posix_memalign(&p, huge[i][0], huge[i][1]);
        CHECK(rc == ENOMEM, "posix_memalign(%#zx, %#zx) = %d, want ENOMEM", huge[i][0],
              huge[i][1], rc);
        /* glibc sets errno to ENOMEM on this path (its allocation failure does) and
         * programs check it; brkmalloc does the same. */
        CHECK(errno == ENOMEM, "posix_memalign failure left errno at %d, want ENOMEM", errno);
    }
    OK();
}

static void aligned_alloc_pow2(void) {
    for (size_t a = 1; a <= (1u << 20); a *= 2) {
        static const size_t sizes[] = {1, 16, 100, 4096, 70000, 200000};
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            size_t n = sizes[i];
            void *p = x_aligned_alloc(a, n);
            CHECK(p, "aligned_alloc(%zu, %zu) returned NULL", a, n);
            CHECK(aligned(p, a) && aligned(p, 16), "aligned_alloc(%zu, %zu) = %p", a, n, p);
            CHECK(x_usable(p) >= n, "usable %zu < %zu", x_usable(p), n);
            memset(p, 0x42, n);
            void *q = x_memalign(a, n);
            CHECK(q, "memalign(%zu, %zu) returned NULL", a, n);
            CHECK(aligned(q, a) && aligned(q, 16), "memalign(%zu, %zu) = %p", a, n, q);
            CHECK(x_usable(q) >= n, "usable %zu < %zu", x_usable(q), n);
            memset(q, 0x43, n);
            x_free(p);
            x_free(q);
        }
    }
    OK();
}

static void aligned_alloc_non_pow2(void) {
    static const size_t bad[] = {3, 5, 6, 12, 24, 48, 100, 4095, 4097, 3 << 20, 0};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t a = bad[i];
        for (int which = 0; which < 2; which++) {
            const char *name = which ? "memalign" : "aligned_alloc";
            errno = 0;
            void *p = which ? x_memalign(a, 64) : x_aligned_alloc(a, 64);
            if (a == 0) {
                /* Alignment 0: glibc treats it as the minimum alignment. Accept a
                 * usable block or NULL+EINVAL. */
                if (p) {
                    CHECK(aligned(p, 16), "%s(0, 64) = %p", name, p);
                    memset(p, 1, 64);
                    x_free(p);
                } else {
                    CHECK(errno == EINVAL, "%s(0, 64) = NULL with errno %d", name, errno);
                }
                continue;
            }
            if (strict) {
                CHECK(p == NULL, "%s(%zu, 64) = %p, want NULL", name, a, p);
                CHECK(errno == EINVAL, "%s(%zu, 64): errno %d, want EINVAL", name, a, errno);
            } else if (p) {
                /* glibc 2.36 rounds the alignment up to the next power of two. */
                size_t next = 1;
                while (next < a)
                    next *= 2;
                CHECK(aligned(p, next), "%s(%zu, 64) = %p (glibc mode)", name, a, p);
                memset(p, 1, 64);
                x_free(p);
            } else {
                CHECK(errno == EINVAL, "%s(%zu, 64) = NULL errno %d", name, a, errno);
            }
        }
    }
    if (!strict)
        printf("note - non-power-of-two alignments checked in glibc mode (rounded up)\n");
    OK();
}

static void huge_alignment(void) {
    static const size_t aligns[] = {(size_t)1 << 20, (size_t)1 << 40, (size_t)1 << 62,
                                    (size_t)1 << 63};
    static const size_t sizes[] = {
        SIZE_MAX - 1000, SIZE_MAX, (size_t)PTRDIFF_MAX, (size_t)PTRDIFF_MAX - ((size_t)1 << 40),
        SIZE_MAX - ((size_t)1 << 40) + 1, (size_t)1 << 62, (size_t)1 << 50,
    };
    for (size_t i = 0; i < sizeof aligns / sizeof *aligns; i++) {
        for (size_t j = 0; j < sizeof sizes / sizeof *sizes; j++) {
            size_t a = aligns[i], n = sizes[j];
            void *p = x_memalign(a, n);
            CHECK(p == NULL, "memalign(%#zx, %#zx) = %p", a, n, p);
            p = x_aligned_alloc(a, n);
            CHECK(p == NULL, "aligned_alloc(%#zx, %#zx) = %p", a, n, p);
            p = NULL;
            int rc = x_posix_memalign(&p, a, n);
            CHECK(rc != 0, "posix_memalign(%#zx, %#zx) succeeded: %p", a, n, p);
        }
        /* A huge alignment with a small size may or may not be satisfiable. */
        void *p = x_memalign(aligns[i], 1);
        if (p) {
            CHECK(aligned(p, aligns[i]), "memalign(%#zx, 1) = %p", aligns[i], p);
            *(volatile char *)p = 1;
            x_free(p);
        }
    }
    void *p = x_memalign(1u << 20, 100);
    CHECK(p && aligned(p, 1u << 20), "memalign(1 MiB, 100) = %p after huge requests", p);
    x_free(p);
    OK();
}

static void valloc_pvalloc(void) {
    size_t pg = (size_t)page_size;
    static const size_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 10000, 300000};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        char *v = x_valloc(n);
        CHECK(v, "valloc(%zu) returned NULL", n);
        CHECK(aligned(v, pg), "valloc(%zu) = %p not page-aligned", n, v);
        CHECK(x_usable(v) >= n, "valloc usable %zu < %zu", x_usable(v), n);
        memset(v, 0x11, n);
        char *pv = x_pvalloc(n);
        CHECK(pv, "pvalloc(%zu) returned NULL", n);
        CHECK(aligned(pv, pg), "pvalloc(%zu) = %p not page-aligned", n, pv);
        /* pvalloc rounds up to whole pages, so pvalloc(0) gives a usable page.
         * glibc 2.36 gets the rounding wrong (it masks with -(pagesize - 1)),
         * so there only the requested size is required. */
        size_t rounded = n == 0 ? pg : (n + pg - 1) / pg * pg;
        if (!strict)
            rounded = n;
        CHECK(x_usable(pv) >= rounded, "pvalloc(%zu) usable %zu < %zu", n, x_usable(pv), rounded);
        memset(pv, 0x22, rounded);
        x_free(v);
        x_free(pv);
    }
    errno = 0;
    void *p = x_pvalloc(SIZE_MAX - 10);
    CHECK(p == NULL && errno == ENOMEM, "pvalloc(SIZE_MAX - 10) = %p errno %d", p, errno);
    errno = 0;
    p = x_valloc(SIZE_MAX - 10);
    CHECK(p == NULL && errno == ENOMEM, "valloc(SIZE_MAX - 10) = %p errno %d", p, errno);
    OK();
}

static void usable_size(void) {
    CHECK(x_usable(NULL) == 0, "malloc_usable_size(NULL) = %zu", x_usable(NULL));
    for (size_t n = 0; n < 70000; n = n < 600 ? n + 1 : n + n / 7) {
        char *p = x_malloc(n);
        CHECK(p, "malloc(%zu)", n);
        size_t u = x_usable(p);
        CHECK(u >= n, "malloc_usable_size(malloc(%zu)) = %zu", n, u);
        CHECK(u < n + 16 * 1024 + n, "malloc_usable_size(malloc(%zu)) = %zu is absurd", n, u);
        x_free(p);
    }
    static const size_t big[] = {128 << 10, 200000, 1u << 20, 5000000};
    for (size_t i = 0; i < 4; i++) {
        char *p = x_malloc(big[i]);
        CHECK(p && x_usable(p) >= big[i], "usable(malloc(%zu))", big[i]);
        x_free(p);
    }
    OK();
}

/* Fill every block up to its usable size, interleaved with other blocks; all
 * contents must survive until the block is freed. */
static void usable_write_no_corruption(void) {
    enum { N = 2000 };
    static char *v[N];
    static size_t us[N];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            size_t n = rnd(&rng_state) % 8 == 0 ? (size_t)(rnd(&rng_state) % 300000) : (size_t)(rnd(&rng_state) % 2048);
            switch (rnd(&rng_state) % 5) {
            case 0: v[i] = x_calloc(1, n); break;
            case 1: v[i] = x_memalign(64, n); break;
            case 2: v[i] = x_realloc(x_malloc(n / 2 + 1), n + 1); break;
            default: v[i] = x_malloc(n); break;
            }
            CHECK(v[i], "allocation of %zu failed", n);
            us[i] = x_usable(v[i]);
            CHECK(us[i] >= n, "usable %zu < %zu", us[i], n);
            fill(v[i], us[i], (uint64_t)i * 977 + round);
        }
        for (int i = 0; i < N; i++) {
            size_t bad = verify(v[i], us[i], (uint64_t)i * 977 + round);
            CHECK(bad == (size_t)-1, "block %d (%zu usable bytes) corrupted at %zu", i, us[i], bad);
        }
        /* Free in a scrambled order, verifying each block right before its free. */
        for (int k = 0; k < N; k++) {
            int i = (int)(((long)k * 7919) % N);
            size_t bad = verify(v[i], us[i], (uint64_t)i * 977 + round);
            CHECK(bad == (size_t)-1, "block %d corrupted at %zu before free", i, bad);
            x_free(v[i]);
        }
    }
    OK();
}

static void free_sized_variants(void) {
    free_sized_fn fs = (free_sized_fn)dlsym(RTLD_DEFAULT, "free_sized");
    free_aligned_sized_fn fas = (free_aligned_sized_fn)dlsym(RTLD_DEFAULT, "free_aligned_sized");
    cfree_fn cf = (cfree_fn)dlsym(RTLD_DEFAULT, "cfree");
    if (strict)
        CHECK(fs && fas && cf, "free_sized=%p free_aligned_sized=%p cfree=%p: missing export",
              (void *)fs, (void *)fas, (void *)cf);
    if (fs) {
        for (size_t n = 1; n < 400000; n = n * 2 + 3) {
            void *p = x_malloc(n);
            CHECK(p, "malloc");
            memset(p, 1, n);
            errno = 1234;
            fs(p, n);
            CHECK(errno == 1234, "free_sized changed errno to %d", errno);
            p = x_calloc(n, 1);
            CHECK(p, "calloc");
            fs(p, n);
        }
        fs(NULL, 0);
        printf("ok - free_sized\n");
    } else {
        printf("skip - free_sized (not exported by this libc)\n");
    }
    if (fas) {
        for (size_t a = 1; a <= 65536; a *= 4) {
            for (size_t n = a; n < 400000; n = n * 3) {
                void *p = x_aligned_alloc(a, n);
                CHECK(p && aligned(p, a), "aligned_alloc(%zu, %zu)", a, n);
                memset(p, 2, n);
                errno = 1234;
                fas(p, a, n);
                CHECK(errno == 1234, "free_aligned_sized changed errno to %d", errno);
            }
        }
        fas(NULL, 64, 0);
        printf("ok - free_aligned_sized\n");
    } else {
        printf("skip - free_aligned_sized (not exported by this libc)\n");
    }
    if (cf) {
        void *p = x_malloc(100);
        CHECK(p, "malloc");
        cf(p);
        cf(NULL);
        printf("ok - cfree\n");
    } else {
        printf("skip - cfree (not exported by this libc)\n");
    }
    OK();
}

static void malloc_trim_works(void) {
    enum { N = 4000 };
    static void *v[N];
    for (int i = 0; i < N; i++) {
        v[i] = x_malloc(1 + (size_t)(rnd(&rng_state) % 5000));
        CHECK(v[i], "malloc");
    }
    for (int i = 0; i < N; i += 2)
        x_free(v[i]);
    int rc = x_malloc_trim(0);
    CHECK(rc == 0 || rc == 1, "malloc_trim(0) = %d", rc);
    for (int i = 1; i < N; i += 2)
        x_free(v[i]);
    rc = x_malloc_trim(64 << 10);
    CHECK(rc == 0 || rc == 1, "malloc_trim(64K) = %d", rc);
    void *p = x_malloc(1000);
    CHECK(p, "malloc after trim");
    memset(p, 0, 1000);
    x_free(p);
    OK();
}

/* A few thousand live blocks, each with its own pattern, replaced at random;
 * every block is verified before it is freed and no two usable ranges overlap. */
struct live {
    char *p;
    size_t n, u;
    uint64_t seed;
};
static int cmp_live(const void *a, const void *b) {
    const struct live *x = a, *y = b;
    return x->p < y->p ? -1 : x->p > y->p;
}
static void no_overlap(void) {
    enum { N = 4000, OPS = 60000 };
    static struct live v[N];
    uint64_t seed = 1;
    for (int op = 0; op < OPS + N; op++) {
        int i = op < N ? op : (int)(rnd(&rng_state) % N);
        if (v[i].p) {
            size_t bad = verify(v[i].p, v[i].n, v[i].seed);
            CHECK(bad == (size_t)-1, "live block %p (%zu bytes) corrupted at %zu", v[i].p,
                  v[i].n, bad);
            x_free(v[i].p);
        }
        uint64_t r = rnd(&rng_state);
        size_t n = r % 64 == 0 ? 100000 + (size_t)(r >> 8) % 300000 : 1 + (size_t)(r >> 8) % 1500;
        char *p;
        switch ((r >> 40) % 6) {
        case 0: p = x_calloc(1, n); break;
        case 1: p = x_aligned_alloc(32 << ((r >> 50) % 4), n); break;
        default: p = x_malloc(n); break;
        }
        CHECK(p, "allocation of %zu failed", n);
        CHECK(aligned(p, 16), "%p not 16-aligned", p);
        v[i].p = p;
        v[i].n = n;
        v[i].u = x_usable(p);
        v[i].seed = seed++;
        fill(p, n, v[i].seed);
    }
    qsort(v, N, sizeof *v, cmp_live);
    for (int i = 0; i + 1 < N; i++)
        CHECK(v[i].p + v[i].u <= v[i + 1].p, "blocks overlap: %p+%zu and %p", v[i].p, v[i].u,
              v[i + 1].p);
    for (int i = 0; i < N; i++) {
        size_t bad = verify(v[i].p, v[i].n, v[i].seed);
        CHECK(bad == (size_t)-1, "block %p corrupted at %zu", v[i].p, bad);
        x_free(v[i].p);
        v[i].p = NULL;
    }
    OK();
}

static void alignment_everywhere(void) {
    for (size_t n = 0; n < 5000; n++) {
        void *a = x_malloc(n), *b = x_calloc(1, n), *c = x_realloc(NULL, n);
        CHECK(a && b && c, "alloc %zu", n);
        CHECK(aligned(a, 16) && aligned(b, 16) && aligned(c, 16),
              "size %zu: malloc %p calloc %p realloc %p", n, a, b, c);
        c = x_realloc(c, n + 37);
        CHECK(c && aligned(c, 16), "realloc grow %p", c);
        x_free(a);
        x_free(b);
        x_free(c);
    }
    OK();
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *s = getenv("CTEST_EXPECT_BRKMALLOC");
    strict = s && strcmp(s, "1") == 0;
    page_size = sysconf(_SC_PAGESIZE);
    printf("mode: %s\n", strict ? "brkmalloc (strict)" : "glibc-compatible");

    malloc_zero_unique();
    free_null();
    free_preserves_errno();
    malloc_failure_enomem();
    calloc_overflow();
    reallocarray_overflow();
    realloc_failure_keeps_block();
    realloc_null_is_malloc();
    realloc_zero_frees();
    realloc_preserves();
    calloc_zeroed();
    calloc_after_trim();
    realloc_aligned_blocks();
    posix_memalign_einval();
    posix_memalign_ok();
    aligned_alloc_pow2();
    aligned_alloc_non_pow2();
    huge_alignment();
    valloc_pvalloc();
    usable_size();
    usable_write_no_corruption();
    free_sized_variants();
    malloc_trim_works();
    no_overlap();
    alignment_everywhere();

    if (failures) {
        printf("%d check(s) FAILED\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
