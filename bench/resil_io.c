/* Resilient allocations (issue 12): read and write throughput at 4 KiB, 64 KiB and 1 MiB
 * for stripe:4 (unprotected, the reference), replicate:2 and ec:4+2 in the same run
 * against the same appliances, and 4 KiB read p50/p99 healthy; with --kill, the pids
 * given (appliances: `xmem up` writes xmemd-N.pid in its run directory) are SIGKILLed
 * after the healthy rounds and the 4 KiB reads of replicate:2 and ec:4+2 measured again
 * (degraded). Runs against the manager in $XMEM_MANAGER (xmem up --appliances 6).
 *   resil_io [--size MIB] [--secs S] [--kill "PID PID"]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xmem/xmem.h>

#include "bench_util.h"

static double secs = 1.0;
static int prof_p = -1;
static size_t prof_len;

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* MB/s of len-byte ops at random len-aligned offsets for secs. */
static double rate(xm_ctx_h ctx, xm_alloc_h a, uint64_t size, size_t len, int write, uint8_t *buf)
{
    uint64_t seed = 88172645463325252ull, n = 0, start = bench_now_ns(), end = start;
    while ((end = bench_now_ns()) - start < (uint64_t)(secs * 1e9)) {
        uint64_t off = rnd(&seed) % (size / len) * len;
        xm_status_t s = write ? xm_write(a, off, buf, len) : xm_read(a, off, buf, len);
        if (s != XM_OK) {
            fprintf(stderr, "%s %zu at %llu: %s\n", write ? "write" : "read", len,
                    (unsigned long long)off, xm_last_error(ctx));
            exit(1);
        }
        n++;
    }
    return (double)n * (double)len / ((double)(end - start) / 1e9) / 1e6;
}

static void lat(xm_ctx_h ctx, xm_alloc_h a, uint64_t size, uint8_t *buf, uint64_t *p50, uint64_t *p99)
{
    enum { N = 4000 };
    static uint64_t ns[N];
    uint64_t seed = 1234567;
    for (int i = 0; i < N; i++) {
        uint64_t off = rnd(&seed) % (size / 4096) * 4096, t = bench_now_ns();
        if (xm_read(a, off, buf, 4096) != XM_OK) {
            fprintf(stderr, "read: %s\n", xm_last_error(ctx));
            exit(1);
        }
        ns[i] = bench_now_ns() - t;
    }
    *p50 = bench_quantile(ns, N, 0.5, 0);
    *p99 = bench_quantile(ns, N, 0.99, 1);
}

int main(int argc, char **argv)
{
    uint64_t size = 64ull << 20;
    const char *kill_pids = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) size = strtoull(argv[++i], NULL, 0) << 20;
        else if (strcmp(argv[i], "--secs") == 0 && i + 1 < argc) secs = atof(argv[++i]);
        else if (strcmp(argv[i], "--kill") == 0 && i + 1 < argc) kill_pids = argv[++i];
        else if (strcmp(argv[i], "--profile") == 0 && i + 2 < argc) {
            /* one policy (0 stripe, 1 replicate, 2 ec), one size, writes only: for perf */
            prof_p = atoi(argv[++i]);
            prof_len = strtoull(argv[++i], NULL, 0);
        }
        else {
            fprintf(stderr, "usage: resil_io [--size MIB] [--secs S] [--kill \"PID ...\"]\n");
            return 2;
        }
    }
    xm_ctx_h ctx;
    if (xm_connect(NULL, &ctx) != XM_OK) {
        fprintf(stderr, "connect: %s\n", xm_last_error(NULL));
        return 1;
    }
    static const char *const pol[] = {"stripe:4:64K", "replicate:2", "ec:4+2:64K"};
    static const size_t lens[] = {4096, 65536, 1u << 20};
    xm_alloc_h a[3];
    uint8_t *buf = malloc(1u << 20);
    memset(buf, 0x5a, 1u << 20);
    double w[3][3], r[3][3];
    uint64_t p50[3], p99[3];
    for (int p = 0; p < 3; p++) {
        if (xm_alloc(ctx, size, pol[p], NULL, &a[p]) != XM_OK) {
            fprintf(stderr, "alloc %s: %s\n", pol[p], xm_last_error(ctx));
            return 1;
        }
        /* touch every byte once (the appliances' first-touch is no part of the figures) */
        for (uint64_t off = 0; off < size; off += 1u << 20) xm_write(a[p], off, buf, 1u << 20);
    }
    if (prof_p >= 0 && prof_p < 3) {
        printf("%s write %zu: %.1f MB/s\n", pol[prof_p], prof_len, rate(ctx, a[prof_p], size, prof_len, 1, buf));
        return 0;
    }
    /* rounds interleaved by policy so drift hits all alike */
    for (int l = 0; l < 3; l++) {
        for (int p = 0; p < 3; p++) {
            w[p][l] = rate(ctx, a[p], size, lens[l], 1, buf);
            r[p][l] = rate(ctx, a[p], size, lens[l], 0, buf);
        }
    }
    for (int p = 0; p < 3; p++) lat(ctx, a[p], size, buf, &p50[p], &p99[p]);
    printf("%-14s %10s %10s %10s %10s %10s %10s %9s %9s\n", "policy", "w 4K MB/s", "w 64K", "w 1M",
           "r 4K MB/s", "r 64K", "r 1M", "4K p50us", "p99us");
    for (int p = 0; p < 3; p++) {
        printf("%-14s %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %9.1f %9.1f\n", pol[p], w[p][0], w[p][1],
               w[p][2], r[p][0], r[p][1], r[p][2], p50[p] / 1e3, p99[p] / 1e3);
    }
    for (int p = 1; p < 3; p++) {
        printf("%-14s write vs stripe: 4K %.2fx 64K %.2fx 1M %.2fx; read 4K %.2fx 64K %.2fx 1M %.2fx\n",
               pol[p], w[p][0] / w[0][0], w[p][1] / w[0][1], w[p][2] / w[0][2], r[p][0] / r[0][0],
               r[p][1] / r[0][1], r[p][2] / r[0][2]);
    }
    if (kill_pids != NULL) {
        char *copy = strdup(kill_pids), *save = NULL;
        for (char *t = strtok_r(copy, " ,", &save); t != NULL; t = strtok_r(NULL, " ,", &save)) {
            kill((pid_t)atoi(t), SIGKILL);
        }
        free(copy);
        usleep(200000);
        for (int p = 1; p < 3; p++) {
            uint64_t d50, d99;
            /* the first reads find the losses (marked down in the handle), then the figure */
            for (int i = 0; i < 200; i++) xm_read(a[p], (uint64_t)i * 65536 % size, buf, 4096);
            lat(ctx, a[p], size, buf, &d50, &d99);
            printf("%-14s 4K read with appliances killed: p50 %.1f us (%.2fx healthy), p99 %.1f us\n",
                   pol[p], d50 / 1e3, (double)d50 / (double)p50[p], d99 / 1e3);
        }
    }
    free(buf);
    xm_disconnect(ctx);
    return 0;
}
