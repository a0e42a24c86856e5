/* The allocation table: create (place, create regions, record), free, attach,
 * grant, list, and reconciliation with an appliance that (re)registered. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "manager.h"

#define WHY(...) snprintf(why, whylen, __VA_ARGS__)

xm_status_t mgr_policy_parse(const char *text, uint64_t default_chunk, mgr_policy_t *p,
                             const char **why_p)
{
    xm__layout_policy_t lp;
    xm_status_t status = xm__layout_policy_parse(text, default_chunk, &lp, why_p);
    if (status != XM_OK) return status;
    *p = (mgr_policy_t){.layout = (mgr_layout_t)lp.kind, .width = lp.width + lp.redundancy,
                        .redundancy = lp.redundancy, .chunk = lp.chunk};
    return XM_OK;
}

xm_status_t mgr_policy_layout(const mgr_policy_t *p, uint64_t size, xm__layout_t *l_p,
                              const char **why_p)
{
    if (p->redundancy >= p->width) {
        *why_p = "policy without data parts";
        return XM_ERR_INVALID;
    }
    return xm__layout_init_full(l_p, (xm__layout_kind_t)p->layout, size, p->width - p->redundancy,
                                p->redundancy, p->chunk, why_p);
}

void mgr_alloc_domains(const mgr_t *m, const mgr_alloc_t *a, uint32_t *domains_p,
                       uint32_t *max_p)
{
    uint32_t domains = 0, max = 0;
    for (uint32_t i = 0; i < a->policy.width; i++) {
        const char *d = m->apps[a->parts[i].appl]->domain;
        bool first = true;
        uint32_t same = 0;
        for (uint32_t j = 0; j < a->policy.width; j++) {
            if (strcmp(m->apps[a->parts[j].appl]->domain, d) != 0) continue;
            if (j < i) first = false;
            same++;
        }
        domains += first;
        max = same > max ? same : max;
    }
    *domains_p = domains;
    *max_p = max;
}

mgr_alloc_t *mgr_alloc_new(uint32_t nparts)
{
    mgr_alloc_t *a = calloc(1, sizeof(*a));
    if (a == NULL) return NULL;
    a->parts = calloc(nparts, sizeof(mgr_part_t));
    if (a->parts == NULL) {
        free(a);
        return NULL;
    }
    a->policy.width = nparts;
    return a;
}

void mgr_alloc_free_mem(mgr_alloc_t *a)
{
    if (a == NULL) return;
    free(a->parts);
    free(a->grants);
    free(a);
}

/* Put an allocation in the table: the list, the indexes, its tenant's use. Lock held. */
static void table_link(mgr_t *m, mgr_alloc_t *a)
{
    memset(&a->req_key, 0, sizeof(a->req_key));
    snprintf(a->req_key.owner, sizeof(a->req_key.owner), "%s", a->owner);
    a->req_key.request_id = a->request_id;
    a->tprev = NULL;
    a->tnext = m->allocs;
    if (m->allocs != NULL) m->allocs->tprev = a;
    m->allocs = a;
    m->nallocs++;
    HASH_ADD(hh_id, m->by_id, id, sizeof(a->id), a);
    HASH_ADD(hh_req, m->by_req, req_key, sizeof(a->req_key), a);
    if (a->name[0] != '\0') HASH_ADD_KEYPTR(hh_name, m->by_name, a->name, strlen(a->name), a);
    mgr_tenant_t *t;
    HASH_FIND_STR(m->tenants, a->owner, t);
    if (t == NULL) {
        t = calloc(1, sizeof(*t));
        if (t == NULL) return; /* its use is not counted: the quota check may pass once too often */
        snprintf(t->name, sizeof(t->name), "%s", a->owner);
        HASH_ADD_STR(m->tenants, name, t);
    }
    t->used += a->size;
}

/* Take an allocation out of the table. Lock held. */
static void unlink_alloc(mgr_t *m, mgr_alloc_t *a)
{
    if (a->tprev != NULL) a->tprev->tnext = a->tnext;
    else m->allocs = a->tnext;
    if (a->tnext != NULL) a->tnext->tprev = a->tprev;
    a->tprev = a->tnext = NULL;
    m->nallocs--;
    HASH_DELETE(hh_id, m->by_id, a);
    HASH_DELETE(hh_req, m->by_req, a);
    if (a->name[0] != '\0') HASH_DELETE(hh_name, m->by_name, a);
    mgr_tenant_t *t;
    HASH_FIND_STR(m->tenants, a->owner, t);
    if (t != NULL) {
        t->used = t->used > a->size ? t->used - a->size : 0;
        if (t->used == 0) {
            HASH_DEL(m->tenants, t);
            free(t);
        }
    }
}

void mgr_table_clear(mgr_t *m)
{
    HASH_CLEAR(hh_id, m->by_id);
    HASH_CLEAR(hh_req, m->by_req);
    HASH_CLEAR(hh_name, m->by_name);
    while (m->allocs != NULL) {
        mgr_alloc_t *a = m->allocs;
        m->allocs = a->tnext;
        mgr_alloc_free_mem(a);
    }
    m->nallocs = 0;
    mgr_tenant_t *t, *tmp;
    HASH_ITER(hh, m->tenants, t, tmp) {
        HASH_DEL(m->tenants, t);
        free(t);
    }
}

void mgr_alloc_restore(mgr_t *m, mgr_alloc_t *a)
{
    for (uint32_t i = 0; i < a->policy.width; i++) {
        mgr_appliance_t *ap = m->apps[a->parts[i].appl];
        ap->reserved += mgr_extent_round(ap, a->parts[i].size);
        ap->nregions++;
    }
    table_link(m, a);
    if (a->id >= m->next_id) m->next_id = a->id + 1;
}

uint64_t mgr_quota_of(const mgr_t *m, const char *tenant)
{
    for (uint32_t i = 0; i < m->opts.nquotas; i++) {
        if (strcmp(m->opts.quotas[i].tenant, tenant) == 0) return m->opts.quotas[i].bytes;
    }
    return m->opts.default_quota;
}

static uint64_t tenant_used(const mgr_t *m, const char *tenant)
{
    mgr_tenant_t *t;
    HASH_FIND_STR(m->tenants, tenant, t);
    return t != NULL ? t->used : 0;
}

static mgr_alloc_t *find(mgr_t *m, uint64_t id, const char *name)
{
    mgr_alloc_t *a = NULL;
    if (id != 0) {
        HASH_FIND(hh_id, m->by_id, &id, sizeof(id), a);
    } else if (name != NULL && name[0] != '\0') {
        HASH_FIND(hh_name, m->by_name, name, strlen(name), a);
    }
    return a;
}

static mgr_alloc_t *find_request(mgr_t *m, const char *tenant, uint64_t request_id)
{
    mgr_req_key_t key;
    memset(&key, 0, sizeof(key));
    snprintf(key.owner, sizeof(key.owner), "%s", tenant);
    key.request_id = request_id;
    mgr_alloc_t *a = NULL;
    HASH_FIND(hh_req, m->by_req, &key, sizeof(key), a);
    return a;
}

void mgr_alloc_unreserve(mgr_t *m, const mgr_alloc_t *a)
{
    for (uint32_t i = 0; i < a->policy.width; i++) {
        mgr_appliance_t *ap = m->apps[a->parts[i].appl];
        uint64_t r = mgr_extent_round(ap, a->parts[i].size);
        ap->reserved = ap->reserved > r ? ap->reserved - r : 0;
        if (ap->nregions > 0) ap->nregions--;
    }
}

/* Parts on down appliances, gone from theirs (*missing_p: gone) or still being rebuilt.
 * Lock held. */
static uint32_t alloc_unavailable(const mgr_t *m, const mgr_alloc_t *a, uint32_t *missing_p)
{
    uint32_t n = 0, missing = 0;
    for (uint32_t i = 0; i < a->policy.width; i++) {
        missing += a->parts[i].missing;
        n += a->parts[i].missing || !m->apps[a->parts[i].appl]->up ||
             a->parts[i].state == MGR_PART_REBUILDING;
    }
    *missing_p = missing;
    return n;
}

/*
 * ok: every part reachable. A resilient allocation (docs/resilience.md) is degraded
 * while at most `redundancy` parts are unavailable (every stripe can still be read and
 * written) and lost beyond (some stripe has fewer than k pieces; it may come back if the
 * appliances do with their regions). Single and stripe have no redundancy: degraded
 * while an appliance is down, lost once a region is gone. Lock held.
 */
static const char *alloc_state(const mgr_t *m, const mgr_alloc_t *a, char *buf, size_t len)
{
    uint32_t missing, n = alloc_unavailable(m, a, &missing);
    if (n == 0) return "ok";
    if (a->policy.redundancy == 0) return missing > 0 ? "lost" : "degraded";
    if (n > a->policy.redundancy) return "lost";
    /* a part being rebuilt: its progress (rebuild.c), "rebuilding:42%" on the wire (names
     * have no spaces), "rebuilding 42%" in xm_alloc_info_t */
    for (uint32_t i = 0; i < a->policy.width; i++) {
        if (a->parts[i].state != MGR_PART_REBUILDING) continue;
        uint64_t pct = a->move_total > 0 ? a->move_done * 100 / a->move_total : 0;
        snprintf(buf, len, "rebuilding:%llu%%", (unsigned long long)XM_MIN(pct, 99));
        return buf;
    }
    return "degraded";
}

/* Build an AllocDesc reply (manager lock held); keys[i] overrides the owner's key. */
static xm_status_t desc_build(mgr_t *m, const mgr_alloc_t *a, xm_access_t access,
                              const uint64_t *keys, xm_msg_t *rep)
{
    uint32_t n = a->policy.width;
    Xmem__AllocDesc *d = calloc(1, sizeof(*d));
    Xmem__AllocPart *parts = calloc(n, sizeof(*parts));
    Xmem__AllocPart **pp = calloc(n, sizeof(*pp));
    /* strings and addresses are copied: the reply is sent after the lock is dropped */
    char *strings = calloc(n, 2 * (XM_NAME_MAX + 1) + 16 + XM_FABRIC_ADDR_MAX);
    char *own = calloc(3, XM_NAME_MAX + 1);
    if (d == NULL || parts == NULL || pp == NULL || strings == NULL || own == NULL) {
        free(d);
        free(parts);
        free(pp);
        free(strings);
        free(own);
        return XM_ERR_NO_MEMORY;
    }
    xmem__alloc_desc__init(d);
    d->id = a->id;
    d->size = a->size;
    d->name = strcpy(own, a->name);
    d->owner = strcpy(own + XM_NAME_MAX + 1, a->owner);
    d->policy = strcpy(own + 2 * (XM_NAME_MAX + 1), a->policy_text);
    /* mgr_layout_t and the wire's Layout share their numbers */
    d->layout = (Xmem__Layout)a->policy.layout;
    d->width = n;
    d->redundancy = a->policy.redundancy;
    d->chunk = a->policy.chunk;
    mgr_alloc_domains(m, a, &d->domains, &d->domain_max);
    d->access = (Xmem__Access)access;
    d->generation = a->generation;
    d->n_parts = n;
    d->parts = pp;
    size_t stride = 2 * (XM_NAME_MAX + 1) + 16 + XM_FABRIC_ADDR_MAX;
    /* a resilient allocation's parts on appliances known down (no more than it survives) go
     * without their key: the client reads around them at once instead of timing out there */
    uint32_t down = 0;
    for (uint32_t i = 0; i < n; i++) down += !m->apps[a->parts[i].appl]->up;
    bool hide_down = a->policy.redundancy > 0 && down <= a->policy.redundancy;
    for (uint32_t i = 0; i < n; i++) {
        const mgr_appliance_t *ap = m->apps[a->parts[i].appl];
        char *s = strings + i * stride;
        xmem__alloc_part__init(&parts[i]);
        parts[i].appliance = strcpy(s, ap->addr);
        parts[i].provider = strcpy(s + XM_NAME_MAX + 1, ap->provider);
        uint8_t *fa = (uint8_t *)s + 2 * (XM_NAME_MAX + 1) + 16;
        memcpy(fa, ap->fabric_addr, ap->fabric_addr_len);
        parts[i].fabric_addr = (ProtobufCBinaryData){ap->fabric_addr_len, fa};
        parts[i].region_id = a->parts[i].region_id;
        parts[i].key = hide_down && !ap->up ? 0 : keys != NULL ? keys[i] : a->parts[i].key;
        parts[i].size = a->parts[i].size;
        /* resilient: the client reads around down parts and writes rebuilding ones unread */
        parts[i].state = a->parts[i].state == MGR_PART_REBUILDING ? XMEM__PART_STATE__PART_REBUILDING
                         : a->policy.redundancy > 0 && (!ap->up || a->parts[i].missing)
                             ? XMEM__PART_STATE__PART_DOWN : XMEM__PART_STATE__PART_OK;
        pp[i] = &parts[i];
    }
    rep->body_case = XMEM__MSG__BODY_ALLOC_DESC;
    rep->alloc_desc = d;
    return XM_OK;
}

void mgr_reply_cleanup(xm_msg_t *rep)
{
    switch (rep->body_case) {
    case XMEM__MSG__BODY_ALLOC_DESC: {
        Xmem__AllocDesc *d = rep->alloc_desc;
        if (d->n_parts > 0) {
            free(d->parts[0]->appliance); /* the strings block */
            free(d->parts[0]);            /* the parts array */
        }
        free(d->parts);
        free(d->name);
        free(d);
        break;
    }
    case XMEM__MSG__BODY_ALLOCS: {
        for (size_t i = 0; i < rep->allocs->n_allocs; i++) {
            Xmem__AllocInfo *in = rep->allocs->allocs[i];
            free(in->appliances);
            free(in->name); /* one block with the other strings */
            free(in);
        }
        free(rep->allocs->allocs);
        free(rep->allocs);
        break;
    }
    case XMEM__MSG__BODY_DRAIN_STATE:
        free(rep->drain_state);
        break;
    case XMEM__MSG__BODY_APPLIANCES: {
        for (size_t i = 0; i < rep->appliances->n_appliances; i++) free(rep->appliances->appliances[i]);
        free(rep->appliances->appliances);
        free(rep->appliances);
        break;
    }
    default:
        break;
    }
    rep->body_case = XMEM__MSG__BODY__NOT_SET;
}

/* Create one region on an appliance owned by tenant; its id and key on success. */
xm_status_t mgr_region_create(mgr_t *m, mgr_appliance_t *ap, const char *tenant, uint64_t size,
                              const char *name, uint64_t *id_p, uint64_t *key_p, char *why,
                              size_t whylen)
{
    Xmem__RegionCreate rc = XMEM__REGION_CREATE__INIT;
    rc.size = size;
    rc.name = (char *)name;
    rc.owner = (char *)tenant;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_CREATE;
    req.region_create = &rc;
    xm_status_t status = mgr_appl_call(m, ap, &req, &rep, why, whylen);
    if (status != XM_OK) return status;
    if (rep->body_case != XMEM__MSG__BODY_REGION_DESC || rep->region_desc->size != size) {
        proto_msg_free(rep);
        WHY("appliance %s sent no region descriptor", ap->addr);
        return XM_ERR_PROTOCOL;
    }
    *id_p = rep->region_desc->id;
    *key_p = rep->region_desc->key;
    proto_msg_free(rep);
    return XM_OK;
}

static xm_status_t region_create(mgr_t *m, mgr_appliance_t *ap, const char *tenant, uint64_t size,
                                 uint64_t alloc_id, uint32_t part, uint64_t *id_p, uint64_t *key_p,
                                 char *why, size_t whylen)
{
    /* the name marks it as the manager's: reconciliation reclaims only such regions */
    char name[XM_NAME_MAX + 1];
    snprintf(name, sizeof(name), "%s%llu.%u", MGR_REGION_PREFIX, (unsigned long long)alloc_id, part);
    return mgr_region_create(m, ap, tenant, size, name, id_p, key_p, why, whylen);
}

xm_status_t mgr_region_destroy(mgr_t *m, mgr_appliance_t *ap, uint64_t id, char *why, size_t whylen)
{
    Xmem__RegionRef ref = XMEM__REGION_REF__INIT;
    ref.id = id;
    ref.name = "";
    ref.tenant = "";
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_DESTROY;
    req.region_destroy = &ref;
    xm_status_t status = mgr_appl_call(m, ap, &req, &rep, why, whylen);
    if (status == XM_OK) proto_msg_free(rep);
    return status == XM_ERR_NOT_FOUND ? XM_OK : status;
}

/* Destroy the parts created so far; failures leave the region for reconciliation. */
void mgr_parts_destroy(mgr_t *m, mgr_alloc_t *a)
{
    for (uint32_t i = 0; i < a->policy.width; i++) {
        if (a->parts[i].region_id == 0) continue;
        char why[256];
        if (mgr_region_destroy(m, m->apps[a->parts[i].appl], a->parts[i].region_id, why,
                           sizeof(why)) != XM_OK) {
            xm_log_warn("allocation %llu: cannot destroy region %llu: %s (reclaimed when the "
                        "appliance registers again)", (unsigned long long)a->id,
                        (unsigned long long)a->parts[i].region_id, why);
        }
    }
}

static bool reserved_tenant(const char *tenant)
{
    return tenant[0] == '@';
}

static bool tenant_revoked(mgr_t *m, const char *tenant, char *why, size_t whylen);

/* Write a to the table. The caller holds a busy and not the manager's lock (the lock order
 * is store, then manager). */
static xm_status_t alloc_record(mgr_t *m, mgr_alloc_t *a)
{
    const char **addrs = calloc(a->policy.width, sizeof(char *));
    if (addrs == NULL) return XM_ERR_NO_MEMORY;
    pthread_mutex_lock(&m->lock);
    for (uint32_t i = 0; i < a->policy.width; i++) addrs[i] = m->apps[a->parts[i].appl]->addr;
    pthread_mutex_unlock(&m->lock);
    xm_status_t status = m->opts.store_ops->alloc_put(m->store, a, addrs);
    free(addrs);
    return status;
}

/* Let go of a busy allocation: whoever waits for it goes on. */
static void alloc_release(mgr_t *m, mgr_alloc_t *a)
{
    pthread_mutex_lock(&m->lock);
    a->busy = false;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

mgr_alloc_t *mgr_alloc_find(mgr_t *m, uint64_t id)
{
    return find(m, id, NULL);
}

xm_status_t mgr_alloc_record(mgr_t *m, mgr_alloc_t *a)
{
    return alloc_record(m, a);
}

void mgr_alloc_release(mgr_t *m, mgr_alloc_t *a)
{
    alloc_release(m, a);
}

xm_status_t mgr_alloc_create(mgr_t *m, const char *tenant, const Xmem__AllocRequest *req,
                             mgr_batch_t *b, size_t slot, xm_msg_t *rep, char *why, size_t whylen)
{
    if (tenant_revoked(m, tenant, why, whylen)) return XM_ERR_AUTH;
    if (reserved_tenant(tenant)) {
        WHY("allocations belong to tenants: connect with a tenant's credential (xmem tenant add NAME), "
            "not the cluster secret (%s)", tenant);
        return XM_ERR_PERM;
    }
    mgr_policy_t pol;
    const char *w = NULL;
    xm_status_t status = mgr_policy_parse(req->policy, m->opts.default_chunk, &pol, &w);
    if (status != XM_OK) {
        WHY("%s", w);
        return status;
    }
    xm__layout_t lay;
    status = mgr_policy_layout(&pol, req->size, &lay, &w);
    if (status != XM_OK) {
        WHY("%s", w);
        return status;
    }
    if (xm__layout_has_empty_part(&lay)) {
        WHY("%llu bytes make fewer than %u chunks of %llu; use fewer parts or a smaller chunk",
            (unsigned long long)req->size, pol.width, (unsigned long long)pol.chunk);
        return XM_ERR_INVALID;
    }
    mgr_alloc_t *a = mgr_alloc_new(pol.width);
    if (a == NULL) return XM_ERR_NO_MEMORY;
    uint64_t *sizes = calloc(pol.width, sizeof(uint64_t));
    uint32_t *chosen = calloc(pol.width, sizeof(uint32_t));
    if (sizes == NULL || chosen == NULL) {
        status = XM_ERR_NO_MEMORY;
        goto err_mem;
    }
    for (uint32_t i = 0; i < pol.width; i++) {
        sizes[i] = xm__layout_part_size(&lay, i);
    }
    a->request_id = req->request_id;
    a->size = req->size;
    a->generation = 1;
    a->policy = pol;
    snprintf(a->owner, sizeof(a->owner), "%s", tenant);
    snprintf(a->name, sizeof(a->name), "%s", req->name != NULL ? req->name : "");
    xm__layout_policy_t lp = xm__layout_policy_of(&lay);
    xm__layout_policy_str(&lp, a->policy_text, sizeof(a->policy_text));

    pthread_mutex_lock(&m->lock);
    for (;;) {
        mgr_alloc_t *prev = find_request(m, tenant, req->request_id);
        if (prev == NULL) break;
        if (prev->busy) {
            if (b != NULL) {
                pthread_mutex_unlock(&m->lock);
                status = XM_ERR_AGAIN;
                goto err_mem;
            }
            pthread_cond_wait(&m->cond, &m->lock);
            continue;
        }
        /* a retry of a request that was carried out: the same allocation */
        if (prev->size != req->size) {
            pthread_mutex_unlock(&m->lock);
            WHY("request id reused for a different allocation");
            status = XM_ERR_INVALID;
            goto err_mem;
        }
        status = desc_build(m, prev, XM_ACCESS_READ_WRITE, NULL, rep);
        pthread_mutex_unlock(&m->lock);
        mgr_alloc_free_mem(a);
        free(sizes);
        free(chosen);
        return status;
    }
    if (a->name[0] != '\0' && find(m, 0, a->name) != NULL) {
        pthread_mutex_unlock(&m->lock);
        WHY("an allocation named %s exists", a->name);
        status = XM_ERR_EXISTS;
        goto err_mem;
    }
    uint64_t quota = mgr_quota_of(m, tenant);
    uint64_t used = tenant_used(m, tenant);
    if (quota != 0 && (req->size > quota || used > quota - req->size)) {
        pthread_mutex_unlock(&m->lock);
        WHY("quota of tenant %s exceeded: %llu bytes in use, %llu asked, quota %llu", tenant,
            (unsigned long long)used, (unsigned long long)req->size, (unsigned long long)quota);
        status = XM_ERR_NO_SPACE;
        goto err_mem;
    }
    mgr_place_req_t pr = {.nparts = pol.width, .part_size = sizes};
    int stocked = pol.width == 1 ? mgr_stock_pick(m, tenant, sizes[0]) : -1;
    if (b != NULL && stocked < 0) {
        /* a region to create (or space to flush): not without waiting */
        pthread_mutex_unlock(&m->lock);
        status = XM_ERR_AGAIN;
        goto err_mem;
    }
    if (stocked >= 0) {
        chosen[0] = (uint32_t)stocked; /* its space is reserved already: it fits */
        status = XM_OK;
    } else {
        status = m->opts.place(m->apps, m->napps, &pr, chosen, &w);
        /* space held by stock or by frees still being destroyed is given back first; while
         * this waits, other clients' frees and stock can take the room again: a few rounds */
        for (int round = 0; status == XM_ERR_NO_SPACE && round < 8 && mgr_bg_flush(m); round++) {
            status = m->opts.place(m->apps, m->napps, &pr, chosen, &w);
        }
    }
    if (status != XM_OK) {
        pthread_mutex_unlock(&m->lock);
        WHY("%s", w != NULL ? w : xm_status_str(status));
        goto err_mem;
    }
    a->id = m->next_id++;
    a->busy = true;
    for (uint32_t i = 0; i < pol.width; i++) {
        a->parts[i].appl = chosen[i];
        a->parts[i].size = sizes[i];
    }
    table_link(m, a);
    /* reserve now, so concurrent requests see the space as taken */
    for (uint32_t i = 0; i < pol.width; i++) {
        mgr_appliance_t *ap = m->apps[chosen[i]];
        ap->reserved += mgr_extent_round(ap, sizes[i]);
        ap->nregions++;
    }
    /* fresh regions made ahead for this tenant and size take the appliance calls off the path */
    for (uint32_t i = 0; i < pol.width; i++) {
        mgr_stock_take(m, chosen[i], tenant, sizes[i], &a->parts[i].region_id, &a->parts[i].key);
        mgr_stock_want(m, chosen[i], tenant, sizes[i]);
    }
    pthread_mutex_unlock(&m->lock);

    for (uint32_t i = 0; i < pol.width && status == XM_OK; i++) {
        if (a->parts[i].region_id != 0) continue;
        status = region_create(m, m->apps[chosen[i]], tenant, sizes[i], a->id, i, &a->parts[i].region_id,
                               &a->parts[i].key, why, whylen);
    }
    if (status == XM_OK) {
        const char **addrs = calloc(pol.width, sizeof(char *));
        if (addrs == NULL) {
            status = XM_ERR_NO_MEMORY;
        } else {
            for (uint32_t i = 0; i < pol.width; i++) addrs[i] = m->apps[chosen[i]]->addr;
            status = m->opts.store_ops->alloc_put(m->store, a, addrs);
            if (status != XM_OK) WHY("cannot record the allocation in the table");
            free(addrs);
        }
    }
    if (status != XM_OK && b != NULL) {
        /* roll back without waiting: the regions are destroyed behind, their space
         * stays reserved until then */
        pthread_mutex_lock(&m->lock);
        unlink_alloc(m, a);
        mgr_free_later(m, a);
        pthread_cond_broadcast(&m->cond);
        pthread_mutex_unlock(&m->lock);
        free(sizes);
        free(chosen);
        return status;
    }
    if (status != XM_OK) {
        /* roll back: nothing stays half-allocated */
        mgr_parts_destroy(m, a);
        pthread_mutex_lock(&m->lock);
        mgr_alloc_unreserve(m, a);
        unlink_alloc(m, a);
        pthread_cond_broadcast(&m->cond);
        pthread_mutex_unlock(&m->lock);
        goto err_mem;
    }
    pthread_mutex_lock(&m->lock);
    if (pol.redundancy > 0) {
        uint32_t domains, dmax;
        mgr_alloc_domains(m, a, &domains, &dmax);
        /* placed anyway (a one-domain test cluster must work), and said: the reply carries
         * the counts, `xmem alloc` prints them */
        if (dmax > pol.redundancy)
            xm_log_warn("allocation %llu (%s): its %u parts are in %u failure domain%s, up to %u "
                        "in one: the loss of such a domain loses it (it tolerates %u)",
                        (unsigned long long)a->id, a->policy_text, pol.width, domains,
                        domains == 1 ? "" : "s", dmax, pol.redundancy);
    }
    if (b != NULL) {
        /* usable once the batch is committed (mgr_batch_finish) */
        b->ops[b->nops++] = (mgr_batch_op_t){.kind = MGR_BATCH_CREATED, .alloc = a, .slot = slot};
    } else {
        a->busy = false;
        pthread_cond_broadcast(&m->cond);
    }
    status = desc_build(m, a, XM_ACCESS_READ_WRITE, NULL, rep);
    pthread_mutex_unlock(&m->lock);
    free(sizes);
    free(chosen);
    return status;

err_mem:
    mgr_alloc_free_mem(a);
    free(sizes);
    free(chosen);
    return status;
}

/* Find an allocation the tenant may use with access; waits while it is busy (with nowait:
 * XM_ERR_AGAIN instead). Lock held. */
static xm_status_t lookup(mgr_t *m, const char *tenant, uint64_t id, const char *name,
                          xm_access_t access, bool owner_only, bool nowait, mgr_alloc_t **a_p,
                          char *why, size_t whylen)
{
    for (;;) {
        mgr_alloc_t *a = find(m, id, name);
        if (a == NULL) {
            WHY("no such allocation");
            return XM_ERR_NOT_FOUND;
        }
        if (a->busy) {
            if (nowait) return XM_ERR_AGAIN;
            pthread_cond_wait(&m->cond, &m->lock);
            continue;
        }
        if (strcmp(a->owner, tenant) == 0) {
            *a_p = a;
            return XM_OK;
        }
        const mgr_grant_t *g = NULL;
        for (uint32_t i = 0; i < a->ngrants; i++) {
            if (strcmp(a->grants[i].tenant, tenant) == 0) g = &a->grants[i];
        }
        if (g == NULL) {
            WHY("allocation not owned by or granted to tenant %s", tenant);
            return XM_ERR_PERM;
        }
        if (owner_only) {
            WHY("only the owner may do that");
            return XM_ERR_PERM;
        }
        if (access == XM_ACCESS_READ_WRITE && g->access != XM_ACCESS_READ_WRITE) {
            WHY("only read access was granted");
            return XM_ERR_PERM;
        }
        *a_p = a;
        return XM_OK;
    }
}

xm_status_t mgr_alloc_destroy(mgr_t *m, const char *tenant, const Xmem__AllocRef *ref,
                              mgr_batch_t *b, size_t slot, char *why, size_t whylen)
{
    if (tenant_revoked(m, tenant, why, whylen)) return XM_ERR_AUTH;
    pthread_mutex_lock(&m->lock);
    mgr_alloc_t *a;
    xm_status_t status = lookup(m, tenant, ref->id, ref->name, XM_ACCESS_READ_WRITE, true,
                                b != NULL, &a, why, whylen);
    if (status != XM_OK) {
        pthread_mutex_unlock(&m->lock);
        return status;
    }
    a->busy = true;
    pthread_mutex_unlock(&m->lock);
    /* the record goes first: a crash after it leaves regions that reconciliation reclaims,
     * never a record pointing at destroyed regions */
    status = m->opts.store_ops->alloc_delete(m->store, a->id);
    if (status != XM_OK) {
        pthread_mutex_lock(&m->lock);
        a->busy = false;
        pthread_cond_broadcast(&m->cond);
        pthread_mutex_unlock(&m->lock);
        WHY("cannot update the allocation table");
        return status;
    }
    if (b != NULL) {
        /* leaves the table once the batch is committed (mgr_batch_finish) */
        pthread_mutex_lock(&m->lock);
        b->ops[b->nops++] = (mgr_batch_op_t){.kind = MGR_BATCH_FREED, .alloc = a, .slot = slot};
        pthread_mutex_unlock(&m->lock);
        return XM_OK;
    }
    /* the table says freed: reply now; the regions are destroyed (keys revoked) behind it,
     * and their space stays reserved until then, so nothing reuses it earlier */
    pthread_mutex_lock(&m->lock);
    unlink_alloc(m, a);
    mgr_free_later(m, a);
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    return XM_OK;
}

void mgr_batch_finish(mgr_t *m, mgr_batch_t *b, bool committed, bool *failed)
{
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < b->nops; i++) {
        mgr_alloc_t *a = b->ops[i].alloc;
        bool created = b->ops[i].kind == MGR_BATCH_CREATED;
        if (!committed) failed[b->ops[i].slot] = true;
        if (created == committed) {
            a->busy = false; /* created and recorded, or a free that did not happen */
        } else {
            /* freed and recorded, or a creation that was not: out of the table, regions
             * destroyed behind (keys revoked), space reserved until then */
            unlink_alloc(m, a);
            mgr_free_later(m, a);
        }
    }
    b->nops = 0;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

void mgr_tenants_changed(void *arg)
{
    mgr_t *m = arg;
    uint32_t n = 0;
    pthread_mutex_lock(&m->lock);
    for (mgr_alloc_t *a = m->allocs; a != NULL; a = a->tnext) {
        if (!a->keys_stale && !rpc_keyring_has_tenant(m->opts.keyring, a->owner)) {
            a->keys_stale = true;
            n++;
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (n > 0) xm_log_info("%u allocations of revoked tenants: keys refreshed at next attach", n);
}

/* Requests of a tenant the registry no longer holds are refused (its sessions are being
 * ended; one may still be between its request and its end). */
static bool tenant_revoked(mgr_t *m, const char *tenant, char *why, size_t whylen)
{
    if (m->opts.keyring == NULL || rpc_keyring_has_tenant(m->opts.keyring, tenant)) return false;
    snprintf(why, whylen, "the tenant's credentials were revoked");
    return true;
}

xm_status_t mgr_alloc_attach(mgr_t *m, const char *tenant, const Xmem__AllocRef *ref,
                             mgr_batch_t *b, xm_msg_t *rep, char *why, size_t whylen)
{
    if (tenant_revoked(m, tenant, why, whylen)) return XM_ERR_AUTH;
    xm_access_t access = ref->access == XMEM__ACCESS__ACCESS_READ ? XM_ACCESS_READ
                                                                  : XM_ACCESS_READ_WRITE;
    pthread_mutex_lock(&m->lock);
    mgr_alloc_t *a;
    xm_status_t status = lookup(m, tenant, ref->id, ref->name, access, false, b != NULL, &a, why,
                                whylen);
    if (status != XM_OK) {
        pthread_mutex_unlock(&m->lock);
        return status;
    }
    bool owner_rw = strcmp(a->owner, tenant) == 0 && access == XM_ACCESS_READ_WRITE;
    if (owner_rw && !a->keys_stale) {
        status = desc_build(m, a, access, NULL, rep);
        pthread_mutex_unlock(&m->lock);
        return status;
    }
    if (b != NULL) {
        pthread_mutex_unlock(&m->lock);
        return XM_ERR_AGAIN; /* appliance calls follow */
    }
    /* anyone else (or a read-only owner) gets keys of registrations with exactly its rights,
     * which each appliance makes for that tenant */
    uint32_t n = a->policy.width;
    uint64_t id = a->id;
    a->busy = true;
    pthread_mutex_unlock(&m->lock);
    uint64_t *keys = calloc(n, sizeof(uint64_t));
    if (keys == NULL) status = XM_ERR_NO_MEMORY;
    /* a resilient allocation is attached with up to `redundancy` parts unreachable: those get
     * key 0 (the client finds them down and reads around them) */
    uint32_t unreachable = 0;
    for (uint32_t i = 0; i < n && status == XM_OK; i++) {
        Xmem__RegionRef rr = XMEM__REGION_REF__INIT;
        rr.id = a->parts[i].region_id;
        rr.name = "";
        rr.access = (Xmem__Access)access;
        rr.tenant = (char *)tenant;
        xm_msg_t req = XMEM__MSG__INIT, *r;
        req.body_case = XMEM__MSG__BODY_REGION_OPEN;
        req.region_open = &rr;
        status = mgr_appl_call(m, m->apps[a->parts[i].appl], &req, &r, why, whylen);
        if (status == XM_OK) {
            if (r->body_case == XMEM__MSG__BODY_REGION_DESC) keys[i] = r->region_desc->key;
            else status = XM_ERR_PROTOCOL;
            proto_msg_free(r);
        } else if ((status == XM_ERR_CONNECT || status == XM_ERR_TIMEOUT ||
                    status == XM_ERR_DISCONNECTED) && unreachable < a->policy.redundancy) {
            xm_log_info("allocation %llu attached by %s without part %u: %s", (unsigned long long)id,
                        tenant, i, why);
            unreachable++;
            keys[i] = 0;
            status = XM_OK;
        }
    }
    bool record = false;
    pthread_mutex_lock(&m->lock);
    if (status == XM_OK && owner_rw && unreachable == 0) {
        /* the owner's keys were refreshed: they are the allocation's keys from now on */
        for (uint32_t i = 0; i < n; i++) a->parts[i].key = keys[i];
        a->keys_stale = false;
        record = true;
    }
    if (status == XM_OK) status = desc_build(m, a, access, keys, rep);
    pthread_mutex_unlock(&m->lock);
    if (record && alloc_record(m, a) != XM_OK)
        xm_log_error("allocation %llu: its refreshed keys are not recorded", (unsigned long long)id);
    alloc_release(m, a);
    free(keys);
    return status;
}

/* Tell part i's appliance to grant (REGION_GRANT) or revoke (REGION_REVOKE) grantee's
 * access to the part's region; the manager acts as its owner. No lock held. */
static xm_status_t part_grant_call(mgr_t *m, const mgr_alloc_t *a, uint32_t i, Xmem__Msg__BodyCase body,
                                   const char *grantee, xm_access_t access, char *why, size_t whylen)
{
    Xmem__RegionRef rr = XMEM__REGION_REF__INIT;
    rr.id = a->parts[i].region_id;
    rr.name = "";
    rr.tenant = "";
    Xmem__RegionGrant rg = XMEM__REGION_GRANT__INIT;
    rg.region = &rr;
    rg.tenant = (char *)grantee;
    rg.access = (Xmem__Access)access;
    xm_msg_t req = XMEM__MSG__INIT, *r;
    req.body_case = body;
    if (body == XMEM__MSG__BODY_REGION_REVOKE) req.region_revoke = &rg;
    else req.region_grant = &rg;
    xm_status_t status = mgr_appl_call(m, m->apps[a->parts[i].appl], &req, &r, why, whylen);
    if (status == XM_OK) proto_msg_free(r);
    return status;
}

xm_status_t mgr_alloc_grant(mgr_t *m, const char *tenant, const Xmem__AllocGrant *g, char *why,
                            size_t whylen)
{
    if (tenant_revoked(m, tenant, why, whylen)) return XM_ERR_AUTH;
    xm_access_t access = g->access == XMEM__ACCESS__ACCESS_READ ? XM_ACCESS_READ
                                                                : XM_ACCESS_READ_WRITE;
    pthread_mutex_lock(&m->lock);
    mgr_alloc_t *a;
    xm_status_t status = lookup(m, tenant, g->alloc->id, g->alloc->name, access, true, false, &a,
                                why, whylen);
    if (status == XM_OK && strcmp(g->tenant, tenant) == 0) {
        WHY("the owner already has full access");
        status = XM_ERR_INVALID;
    }
    if (status != XM_OK) {
        pthread_mutex_unlock(&m->lock);
        return status;
    }
    a->busy = true;
    pthread_mutex_unlock(&m->lock);
    /* every appliance learns the grant first: its registrations enforce it */
    for (uint32_t i = 0; i < a->policy.width && status == XM_OK; i++)
        status = part_grant_call(m, a, i, XMEM__MSG__BODY_REGION_GRANT, g->tenant, access, why, whylen);
    pthread_mutex_lock(&m->lock);
    if (status == XM_OK) {
        mgr_grant_t *gr = NULL;
        for (uint32_t i = 0; i < a->ngrants; i++) {
            if (strcmp(a->grants[i].tenant, g->tenant) == 0) gr = &a->grants[i];
        }
        if (gr == NULL) {
            mgr_grant_t *ng = realloc(a->grants, (a->ngrants + 1) * sizeof(*ng));
            if (ng == NULL) {
                status = XM_ERR_NO_MEMORY;
            } else {
                a->grants = ng;
                gr = &a->grants[a->ngrants++];
                snprintf(gr->tenant, sizeof(gr->tenant), "%s", g->tenant);
            }
        }
        if (gr != NULL) gr->access = access;
    }
    pthread_mutex_unlock(&m->lock);
    if (status == XM_OK) status = alloc_record(m, a);
    alloc_release(m, a);
    return status;
}

xm_status_t mgr_alloc_revoke(mgr_t *m, const char *tenant, const Xmem__AllocGrant *g, char *why,
                             size_t whylen)
{
    if (tenant_revoked(m, tenant, why, whylen)) return XM_ERR_AUTH;
    pthread_mutex_lock(&m->lock);
    mgr_alloc_t *a;
    xm_status_t status = lookup(m, tenant, g->alloc->id, g->alloc->name, XM_ACCESS_READ_WRITE, true, false,
                                &a, why, whylen);
    bool has = false;
    for (uint32_t i = 0; status == XM_OK && i < a->ngrants; i++) has |= strcmp(a->grants[i].tenant, g->tenant) == 0;
    if (status == XM_OK && !has) {
        WHY("%s has no grant on this allocation", g->tenant);
        status = XM_ERR_NOT_FOUND;
    }
    if (status != XM_OK) {
        pthread_mutex_unlock(&m->lock);
        return status;
    }
    a->busy = true;
    pthread_mutex_unlock(&m->lock);
    /* every appliance drops the grant first: closing its registrations ends the keys */
    for (uint32_t i = 0; i < a->policy.width && status == XM_OK; i++) {
        char pwhy[256] = "";
        status = part_grant_call(m, a, i, XMEM__MSG__BODY_REGION_REVOKE, g->tenant, XM_ACCESS_READ, pwhy,
                                 sizeof(pwhy));
        if (status == XM_ERR_NOT_FOUND) status = XM_OK; /* revoked there by an earlier try */
        else if (status != XM_OK)
            WHY("part %u on %s: %s; nothing changed in the table: try again", i,
                m->apps[a->parts[i].appl]->addr, pwhy[0] ? pwhy : xm_status_str(status));
    }
    pthread_mutex_lock(&m->lock);
    if (status == XM_OK) {
        for (uint32_t i = 0; i < a->ngrants; i++) {
            if (strcmp(a->grants[i].tenant, g->tenant) != 0) continue;
            memmove(&a->grants[i], &a->grants[i + 1], (a->ngrants - i - 1) * sizeof(*a->grants));
            a->ngrants--;
            break;
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (status == XM_OK) status = alloc_record(m, a);
    alloc_release(m, a);
    return status;
}

xm_status_t mgr_alloc_list(mgr_t *m, const char *tenant, xm_msg_t *rep)
{
    pthread_mutex_lock(&m->lock);
    Xmem__AllocList *list = calloc(1, sizeof(*list));
    Xmem__AllocInfo **infos = calloc(m->nallocs + 1, sizeof(*infos));
    if (list == NULL || infos == NULL) {
        pthread_mutex_unlock(&m->lock);
        free(list);
        free(infos);
        return XM_ERR_NO_MEMORY;
    }
    xmem__alloc_list__init(list);
    list->allocs = infos;
    rep->body_case = XMEM__MSG__BODY_ALLOCS;
    rep->allocs = list;
    for (mgr_alloc_t *a = m->allocs; a != NULL; a = a->tnext) {
        bool visible = strcmp(a->owner, tenant) == 0 || reserved_tenant(tenant);
        for (uint32_t i = 0; i < a->ngrants && !visible; i++) {
            visible = strcmp(a->grants[i].tenant, tenant) == 0;
        }
        if (!visible || a->busy) continue;
        Xmem__AllocInfo *in = calloc(1, sizeof(*in));
        char *s = calloc(4, XM_NAME_MAX + 1);
        /* the addresses are copied: an appliance that moves rewrites its address while the
         * reply is being encoded without the lock */
        char **apps = calloc(1, a->policy.width * (sizeof(char *) + XM_NAME_MAX + 1));
        if (in == NULL || s == NULL || apps == NULL) {
            free(in);
            free(s);
            free(apps);
            pthread_mutex_unlock(&m->lock);
            mgr_reply_cleanup(rep);
            return XM_ERR_NO_MEMORY;
        }
        xmem__alloc_info__init(in);
        in->id = a->id;
        in->size = a->size;
        in->name = strcpy(s, a->name);
        in->owner = strcpy(s + XM_NAME_MAX + 1, a->owner);
        in->policy = strcpy(s + 2 * (XM_NAME_MAX + 1), a->policy_text);
        char sb[XM_NAME_MAX + 1];
        snprintf(s + 3 * (XM_NAME_MAX + 1), XM_NAME_MAX + 1, "%s", alloc_state(m, a, sb, sizeof(sb)));
        in->state = s + 3 * (XM_NAME_MAX + 1);
        uint32_t missing;
        in->redundancy = a->policy.redundancy;
        in->unavailable = alloc_unavailable(m, a, &missing);
        mgr_alloc_domains(m, a, &in->domains, &in->domain_max);
        char *tail = (char *)(apps + a->policy.width);
        for (uint32_t i = 0; i < a->policy.width; i++) {
            apps[i] = strcpy(tail + (size_t)i * (XM_NAME_MAX + 1), m->apps[a->parts[i].appl]->addr);
        }
        in->n_appliances = a->policy.width;
        in->appliances = apps;
        infos[list->n_allocs++] = in;
    }
    pthread_mutex_unlock(&m->lock);
    return XM_OK;
}

xm_status_t mgr_appliance_list(mgr_t *m, xm_msg_t *rep)
{
    pthread_mutex_lock(&m->lock);
    Xmem__ApplianceTable *t = calloc(1, sizeof(*t));
    Xmem__ApplianceEntry **es = calloc(m->napps + 1, sizeof(*es));
    if (t == NULL || es == NULL) {
        pthread_mutex_unlock(&m->lock);
        free(t);
        free(es);
        return XM_ERR_NO_MEMORY;
    }
    xmem__appliance_table__init(t);
    t->appliances = es;
    rep->body_case = XMEM__MSG__BODY_APPLIANCES;
    rep->appliances = t;
    for (uint32_t i = 0; i < m->napps; i++) {
        const mgr_appliance_t *a = m->apps[i];
        if (a->addr[0] == '\0') continue; /* removed (xmem appliance rm) */
        /* one block: the entry, then copies of its strings (an appliance that moves rewrites its
         * address while the reply is encoded without the lock) */
        Xmem__ApplianceEntry *e = calloc(1, sizeof(*e) + 2 * (XM_NAME_MAX + 1) + sizeof(a->provider));
        if (e == NULL) {
            pthread_mutex_unlock(&m->lock);
            mgr_reply_cleanup(rep);
            return XM_ERR_NO_MEMORY;
        }
        xmem__appliance_entry__init(e);
        char *str = (char *)(e + 1);
        e->addr = strcpy(str, a->addr);
        e->domain = strcpy(str + XM_NAME_MAX + 1, a->domain);
        /* an appliance that registered is used once its regions were compared with the table */
        e->state = !a->up ? "down" : a->draining ? "draining" : a->validated ? "up" : "joining";
        e->capacity = a->capacity;
        e->used = a->reserved;
        e->other_used = a->foreign;
        e->regions = a->nregions;
        e->provider = strcpy(str + 2 * (XM_NAME_MAX + 1), a->provider);
        es[t->n_appliances++] = e;
    }
    pthread_mutex_unlock(&m->lock);
    return XM_OK;
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/*
 * A restarted appliance registers its regions anew, under fresh keys (a restart revokes
 * every key handed out): fetch the owners' read-write keys of the parts it still has and
 * record them, so descriptors the manager hands out reach the regions again.
 */
static xm_status_t refresh_keys(mgr_t *m, mgr_appliance_t *ap, char *why, size_t whylen)
{
    typedef struct { uint64_t alloc_id, region_id; uint32_t part; char owner[XM_NAME_MAX + 1]; } want_t;
    size_t n = 0, cap = 0;
    want_t *w = NULL;
    pthread_mutex_lock(&m->lock);
    for (mgr_alloc_t *a = m->allocs; a != NULL; a = a->tnext) {
        for (uint32_t i = 0; i < a->policy.width; i++) {
            if (a->parts[i].appl != ap->idx || a->parts[i].missing) continue;
            if (n == cap) {
                cap = cap == 0 ? 64 : 2 * cap;
                want_t *g = realloc(w, cap * sizeof(*w));
                if (g == NULL) {
                    pthread_mutex_unlock(&m->lock);
                    free(w);
                    return XM_ERR_NO_MEMORY;
                }
                w = g;
            }
            w[n] = (want_t){.alloc_id = a->id, .region_id = a->parts[i].region_id, .part = i};
            snprintf(w[n].owner, sizeof(w[n].owner), "%s", a->owner);
            n++;
        }
    }
    pthread_mutex_unlock(&m->lock);
    xm_status_t status = XM_OK;
    for (size_t k = 0; k < n && status == XM_OK; k++) {
        Xmem__RegionRef rr = XMEM__REGION_REF__INIT;
        rr.id = w[k].region_id;
        rr.name = "";
        rr.access = XMEM__ACCESS__ACCESS_READ_WRITE;
        rr.tenant = w[k].owner;
        xm_msg_t req = XMEM__MSG__INIT, *r;
        req.body_case = XMEM__MSG__BODY_REGION_OPEN;
        req.region_open = &rr;
        status = mgr_appl_call(m, ap, &req, &r, why, whylen);
        if (status != XM_OK) break;
        uint64_t key = r->body_case == XMEM__MSG__BODY_REGION_DESC ? r->region_desc->key : 0;
        proto_msg_free(r);
        if (key == 0) {
            status = XM_ERR_PROTOCOL;
            break;
        }
        pthread_mutex_lock(&m->lock);
        mgr_alloc_t *a = find(m, w[k].alloc_id, NULL);
        if (a != NULL && a->busy) {
            /* another thread holds it: leave it to be refreshed at its next attach */
            a->keys_stale = true;
            pthread_mutex_unlock(&m->lock);
            continue;
        }
        bool changed = a != NULL && w[k].part < a->policy.width &&
                       a->parts[w[k].part].region_id == w[k].region_id &&
                       a->parts[w[k].part].key != key;
        if (!changed) {
            pthread_mutex_unlock(&m->lock);
            continue;
        }
        a->parts[w[k].part].key = key;
        a->busy = true; /* keeps the allocation as it is while the table is written */
        pthread_mutex_unlock(&m->lock);
        if (alloc_record(m, a) != XM_OK)
            xm_log_error("allocation %llu: its refreshed key is not recorded", (unsigned long long)a->id);
        alloc_release(m, a);
    }
    free(w);
    return status;
}

void mgr_reconcile(mgr_t *m, mgr_appliance_t *ap)
{
    Xmem__Empty empty = XMEM__EMPTY__INIT;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_LIST;
    req.region_list = &empty;
    char why[256];
    if (mgr_appl_call(m, ap, &req, &rep, why, sizeof(why)) != XM_OK) {
        xm_log_warn("appliance %s: cannot list its regions: %s (retried at its next heartbeat)",
                    ap->addr, why);
        return;
    }
    if (rep->body_case != XMEM__MSG__BODY_REGIONS) {
        proto_msg_free(rep);
        return;
    }
    const Xmem__RegionList *rl = rep->regions;
    uint64_t *reclaim = calloc(rl->n_regions + 1, sizeof(uint64_t));
    size_t nreclaim = 0;
    uint32_t kept = 0, lost = 0;
    pthread_mutex_lock(&m->lock);
    bool busy = false;
    for (mgr_alloc_t *a = m->allocs; a != NULL; a = a->tnext) {
        for (uint32_t i = 0; i < a->policy.width; i++) {
            if (a->parts[i].appl == ap->idx && a->busy) busy = true;
        }
    }
    if (busy || reclaim == NULL) {
        /* an allocation on it is being made: compare at the next heartbeat */
        pthread_mutex_unlock(&m->lock);
        free(reclaim);
        proto_msg_free(rep);
        return;
    }
    uint64_t *ids = calloc(rl->n_regions + 1, sizeof(uint64_t));
    if (ids == NULL) {
        pthread_mutex_unlock(&m->lock);
        free(reclaim);
        proto_msg_free(rep);
        return;
    }
    for (size_t r = 0; r < rl->n_regions; r++) ids[r] = rl->regions[r]->id;
    /* stock the appliance lost (it restarted) is forgotten; a region being made is
     * compared at the next heartbeat, once the stock knows its id */
    mgr_stock_forget_missing(m, ap->idx, ids, rl->n_regions);
    free(ids);
    if (m->making_appl == ap->idx) {
        pthread_mutex_unlock(&m->lock);
        free(reclaim);
        proto_msg_free(rep);
        return;
    }
    /* both sides sorted: a table of many allocations is compared in O(n log n) */
    size_t nmine = 0;
    for (mgr_alloc_t *a = m->allocs; a != NULL; a = a->tnext) {
        for (uint32_t i = 0; i < a->policy.width; i++) nmine += a->parts[i].appl == ap->idx;
    }
    uint64_t *mine = calloc(nmine + 1, sizeof(uint64_t)), *theirs = calloc(rl->n_regions + 1, sizeof(uint64_t));
    if (mine == NULL || theirs == NULL) {
        pthread_mutex_unlock(&m->lock);
        free(mine);
        free(theirs);
        free(reclaim);
        proto_msg_free(rep);
        return;
    }
    nmine = 0;
    for (mgr_alloc_t *a = m->allocs; a != NULL; a = a->tnext) {
        for (uint32_t i = 0; i < a->policy.width; i++) {
            if (a->parts[i].appl == ap->idx) mine[nmine++] = a->parts[i].region_id;
        }
    }
    for (size_t r = 0; r < rl->n_regions; r++) theirs[r] = rl->regions[r]->id;
    qsort(mine, nmine, sizeof(uint64_t), cmp_u64);
    qsort(theirs, rl->n_regions, sizeof(uint64_t), cmp_u64);
    for (size_t r = 0; r < rl->n_regions; r++) {
        bool sbusy = false;
        bool known = mgr_stock_known(m, ap->idx, rl->regions[r]->id, &sbusy) ||
                     bsearch(&rl->regions[r]->id, mine, nmine, sizeof(uint64_t), cmp_u64) != NULL;
        /* regions made directly by tenants are theirs, not the manager's to reclaim */
        if (!known && strncmp(rl->regions[r]->name, MGR_REGION_PREFIX, strlen(MGR_REGION_PREFIX)) == 0)
            reclaim[nreclaim++] = rl->regions[r]->id;
    }
    free(mine);
    for (mgr_alloc_t *a = m->allocs; a != NULL; a = a->tnext) {
        for (uint32_t i = 0; i < a->policy.width; i++) {
            if (a->parts[i].appl != ap->idx) continue;
            bool present = bsearch(&a->parts[i].region_id, theirs, rl->n_regions, sizeof(uint64_t),
                                   cmp_u64) != NULL;
            if (!present && !a->parts[i].missing) {
                xm_log_warn("allocation %llu: region %llu is gone from appliance %s: lost",
                            (unsigned long long)a->id, (unsigned long long)a->parts[i].region_id,
                            ap->addr);
            }
            a->parts[i].missing = !present;
            if (present) kept++;
            else lost++;
        }
    }
    free(theirs);
    pthread_mutex_unlock(&m->lock);
    proto_msg_free(rep);
    for (size_t i = 0; i < nreclaim; i++) {
        if (mgr_region_destroy(m, ap, reclaim[i], why, sizeof(why)) != XM_OK) {
            xm_log_warn("appliance %s: cannot reclaim region %llu: %s", ap->addr,
                        (unsigned long long)reclaim[i], why);
            free(reclaim);
            return; /* stays unvalidated: tried again at the next heartbeat */
        }
    }
    if (kept > 0 && refresh_keys(m, ap, why, sizeof(why)) != XM_OK) {
        xm_log_warn("appliance %s: cannot refresh its regions' keys: %s", ap->addr, why);
        free(reclaim);
        return; /* stays unvalidated: tried again at the next heartbeat */
    }
    if (nreclaim > 0 || kept > 0 || lost > 0) {
        xm_log_info("appliance %s validated: %u regions resume, %zu reclaimed, %u lost", ap->addr,
                    kept, nreclaim, lost);
    }
    free(reclaim);
    pthread_mutex_lock(&m->lock);
    ap->validated = true;
    pthread_mutex_unlock(&m->lock);
}
