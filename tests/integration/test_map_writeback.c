/* Mapped memory against a real xmemd: write-back with many writes in flight
 * loses nothing (scattered pages, racing stores, eviction beside xm_sync),
 * and a dead appliance is noticed within one operation timeout. */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static xt_appliance_t app;
static bool started;

static void teardown(void)
{
    if (started) {
        cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
        xt_cleanup(&app);
        started = false;
    }
}

static void need_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    if (fd < 0) cr_skip_test("userfaultfd unavailable (%m): needs root or vm.unprivileged_userfaultfd");
    close(fd);
}

static void start(const char *provider)
{
    need_uffd();
    xt_start(&app, &(xt_opts_t){.provider = provider, .pool = "256M"});
    started = true;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Every byte of region r equals shadow (read in 1 MiB pieces); the first differing page, or -1. */
static int64_t first_difference(xm_region_h r, const uint8_t *shadow, uint64_t size)
{
    const uint64_t piece = 1u << 20;
    uint8_t *buf = malloc(piece);
    cr_assert_not_null(buf);
    int64_t bad = -1;
    for (uint64_t off = 0; off < size && bad < 0; off += piece) {
        uint64_t n = size - off < piece ? size - off : piece;
        cr_assert_eq(xm_read(r, off, buf, n), XM_OK);
        if (memcmp(buf, shadow + off, n) == 0) continue;
        for (uint64_t i = 0; i < n; i += 4096) {
            if (memcmp(buf + i, shadow + off + i, 4096) != 0) {
                bad = (int64_t)((off + i) / 4096);
                break;
            }
        }
    }
    free(buf);
    return bad;
}

/* Scattered 8-byte stores (a page each) all reach the appliance with one xm_sync. */
XT_TEST_PROVIDERS(map_writeback, scattered_pages_all_written_back, .fini = teardown, .timeout = 180)
{
    start(provider);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    const uint64_t size = 64u << 20, npages = size / 4096, dirty = 8192;
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, size, NULL, &r), XM_OK);
    uint8_t *shadow = calloc(1, size);
    cr_assert_not_null(shadow);
    uint8_t *p;
    xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = size};
    cr_assert_eq(xm_map(ctx, r, 0, size, &o, (void **)&p), XM_OK, "%s", xm_last_error(ctx));
    for (uint64_t i = 0; i < npages; i++) cr_assert_eq(p[i * 4096], 0); /* all resident, none written */
    uint64_t seed = 42;
    bool *hit = calloc(npages, sizeof(bool));
    cr_assert_not_null(hit);
    for (int round = 0; round < 3; round++) {
        uint64_t distinct = 0;
        memset(hit, 0, npages * sizeof(bool));
        for (uint64_t i = 0; i < dirty; i++) {
            uint64_t v = rng_next(&seed), pg = v % npages, off = pg * 4096 + (v >> 32) % 512 * 8;
            memcpy(p + off, &v, 8);
            memcpy(shadow + off, &v, 8);
            distinct += !hit[pg];
            hit[pg] = true;
        }
        xm_map_stats_t before = {.size = sizeof(xm_map_stats_t)}, after = {.size = sizeof(xm_map_stats_t)};
        cr_assert_eq(xm_map_stat(p, &before), XM_OK);
        cr_assert_eq(xm_sync(p, size), XM_OK, "%s", xm_last_error(ctx));
        cr_assert_eq(xm_map_stat(p, &after), XM_OK);
        uint64_t written = after.writeback_pages - before.writeback_pages;
        /* the pages stored to, not every page */
        cr_assert(written >= distinct && written <= distinct + distinct / 10,
                  "round %d: %llu pages written back for %llu pages stored to", round, (unsigned long long)written,
                  (unsigned long long)distinct);
        int64_t bad = first_difference(r, shadow, size);
        cr_assert_eq(bad, -1, "round %d: page %lld differs on the appliance after xm_sync", round, (long long)bad);
    }
    xm_unmap_discard(p);
    free(hit);
    free(shadow);
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* Stores race write-back: a thread stores at random all over a mapping 16
 * times its cache (faults, evictions with their write-back) while another
 * calls xm_sync over and over; every store made before the last xm_sync is
 * on the appliance after it. A page's recorded hash must be that of the copy
 * written, or eviction would skip a page whose newer content never went back. */
#define RACE_STORES 4000u /* on pages of a mapping 16x its cache: most fault, evicting a written block */

typedef struct racer {
    uint8_t *p, *shadow;
    uint64_t npages;
    atomic_bool done;
} racer_t;

static void *store_randomly(void *arg)
{
    racer_t *rc = arg;
    uint64_t seed = 7;
    for (unsigned i = 0; i < RACE_STORES; i++) {
        uint64_t v = rng_next(&seed), off = (v % rc->npages) * 4096 + (v >> 32) % 512 * 8;
        memcpy(rc->p + off, &v, 8);
        memcpy(rc->shadow + off, &v, 8);
    }
    atomic_store(&rc->done, true);
    return NULL;
}

XT_TEST_PROVIDERS(map_writeback, racing_stores_survive_sync_and_eviction, .fini = teardown, .timeout = 240)
{
    start(provider);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    const uint64_t size = 32u << 20;
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, size, NULL, &r), XM_OK);
    racer_t rc = {.npages = size / 4096, .shadow = calloc(1, size)};
    cr_assert_not_null(rc.shadow);
    xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = size / 16, .fetch_size = 65536};
    cr_assert_eq(xm_map(ctx, r, 0, size, &o, (void **)&rc.p), XM_OK, "%s", xm_last_error(ctx));
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, store_randomly, &rc), 0);
    int syncs = 0;
    for (; !atomic_load(&rc.done); syncs++) {
        cr_assert_eq(xm_sync(rc.p, size), XM_OK, "%s", xm_last_error(ctx));
        usleep(20000); /* a sync pins what is resident: faults wait for room until it ends */
    }
    pthread_join(t, NULL);
    cr_assert_eq(xm_sync(rc.p, size), XM_OK, "%s", xm_last_error(ctx));
    xm_map_stats_t st = {.size = sizeof(xm_map_stats_t)};
    cr_assert_eq(xm_map_stat(rc.p, &st), XM_OK);
    cr_assert_gt(st.evictions, 0, "the stores never made the cache evict (faults %llu, resident %llu, budget %llu, "
                 "stores %u)", (unsigned long long)st.faults, (unsigned long long)st.resident_bytes,
                 (unsigned long long)st.budget_bytes, RACE_STORES);
    cr_assert_gt(syncs, 2, "only %d xm_sync calls raced the stores", syncs);
    int64_t bad = first_difference(r, rc.shadow, size);
    cr_assert_eq(bad, -1, "page %lld differs on the appliance after the last xm_sync (%d syncs, %u stores, "
                 "%llu evictions)", (long long)bad, syncs, RACE_STORES, (unsigned long long)st.evictions);
    xm_unmap_discard(rc.p);
    free(rc.shadow);
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* Generous: one operation timeout and half of one more for the retries' pauses, a
 * sanitizer build and a loaded machine. The behaviour this replaces took two or
 * three timeouts (each retry of a fault, each read after the first, timed out). */
#define DEAD_TIMEOUT_MS 4000u
#define DEAD_BOUND_MS (DEAD_TIMEOUT_MS + DEAD_TIMEOUT_MS / 2)

static void exit_on_signal(int sig)
{
    syscall(SYS_exit_group, 100 + sig); /* raw: no sanitizer or atexit work in a signal handler */
}

/* kill -9 of the appliance under a mapping: the next fault on a page not yet
 * here gets SIGBUS, within one timeout. */
XT_TEST_PROVIDERS(map_writeback, dead_appliance_fault_is_sigbus_within_a_timeout, .fini = teardown, .timeout = 120)
{
    start(provider);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 8u << 20, NULL, &r), XM_OK);
    uint64_t id = xm_region_id(r);
    xm_region_close(r);
    xm_disconnect(ctx);
    int go[2], ready[2];
    cr_assert_eq(pipe(go), 0);
    cr_assert_eq(pipe(ready), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2); /* the failure is logged: expected */
        xm_ctx_h c;
        if (xt_try_connect(&app, NULL, NULL, DEAD_TIMEOUT_MS, &c) != XM_OK) _exit(10);
        xm_region_h rr;
        if (xm_region_open(c, id, NULL, XM_ACCESS_READ_WRITE, &rr) != XM_OK) _exit(11);
        volatile uint64_t *q;
        xm_map_opts_t mo = {.size = sizeof(xm_map_opts_t), .flags = XM_MAP_NO_READAHEAD};
        if (xm_map(c, rr, 0, 8u << 20, &mo, (void **)&q) != XM_OK) _exit(12);
        if (q[0] != 0) _exit(13); /* served while the appliance lives */
        struct sigaction sa = {.sa_handler = exit_on_signal};
        sigaction(SIGBUS, &sa, NULL);
        char x = 1;
        if (write(ready[1], &x, 1) != 1) _exit(14);
        if (read(go[0], &x, 1) != 1) _exit(15);
        uint64_t v = q[(5u << 20) / 8]; /* the appliance is gone now */
        _exit(v == 0 ? 20 : 21);        /* reaching here at all is the failure */
    }
    char x;
    cr_assert_eq(read(ready[0], &x, 1), 1, "child could not map");
    xt_kill9(&app);
    started = false;
    uint64_t t0 = xt_now_ms();
    cr_assert_eq(write(go[1], &x, 1), 1);
    int wst;
    cr_assert_eq(waitpid(pid, &wst, 0), pid);
    uint64_t took = xt_now_ms() - t0;
    cr_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 100 + SIGBUS, "the child did not get SIGBUS (exit %d, signal %d)",
              WIFEXITED(wst) ? WEXITSTATUS(wst) : -1, WIFSIGNALED(wst) ? WTERMSIG(wst) : -1);
    cr_assert_leq(took, DEAD_BOUND_MS, "SIGBUS came %llu ms after the fault, timeout %u ms", (unsigned long long)took,
                  DEAD_TIMEOUT_MS);
    cr_log_info("%s: SIGBUS %llu ms after the fault on a killed appliance (timeout %u ms)", provider,
                (unsigned long long)took, DEAD_TIMEOUT_MS);
    xt_cleanup(&app);
}

/* kill -9 of the appliance: reads fail, and three in a row take less than one
 * timeout and a half together (not a timeout each). */
XT_TEST_PROVIDERS(map_writeback, dead_appliance_reads_fail_within_a_timeout, .fini = teardown, .timeout = 120)
{
    start(provider);
    xm_ctx_h ctx;
    cr_assert_eq(xt_try_connect(&app, NULL, NULL, DEAD_TIMEOUT_MS, &ctx), XM_OK);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, NULL, &r), XM_OK);
    char buf[4096];
    cr_assert_eq(xm_read(r, 0, buf, sizeof(buf)), XM_OK);
    xt_kill9(&app);
    started = false;
    uint64_t t0 = xt_now_ms();
    for (int i = 0; i < 3; i++) {
        uint64_t t1 = xt_now_ms();
        xm_status_t s = xm_read(r, 0, buf, sizeof(buf));
        cr_assert_neq(s, XM_OK, "read %d from a killed appliance succeeded", i);
        cr_log_info("%s: read %d from a killed appliance: %s after %llu ms (%s)", provider, i, xm_status_str(s),
                    (unsigned long long)(xt_now_ms() - t1), xm_last_error(ctx));
    }
    uint64_t took = xt_now_ms() - t0;
    cr_assert_leq(took, DEAD_BOUND_MS, "three reads from a killed appliance took %llu ms, timeout %u ms",
                  (unsigned long long)took, DEAD_TIMEOUT_MS);
    xm_region_close(r);
    xm_disconnect(ctx);
    xt_cleanup(&app);
}
