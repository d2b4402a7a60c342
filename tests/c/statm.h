/* The resident set size from /proc/self/statm, read with open/read on a stack
 * buffer: no malloc (fopen would allocate, and an allocation slow path may run
 * the very idle purge being measured). Shared by the RSS tests (idle.c,
 * large_cache.c) and benches/rss_trace/burst.c. */
#ifndef BRKMALLOC_STATM_H
#define BRKMALLOC_STATM_H
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

static long rss_kib(void) {
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    long size = 0, res = -1;
    if (sscanf(buf, "%ld %ld", &size, &res) != 2)
        return -1;
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}
#endif
