/* libxmem allocations: ask the manager, keep the descriptor, reach the
 * appliances directly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "client.h"

static bool ref_args_ok(xm_ctx_h ctx, uint64_t id, const char *name)
{
    if (ctx == NULL) return false;
    if (id != 0) return name == NULL || name[0] == '\0' || xm__name_valid(name);
    return xm__name_valid(name);
}

/* Index of the peer with this data address in the context's data path, added when new. */
static xm_status_t peer_get(xm_ctx_h ctx, const ProtobufCBinaryData *addr, uint32_t *idx_p)
{
    xm_status_t status = xm__dp_set_provider(ctx->dp, ctx->provider);
    if (status == XM_OK) status = xm__dp_peer_add(ctx->dp, addr->data, addr->len, idx_p);
    if (status != XM_OK) return xm__ctx_error(ctx, status, "cannot add an appliance's data address");
    return XM_OK;
}

/* Turn a descriptor (validated by the decoder: it covers every byte) into a handle. */
static xm_status_t alloc_from_desc(xm_ctx_h ctx, xm_msg_t *rep, xm_alloc_h *alloc_p)
{
    xm_status_t status;
    if (rep->body_case != XMEM__MSG__BODY_ALLOC_DESC) {
        proto_msg_free(rep);
        return xm__ctx_error(ctx, XM_ERR_PROTOCOL, "manager sent no allocation descriptor");
    }
    const Xmem__AllocDesc *d = rep->alloc_desc;
    xm__layout_t layout;
    const char *why;
    if (proto_desc_layout(d, &layout, &why) != XM_OK) {
        /* the decoder checked it already; a descriptor built any other way is checked here */
        status = xm__ctx_error(ctx, XM_ERR_PROTOCOL, "allocation descriptor: %s", why);
        proto_msg_free(rep);
        return status;
    }
    /* one endpoint serves every appliance: they must share a provider */
    const char *prov = d->parts[0]->provider;
    for (size_t i = 0; i < d->n_parts; i++) {
        if (strcmp(d->parts[i]->provider, prov) != 0 ||
            (ctx->provider[0] != '\0' && strcmp(ctx->provider, prov) != 0) ||
            (ctx->want_provider[0] != '\0' && strcmp(ctx->want_provider, prov) != 0)) {
            status = xm__ctx_error(ctx, XM_ERR_INVALID,
                                   "allocation %llu is served over %s; this context uses %s",
                                   (unsigned long long)d->id, d->parts[i]->provider,
                                   ctx->provider[0] ? ctx->provider
                                   : ctx->want_provider[0] ? ctx->want_provider : prov);
            proto_msg_free(rep);
            return status;
        }
    }
    xm_region_h a = calloc(1, sizeof(*a));
    xm__part_t *parts = calloc(d->n_parts, sizeof(*parts));
    if (a == NULL || parts == NULL) {
        free(a);
        free(parts);
        proto_msg_free(rep);
        return XM_ERR_NO_MEMORY;
    }
    if (ctx->provider[0] == '\0') snprintf(ctx->provider, sizeof(ctx->provider), "%s", prov);
    for (size_t i = 0; i < d->n_parts; i++) {
        status = peer_get(ctx, &d->parts[i]->fabric_addr, &parts[i].peer);
        if (status != XM_OK) {
            free(a);
            free(parts);
            proto_msg_free(rep);
            return status;
        }
        parts[i].key = d->parts[i]->key;
        parts[i].size = d->parts[i]->size;
        parts[i].state = (uint8_t)d->parts[i]->state;
    }
    a->ctx = ctx;
    a->id = d->id;
    a->size = d->size;
    a->access = d->access == XMEM__ACCESS__ACCESS_READ ? XM_ACCESS_READ : XM_ACCESS_READ_WRITE;
    a->parts = parts;
    a->nparts = (uint32_t)d->n_parts;
    a->layout = layout;
    a->generation = d->generation;
    /* local transport: map the parts on appliances of this host */
    status = xm__local_alloc(ctx, a, d);
    proto_msg_free(rep);
    /* replicate / ec: reads and writes go through resil.c (docs/resilience.md) */
    if (status == XM_OK && layout.redundancy > 0) {
        status = xm__resil_attach(a);
        if (status != XM_OK) xm__local_close(a);
    }
    if (status != XM_OK) {
        free(a->parts);
        free(a);
        return status;
    }
    *alloc_p = a;
    return XM_OK;
}

/* Ask the manager for an allocation; its reply (an AllocDesc) in *rep_p. */
static xm_status_t alloc_request(xm_ctx_h ctx, uint64_t size, const char *policy, const char *name,
                                 xm_msg_t **rep_p)
{
    if (size == 0) return xm__ctx_error(ctx, XM_ERR_INVALID, "allocation size must be > 0");
    if (name != NULL && name[0] != '\0' && !xm__name_valid(name)) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "allocation name must be 1..%d printable characters",
                             XM_NAME_MAX);
    }
    if (policy == NULL || policy[0] == '\0') policy = "single";
    if (!xm__name_valid(policy)) return xm__ctx_error(ctx, XM_ERR_INVALID, "bad policy text");
    Xmem__AllocRequest ar = XMEM__ALLOC_REQUEST__INIT;
    /* the same id on a retry: the manager answers with what the first attempt made */
    rpc_random(&ar.request_id, sizeof(ar.request_id));
    ar.request_id |= 1;
    ar.size = size;
    ar.policy = (char *)policy;
    ar.name = (char *)(name != NULL ? name : "");
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_ALLOC_CREATE;
    req.alloc_create = &ar;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status == XM_ERR_TIMEOUT || status == XM_ERR_DISCONNECTED) {
        status = xm__rpc(ctx, &req, &rep);
    }
    if (status != XM_OK) return status;
    if (rep->body_case != XMEM__MSG__BODY_ALLOC_DESC) {
        proto_msg_free(rep);
        return xm__ctx_error(ctx, XM_ERR_PROTOCOL, "manager sent no allocation descriptor");
    }
    *rep_p = rep;
    return XM_OK;
}

XM_EXPORT xm_status_t xm_alloc(xm_ctx_h ctx, uint64_t size, const char *policy, const char *name,
                               xm_alloc_h *alloc_p)
{
    if (ctx == NULL || alloc_p == NULL) return XM_ERR_INVALID;
    xm_msg_t *rep;
    xm_status_t status = alloc_request(ctx, size, policy, name, &rep);
    if (status != XM_OK) return status;
    uint64_t id = rep->alloc_desc->id;
    status = alloc_from_desc(ctx, rep, alloc_p);
    if (status == XM_ERR_INVALID) {
        /* made but not usable here (a resilient one, or another provider): nothing stays
         * allocated, and the reason stays the one given */
        char why[256];
        snprintf(why, sizeof(why), "%s", xm_last_error(ctx));
        if (xm_free(ctx, id, NULL) == XM_OK) {
            xm__ctx_error(ctx, status, "%s (freed again)", why);
        } else {
            xm__ctx_error(ctx, status, "%s (and freeing it failed: free allocation %llu)", why,
                          (unsigned long long)id);
        }
    }
    return status;
}

XM_EXPORT xm_status_t xm_alloc_create(xm_ctx_h ctx, uint64_t size, const char *policy,
                                      const char *name, xm_alloc_info_t *info_p)
{
    if (ctx == NULL || info_p == NULL) return XM_ERR_INVALID;
    xm_msg_t *rep;
    xm_status_t status = alloc_request(ctx, size, policy, name, &rep);
    if (status != XM_OK) return status;
    const Xmem__AllocDesc *d = rep->alloc_desc;
    xm__layout_t layout;
    const char *why;
    if (proto_desc_layout(d, &layout, &why) != XM_OK) {
        status = xm__ctx_error(ctx, XM_ERR_PROTOCOL, "allocation descriptor: %s", why);
        proto_msg_free(rep);
        return status;
    }
    memset(info_p, 0, sizeof(*info_p));
    info_p->id = d->id;
    info_p->size = d->size;
    snprintf(info_p->name, sizeof(info_p->name), "%s", d->name);
    snprintf(info_p->owner, sizeof(info_p->owner), "%s", d->owner);
    snprintf(info_p->policy, sizeof(info_p->policy), "%s", d->policy);
    snprintf(info_p->state, sizeof(info_p->state), "ok");
    info_p->parts = (uint32_t)d->n_parts;
    info_p->redundancy = layout.redundancy;
    info_p->domains = d->domains;
    info_p->domain_max = d->domain_max;
    proto_msg_free(rep);
    return XM_OK;
}

static void aref_fill(Xmem__AllocRef *ref, uint64_t id, const char *name, xm_access_t access)
{
    xmem__alloc_ref__init(ref);
    ref->id = id;
    ref->name = (char *)(id == 0 && name != NULL ? name : "");
    ref->access = (Xmem__Access)access;
}

XM_EXPORT xm_status_t xm_free(xm_ctx_h ctx, uint64_t id, const char *name)
{
    if (!ref_args_ok(ctx, id, name)) return XM_ERR_INVALID;
    Xmem__AllocRef ref;
    aref_fill(&ref, id, name, 0);
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_ALLOC_FREE;
    req.alloc_free = &ref;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status == XM_OK) proto_msg_free(rep);
    return status;
}

XM_EXPORT xm_status_t xm_attach(xm_ctx_h ctx, uint64_t id, const char *name, xm_access_t access,
                                xm_alloc_h *alloc_p)
{
    if (!ref_args_ok(ctx, id, name) || alloc_p == NULL ||
        (access != XM_ACCESS_READ && access != XM_ACCESS_READ_WRITE)) {
        return XM_ERR_INVALID;
    }
    Xmem__AllocRef ref;
    aref_fill(&ref, id, name, access);
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_ALLOC_ATTACH;
    req.alloc_attach = &ref;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    return status != XM_OK ? status : alloc_from_desc(ctx, rep, alloc_p);
}

XM_EXPORT void xm_alloc_close(xm_alloc_h alloc)
{
    xm_region_close(alloc);
}

XM_EXPORT xm_status_t xm_alloc_scrub(xm_alloc_h alloc,
                                     void (*progress)(uint64_t done, uint64_t total, void *arg),
                                     void *arg, xm_scrub_report_t *report_p)
{
    if (alloc == NULL || report_p == NULL) return XM_ERR_INVALID;
    memset(report_p, 0, sizeof(*report_p));
    if (!xm__resil_is(alloc)) {
        return xm__ctx_error(alloc->ctx, XM_ERR_INVALID, "allocation %llu keeps no redundancy to "
                             "check (policy single or stripe)", (unsigned long long)alloc->id);
    }
    if (alloc->access != XM_ACCESS_READ_WRITE) {
        return xm__ctx_error(alloc->ctx, XM_ERR_PERM, "scrubbing allocation %llu rewrites what "
                             "disagrees: attach it read-write", (unsigned long long)alloc->id);
    }
    return xm__resil_scrub(alloc, report_p, progress, arg);
}

XM_EXPORT xm_status_t xm_alloc_grant(xm_ctx_h ctx, uint64_t id, const char *name,
                                     const char *tenant, xm_access_t access)
{
    if (!ref_args_ok(ctx, id, name) || !xm__name_valid(tenant) ||
        (access != XM_ACCESS_READ && access != XM_ACCESS_READ_WRITE)) {
        return XM_ERR_INVALID;
    }
    Xmem__AllocRef ref;
    aref_fill(&ref, id, name, 0);
    Xmem__AllocGrant g = XMEM__ALLOC_GRANT__INIT;
    g.alloc = &ref;
    g.tenant = (char *)tenant;
    g.access = (Xmem__Access)access;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_ALLOC_GRANT;
    req.alloc_grant = &g;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status == XM_OK) proto_msg_free(rep);
    return status;
}

XM_EXPORT xm_status_t xm_alloc_revoke(xm_ctx_h ctx, uint64_t id, const char *name, const char *tenant)
{
    if (!ref_args_ok(ctx, id, name) || !xm__name_valid(tenant)) return XM_ERR_INVALID;
    Xmem__AllocRef ref;
    aref_fill(&ref, id, name, 0);
    Xmem__AllocGrant g = XMEM__ALLOC_GRANT__INIT;
    g.alloc = &ref;
    g.tenant = (char *)tenant;
    g.access = XMEM__ACCESS__ACCESS_READ;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_ALLOC_REVOKE;
    req.alloc_revoke = &g;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status == XM_OK) proto_msg_free(rep);
    return status;
}

XM_EXPORT xm_status_t xm_alloc_list(xm_ctx_h ctx, xm_alloc_info_t **infos_p, size_t *count_p)
{
    if (ctx == NULL || infos_p == NULL || count_p == NULL) return XM_ERR_INVALID;
    Xmem__Empty empty = XMEM__EMPTY__INIT;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_ALLOC_LIST;
    req.alloc_list = &empty;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status != XM_OK) return status;
    if (rep->body_case != XMEM__MSG__BODY_ALLOCS) {
        proto_msg_free(rep);
        return xm__ctx_error(ctx, XM_ERR_PROTOCOL, "manager sent no allocation list");
    }
    size_t n = rep->allocs->n_allocs;
    xm_alloc_info_t *infos = n > 0 ? calloc(n, sizeof(*infos)) : NULL;
    if (n > 0 && infos == NULL) {
        proto_msg_free(rep);
        return XM_ERR_NO_MEMORY;
    }
    for (size_t i = 0; i < n; i++) {
        const Xmem__AllocInfo *in = rep->allocs->allocs[i];
        infos[i].id = in->id;
        infos[i].size = in->size;
        snprintf(infos[i].name, sizeof(infos[i].name), "%s", in->name);
        snprintf(infos[i].owner, sizeof(infos[i].owner), "%s", in->owner);
        snprintf(infos[i].policy, sizeof(infos[i].policy), "%s", in->policy);
        snprintf(infos[i].state, sizeof(infos[i].state), "%s", in->state);
        /* "rebuilding:42%" on the wire (names have no spaces) */
        if (strncmp(infos[i].state, "rebuilding:", 11) == 0) infos[i].state[10] = ' ';
        infos[i].parts = (uint32_t)in->n_appliances;
        infos[i].redundancy = in->redundancy;
        infos[i].domains = in->domains;
        infos[i].domain_max = in->domain_max;
        infos[i].unavailable = in->unavailable;
    }
    proto_msg_free(rep);
    *infos_p = infos;
    *count_p = n;
    return XM_OK;
}

XM_EXPORT xm_status_t xm_appliance_list(xm_ctx_h ctx, xm_appliance_entry_t **entries_p,
                                        size_t *count_p)
{
    if (ctx == NULL || entries_p == NULL || count_p == NULL) return XM_ERR_INVALID;
    Xmem__Empty empty = XMEM__EMPTY__INIT;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_APPLIANCE_LIST;
    req.appliance_list = &empty;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status != XM_OK) return status;
    if (rep->body_case != XMEM__MSG__BODY_APPLIANCES) {
        proto_msg_free(rep);
        return xm__ctx_error(ctx, XM_ERR_PROTOCOL, "manager sent no appliance table");
    }
    size_t n = rep->appliances->n_appliances;
    xm_appliance_entry_t *es = n > 0 ? calloc(n, sizeof(*es)) : NULL;
    if (n > 0 && es == NULL) {
        proto_msg_free(rep);
        return XM_ERR_NO_MEMORY;
    }
    for (size_t i = 0; i < n; i++) {
        const Xmem__ApplianceEntry *in = rep->appliances->appliances[i];
        snprintf(es[i].addr, sizeof(es[i].addr), "%s", in->addr);
        snprintf(es[i].domain, sizeof(es[i].domain), "%s", in->domain);
        snprintf(es[i].state, sizeof(es[i].state), "%s", in->state);
        snprintf(es[i].provider, sizeof(es[i].provider), "%s", in->provider);
        es[i].capacity = in->capacity;
        es[i].used = in->used;
        es[i].other_used = in->other_used;
        es[i].regions = in->regions;
    }
    proto_msg_free(rep);
    *entries_p = es;
    *count_p = n;
    return XM_OK;
}

static xm_status_t appliance_ref(xm_ctx_h ctx, const char *addr, Xmem__ApplianceRef *ref)
{
    if (ctx == NULL || !xm__name_valid(addr)) return XM_ERR_INVALID;
    xmem__appliance_ref__init(ref);
    ref->addr = (char *)addr;
    return XM_OK;
}

XM_EXPORT xm_status_t xm_appliance_drain(xm_ctx_h ctx, const char *addr, int stop,
                                         uint32_t *moving_p, uint32_t *unmovable_p)
{
    Xmem__ApplianceRef ref;
    if (appliance_ref(ctx, addr, &ref) != XM_OK) return XM_ERR_INVALID;
    ref.stop = stop != 0;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_APPLIANCE_DRAIN;
    req.appliance_drain = &ref;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status != XM_OK) return status;
    if (rep->body_case != XMEM__MSG__BODY_DRAIN_STATE) {
        proto_msg_free(rep);
        return xm__ctx_error(ctx, XM_ERR_PROTOCOL, "manager sent no drain state");
    }
    if (moving_p != NULL) *moving_p = rep->drain_state->moving;
    if (unmovable_p != NULL) *unmovable_p = rep->drain_state->unmovable;
    proto_msg_free(rep);
    return XM_OK;
}

XM_EXPORT xm_status_t xm_appliance_remove(xm_ctx_h ctx, const char *addr)
{
    Xmem__ApplianceRef ref;
    if (appliance_ref(ctx, addr, &ref) != XM_OK) return XM_ERR_INVALID;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_APPLIANCE_REMOVE;
    req.appliance_remove = &ref;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status == XM_OK) proto_msg_free(rep);
    return status;
}
