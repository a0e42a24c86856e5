/* xmem bench map: mapped external memory. Remote fault latency against, in
 * the same run, a userfaultfd fault served from local memory and a 4 KiB
 * xm_read; then workloads (bench/map_workloads.h, shared with the peer
 * benchmarks) over a working set at 100/75/50/25% local cache, as a ratio to
 * the same kernel in plain local memory. */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../../bench/map_workloads.h"
#include "cli.h"

#define BM_MIN(a, b) ((a) < (b) ? (a) : (b))

/* XMEM_BENCH_PERF_CTL=FIFO: "enable"/"disable" written around each timed
 * part, for `perf record --control=fifo:FIFO -D -1` (profile only those). */
static void perf_ctl(const char *cmd)
{
    const char *path = getenv("XMEM_BENCH_PERF_CTL");
    if (path == NULL) return;
    int fd = open(path, O_WRONLY | O_NONBLOCK); /* no reader (perf gone): no hang */
    if (fd < 0) return;
    ssize_t w = write(fd, cmd, strlen(cmd));
    (void)w;
    close(fd);
}

/* Close a region this benchmark created and destroy it. */
static void region_drop(xm_ctx_h ctx, xm_region_h r)
{
    uint64_t id = xm_region_id(r);
    xm_region_close(r);
    xm_region_destroy(ctx, id, NULL);
}

/* CPU seconds this process (every thread: the application's and the fault handlers') has used. */
static double cpu_self(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void pct(double *v, size_t n, double *p50, double *p99)
{
    qsort(v, n, sizeof(double), cmp_d);
    *p50 = v[n / 2];
    *p99 = v[(size_t)((double)n * 0.99)];
}

/* A "Name:   N kB" line of /proc/self/status: N (kB, or a count), -1 when absent. */
static long self_status(const char *name)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) return -1;
    char line[256];
    long v = -1;
    size_t n = strlen(name);
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, name, n) == 0 && line[n] == ':') {
            v = strtol(line + n + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

/* ---- reference: a userfaultfd fault served from local memory ------------- */

typedef struct local_uffd {
    int uffd, stop;
    uint8_t *src;
    uint32_t k;
} local_uffd_t;

static void *local_handler(void *arg)
{
    local_uffd_t *l = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)l->k % (int)sysconf(_SC_NPROCESSORS_ONLN), &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    struct pollfd pf = {.fd = l->uffd, .events = POLLIN};
    while (!__atomic_load_n(&l->stop, __ATOMIC_RELAXED)) {
        if (poll(&pf, 1, 50) <= 0) continue;
        struct uffd_msg msg;
        if (read(l->uffd, &msg, sizeof(msg)) != sizeof(msg)) continue;
        if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
        struct uffdio_copy c = {.dst = msg.arg.pagefault.address & ~4095ull, .src = (uintptr_t)l->src,
                                .len = 4096};
        ioctl(l->uffd, UFFDIO_COPY, &c);
    }
    return NULL;
}

/* p50/p99 of first touches of n random pages served by one handler per CPU (as xm_map does). */
static int local_fault(size_t n, double *lat, size_t *got_p)
{
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0) return -1;
    struct uffdio_api api = {.api = UFFD_API};
    if (ioctl(uffd, UFFDIO_API, &api) != 0) return -1;
    size_t len = n * 4096;
    uint8_t *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(a, len, MADV_NOHUGEPAGE);
    struct uffdio_register reg = {.range = {.start = (uintptr_t)a, .len = len},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) return -1;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    local_uffd_t hs[8];
    pthread_t th[8];
    uint8_t *src = aligned_alloc(4096, 4096);
    memset(src, 1, 4096);
    int nt = (int)(ncpu < 8 ? ncpu : 8);
    for (int k = 0; k < nt; k++) {
        hs[k] = (local_uffd_t){.uffd = uffd, .src = src, .k = (uint32_t)k};
        pthread_create(&th[k], NULL, local_handler, &hs[k]);
    }
    uint64_t s = 42;
    uint8_t *seen = calloc(n, 1);
    size_t got = 0;
    for (size_t i = 0; i < n; i++) {
        size_t pg = (size_t)(xmw_rand(&s) % n);
        if (seen[pg]) continue; /* first touches only */
        seen[pg] = 1;
        volatile uint8_t *p = a + pg * 4096;
        double t0 = xmw_now();
        (void)p[0];
        lat[got++] = (xmw_now() - t0) * 1e6;
    }
    free(seen);
    for (int k = 0; k < nt; k++) __atomic_store_n(&hs[k].stop, 1, __ATOMIC_RELAXED);
    for (int k = 0; k < nt; k++) pthread_join(th[k], NULL);
    munmap(a, len);
    close(uffd);
    free(src);
    *got_p = got;
    return 0;
}

/* The transport's streaming read rate, GB/s: `bytes` of a fresh region
 * (written first: an appliance's untouched pages cost it a page allocation)
 * read in 256 KiB pieces, 16 in flight — what a perfect read-ahead could get. */
static double stream_read_gbps(xm_ctx_h ctx, uint64_t bytes)
{
    enum { PIECE = 256u << 10, DEPTH = 16 };
    xm_region_h r;
    if (xm_region_create(ctx, bytes, NULL, &r) != XM_OK) return 0;
    uint8_t *buf = aligned_alloc(4096, (size_t)PIECE * DEPTH);
    double gbps = 0;
    if (buf != NULL) {
        xmw_fill(buf, (size_t)PIECE * DEPTH, XMW_SEED_DATA);
        xm_status_t st = XM_OK;
        for (uint64_t off = 0; off < bytes && st == XM_OK; off += (uint64_t)PIECE * DEPTH) {
            st = xm_write(r, off, buf, (size_t)BM_MIN((uint64_t)PIECE * DEPTH, bytes - off));
        }
        xm_op_t ops[DEPTH], *opp[DEPTH];
        double t0 = xmw_now();
        for (uint64_t off = 0; off < bytes && st == XM_OK;) {
            size_t n = 0;
            for (; n < DEPTH && off < bytes; n++, off += PIECE) {
                ops[n] = (xm_op_t){.opcode = XM_OP_READ, .region = r, .offset = off, .buf = buf + n * PIECE,
                                   .length = (size_t)BM_MIN(PIECE, bytes - off)};
                opp[n] = &ops[n];
                if ((st = xm_post(ctx, &ops[n])) != XM_OK) break;
            }
            xm_status_t w = xm_wait(ctx, opp, n);
            if (st == XM_OK) st = w;
        }
        if (st == XM_OK) gbps = (double)bytes / (xmw_now() - t0) / 1e9;
        free(buf);
    }
    region_drop(ctx, r);
    return gbps;
}

/* The best any mapped-memory design could do for a scan here: the part not
 * cached is streamed straight into place (no fault, no install, no
 * eviction; 256 KiB reads, 16 in flight) by the scanning thread itself,
 * which tops the reads up between 256 KiB chunks of its scan of the cached
 * part and then scans the missing part as it lands — same transport, same CPUs,
 * same run, no thread wake-ups. Returns seconds (0: could not measure);
 * *sum_p the checksum. */
enum { IDEAL_PIECE = 256u << 10, IDEAL_DEPTH = 16 };

/* Reads of the missing part, in order: [0, landed) has arrived, [landed,
 * posted) is in flight; piece i uses ops[i % IDEAL_DEPTH]. */
typedef struct {
    xm_ctx_h ctx;
    xm_region_h r;
    uint8_t *dst;
    uint64_t rest, posted, landed;
    xm_op_t ops[IDEAL_DEPTH];
} ideal_stream_t;

/* Note what has arrived (wait: at least the oldest piece), then keep
 * IDEAL_DEPTH reads in flight: a piece's slot is free once it has landed. */
static xm_status_t ideal_advance(ideal_stream_t *s, bool wait)
{
    while (s->landed < s->posted) {
        xm_op_t *o = &s->ops[(s->landed / IDEAL_PIECE) % IDEAL_DEPTH];
        if (o->status == XM_IN_PROGRESS) {
            if (!wait) break;
            xm_wait(s->ctx, &o, 1);
        }
        if (o->status != XM_OK) return o->status;
        s->landed += o->length;
        wait = false;
    }
    while (s->posted < s->rest && s->posted - s->landed < (uint64_t)IDEAL_PIECE * IDEAL_DEPTH) {
        xm_op_t *o = &s->ops[(s->posted / IDEAL_PIECE) % IDEAL_DEPTH];
        *o = (xm_op_t){.opcode = XM_OP_READ, .region = s->r, .offset = s->posted, .buf = s->dst + s->posted,
                       .length = (size_t)BM_MIN((uint64_t)IDEAL_PIECE, s->rest - s->posted)};
        xm_status_t st = xm_post(s->ctx, o);
        if (st != XM_OK) return st;
        s->posted += o->length;
    }
    return XM_OK;
}

static double ideal_scan(xm_ctx_h ctx, uint8_t *area, uint64_t ws, int pct, uint64_t *sum_p)
{
    uint64_t cached = ws * (uint64_t)pct / 100 / IDEAL_PIECE * IDEAL_PIECE, rest = ws - cached;
    if (rest == 0) return 0;
    xm_region_h r;
    if (xm_region_create(ctx, rest, NULL, &r) != XM_OK) return 0;
    xmw_fill(area, (size_t)ws, XMW_SEED_DATA);
    xm_status_t st = XM_OK;
    for (uint64_t off = 0; off < rest && st == XM_OK; off += 4u << 20) {
        st = xm_write(r, off, area + cached + off, (size_t)BM_MIN(4ull << 20, rest - off));
    }
    double secs = 0;
    ideal_stream_t *s = calloc(1, sizeof(*s));
    if (st == XM_OK && s != NULL) {
        memset(area + cached, 0, rest); /* pages stay populated: arrival costs no page allocation */
        *s = (ideal_stream_t){.ctx = ctx, .r = r, .dst = area + cached, .rest = rest};
        uint64_t scanned = 0, sum = 0;
        double t0 = xmw_now();
        st = ideal_advance(s, false);
        for (uint64_t at = 0; at < cached && st == XM_OK; at += IDEAL_PIECE) {
            sum += xmw_scan(area + at, IDEAL_PIECE).checksum;
            xm_progress(ctx);
            st = ideal_advance(s, false);
        }
        while (st == XM_OK && scanned < rest) {
            if (scanned == s->landed) st = ideal_advance(s, true);
            if (st != XM_OK) break;
            sum += xmw_scan(s->dst + scanned, (size_t)(s->landed - scanned)).checksum;
            scanned = s->landed;
            st = ideal_advance(s, false);
        }
        if (st == XM_OK) {
            secs = xmw_now() - t0;
            *sum_p = sum;
        }
        for (; s->landed < s->posted; s->landed += IDEAL_PIECE) { /* what is in flight lands before we return */
            xm_op_t *o = &s->ops[(s->landed / IDEAL_PIECE) % IDEAL_DEPTH];
            if (o->status == XM_IN_PROGRESS) xm_wait(ctx, &o, 1);
        }
    }
    free(s);
    region_drop(ctx, r);
    return secs;
}

/* The best a design that maps pages in under a cache budget could do here
 * (what a mapping cannot avoid and the ideal scan above does not pay): the
 * ideal scan, except that each missing piece lands in a reused (hot) bounce
 * buffer and is installed with UFFDIO_COPY into a userfaultfd-registered
 * area, and the cached part already scanned is dropped (MADV_DONTNEED,
 * 2 MiB at a time) as pieces come in, so the area holds no more than the
 * cache. No fault, no handler thread, no hash, no write-back. On a
 * shadow-paged VM every page mapped this way costs a page-table exit on its
 * first access, which the ideal scan's populated area never pays. */
typedef struct {
    ideal_stream_t s;     /* dst: the bounce ring (piece i at (i % IDEAL_DEPTH) * IDEAL_PIECE) */
    int uffd;
    uint8_t *area;        /* [0, cached) cached, [cached, ws) missing */
    uint64_t cached, scanned_cached, dropped, installed;
} mapped_stream_t;

/* Install what has landed (then its ring slot is free), drop as much of the
 * scanned cached part as was installed, and keep IDEAL_DEPTH reads going. */
static xm_status_t mapped_advance(mapped_stream_t *ms, bool wait)
{
    ideal_stream_t *s = &ms->s;
    while (s->landed < s->posted) {
        xm_op_t *o = &s->ops[(s->landed / IDEAL_PIECE) % IDEAL_DEPTH];
        if (o->status == XM_IN_PROGRESS) {
            if (!wait) break;
            xm_wait(s->ctx, &o, 1);
        }
        if (o->status != XM_OK) return o->status;
        struct uffdio_copy c = {.dst = (uintptr_t)(ms->area + ms->cached + s->landed), .src = (uintptr_t)o->buf,
                                .len = (o->length + 4095) & ~(uint64_t)4095};
        if (ioctl(ms->uffd, UFFDIO_COPY, &c) != 0) return XM_ERR_IO;
        s->landed += o->length;
        ms->installed += o->length;
        wait = false;
    }
    uint64_t can = BM_MIN(ms->installed, ms->scanned_cached);
    while (can >= ms->dropped + (2u << 20)) {
        madvise(ms->area + ms->dropped, 2u << 20, MADV_DONTNEED);
        ms->dropped += 2u << 20;
    }
    while (s->posted < s->rest && s->posted - s->landed < (uint64_t)IDEAL_PIECE * IDEAL_DEPTH) {
        xm_op_t *o = &s->ops[(s->posted / IDEAL_PIECE) % IDEAL_DEPTH];
        *o = (xm_op_t){.opcode = XM_OP_READ, .region = s->r, .offset = s->posted,
                       .buf = s->dst + ((s->posted / IDEAL_PIECE) % IDEAL_DEPTH) * IDEAL_PIECE,
                       .length = (size_t)BM_MIN((uint64_t)IDEAL_PIECE, s->rest - s->posted)};
        xm_status_t st = xm_post(s->ctx, o);
        if (st != XM_OK) return st;
        s->posted += o->length;
    }
    return XM_OK;
}

static double ideal_mapped_scan(xm_ctx_h ctx, uint64_t ws, int pct, uint64_t *sum_p)
{
    uint64_t cached = ws * (uint64_t)pct / 100 / (2u << 20) * (2u << 20), rest = ws - cached;
    if (rest == 0) return 0;
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0) return 0;
    struct uffdio_api api = {.api = UFFD_API};
    uint8_t *area = mmap(NULL, ws, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *ring = aligned_alloc(4096, (size_t)IDEAL_PIECE * IDEAL_DEPTH);
    mapped_stream_t *ms = calloc(1, sizeof(*ms));
    xm_region_h r = NULL;
    double secs = 0;
    if (ioctl(uffd, UFFDIO_API, &api) != 0 || area == MAP_FAILED || ring == NULL || ms == NULL ||
        xm_region_create(ctx, rest, NULL, &r) != XM_OK) {
        goto out;
    }
    madvise(area, ws, MADV_NOHUGEPAGE); /* blocks move in and out as 4 KiB pages, as in xm_map */
    xmw_fill(area, (size_t)ws, XMW_SEED_DATA);
    xm_status_t st = XM_OK;
    for (uint64_t off = 0; off < rest && st == XM_OK; off += 4u << 20) {
        st = xm_write(r, off, area + cached + off, (size_t)BM_MIN(4ull << 20, rest - off));
    }
    madvise(area + cached, rest, MADV_DONTNEED); /* missing: mapped in as it arrives */
    memset(ring, 0, (size_t)IDEAL_PIECE * IDEAL_DEPTH);
    struct uffdio_register reg = {.range = {.start = (uintptr_t)area, .len = ws}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (st != XM_OK || ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) goto out;
    ms->s = (ideal_stream_t){.ctx = ctx, .r = r, .dst = ring, .rest = rest};
    ms->uffd = uffd;
    ms->area = area;
    ms->cached = cached;
    uint64_t scanned = 0, sum = 0;
    double t0 = xmw_now();
    st = mapped_advance(ms, false);
    for (uint64_t at = 0; at < cached && st == XM_OK; at += IDEAL_PIECE) {
        sum += xmw_scan(area + at, IDEAL_PIECE).checksum;
        ms->scanned_cached = at + IDEAL_PIECE;
        xm_progress(ctx);
        st = mapped_advance(ms, false);
    }
    while (st == XM_OK && scanned < rest) {
        if (scanned == ms->s.landed) st = mapped_advance(ms, true);
        if (st != XM_OK) break;
        sum += xmw_scan(area + cached + scanned, (size_t)(ms->s.landed - scanned)).checksum;
        scanned = ms->s.landed;
        st = mapped_advance(ms, false);
    }
    if (st == XM_OK) {
        secs = xmw_now() - t0;
        *sum_p = sum;
    }
    for (; ms->s.landed < ms->s.posted; ms->s.landed += IDEAL_PIECE) { /* in flight lands before the ring goes */
        xm_op_t *o = &ms->s.ops[(ms->s.landed / IDEAL_PIECE) % IDEAL_DEPTH];
        if (o->status == XM_IN_PROGRESS) xm_wait(ctx, &o, 1);
    }
out:
    if (r != NULL) region_drop(ctx, r);
    free(ms);
    free(ring);
    if (area != MAP_FAILED) munmap(area, ws);
    close(uffd);
    return secs;
}

int cmd_bench_map(cli_t *cli)
{
    const char *size_text = cli_take(cli, "--size");
    const char *faults_text = cli_take(cli, "--faults");
    const char *fetch_text = cli_take(cli, "--fetch");
    const char *work_text = cli_take(cli, "--workloads");
    const char *frac_text = cli_take(cli, "--fractions");
    bool skip_faults = cli_take_flag(cli, "--no-faults");
    bool stats = cli_take_flag(cli, "--stats");
    const char *reps_text = cli_take(cli, "--reps");
    int reps = reps_text != NULL ? atoi(reps_text) : 1;
    if (reps < 1) reps = 1;
    if (cli_no_more(cli, 0) != 0) return 2;
    uint64_t ws = 256u << 20, fetch = 0; /* 0: the library's choice per cache size */
    if (size_text != NULL && xm_parse_size(size_text, &ws) != XM_OK) return 2;
    if (fetch_text != NULL && xm_parse_size(fetch_text, &fetch) != XM_OK) return 2;
    size_t nf = faults_text != NULL ? strtoul(faults_text, NULL, 10) : 4000;
    if (nf < 100 || ws < (16u << 20)) {
        fprintf(stderr, "usage: xmem bench map [--size 256M (>=16M)] [--faults 4000] [--fetch SIZE (default: xm_map's)]\n"
                        "                      [--workloads scan,gups,sort] [--fractions 100,75,50,25] [--no-faults] [--stats] [--reps 1]\n");
        return 2;
    }
    xm_ctx_h ctx;
    if (cli_connect(cli, &ctx) != 0) return 1;
    uint64_t rsize = nf * 4096ull; /* the fault test; each workload run has its own region */
    xm_region_h r;
    xm_status_t s = xm_region_create(ctx, rsize, NULL, &r);
    if (s != XM_OK) {
        xm_disconnect(ctx);
        return cli_fail("bench map", "cannot create a region: %s", xm_status_str(s));
    }
    double *lat = calloc(nf, sizeof(double)), p50, p99, l50, l99, r50, r99;

    uint8_t *m;
    /* memory per fault handler: this process's RSS and threads before the context's first
     * mapping (its data path already open: one xm_read) and after, less the mappings' pages */
    uint8_t probe[64];
    xm_read(r, 0, probe, sizeof(probe));
    long rss0 = self_status("VmRSS"), thr0 = self_status("Threads"), rss1 = -1, thr1 = -1;
    if (skip_faults) goto workloads;
    /* 1. remote fault: 4 KiB fetches, no read-ahead, random pages */
    xm_map_opts_t fo = {.size = sizeof(xm_map_opts_t), .fetch_size = 4096, .flags = XM_MAP_NO_READAHEAD};
    if ((s = xm_map(ctx, r, 0, nf * 4096ull, &fo, (void **)&m)) != XM_OK) {
        return cli_fail("bench map", "xm_map: %s: %s", xm_status_str(s), xm_last_error(ctx));
    }
    uint64_t seed = 42;
    uint8_t *seen = calloc(nf, 1);
    size_t got = 0;
    for (size_t i = 0; i < nf; i++) {
        size_t pg = (size_t)(xmw_rand(&seed) % nf);
        if (seen[pg]) continue;
        seen[pg] = 1;
        volatile uint8_t *p = m + pg * 4096;
        double t0 = xmw_now();
        (void)p[0];
        lat[got++] = (xmw_now() - t0) * 1e6;
    }
    pct(lat, got, &p50, &p99);
    xm_map_stats_t fst = XM_MAP_STATS_INIT;
    xm_map_stat(m, &fst);
    rss1 = self_status("VmRSS") - (long)(fst.resident_bytes >> 10);
    thr1 = self_status("Threads");
    xm_unmap(m);
    free(seen);
    /* 2. the same in local memory through userfaultfd */
    size_t lgot;
    if (local_fault(nf, lat, &lgot) != 0) return cli_fail("bench map", "local userfaultfd reference failed");
    pct(lat, lgot, &l50, &l99);
    /* 3. a 4 KiB transport read */
    uint8_t *buf = aligned_alloc(4096, 4096);
    for (size_t i = 0; i < nf; i++) {
        double t0 = xmw_now();
        xm_read(r, (xmw_rand(&seed) % nf) * 4096, buf, 4096);
        lat[i] = (xmw_now() - t0) * 1e6;
    }
    pct(lat, nf, &r50, &r99);
    free(buf);
    printf("fault latency (us), %zu random 4 KiB pages, one handler per CPU, %s\n", got,
           getenv("XMEM_MAP_PIN") ? "pinned (XMEM_MAP_PIN)" : "unpinned");
    printf("%-34s %9s %9s\n", "", "p50", "p99");
    printf("%-34s %9.1f %9.1f\n", "xm_map remote fault", p50, p99);
    printf("%-34s %9.1f %9.1f\n", "userfaultfd fault, local memory", l50, l99);
    printf("%-34s %9.1f %9.1f\n", "xm_read 4 KiB", r50, r99);
    printf("%-34s %9.2f           (target <= 1.5)\n\n", "remote / (local uffd + xm_read)",
           p50 / (l50 + r50));

    /* 4. workloads at 100/75/50/25% cache vs local memory */
workloads:;
    bool want[3] = {true, true, true};
    if (work_text != NULL) {
        for (int w = 0; w < 3; w++) want[w] = false;
        if (strstr(work_text, "scan")) want[0] = true;
        if (strstr(work_text, "gups")) want[1] = true;
        if (strstr(work_text, "sort")) want[2] = true;
    }
    int pcts[4] = {100, 75, 50, 25}, npcts = 4;
    if (frac_text != NULL) {
        npcts = 0;
        for (const char *f = frac_text; *f != '\0' && npcts < 4;) {
            int v = atoi(f);
            if (v <= 0 || v > 100) return cli_fail("bench map", "bad --fractions %s", frac_text);
            pcts[npcts++] = v;
            f = strchr(f, ',');
            if (f == NULL) break;
            f++;
        }
    }
    size_t wsz = (size_t)ws;
    uint8_t *local = mmap(NULL, wsz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const char *names[3] = {"scan", "gups", "sort"};
    double base[3], scan_s[4] = {0, 0, 0, 0};
    uint64_t sums[3];
    for (int w = 0; w < 3; w++) {
        if (!want[w]) continue;
        base[w] = 1e30;
        for (int rep = 0; rep < reps; rep++) {
            xmw_fill(local, wsz, XMW_SEED_DATA);
            xmw_result_t res = w == 0 ? xmw_scan(local, wsz)
                             : w == 1 ? xmw_gups(local, wsz, wsz / 8 / 64, 0)
                                      : xmw_sort(local, wsz);
            if (res.seconds < base[w]) base[w] = res.seconds;
            sums[w] = res.checksum;
        }
    }
    munmap(local, wsz);
    char unit[48] = "fetch: xm_map's default for each cache size";
    if (fetch != 0) snprintf(unit, sizeof(unit), "fetch %llu KiB", (unsigned long long)(fetch >> 10));
    printf("workloads over %s (%s, read-ahead on): seconds, ratio to local memory\n",
           size_text != NULL ? size_text : "256M", unit);
    printf("%-8s %10s", "kernel", "local");
    for (int c = 0; c < npcts; c++) printf("   %3d%% cache     ", pcts[c]);
    printf("\n");
    for (int w = 0; w < 3; w++) {
        if (!want[w]) continue;
        printf("%-8s %9.3fs", names[w], base[w]);
        for (int c = 0; c < npcts; c++) {
            double best = 1e30;
            bool bad = false;
            for (int rep = 0; rep < reps; rep++) {
                xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = ws * (uint64_t)pcts[c] / 100, .fetch_size = (uint32_t)fetch};
                /* a fresh (zero) region per run: the fill's pages must really go
                 * back (the appliance does not already hold the same data) */
                xm_region_h wr;
                if ((s = xm_region_create(ctx, ws, NULL, &wr)) != XM_OK) {
                    return cli_fail("bench map", "cannot create a region: %s", xm_status_str(s));
                }
                if ((s = xm_map(ctx, wr, 0, ws, &o, (void **)&m)) != XM_OK) {
                    return cli_fail("bench map", "xm_map: %s", xm_status_str(s));
                }
                xmw_fill(m, wsz, XMW_SEED_DATA);
                xm_map_stats_t st0 = XM_MAP_STATS_INIT;
                xm_map_stat(m, &st0);
                perf_ctl("enable\n");
                double cpu0 = cpu_self();
                xmw_result_t res = w == 0 ? xmw_scan(m, wsz)
                                 : w == 1 ? xmw_gups(m, wsz, wsz / 8 / 64, 0)
                                          : xmw_sort(m, wsz);
                double cpu = cpu_self() - cpu0;
                perf_ctl("disable\n");
                xm_map_stats_t st = XM_MAP_STATS_INIT;
                xm_map_stat(m, &st);
                if (stats) {
                    fprintf(stderr, "[%s %d%% (fetch %llu KiB): timed part: %llu faults, %llu read-ahead blocks, "
                            "%llu huge frames, %.1f MiB fetched, %llu evictions, %llu pages written back; "
                            "%.3f s, client CPU %.3f s]\n",
                            names[w], pcts[c], (unsigned long long)(st.fetch_size >> 10),
                            (unsigned long long)(st.faults - st0.faults),
                            (unsigned long long)(st.readahead_blocks - st0.readahead_blocks),
                            (unsigned long long)(st.huge_frames - st0.huge_frames),
                            (double)(st.fetched_bytes - st0.fetched_bytes) / 1048576.0,
                            (unsigned long long)(st.evictions - st0.evictions),
                            (unsigned long long)(st.writeback_pages - st0.writeback_pages), res.seconds, cpu);
                }
                if (res.seconds < best) best = res.seconds;
                if (res.checksum != sums[w] || !res.ok) bad = true;
                xm_unmap_discard(m);
                region_drop(ctx, wr);
            }
            if (w == 0) scan_s[c] = bad ? 0 : best;
            printf(" %6.3fs %5.2fx%s", best, best / base[w], bad ? "!" : " ");
            fflush(stdout);
        }
        printf("\n");
    }
    printf("(! = checksum differs from local memory; fastest of %d run%s per cell)\n", reps, reps > 1 ? "s" : "");
    if (want[0]) {
        /* the floor the transport sets: below 100 % cache a pass must bring the
         * rest in; the best a design could do is stream it straight into
         * place while the scan runs (measured), and the transport alone sets
         * (1 - cache) x size / the streaming rate (computed) */
        double gbps = stream_read_gbps(ctx, BM_MIN(ws, 1ull << 30));
        if (gbps > 0) {
            printf("transport: streaming 256 KiB reads, 16 in flight: %.2f GB/s; the missing part alone takes:", gbps);
            for (int c = 0; c < npcts; c++) {
                double remote = (double)ws * (100 - pcts[c]) / 100 / (gbps * 1e9);
                printf(" %.2fx at %d%%", remote / base[0], pcts[c]);
            }
            printf("\n");
        } else {
            printf("transport: streaming read rate not measured (a region of %llu bytes could not be "
                   "created or read)\n", (unsigned long long)BM_MIN(ws, 1ull << 30));
        }
        uint8_t *area = mmap(NULL, wsz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        double ideal_s[4] = {0, 0, 0, 0};
        if (area != MAP_FAILED) {
            printf("ideal scan (the missing part streamed into place, 16 reads in flight while the scan "
                   "runs; no fault, no copy):");
            for (int c = 0; c < npcts; c++) {
                uint64_t sum = 0;
                double best = 0;
                for (int rep = 0; rep < reps; rep++) {
                    double t = ideal_scan(ctx, area, ws, pcts[c], &sum);
                    if (t > 0 && (best == 0 || t < best)) best = t;
                    if (t > 0 && sum != sums[0]) best = -1;
                }
                ideal_s[c] = best;
                if (best > 0) printf(" %.2fx at %d%%", best / base[0], pcts[c]);
                else if (best < 0) printf(" (checksum differs) at %d%%", pcts[c]);
                else if (pcts[c] < 100) printf(" (not measured) at %d%%", pcts[c]);
            }
            printf("\n");
            munmap(area, wsz);
            printf("scan / ideal scan, same run (target <= 1.3):");
            for (int c = 0; c < npcts; c++) {
                if (scan_s[c] > 0 && ideal_s[c] > 0) printf(" %.2fx at %d%%", scan_s[c] / ideal_s[c], pcts[c]);
            }
            printf("\n");
            double mapped_s[4] = {0, 0, 0, 0};
            printf("ideal mapped scan (the same, but each piece installed with UFFDIO_COPY and the scanned cached "
                   "part dropped: the floor of any design that maps pages in under the budget):");
            for (int c = 0; c < npcts; c++) {
                uint64_t sum = 0;
                double best = 0;
                for (int rep = 0; rep < reps; rep++) {
                    double t = ideal_mapped_scan(ctx, ws, pcts[c], &sum);
                    if (t > 0 && (best == 0 || t < best)) best = t;
                    if (t > 0 && sum != sums[0]) best = -1;
                }
                mapped_s[c] = best;
                if (best > 0) printf(" %.2fx at %d%%", best / base[0], pcts[c]);
                else if (best < 0) printf(" (checksum differs) at %d%%", pcts[c]);
                else if (pcts[c] < 100) printf(" (not measured) at %d%%", pcts[c]);
            }
            printf("\n");
            printf("ideal mapped / ideal scan:");
            for (int c = 0; c < npcts; c++) {
                if (mapped_s[c] > 0 && ideal_s[c] > 0) printf(" %.2fx at %d%%", mapped_s[c] / ideal_s[c], pcts[c]);
            }
            printf("; scan / ideal mapped:");
            for (int c = 0; c < npcts; c++) {
                if (scan_s[c] > 0 && mapped_s[c] > 0) printf(" %.2fx at %d%%", scan_s[c] / mapped_s[c], pcts[c]);
            }
            printf("\n");
        }
    }
    /* after the workloads every mapping is gone; the engine (its handlers and their buffers,
     * touched by read-ahead and eviction) stays with the context */
    long rss2 = self_status("VmRSS"), thr2 = self_status("Threads");
    long nh = thr2 - thr0;
    if (rss0 > 0 && nh > 0) {
        printf("memory per fault handler (%ld handler threads; RSS of this process less the mappings' pages, "
               "vs before the first mapping; target <= 4 MB):", nh);
        if (rss1 > 0 && thr1 - thr0 > 0) printf(" %.2f MB after random faults,", (double)(rss1 - rss0) / 1024.0 / (double)(thr1 - thr0));
        printf(" %.2f MB after the workloads\n", (double)(rss2 - rss0) / 1024.0 / (double)nh);
    }
    free(lat);
    region_drop(ctx, r);
    xm_disconnect(ctx);
    return 0;
}
