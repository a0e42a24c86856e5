/* Resilient allocations (issue 12, docs/resilience.md): replicate:R and ec:K+M through
 * libxmem's read/write path, with appliances killed under it. Every byte is checked
 * against a model kept by the test. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "../../src/client/client.h"

static xt_cluster_t cl;

static void teardown(void)
{
    xt_cluster_stop(&cl);
}

/* A manager context of tenant with a short operation timeout (a dead appliance is noticed
 * fast). */
static xm_ctx_h connect_tenant_short(const char *tenant)
{
    char cred[PATH_MAX + 80];
    xm_connect_opts_t o = {.size = sizeof(xm_connect_opts_t), .manager = cl.mgr.addr,
                           .secret_file = xt_cred(cl.mgr.secret, tenant, cred, sizeof(cred)),
                           .tenant = tenant, .timeout_ms = 3000};
    xm_ctx_h ctx = NULL;
    xm_status_t s = xm_connect(&o, &ctx);
    cr_assert_eq(s, XM_OK, "connect: %s", xm_last_error(NULL));
    return ctx;
}

static xm_ctx_h connect_short(void)
{
    return connect_tenant_short("alice");
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Write len bytes of a fresh pattern at off, into the allocation and the model. */
static void model_write(xm_ctx_h ctx, xm_alloc_h a, uint8_t *model, uint64_t off, size_t len,
                        uint64_t seed)
{
    uint8_t *w = malloc(len);
    xt_fill(w, len, seed);
    xm_status_t s = xm_write(a, off, w, len);
    cr_assert_eq(s, XM_OK, "write %zu at %llu: %s", len, (unsigned long long)off, xm_last_error(ctx));
    memcpy(model + off, w, len);
    free(w);
}

/* Every byte of a, read in pieces of varying size, equals the model. */
static void check_all(xm_ctx_h ctx, xm_alloc_h a, const uint8_t *model, uint64_t size,
                      const char *when)
{
    uint8_t *r = malloc(size);
    memset(r, 0xee, size);
    /* once whole, once in odd pieces */
    cr_assert_eq(xm_read(a, 0, r, size), XM_OK, "%s: read all: %s", when, xm_last_error(ctx));
    for (uint64_t i = 0; i < size; i++) {
        cr_assert_eq(r[i], model[i], "%s: byte %llu is %02x, model %02x", when,
                     (unsigned long long)i, r[i], model[i]);
    }
    memset(r, 0xee, size);
    uint64_t seed = 77;
    for (uint64_t off = 0; off < size;) {
        uint64_t len = 1 + rnd(&seed) % 20000;
        if (len > size - off) len = size - off;
        cr_assert_eq(xm_read(a, off, r + off, len), XM_OK, "%s: read %llu at %llu: %s", when,
                     (unsigned long long)len, (unsigned long long)off, xm_last_error(ctx));
        off += len;
    }
    cr_assert(memcmp(r, model, size) == 0, "%s: pieced read differs", when);
    free(r);
}

/* Writes of every shape: the whole, unaligned small ones, ones crossing units/stripes. */
static void write_shapes(xm_ctx_h ctx, xm_alloc_h a, uint8_t *model, uint64_t size, uint64_t seed)
{
    model_write(ctx, a, model, 0, size, seed);
    uint64_t s = seed | 1;
    for (int i = 0; i < 40; i++) {
        uint64_t len = 1 + rnd(&s) % (i % 4 == 0 ? 70000 : 5000);
        uint64_t off = rnd(&s) % (size - len + 1);
        model_write(ctx, a, model, off, len, seed * 100 + (uint64_t)i);
    }
}

XT_TEST_PROVIDERS(resilience, replicate2_survives_one_appliance, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 2, "64M", provider, NULL);
    xm_ctx_h ctx = connect_short();
    const uint64_t size = (1u << 20) + 12345;
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, size, "replicate:2", "rep", &a), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *model = calloc(1, size);
    write_shapes(ctx, a, model, size, 1);
    check_all(ctx, a, model, size, "healthy");
    /* atomics: at the primary under the unit lock, the word copied to the other */
    uint64_t old = 1;
    cr_assert_eq(xm_fetch_add(a, 4096, 5, &old), XM_OK, "%s", xm_last_error(ctx));
    uint64_t w;
    memcpy(&w, model + 4096, 8);
    cr_assert_eq(old, w);
    w += 5;
    memcpy(model + 4096, &w, 8);
    cr_assert_eq(xm_compare_swap(a, 4096, w, 99, &old), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(old, w);
    w = 99;
    memcpy(model + 4096, &w, 8);

    /* kill one appliance (whichever holds the primary or the copy: each run kills app 0) */
    xt_kill9(&cl.app[0]);
    check_all(ctx, a, model, size, "one copy killed");
    write_shapes(ctx, a, model, size, 2);
    check_all(ctx, a, model, size, "written with one copy");
    cr_assert_eq(xm_fetch_add(a, 8192, 1, &old), XM_OK, "%s", xm_last_error(ctx));
    memcpy(&w, model + 8192, 8);
    cr_assert_eq(old, w);
    w += 1;
    memcpy(model + 8192, &w, 8);
    /* a second client, attached after the loss, finds out for itself */
    xm_ctx_h ctx2 = connect_short();
    xm_alloc_h b;
    cr_assert_eq(xm_attach(ctx2, 0, "rep", XM_ACCESS_READ_WRITE, &b), XM_OK, "%s", xm_last_error(ctx2));
    check_all(ctx2, b, model, size, "second client, one copy killed");
    model_write(ctx2, b, model, 100, 3000, 9);
    check_all(ctx, a, model, size, "first client sees the second's write");

    /* both gone: a clear error naming the allocation, never data */
    xt_kill9(&cl.app[1]);
    uint8_t buf[64];
    cr_assert_neq(xm_read(a, 0, buf, sizeof(buf)), XM_OK);
    char want[64];
    snprintf(want, sizeof(want), "allocation %llu (replicate:2)", (unsigned long long)xm_region_id(a));
    cr_assert(strstr(xm_last_error(ctx), want) != NULL, "%s", xm_last_error(ctx));
    cr_assert_neq(xm_write(a, 0, buf, sizeof(buf)), XM_OK);
    cr_assert(strstr(xm_last_error(ctx), want) != NULL, "%s", xm_last_error(ctx));
    xm_alloc_close(b);
    xm_alloc_close(a);
    xm_disconnect(ctx2);
    xm_disconnect(ctx);
    free(model);
}

XT_TEST_PROVIDERS(resilience, ec42_survives_two_appliances, .fini = teardown, .timeout = 180)
{
    xt_cluster_start(&cl, 6, "64M", provider, NULL);
    xm_ctx_h ctx = connect_short();
    /* 4K chunks: 16 KiB stripes, a short last stripe */
    const uint64_t size = (400u << 10) + 777;
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, size, "ec:4+2:4K", "coded", &a), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *model = calloc(1, size);
    write_shapes(ctx, a, model, size, 1);
    check_all(ctx, a, model, size, "healthy");
    /* atomics are refused, with the reason */
    uint64_t old;
    cr_assert_eq(xm_fetch_add(a, 0, 1, &old), XM_ERR_INVALID);
    cr_assert(strstr(xm_last_error(ctx), "atomics are not available on ec allocations") != NULL, "%s",
              xm_last_error(ctx));
    cr_assert_eq(xm_compare_swap(a, 0, 1, 2, &old), XM_ERR_INVALID);

    /* a second, read-only client (the manager refuses attaches while parts are down: its
     * attach asks every part's appliance) */
    xm_ctx_h ctx2 = connect_short();
    xm_alloc_h b;
    cr_assert_eq(xm_attach(ctx2, 0, "coded", XM_ACCESS_READ, &b), XM_OK, "%s", xm_last_error(ctx2));
    /* two neighbours: parts are placed in appliance order on a fresh cluster, so some
     * stripes have both parity pieces on the killed two (no lock home left: their
     * writes need none) and others two data pieces */
    xt_kill9(&cl.app[1]);
    check_all(ctx, a, model, size, "one appliance killed");
    xt_kill9(&cl.app[2]);
    check_all(ctx, a, model, size, "two appliances killed");
    /* writes go on: full and partial stripes, also into pieces that are down */
    write_shapes(ctx, a, model, size, 2);
    check_all(ctx, a, model, size, "written with two down");
    check_all(ctx2, b, model, size, "read-only client, attached before the losses");

    /* a third loss: errors naming the allocation, never wrong bytes */
    xt_kill9(&cl.app[4]);
    char want[64];
    snprintf(want, sizeof(want), "allocation %llu (ec:4+2:4K)", (unsigned long long)xm_region_id(a));
    uint8_t *r = malloc(size);
    int errors = 0;
    for (uint64_t off = 0; off < size; off += 3000) {
        uint64_t len = size - off < 3000 ? size - off : 3000;
        xm_status_t s = xm_read(a, off, r, len);
        if (s == XM_OK) {
            cr_assert(memcmp(r, model + off, len) == 0, "wrong bytes at %llu with 3 down",
                      (unsigned long long)off);
        } else {
            errors++;
            cr_assert_eq(s, XM_ERR_IO, "%s", xm_status_str(s));
            cr_assert(strstr(xm_last_error(ctx), want) != NULL, "%s", xm_last_error(ctx));
        }
    }
    cr_assert_gt(errors, 0, "three of six down and every read worked");
    cr_assert_neq(xm_write(a, 0, r, 100), XM_OK);
    cr_assert(strstr(xm_last_error(ctx), want) != NULL, "%s", xm_last_error(ctx));
    free(r);
    xm_alloc_close(b);
    xm_alloc_close(a);
    xm_disconnect(ctx2);
    xm_disconnect(ctx);
    free(model);
}

/* Bytes [T0, T0 + TLEN) of stripe 0's piece 1 are what the killed writer was writing. */
#define T0 5000u
#define TLEN 3000u

static bool in_target(uint64_t i)
{
    return i >= T0 && i < T0 + TLEN;
}

/* A writer SIGKILLed while it writes partial stripes in a loop: afterwards each byte of
 * its target range reads as old or new, every other byte as before; the next writer of
 * the stripe takes over its stale lock (after the lease) and repairs the parity, so reads
 * that decode around two killed appliances give exactly the same bytes. */
static void writer_killed_body(const char *policy, int napp, int kill_a, int kill_b);

Test(resilience, ec_writer_killed_mid_stripe, .fini = teardown, .timeout = 180)
{
    writer_killed_body("ec:4+2:4K", 6, 0, 3);
}

/* The same for replicate:2: the next writer of the unit waits out the lease and makes the
 * copy equal to the primary; with the primary's appliance then killed, the copy reads
 * exactly what the primary read. */
Test(resilience, replicate_writer_killed_mid_write, .fini = teardown, .timeout = 180)
{
    writer_killed_body("replicate:2", 2, 0, -1);
}

static void writer_killed_body(const char *policy, int napp, int kill_a, int kill_b)
{
    xt_cluster_start(&cl, napp, "64M", "tcp", NULL);
    int go[2], ready[2];
    cr_assert(pipe(go) == 0 && pipe(ready) == 0);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        char c;
        if (read(go[0], &c, 1) != 1) _exit(2);
        xm_ctx_h cx = connect_short();
        xm_alloc_h w;
        if (xm_attach(cx, 0, "mid", XM_ACCESS_READ_WRITE, &w) != XM_OK) _exit(3);
        uint8_t buf[TLEN];
        for (unsigned i = 0;; i++) {
            memset(buf, 0x10 + (int)(i % 16), sizeof(buf));
            if (xm_write(w, T0, buf, sizeof(buf)) != XM_OK) _exit(4);
            if (i == 20 && write(ready[1], "r", 1) != 1) _exit(5);
        }
    }
    xm_ctx_h ctx = connect_short();
    const uint64_t size = 64u << 10;
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, size, policy, "mid", &a), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *model = calloc(1, size);
    model_write(ctx, a, model, 0, size, 5);
    cr_assert(write(go[1], "g", 1) == 1);
    char c;
    cr_assert_eq(read(ready[0], &c, 1), 1, "the writer did not get going");
    usleep(100000);
    kill(child, SIGKILL);
    int wst;
    waitpid(child, &wst, 0);
    cr_assert(WIFSIGNALED(wst), "the writer ended by itself (status %d)", wst);

    /* old or new per byte in the target, the rest untouched */
    uint8_t *r = malloc(size), *cur = malloc(size);
    cr_assert_eq(xm_read(a, 0, cur, size), XM_OK, "%s", xm_last_error(ctx));
    for (uint64_t i = 0; i < size; i++) {
        if (in_target(i)) {
            cr_assert(cur[i] == model[i] || (cur[i] >= 0x10 && cur[i] < 0x20), "byte %llu: %02x",
                      (unsigned long long)i, cur[i]);
        } else {
            cr_assert_eq(cur[i], model[i], "byte %llu outside the dead writer's range changed",
                         (unsigned long long)i);
        }
    }
    /* the next writer of stripe 0 (piece 0) waits out the lease, takes over, repairs */
    uint64_t t = xt_now_ms();
    model_write(ctx, a, cur, 2000, 100, 6);
    cr_log_info("write into the dead writer's stripe took %llu ms", (unsigned long long)(xt_now_ms() - t));
    /* decode around two appliances: the same bytes (parity matches the data) */
    xt_kill9(&cl.app[kill_a]);
    if (kill_b >= 0) xt_kill9(&cl.app[kill_b]);
    memset(r, 0xee, size);
    cr_assert_eq(xm_read(a, 0, r, size), XM_OK, "%s", xm_last_error(ctx));
    for (uint64_t i = 0; i < size; i++) {
        cr_assert_eq(r[i], cur[i], "byte %llu reads %02x after the losses, %02x before",
                     (unsigned long long)i, r[i], cur[i]);
    }
    free(r);
    free(cur);
    free(model);
    xm_alloc_close(a);
    xm_disconnect(ctx);
}

/* A mapping over ec:4+2 goes through the resilient path (faults and write-back): what it
 * writes is coded (reads decoding around two killed appliances see it), and it keeps
 * running after the losses. A SIGSTOPped appliance is read around after the timeout. */
Test(resilience, ec_mapping_and_stopped_appliance, .fini = teardown, .timeout = 180)
{
    xt_cluster_start(&cl, 6, "64M", "tcp", NULL);
    xm_ctx_h ctx = connect_short();
    const uint64_t size = 1u << 20;
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, size, "ec:4+2:4K", "mapped", &a), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *model = malloc(size), *r = malloc(size);
    xt_fill(model, size, 11);
    uint8_t *p;
    xm_status_t ms = xm_map(ctx, a, 0, size, NULL, (void **)&p);
    if (ms == XM_ERR_IO) cr_skip_test("no mapping here: %s", xm_last_error(ctx));
    cr_assert_eq(ms, XM_OK, "%s", xm_last_error(ctx));
    memcpy(p, model, size);
    cr_assert_eq(xm_sync(p, size), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_read(a, 0, r, size), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(r, model, size) == 0, "the mapping's write-back differs");
    /* a stopped appliance: reads wait out the timeout once, then decode around it */
    kill(cl.app[2].pid, SIGSTOP);
    memset(r, 0xee, size);
    cr_assert_eq(xm_read(a, 0, r, size), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(r, model, size) == 0, "read around a stopped appliance differs");
    kill(cl.app[2].pid, SIGCONT);
    xt_kill9(&cl.app[2]);
    xt_kill9(&cl.app[5]);
    /* through the mapping: resident pages, then dropped ones fetched again by decoding */
    cr_assert(memcmp(p, model, size) == 0, "mapping differs after the losses");
    for (uint64_t i = 0; i < size; i += 4096) p[i] ^= 0x5a;
    for (uint64_t i = 0; i < size; i += 4096) model[i] ^= 0x5a;
    cr_assert_eq(xm_unmap(p), XM_OK, "%s", xm_last_error(ctx));
    memset(r, 0xee, size);
    cr_assert_eq(xm_read(a, 0, r, size), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(r, model, size) == 0, "written back with two down, read back differs");
    cr_assert_eq(xm_map(ctx, a, 0, size, NULL, (void **)&p), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(p, model, size) == 0, "a new mapping faults in other bytes");
    xm_unmap_discard(p);
    free(r);
    free(model);
    xm_alloc_close(a);
    xm_disconnect(ctx);
}

/* Two clients writing overlapping partial ranges of the same stripes at once: the stripe
 * lock keeps each stripe's parity matching its data, so reads that decode around two
 * killed appliances give exactly what healthy reads gave. */
typedef struct writer_arg {
    int id;
    xm_status_t status;
    char why[256];
} writer_arg_t;

static void *writer(void *v)
{
    writer_arg_t *w = v;
    xm_ctx_h cx = connect_short();
    xm_alloc_h h;
    w->status = xm_attach(cx, 0, "shared", XM_ACCESS_READ_WRITE, &h);
    uint64_t s = 1234 + (uint64_t)w->id;
    uint8_t buf[6000];
    for (int i = 0; i < 150 && w->status == XM_OK; i++) {
        /* 3 stripes of 16 KiB: ranges that cross pieces and stripes */
        uint64_t len = 1 + rnd(&s) % sizeof(buf), off = rnd(&s) % (48u * 1024 - len);
        memset(buf, 0x40 + w->id * 0x40 + i % 32, len);
        w->status = xm_write(h, off, buf, len);
    }
    if (w->status != XM_OK) snprintf(w->why, sizeof(w->why), "%s", xm_last_error(cx));
    if (w->status == XM_OK) xm_alloc_close(h);
    xm_disconnect(cx);
    return NULL;
}

Test(resilience, ec_two_writers_one_stripe_keep_parity, .fini = teardown, .timeout = 180)
{
    xt_cluster_start(&cl, 6, "64M", "tcp", NULL);
    xm_ctx_h ctx = connect_short();
    const uint64_t size = 48u << 10;
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, size, "ec:4+2:4K", "shared", &a), XM_OK, "%s", xm_last_error(ctx));
    pthread_t t[2];
    writer_arg_t w[2] = {{.id = 0}, {.id = 1}};
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, writer, &w[i]);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) cr_assert_eq(w[i].status, XM_OK, "writer %d: %s", i, w[i].why);
    uint8_t *healthy = malloc(size), *r = malloc(size);
    cr_assert_eq(xm_read(a, 0, healthy, size), XM_OK, "%s", xm_last_error(ctx));
    /* every pair of killed appliances would do; two data parts of stripe 0 and 2 */
    xt_kill9(&cl.app[0]);
    xt_kill9(&cl.app[1]);
    memset(r, 0xee, size);
    cr_assert_eq(xm_read(a, 0, r, size), XM_OK, "%s", xm_last_error(ctx));
    for (uint64_t i = 0; i < size; i++) {
        cr_assert_eq(r[i], healthy[i], "byte %llu decodes as %02x, was %02x: parity does not match",
                     (unsigned long long)i, r[i], healthy[i]);
    }
    free(r);
    free(healthy);
    xm_alloc_close(a);
    xm_disconnect(ctx);
}

/* Write len bytes of fill straight into part `part` of a at part offset off, behind the
 * resilient path's back (what a torn write or a writer that died between data and parity
 * leaves). */
static void write_part_raw(xm_alloc_h a, uint32_t part, uint64_t off, uint8_t fill, size_t len)
{
    struct xm_region reg = {.ctx = a->ctx, .id = a->id, .size = a->parts[part].size,
                            .key = a->parts[part].key, .access = XM_ACCESS_READ_WRITE,
                            .parts = &a->parts[part], .nparts = 1,
                            .layout = xm__layout_single(a->parts[part].size)};
    uint8_t *buf = malloc(len);
    memset(buf, fill, len);
    cr_assert_eq(xm_write(&reg, off, buf, len), XM_OK, "%s", xm_last_error(a->ctx));
    free(buf);
}

static void read_part_raw(xm_alloc_h a, uint32_t part, uint64_t off, uint8_t *buf, size_t len)
{
    struct xm_region reg = {.ctx = a->ctx, .id = a->id, .size = a->parts[part].size,
                            .key = a->parts[part].key, .access = XM_ACCESS_READ,
                            .parts = &a->parts[part], .nparts = 1,
                            .layout = xm__layout_single(a->parts[part].size)};
    cr_assert_eq(xm_read(&reg, off, buf, len), XM_OK, "%s", xm_last_error(a->ctx));
}

/* Scrub finds parity that disagrees with its data (every stripe's, overwritten behind the
 * library's back), rewrites it, and finds nothing the second time; reads that then decode
 * around a killed appliance give exactly the written bytes. */
Test(resilience, scrub_repairs_ec_parity, .fini = teardown, .timeout = 180)
{
    xt_cluster_start(&cl, 3, "64M", "tcp", NULL);
    xm_ctx_h ctx = connect_short();
    const uint64_t size = 256u << 10;
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, size, "ec:2+1:4K", "scrubbed", &a), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *model = calloc(1, size);
    write_shapes(ctx, a, model, size, 11);
    uint64_t rows = xm__layout_nrows(&a->layout);
    for (uint64_t r = 0; r < rows; r++) {
        write_part_raw(a, xm__layout_row_parity_part(&a->layout, r, 0), r * a->layout.chunk + 100,
                       0xab, 300);
    }
    xm_scrub_report_t rep;
    cr_assert_eq(xm_alloc_scrub(a, NULL, NULL, &rep), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(rep.units, rows);
    cr_assert_eq(rep.repaired, rows, "scrub repaired %llu of %llu stripes with bad parity",
                 (unsigned long long)rep.repaired, (unsigned long long)rows);
    cr_assert_eq(rep.skipped, 0);
    cr_assert_eq(xm_alloc_scrub(a, NULL, NULL, &rep), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(rep.repaired, 0, "a second scrub still found %llu stripes to repair",
                 (unsigned long long)rep.repaired);
    check_all(ctx, a, model, size, "after scrub");
    xt_kill9(&cl.app[0]); /* rows with a data piece there decode through the repaired parity */
    check_all(ctx, a, model, size, "after scrub and one appliance lost");
    /* with a piece gone, stripes cannot be checked whole: skipped, not "repaired" */
    cr_assert_eq(xm_alloc_scrub(a, NULL, NULL, &rep), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(rep.skipped, rows);
    cr_assert_eq(rep.repaired, 0);
    free(model);
    xm_alloc_close(a);
    xm_disconnect(ctx);
}

/* Scrub of replicate:2: a copy that drifted from the primary is rewritten from it. */
static unsigned progress_calls;
static uint64_t progress_last;
static void on_progress(uint64_t done, uint64_t total, void *arg)
{
    (void)arg;
    cr_assert_leq(done, total);
    cr_assert_geq(done, progress_last, "progress went back");
    progress_last = done;
    progress_calls++;
}

Test(resilience, scrub_repairs_a_drifted_replica, .fini = teardown, .timeout = 180)
{
    xt_cluster_start(&cl, 2, "64M", "tcp", NULL);
    xm_ctx_h ctx = connect_short();
    const uint64_t size = (1u << 20) + 4321;
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, size, "replicate:2", "rscrub", &a), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *model = calloc(1, size);
    write_shapes(ctx, a, model, size, 12);
    write_part_raw(a, 1, 3 * 65536 + 17, 0x5a, 1000);   /* unit 3 */
    write_part_raw(a, 1, size - 10, 0x5a, 10);          /* the last, short unit */
    xm_scrub_report_t rep;
    progress_calls = 0;
    progress_last = 0;
    cr_assert_eq(xm_alloc_scrub(a, on_progress, NULL, &rep), XM_OK, "%s", xm_last_error(ctx));
    uint64_t units = (size + 65535) / 65536;
    cr_assert_eq(rep.units, units);
    cr_assert_eq(rep.repaired, 2, "scrub repaired %llu units, 2 had drifted", (unsigned long long)rep.repaired);
    cr_assert_gt(progress_calls, 0);
    cr_assert_eq(progress_last, units, "the last progress call was not the end");
    uint8_t *copy = malloc(size);
    read_part_raw(a, 1, 0, copy, size);
    cr_assert(memcmp(copy, model, size) == 0, "the second copy still differs after scrub");
    /* the same through the CLI: `xmem scrub NAME` */
    write_part_raw(a, 1, 7 * 65536, 0x77, 64);
    char cmd[3 * PATH_MAX], cred[PATH_MAX + 80], out[PATH_MAX + 16];
    snprintf(out, sizeof(out), "%s/scrub.json", cl.dir);
    snprintf(cmd, sizeof(cmd), "XMEM_MANAGER=%s XMEM_SECRET_FILE=%s XMEM_TENANT=alice %s/xmem scrub "
             "rscrub --json > %s", cl.mgr.addr, xt_cred(cl.mgr.secret, "alice", cred, sizeof(cred)),
             XMEM_BIN_DIR, out);
    cr_assert_eq(system(cmd), 0, "%s failed", cmd);
    FILE *f = fopen(out, "r");
    char line[256] = "";
    cr_assert(f != NULL && fgets(line, sizeof(line), f) != NULL);
    fclose(f);
    cr_assert(strstr(line, "\"repaired\":1,") != NULL, "xmem scrub printed %s", line);
    /* no redundancy: nothing to scrub, said clearly; read-only handles cannot repair */
    xm_alloc_h s;
    cr_assert_eq(xm_alloc(ctx, 1u << 20, "single", "plain", &s), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_alloc_scrub(s, NULL, NULL, &rep), XM_ERR_INVALID);
    cr_assert(strstr(xm_last_error(ctx), "no redundancy") != NULL, "%s", xm_last_error(ctx));
    xm_alloc_h ro;
    cr_assert_eq(xm_attach(ctx, 0, "rscrub", XM_ACCESS_READ, &ro), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_alloc_scrub(ro, NULL, NULL, &rep), XM_ERR_PERM);
    xm_alloc_close(ro);
    xm_alloc_close(s);
    free(copy);
    free(model);
    xm_alloc_close(a);
    xm_disconnect(ctx);
}

/* A resilient allocation is attached while an appliance of it is down: a grantee (and a
 * read-only owner), whose keys the manager must ask each appliance for, gets the
 * allocation and reads it whole, decoded around the lost part. (The manager refused such
 * attaches with "cannot connect to appliance".) */
Test(resilience, attach_while_an_appliance_is_down, .fini = teardown, .timeout = 180)
{
    xt_cluster_start(&cl, 3, "64M", "tcp", NULL);
    xm_ctx_h ctx = connect_short();
    const uint64_t size = 256u << 10;
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, size, "ec:2+1:4K", "shared", &a), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *model = calloc(1, size);
    write_shapes(ctx, a, model, size, 13);
    cr_assert_eq(xm_alloc_grant(ctx, a->id, NULL, "bob", XM_ACCESS_READ), XM_OK, "%s", xm_last_error(ctx));
    xm_alloc_close(a);
    xt_kill9(&cl.app[1]);
    xm_ctx_h bob = connect_tenant_short("bob");
    xm_alloc_h b;
    cr_assert_eq(xm_attach(bob, 0, "alice/shared", XM_ACCESS_READ, &b), XM_OK,
                 "a grantee could not attach with one of three appliances down: %s", xm_last_error(bob));
    check_all(bob, b, model, size, "grantee, one appliance down");
    xm_alloc_close(b);
    xm_alloc_h ro;
    cr_assert_eq(xm_attach(ctx, 0, "shared", XM_ACCESS_READ, &ro), XM_OK,
                 "the owner could not attach read-only: %s", xm_last_error(ctx));
    check_all(ctx, ro, model, size, "owner read-only, one appliance down");
    xm_alloc_close(ro);
    /* two down is more than ec:2+1 survives: a clear error, not a descriptor */
    xt_kill9(&cl.app[2]);
    cr_assert_neq(xm_attach(bob, 0, "alice/shared", XM_ACCESS_READ, &b), XM_OK);
    xm_disconnect(bob);
    xm_disconnect(ctx);
    free(model);
}
