/* xmem bench: one-sided read/write/atomic latency and bandwidth, against a
 * raw TCP round trip and stream measured in the same run. */
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../../bench/tcp_ref.h"
#include "cli.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct lat { double p50, p99; } lat_t;

static lat_t percentiles(uint64_t *ns, size_t n)
{
    qsort(ns, n, sizeof(*ns), cmp_u64);
    lat_t l = {ns[n / 2] / 1000.0, ns[(size_t)((double)n * 0.99)] / 1000.0};
    return l;
}

/* ---- raw TCP reference (bench/tcp_ref.h) ---------------------------------- */

/* Round trip: an 8-byte request, a size-byte answer (the shape of a read). */
static lat_t tcp_rtt(int fd, size_t size, size_t iters, uint8_t *buf)
{
    uint64_t *ns = malloc(iters * sizeof(*ns));
    tcp_ref_rtt(fd, size, iters, buf, ns);
    lat_t l = percentiles(ns, iters);
    free(ns);
    return l;
}

/* ---- xmem measurements ---------------------------------------------------- */

static lat_t op_latency(xm_ctx_h ctx, xm_region_h r, xm_opcode_t opc, size_t size, size_t iters,
                        uint8_t *buf, int *err)
{
    uint64_t *ns = malloc(iters * sizeof(*ns));
    uint64_t region = xm_region_size(r);
    size_t warm = iters / 10;
    for (size_t i = 0; i < iters + warm; i++) {
        uint64_t off = ((uint64_t)i * size) % (region - size + 1) & ~7ull;
        uint64_t old;
        uint64_t t0 = now_ns();
        xm_status_t s;
        switch (opc) {
        case XM_OP_READ: s = xm_read(r, off, buf, size); break;
        case XM_OP_WRITE: s = xm_write(r, off, buf, size); break;
        case XM_OP_FETCH_ADD: s = xm_fetch_add(r, off, 1, &old); break;
        default: s = xm_compare_swap(r, off, 0, 0, &old); break;
        }
        if (s != XM_OK) {
            fprintf(stderr, "xmem: bench: %s: %s\n", xm_status_str(s), xm_last_error(ctx));
            *err = 1;
            break;
        }
        if (i >= warm) ns[i - warm] = now_ns() - t0;
    }
    lat_t l = *err ? (lat_t){0, 0} : percentiles(ns, iters);
    free(ns);
    return l;
}

/* Pipelined: keep depth operations in flight; returns GB/s and ops/s. */
static double op_bandwidth(xm_ctx_h ctx, xm_region_h r, xm_opcode_t opc, size_t size, size_t depth,
                           uint64_t total, uint8_t *bufs, double *ops_s, int *err)
{
    xm_op_t *ops = calloc(depth, sizeof(*ops));
    uint64_t region = xm_region_size(r);
    uint64_t count = total / size, posted = 0, done = 0;
    if (count < depth) count = depth;
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < depth; i++) ops[i].status = XM_OK;
    while (done < count) {
        for (size_t i = 0; i < depth; i++) {
            if (ops[i].status == XM_IN_PROGRESS) continue;
            if (ops[i].status != XM_OK) {
                fprintf(stderr, "xmem: bench: %s: %s\n", xm_status_str(ops[i].status), xm_last_error(ctx));
                *err = 1;
                goto out;
            }
            if (ops[i].opcode != 0) { done++; ops[i].opcode = 0; }
            if (posted < count) {
                uint64_t off = (posted * size) % (region - size + 1) & ~7ull;
                ops[i] = (xm_op_t){.opcode = opc, .region = r, .offset = off,
                                   .buf = bufs + i * size, .length = size, .operand = 1};
                if (xm_post(ctx, &ops[i]) != XM_OK) continue;
                posted++;
            }
        }
        xm_progress(ctx);
    }
out:;
    double secs = (double)(now_ns() - t0) / 1e9;
    free(ops);
    *ops_s = (double)count / secs;
    return (double)count * (double)size / secs / 1e9;
}

static int parse_sizes(const char *text, size_t *sizes, int max)
{
    int n = 0;
    char *copy = strdup(text), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL && n < max; tok = strtok_r(NULL, ",", &save)) {
        uint64_t v;
        if (xm_parse_size(tok, &v) != XM_OK || v == 0 || v > (64u << 20)) {
            free(copy);
            return -1;
        }
        sizes[n++] = (size_t)v;
    }
    free(copy);
    return n;
}

int cmd_bench(cli_t *cli)
{
    const char *sizes_text = cli_take(cli, "--sizes");
    const char *iters_text = cli_take(cli, "--iters");
    const char *depth_text = cli_take(cli, "--depth");
    if (cli_no_more(cli, 0) != 0) return 2;
    size_t sizes[16];
    int nsizes = parse_sizes(sizes_text != NULL ? sizes_text : "8,4K,64K,1M", sizes, 16);
    size_t iters = iters_text != NULL ? strtoul(iters_text, NULL, 10) : 2000;
    size_t depth = depth_text != NULL ? strtoul(depth_text, NULL, 10) : 16;
    if (nsizes <= 0 || iters < 10 || depth == 0 || depth > 256) {
        fprintf(stderr, "usage: xmem bench [--sizes 8,4K,64K,1M] [--iters N>=10] [--depth 1..256]\n");
        return 2;
    }
    size_t max = 8;
    for (int i = 0; i < nsizes; i++) if (sizes[i] > max) max = sizes[i];
    xm_ctx_h ctx;
    if (cli_connect(cli, &ctx) != 0) return 1;
    xm_appliance_info_t ai;
    xm_appliance_stat(ctx, &ai);
    uint64_t rsize = (uint64_t)max * depth < (64u << 20) ? (64u << 20) : (uint64_t)max * depth;
    xm_region_h r;
    xm_status_t s = xm_region_create(ctx, rsize, NULL, &r);
    if (s != XM_OK) {
        cli_fail("bench", "cannot create a %llu-byte region: %s: %s", (unsigned long long)rsize,
                 xm_status_str(s), xm_last_error(ctx));
        xm_disconnect(ctx);
        return 1;
    }
    uint8_t *bufs = calloc(depth, max);
    memset(bufs, 0x5a, depth * max);
    /* touch the region once so reads measure transfer, not first-touch faults */
    uint8_t *fill = calloc(1, 1u << 20);
    for (uint64_t off = 0; off < rsize; off += 1u << 20) {
        xm_write(r, off, fill, (size_t)(rsize - off < (1u << 20) ? rsize - off : (1u << 20)));
    }
    free(fill);
    tcp_ref_t ref;
    int tfd;
    if (tcp_ref_start(&ref, &tfd) != 0) {
        cli_fail("bench", "cannot start the raw TCP reference: %s", strerror(errno));
        return 1;
    }
    int err = 0;
    if (!cli->json) {
        printf("xmem bench: provider %s, %zu iterations (latency), %zu in flight (bandwidth)\n",
               ai.provider, iters, depth);
        printf("%-10s %8s %10s %10s %10s %10s %10s %10s\n", "op", "size", "p50 us", "p99 us",
               "GB/s", "Mop/s", "tcp p50", "p50/tcp");
    } else {
        printf("{\"provider\":\"%s\",\"rows\":[", ai.provider);
    }
    bool first = true;
    double tcp_gbs = 0;
    struct { const char *name; xm_opcode_t opc; } kinds[] = {
        {"read", XM_OP_READ}, {"write", XM_OP_WRITE}, {"fetch_add", XM_OP_FETCH_ADD},
        {"cswap", XM_OP_COMPARE_SWAP}};
    for (int si = 0; si < nsizes && !err; si++) {
        size_t size = sizes[si];
        size_t it = iters;
        if ((uint64_t)size * it > (512ull << 20)) it = (size_t)((512ull << 20) / size);
        if (it < 20) it = 20;
        lat_t tl = tcp_rtt(tfd, size, it, bufs);
        for (size_t k = 0; k < 4 && !err; k++) {
            if (kinds[k].opc >= XM_OP_FETCH_ADD && size != 8) continue;
            lat_t l = op_latency(ctx, r, kinds[k].opc, size, it, bufs, &err);
            double ops_s = 0;
            uint64_t total = (uint64_t)size * it * 4;
            if (total < (64u << 20) && size >= 4096) total = 64u << 20;
            double gbs = err ? 0 : op_bandwidth(ctx, r, kinds[k].opc, size, depth, total, bufs, &ops_s, &err);
            if (cli->json) {
                printf("%s{\"op\":\"%s\",\"size\":%zu,\"p50_us\":%.2f,\"p99_us\":%.2f,\"gb_s\":%.3f,"
                       "\"mops\":%.4f,\"tcp_p50_us\":%.2f,\"ratio\":%.2f}", first ? "" : ",",
                       kinds[k].name, size, l.p50, l.p99, gbs, ops_s / 1e6, tl.p50, l.p50 / tl.p50);
                first = false;
            } else {
                char sz[32];
                printf("%-10s %8s %10.1f %10.1f %10.3f %10.3f %10.1f %9.2fx\n", kinds[k].name,
                       cli_size(size, sz, sizeof(sz)), l.p50, l.p99, gbs, ops_s / 1e6, tl.p50,
                       l.p50 / tl.p50);
            }
        }
    }
    if (!err) {
        tcp_gbs = tcp_ref_stream(tfd, bufs, max < 65536 ? 65536 : max, 2ull << 30);
    }
    tcp_ref_stop(&ref, tfd);
    if (cli->json) {
        printf("],\"tcp_stream_gb_s\":%.3f}\n", tcp_gbs);
    } else {
        printf("raw TCP stream (loopback, %zu-byte writes): %.3f GB/s; "
               "ratios above are xmem p50 / raw TCP round trip (8-byte request, size-byte reply, busy-poll)\n",
               max < 65536 ? (size_t)65536 : max, tcp_gbs);
    }
    free(bufs);
    uint64_t id = xm_region_id(r);
    xm_region_close(r);
    xm_region_destroy(ctx, id, NULL);
    xm_disconnect(ctx);
    return err;
}
