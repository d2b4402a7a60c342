/* Compiled by gcc under LD_PRELOAD in tests/preload.rs; its output (and the
 * generated assembly) must match a compile without the preload. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    char name[24];
    unsigned long value;
};

static int by_value(const void *a, const void *b) {
    const struct entry *x = a, *y = b;
    if (x->value != y->value)
        return x->value < y->value ? -1 : 1;
    return strcmp(x->name, y->name);
}

static unsigned long fnv1a(const char *s) {
    unsigned long h = 14695981039346656037ul;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ul;
    return h;
}

int main(void) {
    enum { N = 20000 };
    struct entry *e = malloc(N * sizeof *e);
    if (!e)
        return 1;
    for (int i = 0; i < N; i++) {
        snprintf(e[i].name, sizeof e[i].name, "item-%d", (i * 7919) % N);
        e[i].value = fnv1a(e[i].name) % 1000003;
    }
    qsort(e, N, sizeof *e, by_value);
    unsigned long digest = 0;
    for (int i = 0; i < N; i++)
        digest = digest * 31 + e[i].value + (unsigned char)e[i].name[5];
    char *buf = NULL;
    size_t cap = 0, len = 0;
    for (int i = 0; i < N; i += 97) {
        size_t need = len + strlen(e[i].name) + 2;
        if (need > cap) {
            cap = need * 2;
            buf = realloc(buf, cap);
            if (!buf)
                return 1;
        }
        len += (size_t)sprintf(buf + len, "%s,", e[i].name);
    }
    printf("first %s %lu\nlast %s %lu\ndigest %lu\nlen %zu\n", e[0].name, e[0].value,
           e[N - 1].name, e[N - 1].value, digest, len);
    free(buf);
    free(e);
    return 0;
}
