/* Placement: which appliance holds which part of an allocation. One function,
 * replaceable through mgr_opts_t.place. */
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "manager.h"

uint64_t mgr_extent_round(const mgr_appliance_t *a, uint64_t size)
{
    uint64_t e = a->extent_size != 0 ? a->extent_size : 1;
    return (size + e - 1) / e * e;
}

static uint64_t free_bytes(const mgr_appliance_t *a)
{
    uint64_t used = a->reserved + a->foreign;
    return a->capacity > used ? a->capacity - used : 0;
}

/*
 * Parts in order, each on the appliance that (1) is up and validated, (2) is
 * not used by this allocation yet, (3) has room, (4) is in the failure domain
 * this allocation has used least, (5) has the most free bytes. So parts land
 * in distinct domains while there are domains left, then spread evenly.
 */
xm_status_t mgr_place_spread(mgr_appliance_t *const *apps, uint32_t napps,
                             const mgr_place_req_t *req, uint32_t *chosen, const char **why_p)
{
    if (req->nparts > napps) {
        *why_p = "not enough appliances for that many parts";
        return XM_ERR_NO_SPACE;
    }
    bool *used = calloc(napps + 1, sizeof(bool));
    if (used == NULL) return XM_ERR_NO_MEMORY;
    xm_status_t status = XM_OK;
    for (uint32_t p = 0; p < req->nparts; p++) {
        int best = -1;
        uint32_t best_dom = 0;
        uint64_t best_free = 0;
        for (uint32_t i = 0; i < napps; i++) {
            const mgr_appliance_t *a = apps[i];
            if (!a->up || !a->validated || a->draining || used[i]) continue;
            uint64_t need = mgr_extent_round(a, req->part_size[p]);
            uint64_t fr = free_bytes(a);
            if (need > fr) continue;
            /* parts of this request already in a's domain */
            uint32_t dom = 0;
            for (uint32_t j = 0; j < napps; j++) {
                if (used[j] && strcmp(apps[j]->domain, a->domain) == 0) dom++;
            }
            if (best < 0 || dom < best_dom || (dom == best_dom && fr > best_free)) {
                best = (int)i;
                best_dom = dom;
                best_free = fr;
            }
        }
        if (best < 0) {
            *why_p = "no appliance has room for a part of this allocation";
            status = XM_ERR_NO_SPACE;
            break;
        }
        used[best] = true;
        chosen[p] = (uint32_t)best;
    }
    free(used);
    return status;
}

int mgr_place_spare(mgr_appliance_t *const *apps, uint32_t napps, const uint32_t *appls,
                    uint32_t n, uint32_t part, uint64_t size)
{
    int best = -1;
    uint32_t best_dom = 0;
    uint64_t best_free = 0;
    for (uint32_t i = 0; i < napps; i++) {
        const mgr_appliance_t *a = apps[i];
        if (!a->up || !a->validated || a->draining) continue;
        bool holds = false;
        uint32_t dom = 0; /* the allocation's other parts in a's failure domain */
        for (uint32_t j = 0; j < n; j++) {
            if (j == part) continue;
            holds |= appls[j] == i;
            dom += strcmp(apps[appls[j]]->domain, a->domain) == 0;
        }
        if (holds || appls[part] == i) continue;
        uint64_t fr = free_bytes(a);
        if (mgr_extent_round(a, size) > fr) continue;
        if (best < 0 || dom < best_dom || (dom == best_dom && fr > best_free)) {
            best = (int)i;
            best_dom = dom;
            best_free = fr;
        }
    }
    return best;
}
