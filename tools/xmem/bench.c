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
    const char *sizes_text = "8,4K,64K,1M", *iters_text = NULL, *depth_text = NULL;
    const cli_opt_t opts[] = {{"sizes", &sizes_text, NULL}, {"iters", &iters_text, NULL},
                              {"depth", &depth_text, NULL}, {NULL}};
    if (cli_parse(cli, opts) != 0) return 2;
    if (cli->argc > 0) {
        fprintf(stderr, "xmem: bench: unexpected argument '%s'; see xmem bench --help\n", cli->argv[0]);
        return 2;
    }
    size_t sizes[16];
    int nsizes = parse_sizes(sizes_text, sizes, 16);
    uint64_t iters = 2000, depth = 16;
    if (nsizes <= 0) {
        fprintf(stderr, "xmem: --sizes: '%s' is not a list of 1 to 16 sizes from 8 to 64M "
                "(e.g. 8,4K,1M); see xmem bench --help\n", sizes_text);
        return 2;
    }
    if ((iters_text != NULL && cli_u64(cli, "--iters", iters_text, 10, 10000000, &iters) != 0) ||
        (depth_text != NULL && cli_u64(cli, "--depth", depth_text, 1, 256, &depth) != 0))
        return 2;
    size_t max = 8;
    for (int i = 0; i < nsizes; i++) if (sizes[i] > max) max = sizes[i];
    xm_ctx_h ctx;
    if (cli_connect(cli, &ctx) != 0) return 1;
    bool mgr = cli_has_manager(cli);
    xm_appliance_info_t ai = {0};
    uint64_t rsize = (uint64_t)max * depth < (64u << 20) ? (64u << 20) : (uint64_t)max * depth;
    xm_region_h r;
    xm_status_t s;
    uint64_t alloc_id = 0;
    if (mgr) {
        /* through a manager: an allocation of one part, made here and freed at the end */
        xm_alloc_info_t in;
        s = xm_alloc_create(ctx, rsize, "single", NULL, &in);
        if (s == XM_OK) {
            alloc_id = in.id;
            s = xm_attach(ctx, in.id, NULL, XM_ACCESS_READ_WRITE, &r);
            if (s != XM_OK) xm_free(ctx, in.id, NULL);
        }
        snprintf(ai.provider, sizeof(ai.provider), "allocation through the manager");
    } else {
        xm_appliance_stat(ctx, &ai);
        s = xm_region_create(ctx, rsize, NULL, &r);
    }
    if (s != XM_OK) {
        char what[96];
        snprintf(what, sizeof(what), "bench: cannot make a %llu-byte %s", (unsigned long long)rsize,
                 mgr ? "allocation" : "region");
        return cli_fail_ctx(ctx, what, s);
    }
    cli_progress_t prog = {0};
    unsigned steps = 0, step = 0;
    for (int si = 0; si < nsizes; si++) steps += sizes[si] == 8 ? 4 : 2;
    /* the raw TCP stream below writes max(max, 64 KiB) at a time from bufs too */
    size_t blen = depth * max < 65536 ? 65536 : depth * max;
    uint8_t *bufs = calloc(1, blen);
    memset(bufs, 0x5a, blen);
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
        /* what bench made is not left behind */
        free(bufs);
        uint64_t rid = xm_region_id(r);
        xm_region_close(r);
        if (mgr) xm_free(ctx, alloc_id, NULL);
        else xm_region_destroy(ctx, rid, NULL);
        xm_disconnect(ctx);
        return 1;
    }
    int err = 0;
    json_t *rows = cli->json ? json_array() : NULL;
    if (!cli->json) {
        printf("xmem bench: provider %s, %llu iterations (latency), %llu in flight (bandwidth)\n",
               ai.provider, (unsigned long long)iters, (unsigned long long)depth);
        printf("%-10s %8s %10s %10s %10s %10s %10s %10s\n", "op", "size", "p50 us", "p99 us",
               "GB/s", "Mop/s", "tcp p50", "p50/tcp");
        fflush(stdout);
    }
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
            char sz[32], stepname[64];
            snprintf(stepname, sizeof(stepname), "%s %s", kinds[k].name, cli_size(size, sz, sizeof(sz)));
            cli_progress_step(&prog, "bench", stepname, step++, steps + 1);
            lat_t l = op_latency(ctx, r, kinds[k].opc, size, it, bufs, &err);
            double ops_s = 0;
            uint64_t total = (uint64_t)size * it * 4;
            if (total < (64u << 20) && size >= 4096) total = 64u << 20;
            double gbs = err ? 0 : op_bandwidth(ctx, r, kinds[k].opc, size, depth, total, bufs, &ops_s, &err);
            if (cli->json) {
                json_array_append_new(rows, json_pack("{s:s, s:I, s:f, s:f, s:f, s:f, s:f, s:f}",
                    "op", kinds[k].name, "size", (json_int_t)size, "p50_us", l.p50, "p99_us", l.p99,
                    "gb_s", gbs, "mops", ops_s / 1e6, "tcp_p50_us", tl.p50,
                    "ratio", tl.p50 > 0 ? l.p50 / tl.p50 : 0.0));
            } else {
                cli_progress_step(&prog, "bench", "", steps + 1, steps + 1); /* clear the line */
                printf("%-10s %8s %10.1f %10.1f %10.3f %10.3f %10.1f %9.2fx\n", kinds[k].name,
                       cli_size(size, sz, sizeof(sz)), l.p50, l.p99, gbs, ops_s / 1e6, tl.p50,
                       l.p50 / tl.p50);
                fflush(stdout);
            }
        }
    }
    if (!err) {
        cli_progress_step(&prog, "bench", "raw TCP stream", steps, steps + 1);
        /* 2 GiB at the default 2000 iterations; a short run (--iters 20) streams less */
        uint64_t stream = iters << 20;
        stream = stream < (64ull << 20) ? 64ull << 20 : stream > (2ull << 30) ? 2ull << 30 : stream;
        tcp_gbs = tcp_ref_stream(tfd, bufs, max < 65536 ? 65536 : max, stream);
    }
    tcp_ref_stop(&ref, tfd);
    cli_progress_end(&prog);
    if (cli->json) {
        cli_json_print(json_pack("{s:s, s:o, s:f}", "provider", ai.provider, "rows", rows,
                                 "tcp_stream_gb_s", tcp_gbs));
    } else {
        printf("raw TCP stream (loopback, %zu-byte writes): %.3f GB/s; "
               "ratios above are xmem p50 / raw TCP round trip (8-byte request, size-byte reply, busy-poll)\n",
               max < 65536 ? (size_t)65536 : max, tcp_gbs);
    }
    free(bufs);
    uint64_t id = xm_region_id(r);
    xm_region_close(r);
    if (mgr) xm_free(ctx, alloc_id, NULL);
    else xm_region_destroy(ctx, id, NULL);
    xm_disconnect(ctx);
    return err;
}
