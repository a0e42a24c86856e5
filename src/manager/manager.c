/* The manager object: options, store, registry and table together. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "manager.h"

xm_status_t mgr_create(const mgr_opts_t *opts, mgr_t **m_p, char *why, size_t whylen)
{
    mgr_t *m = calloc(1, sizeof(*m));
    if (m == NULL) return XM_ERR_NO_MEMORY;
    m->opts = *opts;
    if (m->opts.place == NULL) m->opts.place = mgr_place_spread;
    if (m->opts.store_ops == NULL) m->opts.store_ops = &mgr_store_sqlite;
    m->next_id = 1;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->bg_cond, &ca);
    pthread_condattr_destroy(&ca);
    m->making_appl = UINT32_MAX;
    m->stock_nonce = xm__now_ns() ^ ((uint64_t)getpid() << 32);
    xm_status_t status = m->opts.store_ops->open(opts->db_path, &m->store, why, whylen);
    if (status != XM_OK) goto err;
    status = m->opts.store_ops->load(m->store, m);
    if (status != XM_OK) {
        snprintf(why, whylen, "cannot load the allocation table from %s", opts->db_path);
        goto err;
    }
    status = mgr_bg_start(m);
    if (status != XM_OK) {
        snprintf(why, whylen, "cannot start the background thread");
        goto err;
    }
    status = mgr_rebuild_start(m);
    if (status != XM_OK) {
        snprintf(why, whylen, "cannot start the rebuild thread");
        goto err;
    }
    if (m->opts.keyring != NULL) {
        m->opts.keyring->on_change = mgr_tenants_changed;
        m->opts.keyring->on_change_arg = m;
    }
    *m_p = m;
    return XM_OK;
err:
    mgr_destroy(m);
    return status;
}

void mgr_destroy(mgr_t *m)
{
    if (m == NULL) return;
    mgr_rebuild_stop(m);
    mgr_bg_stop(m);
    if (m->store != NULL) m->opts.store_ops->close(m->store);
    mgr_table_clear(m);
    mgr_registry_cleanup(m);
    pthread_cond_destroy(&m->cond);
    pthread_cond_destroy(&m->bg_cond);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* ---- the background thread ------------------------------------------------ */

/* Wake the thread only from its long (idle) sleep: while busy it looks every BG_TICK_MS,
 * so a burst of frees costs no wake-up each (a cross-CPU wake-up is ~20 us here). */
#define BG_TICK_MS 2
#define BG_IDLE_MS 100

static void bg_kick(mgr_t *m)
{
    if (m->bg_idle) pthread_cond_signal(&m->bg_cond);
}

static bool stock_kind(const mgr_stock_t *s, uint32_t appl, const char *tenant, uint64_t size)
{
    return s->appl == appl && s->size == size && strcmp(s->tenant, tenant) == 0;
}

static void stock_unreserve(mgr_t *m, const mgr_stock_t *s)
{
    mgr_appliance_t *ap = m->apps[s->appl];
    uint64_t r = mgr_extent_round(ap, s->size);
    ap->reserved = ap->reserved > r ? ap->reserved - r : 0;
}

bool mgr_stock_take(mgr_t *m, uint32_t appl, const char *tenant, uint64_t size, uint64_t *id_p,
                    uint64_t *key_p)
{
    for (mgr_stock_t **pp = &m->stock; *pp != NULL; pp = &(*pp)->next) {
        mgr_stock_t *s = *pp;
        if (!stock_kind(s, appl, tenant, size)) continue;
        *pp = s->next;
        stock_unreserve(m, s); /* the allocation reserved the same space */
        *id_p = s->region_id;
        *key_p = s->key;
        free(s);
        bg_kick(m);
        return true;
    }
    return false;
}

int mgr_stock_pick(mgr_t *m, const char *tenant, uint64_t size)
{
    for (mgr_stock_t *s = m->stock; s != NULL; s = s->next) {
        const mgr_appliance_t *ap = m->apps[s->appl];
        if (s->size == size && strcmp(s->tenant, tenant) == 0 && ap->up && ap->validated)
            return (int)s->appl;
    }
    return -1;
}

void mgr_stock_want(mgr_t *m, uint32_t appl, const char *tenant, uint64_t size)
{
    if (m->opts.stock_per_kind == 0 || size > m->opts.stock_max_size || m->bg_drain || m->bg_stop)
        return;
    uint64_t now = xm__now_ns();
    uint32_t have = 0;
    for (mgr_stock_t *s = m->stock; s != NULL; s = s->next) {
        if (stock_kind(s, appl, tenant, size)) {
            s->last_use_ns = now;
            have++;
        }
    }
    for (mgr_stock_t *s = m->to_make; s != NULL; s = s->next) have += stock_kind(s, appl, tenant, size);
    mgr_appliance_t *ap = m->apps[appl];
    uint64_t r = mgr_extent_round(ap, size);
    /* stock never takes the space an allocation could have had: only from the free half */
    if (have >= m->opts.stock_per_kind || !ap->up || !ap->validated ||
        ap->reserved + r > ap->capacity / 2) {
        return;
    }
    mgr_stock_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return;
    s->appl = appl;
    snprintf(s->tenant, sizeof(s->tenant), "%s", tenant);
    s->size = size;
    s->last_use_ns = now;
    ap->reserved += r;
    mgr_stock_t **pp = &m->to_make;
    while (*pp != NULL) pp = &(*pp)->next;
    *pp = s;
    bg_kick(m);
}

void mgr_free_later(mgr_t *m, mgr_alloc_t *a)
{
    a->next = m->dying; /* order does not matter; a walk to the tail would under a burst */
    m->dying = a;
    bg_kick(m);
}

bool mgr_bg_flush(mgr_t *m)
{
    if (m->stock == NULL && m->to_make == NULL && m->dying == NULL && m->bg_busy == 0) return false;
    if (!m->bg_running) return false;
    m->bg_drain = true;
    pthread_cond_signal(&m->bg_cond);
    while (m->stock != NULL || m->to_make != NULL || m->dying != NULL || m->bg_busy != 0) {
        pthread_cond_wait(&m->cond, &m->lock);
    }
    m->bg_drain = false;
    return true;
}

bool mgr_stock_known(mgr_t *m, uint32_t appl, uint64_t region_id, bool *busy_p)
{
    *busy_p = m->making_appl == appl;
    for (mgr_stock_t *s = m->stock; s != NULL; s = s->next) {
        if (s->appl == appl && s->region_id == region_id) return true;
    }
    return false;
}

void mgr_stock_forget_missing(mgr_t *m, uint32_t appl, const uint64_t *ids, size_t n)
{
    mgr_stock_t **pp = &m->stock;
    while (*pp != NULL) {
        mgr_stock_t *s = *pp;
        bool present = s->appl != appl;
        for (size_t i = 0; i < n && !present; i++) present = ids[i] == s->region_id;
        if (present) {
            pp = &s->next;
            continue;
        }
        *pp = s->next;
        stock_unreserve(m, s);
        free(s);
    }
}

/* Appliance calls the thread pipelines in one go (one send, replies in order). */
#define BG_BATCH 32

typedef struct bg_call {
    uint32_t appl;
    xm_msg_t req;
    Xmem__RegionRef ref;
    Xmem__RegionCreate create;
    xm_msg_t *rep;
    xm_status_t status;
    bool sent;
} bg_call_t;

/* Send calls[0..n) grouped by appliance, each group pipelined on its connection. No lock held. */
static void bg_calls_run(mgr_t *m, bg_call_t *calls, size_t n)
{
    xm_msg_t **reqs = calloc(n, sizeof(*reqs)), **reps = calloc(n, sizeof(*reps));
    xm_status_t *sts = calloc(n, sizeof(*sts));
    size_t *idx = calloc(n, sizeof(*idx));
    for (size_t i = 0; i < n; i++) {
        if (calls[i].sent) continue;
        if (reqs == NULL || reps == NULL || sts == NULL || idx == NULL) {
            calls[i].status = XM_ERR_NO_MEMORY;
            continue;
        }
        size_t k = 0;
        for (size_t j = i; j < n; j++) {
            if (calls[j].sent || calls[j].appl != calls[i].appl) continue;
            calls[j].sent = true;
            idx[k] = j;
            reqs[k++] = &calls[j].req;
        }
        char why[256];
        mgr_appl_call_many(m, m->apps[calls[i].appl], reqs, k, reps, sts, why, sizeof(why));
        for (size_t r = 0; r < k; r++) {
            calls[idx[r]].rep = reps[r];
            calls[idx[r]].status = sts[r];
        }
    }
    free(reqs);
    free(reps);
    free(sts);
    free(idx);
}

/* Destroy the regions of up to BG_BATCH freed allocations. Lock held. */
static void bg_destroy_dying(mgr_t *m)
{
    mgr_alloc_t *batch[BG_BATCH];
    size_t na = 0, nc = 0;
    while (m->dying != NULL && na < BG_BATCH) {
        batch[na] = m->dying;
        m->dying = batch[na]->next;
        for (uint32_t p = 0; p < batch[na]->policy.width; p++) nc += batch[na]->parts[p].region_id != 0;
        na++;
    }
    m->bg_busy++;
    pthread_mutex_unlock(&m->lock);
    bg_call_t *calls = calloc(nc, sizeof(*calls));
    if (calls == NULL && nc > 0) {
        for (size_t i = 0; i < na; i++) mgr_parts_destroy(m, batch[i]);
    } else {
        size_t c = 0;
        for (size_t i = 0; i < na; i++) {
            for (uint32_t p = 0; p < batch[i]->policy.width; p++) {
                if (batch[i]->parts[p].region_id == 0) continue;
                bg_call_t *k = &calls[c++];
                k->appl = batch[i]->parts[p].appl;
                xmem__region_ref__init(&k->ref);
                k->ref.id = batch[i]->parts[p].region_id;
                k->ref.name = "";
                k->ref.tenant = "";
                k->req = (xm_msg_t)XMEM__MSG__INIT;
                k->req.body_case = XMEM__MSG__BODY_REGION_DESTROY;
                k->req.region_destroy = &k->ref;
            }
        }
        bg_calls_run(m, calls, nc);
        for (size_t c2 = 0; c2 < nc; c2++) {
            proto_msg_free(calls[c2].rep);
            if (calls[c2].status != XM_OK && calls[c2].status != XM_ERR_NOT_FOUND) {
                xm_log_warn("region %llu on %s: cannot destroy: %s (reclaimed when the appliance "
                            "registers again)", (unsigned long long)calls[c2].ref.id,
                            m->apps[calls[c2].appl]->addr, xm_status_str(calls[c2].status));
            }
        }
        free(calls);
    }
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < na; i++) {
        mgr_alloc_unreserve(m, batch[i]);
        mgr_alloc_free_mem(batch[i]);
    }
    m->bg_busy--;
}

/* Make up to BG_BATCH queued stock regions of the first queued entry's appliance. Lock held. */
static void bg_make_stock(mgr_t *m, bool all)
{
    uint32_t appl = m->to_make->appl;
    mgr_appliance_t *ap = m->apps[appl];
    if (all || m->bg_drain || !ap->up || !ap->validated) {
        mgr_stock_t *s = m->to_make;
        m->to_make = s->next;
        stock_unreserve(m, s);
        free(s);
        return;
    }
    mgr_stock_t *batch[BG_BATCH];
    size_t n = 0;
    for (mgr_stock_t **pp = &m->to_make; *pp != NULL && n < BG_BATCH;) {
        if ((*pp)->appl != appl) {
            pp = &(*pp)->next;
            continue;
        }
        batch[n++] = *pp;
        *pp = (*pp)->next;
    }
    bg_call_t calls[BG_BATCH];
    char names[BG_BATCH][XM_NAME_MAX + 1];
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof(names[i]), "%ss%llx.%llu", MGR_REGION_PREFIX,
                 (unsigned long long)(m->stock_nonce & 0xffffffffffffull),
                 (unsigned long long)++m->stock_seq);
        bg_call_t *k = &calls[i];
        memset(k, 0, sizeof(*k));
        k->appl = appl;
        xmem__region_create__init(&k->create);
        k->create.size = batch[i]->size;
        k->create.name = names[i];
        k->create.owner = batch[i]->tenant;
        k->req = (xm_msg_t)XMEM__MSG__INIT;
        k->req.body_case = XMEM__MSG__BODY_REGION_CREATE;
        k->req.region_create = &k->create;
    }
    m->bg_busy++;
    m->making_appl = appl;
    uint64_t boot = ap->boot_id;
    pthread_mutex_unlock(&m->lock);
    bg_calls_run(m, calls, n);
    pthread_mutex_lock(&m->lock);
    m->making_appl = UINT32_MAX;
    m->bg_busy--;
    for (size_t i = 0; i < n; i++) {
        mgr_stock_t *s = batch[i];
        xm_msg_t *rep = calls[i].rep;
        bool ok = calls[i].status == XM_OK && rep->body_case == XMEM__MSG__BODY_REGION_DESC &&
                  rep->region_desc->size == s->size;
        if (ok) {
            s->region_id = rep->region_desc->id;
            s->key = rep->region_desc->key;
        }
        proto_msg_free(rep);
        if (!ok || boot != ap->boot_id) {
            if (!ok) xm_log_debug("stock region on %s: %s", ap->addr, xm_status_str(calls[i].status));
            /* a region of a restarted appliance is left to its reconciliation */
            stock_unreserve(m, s);
            free(s);
            continue;
        }
        s->next = m->stock;
        m->stock = s;
    }
}

/* One unit of background work, if any; called and returns with the lock held. */
static bool bg_step(mgr_t *m, bool all)
{
    char why[256];
    /* stock first: an allocation waits for it, a free's destruction waits for nobody (and
     * under a steady stream of frees, stock queued behind them would never be made) */
    if (m->to_make != NULL) {
        bg_make_stock(m, all);
        return true;
    }
    if (m->dying != NULL) {
        bg_destroy_dying(m);
        return true;
    }
    uint64_t now = xm__now_ns(), idle = (uint64_t)m->opts.stock_idle_ms * 1000000ull;
    for (mgr_stock_t **pp = &m->stock; *pp != NULL; pp = &(*pp)->next) {
        mgr_stock_t *s = *pp;
        if (!all && !m->bg_drain && now - s->last_use_ns < idle) continue;
        *pp = s->next;
        m->bg_busy++;
        pthread_mutex_unlock(&m->lock);
        if (mgr_region_destroy(m, m->apps[s->appl], s->region_id, why, sizeof(why)) != XM_OK) {
            xm_log_warn("stock region %llu on %s: cannot destroy: %s (reclaimed when the appliance "
                        "registers again)", (unsigned long long)s->region_id, m->apps[s->appl]->addr, why);
        }
        pthread_mutex_lock(&m->lock);
        stock_unreserve(m, s);
        m->bg_busy--;
        free(s);
        return true;
    }
    return false;
}

static void *bg_main(void *arg)
{
    mgr_t *m = arg;
    pthread_mutex_lock(&m->lock);
    uint64_t last_work = 0;
    while (!m->bg_stop) {
        if (bg_step(m, false)) {
            last_work = xm__now_ns();
            pthread_cond_broadcast(&m->cond);
            continue;
        }
        pthread_cond_broadcast(&m->cond);
        /* busy lately: look again soon without being woken; idle: sleep long, woken by work */
        m->bg_idle = m->bg_drain || xm__now_ns() - last_work > 1000000000ull;
        long ms = m->bg_idle ? BG_IDLE_MS : BG_TICK_MS;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += ms * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&m->bg_cond, &m->lock, &ts);
        m->bg_idle = false;
    }
    /* stopping: destroy what is queued and the stock, so a clean stop leaves nothing */
    while (bg_step(m, true)) {
    }
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

xm_status_t mgr_bg_start(mgr_t *m)
{
    if (pthread_create(&m->bg, NULL, bg_main, m) != 0) return XM_ERR_NO_MEMORY;
    m->bg_running = true;
    return XM_OK;
}

void mgr_bg_stop(mgr_t *m)
{
    if (!m->bg_running) return;
    pthread_mutex_lock(&m->lock);
    m->bg_stop = true;
    pthread_cond_signal(&m->bg_cond);
    pthread_mutex_unlock(&m->lock);
    pthread_join(m->bg, NULL);
    m->bg_running = false;
}
