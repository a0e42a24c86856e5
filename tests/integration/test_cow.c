/* Virtual copy (snapshot, clone) against a real xmemd: copy semantics under a concurrent
 * writer, divergence both ways, chains, a copy outliving its source, read-only snapshots,
 * pool exhaustion, hugetlb, file pools refused. Every byte checked. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static xt_appliance_t app;
static xm_ctx_h g_ctx; /* for error messages */
static long saved_pages = -1;
#define NR_HUGE "/proc/sys/vm/nr_hugepages"
#define FREE_HUGE "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"

static long read_long(const char *path)
{
    FILE *f = fopen(path, "r");
    long v = -1;
    if (f != NULL) {
        if (fscanf(f, "%ld", &v) != 1) v = -1;
        fclose(f);
    }
    return v;
}

static bool write_long(const char *path, long v)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) return false;
    bool ok = fprintf(f, "%ld\n", v) > 0;
    return fclose(f) == 0 && ok;
}

static void teardown(void)
{
    if (getenv("XT_COW_LOG") != NULL) xt_dump_log(&app);
    cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
    xt_cleanup(&app);
    if (saved_pages >= 0) write_long(NR_HUGE, saved_pages);
    saved_pages = -1;
}

#define PAGE 4096u
#define WORDS (PAGE / 8)

/* Bytes of this process's mappings of region memfds (the local transport's). */
static size_t mapped_regions(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    size_t bytes = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        unsigned long lo, hi;
        if (strstr(line, "memfd:xmem-region") != NULL && sscanf(line, "%lx-%lx", &lo, &hi) == 2)
            bytes += hi - lo;
    }
    if (f != NULL) fclose(f);
    return bytes;
}

/* ---- a writer of sequence numbers: write s fills page (s - 1) % npages with s ---- */

typedef struct writer {
    xm_ctx_h ctx;
    xm_region_h r;
    uint64_t npages;
    _Atomic uint64_t done;  /* last sequence number acknowledged */
    atomic_bool stop;
    int reopens;            /* local client: the source was fenced, the write redone */
    xm_status_t failed;
    char why[256];
} writer_t;

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    uint64_t buf[WORDS];
    for (uint64_t s = 1; !atomic_load(&w->stop); s++) {
        for (size_t i = 0; i < WORDS; i++) buf[i] = s;
        uint64_t off = ((s - 1) % w->npages) * PAGE;
        xm_status_t st = xm_write(w->r, off, buf, PAGE);
        if (st != XM_OK && w->reopens < 4) {
            /* a local mapping of a region that got a copy is fenced off: reopen (over the
             * fabric now) and redo the write (docs/virtual-copy.md) */
            uint64_t id = xm_region_id(w->r);
            xm_region_close(w->r);
            w->reopens++;
            st = xm_region_open(w->ctx, id, NULL, XM_ACCESS_READ_WRITE, &w->r);
            if (st == XM_OK) st = xm_write(w->r, off, buf, PAGE);
        }
        if (st != XM_OK) {
            w->failed = st;
            snprintf(w->why, sizeof(w->why), "%s", xm_last_error(w->ctx));
            break;
        }
        atomic_store(&w->done, s);
    }
    return NULL;
}

/* The value page p holds after writes 1..T (0: never written). */
static uint64_t expect_at(uint64_t p, uint64_t T, uint64_t npages)
{
    if (T < p + 1) return 0;
    return (T - (p + 1)) / npages * npages + p + 1;
}

/* Check that img (npages pages) is the region after writes 1..T for one T (the cut). The
 * page of the write in flight at the cut (T + 1) may hold old or new words. Returns T. */
static uint64_t check_cut(const uint64_t *img, uint64_t npages, uint64_t lo, uint64_t hi)
{
    uint64_t T = 0;
    for (uint64_t i = 0; i < npages * WORDS; i++) T = img[i] > T ? img[i] : T;
    cr_assert_geq(T, lo, "the copy is older than what was acknowledged before it (%llu < %llu)",
                  (unsigned long long)T, (unsigned long long)lo);
    cr_assert_leq(T, hi + 1, "the copy holds writes made after it (%llu > %llu)",
                  (unsigned long long)T, (unsigned long long)hi);
    /* T itself may be the torn write in flight: then the cut is T - 1 for other pages */
    uint64_t tp = T == 0 ? 0 : (T - 1) % npages;
    for (uint64_t p = 0; p < npages; p++) {
        uint64_t want = expect_at(p, T, npages);
        for (uint64_t k = 0; k < WORDS; k++) {
            uint64_t v = img[p * WORDS + k];
            if (p == tp && T > 0) {
                uint64_t before = expect_at(p, T - 1, npages);
                cr_assert(v == want || v == before,
                          "page %llu word %llu: %llu, neither %llu nor %llu (cut %llu)",
                          (unsigned long long)p, (unsigned long long)k, (unsigned long long)v,
                          (unsigned long long)want, (unsigned long long)before,
                          (unsigned long long)T);
            } else {
                cr_assert_eq(v, want, "page %llu word %llu: %llu, want %llu (cut at write %llu)",
                             (unsigned long long)p, (unsigned long long)k, (unsigned long long)v,
                             (unsigned long long)want, (unsigned long long)T);
            }
        }
    }
    return T;
}

static void wait_for(writer_t *w, uint64_t s)
{
    for (int i = 0; i < 30000 && atomic_load(&w->done) < s && w->failed == XM_OK; i++) {
        usleep(1000);
    }
    cr_assert_eq(w->failed, XM_OK, "the writer failed: %s", w->why);
    cr_assert_geq(atomic_load(&w->done), s, "the writer is stuck at %llu",
                  (unsigned long long)atomic_load(&w->done));
}

XT_TEST_PROVIDERS(cow, snapshot_is_one_point_in_time_under_a_writer, .fini = teardown,
                  .timeout = 180)
{
    xt_start(&app, &(xt_opts_t){.provider = provider, .pool = "256M"});
    xm_ctx_h ctx = g_ctx = xt_connect(&app, NULL);
    const uint64_t npages = 1024; /* 4 MiB */
    xm_region_h src;
    cr_assert_eq(xm_region_create(ctx, npages * PAGE, "src", &src), XM_OK, "%s",
                 xm_last_error(ctx));
    writer_t w = {.ctx = xt_connect(&app, NULL), .npages = npages};
    cr_assert_eq(xm_region_open(w.ctx, 0, "src", XM_ACCESS_READ_WRITE, &w.r), XM_OK);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, writer_main, &w), 0);
    uint64_t *img = malloc(npages * PAGE);
    xm_region_h snaps[3];
    uint64_t cuts[3], lo[3], hi[3];
    for (int k = 0; k < 3; k++) {
        /* the first in the middle of the first pass, the next ones later passes */
        wait_for(&w, npages / 2 + (uint64_t)k * npages + 7);
        lo[k] = atomic_load(&w.done);
        char name[16];
        snprintf(name, sizeof(name), "snap%d", k);
        cr_assert_eq(xm_region_snapshot(ctx, 0, "src", name, &snaps[k]), XM_OK, "%s",
                     xm_last_error(ctx));
        hi[k] = atomic_load(&w.done);
    }
    /* the writer keeps going: two more passes over every page after the last snapshot */
    wait_for(&w, hi[2] + 2 * npages);
    atomic_store(&w.stop, true);
    pthread_join(th, NULL);
    cr_assert_eq(w.failed, XM_OK, "the writer failed: %s", w.why);
    uint64_t last = atomic_load(&w.done);
    for (int k = 0; k < 3; k++) {
        cr_assert_eq(xm_read(snaps[k], 0, img, npages * PAGE), XM_OK, "%s", xm_last_error(ctx));
        cuts[k] = check_cut(img, npages, lo[k], hi[k]);
        cr_log_info("snapshot %d: cut at write %llu (acknowledged %llu..%llu)", k,
                    (unsigned long long)cuts[k], (unsigned long long)lo[k],
                    (unsigned long long)hi[k]);
    }
    /* the source has every write, none lost to copy-on-write (a local handle opened before
     * the snapshots was fenced off: reopened, it reaches the source over the fabric) */
    xm_region_close(src);
    cr_assert_eq(xm_region_open(ctx, 0, "src", XM_ACCESS_READ_WRITE, &src), XM_OK);
    cr_assert_eq(xm_read(src, 0, img, npages * PAGE), XM_OK, "%s", xm_last_error(ctx));
    check_cut(img, npages, last, last);
    if (strcmp(provider, "local") == 0) {
        cr_log_info("local writer reopened the source %d times", w.reopens);
    }
    /* a snapshot stays readable, and unchanged, after the source goes */
    cr_assert_eq(xm_region_destroy(ctx, 0, "src"), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_read(snaps[1], 0, img, npages * PAGE), XM_OK);
    cr_assert_eq(check_cut(img, npages, cuts[1], cuts[1]), cuts[1]);
    for (int k = 0; k < 3; k++) xm_region_close(snaps[k]);
    xm_region_close(src);
    xm_region_close(w.r);
    xm_disconnect(w.ctx);
    free(img);
    xm_disconnect(ctx);
}

/* A handle a local client opened before its region got a copy (or became one) is fenced off
 * the memfd (docs/virtual-copy.md): the user reopens it, reaching the region over the fabric. */
static xm_status_t reopen(xm_region_h *rp)
{
    uint64_t id = xm_region_id(*rp);
    xm_access_t a = xm_region_access(*rp);
    xm_region_close(*rp);
    return xm_region_open(g_ctx, id, NULL, a, rp);
}

/* Write xt_fill(seed) at [off, off + len) of r and of its model. */
static void wr(xm_region_h *rp, uint8_t *model, uint64_t off, size_t len, uint64_t seed)
{
    xt_fill(model + off, len, seed);
    xm_status_t st = xm_write(*rp, off, model + off, len);
    if (st != XM_OK) {
        xm_status_t ro = reopen(rp);
        cr_assert_eq(ro, XM_OK, "reopen after %d: %s", st, xm_last_error(g_ctx));
        st = xm_write(*rp, off, model + off, len);
    }
    cr_assert_eq(st, XM_OK, "write %zu at %llu: %d %s", len, (unsigned long long)off, st,
                 xm_last_error(g_ctx));
}

/* r holds exactly model (size bytes): every byte. */
static void same(xm_region_h *rp, const uint8_t *model, size_t size, const char *what)
{
    uint8_t *got = malloc(size);
    xm_status_t st = xm_read(*rp, 0, got, size);
    if (st != XM_OK && reopen(rp) == XM_OK) st = xm_read(*rp, 0, got, size);
    cr_assert_eq(st, XM_OK, "%s: read: %s", what, xm_last_error(g_ctx));
    size_t i = 0;
    while (i < size && got[i] == model[i]) i++;
    cr_assert_eq(i, size, "%s: byte %zu is %u, want %u", what, i, i < size ? got[i] : 0,
                 i < size ? model[i] : 0);
    free(got);
}

XT_TEST_PROVIDERS(cow, clones_and_sources_diverge_and_copies_outlive_them, .fini = teardown,
                  .timeout = 120)
{
    xt_start(&app, &(xt_opts_t){.provider = provider, .pool = "256M"});
    xm_ctx_h ctx = g_ctx = xt_connect(&app, NULL);
    const size_t size = (6u << 20) + 777, half = size / 2;
    uint8_t *ms = calloc(1, size), *m1 = NULL, *m2 = NULL, *mn = NULL;
    xm_region_h src, c1, c2, snap;
    cr_assert_eq(xm_region_create(ctx, size, "src", &src), XM_OK);
    /* the first half written, the second left as holes */
    wr(&src, ms, 0, half, 1);
    cr_assert_eq(xm_region_clone(ctx, 0, "src", "c1", &c1), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_access(c1), XM_ACCESS_READ_WRITE);
    m1 = malloc(size);
    memcpy(m1, ms, size);
    /* the source written after: not in the clone; the clone written: not in the source */
    wr(&src, ms, 4096, 8192, 2);       /* over written pages */
    wr(&src, ms, half + 100, 5000, 3); /* over holes */
    wr(&c1, m1, 100000, 20000, 4);
    wr(&c1, m1, size - 3000, 3000, 5);
    same(&src, ms, size, "source after writes to both");
    same(&c1, m1, size, "clone after writes to both");
    /* a clone of the clone, and a snapshot of the source */
    cr_assert_eq(xm_region_clone(ctx, 0, "c1", "c2", &c2), XM_OK, "%s", xm_last_error(ctx));
    m2 = malloc(size);
    memcpy(m2, m1, size);
    size_t mapped0 = mapped_regions();
    cr_assert_eq(xm_region_snapshot(ctx, xm_region_id(src), NULL, "snap", &snap), XM_OK, "%s",
                 xm_last_error(ctx));
    /* a local client never maps a copy that lacks pages (it would read its holes as zeros) */
    cr_assert_eq(mapped_regions(), mapped0, "the snapshot's memfd was mapped locally");
    mn = malloc(size);
    memcpy(mn, ms, size);
    wr(&c1, m1, 0, 10000, 6);          /* parent of c2 written: not in c2 */
    wr(&c2, m2, 50000, 70000, 7);      /* c2 written: not in c1 */
    wr(&src, ms, 0, size, 8);          /* the whole source rewritten */
    same(&c2, m2, size, "clone of a clone");
    same(&c1, m1, size, "clone");
    same(&snap, mn, size, "snapshot");
    same(&src, ms, size, "source");
    /* a snapshot is read-only: no write, no read-write open, no read-write grant */
    uint8_t b[8] = {1};
    cr_assert_eq(xm_region_access(snap), XM_ACCESS_READ);
    cr_assert_neq(xm_write(snap, 0, b, 8), XM_OK, "a snapshot was written");
    xm_region_h rw;
    cr_assert_eq(xm_region_open(ctx, 0, "snap", XM_ACCESS_READ_WRITE, &rw), XM_ERR_PERM,
                 "a snapshot opened read-write");
    same(&snap, mn, size, "snapshot after a refused write");
    /* listed with their sources */
    xm_region_info_t info;
    cr_assert_eq(xm_region_stat(ctx, 0, "c2", &info), XM_OK);
    cr_assert_eq(info.copy_of, xm_region_id(c1));
    cr_assert_eq(info.copy_kind, 2u);
    cr_assert_eq(xm_region_stat(ctx, 0, "snap", &info), XM_OK);
    cr_assert_eq(info.copy_of, xm_region_id(src));
    cr_assert_eq(info.copy_kind, 1u);
    /* sources destroyed: the copies stay intact, and writable where they were */
    cr_assert_eq(xm_region_destroy(ctx, 0, "src"), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_destroy(ctx, 0, "c1"), XM_OK, "%s", xm_last_error(ctx));
    same(&snap, mn, size, "snapshot after its source went");
    same(&c2, m2, size, "clone of a clone after its parent went");
    wr(&c2, m2, 1, size - 2, 9);
    same(&c2, m2, size, "clone of a clone written after its parent went");
    /* a snapshot of a clone of a snapshot */
    xm_region_h c3, s3;
    cr_assert_eq(xm_region_clone(ctx, 0, "snap", "c3", &c3), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_snapshot(ctx, 0, "c3", "s3", &s3), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *m3 = malloc(size);
    memcpy(m3, mn, size);
    wr(&c3, m3, 12345, 100000, 10);
    same(&s3, mn, size, "snapshot of a clone of a snapshot");
    same(&c3, m3, size, "clone of a snapshot");
    same(&snap, mn, size, "snapshot under a clone");
    xm_region_close(s3);
    xm_region_close(c3);
    xm_region_close(snap);
    xm_region_close(c2);
    xm_region_close(c1);
    xm_region_close(src);
    free(ms);
    free(m1);
    free(m2);
    free(mn);
    free(m3);
    xm_disconnect(ctx);
}

Test(cow, pool_exhaustion_is_a_clear_error_and_nothing_changes, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.pool = "64M"});
    xm_ctx_h ctx = g_ctx = xt_connect(&app, NULL);
    const size_t size = 40u << 20;
    uint8_t *ms = calloc(1, size);
    xm_region_h src, c;
    cr_assert_eq(xm_region_create(ctx, size, "src", &src), XM_OK);
    wr(&src, ms, 0, size, 1);
    /* a copy reserves its whole size up front: refused here, never half-made later */
    cr_assert_eq(xm_region_snapshot(ctx, 0, "src", "snap", &c), XM_ERR_NO_SPACE);
    cr_assert(strstr(xm_last_error(ctx), "space") != NULL, "unclear error: %s",
              xm_last_error(ctx));
    cr_assert_eq(xm_region_stat(ctx, 0, "snap", &(xm_region_info_t){0}), XM_ERR_NOT_FOUND,
                 "a refused copy was left behind");
    xm_appliance_info_t ai;
    cr_assert_eq(xm_appliance_stat(ctx, &ai), XM_OK);
    cr_assert_eq(ai.pool_used, size, "pool space leaked by the refused copy");
    /* the source is untouched and still served */
    wr(&src, ms, 4096, 4096, 2);
    same(&src, ms, size, "source after a refused copy");
    /* room again: the copy works */
    cr_assert_eq(xm_region_destroy(ctx, 0, "src"), XM_OK);
    cr_assert_eq(xm_region_create(ctx, 20u << 20, "small", &src), XM_OK);
    cr_assert_eq(xm_region_clone(ctx, 0, "small", "c", &c), XM_OK, "%s", xm_last_error(ctx));
    xm_region_close(c);
    xm_region_close(src);
    free(ms);
    xm_disconnect(ctx);
}

Test(cow, rights_owner_or_read_write_grant, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.pool = "64M"});
    xm_ctx_h ctx = g_ctx = xt_connect(&app, NULL);
    xm_region_h src, c;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, "src", &src), XM_OK);
    cr_assert_eq(xm_region_clone(ctx, 0, "nosuch", "c", &c), XM_ERR_NOT_FOUND);
    cr_assert_eq(xm_region_clone(ctx, 0, "src", "src", &c), XM_ERR_EXISTS);
    uint8_t secret[4096];
    xt_fill(secret, sizeof(secret), 42);
    cr_assert_eq(xm_write(src, 0, secret, sizeof(secret)), XM_OK);
    /* another tenant: nothing without a grant, nothing with a read grant (a copy would
     * write-protect the owner's region and fence its local clients), a copy with a
     * read-write grant - its own, in its own namespace */
    xm_ctx_h bob = xt_connect(&app, "bob");
    uint64_t id = xm_region_id(src);
    cr_assert_eq(xm_region_snapshot(bob, id, NULL, "mine", &c), XM_ERR_PERM);
    cr_assert_eq(xm_region_grant(ctx, id, NULL, "bob", XM_ACCESS_READ), XM_OK);
    cr_assert_eq(xm_region_clone(bob, id, NULL, "mine", &c), XM_ERR_PERM);
    cr_assert(strstr(xm_last_error(bob), "read-write grant") != NULL, "%s", xm_last_error(bob));
    cr_assert_eq(xm_region_grant(ctx, id, NULL, "bob", XM_ACCESS_READ_WRITE), XM_OK);
    cr_assert_eq(xm_region_clone(bob, id, NULL, "mine", &c), XM_OK, "%s", xm_last_error(bob));
    xm_region_info_t info;
    cr_assert_eq(xm_region_stat(bob, 0, "mine", &info), XM_OK);
    cr_assert_str_eq(info.owner, "bob");
    uint8_t got[4096];
    cr_assert_eq(xm_read(c, 0, got, sizeof(got)), XM_OK);
    cr_assert(memcmp(got, secret, sizeof(got)) == 0, "the grantee's clone differs");
    /* the owner cannot see the grantee's copy, nor destroy it */
    cr_assert_neq(xm_region_destroy(ctx, xm_region_id(c), NULL), XM_OK);
    xm_region_close(c);
    xm_disconnect(bob);
    xm_region_close(src);
    xm_disconnect(ctx);
}

Test(cow, file_pool_is_refused_clearly, .fini = teardown, .timeout = 60)
{
    char pool[PATH_MAX + 16];
    snprintf(pool, sizeof(pool), "file:/tmp/xt-cow-pool.%d", (int)getpid());
    xt_start(&app, &(xt_opts_t){.pool = "64M", .backing = pool});
    xm_ctx_h ctx = g_ctx = xt_connect(&app, NULL);
    xm_region_h src, c;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, "src", &src), XM_OK);
    cr_assert_eq(xm_region_snapshot(ctx, 0, "src", "snap", &c), XM_ERR_INVALID);
    cr_assert(strstr(xm_last_error(ctx), "memfd and hugetlb pools only") != NULL, "%s",
              xm_last_error(ctx));
    cr_assert_eq(xm_region_destroy(ctx, 0, "src"), XM_OK);
    xm_region_close(src);
    xm_disconnect(ctx);
    unlink(pool + 5);
    char meta[PATH_MAX + 32];
    snprintf(meta, sizeof(meta), "%s.meta", pool + 5);
    unlink(meta);
}

Test(cow, hugetlb_pool, .fini = teardown, .timeout = 120)
{
    saved_pages = read_long(NR_HUGE);
    if (saved_pages < 0 || access(FREE_HUGE, R_OK) != 0) {
        cr_skip_test("no 2 MiB hugetlb support in this kernel");
    }
    if (!write_long(NR_HUGE, saved_pages + 48) || read_long(FREE_HUGE) < 48) {
        cr_skip_test("cannot reserve 48 huge pages (not root, or memory too fragmented)");
    }
    xt_start(&app, &(xt_opts_t){.pool = "64M", .backing = "hugetlb"});
    xm_ctx_h ctx = g_ctx = xt_connect(&app, NULL);
    const size_t size = 16u << 20;
    uint8_t *ms = calloc(1, size), *mc = malloc(size), *mn = malloc(size);
    xm_region_h src, c, n;
    cr_assert_eq(xm_region_create(ctx, size, "src", &src), XM_OK, "%s", xm_last_error(ctx));
    wr(&src, ms, 0, size / 2, 1);
    cr_assert_eq(xm_region_snapshot(ctx, 0, "src", "snap", &n), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_clone(ctx, 0, "snap", "c", &c), XM_OK, "%s", xm_last_error(ctx));
    memcpy(mn, ms, size);
    memcpy(mc, ms, size);
    wr(&src, ms, 3u << 20, 5u << 20, 2);
    wr(&c, mc, 1000, 3u << 20, 3);
    same(&src, ms, size, "hugetlb source");
    same(&n, mn, size, "hugetlb snapshot");
    same(&c, mc, size, "hugetlb clone of the snapshot");
    cr_assert_eq(xm_region_destroy(ctx, 0, "src"), XM_OK);
    cr_assert_eq(xm_region_destroy(ctx, 0, "snap"), XM_OK);
    same(&c, mc, size, "hugetlb clone after its ancestors went");
    xm_region_close(c);
    xm_region_close(n);
    xm_region_close(src);
    free(ms);
    free(mc);
    free(mn);
    xm_disconnect(ctx);
}

Test(cow, cli_snapshot_clone_and_ls_shows_the_source, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.pool = "64M"});
    xm_ctx_h ctx = g_ctx = xt_connect(&app, NULL);
    xm_region_h src;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, "src", &src), XM_OK);
    char *out = NULL, *err = NULL;
    size_t n;
    cr_assert_eq(xt_cli(&app, NULL, 0, &out, &n, &err, "region", "snapshot", "src", "s1", NULL), 0,
                 "%s", err);
    cr_assert_eq(strtoull(out, NULL, 10), 2, "snapshot id: %s", out);
    free(out);
    free(err);
    cr_assert_eq(xt_cli(&app, NULL, 0, &out, &n, &err, "region", "clone", "s1", "c1", NULL), 0,
                 "%s", err);
    free(out);
    free(err);
    cr_assert_eq(xt_cli(&app, NULL, 0, &out, &n, &err, "region", "ls", NULL), 0, "%s", err);
    cr_assert(strstr(out, "snapshot of 1") != NULL, "region ls: %s", out);
    cr_assert(strstr(out, "clone of 2") != NULL, "region ls: %s", out);
    free(out);
    free(err);
    /* a clear error for a missing source, a taken name */
    cr_assert_neq(xt_cli(&app, NULL, 0, &out, &n, &err, "region", "clone", "nosuch", NULL), 0);
    cr_assert(strstr(err, "no such region") != NULL, "%s", err);
    free(out);
    free(err);
    cr_assert_neq(xt_cli(&app, NULL, 0, &out, &n, &err, "region", "snapshot", "src", "c1", NULL), 0);
    cr_assert(strstr(err, "exists") != NULL, "%s", err);
    free(out);
    free(err);
    xm_region_close(src);
    xm_disconnect(ctx);
}
