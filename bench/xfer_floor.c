/* xfer_floor: what the transport itself (src/xfer, libfabric tcp;ofi_rxm) costs, with no
 * xmem client or appliance around it, against raw TCP on loopback in the same run.
 *
 * One process: a target thread opens a tcp endpoint on 127.0.0.1, registers a 64 MiB buffer
 * and runs the appliance's progress loop (net_progress_run, --spin-us as xmemd's); the main
 * thread is the initiator and busy-polls its completion queue, as libxmem does. For each size:
 * p50/p99 of one read and one delivery-complete write at a time, then GB/s with --depth in
 * flight; the reference is a raw TCP round trip (8-byte request, size-byte reply, server
 * thread busy-polling) and a raw TCP stream of 1 MiB writes, as `xmem bench` measures them.
 * The ratio xmem / xfer_floor is what xmem adds above the transport; xfer_floor / raw TCP is
 * the transport's own cost.
 *
 *   xfer_floor [--sizes 4K,1M] [--iters 5000] [--depth 16] [--spin-us 2000]
 *              [--idle-pauses N --pause-ms MS]   first read after each idle pause
 *
 * Provider knobs come from the environment (FI_TCP_*, FI_OFI_RXM_*), read by libfabric once.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../src/common/common.h"
#include "../src/xfer/xfer.h"
#include "bench_util.h"
#include "tcp_ref.h"

#define REGION (64u << 20)

/* ---- the transport -------------------------------------------------------------------- */

typedef struct target {
    net_fabric_t fab;
    net_progress_opts_t opts;
    atomic_int stop;
    int stop_fd;
    uint8_t *mem;
    struct fid_mr *mr;
    uint64_t key;
} target_t;

static void *target_main(void *arg)
{
    target_t *t = arg;
    net_progress_run(&t->fab, &t->opts, &t->stop, t->stop_fd);
    return NULL;
}

typedef struct init {
    net_fabric_t fab;
    fi_addr_t peer;
    uint64_t key;
} init_t;

/* One op, busy-polling for its completion; 0 on success. */
static int op_sync(init_t *in, bool write, uint8_t *buf, size_t len, uint64_t off)
{
    xm_status_t s;
    do {
        s = write ? net_post_write(&in->fab, in->peer, buf, len, off, in->key, buf)
                  : net_post_read(&in->fab, in->peer, buf, len, off, in->key, buf);
        if (s == XM_ERR_AGAIN) {
            net_completion_t c; /* nothing else in flight: this only drives progress */
            net_poll(&in->fab, &c, 1);
        }
    } while (s == XM_ERR_AGAIN);
    if (s != XM_OK) return -1;
    for (;;) {
        net_completion_t c;
        int n = net_poll(&in->fab, &c, 1);
        if (n == 1) return c.status == XM_OK ? 0 : -1;
        if (n < 0) return -1;
    }
}

static double op_bw(init_t *in, bool write, uint8_t *bufs, size_t size, size_t depth, uint64_t total)
{
    uint64_t count = total / size, posted = 0, done = 0;
    if (count < depth) count = depth;
    size_t inflight = 0;
    uint64_t t0 = bench_now_ns();
    while (done < count) {
        while (posted < count && inflight < depth) {
            uint8_t *b = bufs + (posted % depth) * size;
            uint64_t off = (posted * size) % (REGION - size + 1);
            xm_status_t s = write ? net_post_write(&in->fab, in->peer, b, size, off, in->key, b)
                                  : net_post_read(&in->fab, in->peer, b, size, off, in->key, b);
            if (s == XM_ERR_AGAIN) break;
            if (s != XM_OK) return 0;
            posted++;
            inflight++;
        }
        net_completion_t c[16];
        int n = net_poll(&in->fab, c, 16);
        for (int i = 0; i < n; i++) {
            if (c[i].status != XM_OK) return 0;
        }
        if (n > 0) {
            done += (uint64_t)n;
            inflight -= (size_t)n;
        }
    }
    return (double)count * (double)size / (double)(bench_now_ns() - t0);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int main(int argc, char **argv)
{
    const char *sizes_text = "4K,1M";
    unsigned iters = 5000, depth = 16, spin_us = 2000, pauses = 0, pause_ms = 1000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--sizes") == 0) sizes_text = argv[i + 1];
        else if (strcmp(argv[i], "--iters") == 0) iters = (unsigned)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--depth") == 0) depth = (unsigned)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--spin-us") == 0) spin_us = (unsigned)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--idle-pauses") == 0) pauses = (unsigned)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--pause-ms") == 0) pause_ms = (unsigned)atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: xfer_floor [--sizes 4K,1M] [--iters N] [--depth N] [--spin-us US] "
                            "[--idle-pauses N] [--pause-ms MS]\n");
            return 2;
        }
    }
    if (iters < 20 || depth == 0 || depth > 256) return 2;
    xm__log_set_level(XM_LOG_WARN);

    static target_t t;
    t.opts.spin_us = spin_us;
    t.stop_fd = eventfd(0, EFD_CLOEXEC);
    t.mem = aligned_alloc(4096, REGION);
    memset(t.mem, 1, REGION);
    if (net_fabric_open("tcp", NET_ROLE_TARGET, "127.0.0.1", "0", &t.fab) != XM_OK ||
        net_mr_reg(&t.fab, t.mem, REGION, XM_ACCESS_READ_WRITE, &t.mr, &t.key) != XM_OK) {
        fprintf(stderr, "xfer_floor: cannot open the target\n");
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, target_main, &t);
    static init_t in;
    in.key = t.key;
    if (net_fabric_open("tcp", NET_ROLE_INITIATOR, NULL, NULL, &in.fab) != XM_OK ||
        net_peer_insert(&in.fab, t.fab.addr, t.fab.addr_len, NULL, &in.peer) != XM_OK) {
        fprintf(stderr, "xfer_floor: cannot open the initiator\n");
        return 1;
    }
    tcp_ref_t ref;
    int tfd = -1;
    if (tcp_ref_start(&ref, &tfd) != 0) return 1;

    size_t max = 8;
    size_t sizes[16];
    int nsizes = 0;
    char *copy = strdup(sizes_text), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL && nsizes < 16; tok = strtok_r(NULL, ",", &save)) {
        uint64_t v;
        if (xm__parse_size(tok, &v) != XM_OK || v == 0 || v > (4u << 20)) return 2;
        sizes[nsizes++] = (size_t)v;
        if (v > max) max = (size_t)v;
    }
    free(copy);
    uint8_t *bufs = calloc(depth, max > (1u << 20) ? max : (1u << 20)); /* the stream sends 1 MiB */
    uint64_t *ns = calloc(iters, sizeof(*ns));
    for (unsigned i = 0; i < 100; i++) op_sync(&in, false, bufs, 64, 0); /* connect, warm up */

    printf("xfer_floor: tcp;ofi_rxm through src/xfer, target spin %u us, %u iterations, %u in flight\n",
           spin_us, iters, depth);
    printf("%-6s %8s %9s %9s %9s %9s %9s\n", "op", "size", "p50 us", "p99 us", "GB/s", "tcp p50",
           "p50/tcp");
    double big[2] = {0, 0};
    for (int si = 0; si < nsizes; si++) {
        size_t size = sizes[si];
        size_t it = iters;
        if ((uint64_t)size * it > (256ull << 20)) it = (size_t)((256ull << 20) / size);
        if (it < 20) it = 20;
        tcp_ref_rtt(tfd, size, it, bufs, ns);
        double tcp50 = (double)bench_quantile(ns, it, 0.5, 0) / 1e3;
        for (int w = 0; w < 2; w++) {
            size_t warm = it / 10;
            for (size_t i = 0; i < it + warm; i++) {
                uint64_t t0 = bench_now_ns();
                if (op_sync(&in, w, bufs, size, (i * size) % (REGION - size + 1)) != 0) {
                    fprintf(stderr, "xfer_floor: %s failed\n", w ? "write" : "read");
                    return 1;
                }
                if (i >= warm) ns[i - warm] = bench_now_ns() - t0;
            }
            double p50 = (double)bench_quantile(ns, it, 0.5, 0) / 1e3;
            double p99 = (double)bench_quantile(ns, it, 0.99, 1) / 1e3;
            uint64_t total = (uint64_t)size * it * 4;
            if (total < (256u << 20) && size >= 65536) total = 256u << 20;
            double gbs = op_bw(&in, w, bufs, size, depth, total);
            char sz[32];
            printf("%-6s %8s %9.1f %9.1f %9.3f %9.1f %8.2fx", w ? "write" : "read",
                   xm__format_size(size, sz, sizeof(sz)), p50, p99, gbs, tcp50, p50 / tcp50);
            if (size == (1u << 20)) big[w] = gbs;
            printf("\n");
            fflush(stdout);
        }
    }
    if (pauses > 0) {
        for (unsigned i = 0; i < 2000; i++) op_sync(&in, false, bufs, 4096, 0);
        uint64_t busy[2000];
        for (unsigned i = 0; i < 2000; i++) {
            uint64_t t0 = bench_now_ns();
            op_sync(&in, false, bufs, 4096, (i % 256) * 4096ull);
            busy[i] = bench_now_ns() - t0;
        }
        uint64_t *first = calloc(pauses, sizeof(*first));
        for (unsigned i = 0; i < pauses; i++) {
            sleep_ms(pause_ms);
            uint64_t t0 = bench_now_ns();
            op_sync(&in, false, bufs, 4096, (i % 256) * 4096ull);
            first[i] = bench_now_ns() - t0;
        }
        double b50 = (double)bench_quantile(busy, 2000, 0.5, 0) / 1e3;
        double f50 = (double)bench_quantile(first, pauses, 0.5, 0) / 1e3;
        printf("first 4 KiB read after %u ms idle (%u times): p50 %.1f us, max %.1f us; busy p50 %.1f us; "
               "ratio %.2fx\n", pause_ms, pauses, f50, (double)first[pauses - 1] / 1e3, b50, f50 / b50);
        free(first);
    }
    double stream = tcp_ref_stream(tfd, bufs, 1u << 20, 2ull << 30);
    printf("raw TCP stream (loopback, 1 MiB writes): %.3f GB/s", stream);
    if (big[0] > 0) printf("; 1 MiB read %.0f %%, write %.0f %% of it", 100 * big[0] / stream, 100 * big[1] / stream);
    printf("\n");
    tcp_ref_stop(&ref, tfd);
    atomic_store(&t.stop, 1);
    uint64_t one = 1;
    if (write(t.stop_fd, &one, sizeof(one)) < 0) {}
    pthread_join(th, NULL);
    net_fabric_close(&in.fab);
    net_mr_close(t.mr);
    net_fabric_close(&t.fab);
    free(bufs);
    free(ns);
    return 0;
}
