/* Mapped external memory against a real xmemd: loads and stores through
 * xm_map, bounded cache, dirty-only write-back, failures, fork. */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define XM_MIN_T(a, b) ((a) < (b) ? (a) : (b))
#define XM_MAX_T(a, b) ((a) > (b) ? (a) : (b))

static xt_appliance_t app;

/* The sanitizers turn SIGSEGV/SIGBUS into exit(1): a handler of our own
 * reports which signal it was, in every build. */
static void exit_on_signal(int sig)
{
    syscall(SYS_exit_group, 100 + sig); /* raw: no sanitizer or atexit work in a signal handler */
}

static void catch_signal(int sig)
{
    struct sigaction sa = {.sa_handler = exit_on_signal};
    sigaction(sig, &sa, NULL);
}
static bool started;

static void teardown(void)
{
    if (started) {
        cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
        xt_cleanup(&app);
        started = false;
    }
}

/* Skip (with the reason) where this kernel or user cannot use userfaultfd. */
static void need_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    if (fd < 0) cr_skip_test("userfaultfd unavailable (%m): needs root or vm.unprivileged_userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = (1 << 15) | (1 << 16) | (1 << 14)};
    int rc = ioctl(fd, UFFDIO_API, &api);
    close(fd);
    if (rc != 0) cr_skip_test("userfaultfd lacks WP_ASYNC/MOVE/POISON (Linux >= 6.8 needed)");
}

static void start(const char *provider, const char *pool)
{
    need_uffd();
    xt_start(&app, &(xt_opts_t){.provider = provider, .pool = pool});
    started = true;
}

/* A field ("Rss", "Swap") of the VMA at addr, from /proc/self/smaps, in
 * bytes; UINT64_MAX when no VMA holds addr. The VMA must start at addr: a
 * mapping merged with a neighbour would count the neighbour's pages too. */
static uint64_t vma_field(const void *addr, const char *field)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    cr_assert_not_null(f);
    char line[512], want[32];
    snprintf(want, sizeof(want), "%s: %%lu kB", field);
    bool in = false;
    uint64_t bytes = UINT64_MAX;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') == line + strcspn(line, "-") &&
            line[strcspn(line, " ") - 1] != ':') {
            in = lo <= (uintptr_t)addr && (uintptr_t)addr < hi;
            if (in) cr_assert_eq(lo, (uintptr_t)addr, "the mapping at %p shares its VMA (from %lx)", addr, lo);
            continue;
        }
        unsigned long kb;
        if (in && sscanf(line, want, &kb) == 1) {
            bytes = kb * 1024;
            break;
        }
    }
    fclose(f);
    return bytes;
}

static uint64_t vma_rss(const void *addr)
{
    uint64_t rss = vma_field(addr, "Rss");
    cr_assert_neq(rss, UINT64_MAX, "no VMA at %p in smaps", addr);
    return rss;
}

static xm_map_stats_t stat_of(const void *addr)
{
    xm_map_stats_t st = XM_MAP_STATS_INIT;
    cr_assert_eq(xm_map_stat(addr, &st), XM_OK);
    return st;
}

/* Wait until the handlers have finished with mappings a and b (no fetch or
 * eviction for 20 ms; read-ahead goes on after the faulting thread resumes). */
static void quiesce(const void *a, const void *b)
{
    uint64_t last = UINT64_MAX;
    for (int i = 0; i < 500; i++) {
        xm_map_stats_t sa = stat_of(a), sb = stat_of(b);
        uint64_t now = sa.fetched_bytes + sa.evictions + sb.fetched_bytes + sb.evictions;
        if (now == last) return;
        last = now;
        usleep(20000);
    }
    cr_assert_fail("the mappings' handlers did not go idle in 10 s");
}

/* Two mappings sharing a context budget hold no more than it, in smaps. */
static void pair_within(const void *a, const void *b, uint64_t budget)
{
    uint64_t ra = vma_rss(a), rb = vma_rss(b);
    cr_assert_leq(ra + rb, budget, "Rss %llu + %llu above the shared budget %llu (accounted %llu + %llu)",
                  (unsigned long long)ra, (unsigned long long)rb, (unsigned long long)budget,
                  (unsigned long long)stat_of(a).resident_bytes, (unsigned long long)stat_of(b).resident_bytes);
}

XT_TEST_PROVIDERS(map, loads_and_stores_round_trip, .fini = teardown, .timeout = 120)
{
    start(provider, "256M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    const uint64_t size = (8u << 20) + 12345; /* the last page is partial */
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, size, "mapped", &r), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *data = malloc(size), *back = malloc(size);
    xt_fill(data, size, 7);
    cr_assert_eq(xm_write(r, 0, data, size), XM_OK);

    uint8_t *p;
    cr_assert_eq(xm_map(ctx, r, 0, size, NULL, (void **)&p), XM_OK, "%s", xm_last_error(ctx));
    /* loads see what xm_write put there, to the last byte */
    cr_assert(memcmp(p, data, size) == 0, "mapped bytes differ from the region's");
    xm_map_stats_t st = stat_of(p);
    cr_assert_gt(st.faults, 0);
    cr_assert_geq(st.fetched_bytes, size);

    /* stores go back with xm_sync and xm_read sees them */
    for (uint64_t off = 0; off < size; off += 4096 * 3) p[off] ^= 0x5a, data[off] ^= 0x5a;
    p[size - 1] = 0x42;
    data[size - 1] = 0x42;
    cr_assert_eq(xm_sync(p, size), XM_OK);
    cr_assert_eq(xm_read(r, 0, back, size), XM_OK);
    cr_assert(memcmp(back, data, size) == 0, "the appliance lacks stores made through the mapping");

    /* an offset mapping of the same region, read-ahead off, 4 KiB fetches */
    xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .fetch_size = 4096, .flags = XM_MAP_NO_READAHEAD};
    uint8_t *q;
    cr_assert_eq(xm_map(ctx, r, 1u << 20, 1u << 20, &o, (void **)&q), XM_OK);
    cr_assert(memcmp(q, data + (1u << 20), 1u << 20) == 0);
    cr_assert_eq(stat_of(q).faults, 256, "one fault per page without read-ahead");
    cr_assert_eq(stat_of(q).readahead_blocks, 0);

    /* and writes made with xm_write show up in a fresh mapping */
    xt_fill(data, 65536, 8);
    cr_assert_eq(xm_write(r, 3u << 20, data, 65536), XM_OK);
    cr_assert_eq(xm_unmap(p), XM_OK);
    cr_assert_eq(xm_map(ctx, r, 0, size, NULL, (void **)&p), XM_OK);
    cr_assert(memcmp(p + (3u << 20), data, 65536) == 0);
    cr_assert_eq(xm_unmap(p), XM_OK);
    cr_assert_eq(xm_unmap(q), XM_OK);

    cr_assert_eq(xm_map(ctx, r, 1, 4096, NULL, (void **)&p), XM_ERR_INVALID, "unaligned offset");
    cr_assert_eq(xm_map(ctx, r, 0, size + 1, NULL, (void **)&p), XM_ERR_RANGE);
    cr_assert_eq(xm_map(ctx, r, 0, 4096, &(xm_map_opts_t){.size = sizeof(xm_map_opts_t), .fetch_size = 3000}, (void **)&p),
                 XM_ERR_INVALID, "fetch size not a power of two");
    cr_assert_eq(xm_unmap(data), XM_ERR_INVALID, "not a mapping");
    free(data);
    free(back);
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* A new region filled with a recognisable word per 8 bytes: offset * 3 + seed. */
static xm_region_h filled_region(xm_ctx_h ctx, uint64_t size, uint64_t seed)
{
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, size, NULL, &r), XM_OK);
    const size_t chunk = 1u << 20;
    uint64_t *buf = malloc(chunk);
    for (uint64_t off = 0; off < size; off += chunk) {
        for (size_t i = 0; i < chunk / 8; i++) buf[i] = (off + i * 8) * 3 + seed;
        cr_assert_eq(xm_write(r, off, buf, XM_MIN_T(chunk, size - off)), XM_OK);
    }
    free(buf);
    return r;
}

XT_TEST_PROVIDERS(map, resident_size_stays_within_budget, .fini = teardown, .timeout = 120)
{
    start(provider, "256M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    const uint64_t size = 32u << 20, budget = 8u << 20; /* a scan 4x the cache */
    xm_region_h r = filled_region(ctx, size, 11);
    uint64_t *p;
    xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = budget};
    cr_assert_eq(xm_map(ctx, r, 0, size, &o, (void **)&p), XM_OK, "%s", xm_last_error(ctx));
    /* Rss read once the handlers are idle: smaps walks the page table while
     * they evict behind the scan and install ahead of it, so a reading taken
     * meanwhile can count a page on its way out and one on its way in */
    uint64_t max_rss = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (uint64_t i = 0; i < size / 8; i++) {
            cr_assert_eq(p[i], i * 8 * 3 + 11, "word at %llu", (unsigned long long)(i * 8));
            if (i % (256u << 10) == 0) {
                quiesce(p, p);
                max_rss = XM_MAX_T(max_rss, vma_rss(p));
            }
        }
        /* and every 37th page, out of order */
        for (uint64_t pg = 0; pg < size / 4096; pg++) {
            uint64_t q = (pg * 37) % (size / 4096);
            cr_assert_eq(p[q * 512], q * 4096 * 3 + 11);
            if (pg % 512 == 0) {
                quiesce(p, p);
                max_rss = XM_MAX_T(max_rss, vma_rss(p));
            }
        }
    }
    xm_map_stats_t st = stat_of(p);
    cr_assert_leq(max_rss, budget, "mapping Rss %llu > budget %llu", (unsigned long long)max_rss,
                  (unsigned long long)budget);
    cr_assert_leq(st.resident_bytes, budget);
    cr_assert_gt(st.evictions, 0);
    cr_assert_gt(st.readahead_blocks, 0, "a sequential scan is read ahead");
    cr_assert_eq(st.writeback_pages, 0, "nothing was written: nothing goes back");
    cr_assert_eq(xm_unmap(p), XM_OK);

    /* two mappings under one context budget */
    uint8_t *a, *b;
    xm_map_opts_t oc = {.size = sizeof(xm_map_opts_t), .ctx_cache_bytes = 4u << 20};
    cr_assert_eq(xm_map(ctx, r, 0, 16u << 20, &oc, (void **)&a), XM_OK);
    cr_assert_eq(xm_map(ctx, r, 16u << 20, 16u << 20, NULL, (void **)&b), XM_OK);
    volatile uint64_t sum = 0;
    for (uint64_t off = 0; off < (16u << 20); off += 4096) {
        sum += a[off] + b[off];
        if (off % (1u << 20) == 0) {
            /* the two smaps readings are not one snapshot: a handler still reading
             * ahead may evict from one and fill the other in between, so the sum
             * is taken once the handlers are idle */
            quiesce(a, b);
            pair_within(a, b, 4u << 20);
        }
    }
    quiesce(a, b);
    pair_within(a, b, 4u << 20);
    cr_assert_eq(xm_unmap(a), XM_OK);
    cr_assert_eq(xm_unmap(b), XM_OK);
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* Read-ahead under a cache smaller than its window: a pass brings each block
 * in once. (A window that made room for its later blocks by evicting its
 * earlier ones fetched up to 30 % more, found in review.) */
Test(map, small_cache_read_ahead_fetches_each_block_once, .fini = teardown, .timeout = 120)
{
    start("tcp", "256M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    const uint64_t size = 8u << 20;
    xm_region_h r = filled_region(ctx, size, 7);
    const uint64_t budgets[] = {64u << 10, 128u << 10, 256u << 10};
    for (size_t i = 0; i < sizeof(budgets) / sizeof(budgets[0]); i++) {
        uint64_t *p;
        xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = budgets[i], .fetch_size = 16384};
        cr_assert_eq(xm_map(ctx, r, 0, size, &o, (void **)&p), XM_OK, "%s", xm_last_error(ctx));
        for (int pass = 0; pass < 2; pass++) {
            for (uint64_t w = 0; w < size / 8; w++) {
                /* each earlier budget's first pass added one to the first word of every page */
                uint64_t added = w % 512 == 0 ? i + (pass > 0) : 0;
                cr_assert_eq(p[w], w * 8 * 3 + 7 + added, "budget %llu, word %llu",
                             (unsigned long long)budgets[i], (unsigned long long)w);
                if (pass == 0 && w % 512 == 0) p[w]++; /* a store per page: every eviction writes back */
            }
        }
        xm_map_stats_t st = stat_of(p);
        cr_assert_gt(st.readahead_blocks, 0, "budget %llu: no read-ahead", (unsigned long long)budgets[i]);
        cr_assert_leq(st.fetched_bytes, 2 * size + size / 50, "budget %llu: %llu bytes fetched for two passes of %llu",
                      (unsigned long long)budgets[i], (unsigned long long)st.fetched_bytes,
                      (unsigned long long)size);
        cr_assert_eq(xm_unmap(p), XM_OK);
    }
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* With no fetch size asked for, xm_map picks 256 KiB, smaller for small budgets. */
Test(map, default_fetch_size_follows_the_budget, .fini = teardown, .timeout = 60)
{
    start("tcp", "256M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 64u << 20, NULL, &r), XM_OK);
    struct {
        uint64_t cache, ctx_cache, want;
    } cases[] = {
        {0, 0, 256u << 10},          /* no budget */
        {256u << 20, 0, 256u << 10}, /* 256 MiB / 512 = 512 KiB: capped at 256 */
        {64u << 20, 0, 128u << 10},  /* 64 MiB / 512 */
        {16u << 20, 0, 32u << 10},
        {1u << 20, 0, 16u << 10},    /* floor */
        {0, 32u << 20, 64u << 10},   /* the context's budget counts too */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = cases[i].cache, .ctx_cache_bytes = cases[i].ctx_cache};
        uint8_t *p;
        cr_assert_eq(xm_map(ctx, r, 0, 64u << 20, &o, (void **)&p), XM_OK, "%s", xm_last_error(ctx));
        cr_assert_eq(stat_of(p).fetch_size, cases[i].want, "case %zu: fetch %llu, want %llu", i,
                     (unsigned long long)stat_of(p).fetch_size, (unsigned long long)cases[i].want);
        volatile uint8_t v = p[(8u << 20) + 5]; /* and it works */
        (void)v;
        cr_assert_eq(stat_of(p).fetched_bytes % 4096, 0);
        cr_assert_eq(xm_unmap(p), XM_OK);
    }
    xm_map_opts_t asked = {.size = sizeof(xm_map_opts_t), .fetch_size = 8192};
    uint8_t *p;
    cr_assert_eq(xm_map(ctx, r, 0, 1u << 20, &asked, (void **)&p), XM_OK);
    cr_assert_eq(stat_of(p).fetch_size, 8192, "an asked-for fetch size is kept");
    cr_assert_eq(xm_unmap(p), XM_OK);
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* Two threads unmapping one mapping at once while a third reads its
 * counters: exactly one unmap succeeds and none of them hangs (the loser
 * once returned without waking the winner, who waited forever holding the
 * mappings' lock: every later xm_* call on any mapping hung). */
typedef struct {
    void *addr;
    atomic_int go, done;
    xm_status_t st[2];
} unmap_race_t;

typedef struct {
    unmap_race_t *r;
    int me;
} unmap_racer_t;

static void *race_unmapper(void *arg)
{
    unmap_racer_t *a = arg;
    while (!atomic_load(&a->r->go)) { /* start together */ }
    a->r->st[a->me] = xm_unmap(a->r->addr);
    atomic_fetch_add(&a->r->done, 1);
    return NULL;
}

static void *race_reader(void *arg)
{
    unmap_race_t *r = arg;
    while (!atomic_load(&r->go)) { }
    while (atomic_load(&r->done) < 2) {
        xm_map_stats_t st = XM_MAP_STATS_INIT;
        xm_status_t s = xm_map_stat(r->addr, &st);
        if (s != XM_OK && s != XM_ERR_INVALID) return (void *)1;
    }
    return NULL;
}

Test(map, racing_unmaps_never_hang, .fini = teardown, .timeout = 120)
{
    start("tcp", "256M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, NULL, &r), XM_OK);
    for (int it = 0; it < 400; it++) {
        unmap_race_t race = {0};
        cr_assert_eq(xm_map(ctx, r, 0, 1u << 20, NULL, &race.addr), XM_OK, "%s", xm_last_error(ctx));
        ((volatile uint8_t *)race.addr)[it * 17 % (1u << 20)] = (uint8_t)it;
        unmap_racer_t a0 = {&race, 0}, a1 = {&race, 1};
        pthread_t t0, t1, t2;
        cr_assert_eq(pthread_create(&t0, NULL, race_unmapper, &a0), 0);
        cr_assert_eq(pthread_create(&t1, NULL, race_unmapper, &a1), 0);
        cr_assert_eq(pthread_create(&t2, NULL, race_reader, &race), 0);
        atomic_store(&race.go, 1);
        void *bad = NULL;
        pthread_join(t0, NULL);
        pthread_join(t1, NULL);
        pthread_join(t2, &bad);
        cr_assert_null(bad, "iteration %d: xm_map_stat racing xm_unmap returned an unexpected error", it);
        int ok = (race.st[0] == XM_OK) + (race.st[1] == XM_OK);
        int inval = (race.st[0] == XM_ERR_INVALID) + (race.st[1] == XM_ERR_INVALID);
        cr_assert(ok == 1 && inval == 1, "iteration %d: two xm_unmap of one mapping returned %s and %s", it,
                  xm_status_str(race.st[0]), xm_status_str(race.st[1]));
    }
    uint8_t back;
    cr_assert_eq(xm_read(r, (399 * 17) % (1u << 20), &back, 1), XM_OK);
    cr_assert_eq(back, (uint8_t)399, "the winning xm_unmap wrote the store back");
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* A counter of /proc/vmstat. */
static uint64_t vmstat(const char *name)
{
    FILE *f = fopen("/proc/vmstat", "r");
    cr_assert_not_null(f);
    char key[64];
    unsigned long long v, got = 0;
    while (fscanf(f, "%63s %llu", key, &v) == 2) {
        if (strcmp(key, name) == 0) got = v;
    }
    fclose(f);
    return got;
}

/* Transparent huge pages usable through madvise (the kernel's "enabled" mode is not [never]). */
static bool thp_on(void)
{
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f == NULL) return false;
    char line[128] = "";
    bool ok = fgets(line, sizeof(line), f) != NULL && strstr(line, "[never]") == NULL;
    fclose(f);
    return ok;
}

typedef struct {
    uint8_t *p;
    uint64_t size;
    atomic_uint_fast64_t pos; /* where the scanner is */
    atomic_int stop;
    uint64_t *want; /* per page: the word a writer stored at its start, 0: none */
} frame_race_t;

typedef struct {
    frame_race_t *fr;
    int me;
} frame_writer_t;

/* xm_sync over the whole mapping while frames come and go: it must wait for
 * claimed frames and compare suspect ones, never fail or hang. */
static void *frame_syncer(void *arg)
{
    frame_race_t *fr = arg;
    uint64_t n = 0;
    while (!atomic_load(&fr->stop)) {
        if (xm_sync(fr->p, fr->size) != XM_OK) return (void *)1;
        n++;
    }
    return (void *)(uintptr_t)(n == 0 ? 2 : 0);
}

/* Stores just ahead of the scanner, where frames are being fetched and
 * moved in: some land between a frame's move and its write-protect. */
static void *frame_writer(void *arg)
{
    frame_race_t *fr = ((frame_writer_t *)arg)->fr;
    int me = ((frame_writer_t *)arg)->me;
    uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(me + 1), n = 0;
    uint64_t npages = fr->size / 4096;
    while (!atomic_load(&fr->stop)) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        uint64_t pg = atomic_load(&fr->pos) / 4096 + rng % 1024; /* the next 4 MiB */
        if (pg >= npages) continue;
        pg = pg - pg % 2 + (uint64_t)me; /* each writer its own pages */
        if (pg >= npages) continue;
        /* only pages already there: a store to a missing page would fault one page in
         * and keep the scan from taking that frame whole; a frame's pages appear all at
         * once when it is moved in, and the store may follow before its write-protect */
        unsigned char vec = 0;
        if (mincore(fr->p + pg * 4096, 4096, &vec) != 0 || !(vec & 1)) continue;
        uint64_t v = (++n << 8) | (uint64_t)(me + 1);
        ((volatile uint64_t *)fr->p)[pg * 512] = v;
        fr->want[pg] = v;
    }
    return NULL;
}

Test(map, sequential_runs_move_whole_frames, .fini = teardown, .timeout = 180)
{
    if (!thp_on()) cr_skip_test("transparent huge pages are off (/sys/kernel/mm/transparent_hugepage/enabled)");
    start("tcp", "512M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    const uint64_t size = 64u << 20, cache = 16u << 20;
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, size, NULL, &r), XM_OK);
    uint8_t *data = malloc(size), *back = malloc(size);
    xt_fill(data, size, 99);
    cr_assert_eq(xm_write(r, 0, data, size), XM_OK);
    xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = cache};
    uint8_t *p;
    setenv("XMEM_MAP_HUGE", "1", 1); /* frames are opt-in */
    cr_assert_eq(xm_map(ctx, r, 0, size, &o, (void **)&p), XM_OK, "%s", xm_last_error(ctx));
    unsetenv("XMEM_MAP_HUGE");

    /* a scan four times the cache: whole frames come in as huge pages */
    uint64_t fallback0 = vmstat("thp_fault_fallback");
    for (uint64_t off = 0; off < size; off += 1u << 20) {
        cr_assert(memcmp(p + off, data + off, 1u << 20) == 0, "bytes at %llu differ", (unsigned long long)off);
    }
    xm_map_stats_t st = stat_of(p);
    cr_assert_gt(st.huge_frames, 8, "a sequential scan of 64 MiB brought in %llu frames whole",
                 (unsigned long long)st.huge_frames);
    /* huge pages, unless the kernel could not allocate one (a fragmented host: the
     * frames then move in as 4 KiB pages, still without a copy) */
    uint64_t huge = vma_field(p, "AnonHugePages");
    if (huge == 0 && vmstat("thp_fault_fallback") == fallback0) {
        cr_assert_fail("no huge page in the mapping after a sequential scan, and no failed huge page allocation");
    }
    cr_assert_leq(vma_rss(p), cache, "Rss %llu above the %llu budget", (unsigned long long)vma_rss(p),
                  (unsigned long long)cache);

    /* again, with two threads storing just ahead of the scan */
    frame_race_t fr = {.p = p, .size = size, .want = calloc(size / 4096, sizeof(uint64_t))};
    frame_writer_t w0 = {&fr, 0}, w1 = {&fr, 1};
    pthread_t t0, t1, ts;
    cr_assert_eq(pthread_create(&t0, NULL, frame_writer, &w0), 0);
    cr_assert_eq(pthread_create(&t1, NULL, frame_writer, &w1), 0);
    cr_assert_eq(pthread_create(&ts, NULL, frame_syncer, &fr), 0);
    volatile uint64_t sink = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (uint64_t off = 0; off < size; off += 4096) {
            atomic_store(&fr.pos, off);
            sink += ((volatile uint64_t *)(p + off))[1];
        }
    }
    atomic_store(&fr.stop, 1);
    pthread_join(t0, NULL);
    pthread_join(t1, NULL);
    void *sync_bad = NULL;
    pthread_join(ts, &sync_bad);
    cr_assert_null(sync_bad, "xm_sync racing frames: %s", sync_bad == (void *)1 ? "failed" : "never ran");
    cr_assert_gt(stat_of(p).huge_frames, st.huge_frames, "the second scan brought in no frame whole");
    for (uint64_t pg = 0; pg < size / 4096; pg++) {
        if (fr.want[pg] != 0) memcpy(data + pg * 4096, &fr.want[pg], 8);
    }
    cr_assert(memcmp(p, data, size) == 0, "the mapping lost a store");
    cr_assert_eq(xm_sync(p, size), XM_OK);
    cr_assert_eq(xm_read(r, 0, back, size), XM_OK);
    for (uint64_t pg = 0; pg < size / 4096; pg++) {
        cr_assert(memcmp(back + pg * 4096, data + pg * 4096, 4096) == 0,
                  "page %llu: the appliance lacks a store made while frames moved in (want %#llx, has %#llx)",
                  (unsigned long long)pg, (unsigned long long)fr.want[pg],
                  (unsigned long long)*(uint64_t *)(back + pg * 4096));
    }
    cr_assert_eq(xm_unmap(p), XM_OK);
    cr_assert_eq(xm_read(r, 0, back, size), XM_OK);
    cr_assert(memcmp(back, data, size) == 0, "the appliance differs after xm_unmap");

    /* a mapping whose length ends inside its last page, the last frame included:
     * the region's bytes past that length are not the mapping's (zeros there) */
    const uint64_t len = (8u << 20) - 100;
    setenv("XMEM_MAP_HUGE", "1", 1);
    xm_map_opts_t o8 = {.size = sizeof(xm_map_opts_t), .cache_bytes = 8u << 20};
    cr_assert_eq(xm_map(ctx, r, 0, len, &o8, (void **)&p), XM_OK, "%s", xm_last_error(ctx));
    unsetenv("XMEM_MAP_HUGE");
    cr_assert(memcmp(p, data, len) == 0, "a frame mapping of %llu bytes differs from the region",
              (unsigned long long)len);
    for (uint64_t i = len; i < (8u << 20); i++) {
        cr_assert_eq(p[i], 0, "byte %llu, past the mapping's length, is %#x (the region's), not 0",
                     (unsigned long long)i, p[i]);
    }
    cr_assert_gt(stat_of(p).huge_frames, 0, "the 8 MiB mapping took no frame whole");
    cr_assert_eq(xm_unmap(p), XM_OK);
    free(fr.want);
    free(data);
    free(back);
    xm_region_close(r);
    xm_disconnect(ctx);
}

Test(map, only_written_pages_go_back, .fini = teardown, .timeout = 120)
{
    start("tcp", "256M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    const uint64_t size = 4u << 20;
    xm_region_h r = filled_region(ctx, size, 5);
    uint8_t *p;
    cr_assert_eq(xm_map(ctx, r, 0, size, NULL, (void **)&p), XM_OK);
    volatile uint64_t sum = 0;
    for (uint64_t off = 0; off < size; off += 4096) sum += p[off]; /* all resident, all clean */
    cr_assert_eq(xm_sync(p, size), XM_OK);
    cr_assert_eq(stat_of(p).writeback_pages, 0, "clean pages were written back");
    p[5 * 4096] = 1;
    p[9 * 4096 + 100] = 2;
    p[900 * 4096 + 4095] = 3;
    cr_assert_eq(xm_sync(p, size), XM_OK);
    cr_assert_eq(stat_of(p).writeback_pages, 3);
    cr_assert_eq(xm_sync(p, size), XM_OK);
    cr_assert_eq(stat_of(p).writeback_pages, 3, "a second sync wrote again");
    p[9 * 4096 + 200] = 4; /* written again after its write-back */
    cr_assert_eq(xm_sync(p + 8 * 4096, 2 * 4096), XM_OK);
    cr_assert_eq(stat_of(p).writeback_pages, 4);
    uint8_t b;
    cr_assert_eq(xm_read(r, 9 * 4096 + 200, &b, 1), XM_OK);
    cr_assert_eq(b, 4);
    cr_assert_eq(xm_read(r, 900 * 4096 + 4095, &b, 1), XM_OK);
    cr_assert_eq(b, 3);
    cr_assert_eq(xm_unmap(p), XM_OK);

    /* eviction writes back exactly the written pages too */
    xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = 256u << 10};
    cr_assert_eq(xm_map(ctx, r, 0, size, &o, (void **)&p), XM_OK);
    for (uint64_t off = 0; off < (1u << 20); off += 4096) sum += p[off];
    for (int i = 0; i < 5; i++) p[i * 8192 + 7] = (uint8_t)(0x70 + i);
    for (uint64_t off = 1u << 20; off < size; off += 4096) sum += p[off]; /* pushes them out */
    xm_map_stats_t st = stat_of(p);
    cr_assert_eq(st.writeback_pages, 5, "evictions wrote back %llu pages, 5 were written",
                 (unsigned long long)st.writeback_pages);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(xm_read(r, i * 8192 + 7, &b, 1), XM_OK);
        cr_assert_eq(b, 0x70 + i);
        cr_assert_eq(p[i * 8192 + 7], 0x70 + i, "fetched back after eviction");
    }
    cr_assert_eq(xm_unmap(p), XM_OK);
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* Threads store counters into shared pages while a tiny cache evicts all the
 * time and another thread syncs: afterwards every store is on the appliance. */
#define STRESS_THREADS 4
#define STRESS_PAGES 512
#define STRESS_ROUNDS 40
typedef struct stress_arg {
    uint64_t *base;
    int t;
} stress_arg_t;
static volatile int stress_stop;

static void *stress_writer(void *arg)
{
    stress_arg_t *a = arg;
    for (uint64_t round = 1; round <= STRESS_ROUNDS; round++) {
        for (uint64_t pg = 0; pg < STRESS_PAGES; pg++) {
            uint64_t q = (pg * 97 + (uint64_t)a->t * 13) % STRESS_PAGES; /* threads share every page */
            __atomic_store_n(&a->base[q * 512 + (uint64_t)a->t], round, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

static void *stress_syncer(void *arg)
{
    uint64_t *base = arg;
    while (!stress_stop) {
        xm_status_t s = xm_sync(base, STRESS_PAGES * 4096ull);
        cr_assert_eq(s, XM_OK, "xm_sync during the stress: %s", xm_status_str(s));
        usleep(2000);
    }
    return NULL;
}

XT_TEST_PROVIDERS(map, concurrent_stores_survive_eviction, .fini = teardown, .timeout = 180)
{
    start(provider, "256M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    const uint64_t size = STRESS_PAGES * 4096ull;
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, size, NULL, &r), XM_OK);
    uint64_t *p;
    xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = 64u << 10, .fetch_size = 16u << 10};
    cr_assert_eq(xm_map(ctx, r, 0, size, &o, (void **)&p), XM_OK);
    pthread_t th[STRESS_THREADS], syncer;
    stress_arg_t args[STRESS_THREADS];
    stress_stop = 0;
    cr_assert_eq(pthread_create(&syncer, NULL, stress_syncer, p), 0);
    for (int t = 0; t < STRESS_THREADS; t++) {
        args[t] = (stress_arg_t){.base = p, .t = t};
        cr_assert_eq(pthread_create(&th[t], NULL, stress_writer, &args[t]), 0);
    }
    for (int t = 0; t < STRESS_THREADS; t++) pthread_join(th[t], NULL);
    stress_stop = 1;
    pthread_join(syncer, NULL);
    xm_map_stats_t st = stat_of(p);
    cr_assert_gt(st.evictions, 100, "the cache was meant to churn (%llu evictions)",
                 (unsigned long long)st.evictions);
    cr_assert_leq(st.resident_bytes, 64u << 10);
    /* every page: each thread's last counter, through the mapping and on the appliance */
    for (uint64_t pg = 0; pg < STRESS_PAGES; pg++) {
        for (int t = 0; t < STRESS_THREADS; t++) cr_assert_eq(p[pg * 512 + t], STRESS_ROUNDS);
    }
    cr_assert_eq(xm_sync(p, size), XM_OK);
    uint64_t *back = malloc(size);
    cr_assert_eq(xm_read(r, 0, back, size), XM_OK);
    for (uint64_t pg = 0; pg < STRESS_PAGES; pg++) {
        for (int t = 0; t < STRESS_THREADS; t++) {
            cr_assert_eq(back[pg * 512 + t], STRESS_ROUNDS, "page %llu thread %d: %llu on the appliance",
                         (unsigned long long)pg, t, (unsigned long long)back[pg * 512 + t]);
        }
    }
    free(back);
    cr_assert_eq(xm_unmap(p), XM_OK);
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* The appliance dies: a fault that cannot be served gets SIGBUS (in a child,
 * with a log line naming the region and offset), never a zero page. */
Test(map, dead_appliance_fault_is_sigbus, .fini = teardown, .timeout = 120)
{
    start("tcp", "256M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r = filled_region(ctx, 8u << 20, 3);
    uint64_t id = xm_region_id(r);
    xm_region_close(r);
    xm_disconnect(ctx);
    char logpath[PATH_MAX];
    snprintf(logpath, sizeof(logpath), "%s/child.log", app.dir);
    int go[2], ready[2];
    cr_assert_eq(pipe(go), 0);
    cr_assert_eq(pipe(ready), 0);
    char alice_cred[PATH_MAX + 80];
    xt_cred(app.secret, "alice", alice_cred, sizeof(alice_cred));
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 2);
        xm_ctx_h c;
        xm_connect_opts_t co = {.size = sizeof(xm_connect_opts_t), .appliance = app.addr, .secret_file = alice_cred, .tenant = "alice",
                                .timeout_ms = 1000}; /* a connect under load (tests run two at a time) */
        if (xm_connect(&co, &c) != XM_OK) _exit(10);
        xm_region_h rr;
        if (xm_region_open(c, id, NULL, XM_ACCESS_READ_WRITE, &rr) != XM_OK) _exit(11);
        volatile uint64_t *p;
        if (xm_map(c, rr, 0, 8u << 20, &(xm_map_opts_t){.size = sizeof(xm_map_opts_t), .flags = XM_MAP_NO_READAHEAD},
                   (void **)&p) != XM_OK) _exit(12);
        if (p[0] != 3) _exit(13); /* served while the appliance lives */
        catch_signal(SIGBUS);
        char x = 1;
        if (write(ready[1], &x, 1) != 1) _exit(14);
        if (read(go[0], &x, 1) != 1) _exit(15);
        uint64_t v = p[(5u << 20) / 8]; /* the appliance is gone now */
        _exit(v == 0 ? 20 : 21);        /* reaching here at all is the failure */
    }
    close(ready[1]); /* a child that exits early is an end of file here, not a hang */
    close(go[0]);
    char x;
    cr_assert_eq(read(ready[0], &x, 1), 1, "child could not map");
    xt_kill9(&app);
    started = false;
    cr_assert_eq(write(go[1], &x, 1), 1);
    int wst;
    cr_assert_eq(waitpid(pid, &wst, 0), pid);
    cr_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 100 + SIGBUS,
              "the child did not get SIGBUS (exit %d, signal %d)",
              WIFEXITED(wst) ? WEXITSTATUS(wst) : -1, WIFSIGNALED(wst) ? WTERMSIG(wst) : -1);
    FILE *f = fopen(logpath, "r");
    cr_assert_not_null(f);
    char line[1024];
    bool named = false;
    char want[64];
    snprintf(want, sizeof(want), "region %llu offset %u", (unsigned long long)id, 5u << 20);
    while (fgets(line, sizeof(line), f) != NULL) named |= strstr(line, want) != NULL && strstr(line, "SIGBUS") != NULL;
    fclose(f);
    cr_assert(named, "no log line naming '%s' and SIGBUS", want);
    xt_cleanup(&app);
}

/* An eviction whose write-back fails (the appliance died): the fault that
 * wanted the room gets SIGBUS, and the victim's written pages stay in the
 * mapping, still dirty (xm_sync fails for them) — never dropped. */
static sigjmp_buf bus_jump;
static void bus_to_jump(int sig)
{
    (void)sig;
    siglongjmp(bus_jump, 1);
}

Test(map, failed_eviction_keeps_written_pages, .fini = teardown, .timeout = 120)
{
    start("tcp", "256M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    const uint64_t size = 4u << 20, budget = 1u << 20;
    xm_region_h r = filled_region(ctx, size, 5);
    uint64_t id = xm_region_id(r);
    xm_region_close(r);
    xm_disconnect(ctx);
    int go[2], ready[2];
    cr_assert_eq(pipe(go), 0);
    cr_assert_eq(pipe(ready), 0);
    char alice_cred[PATH_MAX + 80];
    xt_cred(app.secret, "alice", alice_cred, sizeof(alice_cred));
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2); /* the failures are logged: expected */
        xm_ctx_h c;
        xm_connect_opts_t co = {.size = sizeof(xm_connect_opts_t), .appliance = app.addr, .secret_file = alice_cred, .tenant = "alice",
                                .timeout_ms = 1000}; /* a connect under load (tests run two at a time) */
        if (xm_connect(&co, &c) != XM_OK) _exit(10);
        xm_region_h rr;
        if (xm_region_open(c, id, NULL, XM_ACCESS_READ_WRITE, &rr) != XM_OK) _exit(11);
        uint8_t *p;
        /* no read-ahead: every block in the cache is one the loop below wrote */
        xm_map_opts_t mo = {.size = sizeof(xm_map_opts_t), .cache_bytes = budget, .fetch_size = 65536, .flags = XM_MAP_NO_READAHEAD};
        if (xm_map(c, rr, 0, size, &mo, (void **)&p) != XM_OK) _exit(12);
        /* write a cache's worth, then note which pages are here */
        for (uint64_t off = 0; off < budget; off += 4096) p[off] = (uint8_t)(off >> 12) | 1;
        static unsigned char here[(1u << 20) / 4096];
        if (mincore(p, budget, here) != 0) _exit(13);
        int written = 0;
        for (uint64_t i = 0; i < budget / 4096; i++) written += here[i] & 1;
        if (written == 0) _exit(14);
        char x = 1;
        if (write(ready[1], &x, 1) != 1) _exit(15);
        if (read(go[0], &x, 1) != 1) _exit(16);
        /* the appliance is gone: reading far away needs room, which needs write-backs */
        struct sigaction sa = {.sa_handler = bus_to_jump};
        sigaction(SIGBUS, &sa, NULL);
        volatile uint8_t sink = 0;
        bool bus = false;
        for (uint64_t off = size / 2; off < size && !bus; off += 65536) {
            if (sigsetjmp(bus_jump, 1) == 0) {
                sink = p[off];
            } else {
                bus = true;
            }
        }
        (void)sink;
        if (!bus) _exit(17); /* fetches with the appliance dead cannot have worked */
        signal(SIGBUS, SIG_DFL);
        for (uint64_t i = 0; i < budget / 4096; i++) {
            if ((here[i] & 1) && p[i * 4096] != ((uint8_t)i | 1)) _exit(18); /* a written page lost */
        }
        if (xm_sync(p, size) == XM_OK) _exit(19); /* its stores never reached the appliance */
        xm_unmap_discard(p);
        _exit(0);
    }
    close(ready[1]); /* a child that exits early is an end of file here, not a hang */
    close(go[0]);
    char x;
    cr_assert_eq(read(ready[0], &x, 1), 1, "child could not map");
    xt_kill9(&app);
    started = false;
    cr_assert_eq(write(go[1], &x, 1), 1);
    int wst;
    cr_assert_eq(waitpid(pid, &wst, 0), pid);
    cr_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "child failed (exit %d, signal %d): 17 no SIGBUS, signal 7 or "
              "18 a written page lost, 19 xm_sync succeeded",
              WIFEXITED(wst) ? WEXITSTATUS(wst) : -1, WIFSIGNALED(wst) ? WTERMSIG(wst) : -1);
    xt_cleanup(&app);
}

/* Write-back that cannot complete: xm_sync and xm_unmap report it, the
 * written data stays readable in the mapping. */
Test(map, failed_write_back_is_reported, .fini = teardown, .timeout = 120)
{
    start("tcp", "256M");
    xm_ctx_h ctx;
    cr_assert_eq(xt_try_connect(&app, NULL, NULL, 300, &ctx), XM_OK);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, NULL, &r), XM_OK);
    uint8_t *p;
    cr_assert_eq(xm_map(ctx, r, 0, 1u << 20, NULL, (void **)&p), XM_OK);
    memset(p, 0x11, 1u << 20);
    cr_assert_eq(xm_sync(p, 1u << 20), XM_OK);
    memset(p + 8192, 0x22, 4096);
    xt_kill9(&app);
    started = false;
    cr_assert_neq(xm_sync(p, 1u << 20), XM_OK, "xm_sync succeeded with the appliance dead");
    cr_assert_neq(xm_sync(p, 1u << 20), XM_OK, "a second xm_sync forgot the dirty page");
    for (int i = 0; i < 4096; i++) cr_assert_eq(p[8192 + i], 0x22, "written data lost locally");
    cr_assert_eq(p[0], 0x11);
    cr_assert_neq(xm_unmap(p), XM_OK, "xm_unmap must not drop unsaved data silently");
    cr_assert_eq(p[8192], 0x22, "the mapping is still there after a failed unmap");
    cr_assert_geq(stat_of(p).writeback_errors, 2);
    xm_unmap_discard(p);
    xm_region_close(r);
    xm_disconnect(ctx);
    xt_cleanup(&app);
}

/* fork(): the child has no mapping at that address (MADV_DONTFORK), so it can
 * corrupt neither the parent's pages nor the appliance's copy. */
Test(map, fork_child_has_no_mapping, .fini = teardown, .timeout = 60)
{
    start("tcp", "256M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, NULL, &r), XM_OK);
    uint8_t *p;
    cr_assert_eq(xm_map(ctx, r, 0, 1u << 20, NULL, (void **)&p), XM_OK);
    memset(p, 0x33, 1u << 20);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        catch_signal(SIGSEGV);
        p[100] = 0x44; /* SIGSEGV: nothing is mapped here in the child */
        _exit(0);
    }
    int wst;
    cr_assert_eq(waitpid(pid, &wst, 0), pid);
    cr_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 100 + SIGSEGV, "child did not get SIGSEGV");
    cr_assert_eq(p[100], 0x33, "the child's store reached the parent");
    cr_assert_eq(xm_sync(p, 1u << 20), XM_OK);
    uint8_t b;
    cr_assert_eq(xm_read(r, 100, &b, 1), XM_OK);
    cr_assert_eq(b, 0x33);
    cr_assert_eq(xm_unmap(p), XM_OK);
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* An allocation from the manager striped over three appliances, mapped: loads
 * see what xm_write put on every stripe, stores (made while a small cache
 * evicts, so write-backs go to every appliance) come back through xm_read of
 * the allocation, across chunk boundaries, with fetch units smaller than, equal
 * to and larger than a stripe chunk. */
static xt_cluster_t stripe_cl;
static bool stripe_started;

static void stripe_teardown(void)
{
    if (stripe_started) {
        xt_cluster_stop(&stripe_cl);
        stripe_started = false;
    }
}

static void striped_round_trip(xm_ctx_h ctx, const char *policy, uint64_t size, uint32_t fetch,
                               uint64_t cache, uint64_t seed)
{
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, size, policy, NULL, &a), XM_OK, "%s: %s", policy, xm_last_error(ctx));
    uint8_t *data = malloc(size), *back = malloc(size);
    xt_fill(data, size, seed);
    cr_assert_eq(xm_write(a, 0, data, size), XM_OK, "%s", xm_last_error(ctx));

    uint8_t *p;
    xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = cache, .fetch_size = fetch};
    xm_status_t s = xm_map(ctx, a, 0, size, &o, (void **)&p);
    cr_assert_eq(s, XM_OK, "xm_map of a %s allocation: %s (%s)", policy, xm_status_str(s), xm_last_error(ctx));
    cr_assert(memcmp(p, data, size) == 0, "%s, fetch %u: mapped bytes differ from the allocation's", policy,
              fetch);
    /* stores on both sides of every 64K boundary, and a run over several chunks */
    for (uint64_t off = 65536; off < size; off += 65536) {
        p[off - 1] ^= 0xa5, data[off - 1] ^= 0xa5;
        p[off] ^= 0x5a, data[off] ^= 0x5a;
    }
    uint64_t run = XM_MIN_T(size / 2, (uint64_t)(3u << 20));
    memset(p + size / 4 + 17, 0x6c, run);
    memset(data + size / 4 + 17, 0x6c, run);
    p[size - 1] = 0x42, data[size - 1] = 0x42;
    xm_map_stats_t st = stat_of(p);
    cr_assert_gt(st.evictions, 0, "the %llu-byte cache was meant to evict", (unsigned long long)cache);
    cr_assert_leq(st.resident_bytes, st.budget_bytes);
    cr_assert_eq(xm_sync(p, size), XM_OK);
    cr_assert_eq(xm_read(a, 0, back, size), XM_OK, "%s", xm_last_error(ctx));
    if (memcmp(back, data, size) != 0) {
        uint64_t i = 0;
        while (back[i] == data[i]) i++;
        cr_assert_fail("%s, fetch %u: byte %llu on the appliances is %#x, stored %#x", policy, fetch,
                       (unsigned long long)i, back[i], data[i]);
    }
    /* once more after the stores, then unmapped: xm_unmap writes the rest back */
    for (uint64_t off = 4096 * 5; off < size; off += 4096 * 7) p[off] = (uint8_t)off, data[off] = (uint8_t)off;
    cr_assert_eq(xm_unmap(p), XM_OK);
    cr_assert_eq(xm_read(a, 0, back, size), XM_OK);
    cr_assert(memcmp(back, data, size) == 0, "%s, fetch %u: stores lost by xm_unmap", policy, fetch);
    /* and a fresh mapping at an offset that is not chunk-aligned sees them */
    const uint64_t off = 65536 * 3 - 4096 * 2;
    cr_assert_eq(xm_map(ctx, a, off, size - off, &o, (void **)&p), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(p, data + off, size - off) == 0, "%s: an offset mapping differs", policy);
    cr_assert_eq(xm_unmap(p), XM_OK);
    free(data);
    free(back);
    uint64_t id = xm_region_id(a);
    xm_alloc_close(a);
    cr_assert_eq(xm_free(ctx, id, NULL), XM_OK, "%s", xm_last_error(ctx));
}

Test(map, striped_allocation_round_trip, .fini = stripe_teardown, .timeout = 180)
{
    need_uffd();
    xt_cluster_start(&stripe_cl, 3, "256M", "tcp", NULL);
    stripe_started = true;
    xm_ctx_h ctx = xt_manager_connect(&stripe_cl.mgr, NULL);
    const uint64_t size = (8u << 20) + 12345; /* the last page is partial */
    /* the default chunk, fetch units far smaller than it */
    striped_round_trip(ctx, "stripe:3", size, 64u << 10, 1u << 20, 11);
    /* 64K chunks: 4K faults inside a chunk, 64K faults exactly one chunk, 256K faults over four
     * chunks on three appliances (with read-ahead) */
    striped_round_trip(ctx, "stripe:3:64K", size, 4096, 256u << 10, 12);
    striped_round_trip(ctx, "stripe:3:64K", size, 64u << 10, 1u << 20, 13);
    striped_round_trip(ctx, "stripe:3:64K", size, 256u << 10, 2u << 20, 14);
    xm_disconnect(ctx);
}

/* ---- swap: cache pages the kernel swapped out ---------------------------- */

static char swap_file[64];
static bool swap_added;

static void swap_teardown(void)
{
    if (swap_added) {
        char cmd[160];
        snprintf(cmd, sizeof(cmd), "swapoff %s", swap_file);
        cr_expect_eq(system(cmd), 0, "swapoff %s failed", swap_file);
        swap_added = false;
    }
    if (swap_file[0] != '\0') unlink(swap_file);
    teardown();
}

/* Some swap area to page out to: what the host has, else a 64 MiB swap file
 * of our own (root), removed by swap_teardown. */
static void need_swap(void)
{
    FILE *f = fopen("/proc/swaps", "r");
    int lines = 0;
    char line[256];
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) lines++;
    if (f != NULL) fclose(f);
    if (lines > 1) return;
    if (geteuid() != 0) cr_skip_test("no swap on this host, and adding a swap file needs root");
    snprintf(swap_file, sizeof(swap_file), "/var/tmp/xmem-test-swap.%d", (int)getpid());
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "dd if=/dev/zero of=%s bs=1M count=64 status=none && chmod 600 %s && "
             "mkswap %s >/dev/null 2>&1 && swapon -p -2 %s",
             swap_file, swap_file, swap_file, swap_file);
    if (system(cmd) != 0) cr_skip_test("cannot add a swap file on /var/tmp (%s)", cmd);
    swap_added = true;
}

/* Bytes of the VMA at addr in swap. */
static uint64_t vma_swap(const void *addr)
{
    uint64_t swap = vma_field(addr, "Swap");
    return swap == UINT64_MAX ? 0 : swap;
}

/* Push the pages of [p, p+len) out to swap; skip where the kernel does not. */
static void page_out(void *p, uint64_t len)
{
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
    if (madvise(p, len, MADV_PAGEOUT) != 0) cr_skip_test("MADV_PAGEOUT: %m");
    if (vma_swap(p) == 0) cr_skip_test("the kernel swapped none of the mapping's pages out");
}

/* With swap on, the kernel may swap out pages of the local cache (memory
 * pressure, or a DAMON pageout scheme). Stores to pages that are in swap
 * when xm_sync, an eviction or xm_unmap runs must still reach the
 * appliance, and loads must still see them. */
Test(map, swapped_out_pages_are_not_forgotten, .fini = swap_teardown, .timeout = 120)
{
    start("tcp", "256M");
    need_swap();
    xm_ctx_h ctx = xt_connect(&app, NULL);
    const uint64_t size = 4u << 20;
    xm_region_h r = filled_region(ctx, size, 9);
    uint64_t *p;
    /* xm_sync */
    cr_assert_eq(xm_map(ctx, r, 0, size, NULL, (void **)&p), XM_OK, "%s", xm_last_error(ctx));
    for (uint64_t pg = 0; pg < size / 4096; pg++) p[pg * 512 + 1] = pg * 7 + 1000;
    cr_assert_eq(xm_sync(p, size), XM_OK);
    for (uint64_t pg = 0; pg < size / 4096; pg += 3) p[pg * 512 + 2] = pg * 11 + 2000;
    page_out(p, size);
    cr_assert_eq(xm_sync(p, size), XM_OK);
    cr_assert_gt(vma_swap(p), 0, "the copy for the write-back may swap pages in, not all of them");
    for (uint64_t pg = 0; pg < size / 4096; pg++) {
        uint64_t w[3];
        cr_assert_eq(xm_read(r, pg * 4096, w, sizeof(w)), XM_OK);
        cr_assert_eq(w[1], pg * 7 + 1000);
        cr_assert_eq(w[2], pg % 3 == 0 ? pg * 11 + 2000 : (pg * 4096 + 16) * 3 + 9,
                     "page %llu: a store made before it was swapped out did not reach the appliance",
                     (unsigned long long)pg);
    }
    /* xm_unmap */
    for (uint64_t pg = 1; pg < size / 4096; pg += 5) p[pg * 512 + 3] = pg * 13 + 3000;
    page_out(p, size);
    cr_assert_eq(xm_unmap(p), XM_OK);
    for (uint64_t pg = 1; pg < size / 4096; pg += 5) {
        uint64_t w;
        cr_assert_eq(xm_read(r, pg * 4096 + 24, &w, sizeof(w)), XM_OK);
        cr_assert_eq(w, pg * 13 + 3000, "page %llu: lost at xm_unmap", (unsigned long long)pg);
    }

    /* eviction: a 1 MiB cache, stores to the first 1 MiB, swapped out, then
     * a pass over the rest pushes those blocks out */
    xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = 1u << 20};
    cr_assert_eq(xm_map(ctx, r, 0, size, &o, (void **)&p), XM_OK);
    for (uint64_t pg = 0; pg < 256; pg += 2) p[pg * 512 + 4] = pg * 17 + 4000;
    page_out(p, 1u << 20);
    volatile uint64_t sum = 0;
    for (uint64_t i = (1u << 20) / 8; i < size / 8; i += 512) sum += p[i];
    cr_assert_gt(stat_of(p).evictions, 0);
    for (uint64_t pg = 0; pg < 256; pg += 2) {
        uint64_t w;
        cr_assert_eq(p[pg * 512 + 4], pg * 17 + 4000, "page %llu: a load lost the store", (unsigned long long)pg);
        cr_assert_eq(xm_read(r, pg * 4096 + 32, &w, sizeof(w)), XM_OK);
        cr_assert_eq(w, pg * 17 + 4000, "page %llu: eviction lost a swapped-out store", (unsigned long long)pg);
    }
    cr_assert_eq(xm_unmap(p), XM_OK);
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* One context for the application's own I/O and for a mapping (issue 11: one
 * data path, no cloned contexts): the application reads and writes another
 * region with xm_read/xm_write while the handler threads serve the mapping's
 * faults on the same context; every byte of both checked. The mapping keeps
 * working after xm_disconnect (it holds the data path). */
typedef struct scanner {
    const uint64_t *p;
    uint64_t words;
    atomic_bool stop;
    uint64_t scans;
    uint64_t bad; /* 1 + word index of a wrong word, 0: none */
} scanner_t;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *scan_loop(void *arg)
{
    scanner_t *s = arg;
    while (!atomic_load(&s->stop) && s->bad == 0) {
        for (uint64_t i = 0; i < s->words && s->bad == 0; i += 32) {
            if (s->p[i] != i * 8 * 3 + 9) s->bad = i + 1;
        }
        s->scans++;
    }
    return NULL;
}

Test(map, application_io_while_faults_are_served, .fini = teardown, .timeout = 180)
{
    start("tcp", "256M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    const uint64_t size = 8u << 20;
    xm_region_h mr = filled_region(ctx, size, 9), io;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, NULL, &io), XM_OK);
    xm_map_opts_t mo = XM_MAP_OPTS_INIT;
    mo.cache_bytes = 1u << 20;
    mo.fetch_size = 65536;
    uint64_t *p;
    cr_assert_eq(xm_map(ctx, mr, 0, size, &mo, (void **)&p), XM_OK, "%s", xm_last_error(ctx));
    xm_region_close(mr); /* the mapping has its own copy of the handle */
    scanner_t s = {.p = p, .words = size / 8};
    pthread_t th;
    pthread_create(&th, NULL, scan_loop, &s);
    uint8_t *w = malloc(65536), *rd = malloc(65536);
    uint64_t t0 = now_ns(), rounds = 0;
    while (rounds < 50 || (now_ns() - t0 < 2000000000ull && s.scans < 3)) {
        size_t len = 1 + (size_t)(rounds * 7919 % 65536);
        uint64_t off = rounds * 4099 % ((1u << 20) - len);
        xt_fill(w, len, rounds);
        cr_assert_eq(xm_write(io, off, w, len), XM_OK, "%s", xm_last_error(ctx));
        cr_assert_eq(xm_read(io, off, rd, len), XM_OK, "%s", xm_last_error(ctx));
        cr_assert(memcmp(w, rd, len) == 0, "round %llu: read back differs", (unsigned long long)rounds);
        rounds++;
    }
    atomic_store(&s.stop, true);
    pthread_join(th, NULL);
    cr_assert_eq(s.bad, 0, "mapping word %llu wrong", (unsigned long long)(s.bad - 1));
    cr_assert_gt(s.scans, 0);
    cr_assert_gt(stat_of(p).evictions, 0, "the cache never had to evict: faults were not served throughout");
    xm_region_close(io);
    xm_disconnect(ctx);
    for (uint64_t i = 0; i < size / 8; i += 512) cr_assert_eq(p[i], i * 8 * 3 + 9, "after xm_disconnect: word %llu", (unsigned long long)i);
    cr_assert_eq(xm_unmap(p), XM_OK);
}
