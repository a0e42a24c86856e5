/* client: libxmem's private face: the context, region handles, RPC and I/O. */
#ifndef XM_CLIENT_H
#define XM_CLIENT_H

#include <sys/socket.h>

#include <xmem/xmem.h>

#include "../xfer/xfer.h"

/*
 * A connection to one appliance. Not thread-safe: one thread at a time.
 * The control socket carries RPCs; fab carries one-sided data.
 */
struct xm_ctx {
    char host[256];
    char port[16];
    char tenant[XM_NAME_MAX + 1]; /* the principal the credential proves: a tenant or an @ role */
    char provider[16];       /* as the appliance serves it */
    char want_provider[16];  /* what the caller asked for, "" for any */
    rpc_cred_t cred;         /* a tenant credential or the cluster secret */
    uint32_t timeout_ms;
    uint64_t call_deadline_ns; /* the control call in progress must end by then */
    uint64_t rpc_spin_ns;    /* poll this long for a control reply before sleeping */
    rpc_conn_t conn;         /* control session; conn.fd -1 when closed */
    struct sockaddr_storage ctrl_peer;
    uint64_t extent_size;
    uint8_t peer_addr[XM_FABRIC_ADDR_MAX];
    size_t peer_addr_len;
    net_fabric_t fab;
    bool fab_open;
    bool fab_broken;         /* reopen once nothing is in flight */
    bool peer_doubt;         /* the last operation failed or timed out: check the peer soon (io.c) */
    fi_addr_t peer;
    xm_op_t *inflight;       /* operations posted and not complete, oldest first */
    xm_op_t *inflight_tail;
    uint32_t chunks;         /* libfabric operations outstanding */
    char last_error[256];
    /* manager-connected contexts (alloc.c): the appliances allocations live on */
    bool manager;            /* the control peer is xmem-manager: no data endpoint of its own */
    struct xm__peer *peers;
    uint32_t npeers;
    /* mappings (map.c): the engine this context's mappings share, or NULL */
    struct xm__engine *map_engine;
};

/* An appliance's data endpoint as an allocation descriptor names it. */
typedef struct xm__peer {
    uint8_t addr[XM_FABRIC_ADDR_MAX];
    size_t addr_len;
    fi_addr_t fi;            /* valid while inserted */
    bool inserted;           /* in the open endpoint's address vector */
} xm__peer_t;

/* One region of an allocation. */
typedef struct xm__part {
    uint32_t peer;           /* index into ctx->peers */
    uint64_t key;
    uint64_t size;
    uint8_t *local;          /* the part mapped into this process by the local transport (an
                              * appliance on this host handed us its fd), or NULL: over the fabric */
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
};

/* Where the byte at off of r lives: peer, offset in its registration, key, and how many
 * bytes from there on are contiguous in it. */
void xm__route(xm_region_h r, uint64_t off, fi_addr_t *peer_p, uint64_t *raddr_p, uint64_t *key_p,
               uint64_t *contig_p);

/* Record what failed for xm_last_error; returns status. */
xm_status_t xm__ctx_error(xm_ctx_h ctx, xm_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* One request/reply on the control channel; reconnects first when the channel is down. */
xm_status_t xm__rpc(xm_ctx_h ctx, xm_msg_t *req, xm_msg_t **rep_p);
/* Open the data endpoint if needed (or reopen a broken one). */
xm_status_t xm__fab_ready(xm_ctx_h ctx);
/* Close the data endpoint, failing everything in flight with status. */
void xm__fab_reset(xm_ctx_h ctx, xm_status_t status);
/* map.c: the context is going away; its mappings keep their engine. */
void xm__map_ctx_gone(xm_ctx_h ctx);

#endif
