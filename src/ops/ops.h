/* ops: what the daemons (xmemd, xmem-manager) share to run as services: log destination
 * set up from their config, systemd readiness (sd_notify), journald, and the Prometheus
 * metrics endpoint (libmicrohttpd). Linked by the daemons only, never by libxmem. */
#ifndef XM_OPS_H
#define XM_OPS_H

#include <stdint.h>

#include "../common/config.h"

/* The daemons' config entries for these (add to a daemon's table). */
#define XM_OPS_CONFIG_ENTRIES                                                                    \
    {"log", "stderr", "where log lines go: stderr | syslog | journald", 0, 0},                    \
    {"log-file", "", "append log lines to this file instead (created 0640; SIGHUP reopens it "  \
                     "for logrotate)", 0, 0},                                                     \
    {"metrics", "", "HOST:PORT serving Prometheus metrics at GET /metrics (PORT 0: any free "  \
                    "port; empty: off)", 0, 0}

/* Apply log-level, log and log-file from cfg; 0, or 2 with a line on stderr naming prog. */
int xm__ops_log_setup(const xm_config_t *cfg, const char *prog);
/* Tell systemd (Type=notify) a state: "READY=1", "STOPPING=1"; nothing outside systemd or
 * when built without libsystemd. */
void xm__ops_notify(const char *state);

typedef struct xm_metrics_server xm_metrics_server_t;
/* Serve GET /metrics on host:port (an own thread, asleep while idle); the bound address in
 * bound ("HOST:PORT"). Families: the control server's counters, log lines, the build, and
 * every registered collector (xm__metrics_add). */
xm_status_t xm__metrics_server_start(const char *host, const char *port, xm_metrics_server_t **s_p,
                                     char *bound, size_t boundlen);
void xm__metrics_server_stop(xm_metrics_server_t *s);
/* From cfg's "metrics" entry: *s_p NULL when it is empty; 0, or 1 with the reason logged. */
int xm__ops_metrics_start(const xm_config_t *cfg, const char *prog, xm_metrics_server_t **s_p);

#endif
