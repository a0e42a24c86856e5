/* Allocation manager: allocate+free pairs per second from T local clients,
 * time to allocate a large striped allocation, striped streaming bandwidth.
 * Runs against the manager in $XMEM_MANAGER (xmem up starts one).
 *   manager_alloc [--threads T] [--pairs N] [--big SIZE --policy P] [--stream SIZE --policy P] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xmem/xmem.h>

#include "bench_util.h"

static int pairs = 2000;
static uint64_t total_ns_max;

typedef struct th { int failures; uint64_t ns; } th_t;

static void *churn(void *arg)
{
    th_t *t = arg;
    xm_ctx_h ctx;
    if (xm_connect(NULL, &ctx) != XM_OK) {
        fprintf(stderr, "connect: %s\n", xm_last_error(NULL));
        t->failures = pairs;
        return NULL;
    }
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < pairs; i++) {
        xm_alloc_h a;
        if (xm_alloc(ctx, 1u << 20, "single", NULL, &a) != XM_OK) {
            t->failures++;
            continue;
        }
        if (xm_free(ctx, xm_region_id(a), NULL) != XM_OK) t->failures++;
        xm_alloc_close(a);
    }
    t->ns = bench_now_ns() - t0;
    xm_disconnect(ctx);
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 2;
    const char *big = NULL, *stream = NULL, *policy = "stripe:4";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--pairs") == 0) pairs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--big") == 0) big = argv[i + 1];
        else if (strcmp(argv[i], "--stream") == 0) stream = argv[i + 1];
        else if (strcmp(argv[i], "--policy") == 0) policy = argv[i + 1];
    }
    if (pairs > 0) {
        th_t *ts = calloc((size_t)threads, sizeof(*ts));
        pthread_t *ps = calloc((size_t)threads, sizeof(*ps));
        uint64_t t0 = bench_now_ns();
        for (int i = 0; i < threads; i++) pthread_create(&ps[i], NULL, churn, &ts[i]);
        int fails = 0;
        for (int i = 0; i < threads; i++) {
            pthread_join(ps[i], NULL);
            fails += ts[i].failures;
        }
        uint64_t ns = bench_now_ns() - t0;
        (void)total_ns_max;
        printf("%-40s %10.0f pairs/s  (%d clients x %d pairs, %d failures)\n",
               "allocate+free 1 MiB single", (double)threads * pairs * 1e9 / (double)ns, threads,
               pairs, fails);
        free(ts);
        free(ps);
    }
    xm_ctx_h ctx;
    if ((big != NULL || stream != NULL) && xm_connect(NULL, &ctx) != XM_OK) {
        fprintf(stderr, "connect: %s\n", xm_last_error(NULL));
        return 1;
    }
    if (big != NULL) {
        uint64_t size;
        xm_parse_size(big, &size);
        uint64_t best = UINT64_MAX;
        for (int r = 0; r < 5; r++) {
            xm_alloc_h a;
            uint64_t t0 = bench_now_ns();
            xm_status_t s = xm_alloc(ctx, size, policy, NULL, &a);
            uint64_t ns = bench_now_ns() - t0;
            if (s != XM_OK) {
                fprintf(stderr, "alloc %s %s: %s\n", big, policy, xm_last_error(ctx));
                return 1;
            }
            if (ns < best) best = ns;
            xm_free(ctx, xm_region_id(a), NULL);
            xm_alloc_close(a);
        }
        printf("%-40s %10.3f ms   (best of 5)\n", "allocate striped", (double)best / 1e6);
    }
    if (stream != NULL) {
        uint64_t size;
        xm_parse_size(stream, &size);
        xm_alloc_h a;
        if (xm_alloc(ctx, size, policy, NULL, &a) != XM_OK) {
            fprintf(stderr, "alloc: %s\n", xm_last_error(ctx));
            return 1;
        }
        const size_t op = 1u << 20;
        const int depth = 16;
        char *buf = malloc(op * depth);
        memset(buf, 1, op * depth);
        for (int w = 0; w < 2; w++) {
            uint64_t t0 = bench_now_ns();
            for (uint64_t off = 0; off < size; off += op * depth) {
                xm_op_t ops[16];
                int n = 0;
                for (int k = 0; k < depth && off + (uint64_t)k * op < size; k++, n++) {
                    ops[k] = (xm_op_t){.opcode = w ? XM_OP_READ : XM_OP_WRITE, .region = a,
                                       .offset = off + (uint64_t)k * op, .buf = buf + (size_t)k * op,
                                       .length = op};
                }
                if (xm_submit(ctx, ops, (size_t)n) != XM_OK) {
                    fprintf(stderr, "io: %s\n", xm_last_error(ctx));
                    return 1;
                }
            }
            uint64_t ns = bench_now_ns() - t0;
            printf("%-40s %10.2f GB/s (%s, %s, 1 MiB ops, depth 16)\n",
                   w ? "striped streaming read" : "striped streaming write",
                   (double)size / (double)ns, stream, policy);
        }
        xm_free(ctx, xm_region_id(a), NULL);
        xm_alloc_close(a);
        free(buf);
    }
    if (big != NULL || stream != NULL) xm_disconnect(ctx);
    return 0;
}
