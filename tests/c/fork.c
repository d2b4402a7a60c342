/* fork() while other threads allocate: 4 threads malloc/free in a loop while
 * the main thread forks 200 times.  Each child mallocs and frees a few hundred
 * blocks (and strdups) and _exit(0)s; a child that deadlocks on an allocator
 * lock inherited from the parent is caught by the alarm(60) below (SIGALRM)
 * or by the child's own alarm.  Exit status 0 when every child exited 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctest.h"

enum { THREADS = 4, FORKS = 200 };

static volatile int stop;
static volatile long thread_ops[THREADS];

static void *churn(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    uint64_t s = 0xdeadbeefull + id * 77;
    void *keep[128] = {0};
    long ops = 0;
    while (!stop) {
        uint64_t r = rnd(&s);
        size_t k = (size_t)(r % 128);
        free(keep[k]);
        size_t n = r % 50 == 0 ? 150000 + (size_t)(r >> 32) % 100000 : 1 + (size_t)(r >> 32) % 4000;
        keep[k] = (r >> 8) % 3 == 0 ? calloc(1, n) : malloc(n);
        if (!keep[k]) {
            printf("FAIL - thread %lu: allocation of %zu failed\n", (unsigned long)id, n);
            exit(1);
        }
        memset(keep[k], (int)id, n < 256 ? n : 256);
        if ((r >> 16) % 7 == 0) {
            char *p = realloc(keep[k], n + 100);
            if (!p) {
                printf("FAIL - realloc failed\n");
                exit(1);
            }
            keep[k] = p;
        }
        ops++;
    }
    for (int i = 0; i < 128; i++)
        free(keep[i]);
    thread_ops[id] = ops;
    return NULL;
}

static void child(int i) {
    alarm(20); /* a hung child dies by SIGALRM instead of hanging the parent */
    void *v[300];
    for (int k = 0; k < 300; k++) {
        v[k] = malloc((size_t)(k * 37 + i) % 3000 + 1);
        if (!v[k])
            _exit(3);
        memset(v[k], k, 1);
    }
    char *s = strdup("a string duplicated in the child");
    if (!s || strcmp(s, "a string duplicated in the child") != 0)
        _exit(4);
    for (int k = 0; k < 300; k += 2)
        free(v[k]);
    void *big = malloc(300000);
    if (!big)
        _exit(5);
    memset(big, 1, 300000);
    free(big);
    for (int k = 1; k < 300; k += 2)
        free(v[k]);
    free(s);
    _exit(0);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    alarm(60);
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, churn, (void *)i) != 0) {
            printf("FAIL - pthread_create\n");
            return 1;
        }
    int bad = 0;
    for (int i = 0; i < FORKS; i++) {
        /* let the threads get going between forks */
        for (int k = 0; k < 20; k++) {
            void *p = malloc(64 + k);
            free(p);
        }
        pid_t pid = fork();
        if (pid < 0) {
            printf("FAIL - fork: %s\n", strerror(errno));
            return 1;
        }
        if (pid == 0)
            child(i);
        int st;
        if (waitpid(pid, &st, 0) != pid) {
            printf("FAIL - waitpid: %s\n", strerror(errno));
            return 1;
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            if (WIFSIGNALED(st))
                printf("FAIL - child %d killed by signal %d%s\n", i, WTERMSIG(st),
                       WTERMSIG(st) == SIGALRM ? " (hung: deadlock after fork?)" : "");
            else
                printf("FAIL - child %d exited with %d\n", i, WEXITSTATUS(st));
            bad++;
        }
    }
    stop = 1;
    long total = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        total += thread_ops[i];
    }
    if (bad) {
        printf("FAIL - %d of %d children failed\n", bad, FORKS);
        return 1;
    }
    printf("ok - %d forks while %d threads allocated (%ld thread ops)\n", FORKS, THREADS, total);
    return 0;
}
