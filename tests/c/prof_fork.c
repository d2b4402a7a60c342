/* Profiling across fork: the parent and the child each hold a known block at exit and
 * each writes its own profile (<prefix>.<pid>.<seq>.heap). Prints the child's pid. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *kept[64];

__attribute__((noinline)) void parent_site(void) {
    for (int i = 0; i < 32; i++) { kept[i] = malloc(64 << 10); memset(kept[i], 1, 64); }
}

__attribute__((noinline)) void child_site(void) {
    for (int i = 32; i < 64; i++) { kept[i] = malloc(96 << 10); memset(kept[i], 2, 64); }
}

int main(void) {
    parent_site();
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return 5;
    if (pid == 0) {
        child_site();
        exit(0); /* runs the exit handlers: the child's profile */
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return 6;
    printf("child %d\n", (int)pid);
    return 0;
}
