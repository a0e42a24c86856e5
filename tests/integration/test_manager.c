/* The allocation manager against real daemons: striped allocations, appliance
 * and manager failures, concurrency, quotas and grants. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "harness.h"
/* xm__rpc: send a request exactly as built here (a chosen request id) */
#include "../../src/client/client.h"

static xt_cluster_t cl;

static void teardown(void)
{
    xt_cluster_stop(&cl);
}

/* Bytes the appliances themselves hold in regions, asked directly. */
static uint64_t pool_used_direct(void)
{
    uint64_t used = 0;
    for (int i = 0; i < cl.n; i++) {
        if (cl.app[i].pid <= 0) continue;
        xm_ctx_h a = xt_connect(&cl.app[i], NULL);
        xm_appliance_info_t info;
        cr_assert_eq(xm_appliance_stat(a, &info), XM_OK);
        used += info.pool_used;
        xm_disconnect(a);
    }
    return used;
}

/* Frees finish on the appliances behind the reply, and fresh regions made ahead (the
 * stock) are destroyed after --stock-idle-ms unasked: wait for the used bytes to settle. */
static uint64_t wait_used(xm_ctx_h ctx, uint64_t want, uint32_t want_regions)
{
    uint64_t deadline = xt_now_ms() + 10000, used;
    uint32_t regions;
    do {
        used = xt_used_on_appliances(ctx, &regions);
        if (used == want && regions == want_regions) break;
        usleep(20000);
    } while (xt_now_ms() < deadline);
    return used;
}

static uint64_t wait_pool_direct(uint64_t want)
{
    uint64_t deadline = xt_now_ms() + 10000, used;
    do {
        used = pool_used_direct();
        if (used == want) break;
        usleep(20000);
    } while (xt_now_ms() < deadline);
    return used;
}

Test(manager, striped_round_trips, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 3, "256M", "tcp", NULL);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, NULL);
    /* odd size and a small chunk: many boundaries, a partial last chunk */
    const uint64_t size = (24u << 20) + 4321;
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, size, "stripe:3:64K", "striped", &a), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_size(a), size);
    uint32_t regions;
    xt_used_on_appliances(ctx, &regions);
    cr_assert_eq(regions, 3, "a 3-way stripe is 3 regions, got %u", regions);

    uint8_t *w = malloc(9u << 20), *r = malloc(9u << 20);
    static const size_t lens[] = {1, 8, 4096, 65535, 65536, 65537, 200000, 5u << 20, 9u << 20};
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        uint64_t offs[] = {0, 65536 - 3, size / 3 + 7, size - lens[k]};
        for (size_t j = 0; j < 4; j++) {
            xt_fill(w, lens[k], k * 7 + j);
            cr_assert_eq(xm_write(a, offs[j], w, lens[k]), XM_OK, "write %zu@%llu: %s", lens[k],
                         (unsigned long long)offs[j], xm_last_error(ctx));
            memset(r, 0xee, lens[k]);
            cr_assert_eq(xm_read(a, offs[j], r, lens[k]), XM_OK, "%s", xm_last_error(ctx));
            cr_assert(memcmp(w, r, lens[k]) == 0, "%zu bytes at %llu differ", lens[k],
                      (unsigned long long)offs[j]);
        }
    }
    /* the whole allocation in one go, then in a second context attached by name */
    uint8_t *all = malloc(size), *back = malloc(size);
    xt_fill(all, size, 42);
    cr_assert_eq(xm_write(a, 0, all, size), XM_OK, "%s", xm_last_error(ctx));
    xm_ctx_h ctx2 = xt_manager_connect(&cl.mgr, NULL);
    xm_alloc_h b;
    cr_assert_eq(xm_attach(ctx2, 0, "striped", XM_ACCESS_READ, &b), XM_OK, "%s", xm_last_error(ctx2));
    cr_assert_eq(xm_read(b, 0, back, size), XM_OK, "%s", xm_last_error(ctx2));
    cr_assert(memcmp(all, back, size) == 0, "attached reader sees other bytes");
    /* each chunk landed on its own appliance: part i holds chunks i, i+3, ... so every
     * appliance has written bytes */
    for (int i = 0; i < 3; i++) {
        xm_ctx_h d = xt_connect(&cl.app[i], NULL);
        xm_region_info_t *infos;
        size_t n;
        cr_assert_eq(xm_region_list(d, &infos, &n), XM_OK);
        cr_assert_eq(n, 1, "appliance %d: alice sees %zu regions", i, n);
        cr_assert_geq(infos[0].resident, (8u << 20), "appliance %d holds too little", i);
        free(infos);
        xm_disconnect(d);
    }
    /* atomics on a chunk boundary word and the last word */
    uint64_t old;
    cr_assert_eq(xm_fetch_add(a, 65536, 5, &old), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_fetch_add(a, 65536, 1, &old), XM_OK);
    uint64_t expect;
    memcpy(&expect, all + 65536, 8);
    cr_assert_eq(old, expect + 5);
    cr_assert_eq(xm_compare_swap(a, (size - 8) & ~7ull, 0, 0, &old), XM_OK);
    /* out of range and read-only writes are refused before anything is sent */
    cr_assert_eq(xm_read(a, size - 1, r, 2), XM_ERR_RANGE);
    cr_assert_eq(xm_write(b, 0, w, 1), XM_ERR_PERM);
    /* the region API is not for manager contexts */
    xm_region_h rr;
    cr_assert_eq(xm_region_create(ctx, 4096, NULL, &rr), XM_ERR_INVALID);

    /* one allocation larger than any appliance's free memory */
    xm_alloc_h big;
    cr_assert_eq(xm_alloc(ctx, 600u << 20, "single", NULL, &big), XM_ERR_NO_SPACE);
    cr_assert_eq(xm_alloc(ctx, 600u << 20, "stripe:3", NULL, &big), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(big, (600u << 20) - 4096, w, 4096), XM_OK);
    /* nothing fits now: refused, and nothing is left behind */
    uint64_t before = xt_used_on_appliances(ctx, NULL);
    cr_assert_eq(xm_alloc(ctx, 200u << 20, "stripe:3", NULL, &rr), XM_ERR_NO_SPACE);
    cr_assert_eq(xt_used_on_appliances(ctx, NULL), before);

    xm_alloc_close(b);
    xm_disconnect(ctx2);
    cr_assert_eq(xm_free(ctx, xm_region_id(big), NULL), XM_OK);
    cr_assert_eq(xm_free(ctx, 0, "striped"), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_free(ctx, 0, "striped"), XM_ERR_NOT_FOUND);
    xm_alloc_close(big);
    xm_alloc_close(a);
    cr_assert_eq(wait_used(ctx, 0, 0), 0);
    cr_assert_eq(wait_pool_direct(0), 0, "appliances still hold memory after every free");
    xm_disconnect(ctx);
    free(w);
    free(r);
    free(all);
    free(back);
}

Test(manager, appliance_kill9_degrades_only_its_allocations, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 3, "256M", "tcp", NULL);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, NULL);
    /* placement takes the freest appliance: three singles land on three appliances */
    xm_alloc_h s[3];
    uint8_t w[4096], r[4096];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(xm_alloc(ctx, 64u << 20, NULL, NULL, &s[i]), XM_OK, "%s", xm_last_error(ctx));
        xt_fill(w, sizeof(w), (uint64_t)i);
        cr_assert_eq(xm_write(s[i], 1u << 20, w, sizeof(w)), XM_OK);
    }
    xm_alloc_h st;
    cr_assert_eq(xm_alloc(ctx, 3u << 20, "stripe:3", NULL, &st), XM_OK, "%s", xm_last_error(ctx));
    xt_kill9(&cl.app[1]);
    uint64_t deadline = xt_now_ms() + 5000;
    int degraded = 0;
    char state[16];
    while (xt_now_ms() < deadline) {
        xt_alloc_state(ctx, xm_region_id(st), state, sizeof(state));
        if (strcmp(state, "degraded") == 0) break;
        usleep(50000);
    }
    cr_assert_str_eq(state, "degraded", "the stripe over the dead appliance is '%s'", state);
    for (int i = 0; i < 3; i++) {
        xt_alloc_state(ctx, xm_region_id(s[i]), state, sizeof(state));
        if (strcmp(state, "degraded") == 0) {
            degraded++;
            continue;
        }
        cr_assert_str_eq(state, "ok");
        /* the others are unaffected: same bytes, still writable */
        cr_assert_eq(xm_read(s[i], 1u << 20, r, sizeof(r)), XM_OK, "%s", xm_last_error(ctx));
        xt_fill(w, sizeof(w), (uint64_t)i);
        cr_assert(memcmp(w, r, sizeof(r)) == 0);
        cr_assert_eq(xm_write(s[i], 0, w, sizeof(w)), XM_OK, "%s", xm_last_error(ctx));
    }
    cr_assert_eq(degraded, 1, "%d single allocations degraded, expected the dead one's", degraded);
    xm_appliance_entry_t *es;
    size_t n;
    cr_assert_eq(xm_appliance_list(ctx, &es, &n), XM_OK);
    int down = 0;
    for (size_t i = 0; i < n; i++) down += strcmp(es[i].state, "down") == 0;
    free(es);
    cr_assert_eq(down, 1);
    /* new allocations go to the live appliances */
    xm_alloc_h fresh;
    cr_assert_eq(xm_alloc(ctx, 1u << 20, "stripe:2:64K", NULL, &fresh), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(fresh, 0, w, sizeof(w)), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_alloc(ctx, 3u << 20, "stripe:3", NULL, &st), XM_ERR_NO_SPACE,
                 "a 3-way stripe needs 3 live appliances");
    xm_alloc_close(fresh);
    for (int i = 0; i < 3; i++) xm_alloc_close(s[i]);
    xm_disconnect(ctx);
}

Test(manager, manager_kill9_and_restart_keeps_allocations, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 2, "256M", "tcp", NULL);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, NULL);
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, 8u << 20, "stripe:2:1M", "kept", &a), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *w = malloc(8u << 20), *r = malloc(8u << 20);
    xt_fill(w, 8u << 20, 1);
    cr_assert_eq(xm_write(a, 0, w, 8u << 20), XM_OK);
    char addr[64];
    snprintf(addr, sizeof(addr), "%s", cl.mgr.addr);
    xt_manager_kill9(&cl.mgr);
    /* the data path does not need the manager */
    for (int i = 0; i < 20; i++) {
        xt_fill(w + (size_t)i * 4096, 4096, 100 + (uint64_t)i);
        cr_assert_eq(xm_write(a, (uint64_t)i * 4096, w + (size_t)i * 4096, 4096), XM_OK, "%s",
                     xm_last_error(ctx));
    }
    cr_assert_eq(xm_read(a, 0, r, 8u << 20), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(w, r, 8u << 20) == 0);
    xm_alloc_h b;
    cr_assert_eq(xm_alloc(ctx, 4096, NULL, NULL, &b), XM_ERR_CONNECT, "allocating needs the manager");

    xt_manager_start(&cl.mgr, cl.dir, cl.secret, addr, NULL);
    cr_assert(xt_cluster_wait_up(&cl, 2, 10000), "appliances did not re-register");
    char state[16];
    xt_alloc_state(ctx, xm_region_id(a), state, sizeof(state));
    cr_assert_str_eq(state, "ok", "after restart the allocation is '%s'", state);
    /* I/O went on meanwhile; a fresh attach sees every byte */
    cr_assert_eq(xm_attach(ctx, 0, "kept", XM_ACCESS_READ_WRITE, &b), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_read(b, 0, r, 8u << 20), XM_OK);
    cr_assert(memcmp(w, r, 8u << 20) == 0);
    xm_alloc_close(b);
    cr_assert_eq(xm_free(ctx, 0, "kept"), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(wait_pool_direct(0), 0);
    xm_alloc_close(a);
    xm_disconnect(ctx);
    free(w);
    free(r);
}

typedef struct worker {
    int idx;
    int failures;
    char why[256];
} worker_t;

static void *churn(void *arg)
{
    worker_t *wk = arg;
    xm_ctx_h ctx;
    char tenant[16];
    snprintf(tenant, sizeof(tenant), "t%d", wk->idx);
    if (xt_manager_try_connect(&cl.mgr, tenant, &ctx) != XM_OK) {
        snprintf(wk->why, sizeof(wk->why), "connect: %s", xm_last_error(NULL));
        wk->failures++;
        return NULL;
    }
    static const char *const policies[] = {"single", "stripe:2:64K", "stripe:3"};
    for (int i = 0; i < 60; i++) {
        xm_alloc_h a;
        uint64_t size = 4096u * (uint64_t)(1 + (i * 7 + wk->idx) % 800);
        const char *pol = policies[(i + wk->idx) % 3];
        if (strcmp(pol, "stripe:3") == 0) size += 3u << 20;
        if (strcmp(pol, "stripe:2:64K") == 0) size += 128u << 10;
        xm_status_t s = xm_alloc(ctx, size, pol, NULL, &a);
        if (s != XM_OK) {
            snprintf(wk->why, sizeof(wk->why), "alloc: %s", xm_last_error(ctx));
            wk->failures++;
            continue;
        }
        uint64_t v = (uint64_t)i, got = 0;
        if (xm_write(a, size - 8, &v, 8) != XM_OK || xm_read(a, size - 8, &got, 8) != XM_OK || got != v) {
            snprintf(wk->why, sizeof(wk->why), "I/O: %s", xm_last_error(ctx));
            wk->failures++;
        }
        if (xm_free(ctx, xm_region_id(a), NULL) != XM_OK) {
            snprintf(wk->why, sizeof(wk->why), "free: %s", xm_last_error(ctx));
            wk->failures++;
        }
        xm_alloc_close(a);
    }
    xm_disconnect(ctx);
    return NULL;
}

Test(manager, concurrent_allocate_free_leaks_nothing, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 3, "256M", "tcp", NULL);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, NULL);
    uint64_t start = xt_used_on_appliances(ctx, NULL);
    worker_t wk[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        wk[i] = (worker_t){.idx = i};
        pthread_create(&th[i], NULL, churn, &wk[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(wk[i].failures, 0, "client %d: %d failures (%s)", i, wk[i].failures, wk[i].why);
    }
    cr_assert_eq(wait_used(ctx, start, 0), start, "capacity did not return");
    cr_assert_eq(wait_pool_direct(0), 0, "appliances hold regions nobody knows");
    xm_alloc_info_t *infos;
    size_t n;
    cr_assert_eq(xm_alloc_list(ctx, &infos, &n), XM_OK);
    cr_assert_eq(n, 0);
    xm_disconnect(ctx);
}

Test(manager, quotas_and_grants, .fini = teardown, .timeout = 120)
{
    const char *const extra[] = {"--quotas", "alice=64M", NULL};
    xt_cluster_start(&cl, 2, "256M", "tcp", extra);
    xm_ctx_h alice = xt_manager_connect(&cl.mgr, "alice");
    xm_ctx_h bob = xt_manager_connect(&cl.mgr, "bob");
    xm_alloc_h a, x;
    cr_assert_eq(xm_alloc(alice, 48u << 20, "stripe:2", "shared", &a), XM_OK, "%s", xm_last_error(alice));
    cr_assert_eq(xm_alloc(alice, 32u << 20, NULL, NULL, &x), XM_ERR_NO_SPACE);
    cr_assert(strstr(xm_last_error(alice), "quota") != NULL, "error '%s' does not name the quota",
              xm_last_error(alice));
    cr_assert_eq(xm_alloc(bob, 32u << 20, NULL, NULL, &x), XM_OK, "bob has no quota");
    cr_assert_eq(xm_free(bob, xm_region_id(x), NULL), XM_OK);
    xm_alloc_close(x);
    cr_assert_eq(xm_alloc(alice, 4096, NULL, "shared", &x), XM_ERR_EXISTS);

    const char msg[] = "granted bytes";
    cr_assert_eq(xm_write(a, (24u << 20) - 3, msg, sizeof(msg)), XM_OK);
    /* not granted: refused, and bob cannot free it */
    cr_assert_eq(xm_attach(bob, 0, "alice/shared", XM_ACCESS_READ, &x), XM_ERR_PERM);
    cr_assert_eq(xm_free(bob, 0, "alice/shared"), XM_ERR_PERM);
    cr_assert_eq(xm_alloc_grant(bob, 0, "alice/shared", "bob", XM_ACCESS_READ_WRITE), XM_ERR_PERM);
    /* read-only grant: read works, read-write attach is refused */
    cr_assert_eq(xm_alloc_grant(alice, 0, "shared", "bob", XM_ACCESS_READ), XM_OK, "%s",
                 xm_last_error(alice));
    cr_assert_eq(xm_attach(bob, 0, "alice/shared", XM_ACCESS_READ_WRITE, &x), XM_ERR_PERM);
    cr_assert_eq(xm_attach(bob, 0, "alice/shared", XM_ACCESS_READ, &x), XM_OK, "%s", xm_last_error(bob));
    char got[sizeof(msg)];
    cr_assert_eq(xm_read(x, (24u << 20) - 3, got, sizeof(got)), XM_OK, "%s", xm_last_error(bob));
    cr_assert_str_eq(got, msg);
    cr_assert_eq(xm_write(x, 0, msg, sizeof(msg)), XM_ERR_PERM);
    xm_alloc_close(x);
    /* upgraded grant: bob writes, alice reads it */
    cr_assert_eq(xm_alloc_grant(alice, 0, "shared", "bob", XM_ACCESS_READ_WRITE), XM_OK);
    cr_assert_eq(xm_attach(bob, 0, "alice/shared", XM_ACCESS_READ_WRITE, &x), XM_OK, "%s", xm_last_error(bob));
    cr_assert_eq(xm_write(x, 100, "bob", 4), XM_OK, "%s", xm_last_error(bob));
    cr_assert_eq(xm_read(a, 100, got, 4), XM_OK);
    cr_assert_str_eq(got, "bob");
    xm_alloc_info_t *infos;
    size_t n;
    cr_assert_eq(xm_alloc_list(bob, &infos, &n), XM_OK);
    cr_assert_eq(n, 1, "bob lists the allocation granted to him");
    free(infos);
    /* revoked: only the owner may, only an existing grant; bob's open handle stops at once,
     * he can no longer attach or list it, and alice keeps every byte */
    cr_assert_eq(xm_alloc_revoke(bob, 0, "alice/shared", "bob"), XM_ERR_PERM);
    cr_assert_eq(xm_alloc_revoke(alice, 0, "shared", "carol"), XM_ERR_NOT_FOUND);
    cr_assert_eq(xm_alloc_revoke(alice, 0, "shared", "bob"), XM_OK, "%s", xm_last_error(alice));
    cr_assert_neq(xm_read(x, 100, got, 4), XM_OK, "bob's open handle still reads after the revoke");
    cr_assert_neq(xm_write(x, 100, "BOB", 4), XM_OK, "bob's open handle still writes after the revoke");
    xm_alloc_h y;
    cr_assert_eq(xm_attach(bob, 0, "alice/shared", XM_ACCESS_READ, &y), XM_ERR_PERM);
    cr_assert_eq(xm_alloc_list(bob, &infos, &n), XM_OK);
    cr_assert_eq(n, 0, "bob still lists the allocation after the revoke");
    free(infos);
    cr_assert_eq(xm_read(a, 100, got, 4), XM_OK, "%s", xm_last_error(alice));
    cr_assert_str_eq(got, "bob");
    cr_assert_eq(xm_alloc_revoke(alice, 0, "shared", "bob"), XM_ERR_NOT_FOUND, "a second revoke");
    xm_alloc_close(x);
    /* freeing gives the quota back */
    cr_assert_eq(xm_free(alice, 0, "shared"), XM_OK);
    cr_assert_eq(xm_alloc(alice, 60u << 20, NULL, NULL, &x), XM_OK, "%s", xm_last_error(alice));
    cr_assert_eq(xm_free(alice, xm_region_id(x), NULL), XM_OK);
    xm_alloc_close(x);
    xm_alloc_close(a);
    xm_disconnect(alice);
    xm_disconnect(bob);
}

/* One AllocCreate sent as the client library sends it, with a chosen request id. */
static xm_status_t raw_alloc(xm_ctx_h ctx, uint64_t request_id, uint64_t size, uint64_t *id_p,
                             uint64_t *region_p)
{
    Xmem__AllocRequest ar = XMEM__ALLOC_REQUEST__INIT;
    ar.request_id = request_id;
    ar.size = size;
    ar.policy = "stripe:2:64K";
    ar.name = "";
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_ALLOC_CREATE;
    req.alloc_create = &ar;
    xm_status_t s = xm__rpc(ctx, &req, &rep);
    if (s != XM_OK) return s;
    cr_assert_eq(rep->body_case, XMEM__MSG__BODY_ALLOC_DESC);
    *id_p = rep->alloc_desc->id;
    *region_p = rep->alloc_desc->parts[0]->region_id;
    proto_msg_free(rep);
    return XM_OK;
}

Test(manager, retried_request_id_allocates_once, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 2, "256M", "tcp", NULL);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, "alice");
    uint64_t id1, id2, id3, r1, r2, r3;
    cr_assert_eq(raw_alloc(ctx, 0x5eed, 4u << 20, &id1, &r1), XM_OK, "%s", xm_last_error(ctx));
    uint32_t regions;
    xt_used_on_appliances(ctx, &regions);
    cr_assert_eq(regions, 2);
    /* the retry (same id, e.g. after a lost reply) on the same and on a new connection */
    cr_assert_eq(raw_alloc(ctx, 0x5eed, 4u << 20, &id2, &r2), XM_OK, "%s", xm_last_error(ctx));
    xm_ctx_h again = xt_manager_connect(&cl.mgr, "alice");
    cr_assert_eq(raw_alloc(again, 0x5eed, 4u << 20, &id3, &r3), XM_OK, "%s", xm_last_error(again));
    cr_assert_eq(id2, id1, "a retry got another allocation");
    cr_assert_eq(id3, id1);
    cr_assert_eq(r2, r1, "a retry got another region");
    cr_assert_eq(r3, r1);
    /* (used bytes also count regions made ahead in the background: compare regions) */
    xt_used_on_appliances(ctx, &regions);
    cr_assert_eq(regions, 2, "a retry allocated again");
    xm_alloc_info_t *infos;
    size_t n;
    cr_assert_eq(xm_alloc_list(ctx, &infos, &n), XM_OK);
    cr_assert_eq(n, 1, "%zu allocations listed after three sends of one request", n);
    free(infos);
    /* the same id from another tenant is another request; a reused id with another size is refused */
    xm_ctx_h bob = xt_manager_connect(&cl.mgr, "bob");
    uint64_t idb, rb;
    cr_assert_eq(raw_alloc(bob, 0x5eed, 4u << 20, &idb, &rb), XM_OK);
    cr_assert_neq(idb, id1);
    cr_assert_eq(raw_alloc(ctx, 0x5eed, 8u << 20, &id2, &r2), XM_ERR_INVALID);
    /* a new id is a new allocation */
    cr_assert_eq(raw_alloc(ctx, 0x5eee, 4u << 20, &id2, &r2), XM_OK);
    cr_assert_neq(id2, id1);
    cr_assert_eq(xm_free(ctx, id1, NULL), XM_OK);
    cr_assert_eq(xm_free(ctx, id2, NULL), XM_OK);
    cr_assert_eq(xm_free(bob, idb, NULL), XM_OK);
    cr_assert_eq(wait_used(ctx, 0, 0), 0);
    xm_disconnect(bob);
    xm_disconnect(again);
    xm_disconnect(ctx);
}

/* Regions of tenant on the appliances, asked directly; *stock_p: made ahead by the manager. */
static uint32_t direct_regions(const char *tenant, uint32_t *stock_p)
{
    uint32_t n_all = 0, stock = 0;
    for (int i = 0; i < cl.n; i++) {
        if (cl.app[i].pid <= 0) continue;
        xm_ctx_h d = xt_connect(&cl.app[i], tenant);
        xm_region_info_t *infos;
        size_t n;
        cr_assert_eq(xm_region_list(d, &infos, &n), XM_OK);
        for (size_t j = 0; j < n; j++) {
            cr_assert_str_eq(infos[j].owner, tenant, "tenant %s is shown a region of %s", tenant,
                             infos[j].owner);
            stock += strncmp(infos[j].name, "@alloc-s", 8) == 0;
        }
        n_all += (uint32_t)n;
        free(infos);
        xm_disconnect(d);
    }
    if (stock_p != NULL) *stock_p = stock;
    return n_all;
}

/* The manager makes fresh regions ahead for a tenant's common sizes and frees behind the
 * reply: every allocation still starts zeroed, never holds another tenant's (or its own
 * earlier) bytes, a freed allocation's keys die, and nothing is left once all is freed. */
Test(manager, stock_hands_out_only_fresh_memory, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 2, "256M", "tcp", NULL);
    xm_ctx_h t[2] = {xt_manager_connect(&cl.mgr, "alice"), xt_manager_connect(&cl.mgr, "bob")};
    uint64_t start = xt_used_on_appliances(t[0], NULL);
    const uint64_t size = 1u << 20;
    uint8_t *pat = malloc(size), *back = malloc(size), *zero = calloc(1, size);
    uint32_t stocked_seen = 0, stock;
    for (int i = 0; i < 60; i++) {
        xm_ctx_h who = t[i % 2];
        xm_alloc_h a;
        cr_assert_eq(xm_alloc(who, size, "single", NULL, &a), XM_OK, "%s", xm_last_error(who));
        cr_assert_eq(xm_read(a, 0, back, size), XM_OK, "%s", xm_last_error(who));
        cr_assert(memcmp(back, zero, size) == 0, "allocation %d starts with earlier bytes", i);
        memset(pat, 0x40 + i, size);
        cr_assert_eq(xm_write(a, 0, pat, size), XM_OK);
        if (i % 2 == 0) {
            /* region ids are never reused: one made ahead is recognised by its name */
            direct_regions("alice", &stock);
            stocked_seen += stock;
        }
        if (i == 59) {
            /* the last one: free while still holding the handle, then its keys must die */
            cr_assert_eq(xm_free(who, xm_region_id(a), NULL), XM_OK);
            uint64_t deadline = xt_now_ms() + 5000;
            while (xm_read(a, 0, back, 8) == XM_OK && xt_now_ms() < deadline) usleep(10000);
            cr_assert_neq(xm_read(a, 0, back, 8), XM_OK, "a freed allocation stays readable");
        } else {
            cr_assert_eq(xm_free(who, xm_region_id(a), NULL), XM_OK, "%s", xm_last_error(who));
        }
        xm_alloc_close(a);
        if (i % 10 == 0) usleep(100000); /* time for the stock to be made */
    }
    cr_assert_gt(stocked_seen, 0, "no region was ever made ahead (the test proves nothing)");
    direct_regions("bob", NULL); /* asserts bob is shown only his own */
    /* a free followed at once by an allocation leaks nothing: all comes back */
    for (int i = 0; i < 100; i++) {
        xm_alloc_h a;
        cr_assert_eq(xm_alloc(t[0], size, "single", NULL, &a), XM_OK, "%s", xm_last_error(t[0]));
        cr_assert_eq(xm_free(t[0], xm_region_id(a), NULL), XM_OK);
        xm_alloc_close(a);
    }
    cr_assert_eq(wait_used(t[0], start, 0), start, "capacity did not return");
    cr_assert_eq(wait_pool_direct(0), 0, "appliances still hold regions");
    xm_disconnect(t[0]);
    xm_disconnect(t[1]);
    free(pat);
    free(back);
    free(zero);
}

/* Regions made ahead are not in the table: a manager killed while holding some finds
 * them on the appliances when they register again and reclaims them. */
Test(manager, manager_restart_with_stock_leaks_nothing, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 2, "256M", "tcp", NULL);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, "alice");
    uint32_t stock = 0;
    uint64_t deadline = xt_now_ms() + 5000;
    while (stock == 0 && xt_now_ms() < deadline) {
        xm_alloc_h a;
        cr_assert_eq(xm_alloc(ctx, 1u << 20, "single", NULL, &a), XM_OK, "%s", xm_last_error(ctx));
        cr_assert_eq(xm_free(ctx, xm_region_id(a), NULL), XM_OK);
        xm_alloc_close(a);
        usleep(50000);
        direct_regions("alice", &stock);
    }
    cr_assert_gt(stock, 0, "no region was made ahead");
    char addr[64];
    snprintf(addr, sizeof(addr), "%s", cl.mgr.addr);
    xt_manager_kill9(&cl.mgr);
    cr_assert_gt(pool_used_direct(), 0);
    xt_manager_start(&cl.mgr, cl.dir, cl.secret, addr, NULL);
    cr_assert(xt_cluster_wait_up(&cl, 2, 10000), "appliances did not re-register");
    xm_disconnect(ctx);
    ctx = xt_manager_connect(&cl.mgr, "alice");
    cr_assert_eq(wait_pool_direct(0), 0, "regions made ahead by the killed manager leaked");
    cr_assert_eq(wait_used(ctx, 0, 0), 0);
    xm_disconnect(ctx);
}

/* True when the peer closes fd within ms (replies before the close are read and dropped). */
static bool closed_within(int fd, int ms)
{
    char b[4096];
    uint64_t deadline = xt_now_ms() + (uint64_t)ms;
    while (xt_now_ms() < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) continue;
        ssize_t n = recv(fd, b, sizeof(b), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN)) return true;
    }
    return false;
}

static int raw_manager_connect(void)
{
    const char *colon = strrchr(cl.mgr.addr, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* One thread serves every connection: a peer that stalls mid-frame, before or after it
 * authenticated, or sends garbage, must hold nobody else up and is dropped after the
 * timeout (--timeout-ms); a client that sends several requests at once gets every reply,
 * in order. */
Test(manager, stalled_and_pipelining_peers, .fini = teardown, .timeout = 120)
{
    const char *extra[] = {"--timeout-ms", "3000", NULL};
    xt_cluster_start(&cl, 1, "256M", "tcp", extra);
    int silent = raw_manager_connect();                 /* never finishes its handshake */
    int half = raw_manager_connect();
    cr_assert_eq(send(half, "\x00\x00", 2, MSG_NOSIGNAL), 2);
    int huge = raw_manager_connect();
    cr_assert_eq(send(huge, "\xff\xff\xff\xff", 4, MSG_NOSIGNAL), 4);
    /* authenticated, then half a request frame */
    xm_ctx_h stalled = xt_manager_connect(&cl.mgr, "mallory");
    cr_assert_eq(send(stalled->conn.fd, "\x00\x00\x01\x00\x08\x01", 6, MSG_NOSIGNAL), 6);

    /* meanwhile another client allocates and frees, and its data round-trips */
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, "alice");
    for (int i = 0; i < 50; i++) {
        xm_alloc_h a;
        cr_assert_eq(xm_alloc(ctx, 1u << 20, "single", NULL, &a), XM_OK, "%s", xm_last_error(ctx));
        cr_assert_eq(xm_write(a, 4096, "served", 6), XM_OK, "%s", xm_last_error(ctx));
        char got[6];
        cr_assert_eq(xm_read(a, 4096, got, 6), XM_OK);
        cr_assert(memcmp(got, "served", 6) == 0);
        cr_assert_eq(xm_free(ctx, xm_region_id(a), NULL), XM_OK, "%s", xm_last_error(ctx));
        xm_alloc_close(a);
    }
    /* all of that happened while the stalled peer was still connected: had the manager
     * waited for its frame, it would have been dropped (after 3 s) before serving alice */
    char b;
    cr_assert(recv(stalled->conn.fd, &b, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN,
              "alice was served only after the stalled peer was dropped");

    /* the stalled and bad peers are dropped once the timeout passes */
    cr_assert(closed_within(stalled->conn.fd, 10000), "authenticated peer stalled mid-frame not dropped");
    cr_assert(closed_within(half, 10000), "peer stalled mid-handshake not dropped");
    cr_assert(closed_within(huge, 10000), "oversized frame not dropped");
    cr_assert(closed_within(silent, 10000), "silent peer not dropped");
    close(half);
    close(huge);
    close(silent);
    xm_disconnect(stalled);

    /* three requests in one write: three replies, in order */
    xm_msg_t reqs[3];
    Xmem__Empty empty = XMEM__EMPTY__INIT;
    uint8_t all[4096];
    size_t len = 0;
    for (int i = 0; i < 3; i++) {
        reqs[i] = (xm_msg_t)XMEM__MSG__INIT;
        reqs[i].seq = 1000 + (uint64_t)i;
        if (i == 1) {
            reqs[i].body_case = XMEM__MSG__BODY_APPLIANCE_LIST;
            reqs[i].appliance_list = &empty;
        } else {
            reqs[i].body_case = XMEM__MSG__BODY_ALLOC_LIST;
            reqs[i].alloc_list = &empty;
        }
        uint8_t *buf;
        size_t n;
        cr_assert_eq(rpc_seal(&ctx->conn, &reqs[i], &buf, &n), XM_OK); /* sealed, in order */
        memcpy(all + len, buf, n);
        len += n;
        free(buf);
    }
    cr_assert_eq(send(ctx->conn.fd, all, len, MSG_NOSIGNAL), (ssize_t)len);
    for (int i = 0; i < 3; i++) {
        xm_msg_t *rep;
        const char *why = NULL;
        cr_assert_eq(rpc_recv(&ctx->conn, XM_FRAME_MAX_REPLY, rpc_deadline_after(5000), 5000, &rep, &why), XM_OK,
                     "reply %d of 3: %s", i + 1, why != NULL ? why : "?");
        cr_assert_eq(rep->seq, 1000 + (uint64_t)i, "reply out of order");
        cr_assert_eq(rep->status, XM_OK);
        cr_assert_eq(rep->body_case, i == 1 ? XMEM__MSG__BODY_APPLIANCES : XMEM__MSG__BODY_ALLOCS);
        proto_msg_free(rep);
    }
    /* and the connection goes on serving ordinary calls */
    xm_alloc_info_t *infos;
    size_t n;
    cr_assert_eq(xm_alloc_list(ctx, &infos, &n), XM_OK, "%s", xm_last_error(ctx));
    free(infos);
    xm_disconnect(ctx);
}

/* The table is indexed (by id, by name, by request id; each tenant's use kept as a sum):
 * names, request ids and quota come free again when an allocation is freed, and the
 * indexes are rebuilt when a restarted manager loads the table. */
Test(manager, names_retries_and_quota_follow_the_table, .fini = teardown, .timeout = 120)
{
    const char *extra[] = {"--quota", "8M", NULL};
    xt_cluster_start(&cl, 2, "256M", "tcp", extra);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, "alice");
    xm_alloc_h a, b;
    for (int round = 0; round < 3; round++) {
        /* the whole quota, named; then the name and the quota are free again */
        cr_assert_eq(xm_alloc(ctx, 8u << 20, "single", "reused", &a), XM_OK, "round %d: %s", round,
                     xm_last_error(ctx));
        cr_assert_eq(xm_alloc(ctx, 4096, "single", NULL, &b), XM_ERR_NO_SPACE, "quota not enforced");
        cr_assert_eq(xm_free(ctx, 0, "reused"), XM_OK, "%s", xm_last_error(ctx));
        xm_alloc_close(a);
    }
    /* many allocations in the table: each one found by its id and by its name */
    uint64_t ids[64];
    for (int i = 0; i < 64; i++) {
        char name[32];
        snprintf(name, sizeof(name), "n%d", i);
        cr_assert_eq(xm_alloc(ctx, 64u << 10, "single", name, &a), XM_OK, "%s", xm_last_error(ctx));
        ids[i] = xm_region_id(a);
        xm_alloc_close(a);
    }
    uint64_t retry_id, retry_region;
    cr_assert_eq(raw_alloc(ctx, 0xabc, 128u << 10, &retry_id, &retry_region), XM_OK, "%s",
                 xm_last_error(ctx));
    /* a restarted manager rebuilds the indexes from the table on disk */
    char addr[64];
    snprintf(addr, sizeof(addr), "%s", cl.mgr.addr);
    xt_manager_kill9(&cl.mgr);
    xm_disconnect(ctx);
    xt_manager_start(&cl.mgr, cl.dir, cl.secret, addr, extra);
    cr_assert(xt_cluster_wait_up(&cl, 2, 10000), "appliances did not come back");
    ctx = xt_manager_connect(&cl.mgr, "alice");
    uint64_t again, region;
    cr_assert_eq(raw_alloc(ctx, 0xabc, 128u << 10, &again, &region), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(again, retry_id, "a retry after the restart allocated again");
    cr_assert_eq(region, retry_region);
    for (int i = 63; i >= 0; i -= 7) {
        char name[32];
        snprintf(name, sizeof(name), "n%d", i);
        cr_assert_eq(xm_attach(ctx, 0, name, XM_ACCESS_READ_WRITE, &a), XM_OK, "%s: %s", name,
                     xm_last_error(ctx));
        cr_assert_eq(xm_region_id(a), ids[i], "%s found another allocation", name);
        xm_alloc_close(a);
    }
    /* 64 x 64 KiB + 128 KiB held: 4 MiB + 128 KiB of 8 MiB; 4 MiB more is over */
    cr_assert_eq(xm_alloc(ctx, 4u << 20, "single", NULL, &a), XM_ERR_NO_SPACE,
                 "quota use not restored with the table");
    cr_assert_eq(xm_free(ctx, retry_id, NULL), XM_OK);
    for (int i = 0; i < 64; i++) {
        char name[32];
        snprintf(name, sizeof(name), "n%d", i);
        cr_assert_eq(xm_free(ctx, 0, name), XM_OK, "%s: %s", name, xm_last_error(ctx));
    }
    cr_assert_eq(xm_alloc(ctx, 8u << 20, "single", "n5", &a), XM_OK, "quota or name not given back: %s",
                 xm_last_error(ctx));
    cr_assert_eq(xm_free(ctx, 0, "n5"), XM_OK);
    xm_alloc_close(a);
    xm_disconnect(ctx);
}

/* ---- resilient policies (issue 12): placement, state, the table ------------------- */

/* Start appliance i of the cluster in failure domain dom (xt_cluster_start_appliance names
 * them d0, d1, ...). */
static void start_in_domain(xt_cluster_t *c, int i, const char *dom)
{
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/a%d", c->dir, i);
    mkdir(sub, 0755);
    xt_opts_t o = {.provider = c->provider, .pool = c->pool, .secret = c->secret, .dir = sub,
                   .extra = {"--manager", c->mgr.addr, "--domain", dom, "--heartbeat-ms", "100"}};
    xt_start(&c->app[i], &o);
}

/* A cluster of n appliances in the domains given. */
static void cluster_in_domains(xt_cluster_t *c, int n, const char *const *doms)
{
    xt_cluster_start(c, 0, "256M", "tcp", NULL);
    c->n = n;
    for (int i = 0; i < n; i++) start_in_domain(c, i, doms[i]);
    cr_assert(xt_cluster_wait_up(c, n, 10000), "%d appliances did not come up", n);
}

/* Ask for an allocation as the wire carries it; the descriptor is the caller's to free. */
static Xmem__AllocDesc *raw_create(xm_ctx_h ctx, uint64_t request_id, uint64_t size,
                                   const char *policy, const char *name, xm_msg_t **rep_p)
{
    Xmem__AllocRequest ar = XMEM__ALLOC_REQUEST__INIT;
    ar.request_id = request_id;
    ar.size = size;
    ar.policy = (char *)policy;
    ar.name = (char *)name;
    xm_msg_t req = XMEM__MSG__INIT;
    req.body_case = XMEM__MSG__BODY_ALLOC_CREATE;
    req.alloc_create = &ar;
    cr_assert_eq(xm__rpc(ctx, &req, rep_p), XM_OK, "%s: %s", policy, xm_last_error(ctx));
    cr_assert_eq((*rep_p)->body_case, XMEM__MSG__BODY_ALLOC_DESC);
    return (*rep_p)->alloc_desc;
}

static Xmem__AllocDesc *raw_attach(xm_ctx_h ctx, const char *name, xm_msg_t **rep_p)
{
    Xmem__AllocRef ref = XMEM__ALLOC_REF__INIT;
    ref.name = (char *)name;
    ref.access = XMEM__ACCESS__ACCESS_READ_WRITE;
    xm_msg_t req = XMEM__MSG__INIT;
    req.body_case = XMEM__MSG__BODY_ALLOC_ATTACH;
    req.alloc_attach = &ref;
    cr_assert_eq(xm__rpc(ctx, &req, rep_p), XM_OK, "attach %s: %s", name, xm_last_error(ctx));
    cr_assert_eq((*rep_p)->body_case, XMEM__MSG__BODY_ALLOC_DESC);
    return (*rep_p)->alloc_desc;
}

/* The manager's view of allocation id: its info (asserts it is listed). */
static xm_alloc_info_t alloc_info(xm_ctx_h ctx, uint64_t id)
{
    xm_alloc_info_t *infos = NULL, found;
    size_t n = 0;
    bool seen = false;
    cr_assert_eq(xm_alloc_list(ctx, &infos, &n), XM_OK, "%s", xm_last_error(ctx));
    for (size_t i = 0; i < n; i++) {
        if (infos[i].id == id) {
            found = infos[i];
            seen = true;
        }
    }
    free(infos);
    cr_assert(seen, "allocation %llu is not listed", (unsigned long long)id);
    return found;
}

/* Wait until allocation id is in state want; its last state otherwise. */
static xm_alloc_info_t wait_state(xm_ctx_h ctx, uint64_t id, const char *want)
{
    uint64_t deadline = xt_now_ms() + 10000;
    xm_alloc_info_t in;
    do {
        in = alloc_info(ctx, id);
        if (strcmp(in.state, want) == 0) break;
        usleep(50000);
    } while (xt_now_ms() < deadline);
    return in;
}

/* The cluster index of the appliance at addr. */
static int app_at(const char *addr)
{
    for (int i = 0; i < cl.n; i++) {
        if (strcmp(cl.app[i].addr, addr) == 0) return i;
    }
    cr_assert_fail("no appliance at %s", addr);
    return -1;
}

Test(manager, ec_pieces_spread_over_domains_and_losses_show, .fini = teardown, .timeout = 120)
{
    static const char *const doms[] = {"rackA", "rackA", "rackB", "rackB", "rackC", "rackC"};
    cluster_in_domains(&cl, 6, doms);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, NULL);
    /* 1 MiB + 1 as ec:4+2:64K: 5 stripes of 256 KiB, every part 5 x 64 KiB (padded) */
    xm_msg_t *rep;
    Xmem__AllocDesc *d = raw_create(ctx, 0xec42, (1u << 20) + 1, "ec:4+2:64K", "coded", &rep);
    cr_assert_eq(d->layout, XMEM__LAYOUT__LAYOUT_EC);
    cr_assert_str_eq(d->policy, "ec:4+2:64K");
    cr_assert_eq(d->n_parts, 6);
    cr_assert_eq(d->width, 6);
    cr_assert_eq(d->redundancy, 2);
    cr_assert_eq(d->chunk, 65536);
    /* every piece of a stripe on its own appliance, two per domain (no domain holds more
     * pieces of a stripe than the code tolerates losing) */
    int per_dom[3] = {0};
    bool used[6] = {false};
    for (size_t i = 0; i < 6; i++) {
        int a = app_at(d->parts[i]->appliance);
        cr_assert(!used[a], "two parts on appliance %s", d->parts[i]->appliance);
        used[a] = true;
        per_dom[a / 2]++;
        cr_assert_eq(d->parts[i]->size, 5u * (65536 + XM_LAYOUT_META_REC), "part %zu holds %llu bytes", i,
                     (unsigned long long)d->parts[i]->size);
    }
    for (int k = 0; k < 3; k++) cr_assert_eq(per_dom[k], 2, "domain %d holds %d parts", k, per_dom[k]);
    cr_assert_eq(d->domains, 3);
    cr_assert_eq(d->domain_max, 2);
    uint64_t id = d->id;
    char part_addr[6][64];
    for (int i = 0; i < 6; i++) snprintf(part_addr[i], sizeof(part_addr[i]), "%s", d->parts[i]->appliance);
    proto_msg_free(rep);
    /* and a 2-copy replica set */
    d = raw_create(ctx, 0x2e91, 3u << 20, "replicate:2", "copies", &rep);
    cr_assert_eq(d->layout, XMEM__LAYOUT__LAYOUT_REPLICATE);
    cr_assert_str_eq(d->policy, "replicate:2");
    cr_assert(d->n_parts == 2 && d->redundancy == 1 && d->parts[0]->size == (3u << 20) + 48 * XM_LAYOUT_META_REC &&
              d->parts[1]->size == (3u << 20) + 48 * XM_LAYOUT_META_REC);
    cr_assert_eq(d->domains, 2, "the copies share a domain");
    int rep0 = app_at(d->parts[0]->appliance), rep1 = app_at(d->parts[1]->appliance);
    uint64_t rid = d->id;
    proto_msg_free(rep);

    xm_alloc_info_t in = alloc_info(ctx, id);
    cr_assert_str_eq(in.state, "ok");
    cr_assert(in.parts == 6 && in.redundancy == 2 && in.domains == 3 && in.domain_max == 2 &&
              in.unavailable == 0);
    cr_assert_str_eq(in.policy, "ec:4+2:64K");

    /* one appliance of the ec set down: degraded; a second: still degraded; a third: lost */
    const char *want[] = {"degraded", "degraded", "lost"};
    for (int k = 0; k < 3; k++) {
        xt_kill9(&cl.app[app_at(part_addr[k])]);
        in = wait_state(ctx, id, want[k]);
        cr_assert_str_eq(in.state, want[k], "%d of 6 appliances killed: state %s", k + 1, in.state);
        cr_assert_eq(in.unavailable, (uint32_t)k + 1);
    }
    /* the replica set: R-1 copies down is degraded, all of them lost */
    const char *rstate = cl.app[rep0].pid <= 0 && cl.app[rep1].pid <= 0 ? "lost"
                         : cl.app[rep0].pid <= 0 || cl.app[rep1].pid <= 0 ? "degraded" : "ok";
    cr_assert_str_eq(alloc_info(ctx, rid).state, rstate);
    if (cl.app[rep0].pid > 0) xt_kill9(&cl.app[rep0]);
    in = wait_state(ctx, rid, cl.app[rep1].pid > 0 ? "degraded" : "lost");
    cr_assert_str_eq(in.state, cl.app[rep1].pid > 0 ? "degraded" : "lost");
    if (cl.app[rep1].pid > 0) xt_kill9(&cl.app[rep1]);
    in = wait_state(ctx, rid, "lost");
    cr_assert_str_eq(in.state, "lost", "both copies gone: %s", in.state);
    xm_disconnect(ctx);
}

/* The client routes resilient allocations through its resilient path (tests in
 * test_resilience.c); xm_alloc_create makes them without a handle. */
Test(manager, client_takes_resilient_descriptors, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 3, "256M", "tcp", NULL);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, NULL);
    xm_alloc_h a = NULL;
    cr_assert_eq(xm_alloc(ctx, 1u << 20, "replicate:2", "r", &a), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_not_null(a);
    xm_alloc_close(a);
    cr_assert_eq(xm_free(ctx, 0, "r"), XM_OK);
    xm_alloc_info_t in;
    cr_assert_eq(xm_alloc_create(ctx, 1u << 20, "ec:2+1:4K", "e", &in), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_str_eq(in.policy, "ec:2+1:4K");
    cr_assert(in.parts == 3 && in.redundancy == 1 && in.domains == 3 && in.domain_max == 1);
    cr_assert_str_eq(in.state, "ok");
    cr_assert_eq(xm_attach(ctx, 0, "e", XM_ACCESS_READ, &a), XM_OK, "%s", xm_last_error(ctx));
    xm_alloc_close(a);
    /* bad policies get the layout module's reasons */
    cr_assert_eq(xm_alloc_create(ctx, 1u << 20, "ec:4+5", NULL, &in), XM_ERR_INVALID);
    cr_assert(strstr(xm_last_error(ctx), "parity pieces M must be 1..4") != NULL, "%s",
              xm_last_error(ctx));
    cr_assert_eq(xm_alloc_create(ctx, 1u << 20, "replicate:9", NULL, &in), XM_ERR_INVALID);
    cr_assert(strstr(xm_last_error(ctx), "replicas must be 2..8") != NULL, "%s", xm_last_error(ctx));
    /* more parts than appliances */
    cr_assert_eq(xm_alloc_create(ctx, 1u << 20, "ec:4+2", NULL, &in), XM_ERR_NO_SPACE);
    cr_assert_eq(xm_free(ctx, 0, "e"), XM_OK);
    xm_disconnect(ctx);
}

/* One failure domain: placed anyway, and said so in the reply and by `xmem alloc`. */
Test(manager, one_domain_cluster_places_anyway_and_says_so, .fini = teardown, .timeout = 120)
{
    static const char *const doms[] = {"lab", "lab", "lab", "lab", "lab", "lab"};
    cluster_in_domains(&cl, 6, doms);
    char cred[PATH_MAX + 80], cmd[3 * PATH_MAX];
    xt_cred(cl.secret, "alice", cred, sizeof(cred));
    snprintf(cmd, sizeof(cmd), "XMEM_MANAGER=%s XMEM_SECRET_FILE=%s XMEM_TENANT=alice %s/xmem alloc "
             "--size 1M --policy ec:4+2 --name onedom 2>%s/alloc.err", cl.mgr.addr, cred,
             XMEM_BIN_DIR, cl.dir);
    FILE *p = popen(cmd, "r");
    cr_assert(p != NULL);
    char out[128] = "";
    cr_assert(fgets(out, sizeof(out), p) != NULL, "xmem alloc printed nothing");
    cr_assert_eq(pclose(p), 0, "xmem alloc failed");
    uint64_t id = strtoull(out, NULL, 10);
    cr_assert_gt(id, 0, "stdout is the id: '%s'", out);
    char errpath[PATH_MAX], err[1024] = "";
    snprintf(errpath, sizeof(errpath), "%s/alloc.err", cl.dir);
    FILE *e = fopen(errpath, "r");
    cr_assert(e != NULL);
    size_t got = fread(err, 1, sizeof(err) - 1, e);
    err[got] = '\0';
    fclose(e);
    cr_assert(strstr(err, "warning") != NULL && strstr(err, "6 parts are in 1 failure domain") != NULL &&
              strstr(err, "not of a whole domain") != NULL, "stderr: %s", err);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, NULL);
    xm_alloc_info_t in = alloc_info(ctx, id);
    cr_assert(in.domains == 1 && in.domain_max == 6 && in.parts == 6, "domains %u max %u", in.domains,
              in.domain_max);
    cr_assert_str_eq(in.state, "ok");
    cr_assert_eq(xm_free(ctx, id, NULL), XM_OK);
    xm_disconnect(ctx);
}

/* The policy is in the table: a restarted manager hands out the same resilient descriptor. */
Test(manager, resilient_policy_survives_a_manager_restart, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 6, "256M", "tcp", NULL);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, NULL);
    xm_msg_t *rep;
    Xmem__AllocDesc *d = raw_create(ctx, 0x1e2, 8u << 20, "ec:4+2:1M", "ecr", &rep);
    uint64_t regions[6];
    for (int i = 0; i < 6; i++) regions[i] = d->parts[i]->region_id;
    uint64_t id = d->id;
    proto_msg_free(rep);
    d = raw_create(ctx, 0x1e3, 1u << 20, "replicate:3", "rr", &rep);
    uint64_t rid = d->id;
    proto_msg_free(rep);
    char addr[64];
    snprintf(addr, sizeof(addr), "%s", cl.mgr.addr);
    xt_manager_kill9(&cl.mgr);
    xm_disconnect(ctx);
    xt_manager_start(&cl.mgr, cl.dir, cl.secret, addr, NULL);
    cr_assert(xt_cluster_wait_up(&cl, 6, 10000), "appliances did not come back");
    ctx = xt_manager_connect(&cl.mgr, NULL);
    d = raw_attach(ctx, "ecr", &rep);
    cr_assert_eq(d->id, id);
    cr_assert_eq(d->layout, XMEM__LAYOUT__LAYOUT_EC);
    cr_assert_str_eq(d->policy, "ec:4+2:1024K");
    cr_assert(d->width == 6 && d->redundancy == 2 && d->chunk == 1u << 20 && d->n_parts == 6);
    for (int i = 0; i < 6; i++) cr_assert_eq(d->parts[i]->region_id, regions[i], "part %d moved", i);
    proto_msg_free(rep);
    d = raw_attach(ctx, "rr", &rep);
    cr_assert(d->id == rid && d->layout == XMEM__LAYOUT__LAYOUT_REPLICATE && d->redundancy == 2 &&
              d->n_parts == 3);
    proto_msg_free(rep);
    xm_alloc_info_t in = alloc_info(ctx, id);
    cr_assert_str_eq(in.state, "ok");
    cr_assert_eq(in.redundancy, 2);
    cr_assert_eq(xm_free(ctx, id, NULL), XM_OK);
    cr_assert_eq(xm_free(ctx, rid, NULL), XM_OK);
    xm_disconnect(ctx);
}

/* Run sql on the manager's table (the manager is stopped). */
static void table_sql(const char *db, const char *sql)
{
    sqlite3 *h;
    cr_assert_eq(sqlite3_open(db, &h), SQLITE_OK);
    char *err = NULL;
    cr_assert_eq(sqlite3_exec(h, sql, NULL, NULL, &err), SQLITE_OK, "%s: %s", sql, err ? err : "");
    sqlite3_close(h);
}

static int table_int(const char *db, const char *sql)
{
    sqlite3 *h;
    sqlite3_stmt *s;
    cr_assert_eq(sqlite3_open(db, &h), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(h, sql, -1, &s, NULL), SQLITE_OK, "%s", sqlite3_errmsg(h));
    int v = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : -1;
    sqlite3_finalize(s);
    sqlite3_close(h);
    return v;
}

/* A table written before resilient policies (user_version 1, no redundancy column) is
 * upgraded in place: its allocations load as they were, new ones record their policy. */
Test(manager, table_from_before_resilience_is_upgraded, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 3, "256M", "tcp", NULL);
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, NULL);
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, 4u << 20, "stripe:3:64K", "old", &a), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *w = malloc(4u << 20), *r = malloc(4u << 20);
    xt_fill(w, 4u << 20, 77);
    cr_assert_eq(xm_write(a, 0, w, 4u << 20), XM_OK, "%s", xm_last_error(ctx));
    uint64_t old_id = xm_region_id(a);
    xm_alloc_close(a);
    char addr[64];
    snprintf(addr, sizeof(addr), "%s", cl.mgr.addr);
    cr_assert_eq(xt_manager_stop(&cl.mgr), 0);
    xm_disconnect(ctx);
    cr_assert_eq(table_int(cl.mgr.db, "PRAGMA user_version"), 2);
    /* back to the schema of user_version 1 */
    table_sql(cl.mgr.db, "ALTER TABLE allocs DROP COLUMN redundancy; PRAGMA user_version=1;");
    cr_assert_eq(table_int(cl.mgr.db, "SELECT count(*) FROM pragma_table_info('allocs') "
                                      "WHERE name='redundancy'"), 0);
    xt_manager_start(&cl.mgr, cl.dir, cl.secret, addr, NULL);
    cr_assert(xt_cluster_wait_up(&cl, 3, 10000), "appliances did not come back");
    ctx = xt_manager_connect(&cl.mgr, NULL);
    xm_alloc_info_t in = alloc_info(ctx, old_id);
    cr_assert_str_eq(in.policy, "stripe:3:64K");
    cr_assert_eq(in.redundancy, 0);
    cr_assert_str_eq(in.state, "ok");
    cr_assert_eq(xm_attach(ctx, 0, "old", XM_ACCESS_READ_WRITE, &a), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_read(a, 0, r, 4u << 20), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(w, r, 4u << 20) == 0, "the old allocation's bytes changed");
    xm_alloc_close(a);
    /* the upgraded table records a resilient allocation, and keeps it across a restart */
    cr_assert_eq(xm_alloc_create(ctx, 1u << 20, "ec:2+1", "new", &in), XM_OK, "%s", xm_last_error(ctx));
    uint64_t new_id = in.id;
    cr_assert_eq(xt_manager_stop(&cl.mgr), 0);
    xm_disconnect(ctx);
    cr_assert_eq(table_int(cl.mgr.db, "PRAGMA user_version"), 2);
    /* (names are kept scoped by tenant) */
    cr_assert_eq(table_int(cl.mgr.db, "SELECT redundancy FROM allocs WHERE name='alice/new'"), 1);
    cr_assert_eq(table_int(cl.mgr.db, "SELECT layout FROM allocs WHERE name='alice/new'"), 4);
    xt_manager_start(&cl.mgr, cl.dir, cl.secret, addr, NULL);
    cr_assert(xt_cluster_wait_up(&cl, 3, 10000), "appliances did not come back");
    ctx = xt_manager_connect(&cl.mgr, NULL);
    in = alloc_info(ctx, new_id);
    cr_assert_str_eq(in.policy, "ec:2+1:64K");
    cr_assert_eq(in.redundancy, 1);
    /* a record no layout allows (ec with 9 parity pieces) stops the load with a reason */
    cr_assert_eq(xt_manager_stop(&cl.mgr), 0);
    xm_disconnect(ctx);
    table_sql(cl.mgr.db, "UPDATE allocs SET redundancy=9, width=12 WHERE name='alice/new'");
    char cmd[4 * PATH_MAX], log[PATH_MAX + 16];
    snprintf(log, sizeof(log), "%s/bad.log", cl.dir);
    snprintf(cmd, sizeof(cmd), "timeout 20 %s/xmem-manager --listen 127.0.0.1:0 --db %s "
             "--secret-file %s 2>%s >/dev/null", XMEM_BIN_DIR, cl.mgr.db, cl.secret, log);
    int rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) != 0 && WEXITSTATUS(rc) != 124,
              "the manager served a table it cannot read (status %d)", rc);
    FILE *f = fopen(log, "r");
    char text[4096] = "";
    cr_assert(f != NULL);
    text[fread(text, 1, sizeof(text) - 1, f)] = '\0';
    fclose(f);
    cr_assert(strstr(text, "bad allocation record") != NULL && strstr(text, "ec layout") != NULL,
              "log: %s", text);
    free(w);
    free(r);
}
