/* The appliance's metric families: the pool and its regions, rendered at each scrape. */
#include <sys/stat.h>

#include "../common/common.h"
#include "../common/metrics.h"
#include "appliance.h"
#include "metrics.h"

static void collect(void *arg, FILE *out)
{
    appl_regions_t *t = arg;
    xm_appliance_info_t info;
    appl_pool_info(t, &info);
    xm__metric_family(out, "xmem_pool_size_bytes", "gauge", "bytes the pool can serve");
    xm__metric_sample(out, "xmem_pool_size_bytes", NULL, info.pool_size);
    xm__metric_family(out, "xmem_pool_used_bytes", "gauge", "bytes of the pool held by regions (whole extents)");
    xm__metric_sample(out, "xmem_pool_used_bytes", NULL, info.pool_used);
    xm__metric_family(out, "xmem_pool_extent_bytes", "gauge", "the pool's unit of placement");
    xm__metric_sample(out, "xmem_pool_extent_bytes", NULL, info.extent_size);
    /* the pool's memfd (or hugetlbfs file) holds exactly the pages written and not freed */
    struct stat st;
    if (appl_pool_own_fd(t->pool) && fstat(t->pool->fd, &st) == 0) {
        xm__metric_family(out, "xmem_pool_resident_bytes", "gauge",
                          "bytes of the pool in memory (pages written and not freed)");
        xm__metric_sample(out, "xmem_pool_resident_bytes", NULL, (uint64_t)st.st_blocks * 512u);
    }
    xm__metric_family(out, "xmem_regions", "gauge", "live regions");
    xm__metric_sample(out, "xmem_regions", NULL, info.regions);
}

xm_status_t appl_metrics_register(appl_regions_t *t)
{
    return xm__metrics_add(collect, t);
}

void appl_metrics_unregister(appl_regions_t *t)
{
    xm__metrics_remove(collect, t);
}
