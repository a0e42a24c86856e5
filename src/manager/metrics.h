/* The manager's metrics (metrics.c): appliances and allocations by state, bytes, and the
 * allocate/free/attach/heartbeat counts, rendered at each scrape. Another component of the
 * manager with a figure to expose (the rebuild's progress) registers its own collector with
 * xm__metrics_add (src/common/metrics.h). */
#ifndef XM_MANAGER_METRICS_H
#define XM_MANAGER_METRICS_H

#include "manager.h"

xm_status_t mgr_metrics_register(mgr_t *m);
void mgr_metrics_unregister(mgr_t *m);

#endif
