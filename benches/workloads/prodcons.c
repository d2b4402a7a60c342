/* Producer/consumer: ceil(T/2) producer threads allocate messages of 16-512 B
 * (skewed small) and pass them in batches through bounded queues to floor(T/2)
 * consumer threads, which check and free them: every free is remote.  With
 * T=1 the single thread produces a batch and then consumes it.
 * usage: prodcons THREADS OPS(total messages) */
#include "common.h"

#define MAXSZ 512
#define BATCH 64
#define QCAP 4096 /* messages per queue */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    void *buf[QCAP];
    size_t head, count;
    int producers_left;
} queue_t;

static queue_t *queues;
static long nprod, ncons, per_producer;

static void q_push(queue_t *q, void **items, size_t n) {
    pthread_mutex_lock(&q->mu);
    while (q->count + n > QCAP) pthread_cond_wait(&q->not_full, &q->mu);
    for (size_t i = 0; i < n; i++) q->buf[(q->head + q->count + i) % QCAP] = items[i];
    q->count += n;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
}

/* returns number popped, 0 when the queue is drained and all producers are done */
static size_t q_pop(queue_t *q, void **items, size_t max) {
    pthread_mutex_lock(&q->mu);
    while (q->count == 0 && q->producers_left > 0) pthread_cond_wait(&q->not_empty, &q->mu);
    size_t n = q->count < max ? q->count : max;
    for (size_t i = 0; i < n; i++) items[i] = q->buf[(q->head + i) % QCAP];
    q->head = (q->head + n) % QCAP;
    q->count -= n;
    pthread_cond_broadcast(&q->not_full);
    pthread_mutex_unlock(&q->mu);
    return n;
}

static void *producer(void *arg) {
    long id = (long)arg;
    rng_t r;
    rng_seed(&r, 77 + (uint64_t)id);
    void *batch[BATCH];
    long made = 0, k = 0;
    while (made < per_producer) {
        size_t n = 0;
        while (n < BATCH && made < per_producer) {
            batch[n++] = new_block(&r, rng_skewed(&r, 16, MAXSZ));
            made++;
        }
        q_push(&queues[(id + k++) % ncons], batch, n);
    }
    for (long c = 0; c < ncons; c++) {
        pthread_mutex_lock(&queues[c].mu);
        queues[c].producers_left--;
        pthread_cond_broadcast(&queues[c].not_empty);
        pthread_mutex_unlock(&queues[c].mu);
    }
    return NULL;
}

static void *consumer(void *arg) {
    queue_t *q = &queues[(long)arg];
    void *batch[BATCH];
    size_t n;
    while ((n = q_pop(q, batch, BATCH)) > 0)
        for (size_t i = 0; i < n; i++) drop_block(batch[i], MAXSZ);
    return NULL;
}

int main(int argc, char **argv) {
    long threads = arg_long(argc, argv, 1, 4);
    long ops = arg_long(argc, argv, 2, 2000000);
    if (threads == 1) {
        rng_t r;
        rng_seed(&r, 77);
        void *batch[BATCH];
        for (long made = 0; made < ops;) {
            size_t n = 0;
            while (n < BATCH && made < ops) {
                batch[n++] = new_block(&r, rng_skewed(&r, 16, MAXSZ));
                made++;
            }
            for (size_t i = 0; i < n; i++) drop_block(batch[i], MAXSZ);
        }
        print_calls(2LL * ops); /* every message: one malloc, one free */
        return 0;
    }
    nprod = (threads + 1) / 2;
    ncons = threads / 2;
    per_producer = ops / nprod;
    queues = xmalloc(sizeof(queue_t) * (size_t)ncons);
    for (long c = 0; c < ncons; c++) {
        pthread_mutex_init(&queues[c].mu, NULL);
        pthread_cond_init(&queues[c].not_empty, NULL);
        pthread_cond_init(&queues[c].not_full, NULL);
        queues[c].head = queues[c].count = 0;
        queues[c].producers_left = (int)nprod;
    }
    pthread_t *t = xmalloc(sizeof(pthread_t) * (size_t)threads);
    for (long c = 0; c < ncons; c++) xpthread_create(&t[c], consumer, (void *)c);
    for (long p = 0; p < nprod; p++) xpthread_create(&t[ncons + p], producer, (void *)p);
    for (long i = 0; i < threads; i++) pthread_join(t[i], NULL);
    free(t);
    free(queues);
    /* every message: one malloc, one free; plus queues and t */
    print_calls(2LL * per_producer * nprod + 4);
    return 0;
}
