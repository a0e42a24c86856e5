/* libxmem context: connect, authenticate, control RPC, data endpoint life. */
#include <errno.h>
#include <poll.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/common.h"
#include "abi.h"
#include "client.h"

#define KIND(ctx) ((ctx)->manager ? "manager" : "appliance")

xm_status_t xm__ctx_error(xm_ctx_h ctx, xm_status_t status, const char *fmt, ...)
{
    (void)ctx; /* the message is the calling thread's (a context serves many threads) */
    char *buf = xm__tls_error();
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, 256, fmt, ap);
    va_end(ap);
    return status;
}

/* Why the calling thread's last xm_connect failed. */
static __thread char connect_error[256];

XM_EXPORT const char *xm_last_error(xm_ctx_h ctx)
{
    return ctx != NULL ? xm__tls_error() : connect_error;
}

static void ctl_close(xm_ctx_h ctx)
{
    rpc_conn_close(&ctx->conn);
}

/* Send req and receive the reply to it; the channel is closed on any transport failure. */
static xm_status_t ctl_exchange(xm_ctx_h ctx, xm_msg_t *req, xm_msg_t **rep_p)
{
    req->seq = ++ctx->conn.seq;
    xm_status_t status = rpc_send(&ctx->conn, req, ctx->call_deadline_ns);
    if (status != XM_OK) {
        ctl_close(ctx);
        return xm__ctx_error(ctx, status == XM_ERR_TIMEOUT ? XM_ERR_TIMEOUT : XM_ERR_DISCONNECTED,
                             "%s %s:%s: cannot send request (%s)", KIND(ctx), ctx->host, ctx->port,
                             xm_status_str(status));
    }
    xm_msg_t *rep;
    const char *why;
    rpc_spin_readable(ctx->conn.fd, ctx->rpc_spin_ns);
    status = rpc_recv(&ctx->conn, XM_FRAME_MAX_REPLY, ctx->call_deadline_ns, ctx->timeout_ms,
                      &rep, &why);
    if (status != XM_OK) {
        ctl_close(ctx);
        return xm__ctx_error(ctx, status, "%s %s:%s: no valid reply (%s)", KIND(ctx),
                             ctx->host, ctx->port, why != NULL ? why : xm_status_str(status));
    }
    if (rep->seq != req->seq) {
        proto_msg_free(rep);
        ctl_close(ctx);
        return xm__ctx_error(ctx, XM_ERR_PROTOCOL, "%s replied out of turn", KIND(ctx));
    }
    char why_rep[256];
    xm_status_t s = rpc_reply_status(rep, why_rep, sizeof(why_rep));
    if (s != XM_OK) {
        xm__ctx_error(ctx, s, "%s", why_rep);
        proto_msg_free(rep);
        return s;
    }
    *rep_p = rep;
    return XM_OK;
}

static xm_status_t ctl_connect(xm_ctx_h ctx)
{
    uint64_t now = xm__now_ns();
    uint32_t left_ms = now < ctx->call_deadline_ns
                           ? (uint32_t)((ctx->call_deadline_ns - now + 999999) / 1000000) : 0;
    int fd = -1;
    xm_status_t status = left_ms == 0 ? XM_ERR_TIMEOUT
                                      : rpc_connect(ctx->host, ctx->port, left_ms, &fd);
    if (status != XM_OK) {
        rpc_conn_init(&ctx->conn, -1);
        /* say what to check, not "cannot connect: cannot connect" */
        return xm__ctx_error(ctx, status, status == XM_ERR_TIMEOUT
                                 ? "%s %s:%s did not answer in time: is it running, and is the "
                                   "address reachable from here?"
                                 : status == XM_ERR_CONNECT
                                 ? "nothing answers at %s %s:%s: is it running, and is the "
                                   "address right?"
                                 : "cannot connect to %s %s:%s", KIND(ctx), ctx->host, ctx->port);
    }
    rpc_conn_init(&ctx->conn, fd);
    socklen_t sl = sizeof(ctx->ctrl_peer);
    getpeername(fd, (struct sockaddr *)&ctx->ctrl_peer, &sl);

    xm_msg_t *rep;
    char why[256];
    status = rpc_handshake_client(&ctx->conn, &ctx->cred, ctx->tenant, left_ms, &rep, why,
                                  sizeof(why));
    if (status != XM_OK) {
        xm__ctx_error(ctx, status, "%s %s:%s: %s", KIND(ctx), ctx->host, ctx->port, why);
        goto err;
    }
    const Xmem__Welcome *w = rep->welcome;
    if (ctx->manager && w->manager && w->standby) {
        /* a manager of a group that is not its leader: the caller moves on (mgr_next) */
        snprintf(ctx->leader_hint, sizeof(ctx->leader_hint), "%s", w->leader_addr);
        status = xm__ctx_error(ctx, XM_ERR_CONNECT, "manager %s:%s is a standby, not the leader%s%s",
                               ctx->host, ctx->port, w->leader_addr[0] ? "; the leader is at "
                                                                       : " (an election is under way)",
                               w->leader_addr);
        proto_msg_free(rep);
        goto err;
    }
    if (w->manager != ctx->manager) {
        status = xm__ctx_error(ctx, XM_ERR_INVALID, "%s:%s is %s, not %s", ctx->host, ctx->port,
                               w->manager ? "a manager" : "an appliance",
                               ctx->manager ? "a manager" : "an appliance");
        proto_msg_free(rep);
        goto err;
    }
    if (ctx->manager) {
        /* data endpoints come with each allocation's descriptor */
        proto_msg_free(rep);
        return XM_OK;
    }
    if (ctx->want_provider[0] != '\0' && strcmp(ctx->want_provider, w->provider) != 0) {
        status = xm__ctx_error(ctx, XM_ERR_INVALID, "appliance serves provider %s, not %s",
                               w->provider, ctx->want_provider);
        proto_msg_free(rep);
        goto err;
    }
    /* a restarted appliance has a new data address: the data path starts afresh */
    snprintf(ctx->provider, sizeof(ctx->provider), "%s", w->provider);
    status = xm__dp_set_provider(ctx->dp, w->provider);
    if (status == XM_OK && w->fabric_addr.len > XM_FABRIC_ADDR_MAX) status = XM_ERR_PROTOCOL;
    if (status == XM_OK) {
        status = xm__dp_set_peer0(ctx->dp, w->fabric_addr.data, w->fabric_addr.len, &ctx->ctrl_peer);
    }
    if (status != XM_OK) {
        xm__ctx_error(ctx, status, "appliance %s:%s: data endpoint %s unusable", ctx->host, ctx->port,
                      w->provider);
        proto_msg_free(rep);
        goto err;
    }
    ctx->extent_size = w->extent_size;
    xm__local_welcome(ctx, w); /* local transport */
    proto_msg_free(rep);
    return XM_OK;

err:
    ctl_close(ctx);
    return status;
}

/* Requests a manager serves; everything else goes to an appliance. */
static bool manager_request(const xm_msg_t *req)
{
    switch (req->body_case) {
    case XMEM__MSG__BODY_ALLOC_CREATE:
    case XMEM__MSG__BODY_ALLOC_FREE:
    case XMEM__MSG__BODY_ALLOC_ATTACH:
    case XMEM__MSG__BODY_ALLOC_GRANT:
    case XMEM__MSG__BODY_ALLOC_REVOKE:
    case XMEM__MSG__BODY_ALLOC_LIST:
    case XMEM__MSG__BODY_APPLIANCE_LIST:
    case XMEM__MSG__BODY_APPLIANCE_DRAIN:
    case XMEM__MSG__BODY_APPLIANCE_REMOVE:
        return true;
    default:
        return false;
    }
}

/* A readable or hung-up control socket is one the peer closed (nothing arrives unasked on
 * it: its idle timeout, a restart): close it so that the next call starts a fresh session.
 * ctl_lock held. */
static void ctl_check(xm_ctx_h ctx)
{
    if (ctx->conn.fd < 0) return;
    struct pollfd p = {.fd = ctx->conn.fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) > 0 && p.revents != 0) ctl_close(ctx);
}

static xm_status_t rpc_locked(xm_ctx_h ctx, xm_msg_t *req, xm_msg_t **rep_p);
static xm_status_t rpc_once(xm_ctx_h ctx, xm_msg_t *req, xm_msg_t **rep_p);

/* Entry i of the manager group into host/port; false: not HOST:PORT. */
static bool mgr_pick(xm_ctx_h ctx, uint32_t i)
{
    return xm__hostport_list_pick(ctx->managers, i, ctx->host, sizeof(ctx->host), ctx->port, sizeof(ctx->port));
}

/* On to the leader a standby named when it is in the group, else the next manager. */
static void mgr_next(xm_ctx_h ctx)
{
    ctl_close(ctx);
    for (uint32_t i = 0; ctx->leader_hint[0] != '\0' && i < ctx->nmanagers; i++) {
        mgr_pick(ctx, i);
        char addr[300];
        snprintf(addr, sizeof(addr), "%s:%s", ctx->host, ctx->port);
        if (strcmp(addr, ctx->leader_hint) == 0 && i != ctx->cur_manager) {
            ctx->cur_manager = i;
            ctx->leader_hint[0] = '\0';
            return;
        }
    }
    ctx->leader_hint[0] = '\0';
    ctx->cur_manager = (ctx->cur_manager + 1) % ctx->nmanagers;
    mgr_pick(ctx, ctx->cur_manager);
}

/* A request served by a manager group: connection failures, a standby or a leader that
 * died under the call move on to the next manager until the leader answers, within one
 * more timeout after the first failure. Requests are safe to repeat: an allocation's
 * request id makes its retry the same allocation; a free repeated after the leader died
 * finds the allocation gone, which is what was asked. */
static xm_status_t rpc_group(xm_ctx_h ctx, xm_msg_t *req, xm_msg_t **rep_p)
{
    bool extended = false, sent = false;
    uint32_t tried = 0, auth_failed = 0;
    ctx->call_deadline_ns = xm__now_ns() + (uint64_t)ctx->timeout_ms * 1000000ull;
    for (;;) {
        xm_status_t status = rpc_once(ctx, req, rep_p);
        /* a handshake cut by a dying leader looks like a refused credential: once per
         * manager at most (a wrong credential is refused by all) */
        bool moved = ctx->conn.fd < 0 && (status == XM_ERR_CONNECT || status == XM_ERR_DISCONNECTED ||
                                          status == XM_ERR_TIMEOUT ||
                                          (status == XM_ERR_AUTH && ++auth_failed < ctx->nmanagers));
        if (status == XM_ERR_NOT_FOUND && sent && req->body_case == XMEM__MSG__BODY_ALLOC_FREE) {
            static const uint8_t none[1];
            *rep_p = xmem__msg__unpack(NULL, 0, none);
            return *rep_p != NULL ? XM_OK : XM_ERR_NO_MEMORY;
        }
        if (!moved) return status;
        /* the request may have reached a leader that died before replying */
        if (status != XM_ERR_CONNECT) sent = true;
        uint64_t now = xm__now_ns();
        if (!extended) {
            extended = true;
            ctx->call_deadline_ns = now + (uint64_t)ctx->timeout_ms * 1000000ull;
        }
        if (now >= ctx->call_deadline_ns) return status;
        mgr_next(ctx);
        if (++tried % ctx->nmanagers == 0) usleep(50000); /* all tried: an election is under way */
    }
}

xm_status_t xm__rpc(xm_ctx_h ctx, xm_msg_t *req, xm_msg_t **rep_p)
{
    pthread_mutex_lock(&ctx->ctl_lock);
    xm_status_t status = ctx->nmanagers > 1 ? rpc_group(ctx, req, rep_p) : rpc_locked(ctx, req, rep_p);
    pthread_mutex_unlock(&ctx->ctl_lock);
    return status;
}

static xm_status_t rpc_locked(xm_ctx_h ctx, xm_msg_t *req, xm_msg_t **rep_p)
{
    /* one budget for the whole call: reconnect, handshake, request, reply */
    ctx->call_deadline_ns = xm__now_ns() + (uint64_t)ctx->timeout_ms * 1000000ull;
    return rpc_once(ctx, req, rep_p);
}

/* One attempt within the call's deadline. */
static xm_status_t rpc_once(xm_ctx_h ctx, xm_msg_t *req, xm_msg_t **rep_p)
{
    if (manager_request(req) != ctx->manager) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, ctx->manager
                                 ? "regions live on one appliance and this context is connected to "
                                   "a manager: use allocations, or connect to an appliance"
                                 : "allocations are made by a manager and this context is connected "
                                   "to an appliance: connect to a manager (XMEM_MANAGER)");
    }
    ctl_check(ctx); /* a session the peer closed: start afresh rather than fail this call */
    if (ctx->conn.fd < 0) {
        xm_status_t status = ctl_connect(ctx);
        if (status != XM_OK) {
            return status;
        }
    }
    return ctl_exchange(ctx, req, rep_p);
}

static const char *pick(const char *given, const char *env, const char *def)
{
    if (given != NULL && *given != '\0') return given;
    const char *v = env != NULL ? getenv(env) : NULL;
    return v != NULL && *v != '\0' ? v : def;
}

XM_EXPORT xm_status_t xm_connect(const xm_connect_opts_t *opts, xm_ctx_h *ctx_p)
{
    xm_connect_opts_t given = XM_CONNECT_OPTS_INIT; /* defaults for what the caller's struct lacks */
    if (opts != NULL && xm__sized_in(&given, sizeof(given), opts) != XM_OK) {
        snprintf(connect_error, sizeof(connect_error),
                 "xm_connect_opts_t.size %zu is invalid, or options this library does not know "
                 "are set (initialise with XM_CONNECT_OPTS_INIT)", opts->size);
        return XM_ERR_INVALID;
    }
    opts = &given;
    if (ctx_p == NULL) return XM_ERR_INVALID;
    xm_ctx_h ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) return XM_ERR_NO_MEMORY;
    rpc_conn_init(&ctx->conn, -1);
    pthread_mutex_init(&ctx->ctl_lock, NULL);
    xm__tls_error()[0] = '\0'; /* what this call runs into, nothing older */
    const char *spin = getenv("XMEM_RPC_SPIN_US");
    xm_status_t status = XM_ERR_INVALID;
    const char *addr;
    if (spin != NULL && spin[0] != '\0') {
        char *end;
        errno = 0;
        unsigned long long us = strtoull(spin, &end, 10);
        if (spin[0] < '0' || spin[0] > '9' || *end != '\0' || errno != 0 || us > 1000000ull) {
            status = xm__ctx_error(ctx, XM_ERR_INVALID, "XMEM_RPC_SPIN_US='%s' is not a number of "
                                   "microseconds from 0 to 1000000: fix or unset it", spin);
            goto err;
        }
        ctx->rpc_spin_ns = us * 1000ull;
    }
    ctx->timeout_ms = opts->timeout_ms;
    if (ctx->timeout_ms == 0) {
        const char *t = getenv("XMEM_TIMEOUT_MS");
        if (t != NULL && t[0] != '\0') {
            /* a typo must not become "no timeout" or a silent default */
            char *end;
            errno = 0;
            unsigned long v = strtoul(t, &end, 10);
            if (t[0] < '0' || t[0] > '9' || *end != '\0' || errno != 0 || v == 0 || v > 86400000ul) {
                status = xm__ctx_error(ctx, XM_ERR_INVALID, "XMEM_TIMEOUT_MS='%s' is not a number "
                                       "of milliseconds from 1 to 86400000: fix or unset it", t);
                goto err;
            }
            ctx->timeout_ms = (uint32_t)v;
        }
        if (ctx->timeout_ms == 0) ctx->timeout_ms = 5000;
    }
    if (opts->manager != NULL && opts->manager[0] != '\0') {
        ctx->manager = true;
        addr = opts->manager;
    } else if ((opts->appliance == NULL || opts->appliance[0] == '\0') && getenv("XMEM_MANAGER") != NULL &&
               getenv("XMEM_MANAGER")[0] != '\0') {
        ctx->manager = true;
        addr = getenv("XMEM_MANAGER");
    } else {
        addr = pick(opts->appliance, "XMEM_APPLIANCE", "127.0.0.1:7400");
    }
    if (ctx->manager && strchr(addr, ',') != NULL) {
        /* a manager group: whichever leads serves (docs/ha.md) */
        ctx->managers = strdup(addr);
        if (ctx->managers == NULL) {
            status = XM_ERR_NO_MEMORY;
            goto err;
        }
        ctx->nmanagers = 1;
        for (const char *c = addr; *c != '\0'; c++) ctx->nmanagers += *c == ',';
        for (uint32_t i = ctx->nmanagers; i-- > 0;) {
            if (!mgr_pick(ctx, i)) {
                xm__ctx_error(ctx, status, "manager address '%s' is not HOST:PORT[,HOST:PORT...]", addr);
                goto err;
            }
        }
    } else if (xm__parse_hostport(addr, ctx->host, sizeof(ctx->host), ctx->port, sizeof(ctx->port)) != XM_OK) {
        xm__ctx_error(ctx, status, "%s address '%s' is not HOST:PORT", KIND(ctx), addr);
        goto err;
    }
    const char *prov = pick(opts->provider, "XMEM_PROVIDER", "");
    if (strcmp(prov, "shm") == 0) {
        /* libfabric's shm is gone (it could not isolate tenants, docs/security.md): its old
         * users meant "fast on this host", which the local transport now is, whatever the
         * provider (XMEM_TRANSPORT) */
        xm_log_warn("provider shm: replaced by the local transport for appliances on this "
                    "host; using tcp (drop the setting)");
        prov = "tcp";
    }
    if (prov[0] != '\0' && !net_provider_caps(prov, NULL)) {
        xm__ctx_error(ctx, status, "unknown provider '%s' (known: %s)", prov, net_provider_names());
        goto err;
    }
    snprintf(ctx->want_provider, sizeof(ctx->want_provider), "%s", prov);
    status = rpc_cred_load(pick(opts->secret_file, "XMEM_SECRET_FILE", NULL), &ctx->cred,
                           xm__tls_error(), 256);
    if (status != XM_OK) {
        goto err;
    }
    /* the principal is what the credential proves: its tenant, or an @ role for the cluster
     * secret (@admin unless asked for another) */
    const char *tenant = pick(opts->tenant, "XMEM_TENANT", NULL);
    if (!ctx->cred.cluster) {
        if (tenant != NULL && strcmp(tenant, ctx->cred.tenant) != 0) {
            status = xm__ctx_error(ctx, XM_ERR_AUTH, "credential %s is tenant %s's, not %s's",
                                   ctx->cred.path, ctx->cred.tenant, tenant);
            goto err;
        }
        tenant = ctx->cred.tenant;
    } else if (tenant == NULL) {
        tenant = "@admin";
    } else if (tenant[0] != '@') {
        status = xm__ctx_error(ctx, XM_ERR_AUTH, "tenant %s needs a credential of its own "
                               "(xmem tenant add %s); the cluster secret acts only as an @ role",
                               tenant, tenant);
        goto err;
    }
    if (!xm__name_valid(tenant)) {
        xm__ctx_error(ctx, status, "tenant name '%s' is not 1..%d printable characters", tenant,
                      XM_NAME_MAX);
        goto err;
    }
    snprintf(ctx->tenant, sizeof(ctx->tenant), "%s", tenant);
    char what[300];
    snprintf(what, sizeof(what), "%s %s:%s", KIND(ctx), ctx->host, ctx->port);
    status = xm__dp_create(ctx->timeout_ms, what, &ctx->dp);
    if (status != XM_OK) goto err;
    ctx->call_deadline_ns = xm__now_ns() + (uint64_t)ctx->timeout_ms * 1000000ull;
    status = ctl_connect(ctx);
    uint32_t auth_failed = 0;
    for (uint32_t tried = 1; status != XM_OK && ctx->nmanagers > 1 && ctx->conn.fd < 0 &&
                             (status == XM_ERR_CONNECT || status == XM_ERR_TIMEOUT ||
                              status == XM_ERR_DISCONNECTED ||
                              (status == XM_ERR_AUTH && ++auth_failed < ctx->nmanagers)) &&
                             xm__now_ns() < ctx->call_deadline_ns;
         tried++) {
        mgr_next(ctx);
        if (tried % ctx->nmanagers == 0) usleep(50000); /* all tried: an election is under way */
        status = ctl_connect(ctx);
    }
    if (status != XM_OK) {
        goto err;
    }
    connect_error[0] = '\0';
    *ctx_p = ctx;
    return XM_OK;

err:
    snprintf(connect_error, sizeof(connect_error), "%s",
             xm__tls_error()[0] != '\0' ? xm__tls_error() : xm_status_str(status));
    sodium_memzero(&ctx->cred, sizeof(ctx->cred));
    xm__dp_put(ctx->dp);
    pthread_mutex_destroy(&ctx->ctl_lock);
    free(ctx->managers);
    free(ctx);
    return status;
}

XM_EXPORT void xm_disconnect(xm_ctx_h ctx)
{
    if (ctx == NULL) return;
    xm__map_ctx_gone(ctx);
    xm__dp_put(ctx->dp); /* its mappings may keep it */
    xm__local_ctx_gone(ctx); /* local transport */
    ctl_close(ctx);
    pthread_mutex_destroy(&ctx->ctl_lock);
    sodium_memzero(&ctx->cred, sizeof(ctx->cred));
    free(ctx->managers);
    free(ctx);
}
