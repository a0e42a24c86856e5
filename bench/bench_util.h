/* Shared helpers of the bench/ programs: clock, percentiles, host:port. */
#ifndef XMEM_BENCH_UTIL_H
#define XMEM_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int bench_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorts ns in place; returns the q-quantile (0..1) in ns (nearest rank). */
static inline uint64_t bench_quantile(uint64_t *ns, size_t n, double q, int sorted)
{
    if (n == 0) return 0;
    if (!sorted) qsort(ns, n, sizeof(*ns), bench_cmp_u64);
    size_t i = (size_t)((double)n * q);
    return ns[i >= n ? n - 1 : i];
}

/* "HOST:PORT" -> host, port; 0 or -1. */
static inline int bench_split_hostport(const char *text, char *host, size_t hostlen, char *port,
                                       size_t portlen)
{
    const char *colon = strrchr(text, ':');
    if (colon == NULL || colon == text || colon[1] == '\0' ||
        (size_t)(colon - text) >= hostlen || strlen(colon + 1) >= portlen) {
        return -1;
    }
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    strcpy(port, colon + 1);
    return 0;
}

#endif /* XMEM_BENCH_UTIL_H */
