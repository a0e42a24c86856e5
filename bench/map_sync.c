/* map_sync: how fast xm_sync writes back scattered dirty pages of a mapping,
 * against the 1 MiB write bandwidth of the same appliance in the same run.
 *
 * A region of --size bytes is mapped with a cache that holds all of it, filled
 * and synced (the sequential write-back rate), then for each rep random 8-byte
 * stores dirty --pages distinct pages and xm_sync is timed. The reference is
 * 1 MiB xm_write calls: one at a time, and --depth of them in flight through
 * xm_post/xm_wait. Scattered pages are 4 KiB writes (adjacent dirty pages are
 * coalesced), so the ratio shows what the per-write cost leaves of the
 * transport's bandwidth. The dirtied pages are read back through a second
 * handle and compared: a lost write fails the run.
 *
 *   map_sync [--size 512M] [--pages 32768] [--reps 3] [--depth 8]
 *            (XMEM_APPLIANCE, XMEM_SECRET_FILE, XMEM_PROVIDER as for xm_connect)
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <xmem/xmem.h>

#include "bench_util.h"

#define MIB (1ull << 20)
#define PAGE 4096ull

/* sized option and statistics structs (the ABI work) where the header has them */
#ifdef XM_MAP_OPTS_INIT
#define MAP_OPTS_INIT XM_MAP_OPTS_INIT
#else
#define MAP_OPTS_INIT {0}
#endif
#ifdef XM_MAP_STATS_INIT
#define MAP_STATS_INIT XM_MAP_STATS_INIT
#else
#define MAP_STATS_INIT {0}
#endif

static uint64_t parse_size(const char *s)
{
    char *end;
    uint64_t v = strtoull(s, &end, 10);
    switch (*end) {
    case 'G': case 'g': return v << 30;
    case 'M': case 'm': return v << 20;
    case 'K': case 'k': return v << 10;
    default: return v;
    }
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static double mbps(uint64_t bytes, uint64_t ns)
{
    return ns == 0 ? 0 : (double)bytes / 1e6 / ((double)ns / 1e9);
}

/* Writes of `unit` bytes from buf over [0, total) of r: depth 1 is xm_write one at a
 * time, else depth of them in flight (each from its own part of buf). MB/s. */
static double write_bw(xm_ctx_h ctx, xm_region_h r, uint8_t *buf, uint64_t total, uint32_t depth, uint64_t unit)
{
    static xm_op_t ops[128];
    uint64_t t0 = bench_now_ns();
    if (depth <= 1) {
        for (uint64_t off = 0; off < total; off += unit) {
            if (xm_write(r, off, buf, unit) != XM_OK) return -1;
        }
        return mbps(total, bench_now_ns() - t0);
    }
    uint64_t next = 0, done = 0;
    uint32_t head = 0, count = 0;
    while (done < total) {
        while (count < depth && next < total) {
            xm_op_t *op = &ops[(head + count) % depth];
            memset(op, 0, sizeof(*op));
            op->opcode = XM_OP_WRITE;
            op->region = r;
            op->offset = next;
            op->buf = buf + (size_t)((head + count) % depth) * unit;
            op->length = unit;
            if (xm_post(ctx, op) != XM_OK) return -1;
            count++;
            next += unit;
        }
        xm_op_t *op = &ops[head];
        if (xm_wait(ctx, &op, 1) != XM_OK) return -1;
        head = (head + 1) % depth;
        count--;
        done += unit;
    }
    return mbps(total, bench_now_ns() - t0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    uint64_t size = 512 * MIB, pages = 32768;
    int reps = 3;
    uint32_t depth = 8;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v != NULL && strcmp(a, "--size") == 0) size = parse_size(v), i++;
        else if (v != NULL && strcmp(a, "--pages") == 0) pages = strtoull(v, NULL, 10), i++;
        else if (v != NULL && strcmp(a, "--reps") == 0) reps = atoi(v), i++;
        else if (v != NULL && strcmp(a, "--depth") == 0) depth = (uint32_t)atoi(v), i++;
        else {
            fprintf(stderr, "usage: map_sync [--size 512M] [--pages 32768] [--reps 3] [--depth 8]\n");
            return 2;
        }
    }
    size = (size + MIB - 1) / MIB * MIB;
    uint64_t npages = size / PAGE;
    if (reps < 1 || depth < 1 || depth > 64 || pages == 0 || pages > npages / 2) {
        fprintf(stderr, "map_sync: need reps >= 1, depth 1..64, 0 < pages <= half the mapping's pages\n");
        return 2;
    }
    xm_ctx_h ctx;
    if (xm_connect(NULL, &ctx) != XM_OK) {
        fprintf(stderr, "map_sync: connect: %s (set XMEM_APPLIANCE, XMEM_SECRET_FILE)\n", xm_last_error(ctx));
        return 1;
    }
    xm_region_h r, check, ref;
    if (xm_region_create(ctx, size, NULL, &r) != XM_OK || xm_region_create(ctx, 64 * MIB, NULL, &ref) != XM_OK) {
        fprintf(stderr, "map_sync: region of %llu bytes: %s\n", (unsigned long long)size, xm_last_error(ctx));
        return 1;
    }
    if (xm_region_open(ctx, xm_region_id(r), NULL, XM_ACCESS_READ_WRITE, &check) != XM_OK) {
        fprintf(stderr, "map_sync: second handle: %s\n", xm_last_error(ctx));
        return 1;
    }
    uint8_t *wbuf = aligned_alloc(PAGE, 64 * MIB);
    uint8_t *page = aligned_alloc(PAGE, PAGE);
    uint8_t *dirty = calloc(npages, 1);
    double *tsync = calloc((size_t)reps, sizeof(double)), *tbw1 = calloc((size_t)reps, sizeof(double)),
           *tbwd = calloc((size_t)reps, sizeof(double)), *tbw4 = calloc((size_t)reps, sizeof(double));
    if (wbuf == NULL || page == NULL || dirty == NULL || tsync == NULL || tbw1 == NULL || tbwd == NULL ||
        tbw4 == NULL) {
        return 1;
    }
    memset(wbuf, 0x5a, 64 * MIB);

    uint8_t *p;
    xm_map_opts_t mo = MAP_OPTS_INIT;
    mo.cache_bytes = size + 64 * MIB;
    xm_status_t s = xm_map(ctx, r, 0, size, &mo, (void **)&p);
    if (s != XM_OK) {
        fprintf(stderr, "map_sync: xm_map: %s\n", xm_last_error(ctx));
        return 1;
    }
    uint64_t t0 = bench_now_ns();
    for (uint64_t off = 0; off < size; off += PAGE) p[off] = 1; /* every page in, and written */
    uint64_t fill_ns = bench_now_ns() - t0;
    t0 = bench_now_ns();
    s = xm_sync(p, size);
    uint64_t seq_ns = bench_now_ns() - t0;
    if (s != XM_OK) {
        fprintf(stderr, "map_sync: first xm_sync: %s\n", xm_status_str(s));
        return 1;
    }
    xm_map_stats_t st0 = MAP_STATS_INIT;
    xm_map_stat(p, &st0);
    printf("map_sync: provider %s, mapping %llu MiB (all resident), %llu scattered pages per rep, %d reps\n",
           getenv("XMEM_PROVIDER") ? getenv("XMEM_PROVIDER") : "(appliance's)", (unsigned long long)(size / MIB),
           (unsigned long long)pages, reps);
    printf("  fill (fault every page in, store): %.0f ms; sequential xm_sync of all of it: %.0f ms (%.0f MB/s)\n",
           (double)fill_ns / 1e6, (double)seq_ns / 1e6, mbps(size, seq_ns));
    printf("(1MiB: 1 MiB xm_write one at a time; 1MiB xD: %u in flight; 4K x128: 4 KiB writes, 128 in flight; "
           "ratio: sync MB/s / 1MiB, ratio xD: / 1MiB xD)\n", depth);
    printf("%-4s %8s %8s %10s %10s %10s %10s %10s %8s %9s\n", "rep", "pages", "runs", "sync ms", "sync MB/s",
           "1MiB", "1MiB xD", "4K x128", "ratio", "ratio xD");
    int bad = 0;
    for (int rep = 0; rep < reps; rep++) {
        /* reference: 64 MiB in 1 MiB writes to a region of its own, same run, same appliance */
        tbw1[rep] = write_bw(ctx, ref, wbuf, 64 * MIB, 1, MIB);
        tbwd[rep] = write_bw(ctx, ref, wbuf, 64 * MIB, depth, MIB);
        tbw4[rep] = write_bw(ctx, ref, wbuf, 32 * MIB, 128, PAGE);
        if (tbw1[rep] < 0 || tbwd[rep] < 0 || tbw4[rep] < 0) {
            fprintf(stderr, "map_sync: reference write failed: %s\n", xm_last_error(ctx));
            return 1;
        }
        memset(dirty, 0, npages);
        uint64_t got = 0;
        while (got < pages) {
            uint64_t pg = rng() % npages;
            if (dirty[pg]) continue;
            dirty[pg] = 1;
            got++;
        }
        uint64_t runs = 0;
        for (uint64_t i = 0; i < npages; i++) runs += dirty[i] && (i == 0 || !dirty[i - 1]);
        for (uint64_t i = 0; i < npages; i++) {
            if (!dirty[i]) continue;
            uint64_t v = rng();
            memcpy(p + i * PAGE + (v % (PAGE / 8)) * 8, &v, 8);
        }
        t0 = bench_now_ns();
        s = xm_sync(p, size);
        uint64_t ns = bench_now_ns() - t0;
        if (s != XM_OK) {
            fprintf(stderr, "map_sync: xm_sync: %s\n", xm_status_str(s));
            return 1;
        }
        tsync[rep] = mbps(pages * PAGE, ns);
        /* every dirtied page reached the appliance */
        for (uint64_t i = 0; i < npages; i++) {
            if (!dirty[i]) continue;
            if (xm_read(check, i * PAGE, page, PAGE) != XM_OK || memcmp(page, p + i * PAGE, PAGE) != 0) {
                if (bad++ < 5) fprintf(stderr, "map_sync: page %llu differs on the appliance after xm_sync\n",
                                       (unsigned long long)i);
            }
        }
        printf("%-4d %8llu %8llu %10.1f %10.0f %10.0f %10.0f %10.0f %7.0f%% %8.0f%%\n", rep,
               (unsigned long long)pages, (unsigned long long)runs, (double)ns / 1e6, tsync[rep], tbw1[rep],
               tbwd[rep], tbw4[rep], 100.0 * tsync[rep] / tbw1[rep], 100.0 * tsync[rep] / tbwd[rep]);
        fflush(stdout);
    }
    qsort(tsync, (size_t)reps, sizeof(double), cmp_double);
    qsort(tbw1, (size_t)reps, sizeof(double), cmp_double);
    qsort(tbwd, (size_t)reps, sizeof(double), cmp_double);
    qsort(tbw4, (size_t)reps, sizeof(double), cmp_double);
    double m = tsync[reps / 2], b1 = tbw1[reps / 2], bd = tbwd[reps / 2], b4 = tbw4[reps / 2];
    printf("median: scattered sync %.0f MB/s; 1 MiB writes %.0f MB/s one at a time (%.0f%%), %.0f MB/s %u in flight "
           "(%.0f%%); 4 KiB writes 128 in flight %.0f MB/s (%.0f%%)\n", m, b1, 100.0 * m / b1, bd, depth,
           100.0 * m / bd, b4, 100.0 * m / b4);
    xm_map_stats_t st = MAP_STATS_INIT;
    xm_map_stat(p, &st);
    printf("write-back pages %llu (errors %llu)\n", (unsigned long long)(st.writeback_pages - st0.writeback_pages),
           (unsigned long long)st.writeback_errors);
    if (xm_unmap(p) != XM_OK) fprintf(stderr, "map_sync: xm_unmap failed\n");
    uint64_t rid = xm_region_id(r), refid = xm_region_id(ref);
    xm_region_close(check);
    xm_region_close(r);
    xm_region_close(ref);
    xm_region_destroy(ctx, rid, NULL);
    xm_region_destroy(ctx, refid, NULL);
    xm_disconnect(ctx);
    if (bad > 0) {
        fprintf(stderr, "map_sync: %d dirtied pages were not on the appliance after xm_sync\n", bad);
        return 1;
    }
    return 0;
}
