/* Realloc-heavy string building: a working set of strings, each grown by
 * appending 1-48 characters with realloc(len + n + 1) per append, as naive C
 * string builders do; a string that reaches its target length (256 B-64 KiB)
 * is checked and freed and a new one started.
 * usage: strings THREADS(ignored) OPS(appends) [STRINGS] */
#include "common.h"

typedef struct {
    char *p;
    size_t len, target;
    uint64_t tag;
} str_t;

static inline char ch(uint64_t tag, size_t i) { return (char)('a' + (pat_word(tag, i) >> 40) % 26); }

static void verify(const str_t *s) {
    for (size_t i = 0; i < s->len; i++)
        if (s->p[i] != ch(s->tag, i)) die_verify(s->p, s->len, s->tag, i, "string content");
    if (s->p[s->len] != 0) die_verify(s->p, s->len, s->tag, s->len, "missing terminator");
}

int main(int argc, char **argv) {
    (void)arg_long(argc, argv, 1, 1);
    long ops = arg_long(argc, argv, 2, 2000000);
    long nstr = arg_long(argc, argv, 3, 256);
    str_t *st = calloc((size_t)nstr, sizeof(str_t));
    if (!st) die_oom((size_t)nstr * sizeof(str_t));
    rng_t r;
    rng_seed(&r, 7);
    for (long i = 0; i < ops; i++) {
        str_t *s = &st[rng_next(&r) % (uint64_t)nstr];
        if (!s->p) {
            s->tag = rng_next(&r) | 1;
            s->len = 0;
            s->target = rng_logsize(&r, 256, 65536);
        }
        size_t n = rng_range(&r, 1, 48);
        s->p = xrealloc(s->p, s->len + n + 1);
        for (size_t k = 0; k < n; k++) s->p[s->len + k] = ch(s->tag, s->len + k);
        s->len += n;
        s->p[s->len] = 0;
        if (s->len >= s->target) {
            verify(s);
            free(s->p);
            s->p = NULL;
        }
    }
    for (long i = 0; i < nstr; i++)
        if (st[i].p) {
            verify(&st[i]);
            free(st[i].p);
        }
    free(st);
    return 0;
}
