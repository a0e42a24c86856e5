/* net: the transport. libfabric data endpoints with per-region registrations
 * and one-sided ops; a TCP control channel carrying authenticated RPCs. */
#ifndef XM_NET_H
#define XM_NET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <rdma/fabric.h>

#include <xmem/xmem.h>

#include "../proto/proto.h"

/* ---- control channel (rpc.c) ------------------------------------------ */

/* Listen on HOST:PORT (PORT may be 0); the bound port in *port_p. */
xm_status_t net_listen(const char *host, const char *port, int *fd_p, uint16_t *port_p);
/* Accept a connection: non-blocking, close-on-exec, no Nagle delay; -1 when none. */
int net_accept(int listen_fd, struct sockaddr_storage *ss);
/* "HOST:PORT" of a socket address, for log lines. */
void net_peer_name(const struct sockaddr_storage *ss, char *buf, size_t len);
/* Connect with a timeout; XM_ERR_CONNECT / XM_ERR_TIMEOUT. */
xm_status_t net_connect(const char *host, const char *port, uint32_t timeout_ms, int *fd_p);
/* Deadline forms (monotonic ns, UINT64_MAX: none): one budget for a whole call.
 * A started frame must also finish within frame_ms. */
xm_status_t net_send_msg_by(int fd, const xm_msg_t *msg, uint64_t deadline_ns);
/* Poll fd without sleeping for up to ns, until it is readable: a reply that comes within
 * ns then costs no wake-up (a sleeping thread woken from another CPU costs ~20 us here). */
void net_spin_readable(int fd, uint64_t ns);
/* Send bytes already framed (proto_encode output, one or more frames). */
xm_status_t net_send_raw_by(int fd, const void *buf, size_t len, uint64_t deadline_ns);
xm_status_t net_recv_msg_by(int fd, size_t max, uint64_t deadline_ns, uint32_t frame_ms,
                            xm_msg_t **msg_p, const char **why_p);
/* Send one framed message; the whole frame or an error within timeout_ms. */
xm_status_t net_send_msg(int fd, const xm_msg_t *msg, uint32_t timeout_ms);
/*
 * Receive one framed, validated message of at most max bytes. idle_ms bounds
 * the wait for its first byte (-1: forever), timeout_ms the rest of it.
 * XM_ERR_DISCONNECTED on orderly close before a frame starts.
 */
xm_status_t net_recv_msg(int fd, size_t max, int idle_ms, uint32_t timeout_ms, xm_msg_t **msg_p,
                         const char **why_p);

/* Shared secret and the MACs of the mutual challenge-response (libsodium HMAC-SHA-512/256). */
typedef struct net_secret {
    uint8_t key[32]; /* the file's bytes hashed down to a MAC key */
} net_secret_t;

/* Load and hash the secret file; the reason for a failure goes to why. */
xm_status_t net_secret_load(const char *path, net_secret_t *secret, char *why, size_t whylen);
void net_auth_mac(const net_secret_t *secret, const char *role, const uint8_t *nonce_a,
                  const uint8_t *nonce_b, const char *tenant, uint8_t mac[XM_MAC_LEN]);
bool net_auth_verify(const net_secret_t *secret, const char *role, const uint8_t *nonce_a,
                     const uint8_t *nonce_b, const char *tenant, const uint8_t *mac);
void net_random(void *buf, size_t len);

/* ---- daemon-to-daemon handshake and calls (handshake.c) ------------------ */

/* Client side of the mutual handshake as tenant; the peer's Welcome in *welcome_p. */
xm_status_t net_handshake_client(int fd, const net_secret_t *secret, const char *tenant,
                                 uint32_t timeout_ms, xm_msg_t **welcome_p, const char **why_p);
/* Server side: on success the authenticated tenant is in tenant and welcome was sent. */
xm_status_t net_handshake_server(int fd, const net_secret_t *secret, const Xmem__Welcome *welcome,
                                 uint32_t timeout_ms, char *tenant, size_t tenant_len,
                                 const char **why_p);
/* A reply's status: XM_OK, or its error (an unknown code reads as XM_ERR_PROTOCOL) with
 * the peer's text, or the code's string, in why. */
xm_status_t net_reply_status(const xm_msg_t *rep, char *why, size_t whylen);
/*
 * n requests pipelined on one connection (sent together, replies read in order):
 * statuses[i] and reps[i] (NULL unless XM_OK) for each. Returns XM_OK when every
 * one succeeded; else the first failure, whose text goes to why. A transport
 * failure (XM_ERR_DISCONNECTED / TIMEOUT / PROTOCOL) leaves the outcome of the
 * requests from there on unknown.
 */
xm_status_t net_call_many(int fd, xm_msg_t *const *reqs, size_t n, uint64_t *seq_p,
                          uint32_t timeout_ms, xm_msg_t **reps, xm_status_t *statuses,
                          char *why, size_t whylen);
/* One request/reply; an error reply's text (or the transport failure) goes to why. */
xm_status_t net_call(int fd, xm_msg_t *req, uint64_t *seq_p, uint32_t timeout_ms,
                     xm_msg_t **rep_p, char *why, size_t whylen);

/* ---- data endpoints (fabric.c) ------------------------------------------ */

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
    char provider[64];         /* "tcp" or "shm" as configured; info has the full name */
    uint8_t addr[XM_FABRIC_ADDR_MAX];
    size_t addr_len;
    size_t max_msg;
    size_t tx_depth;
} net_fabric_t;

/*
 * Open an endpoint over provider "tcp" or "shm". A target binds to host (for
 * tcp; port from service, NULL for any) and publishes its name in addr.
 */
xm_status_t net_fabric_open(const char *provider, net_role_t role, const char *host,
                            const char *service, net_fabric_t *fab);
void net_fabric_close(net_fabric_t *fab);

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

#endif
