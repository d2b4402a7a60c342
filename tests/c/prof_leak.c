/* Leak summary: one function leaks 4 KiB per loop iteration, another frees what it takes,
 * a third keeps one 64 KiB table. Built without -rdynamic: the in-process summary names the
 * functions from the program's symbol table. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *table;

__attribute__((noinline)) void leaky_function(int i) {
    char *p = malloc(4096);
    if (!p) exit(4);
    memset(p, i, 4096);
    __asm__ volatile("" : : "r"(p) : "memory"); /* dropped: leaked */
}

__attribute__((noinline)) void tidy_function(int i) {
    char *p = malloc(2048 + i % 1024);
    if (!p) exit(4);
    memset(p, i, 64);
    free(p);
}

__attribute__((noinline)) void keep_table(void) {
    table = malloc(64 << 10);
    if (!table) exit(4);
    memset(table, 1, 64 << 10);
}

int main(void) {
    keep_table();
    for (int i = 0; i < 4000; i++) {
        leaky_function(i);
        tidy_function(i);
    }
    printf("done\n");
    return 0;
}
