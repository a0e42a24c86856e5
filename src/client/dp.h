/* client: the internal data path. One per context, shared by every thread
 * that does I/O on it: the public calls (io.c) and the mapping engine (map/)
 * alike. Private to src/client. */
#ifndef XM_CLIENT_DP_H
#define XM_CLIENT_DP_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <xmem/xmem.h>

#include "../xfer/xfer.h"

/* Peers: a table of chunks that are allocated once and never move, so a
 * thread may hold a peer's entry while another adds peers. */
#define XM__DP_PEER_CHUNK 64u
#define XM__DP_PEER_CHUNKS 64u /* 4,096 appliances per context */

/* An appliance's data endpoint. addr/ctrl_peer change only under dp->lock
 * (a restarted appliance); fi/gen are dp->lock's too. */
typedef struct xm__dp_peer {
    uint8_t addr[XM_FABRIC_ADDR_MAX];
    size_t addr_len;
    struct sockaddr_storage ctrl_peer; /* where the control connection went (ss_family 0: none):
                                        * fixes up a wildcard data address */
    fi_addr_t fi;        /* its address in the endpoint of generation gen */
    uint32_t gen;        /* 0: not inserted into the open endpoint */
} xm__dp_peer_t;

/*
 * The data path. Locking: `lock` guards the endpoint (fab, gen, open/broken),
 * the in-flight list and chunk count, and every peer's fi/gen/addr; it is
 * held for posting and for reaping completions, never while waiting for
 * anything but the provider. `peers_lock` serialises adding peers (taken
 * before `lock`). An operation's status is written with release order by
 * whichever thread reaps its last completion and read with acquire order by
 * its waiter, which may be another thread.
 */
typedef struct xm__dp {
    int refs;                        /* atomic: the context, its mapping engine */
    pthread_mutex_t lock;
    pthread_mutex_t peers_lock;
    char provider[16];               /* set once before the endpoint first opens (lock) */
    uint32_t caps;                   /* NET_CAP_* of provider */
    uint32_t timeout_ms;             /* default operation timeout; read-only after create */
    char what[300];                  /* "appliance HOST:PORT" or "manager HOST:PORT": messages */
    /* lock */
    net_fabric_t fab;
    bool fab_open;
    bool fab_broken;                 /* reopen before the next post */
    bool peer_doubt;                 /* the last operation failed or timed out */
    uint32_t gen;                    /* endpoint generation (peers' gen match when inserted) */
    xm_op_t *inflight, *inflight_tail;
    uint32_t chunks;                 /* provider operations outstanding */
    /* peers: chunk pointers set once (release) under peers_lock, npeers atomic */
    xm__dp_peer_t *peer_chunk[XM__DP_PEER_CHUNKS];
    uint32_t npeers;
} xm__dp_t;

xm_status_t xm__dp_create(uint32_t timeout_ms, const char *what, xm__dp_t **dp_p);
void xm__dp_get(xm__dp_t *dp);
void xm__dp_put(xm__dp_t *dp);

/* The provider the endpoint uses; set before the first post. A different one
 * later (a restarted appliance serving another) reopens the endpoint. */
xm_status_t xm__dp_set_provider(xm__dp_t *dp, const char *provider);
/* Peer 0 of an appliance's context: its data address (and where the control
 * connection reached it); a changed address reopens the endpoint. */
xm_status_t xm__dp_set_peer0(xm__dp_t *dp, const uint8_t *addr, size_t len,
                             const struct sockaddr_storage *ctrl_peer);
/* The index of the peer with this data address, added when new. */
xm_status_t xm__dp_peer_add(xm__dp_t *dp, const uint8_t *addr, size_t len, uint32_t *idx_p);

/* Post op (region, offset, ... set; the region routes through this data path)
 * with the given deadline (0: now + the default timeout). Any thread. */
xm_status_t xm__dp_post(xm__dp_t *dp, xm_op_t *op, uint64_t deadline_ns);
/* Wait for ops (anyone's completions are reaped meanwhile). First failure's
 * status; the calling thread's xm_last_error says why. */
xm_status_t xm__dp_wait(xm__dp_t *dp, xm_op_t **ops, size_t n);
/* Reap what has completed without waiting; operations completed. */
int xm__dp_progress(xm__dp_t *dp);
/* Post and wait: one read or write of len bytes at off of r. */
xm_status_t xm__dp_rw(xm__dp_t *dp, xm_region_h r, xm_opcode_t opcode, uint64_t off, void *buf,
                      size_t len, uint64_t deadline_ns);
/* Open the endpoint now if it is not (a mapping's first fault need not pay for it). */
xm_status_t xm__dp_ready(xm__dp_t *dp);
/* Fail everything in flight with status and close the endpoint (xm_disconnect). */
void xm__dp_reset(xm__dp_t *dp, xm_status_t status);

/* The calling thread's error message (xm_last_error). */
char *xm__tls_error(void);
void xm__set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
