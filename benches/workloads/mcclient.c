/* Multithreaded memcached client for the benchmark: THREADS connections, one
 * per thread, each doing REQUESTS get/set requests (30 % set) on its own keys
 * over the text protocol on 127.0.0.1:PORT.  Every value is derived from its
 * key and version (kept in the flags field) and checked on each hit.
 * Prints "requests N hits H misses M seconds S rps R".
 * Exit codes: 0 ok, 2 usage, 3 wrong data, 5 connection/protocol error.
 * usage: mcclient PORT THREADS REQUESTS_PER_THREAD [KEYS_PER_THREAD] */
#include "common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXVAL 2048

static long port, nthreads, requests, nkeys;
static pthread_barrier_t barrier;
static long total_hits, total_misses;
static pthread_mutex_t tot_mu = PTHREAD_MUTEX_INITIALIZER;

typedef struct {
    int fd;
    char buf[65536];
    size_t pos, len;
} conn_t;

static void die_io(const char *what) {
    fprintf(stderr, "mcclient: %s: %s\n", what, strerror(errno));
    exit(5);
}

static int fill_buf(conn_t *c) {
    if (c->pos > 0 && c->pos < c->len) memmove(c->buf, c->buf + c->pos, c->len - c->pos);
    c->len -= c->pos;
    c->pos = 0;
    ssize_t n = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
    if (n <= 0) die_io(n == 0 ? "server closed the connection" : "read");
    c->len += (size_t)n;
    return 0;
}

/* read a line (without CRLF) into out */
static size_t read_line(conn_t *c, char *out, size_t max) {
    for (;;) {
        for (size_t i = c->pos; i + 1 < c->len; i++) {
            if (c->buf[i] == '\r' && c->buf[i + 1] == '\n') {
                size_t n = i - c->pos;
                if (n >= max) {
                    errno = EPROTO;
                    die_io("line too long");
                }
                memcpy(out, c->buf + c->pos, n);
                out[n] = 0;
                c->pos = i + 2;
                return n;
            }
        }
        fill_buf(c);
    }
}

static void read_n(conn_t *c, uint8_t *out, size_t n) {
    while (n > 0) {
        if (c->pos == c->len) fill_buf(c);
        size_t k = c->len - c->pos < n ? c->len - c->pos : n;
        memcpy(out, c->buf + c->pos, k);
        c->pos += k;
        out += k;
        n -= k;
    }
}

static void write_all(int fd, const void *p, size_t n) {
    const char *b = p;
    while (n > 0) {
        ssize_t k = write(fd, b, n);
        if (k <= 0) die_io("write");
        b += k;
        n -= (size_t)k;
    }
}

static uint64_t value_tag(long tid, long key, uint32_t ver) {
    return ((uint64_t)tid << 48) ^ ((uint64_t)key << 20) ^ ver ^ 0xABCDEFULL;
}

static void *worker(void *arg) {
    long tid = (long)arg;
    conn_t *c = xmalloc(sizeof *c);
    c->pos = c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) die_io("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) die_io("connect");
    uint32_t *ver = calloc((size_t)nkeys, sizeof(uint32_t));
    uint32_t *vlen = calloc((size_t)nkeys, sizeof(uint32_t));
    char *cmd = xmalloc(MAXVAL + 256);
    uint8_t *val = xmalloc(MAXVAL + 2);
    char line[512];
    rng_t r;
    rng_seed(&r, 3000 + (uint64_t)tid);
    long hits = 0, misses = 0;
    pthread_barrier_wait(&barrier);
    for (long i = 0; i < requests; i++) {
        long k = (long)(rng_next(&r) % (uint64_t)nkeys);
        if (ver[k] == 0 || rng_next(&r) % 100 < 30) {
            uint32_t v = ++ver[k];
            size_t n = rng_skewed(&r, 16, MAXVAL);
            vlen[k] = (uint32_t)n;
            int h = snprintf(cmd, 256, "set t%ld:k%ld %u 0 %zu\r\n", tid, k, v, n);
            uint64_t tag = value_tag(tid, k, v);
            for (size_t j = 0; j < n; j++) cmd[h + j] = (char)pat_byte(tag, j);
            memcpy(cmd + h + n, "\r\n", 2);
            write_all(c->fd, cmd, (size_t)h + n + 2);
            read_line(c, line, sizeof line);
            if (strcmp(line, "STORED") != 0) {
                fprintf(stderr, "mcclient: set answered '%s'\n", line);
                exit(5);
            }
        } else {
            int h = snprintf(cmd, 256, "get t%ld:k%ld\r\n", tid, k);
            write_all(c->fd, cmd, (size_t)h);
            read_line(c, line, sizeof line);
            if (strcmp(line, "END") == 0) {
                misses++;
                continue;
            }
            char key[128];
            unsigned flags = 0;
            size_t bytes = 0;
            if (sscanf(line, "VALUE %127s %u %zu", key, &flags, &bytes) != 3 || bytes > MAXVAL) {
                fprintf(stderr, "mcclient: bad reply '%s'\n", line);
                exit(5);
            }
            read_n(c, val, bytes + 2);
            read_line(c, line, sizeof line);
            if (strcmp(line, "END") != 0) {
                fprintf(stderr, "mcclient: expected END, got '%s'\n", line);
                exit(5);
            }
            if (flags != ver[k] || bytes != vlen[k]) {
                fprintf(stderr, "VERIFY-FAIL mcclient: key t%ld:k%ld version %u/%u length %zu/%u\n", tid, k, flags,
                        ver[k], bytes, vlen[k]);
                exit(EXIT_VERIFY);
            }
            uint64_t tag = value_tag(tid, k, flags);
            for (size_t j = 0; j < bytes; j++)
                if (val[j] != pat_byte(tag, j)) {
                    fprintf(stderr, "VERIFY-FAIL mcclient: key t%ld:k%ld byte %zu\n", tid, k, j);
                    exit(EXIT_VERIFY);
                }
            hits++;
        }
    }
    close(c->fd);
    pthread_mutex_lock(&tot_mu);
    total_hits += hits;
    total_misses += misses;
    pthread_mutex_unlock(&tot_mu);
    free(ver);
    free(vlen);
    free(cmd);
    free(val);
    free(c);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: mcclient PORT THREADS REQUESTS_PER_THREAD [KEYS_PER_THREAD]\n");
        return EXIT_USAGE;
    }
    port = arg_long(argc, argv, 1, 11211);
    nthreads = arg_long(argc, argv, 2, 4);
    requests = arg_long(argc, argv, 3, 10000);
    nkeys = arg_long(argc, argv, 4, 2000);
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads + 1);
    pthread_t *t = xmalloc(sizeof(pthread_t) * (size_t)nthreads);
    for (long i = 0; i < nthreads; i++) xpthread_create(&t[i], worker, (void *)i);
    pthread_barrier_wait(&barrier);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    long total = nthreads * requests;
    printf("requests %ld hits %ld misses %ld seconds %.6f rps %.1f\n", total, total_hits, total_misses, secs,
           (double)total / secs);
    free(t);
    return 0;
}
