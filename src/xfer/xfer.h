/* xfer: the data transport (net_* functions): libfabric data endpoints with per-region
 * registrations and one-sided ops, and the appliance's progress engine. The control channel
 * is src/rpc.
 *
 * Providers sit behind one ops table (ofi.h: xfer_ops_t): ofi.c holds what every libfabric
 * provider shares, ofi_tcp.c what only tcp does. Nothing above xfer/
 * names a provider to decide behaviour: it asks net_provider_caps() / net_fabric_caps(). */
#ifndef XM_XFER_H
#define XM_XFER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <rdma/fabric.h>

#include <xmem/xmem.h>

#include "../proto/proto.h"
#include "../rpc/rpc.h"

/* ---- providers ------------------------------------------------------------ */

/* What a provider's endpoints are like, for code above xfer/ (instead of comparing names). */
#define NET_CAP_IP_ADDR    (1u << 0) /* data addresses are IPv4 socket addresses: a wildcard one
                                      * is reached where the control connection came from, and a
                                      * peer can be probed with a TCP connect to it */
#define NET_CAP_SAME_HOST  (1u << 2) /* reaches peers on this host only */

/* The capabilities of a provider by name; false when no provider has that name. */
bool net_provider_caps(const char *name, uint32_t *caps_p);
/* The known providers' names, ", "-separated (for messages). */
const char *net_provider_names(void);

/* ---- data endpoints (ofi.c) ---------------------------------------------- */

typedef enum net_role {
    NET_ROLE_TARGET,    /* appliance: registrations, progress, no initiated ops */
    NET_ROLE_INITIATOR, /* client: initiates one-sided ops */
} net_role_t;

/*
 * One libfabric RDM endpoint with its fabric, domain, completion queue and
 * address vector. A target's registrations may be made from any thread
 * (FI_THREAD_SAFE) while its progress thread polls the queue.
 */
typedef struct net_fabric {
    struct fi_info *info;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_ep *ep;
    struct fid_cq *cq;
    struct fid_av *av;
    struct fid_cntr *rma_cntr; /* target: counts remote accesses where the provider can */
    int wait_fd;               /* target: CQ wait fd, -1 when the provider has none */
    struct net_drain *drain;   /* target: receives that take in and drop peers' messages */
    const struct xfer_ops *ops; /* the provider's table (ofi.h) */
    void *prov;                /* the provider's own state (its file's), NULL when none */
    uint32_t caps;             /* NET_CAP_* of the provider */
    char provider[64];         /* "tcp" as configured; info has the full name */
    uint8_t addr[XM_FABRIC_ADDR_MAX];
    size_t addr_len;
    size_t max_msg;
    size_t tx_depth;
    /* target: net_progress_pause (atomics: set by pausers, the progress loop) */
    int pause_want;            /* pausers waiting or holding the loop */
    int paused;                /* the loop is parked */
    int loop_running;          /* net_progress_run is running */
} net_fabric_t;

/*
 * Open an endpoint over a provider net_provider_names() lists (an unknown one is refused
 * with XM_ERR_INVALID and a message naming the known ones). A target binds to host (where
 * the provider has addresses; port from service, NULL or "0" for any) and publishes its
 * name in addr.
 */
xm_status_t net_fabric_open(const char *provider, net_role_t role, const char *host,
                            const char *service, net_fabric_t *fab);
void net_fabric_close(net_fabric_t *fab);

static inline uint32_t net_fabric_caps(const net_fabric_t *fab)
{
    return fab->caps;
}

/* Register [addr, addr+len) with exactly the given rights under a fresh random key. */
xm_status_t net_mr_reg(net_fabric_t *fab, void *addr, size_t len, xm_access_t access,
                       struct fid_mr **mr_p, uint64_t *key_p);
void net_mr_close(struct fid_mr *mr);

/* Initiator: resolve a peer's published name; fix up a wildcard IPv4 address with the
 * control connection's peer address. */
xm_status_t net_peer_insert(net_fabric_t *fab, const uint8_t *addr, size_t len,
                            const struct sockaddr *ctrl_peer, fi_addr_t *peer_p);

/* Initiator one-sided ops; ctx is returned by net_poll. -FI_EAGAIN → XM_ERR_AGAIN. */
xm_status_t net_post_read(net_fabric_t *fab, fi_addr_t peer, void *buf, size_t len,
                          uint64_t raddr, uint64_t key, void *ctx);
xm_status_t net_post_write(net_fabric_t *fab, fi_addr_t peer, const void *buf, size_t len,
                           uint64_t raddr, uint64_t key, void *ctx);
xm_status_t net_post_fetch_add(net_fabric_t *fab, fi_addr_t peer, const uint64_t *operand,
                               uint64_t *result, uint64_t raddr, uint64_t key, void *ctx);
xm_status_t net_post_cswap(net_fabric_t *fab, fi_addr_t peer, const uint64_t *desired,
                           const uint64_t *expected, uint64_t *result, uint64_t raddr,
                           uint64_t key, void *ctx);

typedef struct net_completion {
    void *ctx;
    xm_status_t status;
    int err; /* provider errno when status is an error */
} net_completion_t;

/* Read up to max completions without blocking; returns how many (>= 0) or an error. */
int net_poll(net_fabric_t *fab, net_completion_t *out, int max);

/* Target: drive progress until *stop is set (poll while busy, sleep when idle). */
typedef struct net_progress_opts {
    uint32_t spin_us; /* keep polling this long after the last sign of activity */
} net_progress_opts_t;
void net_progress_run(net_fabric_t *fab, const net_progress_opts_t *opts, atomic_int *stop,
                      int stop_fd);
/*
 * Target: park the progress loop, returning once it is parked (at once when no loop runs),
 * until net_progress_resume. Data progress is manual on every provider we open (tcp;ofi_rxm:
 * FI_PROGRESS_MANUAL), so meanwhile no one-sided transfer moves a byte into or out of
 * registered memory (one accepted before goes on after the resume). For moving a region's
 * memory under its registrations (appliance region.c). Rare and short: the loop parks by
 * napping, the pauser waits by napping.
 */
void net_progress_pause(net_fabric_t *fab);
void net_progress_resume(net_fabric_t *fab);

#endif
