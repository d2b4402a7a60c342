/* mimalloc-bench's malloc-large (bench/malloc-large/malloc-large.cpp): 20
 * buffer slots; each iteration picks a slot and a size, both uniform (slot
 * 0-19, size 5-25 MiB), and assigns std::make_unique<char[]>(size) to the
 * slot: operator new[] and zeroing of the whole buffer, then the buffer the
 * slot held is freed.  Here: malloc + memset(0), then free of the old one.
 * The original uses mt19937 seeded 42; this uses common.h's generator seeded
 * 42 (same distributions, not the same sequence).
 * Checks (cheap next to the memset): every buffer gets its size and a tag in
 * its first 16 bytes and a tag word in its middle and at its end; before it
 * is freed these are checked, and one word every 64 KiB must still be zero.
 * usage: malloclarge THREADS(ignored, 1) OPS(iterations) [SLOTS] */
#include "common.h"

#define MINSZ (5u * 1024u * 1024u)
#define MAXSZ (25u * 1024u * 1024u)
#define ZERO_STRIDE (64u * 1024u)
#define ZERO_OFF 512u

/* gcc -O2 turns malloc + memset(0) into calloc, which an allocator may serve from
 * fresh (already zero) pages without writing them; make_unique<char[]> calls
 * operator new[] and then zeroes, so the call goes through a pointer it cannot
 * see through. */
static void *(*volatile zero_fill)(void *, int, size_t) = memset;

typedef struct {
    uint8_t *p;
    size_t size;
    uint64_t tag;
} buf_t;

static inline size_t mid_off(size_t size) { return (size / 2) & ~(size_t)7; }

static inline void put_word(uint8_t *p, size_t off, uint64_t v) { memcpy(p + off, &v, 8); }

static inline uint64_t get_word(const uint8_t *p, size_t off) {
    uint64_t v;
    memcpy(&v, p + off, 8);
    return v;
}

static void tag_buf(const buf_t *b) {
    put_word(b->p, 0, (uint64_t)b->size);
    put_word(b->p, 8, b->tag);
    put_word(b->p, mid_off(b->size), pat_word(b->tag, 1));
    put_word(b->p, b->size - 8, pat_word(b->tag, 2));
}

static void check_buf(const buf_t *b) {
    const uint8_t *p = b->p;
    if (get_word(p, 0) != (uint64_t)b->size) die_verify(p, b->size, b->tag, 0, "size word changed");
    if (get_word(p, 8) != b->tag) die_verify(p, b->size, b->tag, 8, "tag word changed");
    size_t mid = mid_off(b->size);
    if (get_word(p, mid) != pat_word(b->tag, 1)) die_verify(p, b->size, b->tag, mid, "middle tag changed");
    if (get_word(p, b->size - 8) != pat_word(b->tag, 2))
        die_verify(p, b->size, b->tag, b->size - 8, "end tag changed");
    for (size_t off = ZERO_OFF; off + 8 <= b->size - 8; off += ZERO_STRIDE) {
        if (off + 8 > mid && off < mid + 8) continue;
        if (get_word(p, off) != 0) die_verify(p, b->size, b->tag, off, "zeroed byte changed");
    }
}

#define MAX_SLOTS 1024

/* The slots, like the original's array of unique_ptr. */
static buf_t slot[MAX_SLOTS];

int main(int argc, char **argv) {
    (void)arg_long(argc, argv, 1, 1);
    long ops = arg_long(argc, argv, 2, 2000);
    long nslots = arg_long(argc, argv, 3, 20);
    if (nslots > MAX_SLOTS) {
        fprintf(stderr, "%s: at most %d slots\n", g_workload, MAX_SLOTS);
        return EXIT_USAGE;
    }
    rng_t r;
    rng_seed(&r, 42);
    for (long i = 0; i < ops; i++) {
        size_t s = (size_t)(rng_next(&r) % (uint64_t)nslots);
        buf_t b = {NULL, rng_range(&r, MINSZ, MAXSZ), rng_next(&r) | 1};
        b.p = xmalloc(b.size);
        zero_fill(b.p, 0, b.size);
        tag_buf(&b);
        /* unique_ptr assignment: the new buffer exists before the old one is freed */
        if (slot[s].p) {
            check_buf(&slot[s]);
            free(slot[s].p);
        }
        slot[s] = b;
    }
    for (long s = 0; s < nslots; s++) {
        if (slot[s].p) {
            check_buf(&slot[s]);
            free(slot[s].p);
        }
    }
    print_calls(2LL * ops); /* every buffer: one malloc, one free */
    return 0;
}
