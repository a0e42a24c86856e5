/*
 * The local transport against memcpy, in the same run: 4 KiB and 1 MiB reads and writes
 * through a region mapped by a client on the appliance's host (XMEM_TRANSPORT=local), the
 * same copies between two buffers of this process, and, for reference, a 4 KiB read over
 * tcp. Several rounds, each with its own p50/p99, so a bimodal result shows. Then the
 * first touch of a fresh region (its pages are allocated by the client's first stores)
 * against a first touch of fresh anonymous memory.
 *
 *   XMEM_APPLIANCE=127.0.0.1:PORT XMEM_SECRET_FILE=CRED local_io [ROUNDS] [REGION_MIB]
 *
 * The appliance must run on this host with a memfd or hugetlb pool. Timing: one
 * clock_gettime pair per operation (both columns pay it alike); the client busy-polls
 * nothing (local operations complete in the call).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <xmem/xmem.h>

#include "bench_util.h"

static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

typedef xm_status_t (*op_fn)(void *ctx, uint64_t off, uint8_t *buf, size_t len);

static xm_status_t xm_rd(void *r, uint64_t off, uint8_t *buf, size_t len)
{
    return xm_read(r, off, buf, len);
}
static xm_status_t xm_wr(void *r, uint64_t off, uint8_t *buf, size_t len)
{
    return xm_write(r, off, buf, len);
}
static xm_status_t mem_rd(void *src, uint64_t off, uint8_t *buf, size_t len)
{
    memcpy(buf, (uint8_t *)src + off, len);
    __asm__ volatile("" ::: "memory");
    return XM_OK;
}
static xm_status_t mem_wr(void *dst, uint64_t off, uint8_t *buf, size_t len)
{
    memcpy((uint8_t *)dst + off, buf, len);
    __asm__ volatile("" ::: "memory");
    return XM_OK;
}

/* n ops of len bytes at random len-aligned offsets in [0, span): p50 and p99 in ns. */
static int run(op_fn fn, void *arg, size_t len, uint64_t span, int n, uint8_t *buf, uint64_t *p50,
               uint64_t *p99)
{
    uint64_t *ns = malloc((size_t)n * sizeof(*ns));
    for (int i = 0; i < n; i++) {
        uint64_t off = next_rand() % (span / len) * len;
        uint64_t t0 = bench_now_ns();
        if (fn(arg, off, buf, len) != XM_OK) {
            free(ns);
            return -1;
        }
        ns[i] = bench_now_ns() - t0;
    }
    *p50 = bench_quantile(ns, (size_t)n, 0.5, 0);
    *p99 = bench_quantile(ns, (size_t)n, 0.99, 1);
    free(ns);
    return 0;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 5;
    uint64_t span = (argc > 2 ? strtoull(argv[2], NULL, 10) : 64) << 20;
    setenv("XMEM_TRANSPORT", "local", 1);
    xm_ctx_h ctx;
    if (xm_connect(NULL, &ctx) != XM_OK) {
        fprintf(stderr, "local_io: connect: %s\n", xm_last_error(NULL));
        return 1;
    }
    setenv("XMEM_TRANSPORT", "tcp", 1);
    xm_ctx_h tctx;
    if (xm_connect(NULL, &tctx) != XM_OK) {
        fprintf(stderr, "local_io: connect (tcp): %s\n", xm_last_error(NULL));
        return 1;
    }
    xm_region_h r, rt;
    if (xm_region_create(ctx, span, NULL, &r) != XM_OK ||
        xm_region_open(tctx, xm_region_id(r), NULL, XM_ACCESS_READ_WRITE, &rt) != XM_OK) {
        fprintf(stderr, "local_io: region: %s\n", xm_last_error(ctx));
        return 1;
    }
    uint8_t *src = malloc(span), *buf = malloc(1u << 20);
    memset(src, 1, span);
    memset(buf, 2, 1u << 20);
    /* touch the region once, so rounds measure copies, not page allocation */
    for (uint64_t off = 0; off < span; off += 1u << 20) xm_write(r, off, src, 1u << 20);

    printf("local_io: %d rounds, %llu MiB region; ns per operation (p50 / p99); ratio = "
           "local p50 / memcpy p50\n", rounds, (unsigned long long)(span >> 20));
    printf("%-6s %-6s %-22s %-22s %-7s %-16s\n", "round", "size", "local read", "memcpy read",
           "ratio", "tcp read p50");
    for (int k = 0; k < rounds; k++) {
        uint64_t a50, a99, b50, b99, t50 = 0, t99;
        run(xm_rd, r, 4096, span, 20000, buf, &a50, &a99);
        run(mem_rd, src, 4096, span, 20000, buf, &b50, &b99);
        if (k == 0) run(xm_rd, rt, 4096, span, 2000, buf, &t50, &t99);
        printf("%-6d %-6s %8llu / %-11llu %8llu / %-11llu %-7.2f %llu\n", k, "4K",
               (unsigned long long)a50, (unsigned long long)a99, (unsigned long long)b50,
               (unsigned long long)b99, (double)a50 / (double)b50, (unsigned long long)t50);
        run(xm_wr, r, 4096, span, 20000, buf, &a50, &a99);
        run(mem_wr, src, 4096, span, 20000, buf, &b50, &b99);
        printf("%-6d %-6s %8llu / %-11llu %8llu / %-11llu %-7.2f (write)\n", k, "4K",
               (unsigned long long)a50, (unsigned long long)a99, (unsigned long long)b50,
               (unsigned long long)b99, (double)a50 / (double)b50);
        run(xm_rd, r, 1u << 20, span, 300, buf, &a50, &a99);
        run(mem_rd, src, 1u << 20, span, 300, buf, &b50, &b99);
        printf("%-6d %-6s %8llu / %-11llu %8llu / %-11llu %-7.2f %.1f vs %.1f GB/s (read)\n", k,
               "1M", (unsigned long long)a50, (unsigned long long)a99, (unsigned long long)b50,
               (unsigned long long)b99, (double)a50 / (double)b50, (1u << 20) / (double)a50,
               (1u << 20) / (double)b50);
        run(xm_wr, r, 1u << 20, span, 300, buf, &a50, &a99);
        run(mem_wr, src, 1u << 20, span, 300, buf, &b50, &b99);
        printf("%-6d %-6s %8llu / %-11llu %8llu / %-11llu %-7.2f %.1f vs %.1f GB/s (write)\n", k,
               "1M", (unsigned long long)a50, (unsigned long long)a99, (unsigned long long)b50,
               (unsigned long long)b99, (double)a50 / (double)b50, (1u << 20) / (double)a50,
               (1u << 20) / (double)b50);
    }
    /* first touch: a fresh region written once, against fresh anonymous memory */
    for (int k = 0; k < 3; k++) {
        xm_region_h f;
        if (xm_region_create(ctx, span, NULL, &f) != XM_OK) return 1;
        uint64_t t0 = bench_now_ns();
        for (uint64_t off = 0; off < span; off += 1u << 20) xm_write(f, off, buf, 1u << 20);
        uint64_t tl = bench_now_ns() - t0;
        uint8_t *anon = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        t0 = bench_now_ns();
        for (uint64_t off = 0; off < span; off += 1u << 20) memcpy(anon + off, buf, 1u << 20);
        uint64_t ta = bench_now_ns() - t0;
        printf("first touch %d: fresh region %.2f GB/s, fresh anonymous memory %.2f GB/s, ratio %.2f\n",
               k, (double)span / (double)tl, (double)span / (double)ta, (double)tl / (double)ta);
        munmap(anon, span);
        uint64_t id = xm_region_id(f);
        xm_region_close(f);
        xm_region_destroy(ctx, id, NULL);
    }
    xm_region_close(rt);
    xm_region_close(r);
    xm_disconnect(tctx);
    xm_disconnect(ctx);
    free(src);
    free(buf);
    return 0;
}
