/* Rebuild and drain of replicate allocations (issue 12, docs/resilience.md "Rebuild"): the
 * manager restores a lost copy on a spare appliance, appliance to appliance, while a writer
 * keeps writing; a manager killed mid-rebuild resumes; an appliance that returns after its
 * part was rebuilt elsewhere has its stale region destroyed; a drained appliance can be
 * stopped; xmem appliance rm refuses while parts remain. Every byte is checked against a
 * model kept by the test. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "harness.h"

static xt_cluster_t cl;
static const char *const mgr_flags[] = {"--rebuild-after-ms", "1000", NULL};

static void teardown(void)
{
    unsetenv("XMEM_TEST_REBUILD_STALL_MS");
    xt_cluster_stop(&cl);
}

static xm_ctx_h connect_alice(void)
{
    char cred[PATH_MAX + 80];
    xm_connect_opts_t o = {.size = sizeof(xm_connect_opts_t), .manager = cl.mgr.addr,
                           .secret_file = xt_cred(cl.mgr.secret, "alice", cred, sizeof(cred)),
                           .tenant = "alice", .timeout_ms = 3000};
    xm_ctx_h ctx = NULL;
    xm_status_t st = XM_ERR_TIMEOUT;
    /* a manager just restarted (ASan, a loaded machine) may time a first handshake out */
    for (int i = 0; i < 4 && st != XM_OK; i++) st = xm_connect(&o, &ctx);
    cr_assert_eq(st, XM_OK, "connect: %s", xm_last_error(NULL));
    return ctx;
}

/* The cluster's administrator: a context of the cluster secret. */
static xm_ctx_h connect_admin(void)
{
    xm_connect_opts_t o = {.size = sizeof(xm_connect_opts_t), .manager = cl.mgr.addr,
                           .secret_file = cl.secret, .timeout_ms = 3000};
    xm_ctx_h ctx = NULL;
    cr_assert_eq(xm_connect(&o, &ctx), XM_OK, "connect as admin: %s", xm_last_error(NULL));
    return ctx;
}

/* Indexes (into cl.app) of the appliances holding a part of some allocation, -1 after. */
static void holders(xm_ctx_h ctx, int *out, int max)
{
    xm_appliance_entry_t *es = NULL;
    size_t n = 0;
    cr_assert_eq(xm_appliance_list(ctx, &es, &n), XM_OK, "%s", xm_last_error(ctx));
    int k = 0;
    for (int i = 0; i < cl.n; i++) {
        for (size_t e = 0; e < n; e++) {
            if (strcmp(es[e].addr, cl.app[i].addr) == 0 && es[e].regions > 0 && k < max) out[k++] = i;
        }
    }
    for (; k < max; k++) out[k] = -1;
    free(es);
}

static bool wait_state(xm_ctx_h ctx, uint64_t id, const char *prefix, int timeout_ms, char *seen,
                       size_t seenlen)
{
    uint64_t deadline = xt_now_ms() + (uint64_t)timeout_ms;
    char st[32] = "";
    while (xt_now_ms() < deadline) {
        xt_alloc_state(ctx, id, st, sizeof(st));
        if (seen != NULL && strncmp(st, "rebuilding", 10) == 0) snprintf(seen, seenlen, "%s", st);
        if (strncmp(st, prefix, strlen(prefix)) == 0) return true;
        usleep(20000);
    }
    xm_alloc_info_t *infos = NULL;
    size_t n = 0;
    xm_status_t ls = xm_alloc_list(ctx, &infos, &n);
    free(infos);
    cr_log_warn("allocation %llu: state '%s', waited for '%s' (list: %s, %zu allocations: %s)",
                (unsigned long long)id, st, prefix, xm_status_str(ls), n, xm_last_error(ctx));
    return false;
}

static void check_all(xm_ctx_h ctx, xm_alloc_h a, const uint8_t *model, uint64_t size, const char *when)
{
    uint8_t *r = malloc(size);
    memset(r, 0xee, size);
    cr_assert_eq(xm_read(a, 0, r, size), XM_OK, "%s: read: %s", when, xm_last_error(ctx));
    for (uint64_t i = 0; i < size; i++) {
        if (r[i] != model[i]) {
            cr_assert_fail("%s: byte %llu is %02x, model %02x", when, (unsigned long long)i, r[i], model[i]);
        }
    }
    free(r);
}

/* A writer thread: small writes at random places, each recorded in the model once
 * acknowledged. Only it touches the model while it runs. */
typedef struct writer {
    xm_ctx_h ctx;
    xm_alloc_h a;
    uint8_t *model;
    uint64_t size;
    int stop;
    uint64_t writes;
    xm_status_t failed;
    char why[256];
    pthread_t t;
} writer_t;

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    uint64_t s = 0x9e3779b97f4a7c15ull;
    uint8_t buf[9000];
    while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        size_t len = 1 + (size_t)(s % sizeof(buf));
        uint64_t off = (s >> 20) % (w->size - len + 1);
        xt_fill(buf, len, s);
        xm_status_t st = xm_write(w->a, off, buf, len);
        if (st != XM_OK) {
            w->failed = st;
            snprintf(w->why, sizeof(w->why), "%s", xm_last_error(w->ctx));
            break;
        }
        memcpy(w->model + off, buf, len);
        w->writes++;
        usleep(500);
    }
    return NULL;
}

static void writer_start(writer_t *w)
{
    cr_assert_eq(pthread_create(&w->t, NULL, writer_main, w), 0);
}

static void writer_stop(writer_t *w)
{
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
    pthread_join(w->t, NULL);
    cr_assert_eq(w->failed, XM_OK, "a write failed: %s", w->why);
}

static xm_alloc_h make(xm_ctx_h ctx, uint64_t size, const char *name, uint8_t *model)
{
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, size, "replicate:2", name, &a), XM_OK, "%s", xm_last_error(ctx));
    xt_fill(model, size, 1234);
    cr_assert_eq(xm_write(a, 0, model, size), XM_OK, "%s", xm_last_error(ctx));
    return a;
}

Test(rebuild, replicate2_rebuilt_under_writes_stale_copy_destroyed_on_return, .fini = teardown,
     .timeout = 120)
{
    xt_cluster_start(&cl, 3, "64M", "tcp", mgr_flags);
    xm_ctx_h ctx = connect_alice();
    const uint64_t size = (3u << 20) + 4321;
    uint8_t *model = malloc(size);
    xm_alloc_h a = make(ctx, size, "rb", model);
    uint64_t id = xm_region_id(a);
    int h[3];
    holders(ctx, h, 3);
    cr_assert(h[0] >= 0 && h[1] >= 0 && h[2] < 0, "two appliances hold the copies");
    int spare = 3 - h[0] - h[1];

    /* one copy's appliance stops (not killed: its region and the bytes of before live on in
     * its memory) while a writer writes */
    writer_t w = {.ctx = ctx, .a = a, .model = model, .size = size};
    writer_start(&w);
    usleep(200000);
    kill(cl.app[h[0]].pid, SIGSTOP);
    char seen[32] = "";
    /* degraded once the manager misses its heartbeats, then rebuilt */
    bool ok = wait_state(ctx, id, "degraded", 30000, seen, sizeof(seen)) &&
              wait_state(ctx, id, "ok", 60000, seen, sizeof(seen));
    /* writes after the rebuild too */
    uint64_t at_ok = w.writes;
    while (ok && w.writes < at_ok + 50 && w.failed == XM_OK) usleep(10000);
    writer_stop(&w);
    cr_assert(ok, "the allocation became ok again");
    cr_log_info("states seen: '%s'; %llu writes in all", seen, (unsigned long long)w.writes);
    int h2[3];
    holders(ctx, h2, 3);
    cr_assert(h2[0] == spare || h2[1] == spare, "the third appliance holds the new copy");

    /* the stopped appliance returns: its region is no longer the allocation's, and
     * reconciliation destroys it before the appliance is used again */
    kill(cl.app[h[0]].pid, SIGCONT);
    xm_ctx_h direct = xt_connect(&cl.app[h[0]], "alice");
    bool gone = false;
    for (int i = 0; i < 400 && !gone; i++) {
        xm_region_info_t *ri = NULL;
        size_t n = 0;
        gone = xm_region_list(direct, &ri, &n) == XM_OK;
        for (size_t r = 0; gone && r < n; r++) gone = strncmp(ri[r].name, "@alloc-", 7) != 0;
        free(ri);
        if (!gone) usleep(50000);
    }
    xm_disconnect(direct);
    cr_assert(gone, "the returned appliance's stale region was destroyed");

    /* the returned appliance goes for good, then the copy that was never lost: the rebuilt
     * one alone holds every byte (and no appliance is left to rebuild onto) */
    xt_kill9(&cl.app[h[0]]);
    xt_kill9(&cl.app[h[1]]);
    check_all(ctx, a, model, size, "writer's handle, rebuilt copy alone");
    xm_ctx_h ctx2 = connect_alice();
    xm_alloc_h b;
    cr_assert_eq(xm_attach(ctx2, 0, "rb", XM_ACCESS_READ_WRITE, &b), XM_OK, "%s", xm_last_error(ctx2));
    check_all(ctx2, b, model, size, "fresh attach, rebuilt copy alone");

    /* xmem appliance rm: refused while parts remain, done for the appliance rebuilt away */
    xm_ctx_h adm = connect_admin();
    xm_status_t rs = xm_appliance_remove(ctx, cl.app[h[0]].addr);
    cr_assert_eq(rs, XM_ERR_PERM, "tenants may not: %s", xm_status_str(rs));
    rs = xm_appliance_remove(adm, cl.app[h[1]].addr);
    cr_assert_eq(rs, XM_ERR_EXISTS, "%s: %s", xm_status_str(rs), xm_last_error(adm));
    cr_assert(strstr(xm_last_error(adm), "still holds 1 parts") != NULL, "%s", xm_last_error(adm));
    cr_assert_eq(xm_appliance_remove(adm, cl.app[spare].addr), XM_ERR_INVALID, "an up appliance");
    uint64_t deadline = xt_now_ms() + 10000;
    while ((rs = xm_appliance_remove(adm, cl.app[h[0]].addr)) == XM_ERR_INVALID && xt_now_ms() < deadline)
        usleep(50000); /* until the manager has seen it go */
    cr_assert_eq(rs, XM_OK, "%s", xm_last_error(adm));
    xm_appliance_entry_t *es = NULL;
    size_t n = 0;
    cr_assert_eq(xm_appliance_list(adm, &es, &n), XM_OK);
    cr_assert_eq(n, 2, "the removed appliance is not listed");
    free(es);
    xm_disconnect(adm);
    xm_alloc_close(b);
    xm_disconnect(ctx2);
    xm_alloc_close(a);
    xm_disconnect(ctx);
    free(model);
}

Test(rebuild, drain_manager_killed_mid_move_resumes_drained_appliance_stopped, .fini = teardown,
     .timeout = 150)
{
    /* the manager stalls between publishing a moved part and copying into it */
    setenv("XMEM_TEST_REBUILD_STALL_MS", "60000", 1);
    xt_cluster_start(&cl, 3, "64M", "tcp", mgr_flags);
    unsetenv("XMEM_TEST_REBUILD_STALL_MS");
    xm_ctx_h ctx = connect_alice();
    const uint64_t size = (2u << 20) + 3;
    uint8_t *model = malloc(size);
    xm_alloc_h a = make(ctx, size, "drained", model);
    uint64_t id = xm_region_id(a);
    int h[3];
    holders(ctx, h, 3);
    int spare = 3 - h[0] - h[1];
    xm_ctx_h adm = connect_admin();
    uint32_t moving = 0, unmovable = 0;
    cr_assert_eq(xm_appliance_drain(ctx, cl.app[h[0]].addr, false, &moving, &unmovable), XM_ERR_PERM);
    writer_t w = {.ctx = ctx, .a = a, .model = model, .size = size};
    writer_start(&w);
    /* xmem appliance drain --no-wait: started, one replicate part to move */
    char *out = NULL, *err = NULL;
    int rc = xt_cli(&cl.app[spare], NULL, 0, &out, NULL, &err, "--manager", cl.mgr.addr,
                    "--secret-file", cl.secret, "appliance", "drain", cl.app[h[0]].addr, "--no-wait", NULL);
    cr_assert_eq(rc, 0, "xmem appliance drain: %s", err);
    cr_assert(strstr(out, "draining") != NULL, "%s", out);
    free(out);
    free(err);
    cr_assert(wait_state(adm, id, "rebuilding", 30000, NULL, 0), "the part is published rebuilding");

    /* the manager dies between publishing the new part and copying into it; the writer goes on */
    xt_manager_kill9(&cl.mgr);
    char addr[64];
    snprintf(addr, sizeof(addr), "%s", cl.mgr.addr);
    usleep(300000);
    xt_manager_start(&cl.mgr, cl.dir, cl.secret, addr, mgr_flags);
    xm_disconnect(adm);
    adm = connect_admin();
    cr_assert(wait_state(adm, id, "ok", 60000, NULL, 0), "the restarted manager finished the move");
    uint64_t at = w.writes;
    while (w.writes < at + 30 && w.failed == XM_OK) usleep(10000);
    writer_stop(&w);
    /* a restarted manager forgot the drain (not in the table): asked again, nothing is left */
    cr_assert_eq(xm_appliance_drain(adm, cl.app[h[0]].addr, false, &moving, &unmovable), XM_OK, "%s",
                 xm_last_error(adm));
    cr_assert_eq(moving, 0, "the drain moved every replicate part");
    cr_assert_eq(unmovable, 0);
    cr_assert_eq(xt_stop(&cl.app[h[0]]), 0);
    check_all(ctx, a, model, size, "drained appliance stopped");
    /* and the copy left behind is whole: the other original goes too */
    xt_kill9(&cl.app[h[1]]);
    xm_ctx_h ctx2 = connect_alice();
    xm_alloc_h b;
    cr_assert_eq(xm_attach(ctx2, 0, "drained", XM_ACCESS_READ, &b), XM_OK, "%s", xm_last_error(ctx2));
    check_all(ctx2, b, model, size, "the drained-to copy alone");
    rc = xt_cli(&cl.app[spare], NULL, 0, &out, NULL, &err, "--manager", cl.mgr.addr, "--secret-file",
                cl.secret, "appliance", "rm", cl.app[h[0]].addr, NULL);
    cr_assert_eq(rc, 0, "xmem appliance rm: %s", err);
    free(out);
    free(err);
    xm_alloc_close(b);
    xm_disconnect(ctx2);
    xm_disconnect(adm);
    xm_alloc_close(a);
    xm_disconnect(ctx);
    free(model);
}
