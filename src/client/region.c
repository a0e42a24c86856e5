/* libxmem regions: create, open, destroy, grant, stat, list. */
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

static void ref_fill(Xmem__RegionRef *ref, uint64_t id, const char *name, xm_access_t access)
{
    xmem__region_ref__init(ref);
    ref->id = id;
    ref->name = (char *)(id == 0 && name != NULL ? name : "");
    ref->access = (Xmem__Access)access;
}

static xm_status_t region_from_desc(xm_ctx_h ctx, xm_msg_t *rep, xm_region_h *region_p)
{
    if (rep->body_case != XMEM__MSG__BODY_REGION_DESC) {
        proto_msg_free(rep);
        return xm__ctx_error(ctx, XM_ERR_PROTOCOL, "appliance sent no region descriptor");
    }
    xm_region_h r = calloc(1, sizeof(*r));
    if (r == NULL) {
        proto_msg_free(rep);
        return XM_ERR_NO_MEMORY;
    }
    r->ctx = ctx;
    r->id = rep->region_desc->id;
    r->size = rep->region_desc->size;
    r->key = rep->region_desc->key;
    r->access = rep->region_desc->access == XMEM__ACCESS__ACCESS_READ ? XM_ACCESS_READ
                                                                      : XM_ACCESS_READ_WRITE;
    proto_msg_free(rep);
    /* local transport: map it when the appliance is on this host */
    xm_status_t status = xm__local_region(ctx, r);
    if (status != XM_OK) {
        free(r);
        return status;
    }
    *region_p = r;
    return XM_OK;
}

/* for cow.c: a RegionDesc reply as an opened handle (rep is consumed) */
xm_status_t xm__region_from_desc(xm_ctx_h ctx, xm_msg_t *rep, xm_region_h *region_p);
xm_status_t xm__region_from_desc(xm_ctx_h ctx, xm_msg_t *rep, xm_region_h *region_p)
{
    return region_from_desc(ctx, rep, region_p);
}

XM_EXPORT xm_status_t xm_region_create(xm_ctx_h ctx, uint64_t size, const char *name,
                                       xm_region_h *region_p)
{
    if (ctx == NULL || region_p == NULL) return XM_ERR_INVALID;
    if (size == 0) return xm__ctx_error(ctx, XM_ERR_INVALID, "region size must be > 0");
    if (name != NULL && name[0] != '\0' && !xm__name_valid(name)) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "region name must be 1..%d printable characters",
                             XM_NAME_MAX);
    }
    Xmem__RegionCreate rc = XMEM__REGION_CREATE__INIT;
    rc.size = size;
    rc.name = (char *)(name != NULL ? name : "");
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_CREATE;
    req.region_create = &rc;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    return status != XM_OK ? status : region_from_desc(ctx, rep, region_p);
}

static xm_status_t simple_call(xm_ctx_h ctx, xm_msg_t *req);

XM_EXPORT xm_status_t xm_region_create_file(xm_ctx_h ctx, const char *path, uint32_t flags,
                                            const char *name, xm_region_h *region_p)
{
    if (ctx == NULL || region_p == NULL) return XM_ERR_INVALID;
    if (path == NULL || path[0] != '/' || strlen(path) >= 4096)
        return xm__ctx_error(ctx, XM_ERR_INVALID, "give the file's absolute path on the "
                                                  "appliance's host");
    if ((flags & ~XM_REGION_FILE_READ_ONLY) != 0)
        return xm__ctx_error(ctx, XM_ERR_INVALID, "unknown flags 0x%x", (unsigned)flags);
    if (name != NULL && name[0] != '\0' && !xm__name_valid(name)) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "region name must be 1..%d printable characters",
                             XM_NAME_MAX);
    }
    Xmem__RegionCreate rc = XMEM__REGION_CREATE__INIT;
    rc.name = (char *)(name != NULL ? name : "");
    rc.file = (char *)path;
    rc.read_only = (flags & XM_REGION_FILE_READ_ONLY) != 0;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_CREATE;
    req.region_create = &rc;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    return status != XM_OK ? status : region_from_desc(ctx, rep, region_p);
}

XM_EXPORT xm_status_t xm_region_sync(xm_region_h region, uint64_t offset, uint64_t length)
{
    if (region == NULL) return XM_ERR_INVALID;
    if (region->parts != NULL)
        return xm__ctx_error(region->ctx, XM_ERR_INVALID, "sync works on a region of one "
                                                          "appliance, not an allocation");
    if (offset > region->size || (length != 0 && length > region->size - offset))
        return xm__ctx_error(region->ctx, XM_ERR_RANGE, "sync range outside the region");
    Xmem__RegionRef ref;
    ref_fill(&ref, region->id, NULL, 0);
    Xmem__RegionSync y = XMEM__REGION_SYNC__INIT;
    y.region = &ref;
    y.offset = offset;
    y.length = length;
    xm_msg_t req = XMEM__MSG__INIT;
    req.body_case = XMEM__MSG__BODY_REGION_SYNC;
    req.region_sync = &y;
    return simple_call(region->ctx, &req);
}

XM_EXPORT xm_status_t xm_region_open(xm_ctx_h ctx, uint64_t id, const char *name,
                                     xm_access_t access, xm_region_h *region_p)
{
    if (!ref_args_ok(ctx, id, name) || region_p == NULL ||
        (access != XM_ACCESS_READ && access != XM_ACCESS_READ_WRITE)) {
        return XM_ERR_INVALID;
    }
    Xmem__RegionRef ref;
    ref_fill(&ref, id, name, access);
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_OPEN;
    req.region_open = &ref;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    return status != XM_OK ? status : region_from_desc(ctx, rep, region_p);
}

XM_EXPORT void xm_region_close(xm_region_h region)
{
    if (region == NULL) return;
    xm__local_close(region); /* local transport */
    xm__resil_put(region->resil); /* resilient I/O state (resil.c) */
    free(region->parts);
    free(region);
}

static xm_status_t simple_call(xm_ctx_h ctx, xm_msg_t *req)
{
    xm_msg_t *rep;
    xm_status_t status = xm__rpc(ctx, req, &rep);
    if (status == XM_OK) proto_msg_free(rep);
    return status;
}

XM_EXPORT xm_status_t xm_region_destroy(xm_ctx_h ctx, uint64_t id, const char *name)
{
    if (!ref_args_ok(ctx, id, name)) return XM_ERR_INVALID;
    Xmem__RegionRef ref;
    ref_fill(&ref, id, name, 0);
    xm_msg_t req = XMEM__MSG__INIT;
    req.body_case = XMEM__MSG__BODY_REGION_DESTROY;
    req.region_destroy = &ref;
    return simple_call(ctx, &req);
}

XM_EXPORT xm_status_t xm_region_grant(xm_ctx_h ctx, uint64_t id, const char *name,
                                      const char *tenant, xm_access_t access)
{
    if (!ref_args_ok(ctx, id, name) || !xm__name_valid(tenant) ||
        (access != XM_ACCESS_READ && access != XM_ACCESS_READ_WRITE)) {
        return XM_ERR_INVALID;
    }
    Xmem__RegionRef ref;
    ref_fill(&ref, id, name, 0);
    Xmem__RegionGrant g = XMEM__REGION_GRANT__INIT;
    g.region = &ref;
    g.tenant = (char *)tenant;
    g.access = (Xmem__Access)access;
    xm_msg_t req = XMEM__MSG__INIT;
    req.body_case = XMEM__MSG__BODY_REGION_GRANT;
    req.region_grant = &g;
    return simple_call(ctx, &req);
}

XM_EXPORT xm_status_t xm_region_revoke(xm_ctx_h ctx, uint64_t id, const char *name,
                                       const char *tenant)
{
    if (!ref_args_ok(ctx, id, name) || !xm__name_valid(tenant)) return XM_ERR_INVALID;
    Xmem__RegionRef ref;
    ref_fill(&ref, id, name, 0);
    Xmem__RegionGrant g = XMEM__REGION_GRANT__INIT;
    g.region = &ref;
    g.tenant = (char *)tenant;
    xm_msg_t req = XMEM__MSG__INIT;
    req.body_case = XMEM__MSG__BODY_REGION_REVOKE;
    req.region_revoke = &g;
    return simple_call(ctx, &req);
}

XM_EXPORT xm_status_t xm_region_grants(xm_ctx_h ctx, uint64_t id, const char *name,
                                       xm_grant_info_t **grants_p, size_t *count_p)
{
    if (!ref_args_ok(ctx, id, name) || grants_p == NULL || count_p == NULL) return XM_ERR_INVALID;
    *grants_p = NULL;
    *count_p = 0;
    Xmem__RegionRef ref;
    ref_fill(&ref, id, name, 0);
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_STAT;
    req.region_stat = &ref;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status != XM_OK) return status;
    if (rep->body_case != XMEM__MSG__BODY_REGION_INFO) {
        proto_msg_free(rep);
        return xm__ctx_error(ctx, XM_ERR_PROTOCOL, "appliance sent no region info");
    }
    size_t n = rep->region_info->n_grant_list;
    if (n > 0) {
        xm_grant_info_t *l = calloc(n, sizeof(*l));
        if (l == NULL) {
            proto_msg_free(rep);
            return XM_ERR_NO_MEMORY;
        }
        for (size_t i = 0; i < n; i++) {
            snprintf(l[i].tenant, sizeof(l[i].tenant), "%s", rep->region_info->grant_list[i]->tenant);
            l[i].access = (uint32_t)rep->region_info->grant_list[i]->access;
        }
        *grants_p = l;
        *count_p = n;
    }
    proto_msg_free(rep);
    return XM_OK;
}

XM_EXPORT uint64_t xm_region_id(xm_region_h region) { return region->id; }
XM_EXPORT uint64_t xm_region_size(xm_region_h region) { return region->size; }
XM_EXPORT xm_access_t xm_region_access(xm_region_h region) { return region->access; }

static void info_from_msg(const Xmem__RegionInfo *in, xm_region_info_t *out)
{
    memset(out, 0, sizeof(*out));
    out->id = in->id;
    out->size = in->size;
    snprintf(out->name, sizeof(out->name), "%s", in->name != NULL ? in->name : "");
    snprintf(out->owner, sizeof(out->owner), "%s", in->owner != NULL ? in->owner : "");
    out->extents = in->extents;
    out->grants = in->grants;
    out->resident = in->resident;
    out->copy_of = in->copy_of;
    out->copy_kind = in->copy_kind;
}

XM_EXPORT xm_status_t xm_region_stat(xm_ctx_h ctx, uint64_t id, const char *name,
                                     xm_region_info_t *info_p)
{
    if (!ref_args_ok(ctx, id, name) || info_p == NULL) return XM_ERR_INVALID;
    Xmem__RegionRef ref;
    ref_fill(&ref, id, name, 0);
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_STAT;
    req.region_stat = &ref;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status != XM_OK) return status;
    if (rep->body_case != XMEM__MSG__BODY_REGION_INFO) {
        proto_msg_free(rep);
        return xm__ctx_error(ctx, XM_ERR_PROTOCOL, "appliance sent no region info");
    }
    info_from_msg(rep->region_info, info_p);
    proto_msg_free(rep);
    return XM_OK;
}

XM_EXPORT xm_status_t xm_region_list(xm_ctx_h ctx, xm_region_info_t **infos_p, size_t *count_p)
{
    if (ctx == NULL || infos_p == NULL || count_p == NULL) return XM_ERR_INVALID;
    Xmem__Empty empty = XMEM__EMPTY__INIT;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_LIST;
    req.region_list = &empty;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status != XM_OK) return status;
    if (rep->body_case != XMEM__MSG__BODY_REGIONS) {
        proto_msg_free(rep);
        return xm__ctx_error(ctx, XM_ERR_PROTOCOL, "appliance sent no region list");
    }
    size_t n = rep->regions->n_regions;
    xm_region_info_t *infos = NULL;
    if (n > 0) {
        infos = calloc(n, sizeof(*infos));
        if (infos == NULL) {
            proto_msg_free(rep);
            return XM_ERR_NO_MEMORY;
        }
        for (size_t i = 0; i < n; i++) info_from_msg(rep->regions->regions[i], &infos[i]);
    }
    proto_msg_free(rep);
    *infos_p = infos;
    *count_p = n;
    return XM_OK;
}

XM_EXPORT xm_status_t xm_appliance_stat(xm_ctx_h ctx, xm_appliance_info_t *info_p)
{
    if (ctx == NULL || info_p == NULL) return XM_ERR_INVALID;
    Xmem__ApplianceStat st = XMEM__APPLIANCE_STAT__INIT;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_APPLIANCE_STAT;
    req.appliance_stat = &st;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    if (status != XM_OK) return status;
    if (rep->body_case != XMEM__MSG__BODY_APPLIANCE_INFO) {
        proto_msg_free(rep);
        return xm__ctx_error(ctx, XM_ERR_PROTOCOL, "appliance sent no pool info");
    }
    const Xmem__ApplianceInfo *a = rep->appliance_info;
    memset(info_p, 0, sizeof(*info_p));
    info_p->pool_size = a->pool_size;
    info_p->pool_used = a->pool_used;
    info_p->extent_size = a->extent_size;
    info_p->regions = a->regions;
    snprintf(info_p->backing, sizeof(info_p->backing), "%s", a->backing);
    snprintf(info_p->provider, sizeof(info_p->provider), "%s", a->provider);
    proto_msg_free(rep);
    return XM_OK;
}
