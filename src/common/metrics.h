/* Process-wide metrics: atomic counters updated where events happen, and collectors that
 * render Prometheus text format on demand (src/ops/metrics_http.c serves it). Knows
 * nothing of HTTP or of the control messages' names. */
#ifndef XM_METRICS_H
#define XM_METRICS_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include <xmem/status.h>

/* Control message kinds counted one by one (Msg.body numbers); larger ones count as 0. */
#define XM_METRICS_KINDS 256

/*
 * The control servers' counters (src/rpc/server.c), one set per process: a process runs
 * one daemon. Relaxed atomics: each is a statistic on its own, nothing is published
 * through it; a request costs two uncontended atomic adds.
 */
typedef struct xm_rpc_metrics {
    atomic_uint_fast64_t requests[XM_METRICS_KINDS]; /* requests served, by kind */
    atomic_uint_fast64_t failed[XM_METRICS_KINDS];   /* of those, answered with an error */
    atomic_int_fast64_t sessions;                    /* authenticated sessions open now */
    atomic_uint_fast64_t sessions_total;             /* authenticated since start */
    atomic_uint_fast64_t handshake_failures;         /* peers that failed to authenticate */
    atomic_uint_fast64_t refused;                    /* connections refused (limits) */
} xm_rpc_metrics_t;

extern xm_rpc_metrics_t xm__rpc_metrics;

/* A request of kind (Msg.body number) was answered with status. */
static inline void xm__metrics_request(unsigned kind, xm_status_t status)
{
    unsigned k = kind < XM_METRICS_KINDS ? kind : 0;
    atomic_fetch_add_explicit(&xm__rpc_metrics.requests[k], 1, memory_order_relaxed);
    if (status != XM_OK) atomic_fetch_add_explicit(&xm__rpc_metrics.failed[k], 1, memory_order_relaxed);
}

static inline void xm__metrics_inc(atomic_uint_fast64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static inline uint64_t xm__metrics_read(atomic_uint_fast64_t *c)
{
    return (uint64_t)atomic_load_explicit(c, memory_order_relaxed);
}

/* Log lines written, by level (error, warn, info, debug), counted by xm__log. */
extern atomic_uint_fast64_t xm__log_lines[4];

/*
 * A collector writes its metric families to out (Prometheus text format 0.0.4) when
 * scraped, from the metrics server's thread: it takes whatever locks its data needs.
 * A component with something to expose (the rebuild's progress, say) registers one.
 */
typedef void (*xm_metrics_collect_fn)(void *arg, FILE *out);
/* XM_ERR_NO_SPACE past 16 collectors. */
xm_status_t xm__metrics_add(xm_metrics_collect_fn fn, void *arg);
void xm__metrics_remove(xm_metrics_collect_fn fn, void *arg);
/* Every collector's families, in registration order. */
void xm__metrics_render(FILE *out);

/* "# HELP name help\n# TYPE name type\n" (type: counter, gauge, histogram). */
void xm__metric_family(FILE *out, const char *name, const char *type, const char *help);
/* "name{labels} value\n"; labels NULL or "" for none (already escaped: k="v",...). */
void xm__metric_sample(FILE *out, const char *name, const char *labels, uint64_t value);
/* A label value with \, " and newline escaped, into buf. */
const char *xm__metric_escape(const char *value, char *buf, size_t len);

#endif
