/* client: libxmem's private face: the context, region handles, RPC and I/O. */
#ifndef XM_CLIENT_H
#define XM_CLIENT_H

#include <pthread.h>
#include <sys/socket.h>

#include <xmem/xmem.h>

#include "../xfer/xfer.h"
#include "dp.h"
#include "local.h" /* the local transport */

/*
 * A context: a control channel to one appliance or manager, and the data path
 * its regions and allocations use.
 *
 * Threads: I/O (xm_read/xm_write/atomics/xm_post/xm_wait/xm_progress) may
 * come from any number of threads at once; it goes through dp (dp.h), which
 * has its own locks. Control calls serialise on ctl_lock, which guards conn,
 * call_deadline_ns, ctrl_peer and extent_size; they may run while other
 * threads do I/O. The rest is set by xm_connect and read-only afterwards,
 * except provider (a manager context learns it from its first allocation;
 * ctl_lock). Lock order: ctl_lock, then dp's locks.
 */
struct xm_ctx {
    char host[256];
    char port[16];
    char tenant[XM_NAME_MAX + 1]; /* the principal the credential proves: a tenant or an @ role */
    char provider[16];       /* as the appliance serves it */
    char want_provider[16];  /* what the caller asked for, "" for any */
    rpc_cred_t cred;         /* a tenant credential or the cluster secret */
    uint32_t timeout_ms;
    uint64_t rpc_spin_ns;    /* poll this long for a control reply before sleeping */
    bool manager;            /* the control peer is xmem-manager: no data endpoint of its own */
    /* a manager group (docs/ha.md): HOST:PORT,HOST:PORT... (NULL: one manager); cur_manager,
     * leader_hint and host/port under ctl_lock */
    char *managers;
    uint32_t nmanagers, cur_manager;
    char leader_hint[XM_NAME_MAX + 1]; /* where a standby said the leader is */
    pthread_mutex_t ctl_lock;
    /* ctl_lock */
    uint64_t call_deadline_ns; /* the control call in progress must end by then */
    rpc_conn_t conn;         /* control session; conn.fd -1 when closed */
    struct sockaddr_storage ctrl_peer;
    uint64_t extent_size;
    /* the data path, shared with this context's mappings (which keep it after xm_disconnect) */
    struct xm__dp *dp;
    /* mappings (map.c): the engine this context's mappings share, or NULL (map.c's g_lock) */
    struct xm__engine *map_engine;
    struct xm__local *local_state; /* the local transport's sessions (local.c) */
};

/* One region of an allocation. */
typedef struct xm__part {
    uint32_t peer;           /* index into the data path's peers (dp.h) */
    uint64_t key;
    uint64_t size;
    uint8_t *local;          /* the part mapped into this process by the local transport (an
                              * appliance on this host handed us its fd), or NULL: over the fabric */
    struct xm__lmap *lmap;   /* local.c's mapping behind local (a reference) */
    uint8_t state;           /* resilient allocations: XMEM__PART_STATE__PART_OK / _REBUILDING / _DOWN */
} xm__part_t;

/*
 * A region handle, or an allocation handle (xm_alloc_h) when parts is set:
 * offsets then route through layout (src/common/layout.h) to parts[].
 */
struct xm_region {
    xm_ctx_h ctx;
    uint64_t id;
    uint64_t size;
    uint64_t key;
    xm_access_t access;
    xm__part_t *parts;       /* NULL: a plain region on the context's appliance */
    uint32_t nparts;
    xm__layout_t layout;     /* how offsets map to parts; unset for a plain region */
    uint8_t *local;          /* plain region mapped into this process by the local transport, or NULL */
    struct xm__lmap *lmap;   /* local.c's mapping behind local (a reference) */
    struct xm__resil *resil; /* replicate / ec allocations: resil.c's state (a reference), else NULL */
    uint64_t generation;     /* allocations: the descriptor's generation */
};

/* resil.c: resilient I/O (replicate:R, ec:K+M; docs/resilience.md). */
typedef struct xm__resil xm__resil_t;
/* Set a->resil for an allocation with redundancy (its layout and parts set). */
xm_status_t xm__resil_attach(xm_region_h a);
void xm__resil_get(xm__resil_t *rs);
void xm__resil_put(xm__resil_t *rs);
/* Does r route through resil.c? */
bool xm__resil_is(xm_region_h r);
/* Carry out op (checked by io.c) on a resilient allocation now: op->status set on return. */
void xm__resil_op(xm_op_t *op);
/* Scrub a resilient allocation whole (xm_alloc_scrub); adds to *rep. */
xm_status_t xm__resil_scrub(xm_region_h a, xm_scrub_report_t *rep,
                            void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg);

/* Record what failed for xm_last_error (the calling thread's); returns status. */
xm_status_t xm__ctx_error(xm_ctx_h ctx, xm_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* One request/reply on the control channel; reconnects first when the channel is down. */
xm_status_t xm__rpc(xm_ctx_h ctx, xm_msg_t *req, xm_msg_t **rep_p);
/* Copy a region or allocation handle for the mapping engine: bound to no context, routed
 * through the same data path (the caller holds a reference to it). Freed with xm__region_free. */
xm_status_t xm__region_copy(xm_region_h r, xm_region_h *copy_p);
void xm__region_free(xm_region_h r);
/* map.c: the context is going away; its mappings keep their engine. */
void xm__map_ctx_gone(xm_ctx_h ctx);

#endif
