/* libxmem: the internal data path (dp.h). One endpoint per context, shared
 * by every thread: a poster takes the lock, routes and posts its pieces; a
 * waiter reaps completions (its own and anyone else's) whenever it gets the
 * lock, and otherwise watches its own operations' status. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <rdma/fi_domain.h>

#include "../common/common.h"
#include "../common/layout.h"
#include "client.h"
#include "dp.h"

/* One provider operation moves at most this much, so a huge request cannot
 * monopolise the connection and every piece meets the provider's limits. */
#define IO_CHUNK (4u << 20)

/* ---- errors: per thread ---------------------------------------------------- */

static __thread char tls_error[256];

char *xm__tls_error(void)
{
    return tls_error;
}

void xm__set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_error, sizeof(tls_error), fmt, ap);
    va_end(ap);
}

/* ---- life ------------------------------------------------------------------- */

xm_status_t xm__dp_create(uint32_t timeout_ms, const char *what, xm__dp_t **dp_p)
{
    xm__dp_t *dp = calloc(1, sizeof(*dp));
    if (dp == NULL) return XM_ERR_NO_MEMORY;
    /* adaptive: a contended lock spins a little before it sleeps (a sleeping
     * thread costs a 20-25 us wake-up on the other CPU here, see LIMITS.md) */
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&dp->lock, &a);
    pthread_mutexattr_destroy(&a);
    pthread_mutex_init(&dp->peers_lock, NULL);
    dp->refs = 1;
    dp->timeout_ms = timeout_ms;
    dp->fab.wait_fd = -1;
    snprintf(dp->what, sizeof(dp->what), "%s", what);
    *dp_p = dp;
    return XM_OK;
}

void xm__dp_get(xm__dp_t *dp)
{
    __atomic_fetch_add(&dp->refs, 1, __ATOMIC_RELAXED);
}

static void reset_locked(xm__dp_t *dp, xm_status_t status, uint64_t now);

void xm__dp_put(xm__dp_t *dp)
{
    if (dp == NULL || __atomic_sub_fetch(&dp->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    pthread_mutex_lock(&dp->lock);
    reset_locked(dp, XM_ERR_DISCONNECTED, 0);
    pthread_mutex_unlock(&dp->lock);
    for (uint32_t c = 0; c < XM__DP_PEER_CHUNKS; c++) {
        xm__dp_peer_t *chunk = dp->peer_chunk[c];
        if (chunk == NULL) continue;
        free(chunk);
    }
    pthread_mutex_destroy(&dp->lock);
    pthread_mutex_destroy(&dp->peers_lock);
    free(dp);
}

/* ---- peers -------------------------------------------------------------------- */

static xm__dp_peer_t *peer_at(xm__dp_t *dp, uint32_t i)
{
    xm__dp_peer_t *chunk = __atomic_load_n(&dp->peer_chunk[i / XM__DP_PEER_CHUNK], __ATOMIC_ACQUIRE);
    return &chunk[i % XM__DP_PEER_CHUNK];
}

/* Both locks held (or the entry not yet published). */
static void peer_fill(xm__dp_t *dp, xm__dp_peer_t *p, const uint8_t *addr, size_t len,
                      const struct sockaddr_storage *ctrl_peer)
{
    memset(p->addr, 0, sizeof(p->addr));
    memcpy(p->addr, addr, len);
    p->addr_len = len;
    memset(&p->ctrl_peer, 0, sizeof(p->ctrl_peer));
    if (ctrl_peer != NULL) p->ctrl_peer = *ctrl_peer;
    p->fi = 0;
    p->gen = 0;
}

/* A new entry at the end of the table; peers_lock held. */
static xm_status_t peer_new(xm__dp_t *dp, xm__dp_peer_t **p_p, uint32_t *idx_p)
{
    uint32_t n = dp->npeers;
    if (n >= XM__DP_PEER_CHUNK * XM__DP_PEER_CHUNKS) {
        xm__set_error("more than %u appliances on one context", n);
        return XM_ERR_NO_SPACE;
    }
    if (dp->peer_chunk[n / XM__DP_PEER_CHUNK] == NULL) {
        xm__dp_peer_t *chunk = calloc(XM__DP_PEER_CHUNK, sizeof(*chunk));
        if (chunk == NULL) return XM_ERR_NO_MEMORY;
        __atomic_store_n(&dp->peer_chunk[n / XM__DP_PEER_CHUNK], chunk, __ATOMIC_RELEASE);
    }
    *p_p = peer_at(dp, n);
    *idx_p = n;
    return XM_OK;
}

xm_status_t xm__dp_set_provider(xm__dp_t *dp, const char *provider)
{
    uint32_t caps = 0;
    if (!net_provider_caps(provider, &caps)) {
        xm__set_error("unknown provider '%s'", provider);
        return XM_ERR_INVALID;
    }
    pthread_mutex_lock(&dp->lock);
    if (strcmp(dp->provider, provider) != 0) {
        snprintf(dp->provider, sizeof(dp->provider), "%s", provider);
        dp->caps = caps;
        dp->fab_broken = true; /* (a restarted appliance that serves another provider) */
    }
    pthread_mutex_unlock(&dp->lock);
    return XM_OK;
}

xm_status_t xm__dp_set_peer0(xm__dp_t *dp, const uint8_t *addr, size_t len,
                             const struct sockaddr_storage *ctrl_peer)
{
    xm_status_t status = XM_OK;
    pthread_mutex_lock(&dp->peers_lock);
    pthread_mutex_lock(&dp->lock);
    xm__dp_peer_t *p;
    uint32_t idx;
    if (dp->npeers == 0) {
        status = peer_new(dp, &p, &idx);
        if (status == XM_OK) {
            peer_fill(dp, p, addr, len, ctrl_peer);
            __atomic_store_n(&dp->npeers, 1, __ATOMIC_RELEASE);
        }
    } else {
        p = peer_at(dp, 0);
        if (p->addr_len != len || memcmp(p->addr, addr, len) != 0) {
            /* a restarted appliance: a new address, and the endpoint starts afresh */
            peer_fill(dp, p, addr, len, ctrl_peer);
            dp->fab_broken = dp->fab_open;
        }
    }
    pthread_mutex_unlock(&dp->lock);
    pthread_mutex_unlock(&dp->peers_lock);
    return status;
}

xm_status_t xm__dp_peer_add(xm__dp_t *dp, const uint8_t *addr, size_t len, uint32_t *idx_p)
{
    if (len > XM_FABRIC_ADDR_MAX) return XM_ERR_INVALID;
    pthread_mutex_lock(&dp->peers_lock);
    uint32_t n = dp->npeers;
    for (uint32_t i = 0; i < n; i++) {
        const xm__dp_peer_t *p = peer_at(dp, i);
        /* a manager context's addresses never change: readable under peers_lock alone */
        if (p->addr_len == len && memcmp(p->addr, addr, len) == 0) {
            pthread_mutex_unlock(&dp->peers_lock);
            *idx_p = i;
            return XM_OK;
        }
    }
    xm__dp_peer_t *p;
    uint32_t idx;
    xm_status_t status = peer_new(dp, &p, &idx);
    if (status == XM_OK) {
        peer_fill(dp, p, addr, len, NULL);
        __atomic_store_n(&dp->npeers, idx + 1, __ATOMIC_RELEASE);
        *idx_p = idx;
    }
    pthread_mutex_unlock(&dp->peers_lock);
    return status;
}

/* ---- the endpoint (lock held) -------------------------------------------------- */

static void op_link(xm__dp_t *dp, xm_op_t *op)
{
    op->next_ = NULL;
    op->prev_ = dp->inflight_tail;
    if (dp->inflight_tail != NULL) dp->inflight_tail->next_ = op;
    else dp->inflight = op;
    dp->inflight_tail = op;
}

static void op_unlink(xm__dp_t *dp, xm_op_t *op)
{
    if (op->prev_ != NULL) op->prev_->next_ = op->next_;
    else dp->inflight = op->next_;
    if (op->next_ != NULL) op->next_->prev_ = op->prev_;
    else dp->inflight_tail = op->prev_;
    op->next_ = op->prev_ = NULL;
}

/* The operation is complete: its owner may reuse it from the moment this store is seen. */
static void op_finish(xm_op_t *op, xm_status_t status)
{
    op->pending_ = 0;
    __atomic_store_n(&op->status, status, __ATOMIC_RELEASE);
}

static xm_status_t op_status(const xm_op_t *op)
{
    return __atomic_load_n(&op->status, __ATOMIC_ACQUIRE);
}

/* Close the endpoint (cancelling every transfer: no buffer is touched afterwards) and fail
 * what was in flight: with TIMEOUT what had passed its deadline at now (0: nothing), with
 * status the rest. */
static void reset_locked(xm__dp_t *dp, xm_status_t status, uint64_t now)
{
    if (dp->fab_open) {
        net_fabric_close(&dp->fab);
        dp->fab_open = false;
    }
    dp->fab_broken = false;
    for (xm_op_t *op = dp->inflight; op != NULL;) {
        xm_op_t *next = op->next_;
        xm_status_t s = op->error_ != XM_OK ? (xm_status_t)op->error_
                        : now != 0 && now > op->deadline_ns_ ? XM_ERR_TIMEOUT : status;
        op->next_ = op->prev_ = NULL;
        op_finish(op, s);
        op = next;
    }
    dp->inflight = dp->inflight_tail = NULL;
    dp->chunks = 0;
}

void xm__dp_reset(xm__dp_t *dp, xm_status_t status)
{
    pthread_mutex_lock(&dp->lock);
    reset_locked(dp, status, 0);
    pthread_mutex_unlock(&dp->lock);
}

/* One piece of an operation has finished. */
static void chunk_done(xm__dp_t *dp, xm_op_t *op, xm_status_t status)
{
    dp->chunks--;
    dp->peer_doubt = status != XM_OK;
    if (status != XM_OK) {
        if (op->error_ == XM_OK) op->error_ = status;
        /* tcp drops the connection after a refused access: start afresh */
        dp->fab_broken = true;
    }
    if (--op->pending_ == 0) {
        op_unlink(dp, op);
        op_finish(op, (xm_status_t)op->error_);
    }
}

static int poll_locked(xm__dp_t *dp)
{
    if (!dp->fab_open) return 0;
    net_completion_t c[32];
    int n = net_poll(&dp->fab, c, 32);
    int done = 0;
    for (int i = 0; i < n; i++) {
        xm_op_t *op = c[i].ctx;
        if (op == NULL) {
            /* a connection-level error names no operation: what is in flight
             * on it fails or times out; start afresh afterwards */
            dp->fab_broken = true;
            dp->peer_doubt = true;
            continue;
        }
        bool last = op->pending_ == 1;
        chunk_done(dp, op, c[i].status);
        done += last;
    }
    return done;
}

/* Fail everything if the oldest operation or mine has passed its deadline. */
static bool check_deadlines(xm__dp_t *dp, const xm_op_t *mine, uint64_t now)
{
    const xm_op_t *head = dp->inflight;
    bool late = (head != NULL && now > head->deadline_ns_) ||
                (mine != NULL && op_status(mine) == XM_IN_PROGRESS && now > mine->deadline_ns_);
    if (!late) return false;
    xm_log_debug("%s did not complete an operation in time: endpoint reset (head %p %lld ns late, mine %p %lld)",
                 dp->what, (void *)head, head ? (long long)(now - head->deadline_ns_) : 0LL, (void *)mine,
                 mine ? (long long)(now - mine->deadline_ns_) : 0LL);
    reset_locked(dp, XM_ERR_DISCONNECTED, now);
    dp->peer_doubt = true;
    return true;
}

/* After a failure the endpoint is reopened; first let what is still in flight on it
 * finish (tcp fails it at once when the connection dropped), up to a few ms. */
static xm_status_t ensure_open(xm__dp_t *dp)
{
    if (dp->fab_open && !dp->fab_broken) return XM_OK;
    if (dp->fab_open) {
        uint64_t until = xm__now_ns() + 10000000ull;
        while (dp->chunks > 0 && xm__now_ns() < until) poll_locked(dp);
        reset_locked(dp, XM_ERR_DISCONNECTED, xm__now_ns());
    }
    if (dp->provider[0] == '\0') {
        xm__set_error("no allocation to reach yet");
        return XM_ERR_INVALID;
    }
    xm_status_t status = net_fabric_open(dp->provider, NET_ROLE_INITIATOR, NULL, NULL, &dp->fab);
    if (status != XM_OK) {
        xm__set_error("cannot open a %s endpoint", dp->provider);
        return status;
    }
    dp->fab_open = true;
    dp->fab_broken = false;
    if (++dp->gen == 0) dp->gen = 1;
    return XM_OK;
}

/* The address of peer idx in the open endpoint, inserted on first use. */
static xm_status_t peer_resolve(xm__dp_t *dp, uint32_t idx, fi_addr_t *fi_p)
{
    xm__dp_peer_t *p = peer_at(dp, idx);
    if (p->gen != dp->gen) {
        const struct sockaddr *ctrl = p->ctrl_peer.ss_family != 0 ? (const struct sockaddr *)&p->ctrl_peer
                                                                  : NULL;
        xm_status_t status = net_peer_insert(&dp->fab, p->addr, p->addr_len, ctrl, &p->fi);
        if (status != XM_OK) {
            xm__set_error("%s: cannot resolve an appliance's data address", dp->what);
            return status;
        }
        p->gen = dp->gen;
    }
    *fi_p = p->fi;
    return XM_OK;
}

/* ---- is a peer gone? (providers with IP addresses) ------------------------------ */

/*
 * A dead appliance, noticed at once. When its connection drops, rxm fails what
 * was in flight on it (FI_ECANCELED, measured), but for the next operation it
 * connects again and again, refused each time, and only says -FI_EAGAIN: the
 * post would spin until the operation's timeout. So a post that the provider
 * keeps refusing with nothing of ours in flight (a connection being made, not a
 * full queue) checks, by a TCP connect of its own to the peer's data address,
 * that something listens there: refused or unreachable means the appliance is
 * gone (XM_ERR_CONNECT, which a fault does not retry). The check costs the
 * appliance one accepted-and-closed connection; it is made before a broken
 * endpoint is reopened after a failure or timeout (peer_left), and while a post
 * waits for a connection: soon after such a failure, otherwise only when the
 * connection takes longer than a fresh one normally does (peer_gone).
 */
#define PROBE_AFTER_DOUBT_NS 1000000ull /* 1 ms */
#define PROBE_AFTER_NS 50000000ull      /* 50 ms: a fresh rxm connection took 28-190 ms here */

typedef struct peer_probe {
    uint64_t since;  /* first refusal, 0: none yet */
    int fd;          /* connect in progress, -1: none */
    bool done;       /* checked: the peer listens (or cannot be checked) */
} peer_probe_t;

/* Start a non-blocking connect to the peer's address; false when it cannot be checked
 * or was refused at once (*gone_p). */
static bool probe_start(xm__dp_t *dp, fi_addr_t peer, peer_probe_t *pr, bool *gone_p)
{
    if ((dp->caps & NET_CAP_IP_ADDR) == 0 || !dp->fab_open) return false;
    struct sockaddr_storage ss;
    size_t len = sizeof(ss);
    memset(&ss, 0, sizeof(ss));
    if (fi_av_lookup(dp->fab.av, peer, &ss, &len) != 0 || len > sizeof(ss)) return false;
    socklen_t slen = ss.ss_family == AF_INET ? sizeof(struct sockaddr_in)
                     : ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : 0;
    if (slen == 0 || len < slen) return false;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    if (connect(fd, (struct sockaddr *)&ss, slen) == 0 || errno == EINPROGRESS) {
        pr->fd = fd;
        return true;
    }
    *gone_p = errno == ECONNREFUSED || errno == ENETUNREACH || errno == EHOSTUNREACH;
    close(fd);
    return false;
}

/* The probe's connect, given up to wait_ms to finish: is the peer gone? */
static bool probe_result(peer_probe_t *pr, int wait_ms, bool *gone_p)
{
    struct pollfd p = {.fd = pr->fd, .events = POLLOUT};
    if (poll(&p, 1, wait_ms) == 0) return false; /* still connecting */
    int err = 0;
    socklen_t elen = sizeof(err);
    if (getsockopt(pr->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0) err = 0;
    close(pr->fd);
    pr->fd = -1;
    pr->done = true;
    *gone_p = err == ECONNREFUSED || err == ENETUNREACH || err == EHOSTUNREACH;
    return true;
}

/* The provider refused a post again: is the peer known to be gone? */
static bool peer_gone(xm__dp_t *dp, fi_addr_t peer, peer_probe_t *pr)
{
    if (pr->done || dp->chunks != 0) return false;
    uint64_t now = xm__now_ns();
    if (pr->since == 0) pr->since = now;
    bool gone = false;
    if (pr->fd < 0) {
        if (now - pr->since < (dp->peer_doubt ? PROBE_AFTER_DOUBT_NS : PROBE_AFTER_NS)) return false;
        if (!probe_start(dp, peer, pr, &gone)) {
            pr->done = true;
            return gone;
        }
    }
    probe_result(pr, 0, &gone); /* still connecting: the provider is too */
    return gone;
}

/* The endpoint broke on a failure: before it is reopened (tens of ms), is peer idx still
 * there? Checked through the old endpoint's address vector, waiting up to 50 ms for an
 * answer (a host that does not answer is left to the timeout). */
static bool peer_left(xm__dp_t *dp, uint32_t idx)
{
    if (!dp->fab_open || !dp->fab_broken || !dp->peer_doubt) return false;
    xm__dp_peer_t *p = peer_at(dp, idx);
    if (p->gen != dp->gen) return false;
    peer_probe_t pr = {.fd = -1};
    bool gone = false;
    if (probe_start(dp, p->fi, &pr, &gone)) probe_result(&pr, 50, &gone);
    if (pr.fd >= 0) close(pr.fd);
    return gone;
}

/* ---- posting ---------------------------------------------------------------------- */

static const char *op_name(const xm_op_t *op)
{
    return op->opcode == XM_OP_READ ? "read" : op->opcode == XM_OP_WRITE ? "write" : "atomic";
}

static xm__layout_t layout_of(xm_region_h r)
{
    return r->parts != NULL ? r->layout : xm__layout_single(r->size);
}

static xm_status_t post_piece(xm__dp_t *dp, xm_op_t *op, const xm__layout_seg_t *seg, fi_addr_t peer,
                              uint64_t key)
{
    uint8_t *buf = (uint8_t *)op->buf + seg->buf_off;
    switch (op->opcode) {
    case XM_OP_READ:
        return net_post_read(&dp->fab, peer, buf, (size_t)seg->len, seg->part_off, key, op);
    case XM_OP_WRITE:
        return net_post_write(&dp->fab, peer, buf, (size_t)seg->len, seg->part_off, key, op);
    case XM_OP_FETCH_ADD:
        return net_post_fetch_add(&dp->fab, peer, &op->operand, &op->result, seg->part_off, key, op);
    case XM_OP_COMPARE_SWAP:
        return net_post_cswap(&dp->fab, peer, &op->operand, &op->compare, &op->result, seg->part_off,
                              key, op);
    }
    return XM_ERR_INVALID;
}

/* Post one piece, making room in the provider's queue as needed (never past a deadline);
 * lock held. XM_ERR_AGAIN: timed out (op already failed by the reset). */
static xm_status_t post_one(xm__dp_t *dp, xm_op_t *op, const xm__layout_seg_t *seg, uint32_t idx,
                            uint64_t key)
{
    fi_addr_t fi;
    xm_status_t status = peer_resolve(dp, idx, &fi);
    if (status != XM_OK) return status;
    peer_probe_t probe = {.fd = -1};
    for (;;) {
        status = dp->chunks >= dp->fab.tx_depth ? XM_ERR_AGAIN : post_piece(dp, op, seg, fi, key);
        if (status != XM_ERR_AGAIN) break;
        poll_locked(dp);
        if (check_deadlines(dp, op, xm__now_ns()) || !dp->fab_open) break;
        if (peer_gone(dp, fi, &probe)) {
            dp->peer_doubt = true;
            xm__set_error("%s is gone (its data address refuses connections)", dp->what);
            status = XM_ERR_CONNECT;
            break;
        }
    }
    if (probe.fd >= 0) close(probe.fd);
    if (status == XM_OK) dp->chunks++;
    return status;
}

xm_status_t xm__dp_post(xm__dp_t *dp, xm_op_t *op, uint64_t deadline_ns)
{
    xm_region_h r = op->region;
    op->next_ = op->prev_ = NULL;
    op->pending_ = 0;
    op->error_ = XM_OK;
    /* pieces of at most IO_CHUNK, none crossing a part's chunk; an atomic is one piece
     * (8 aligned bytes never straddle a chunk: chunks are multiples of 8) */
    bool bulk = op->opcode == XM_OP_READ || op->opcode == XM_OP_WRITE;
    xm__layout_t l = layout_of(r);
    uint64_t total = bulk ? op->length : 8;
    xm__layout_iter_t it;
    xm__layout_seg_t seg;

    /* replicate / ec (resil.c): done now, many single-part pieces in flight; also for the
     * mapping engine's copies of such a handle */
    if (r->resil != NULL) {
        xm__resil_op(op);
        return op_status(op);
    }
    /* the local transport (local.c): every part op touches mapped here, with the retirement
     * and liveness checks; no lock, no provider */
    if (xm__local_op(op)) return op_status(op);
    /* an allocation with parts here and parts on other hosts: the local pieces now, the
     * others over the fabric (the op completes when they have) */
    bool mixed = r->parts != NULL && xm__local_any(r);
    uint32_t pieces, first_remote = 0;
    if (mixed) {
        xm_status_t status = xm__local_some(op);
        if (status != XM_OK) {
            op_finish(op, status);
            return status;
        }
        pieces = 0;
        xm__layout_iter_init(&it, &l, op->offset, total, IO_CHUNK);
        while (xm__layout_iter_next(&it, &seg)) {
            if (xm__local_part(r, seg.part)) continue;
            if (pieces++ == 0) first_remote = seg.part;
        }
        if (pieces == 0) { /* (xm__local_op takes those) */
            op_finish(op, XM_OK);
            return XM_OK;
        }
    } else {
        pieces = (uint32_t)xm__layout_count(&l, op->offset, total, IO_CHUNK);
    }
    op->deadline_ns_ = deadline_ns != 0 ? deadline_ns : xm__now_ns() + (uint64_t)dp->timeout_ms * 1000000ull;
    __atomic_store_n(&op->status, XM_IN_PROGRESS, __ATOMIC_RELAXED);

    pthread_mutex_lock(&dp->lock);
    xm_status_t status = XM_OK;
    {
        uint32_t first = r->parts != NULL ? r->parts[first_remote].peer : 0;
        if (peer_left(dp, first)) {
            xm__set_error("%s is gone (its data address refuses connections)", dp->what);
            status = XM_ERR_CONNECT;
        }
        if (status == XM_OK && (!dp->fab_open || dp->fab_broken)) {
            /* opening an endpoint (fi_getinfo, ~0.3 s under ASan) is no part of the
             * operation's time: its deadline moves on by what that took */
            uint64_t t = xm__now_ns();
            status = ensure_open(dp);
            op->deadline_ns_ += xm__now_ns() - t;
        }
        if (status != XM_OK) {
            pthread_mutex_unlock(&dp->lock);
            op_finish(op, status);
            return status;
        }
        op->pending_ = pieces;
        op_link(dp, op);
    }
    uint32_t posted = 0;
    xm__layout_iter_init(&it, &l, op->offset, total, IO_CHUNK);
    for (uint32_t i = 0; i < pieces && xm__layout_iter_next(&it, &seg);) {
        if (mixed && xm__local_part(r, seg.part)) continue; /* done above */
        i++;
        uint32_t idx = r->parts != NULL ? r->parts[seg.part].peer : 0;
        uint64_t key = r->parts != NULL ? r->parts[seg.part].key : r->key;
        status = post_one(dp, op, &seg, idx, key);
        if (status == XM_ERR_AGAIN) { /* timed out: the reset failed it */
            pthread_mutex_unlock(&dp->lock);
            status = op_status(op);
            xm__set_error("%s did not complete an operation within %u ms", dp->what, dp->timeout_ms);
            return status;
        }
        if (status != XM_OK) {
            if (status != XM_ERR_CONNECT) {
                xm__set_error("cannot post to %s: %s", dp->what, xm_status_str(status));
            }
            op->error_ = status;
            if (posted > 0) {
                /* pieces already posted must not outlive the call: cancel everything */
                reset_locked(dp, status, 0);
            } else {
                op_unlink(dp, op);
                op_finish(op, status);
                dp->fab_broken = dp->fab_open;
            }
            pthread_mutex_unlock(&dp->lock);
            return status;
        }
        posted++;
    }
    pthread_mutex_unlock(&dp->lock);
    return XM_OK;
}

xm_status_t xm__dp_ready(xm__dp_t *dp)
{
    pthread_mutex_lock(&dp->lock);
    xm_status_t status = dp->provider[0] != '\0' ? ensure_open(dp) : XM_OK;
    pthread_mutex_unlock(&dp->lock);
    return status;
}

/* ---- waiting ---------------------------------------------------------------------- */

int xm__dp_progress(xm__dp_t *dp)
{
    if (pthread_mutex_trylock(&dp->lock) != 0) return 0;
    int done = poll_locked(dp);
    if (dp->inflight != NULL) check_deadlines(dp, NULL, xm__now_ns());
    pthread_mutex_unlock(&dp->lock);
    return done;
}

/* Busy-poll; after this long without a completion, yield the CPU between
 * polls, so an appliance or kernel work sharing this CPU gets to run. (A
 * sleep here was measured worse: when the appliance's progress thread shares
 * the client's CPU, a 20 us nap became a 289 us p50 for 8-byte reads.) */
#define WAIT_SPIN_NS 50000ull

static void op_why(xm__dp_t *dp, const xm_op_t *op, xm_status_t status)
{
    if (status == XM_ERR_TIMEOUT) {
        xm__set_error("%s did not complete an operation within %u ms", dp->what, dp->timeout_ms);
    } else if (status == XM_ERR_ACCESS) {
        /* the key no longer names a registration there */
        xm__set_error("%s of region %llu at offset %llu: %s refused the region's key: its grant "
                      "was revoked or the region destroyed (reopen it to find out)", op_name(op),
                      (unsigned long long)op->region->id, (unsigned long long)op->offset, dp->what);
    } else {
        xm__set_error("%s of region %llu at offset %llu: %s (%s)", op_name(op),
                      (unsigned long long)op->region->id, (unsigned long long)op->offset,
                      xm_status_str(status), dp->what);
    }
}

xm_status_t xm__dp_wait(xm__dp_t *dp, xm_op_t **ops, size_t n)
{
    uint64_t last = 0;
    unsigned idle = 0;
    for (size_t i = 0; i < n;) {
        xm_op_t *op = ops[i];
        if (op_status(op) != XM_IN_PROGRESS) {
            i++;
            continue;
        }
        int done = 0;
        if (pthread_mutex_trylock(&dp->lock) == 0) {
            done = poll_locked(dp);
            if ((idle & 63) == 63) check_deadlines(dp, op, xm__now_ns());
            pthread_mutex_unlock(&dp->lock);
        }
        if (done > 0) {
            idle = 0;
            last = 0;
            continue;
        }
        if ((++idle & 63) != 0) continue;
        uint64_t now = xm__now_ns();
        if (last == 0) last = now;
        if (now - last > WAIT_SPIN_NS) sched_yield();
    }
    for (size_t i = 0; i < n; i++) {
        xm_status_t s = op_status(ops[i]);
        if (s != XM_OK) {
            op_why(dp, ops[i], s);
            return s;
        }
    }
    return XM_OK;
}

xm_status_t xm__dp_rw(xm__dp_t *dp, xm_region_h r, xm_opcode_t opcode, uint64_t off, void *buf,
                      size_t len, uint64_t deadline_ns)
{
    xm_op_t op = {.opcode = opcode, .region = r, .offset = off, .buf = buf, .length = len};
    xm_status_t status = xm__dp_post(dp, &op, deadline_ns);
    if (status != XM_OK) return status;
    xm_op_t *p = &op;
    return xm__dp_wait(dp, &p, 1);
}
