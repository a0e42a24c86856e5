/* The manager's metric families (collected under the manager's lock at each scrape). */
#include <string.h>

#include "../common/common.h"
#include "../common/metrics.h"
#include "manager.h"
#include "metrics.h"

/* successful requests of a kind, from the control server's counters */
static uint64_t served_ok(unsigned kind)
{
    uint64_t n = xm__metrics_read(&xm__rpc_metrics.requests[kind]);
    uint64_t f = xm__metrics_read(&xm__rpc_metrics.failed[kind]);
    return n > f ? n - f : 0;
}

/* 0 ok, 1 degraded, 2 lost: the rule of alloc.c's alloc_state (what xmem ls shows), kept
 * here so a scrape only reads the table. Lock held. */
static int alloc_state(const mgr_t *m, const mgr_alloc_t *a)
{
    uint32_t n = 0, missing = 0;
    for (uint32_t i = 0; i < a->policy.width; i++) {
        missing += a->parts[i].missing;
        n += a->parts[i].missing || !m->apps[a->parts[i].appl]->up;
    }
    if (n == 0) return 0;
    if (a->policy.redundancy == 0) return missing > 0 ? 2 : 1;
    return n <= a->policy.redundancy ? 1 : 2;
}

static void collect(void *arg, FILE *out)
{
    mgr_t *m = arg;
    uint64_t apps[3] = {0}; /* up, joining, down */
    uint64_t allocs[4] = {0}; /* ok, degraded, lost, busy */
    uint64_t capacity = 0, reserved = 0, bytes = 0;
    uint64_t moving = 0, move_done = 0, move_total = 0; /* rebuilds and drains (rebuild.c) */
    pthread_mutex_lock(&m->lock);
    for (uint32_t i = 0; i < m->napps; i++) {
        const mgr_appliance_t *a = m->apps[i];
        apps[!a->up ? 2 : a->validated ? 0 : 1]++;
        if (a->up) {
            capacity += a->capacity;
            reserved += a->reserved + a->foreign;
        }
    }
    for (const mgr_alloc_t *a = m->allocs; a != NULL; a = a->tnext) {
        bytes += a->size;
        if (a->moving) {
            moving++;
            move_done += a->move_done;
            move_total += a->move_total;
        }
        if (a->busy) {
            allocs[3]++;
            continue;
        }
        allocs[alloc_state(m, a)]++;
    }
    pthread_mutex_unlock(&m->lock);

    static const char *const app_states[] = {"up", "joining", "down"};
    static const char *const alloc_states[] = {"ok", "degraded", "lost", "busy"};
    char labels[64];
    xm__metric_family(out, "xmem_manager_appliances", "gauge",
                      "registered appliances by state (joining: up, not yet reconciled)");
    for (int i = 0; i < 3; i++) {
        snprintf(labels, sizeof(labels), "state=\"%s\"", app_states[i]);
        xm__metric_sample(out, "xmem_manager_appliances", labels, apps[i]);
    }
    xm__metric_family(out, "xmem_manager_allocations", "gauge",
                      "allocations in the table by state (busy: being created or freed)");
    for (int i = 0; i < 4; i++) {
        snprintf(labels, sizeof(labels), "state=\"%s\"", alloc_states[i]);
        xm__metric_sample(out, "xmem_manager_allocations", labels, allocs[i]);
    }
    xm__metric_family(out, "xmem_manager_allocated_bytes", "gauge", "bytes of the allocations in the table");
    xm__metric_sample(out, "xmem_manager_allocated_bytes", NULL, bytes);
    xm__metric_family(out, "xmem_manager_capacity_bytes", "gauge", "pool bytes of the appliances that are up");
    xm__metric_sample(out, "xmem_manager_capacity_bytes", NULL, capacity);
    xm__metric_family(out, "xmem_manager_reserved_bytes", "gauge",
                      "bytes in use on the appliances that are up (placed by the manager, stock and "
                      "regions tenants created directly)");
    xm__metric_sample(out, "xmem_manager_reserved_bytes", NULL, reserved);
    xm__metric_family(out, "xmem_manager_rebuilds", "gauge",
                      "allocations with a part being rebuilt or moved off a draining appliance");
    xm__metric_sample(out, "xmem_manager_rebuilds", NULL, moving);
    xm__metric_family(out, "xmem_manager_rebuild_done_bytes", "gauge", "bytes those rebuilds have copied");
    xm__metric_sample(out, "xmem_manager_rebuild_done_bytes", NULL, move_done);
    xm__metric_family(out, "xmem_manager_rebuild_total_bytes", "gauge",
                      "bytes those rebuilds copy in all (progress: done / total)");
    xm__metric_sample(out, "xmem_manager_rebuild_total_bytes", NULL, move_total);
    xm__metric_family(out, "xmem_manager_allocations_total", "counter", "allocate requests that succeeded");
    xm__metric_sample(out, "xmem_manager_allocations_total", NULL, served_ok(XMEM__MSG__BODY_ALLOC_CREATE));
    xm__metric_family(out, "xmem_manager_frees_total", "counter", "free requests that succeeded");
    xm__metric_sample(out, "xmem_manager_frees_total", NULL, served_ok(XMEM__MSG__BODY_ALLOC_FREE));
    xm__metric_family(out, "xmem_manager_attaches_total", "counter", "attach requests that succeeded");
    xm__metric_sample(out, "xmem_manager_attaches_total", NULL, served_ok(XMEM__MSG__BODY_ALLOC_ATTACH));
    xm__metric_family(out, "xmem_manager_heartbeats_total", "counter",
                      "appliance registrations and heartbeats received");
    xm__metric_sample(out, "xmem_manager_heartbeats_total", NULL,
                      xm__metrics_read(&xm__rpc_metrics.requests[XMEM__MSG__BODY_APPLIANCE_REGISTER]));
}

xm_status_t mgr_metrics_register(mgr_t *m)
{
    return xm__metrics_add(collect, m);
}

void mgr_metrics_unregister(mgr_t *m)
{
    xm__metrics_remove(collect, m);
}
