/* Out of memory under a resource limit.  Mode (argv[1]) "data" sets
 * RLIMIT_DATA, "as" sets RLIMIT_AS, to the current usage + 64 MiB.  Then small
 * blocks are allocated until malloc returns NULL (errno must be ENOMEM), all
 * of them are freed, and allocation must work again (small blocks reuse the
 * freed memory; a 1 MiB block must succeed too).
 *
 * The blocks are chained through their first word, so the test itself needs
 * no memory besides the blocks.  stdout is unbuffered so that printing
 * allocates nothing. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* VmData or VmSize from /proc/self/status, in bytes. */
static long vm_field(const char *name) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long kb = -1;
    size_t len = strlen(name);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, name, len) == 0 && line[len] == ':')
            kb = strtol(line + len + 1, NULL, 10);
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

struct node {
    struct node *next;
    size_t n;
};

static uint64_t rng = 88172645463325252ull;
static size_t small_size(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return sizeof(struct node) + (size_t)(rng % 500);
}

/* Allocate until NULL; returns the chain, count in *count, errno of the failure in *err. */
static struct node *exhaust(long *count, int *err, size_t limit_bytes) {
    struct node *head = NULL;
    long c = 0;
    size_t total = 0;
    for (;;) {
        size_t n = small_size();
        errno = 0;
        struct node *b = malloc(n);
        if (!b) {
            *err = errno;
            break;
        }
        b->next = head;
        b->n = n;
        memset(b + 1, 0xab, n - sizeof *b);
        head = b;
        c++;
        total += n;
        if (total > 4 * limit_bytes) {
            /* something is wrong: the limit does not bite */
            *err = -1;
            break;
        }
    }
    *count = c;
    return head;
}

static int free_chain(struct node *head) {
    int bad = 0;
    while (head) {
        struct node *next = head->next;
        const unsigned char *c = (const unsigned char *)(head + 1);
        for (size_t i = 0; i < head->n - sizeof *head; i++)
            if (c[i] != 0xab) {
                bad = 1;
                break;
            }
        free(head);
        head = next;
    }
    return bad;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *mode = argc > 1 ? argv[1] : "data";
    int resource;
    long cur;
    if (strcmp(mode, "data") == 0) {
        resource = RLIMIT_DATA;
        cur = vm_field("VmData");
    } else if (strcmp(mode, "as") == 0) {
        resource = RLIMIT_AS;
        cur = vm_field("VmSize");
    } else {
        printf("usage: oom data|as\n");
        return 2;
    }
    if (cur < 0) {
        printf("FAIL - cannot read /proc/self/status\n");
        return 1;
    }
    const size_t extra = 64u << 20;
    struct rlimit rl = {(rlim_t)cur + extra, (rlim_t)cur + extra};
    if (setrlimit(resource, &rl) != 0) {
        printf("FAIL - setrlimit: %s\n", strerror(errno));
        return 1;
    }
    printf("mode %s: limit = %ld MiB (current usage %ld MiB + 64 MiB)\n", mode,
           (long)(rl.rlim_cur >> 20), cur >> 20);

    int failed = 0;
    for (int round = 0; round < 2; round++) {
        long count;
        int err = 0;
        struct node *chain = exhaust(&count, &err, extra);
        if (err == -1) {
            printf("FAIL - round %d: %ld blocks allocated and the limit never bit\n", round,
                   count);
            return 1;
        }
        if (err != ENOMEM) {
            printf("FAIL - round %d: malloc returned NULL with errno %d, want ENOMEM\n", round,
                   err);
            failed = 1;
        } else {
            printf("ok - round %d: NULL + ENOMEM after %ld small blocks\n", round, count);
        }
        if (count < 1000) {
            printf("FAIL - round %d: only %ld blocks before running out\n", round, count);
            failed = 1;
        }
        /* Other entry points fail cleanly too while memory is exhausted. */
        errno = 0;
        void *p = calloc(1, 2u << 20);
        if (p) {
            free(p);
        } else if (errno != ENOMEM) {
            printf("FAIL - calloc at OOM: errno %d\n", errno);
            failed = 1;
        }
        void *a = NULL;
        errno = 4321;
        int rc = posix_memalign(&a, 4096, 4u << 20);
        if (rc == 0)
            free(a);
        else if (rc != ENOMEM) {
            printf("FAIL - posix_memalign at OOM = %d\n", rc);
            failed = 1;
        }
        if (free_chain(chain)) {
            printf("FAIL - round %d: a block was corrupted\n", round);
            failed = 1;
        }
        /* Memory came back: allocate again. */
        struct node *again = NULL;
        long n_again = count / 2;
        for (long i = 0; i < n_again; i++) {
            struct node *b = malloc(sizeof *b + 100);
            if (!b) {
                printf("FAIL - round %d: malloc failed after freeing everything (%ld of %ld)\n",
                       round, i, n_again);
                failed = 1;
                break;
            }
            b->next = again;
            b->n = sizeof *b;
            again = b;
        }
        free_chain(again);
        void *big = malloc(1u << 20);
        if (!big) {
            printf("FAIL - round %d: malloc(1 MiB) failed after freeing everything (errno %d)\n",
                   round, errno);
            failed = 1;
        } else {
            memset(big, 1, 1u << 20);
            free(big);
            printf("ok - round %d: allocation works again after free\n", round);
        }
    }
    if (failed)
        return 1;
    printf("all checks passed\n");
    return 0;
}
