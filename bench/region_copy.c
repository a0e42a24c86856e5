/* region_copy: appliance-to-appliance copy (xm_region_copy) of a fully populated region
 * against raw TCP on loopback in the same run, for each write chunk size asked for. The
 * first two appliances up that the manager in $XMEM_MANAGER lists are the source and the
 * target (`xmem up --appliances 2`).
 *
 *   region_copy [--size MIB] [--chunks 1M,2M,4M] [--rounds N]
 *
 * Each round copies into a fresh target region (its pages are touched for the first time,
 * as in a real copy) against a raw TCP stream received into a fresh memfd mapping of the
 * same size, then copies again into the same target (pages there: the transport alone)
 * against the raw stream of tcp_ref.h (1 MiB writes into one 1 MiB buffer); the target is
 * destroyed after the round. The source is written once. Best and median of the rounds in
 * GB/s and each against the raw figure measured just before it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define XMIN(a, b) ((a) < (b) ? (a) : (b))

#include <xmem/xmem.h>

#include "bench_util.h"
#include "tcp_ref.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double raw_stream(uint64_t total)
{
    static uint8_t buf[1u << 20];
    tcp_ref_t t;
    int fd;
    if (tcp_ref_start(&t, &fd) != 0) return 0;
    double gbs = tcp_ref_stream(fd, buf, sizeof(buf), total);
    tcp_ref_stop(&t, fd);
    return gbs;
}

/* The raw stream into fresh memory: the receiver reads into a new memfd mapping of total
 * bytes (MAP_SHARED, as an appliance's pool), so it pays the first touch of every page as
 * the target of a copy into a fresh region does. */
typedef struct fresh_rx {
    int fd;
    uint64_t total;
} fresh_rx_t;

static void *fresh_rx_main(void *arg)
{
    fresh_rx_t *f = arg;
    int mfd = memfd_create("region_copy_ref", MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, (off_t)f->total) != 0) return NULL;
    uint8_t *dst = mmap(NULL, f->total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, mfd, 0);
    if (dst == MAP_FAILED) return NULL;
    uint64_t got = 0;
    while (got < f->total) {
        ssize_t n = recv(f->fd, dst + got, (size_t)XMIN(f->total - got, 1u << 20), 0);
        if (n <= 0) break;
        got += (uint64_t)n;
    }
    munmap(dst, f->total);
    close(mfd);
    return NULL;
}

static double raw_stream_fresh(uint64_t total)
{
    static uint8_t buf[1u << 20];
    int sv[2];
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(l, 1) != 0 ||
        getsockname(l, (struct sockaddr *)&sa, &sl) != 0)
        return 0;
    sv[0] = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(sv[0], (struct sockaddr *)&sa, sizeof(sa)) != 0) return 0;
    sv[1] = accept(l, NULL, NULL);
    close(l);
    fresh_rx_t f = {.fd = sv[1], .total = total};
    pthread_t th;
    pthread_create(&th, NULL, fresh_rx_main, &f);
    uint64_t t0 = tcp_ref_now_ns();
    for (uint64_t done = 0; done < total; done += sizeof(buf)) {
        if (send(sv[0], buf, sizeof(buf), MSG_NOSIGNAL) != (ssize_t)sizeof(buf)) break;
    }
    pthread_join(th, NULL); /* all received */
    double gbs = (double)total / (double)(tcp_ref_now_ns() - t0);
    close(sv[0]);
    close(sv[1]);
    return gbs;
}

static xm_ctx_h connect_to(const char *addr)
{
    xm_connect_opts_t o = XM_CONNECT_OPTS_INIT;
    o.appliance = addr;
    xm_ctx_h ctx;
    if (xm_connect(&o, &ctx) != XM_OK) {
        fprintf(stderr, "region_copy: connect %s: %s\n", addr, xm_last_error(NULL));
        exit(1);
    }
    return ctx;
}

int main(int argc, char **argv)
{
    uint64_t mib = 1024;
    const char *chunks = "1M,2M,4M";
    int rounds = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--size") == 0) mib = strtoull(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--chunks") == 0) chunks = argv[i + 1];
        else if (strcmp(argv[i], "--rounds") == 0) rounds = atoi(argv[i + 1]);
    }
    if (rounds < 1 || rounds > 50 || mib == 0) return 2;
    const uint64_t size = mib << 20;
    xm_connect_opts_t mo = XM_CONNECT_OPTS_INIT;
    xm_ctx_h mgr;
    if (getenv("XMEM_MANAGER") == NULL || xm_connect(&mo, &mgr) != XM_OK) {
        fprintf(stderr, "region_copy: needs $XMEM_MANAGER (eval $(xmem up --appliances 2)): %s\n",
                xm_last_error(NULL));
        return 1;
    }
    xm_appliance_entry_t *apps;
    size_t napps;
    size_t up[2], nup = 0;
    if (xm_appliance_list(mgr, &apps, &napps) == XM_OK) {
        for (size_t i = 0; i < napps && nup < 2; i++) {
            if (strcmp(apps[i].state, "up") == 0) up[nup++] = i;
        }
    }
    if (nup < 2) {
        fprintf(stderr, "region_copy: needs two appliances up\n");
        return 1;
    }
    xm_ctx_h a = connect_to(apps[up[0]].addr), b = connect_to(apps[up[1]].addr);
    printf("# source %s, target %s, %llu MiB fully populated, %d rounds\n", apps[up[0]].addr,
           apps[up[1]].addr, (unsigned long long)mib, rounds);
    free(apps);
    xm_disconnect(mgr);

    xm_region_h src;
    if (xm_region_create(a, size, NULL, &src) != XM_OK) {
        fprintf(stderr, "region_copy: source region: %s\n", xm_last_error(a));
        return 1;
    }
    static uint8_t buf[4u << 20];
    uint64_t f0 = bench_now_ns();
    for (uint64_t off = 0; off < size; off += sizeof(buf)) {
        for (size_t i = 0; i < sizeof(buf); i += 8) *(uint64_t *)(buf + i) = off + i + 1;
        if (xm_write(src, off, buf, sizeof(buf)) != XM_OK) {
            fprintf(stderr, "region_copy: fill: %s\n", xm_last_error(a));
            return 1;
        }
    }
    /* what a client writing the same bytes itself moves (4 MiB xm_write, one at a time) */
    printf("# client fill of the source: %.2f GB/s (4 MiB xm_write, one at a time, first touch)\n",
           (double)size / (double)(bench_now_ns() - f0));
    printf("# fresh: a new target region (first touch of its pages), raw = TCP stream into a fresh\n"
           "# memfd mapping; warm: the same target again, raw = TCP stream into one 1 MiB buffer\n");
    printf("%-8s %-7s %12s %12s %12s %10s %10s\n", "chunk", "target", "copy GB/s", "(median)",
           "raw TCP GB/s", "best/raw", "med/raw");
    char list[256];
    snprintf(list, sizeof(list), "%s", chunks);
    for (char *save = NULL, *c = strtok_r(list, ",", &save); c != NULL; c = strtok_r(NULL, ",", &save)) {
        uint64_t chunk;
        if (xm_parse_size(c, &chunk) != XM_OK) return 2;
        double g[50], ratio[50], gw[50], ratiow[50];
        for (int r = 0; r < rounds; r++) {
            double raw = raw_stream_fresh(size);
            xm_region_h dst;
            if (xm_region_create(b, size, NULL, &dst) != XM_OK) {
                fprintf(stderr, "region_copy: target region: %s\n", xm_last_error(b));
                return 1;
            }
            xm_copy_opts_t o = XM_COPY_OPTS_INIT;
            o.chunk = chunk;
            o.poll_ms = 5;
            uint64_t t0 = bench_now_ns();
            xm_status_t s = xm_region_copy(src, dst, &o, NULL);
            uint64_t ns = bench_now_ns() - t0;
            if (s != XM_OK) {
                fprintf(stderr, "region_copy: %s\n", xm_last_error(a));
                return 1;
            }
            /* spot check: the last word */
            uint64_t w = 0;
            xm_read(dst, size - 8, &w, 8);
            if (w != size - 8 + 1) {
                fprintf(stderr, "region_copy: target's last word is %llu\n", (unsigned long long)w);
                return 1;
            }
            /* again into the same target: its pages are there now (the transport alone) */
            double raww = raw_stream(size);
            t0 = bench_now_ns();
            s = xm_region_copy(src, dst, &o, NULL);
            uint64_t nsw = bench_now_ns() - t0;
            if (s != XM_OK) {
                fprintf(stderr, "region_copy: %s\n", xm_last_error(a));
                return 1;
            }
            gw[r] = (double)size / (double)nsw;
            ratiow[r] = raww > 0 ? gw[r] / raww : 0;
            fprintf(stderr, "  chunk %s round %d: warm target: copy %.2f GB/s, raw %.2f GB/s\n", c, r,
                    gw[r], raww);
            uint64_t dst_id = xm_region_id(dst);
            xm_region_close(dst);
            xm_region_destroy(b, dst_id, NULL);
            g[r] = (double)size / (double)ns;
            ratio[r] = raw > 0 ? g[r] / raw : 0;
            fprintf(stderr, "  chunk %s round %d: fresh target: copy %.2f GB/s, raw into fresh pages %.2f GB/s\n",
                    c, r, g[r], raw);
        }
        for (int w = 0; w < 2; w++) {
            double *gg = w ? gw : g, *rr = w ? ratiow : ratio;
            double best = 0, best_ratio = 0;
            for (int r = 0; r < rounds; r++) {
                if (gg[r] > best) best = gg[r], best_ratio = rr[r];
            }
            qsort(gg, (size_t)rounds, sizeof(double), cmp_d);
            qsort(rr, (size_t)rounds, sizeof(double), cmp_d);
            printf("%-8s %-7s %12.2f %12.2f %12.2f %9.0f%% %9.0f%%\n", c, w ? "warm" : "fresh", best,
                   gg[rounds / 2], best / (best_ratio > 0 ? best_ratio : 1), 100 * best_ratio,
                   100 * rr[rounds / 2]);
        }
    }
    xm_region_close(src);
    xm_disconnect(a);
    xm_disconnect(b);
    return 0;
}
