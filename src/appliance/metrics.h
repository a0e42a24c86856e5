/* The appliance's metrics (metrics.c): pool size, used and resident bytes, regions. */
#ifndef XM_APPLIANCE_METRICS_H
#define XM_APPLIANCE_METRICS_H

#include "appliance.h"

xm_status_t appl_metrics_register(appl_regions_t *t);
void appl_metrics_unregister(appl_regions_t *t);

#endif
