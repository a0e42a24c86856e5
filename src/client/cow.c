/* libxmem virtual copy: snapshots and clones made on the appliance (src/appliance/cow.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "client.h"

/* region.c */
xm_status_t xm__region_from_desc(xm_ctx_h ctx, xm_msg_t *rep, xm_region_h *region_p);

static xm_status_t vcopy(xm_ctx_h ctx, uint64_t id, const char *name, const char *new_name,
                         bool writable, xm_region_h *region_p)
{
    if (ctx == NULL || region_p == NULL) return XM_ERR_INVALID;
    if (id == 0 ? !xm__name_valid(name)
                : name != NULL && name[0] != '\0' && !xm__name_valid(name)) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "source region: an id or a valid name");
    }
    if (new_name != NULL && new_name[0] != '\0' && !xm__name_valid(new_name)) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "copy name must be 1..%d printable characters",
                             XM_NAME_MAX);
    }
    Xmem__RegionRef src = XMEM__REGION_REF__INIT;
    src.id = id;
    src.name = (char *)(id == 0 && name != NULL ? name : "");
    Xmem__RegionVcopy v = XMEM__REGION_VCOPY__INIT;
    v.source = &src;
    v.name = (char *)(new_name != NULL ? new_name : "");
    v.writable = writable;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_VCOPY;
    req.region_vcopy = &v;
    xm_status_t status = xm__rpc(ctx, &req, &rep);
    return status != XM_OK ? status : xm__region_from_desc(ctx, rep, region_p);
}

XM_EXPORT xm_status_t xm_region_snapshot(xm_ctx_h ctx, uint64_t id, const char *name,
                                         const char *new_name, xm_region_h *region_p)
{
    return vcopy(ctx, id, name, new_name, false, region_p);
}

XM_EXPORT xm_status_t xm_region_clone(xm_ctx_h ctx, uint64_t id, const char *name,
                                      const char *new_name, xm_region_h *region_p)
{
    return vcopy(ctx, id, name, new_name, true, region_p);
}
