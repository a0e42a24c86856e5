/* libxmem I/O: bounds-checked one-sided reads, writes and atomics, sync and async. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include <rdma/fi_domain.h>

#include "../common/common.h"
#include "client.h"

/* One libfabric operation moves at most this much, so a huge request cannot
 * monopolise the connection and every piece meets the provider's limits. */
#define IO_CHUNK (4u << 20)

static xm_status_t op_check(xm_ctx_h ctx, const xm_op_t *op)
{
    const xm_region_h r = op->region;
    if (r == NULL || r->ctx != ctx) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "operation without a region of this context");
    }
    switch (op->opcode) {
    case XM_OP_READ:
    case XM_OP_WRITE:
        if (op->buf == NULL) return xm__ctx_error(ctx, XM_ERR_INVALID, "no buffer");
        if (op->length == 0 || op->offset >= r->size || op->length > r->size - op->offset) {
            return xm__ctx_error(ctx, XM_ERR_RANGE,
                                 "%zu bytes at offset %llu do not fit region %llu of %llu bytes",
                                 op->length, (unsigned long long)op->offset,
                                 (unsigned long long)r->id, (unsigned long long)r->size);
        }
        if (op->opcode == XM_OP_WRITE && r->access != XM_ACCESS_READ_WRITE) {
            return xm__ctx_error(ctx, XM_ERR_PERM, "region %llu is open read-only",
                                 (unsigned long long)r->id);
        }
        return XM_OK;
    case XM_OP_FETCH_ADD:
    case XM_OP_COMPARE_SWAP:
        if (op->offset % 8 != 0 || r->size < 8 || op->offset > r->size - 8) {
            return xm__ctx_error(ctx, op->offset % 8 != 0 ? XM_ERR_INVALID : XM_ERR_RANGE,
                                 "atomic at offset %llu: needs 8 aligned bytes inside the region",
                                 (unsigned long long)op->offset);
        }
        if (r->access != XM_ACCESS_READ_WRITE) {
            return xm__ctx_error(ctx, XM_ERR_PERM, "region %llu is open read-only",
                                 (unsigned long long)r->id);
        }
        return XM_OK;
    }
    return xm__ctx_error(ctx, XM_ERR_INVALID, "unknown opcode %d", (int)op->opcode);
}

static void op_link(xm_ctx_h ctx, xm_op_t *op)
{
    op->next_ = NULL;
    op->prev_ = ctx->inflight_tail;
    if (ctx->inflight_tail != NULL) ctx->inflight_tail->next_ = op;
    else ctx->inflight = op;
    ctx->inflight_tail = op;
}

static void op_unlink(xm_ctx_h ctx, xm_op_t *op)
{
    if (op->prev_ != NULL) op->prev_->next_ = op->next_;
    else ctx->inflight = op->next_;
    if (op->next_ != NULL) op->next_->prev_ = op->prev_;
    else ctx->inflight_tail = op->prev_;
    op->next_ = op->prev_ = NULL;
}

/* One piece of an operation has finished. */
static void chunk_done(xm_ctx_h ctx, xm_op_t *op, xm_status_t status)
{
    ctx->chunks--;
    ctx->peer_doubt = status != XM_OK;
    if (status != XM_OK) {
        if (op->error_ == XM_OK) op->error_ = status;
        /* tcp drops the connection after a refused access: start afresh */
        ctx->fab_broken = true;
        xm__ctx_error(ctx, status, "%s of region %llu at offset %llu: %s",
                      op->opcode == XM_OP_READ ? "read" : op->opcode == XM_OP_WRITE ? "write" : "atomic",
                      (unsigned long long)op->region->id, (unsigned long long)op->offset,
                      xm_status_str(status));
    }
    if (--op->pending_ == 0) {
        op_unlink(ctx, op);
        op->status = (xm_status_t)op->error_;
    }
}

static int poll_once(xm_ctx_h ctx)
{
    net_completion_t c[32];
    int n = net_poll(&ctx->fab, c, 32);
    int done = 0;
    for (int i = 0; i < n; i++) {
        xm_op_t *op = c[i].ctx;
        if (op == NULL) {
            /* a connection-level error names no operation: what is in flight
             * on it fails or times out; start afresh afterwards */
            ctx->fab_broken = true;
            ctx->peer_doubt = true;
            continue;
        }
        chunk_done(ctx, op, c[i].status);
        done += op->status != XM_IN_PROGRESS;
    }
    return done;
}

/* Fail everything if the oldest operation (the first: every operation gets
 * the same timeout) has passed its deadline. */
static bool check_deadlines(xm_ctx_h ctx, uint64_t now)
{
    const xm_op_t *op = ctx->inflight;
    if (op == NULL || now <= op->deadline_ns_) {
        return false;
    }
    xm__ctx_error(ctx, XM_ERR_TIMEOUT, "appliance %s:%s did not complete an operation "
                  "within %u ms", ctx->host, ctx->port, ctx->timeout_ms);
    xm__fab_reset(ctx, XM_ERR_TIMEOUT);
    ctx->peer_doubt = true;
    return true;
}

/*
 * A dead appliance, noticed at once. When its connection drops, rxm fails what
 * was in flight on it (FI_ECANCELED, measured), but for the next operation it
 * connects again and again, refused each time, and only says -FI_EAGAIN: the
 * post would spin until the operation's timeout (then the fault's retries did
 * it twice more). So a post that the provider keeps refusing with nothing of
 * ours in flight (a connection being made, not a full queue) checks, by a
 * TCP connect of its own to the peer's data address, that something listens
 * there: refused or unreachable means the appliance is gone (XM_ERR_CONNECT,
 * which a fault does not retry). The check costs the appliance one
 * accepted-and-closed connection; it is made before a broken endpoint is
 * reopened after a failure or timeout (peer_doubt, peer_left), and while a
 * post waits for a connection: soon after such a failure, otherwise only when
 * the connection takes longer than a fresh one normally does (peer_gone).
 * Providers without IP addresses (shm) are not checked here (see
 * shm_peer_alive).
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
static bool probe_start(xm_ctx_h ctx, fi_addr_t peer, peer_probe_t *pr, bool *gone_p)
{
    struct sockaddr_storage ss;
    size_t len = sizeof(ss);
    memset(&ss, 0, sizeof(ss));
    if (fi_av_lookup(ctx->fab.av, peer, &ss, &len) != 0 || len > sizeof(ss)) return false;
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
static bool peer_gone(xm_ctx_h ctx, fi_addr_t peer, peer_probe_t *pr)
{
    if (pr->done || ctx->chunks != 0) return false;
    uint64_t now = xm__now_ns();
    if (pr->since == 0) pr->since = now;
    bool gone = false;
    if (pr->fd < 0) {
        if (now - pr->since < (ctx->peer_doubt ? PROBE_AFTER_DOUBT_NS : PROBE_AFTER_NS)) return false;
        if (!probe_start(ctx, peer, pr, &gone)) {
            pr->done = true;
            return gone;
        }
    }
    probe_result(pr, 0, &gone); /* still connecting: the provider is too */
    return gone;
}

/* The endpoint broke on a failure: before it is reopened (tens of ms), is op's
 * peer still there? Checked through the old endpoint's address vector, waiting
 * up to 50 ms for an answer (a host that does not answer is left to the timeout). */
static bool peer_left(xm_ctx_h ctx, const xm_op_t *op)
{
    if (!ctx->fab_open || !ctx->fab_broken || !ctx->peer_doubt) return false;
    fi_addr_t peer;
    uint64_t raddr, key, contig;
    xm__route(op->region, op->offset, &peer, &raddr, &key, &contig);
    peer_probe_t pr = {.fd = -1};
    bool gone = false;
    if (probe_start(ctx, peer, &pr, &gone)) probe_result(&pr, 50, &gone);
    if (pr.fd >= 0) close(pr.fd);
    return gone;
}

/*
 * shm: an appliance killed while it held its shared-memory queue lock makes
 * the provider spin forever in the next post to it (libfabric 1.17), so on
 * shm a post first checks that the appliance's control socket is still open.
 */
static xm_status_t shm_peer_alive(xm_ctx_h ctx)
{
    if (ctx->manager || strcmp(ctx->provider, "shm") != 0) {
        return XM_OK;
    }
    if (ctx->conn.fd < 0) {
        xm_appliance_info_t info; /* reconnects the control channel */
        return xm_appliance_stat(ctx, &info);
    }
    struct pollfd p = {.fd = ctx->conn.fd, .events = POLLRDHUP};
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
        rpc_conn_close(&ctx->conn);
        ctx->fab_broken = true;
        return xm__ctx_error(ctx, XM_ERR_DISCONNECTED, "appliance %s:%s is gone", ctx->host,
                             ctx->port);
    }
    return XM_OK;
}

XM_EXPORT int xm_progress(xm_ctx_h ctx)
{
    if (ctx == NULL || !ctx->fab_open) return 0;
    int done = poll_once(ctx);
    if (ctx->inflight != NULL) check_deadlines(ctx, xm__now_ns());
    return done;
}

/* The layout r's offsets route through: a plain region is one part on the context's appliance. */
static xm__layout_t layout_of(xm_region_h r)
{
    return r->parts != NULL ? r->layout : xm__layout_single(r->size);
}

/* The peer and key of one part of r. */
static void part_target(xm_region_h r, uint32_t part, fi_addr_t *peer_p, uint64_t *key_p)
{
    if (r->parts == NULL) {
        *peer_p = r->ctx->peer;
        *key_p = r->key;
        return;
    }
    const xm__part_t *p = &r->parts[part];
    *peer_p = r->ctx->peers[p->peer].fi;
    *key_p = p->key;
}

void xm__route(xm_region_h r, uint64_t off, fi_addr_t *peer_p, uint64_t *raddr_p, uint64_t *key_p,
               uint64_t *contig_p)
{
    xm__layout_t l = layout_of(r);
    xm__layout_loc_t loc;
    xm__layout_map(&l, off, &loc);
    part_target(r, loc.part, peer_p, key_p);
    *raddr_p = loc.part_off;
    *contig_p = loc.contig;
}

static xm_status_t post_chunk(xm_ctx_h ctx, xm_op_t *op, uint64_t off, size_t len, fi_addr_t peer,
                              uint64_t raddr, uint64_t key)
{
    uint8_t *buf = (uint8_t *)op->buf + (off - op->offset);
    switch (op->opcode) {
    case XM_OP_READ:
        return net_post_read(&ctx->fab, peer, buf, len, raddr, key, op);
    case XM_OP_WRITE:
        return net_post_write(&ctx->fab, peer, buf, len, raddr, key, op);
    case XM_OP_FETCH_ADD:
        return net_post_fetch_add(&ctx->fab, peer, &op->operand, &op->result, raddr, key, op);
    case XM_OP_COMPARE_SWAP:
        return net_post_cswap(&ctx->fab, peer, &op->operand, &op->compare, &op->result, raddr,
                              key, op);
    }
    return XM_ERR_INVALID;
}

XM_EXPORT xm_status_t xm_post(xm_ctx_h ctx, xm_op_t *op)
{
    if (ctx == NULL || op == NULL) return XM_ERR_INVALID;
    op->next_ = NULL;
    op->pending_ = 0;
    op->error_ = XM_OK;
    xm_status_t status = op_check(ctx, op);
    if (status == XM_OK) status = shm_peer_alive(ctx);
    if (status == XM_OK && peer_left(ctx, op)) {
        status = xm__ctx_error(ctx, XM_ERR_CONNECT, "appliance %s:%s is gone (its data address refuses "
                               "connections)", ctx->host, ctx->port);
    }
    if (status == XM_OK) status = xm__fab_ready(ctx);
    if (status != XM_OK) {
        op->status = status;
        return status;
    }
    /* pieces of at most IO_CHUNK, none crossing a part's chunk; an atomic is one piece
     * (8 aligned bytes never straddle a chunk: chunks are multiples of 8) */
    bool bulk = op->opcode == XM_OP_READ || op->opcode == XM_OP_WRITE;
    xm__layout_t l = layout_of(op->region);
    uint64_t total = bulk ? op->length : 8;
    uint32_t chunks = (uint32_t)xm__layout_count(&l, op->offset, total, IO_CHUNK);
    op->status = XM_IN_PROGRESS;
    op->deadline_ns_ = xm__now_ns() + (uint64_t)ctx->timeout_ms * 1000000ull;
    op->pending_ = chunks;
    op_link(ctx, op);
    xm__layout_iter_t it;
    xm__layout_seg_t seg;
    xm__layout_iter_init(&it, &l, op->offset, total, IO_CHUNK);
    for (uint32_t i = 0; i < chunks && xm__layout_iter_next(&it, &seg); i++) {
        fi_addr_t peer;
        uint64_t key;
        part_target(op->region, seg.part, &peer, &key);
        peer_probe_t probe = {.fd = -1};
        for (;;) {
            status = ctx->chunks >= ctx->fab.tx_depth
                         ? XM_ERR_AGAIN
                         : post_chunk(ctx, op, op->offset + seg.buf_off, (size_t)seg.len, peer,
                                      seg.part_off, key);
            if (status != XM_ERR_AGAIN) break;
            /* queue full: make room, but never past the deadline */
            poll_once(ctx);
            if (check_deadlines(ctx, xm__now_ns())) break;
            if (peer_gone(ctx, peer, &probe)) {
                status = XM_ERR_CONNECT; /* its data address refuses connections */
                ctx->peer_doubt = true;
                break;
            }
        }
        if (probe.fd >= 0) close(probe.fd);
        if (status == XM_ERR_AGAIN) return op->status; /* timed out */
        if (status != XM_OK) {
            xm__ctx_error(ctx, status, "cannot post to appliance %s:%s: %s", ctx->host, ctx->port,
                          xm_status_str(status));
            op->error_ = status;
            if (i > 0) {
                /* pieces already posted must not outlive the call: cancel everything */
                xm__fab_reset(ctx, status);
            } else {
                op_unlink(ctx, op);
                op->pending_ = 0;
                op->status = status;
                ctx->fab_broken = true;
            }
            return status;
        }
        ctx->chunks++;
    }
    return XM_OK;
}

/* Busy-poll; after this long without a completion, yield the CPU between
 * polls, so an appliance or kernel work sharing this CPU gets to run. (A
 * sleep here was measured worse: when the appliance's progress thread shares
 * the client's CPU, a 20 us nap became a 289 us p50 for 8-byte reads.) */
#define WAIT_SPIN_NS 50000ull

XM_EXPORT xm_status_t xm_wait(xm_ctx_h ctx, xm_op_t **ops, size_t n)
{
    if (ctx == NULL || (ops == NULL && n > 0)) return XM_ERR_INVALID;
    uint64_t last = xm__now_ns();
    unsigned idle = 0;
    for (size_t i = 0; i < n;) {
        if (ops[i]->status != XM_IN_PROGRESS) {
            i++;
            continue;
        }
        if (poll_once(ctx) > 0) {
            idle = 0;
            last = xm__now_ns();
            continue;
        }
        if ((++idle & 63) != 0) continue;
        uint64_t now = xm__now_ns();
        if (check_deadlines(ctx, now)) continue;
        if (now - last > WAIT_SPIN_NS) {
            sched_yield();
        }
    }
    xm_status_t first = XM_OK;
    for (size_t i = 0; i < n && first == XM_OK; i++) {
        first = ops[i]->status;
    }
    return first;
}

XM_EXPORT xm_status_t xm_submit(xm_ctx_h ctx, xm_op_t *ops, size_t n)
{
    if (ctx == NULL || (ops == NULL && n > 0)) return XM_ERR_INVALID;
    xm_status_t first = XM_OK;
    for (size_t i = 0; i < n; i++) {
        xm_status_t s = xm_post(ctx, &ops[i]);
        if (s != XM_OK && first == XM_OK) first = s;
    }
    for (size_t i = 0; i < n; i++) {
        while (ops[i].status == XM_IN_PROGRESS) {
            xm_op_t *p = &ops[i];
            xm_wait(ctx, &p, 1);
        }
        if (ops[i].status != XM_OK && first == XM_OK) first = ops[i].status;
    }
    return first;
}

static xm_status_t run_one(xm_region_h region, xm_op_t *op)
{
    if (region == NULL) return XM_ERR_INVALID;
    op->region = region;
    xm_status_t status = xm_post(region->ctx, op);
    if (status != XM_OK) return status;
    return xm_wait(region->ctx, &op, 1);
}

XM_EXPORT xm_status_t xm_read(xm_region_h region, uint64_t offset, void *buf, size_t length)
{
    xm_op_t op = {.opcode = XM_OP_READ, .offset = offset, .buf = buf, .length = length};
    return run_one(region, &op);
}

XM_EXPORT xm_status_t xm_write(xm_region_h region, uint64_t offset, const void *buf, size_t length)
{
    xm_op_t op = {.opcode = XM_OP_WRITE, .offset = offset, .buf = (void *)buf, .length = length};
    return run_one(region, &op);
}

XM_EXPORT xm_status_t xm_fetch_add(xm_region_h region, uint64_t offset, uint64_t add,
                                   uint64_t *old_p)
{
    xm_op_t op = {.opcode = XM_OP_FETCH_ADD, .offset = offset, .operand = add};
    xm_status_t status = run_one(region, &op);
    if (status == XM_OK && old_p != NULL) *old_p = op.result;
    return status;
}

XM_EXPORT xm_status_t xm_compare_swap(xm_region_h region, uint64_t offset, uint64_t expected,
                                      uint64_t desired, uint64_t *old_p)
{
    xm_op_t op = {.opcode = XM_OP_COMPARE_SWAP, .offset = offset, .operand = desired,
                  .compare = expected};
    xm_status_t status = run_one(region, &op);
    if (status == XM_OK && old_p != NULL) *old_p = op.result;
    return status;
}
