/* Region copy, appliance to appliance (xm_region_copy, src/appliance/copy.c): two xmemd on
 * loopback; the source appliance writes into the target's region, every byte checked there
 * by a client. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
/* the attacks below forge what a hostile client can put in a request: a region id it was not
 * given, a made-up key */
#include "../../src/client/client.h"

#define MIN(a, b) ((a) < (b) ? (a) : (b))

static xt_appliance_t src_app, dst_app;

static void teardown(void)
{
    if (src_app.pid > 0) cr_expect_eq(xt_stop(&src_app), 0, "source xmemd did not shut down cleanly");
    if (dst_app.pid > 0) cr_expect_eq(xt_stop(&dst_app), 0, "target xmemd did not shut down cleanly");
    xt_cleanup(&src_app);
    xt_cleanup(&dst_app);
}

/* Two appliances of one cluster (one secret). */
static void start_two(const char *pool)
{
    xt_start(&src_app, &(xt_opts_t){.pool = pool});
    xt_start(&dst_app, &(xt_opts_t){.pool = pool, .secret = src_app.secret});
}

typedef struct prog {
    uint64_t last, total;
    int calls;
    bool decreased;
    /* an action once done passes at */
    uint64_t at;
    void (*action)(struct prog *p);
    bool acted;
    xm_ctx_h ctx;
    uint64_t id;
} prog_t;

static void on_progress(uint64_t done, uint64_t total, void *arg)
{
    prog_t *p = arg;
    if (p->calls > 0 && done < p->last) p->decreased = true;
    p->last = done;
    p->total = total;
    p->calls++;
    if (p->action != NULL && !p->acted && done >= p->at && done < total) {
        p->acted = true;
        p->action(p);
    }
}

static void write_pattern(xm_region_h r, uint64_t off, uint64_t len, uint64_t seed)
{
    static uint8_t buf[4u << 20];
    for (uint64_t o = 0; o < len; o += sizeof(buf)) {
        size_t n = (size_t)MIN(sizeof(buf), len - o);
        xt_fill(buf, n, seed + (off + o) / sizeof(buf));
        cr_assert_eq(xm_write(r, off + o, buf, n), XM_OK);
    }
}

/* Every byte of [off, off+len) of r: the pattern (seed) or zeros (seed 0). */
static void check_range(xm_region_h r, uint64_t off, uint64_t len, uint64_t seed)
{
    static uint8_t want[4u << 20], got[4u << 20];
    for (uint64_t o = 0; o < len; o += sizeof(got)) {
        size_t n = (size_t)MIN(sizeof(got), len - o);
        if (seed != 0) xt_fill(want, n, seed + (off + o) / sizeof(want));
        else memset(want, 0, n);
        cr_assert_eq(xm_read(r, off + o, got, n), XM_OK);
        cr_assert(memcmp(want, got, n) == 0, "target differs in [%llu, %llu)",
                  (unsigned long long)(off + o), (unsigned long long)(off + o + n));
    }
}

Test(copy, copies_64m_every_byte_with_progress, .fini = teardown, .timeout = 120)
{
    start_two("256M");
    xm_ctx_h a = xt_connect(&src_app, NULL), b = xt_connect(&dst_app, NULL);
    const uint64_t size = 64ull << 20;
    xm_region_h s, t;
    cr_assert_eq(xm_region_create(a, size, "src", &s), XM_OK);
    cr_assert_eq(xm_region_create(b, size, "dst", &t), XM_OK);
    write_pattern(s, 0, size, 1001);
    prog_t p = {0};
    xm_copy_opts_t o = XM_COPY_OPTS_INIT;
    o.progress = on_progress;
    o.arg = &p;
    o.chunk = 1u << 20; /* 64 writes: progress seen on the way */
    o.poll_ms = 2;
    uint64_t done = 0;
    cr_assert_eq(xm_region_copy(s, t, &o, &done), XM_OK, "%s", xm_last_error(a));
    cr_assert_eq(done, size);
    cr_assert_geq(p.calls, 2, "progress callback called %d times", p.calls);
    cr_assert(!p.decreased, "progress went backwards");
    cr_assert_eq(p.last, size);
    cr_assert_eq(p.total, size);
    check_range(t, 0, size, 1001);
    xm_region_close(s);
    xm_region_close(t);
    xm_disconnect(a);
    xm_disconnect(b);
}

Test(copy, sparse_region_copies_only_data_rest_reads_zeros, .fini = teardown, .timeout = 120)
{
    start_two("8G");
    xm_ctx_h a = xt_connect(&src_app, NULL), b = xt_connect(&dst_app, NULL);
    const uint64_t size = 4ull << 30;
    xm_region_h s, t;
    cr_assert_eq(xm_region_create(a, size, "sparse", &s), XM_OK);
    cr_assert_eq(xm_region_create(b, size, "dst", &t), XM_OK);
    /* a few MiB here and there, one run across 2 MiB extents */
    const uint64_t at[3] = {0, 1ull << 30, size - (3ull << 20)};
    for (int i = 0; i < 3; i++) write_pattern(s, at[i], 1ull << 20, 2000 + (uint64_t)i);
    write_pattern(s, (2ull << 30) - (1ull << 20), 2ull << 20, 2100);
    cr_assert_eq(xm_region_copy(s, t, NULL, NULL), XM_OK, "%s", xm_last_error(a));
    for (int i = 0; i < 3; i++) check_range(t, at[i], 1ull << 20, 2000 + (uint64_t)i);
    check_range(t, (2ull << 30) - (1ull << 20), 2ull << 20, 2100);
    /* the holes read zeros, and the target holds only what was written */
    check_range(t, 1ull << 20, 8ull << 20, 0);
    check_range(t, (3ull << 30), 4ull << 20, 0);
    xm_region_info_t info;
    cr_assert_eq(xm_region_stat(b, xm_region_id(t), NULL, &info), XM_OK);
    cr_assert_leq(info.resident, 32ull << 20, "the target holds %llu bytes: holes were written",
                  (unsigned long long)info.resident);
    xm_region_close(s);
    xm_region_close(t);
    xm_disconnect(a);
    xm_disconnect(b);
}

Test(copy, caller_without_read_access_is_refused, .fini = teardown, .timeout = 60)
{
    start_two("256M");
    xm_ctx_h a = xt_connect(&src_app, NULL);
    xm_ctx_h mallory = xt_connect(&src_app, "mallory"), mb = xt_connect(&dst_app, "mallory");
    xm_region_h secret, mine, t;
    cr_assert_eq(xm_region_create(a, 4u << 20, "secret", &secret), XM_OK);
    write_pattern(secret, 0, 4u << 20, 3001);
    cr_assert_eq(xm_region_create(mallory, 4u << 20, "mine", &mine), XM_OK);
    cr_assert_eq(xm_region_create(mb, 4u << 20, "dst", &t), XM_OK);
    /* mallory names alice's region in the request (a handle she was never given) */
    mine->id = xm_region_id(secret);
    uint64_t done = 1;
    xm_status_t st = xm_region_copy(mine, t, NULL, &done);
    cr_assert_eq(st, XM_ERR_PERM, "copy of another tenant's region: %s (%s)", xm_status_str(st),
                 xm_last_error(mallory));
    cr_assert_eq(done, 0);
    check_range(t, 0, 4u << 20, 0);
    xm_region_close(mine);
    xm_region_close(t);
    xm_region_close(secret);
    xm_disconnect(mallory);
    xm_disconnect(mb);
    xm_disconnect(a);
}

Test(copy, wrong_target_key_fails_target_untouched, .fini = teardown, .timeout = 60)
{
    start_two("256M");
    xm_ctx_h a = xt_connect(&src_app, NULL), b = xt_connect(&dst_app, NULL);
    xm_region_h s, t;
    cr_assert_eq(xm_region_create(a, 8u << 20, "src", &s), XM_OK);
    cr_assert_eq(xm_region_create(b, 8u << 20, "dst", &t), XM_OK);
    write_pattern(s, 0, 8u << 20, 4001);
    uint64_t key = t->key;
    t->key = key ^ 0x5a5a5a5a5a5a5a5aull; /* a key the caller does not hold */
    xm_status_t st = xm_region_copy(s, t, NULL, NULL);
    t->key = key;
    cr_assert_eq(st, XM_ERR_ACCESS, "wrong key: %s (%s)", xm_status_str(st), xm_last_error(a));
    cr_assert(strstr(xm_last_error(a), "refused") != NULL, "message: %s", xm_last_error(a));
    check_range(t, 0, 8u << 20, 0);
    /* both appliances serve on, and a right key then copies */
    cr_assert_eq(xm_region_copy(s, t, NULL, NULL), XM_OK, "%s", xm_last_error(a));
    check_range(t, 0, 8u << 20, 4001);
    xm_region_close(s);
    xm_region_close(t);
    xm_disconnect(a);
    xm_disconnect(b);
}

static void kill_target(prog_t *p)
{
    (void)p;
    xt_kill9(&dst_app);
}

Test(copy, target_killed_mid_copy_errors_source_serves_on, .fini = teardown, .timeout = 120)
{
    start_two("512M");
    xm_ctx_h a = xt_connect(&src_app, NULL), b = xt_connect(&dst_app, NULL);
    const uint64_t size = 256ull << 20;
    xm_region_h s, t;
    cr_assert_eq(xm_region_create(a, size, "src", &s), XM_OK);
    cr_assert_eq(xm_region_create(b, size, "dst", &t), XM_OK);
    write_pattern(s, 0, size, 5001);
    prog_t p = {.at = 1, .action = kill_target};
    xm_copy_opts_t o = XM_COPY_OPTS_INIT;
    o.progress = on_progress;
    o.arg = &p;
    o.chunk = 64u << 10; /* slow enough to be caught in the middle */
    o.poll_ms = 1;
    uint64_t done = 0;
    uint64_t t0 = xt_now_ms();
    xm_status_t st = xm_region_copy(s, t, &o, &done);
    cr_assert(p.acted, "the copy ended before the target could be killed");
    cr_assert_neq(st, XM_OK);
    cr_assert(st == XM_ERR_DISCONNECTED || st == XM_ERR_CONNECT || st == XM_ERR_TIMEOUT,
              "%s: %s", xm_status_str(st), xm_last_error(a));
    cr_assert(strstr(xm_last_error(a), "target appliance") != NULL, "message: %s", xm_last_error(a));
    cr_assert_lt(done, size);
    cr_assert_lt(xt_now_ms() - t0, 60000);
    /* the source appliance serves on */
    uint8_t buf[4096];
    cr_assert_eq(xm_read(s, 0, buf, sizeof(buf)), XM_OK);
    xm_region_h more;
    cr_assert_eq(xm_region_create(a, 1u << 20, NULL, &more), XM_OK, "%s", xm_last_error(a));
    xm_region_close(more);
    xm_region_close(s);
    xm_region_close(t);
    xm_disconnect(a);
    xm_disconnect(b);
}

static char resume_dir[256];

static void kill_file_target(prog_t *p)
{
    (void)p;
    xt_kill9(&dst_app);
}

Test(copy, interrupted_copy_resumes_from_offset, .fini = teardown, .timeout = 180)
{
    /* the target keeps its regions across a kill -9 (a file pool), so the copy is resumed
     * into the same region */
    xt_start(&src_app, &(xt_opts_t){.pool = "512M"});
    xt_start(&dst_app, &(xt_opts_t){.pool = "512M", .secret = src_app.secret});
    snprintf(resume_dir, sizeof(resume_dir), "%s", dst_app.dir);
    cr_assert_eq(xt_stop(&dst_app), 0);
    char backing[300];
    snprintf(backing, sizeof(backing), "file:%s/pool", resume_dir);
    xt_start(&dst_app, &(xt_opts_t){.pool = "512M", .backing = backing, .dir = resume_dir,
                                    .secret = src_app.secret});
    xm_ctx_h a = xt_connect(&src_app, NULL), b = xt_connect(&dst_app, NULL);
    const uint64_t size = 128ull << 20;
    xm_region_h s, t;
    cr_assert_eq(xm_region_create(a, size, "src", &s), XM_OK);
    cr_assert_eq(xm_region_create(b, size, "dst", &t), XM_OK);
    write_pattern(s, 0, size, 6001);
    prog_t p = {.at = size / 4, .action = kill_file_target};
    xm_copy_opts_t o = XM_COPY_OPTS_INIT;
    o.progress = on_progress;
    o.arg = &p;
    o.chunk = 64u << 10;
    o.poll_ms = 1;
    uint64_t done = 0;
    xm_status_t st = xm_region_copy(s, t, &o, &done);
    cr_assert(p.acted, "the copy ended before the target could be killed");
    cr_assert_neq(st, XM_OK);
    cr_assert_gt(done, 0);
    cr_assert_lt(done, size);
    xm_region_close(t);
    xm_disconnect(b);

    xt_start(&dst_app, &(xt_opts_t){.pool = "512M", .backing = backing, .dir = resume_dir,
                                    .secret = src_app.secret});
    b = xt_connect(&dst_app, NULL);
    cr_assert_eq(xm_region_open(b, 0, "dst", XM_ACCESS_READ_WRITE, &t), XM_OK, "%s", xm_last_error(b));
    /* what was acknowledged is there; the rest comes with the resumed copy */
    check_range(t, 0, done, 6001);
    xm_copy_opts_t r = XM_COPY_OPTS_INIT;
    r.offset = done;
    uint64_t done2 = 0;
    cr_assert_eq(xm_region_copy(s, t, &r, &done2), XM_OK, "%s", xm_last_error(a));
    cr_assert_eq(done2, size);
    check_range(t, 0, size, 6001);
    xm_region_close(s);
    xm_region_close(t);
    xm_disconnect(a);
    xm_disconnect(b);
}

static void destroy_source(prog_t *p)
{
    cr_assert_eq(xm_region_destroy(p->ctx, p->id, NULL), XM_OK, "%s", xm_last_error(p->ctx));
}

Test(copy, source_destroyed_mid_copy_clear_error, .fini = teardown, .timeout = 120)
{
    start_two("512M");
    xm_ctx_h a = xt_connect(&src_app, NULL), b = xt_connect(&dst_app, NULL);
    const uint64_t size = 256ull << 20;
    xm_region_h s, t;
    cr_assert_eq(xm_region_create(a, size, "src", &s), XM_OK);
    cr_assert_eq(xm_region_create(b, size, "dst", &t), XM_OK);
    write_pattern(s, 0, size, 7001);
    prog_t p = {.at = 1, .action = destroy_source, .ctx = a, .id = xm_region_id(s)};
    xm_copy_opts_t o = XM_COPY_OPTS_INIT;
    o.progress = on_progress;
    o.arg = &p;
    o.chunk = 64u << 10;
    o.poll_ms = 1;
    uint64_t done = 0;
    xm_status_t st = xm_region_copy(s, t, &o, &done);
    cr_assert(p.acted, "the copy ended before the source could be destroyed");
    cr_assert_eq(st, XM_ERR_NOT_FOUND, "%s: %s", xm_status_str(st), xm_last_error(a));
    cr_assert(strstr(xm_last_error(a), "destroyed during the copy") != NULL, "message: %s",
              xm_last_error(a));
    cr_assert_lt(done, size);
    /* what was acknowledged is the source's bytes, never zeros from after the destroy */
    check_range(t, 0, done, 7001);
    /* the source appliance serves on */
    xm_region_h more;
    cr_assert_eq(xm_region_create(a, 1u << 20, NULL, &more), XM_OK, "%s", xm_last_error(a));
    xm_region_close(more);
    xm_region_close(s);
    xm_region_close(t);
    xm_disconnect(a);
    xm_disconnect(b);
}

Test(copy, cli_region_copy_creates_the_target_and_copies, .fini = teardown, .timeout = 90)
{
    start_two("256M");
    xm_ctx_h a = xt_connect(&src_app, NULL), b = xt_connect(&dst_app, NULL);
    const uint64_t size = 16ull << 20;
    xm_region_h s, t;
    cr_assert_eq(xm_region_create(a, size, "cli-src", &s), XM_OK);
    write_pattern(s, 0, size, 8001);
    char to[128], *out = NULL, *err = NULL;
    snprintf(to, sizeof(to), "%s:cli-dst", dst_app.addr);
    int rc = xt_cli(&src_app, NULL, 0, &out, NULL, &err, "region", "copy", "cli-src", "--to", to, NULL);
    cr_assert_eq(rc, 0, "xmem region copy: exit %d: %s", rc, err != NULL ? err : "");
    cr_assert_eq(xm_region_open(b, 0, "cli-dst", XM_ACCESS_READ, &t), XM_OK, "%s", xm_last_error(b));
    cr_assert_eq(strtoull(out, NULL, 10), xm_region_id(t), "printed: %s", out);
    cr_assert_eq(xm_region_size(t), size);
    check_range(t, 0, size, 8001);
    free(out);
    free(err);
    /* a bad --to is a usage error */
    rc = xt_cli(&src_app, NULL, 0, NULL, NULL, &err, "region", "copy", "cli-src", "--to", "nowhere", NULL);
    cr_assert_eq(rc, 2);
    free(err);
    xm_region_close(s);
    xm_region_close(t);
    xm_disconnect(a);
    xm_disconnect(b);
}

Test(copy, target_address_must_be_a_unicast_data_address, .fini = teardown, .timeout = 60)
{
    start_two("256M");
    xm_ctx_h a = xt_connect(&src_app, NULL), b = xt_connect(&dst_app, NULL);
    xm_region_h s, t;
    cr_assert_eq(xm_region_create(a, 1u << 20, "src", &s), XM_OK);
    cr_assert_eq(xm_region_create(b, 1u << 20, "dst", &t), XM_OK);
    write_pattern(s, 0, 1u << 20, 9001);
    /* a hostile client points the source appliance at hosts of its choosing */
    xm__dp_peer_t *p = &b->dp->peer_chunk[0][0];
    struct sockaddr_in saved;
    cr_assert_eq(p->addr_len, sizeof(saved));
    memcpy(&saved, p->addr, sizeof(saved));
    const char *bad[] = {"224.0.0.1", "255.255.255.255", "0.1.2.3", "240.0.0.1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sockaddr_in sin = saved;
        inet_pton(AF_INET, bad[i], &sin.sin_addr);
        memcpy(p->addr, &sin, sizeof(sin));
        xm_status_t st = xm_region_copy(s, t, NULL, NULL);
        cr_assert_eq(st, XM_ERR_INVALID, "%s: %s (%s)", bad[i], xm_status_str(st), xm_last_error(a));
        cr_assert(strstr(xm_last_error(a), "unicast") != NULL, "%s: %s", bad[i], xm_last_error(a));
    }
    struct sockaddr_in noport = saved;
    noport.sin_port = 0;
    memcpy(p->addr, &noport, sizeof(noport));
    cr_assert_eq(xm_region_copy(s, t, NULL, NULL), XM_ERR_INVALID, "%s", xm_last_error(a));
    /* a port where nothing listens: the copy fails, it does not hang */
    struct sockaddr_in closed = saved;
    closed.sin_port = htons(1);
    memcpy(p->addr, &closed, sizeof(closed));
    xm_status_t st = xm_region_copy(s, t, NULL, NULL);
    cr_assert_eq(st, XM_ERR_CONNECT, "%s (%s)", xm_status_str(st), xm_last_error(a));
    memcpy(p->addr, &saved, sizeof(saved));
    cr_assert_eq(xm_region_copy(s, t, NULL, NULL), XM_OK, "%s", xm_last_error(a));
    check_range(t, 0, 1u << 20, 9001);
    xm_region_close(s);
    xm_region_close(t);
    xm_disconnect(a);
    xm_disconnect(b);
}

typedef struct copier {
    const xt_appliance_t *src, *dst;
    uint64_t src_id;
    xm_status_t status;
    char why[512];
    pthread_barrier_t *go;
} copier_t;

static void *copier_main(void *arg)
{
    copier_t *c = arg;
    xm_ctx_h a = xt_connect(c->src, NULL), b = xt_connect(c->dst, NULL);
    xm_region_h s, t;
    c->status = xm_region_open(a, c->src_id, NULL, XM_ACCESS_READ, &s);
    if (c->status == XM_OK) c->status = xm_region_create(b, 256ull << 20, NULL, &t);
    pthread_barrier_wait(c->go);
    if (c->status == XM_OK) {
        xm_copy_opts_t o = XM_COPY_OPTS_INIT;
        o.chunk = 64u << 10;
        c->status = xm_region_copy(s, t, &o, NULL);
        snprintf(c->why, sizeof(c->why), "%s", xm_last_error(a));
        xm_region_close(s);
        xm_region_close(t);
    }
    xm_disconnect(a);
    xm_disconnect(b);
    return NULL;
}

Test(copy, copies_are_bounded_per_tenant, .fini = teardown, .timeout = 180)
{
    start_two("1G");
    xm_ctx_h a = xt_connect(&src_app, NULL);
    xm_region_h s;
    cr_assert_eq(xm_region_create(a, 256ull << 20, "src", &s), XM_OK);
    write_pattern(s, 0, 256ull << 20, 9101);
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, 3);
    copier_t c[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        c[i] = (copier_t){.src = &src_app, .dst = &dst_app, .src_id = xm_region_id(s), .go = &go};
        pthread_create(&th[i], NULL, copier_main, &c[i]);
    }
    int ok = 0, again = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        ok += c[i].status == XM_OK;
        again += c[i].status == XM_ERR_AGAIN;
        if (c[i].status == XM_ERR_AGAIN)
            cr_assert(strstr(c[i].why, "too many copies") != NULL, "%s", c[i].why);
    }
    pthread_barrier_destroy(&go);
    /* two at a time per tenant: the third started while two ran is refused */
    cr_assert_eq(again, 1, "%d of 3 simultaneous copies refused (ok %d)", again, ok);
    cr_assert_eq(ok, 2);
    xm_region_close(s);
    xm_disconnect(a);
}

typedef struct writer {
    const xt_appliance_t *app;
    uint64_t id, size;
    volatile int stop;
    uint64_t rounds;
} writer_t;

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    xm_ctx_h c = xt_connect(w->app, NULL);
    xm_region_h r;
    if (xm_region_open(c, w->id, NULL, XM_ACCESS_READ_WRITE, &r) != XM_OK) return NULL;
    static uint8_t nb[1u << 20];
    memset(nb, 0xee, sizeof(nb));
    while (!w->stop) {
        for (uint64_t off = 0; off < w->size && !w->stop; off += sizeof(nb)) {
            xm_write(r, off, nb, sizeof(nb));
        }
        w->rounds++;
    }
    xm_region_close(r);
    xm_disconnect(c);
    return NULL;
}

Test(copy, concurrent_writer_each_byte_old_or_new_quiet_copy_exact, .fini = teardown, .timeout = 180)
{
    /* a copy is not a snapshot: bytes written during it may or may not be in it, but no byte
     * is anything else; once the writer stops, a copy is exact */
    start_two("512M");
    xm_ctx_h a = xt_connect(&src_app, NULL), b = xt_connect(&dst_app, NULL);
    const uint64_t size = 64ull << 20;
    xm_region_h s, t;
    cr_assert_eq(xm_region_create(a, size, "src", &s), XM_OK);
    cr_assert_eq(xm_region_create(b, size, "dst", &t), XM_OK);
    write_pattern(s, 0, size, 9201);
    writer_t w = {.app = &src_app, .id = xm_region_id(s), .size = size};
    pthread_t th;
    pthread_create(&th, NULL, writer_main, &w);
    xm_copy_opts_t o = XM_COPY_OPTS_INIT;
    o.chunk = 64u << 10;
    cr_assert_eq(xm_region_copy(s, t, &o, NULL), XM_OK, "%s", xm_last_error(a));
    w.stop = 1;
    pthread_join(th, NULL);
    static uint8_t old[4u << 20], got[4u << 20];
    uint64_t newer = 0;
    for (uint64_t off = 0; off < size; off += sizeof(got)) {
        xt_fill(old, sizeof(old), 9201 + off / sizeof(old));
        cr_assert_eq(xm_read(t, off, got, sizeof(got)), XM_OK);
        for (size_t i = 0; i < sizeof(got); i++) {
            cr_assert(got[i] == old[i] || got[i] == 0xee, "byte %llu is neither old nor new",
                      (unsigned long long)(off + i));
            newer += got[i] == 0xee && old[i] != 0xee;
        }
    }
    cr_log_info("writer rounds during the copy: %llu; bytes of the copy already new: %llu",
                (unsigned long long)w.rounds, (unsigned long long)newer);
    /* quiet source: the copy is exact */
    cr_assert_eq(xm_region_copy(s, t, NULL, NULL), XM_OK, "%s", xm_last_error(a));
    static uint8_t want[4u << 20];
    for (uint64_t off = 0; off < size; off += sizeof(got)) {
        cr_assert_eq(xm_read(s, off, want, sizeof(want)), XM_OK);
        cr_assert_eq(xm_read(t, off, got, sizeof(got)), XM_OK);
        cr_assert(memcmp(want, got, sizeof(got)) == 0, "quiet copy differs at %llu", (unsigned long long)off);
    }
    xm_region_close(s);
    xm_region_close(t);
    xm_disconnect(a);
    xm_disconnect(b);
}
