/* Manager control server: the rpc event-loop server (src/rpc/server.c) serves every
 * authenticated connection, clients (allocations) and appliances (registration,
 * heartbeats), with the manager's requests and its group commit plugged in.
 *
 * Each round of the loop takes at most one request from every connection that has
 * one; those that need no waiting are served right there with their table writes
 * in one store batch (round_begin / round_end), and their replies go out once the
 * batch is durable. A request that would wait — an appliance call, a busy
 * allocation, a registration — returns XM_ERR_AGAIN and is served again on one of
 * a small pool of worker threads, blocking, with its own commit. Why: with a
 * thread per connection, the manager spent 74% of its time in the kernel switching
 * threads and waiting on futexes (docs/performance.md, "Allocation manager").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "ha.h"
#include "manager.h"

/* Threads serving requests that wait (appliance calls, busy allocations). */
#define WORKERS 4
/* How often appliances' heartbeats are looked at. */
#define SWEEP_MS 50

_Static_assert(MGR_BATCH_MAX <= RPC_SRV_ROUND_MAX, "a round fits one store batch");

/* The loop thread alone touches batch (requests served on the loop); workers serve
 * without one. A connection's data (the appliance registered on it, malloc'd) is
 * touched by whichever thread owns the connection. */
struct mgr_server {
    mgr_t *m;
    rpc_server_t *srv;
    Xmem__Welcome welcome;
    mgr_batch_t batch;
};

/* ---- requests --------------------------------------------------------------- */

/* A tenant's names are its own ("tenant/name"); rewrite *name in place. */
static xm_status_t scope_name(const char *tenant, char **name, bool creating, char *why,
                              size_t whylen)
{
    char full[XM_NAME_MAX + 1];
    const char *w = NULL;
    xm_status_t status = rpc_scoped_name(tenant, *name, creating, full, sizeof(full), &w);
    if (status != XM_OK) {
        snprintf(why, whylen, "%s", w);
        return status;
    }
    if (*name == NULL || (*name)[0] == '\0' || strcmp(full, *name) == 0) return XM_OK;
    char *copy = strdup(full);
    if (copy == NULL) return XM_ERR_NO_MEMORY;
    free(*name); /* protobuf-c's default allocator: malloc/free */
    *name = copy;
    return XM_OK;
}

/*
 * Serve one request into *rep (the server's serve callback). On the loop (b: its
 * batch, slot: the request's place in it) never wait: XM_ERR_AGAIN hands the request
 * to a worker. *close_p: the peer broke the protocol, close after the reply.
 */
static xm_status_t dispatch(mgr_server_t *s, rpc_srv_conn_t *c, xm_msg_t *msg, mgr_batch_t *b,
                            size_t slot, xm_msg_t *rep, char *why, size_t whylen, bool *close_p)
{
    mgr_t *m = s->m;
    static Xmem__Empty empty = XMEM__EMPTY__INIT;
    const char *w = NULL;
    xm_status_t status;
    const char *tenant = c->rc.principal;
    bool is_appliance = strcmp(tenant, RPC_ROLE_APPLIANCE) == 0;
    const char *appliance = c->data; /* set once an appliance registered on this connection */
    *close_p = false;
    if (is_appliance != (msg->body_case == XMEM__MSG__BODY_APPLIANCE_REGISTER)) {
        xm_log_warn("connection from %s (%s): request %d not allowed", c->peer, tenant,
                    (int)msg->body_case);
        snprintf(why, whylen, "%s", is_appliance ? "appliances only register" : "only appliances register");
        *close_p = true;
        return XM_ERR_PERM;
    }
    switch (msg->body_case) {
    case XMEM__MSG__BODY_APPLIANCE_REGISTER: {
        /* a steady heartbeat is served here; a registration (reconciliation) by a worker */
        char addr[XM_NAME_MAX + 1];
        status = mgr_registry_heartbeat(m, msg->appliance_register, &c->peer_ss, c->rc.transcript,
                                        appliance == NULL, b != NULL, addr, sizeof(addr), &w);
        if (status == XM_ERR_AGAIN) return status;
        if (status == XM_OK && appliance == NULL) {
            c->data = strdup(addr);
            if (c->data == NULL) {
                /* not remembered: its loss could not be noticed; let it register again */
                snprintf(why, whylen, "out of memory");
                *close_p = true;
                return XM_ERR_NO_MEMORY;
            }
            c->keep = true; /* a registered appliance's connection is never idle */
        }
        if (status != XM_OK) snprintf(why, whylen, "%s", w != NULL ? w : "");
        rep->body_case = XMEM__MSG__BODY_OK;
        rep->ok = &empty;
        return status;
    }
    case XMEM__MSG__BODY_ALLOC_CREATE:
        /* a new leader of a group places nothing before its appliances re-registered */
        if (mgr_ha_settling(m, b != NULL)) return XM_ERR_AGAIN;
        if ((status = scope_name(tenant, &msg->alloc_create->name, true, why, whylen)) != XM_OK)
            return status;
        status = mgr_alloc_create(m, tenant, msg->alloc_create, b, slot, rep, why, whylen);
        if (status == XM_OK) {
            xm_log_debug("tenant %s: allocation %llu (%llu bytes, %s)", tenant,
                         (unsigned long long)rep->alloc_desc->id,
                         (unsigned long long)rep->alloc_desc->size, rep->alloc_desc->policy);
        }
        return status;
    case XMEM__MSG__BODY_ALLOC_FREE:
        if ((status = scope_name(tenant, &msg->alloc_free->name, false, why, whylen)) != XM_OK)
            return status;
        status = mgr_alloc_destroy(m, tenant, msg->alloc_free, b, slot, why, whylen);
        if (status == XM_OK) {
            rep->body_case = XMEM__MSG__BODY_OK;
            rep->ok = &empty;
        }
        return status;
    case XMEM__MSG__BODY_ALLOC_ATTACH:
        if ((status = scope_name(tenant, &msg->alloc_attach->name, false, why, whylen)) != XM_OK)
            return status;
        return mgr_alloc_attach(m, tenant, msg->alloc_attach, b, rep, why, whylen);
    case XMEM__MSG__BODY_ALLOC_GRANT:
        if (b != NULL) return XM_ERR_AGAIN; /* every appliance learns the grant first */
        if ((status = scope_name(tenant, &msg->alloc_grant->alloc->name, false, why, whylen)) != XM_OK)
            return status;
        status = mgr_alloc_grant(m, tenant, msg->alloc_grant, why, whylen);
        if (status == XM_OK) {
            rep->body_case = XMEM__MSG__BODY_OK;
            rep->ok = &empty;
        }
        return status;
    case XMEM__MSG__BODY_ALLOC_REVOKE:
        if (b != NULL) return XM_ERR_AGAIN; /* every appliance drops the grant first */
        if ((status = scope_name(tenant, &msg->alloc_revoke->alloc->name, false, why, whylen)) != XM_OK)
            return status;
        status = mgr_alloc_revoke(m, tenant, msg->alloc_revoke, why, whylen);
        if (status == XM_OK) {
            rep->body_case = XMEM__MSG__BODY_OK;
            rep->ok = &empty;
        }
        return status;
    case XMEM__MSG__BODY_ALLOC_LIST:
        return mgr_alloc_list(m, tenant, rep);
    case XMEM__MSG__BODY_APPLIANCE_LIST:
        return mgr_appliance_list(m, rep);
    case XMEM__MSG__BODY_APPLIANCE_DRAIN: /* xmem appliance drain | rm (rebuild.c) */
    case XMEM__MSG__BODY_APPLIANCE_REMOVE:
        if (b != NULL) return XM_ERR_AGAIN;
        return mgr_appliance_request(m, tenant, msg, rep, why, whylen);
    default:
        xm_log_warn("connection from %s: unexpected request %d", c->peer, (int)msg->body_case);
        snprintf(why, whylen, "unexpected request");
        *close_p = true;
        return XM_ERR_PROTOCOL;
    }
}

/* ---- the server's callbacks ----------------------------------------------------- */

static xm_status_t serve(void *arg, rpc_srv_conn_t *c, xm_msg_t *req, bool loop, size_t slot,
                         xm_msg_t *rep, char *why, size_t whylen, bool *close_p)
{
    mgr_server_t *s = arg;
    return dispatch(s, c, req, loop ? &s->batch : NULL, slot, rep, why, whylen, close_p);
}

static void reply_cleanup(void *arg, xm_msg_t *rep)
{
    mgr_reply_cleanup(rep);
}

/* A round's table writes share one store batch: one commit for all of them. */
static void round_begin(void *arg)
{
    mgr_server_t *s = arg;
    s->batch.nops = 0;
    s->m->opts.store_ops->batch_begin(s->m->store);
}

static xm_status_t round_end(void *arg, size_t n, bool *failed, const char **why_p)
{
    mgr_server_t *s = arg;
    bool committed = s->m->opts.store_ops->batch_end(s->m->store, true) == XM_OK;
    if (!committed) xm_log_error("allocation table: a batch of %zu requests was not recorded", n);
    mgr_batch_finish(s->m, &s->batch, committed, failed);
    *why_p = "cannot record the change in the allocation table";
    return XM_ERR_IO;
}

static void tick(void *arg)
{
    mgr_server_t *s = arg;
    mgr_registry_sweep(s->m);
}

static void conn_closed(void *arg, rpc_srv_conn_t *c)
{
    mgr_server_t *s = arg;
    if (c->data == NULL) return;
    mgr_registry_lost(s->m, c->data);
    free(c->data);
    c->data = NULL;
}

static const rpc_srv_ops_t mgr_ops = {
    .serve = serve,
    .reply_cleanup = reply_cleanup,
    .round_begin = round_begin,
    .round_end = round_end,
    .tick = tick,
    .conn_closed = conn_closed,
};

xm_status_t mgr_server_create(mgr_t *m, int listen_fd, mgr_server_t **s_p)
{
    if (m->opts.store_ops->batch_begin == NULL || m->opts.store_ops->batch_end == NULL) {
        xm_log_error("the %s store cannot batch writes", m->opts.store_ops->name);
        return XM_ERR_INVALID;
    }
    mgr_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return XM_ERR_NO_MEMORY;
    s->m = m;
    xmem__welcome__init(&s->welcome);
    s->welcome.manager = true;
    s->welcome.provider = "";
    rpc_server_opts_t o = {.listen_fd = listen_fd, .keyring = m->opts.keyring, .identity = NULL,
                           .welcome = &s->welcome, .ops = &mgr_ops, .arg = s,
                           .max_conns = m->opts.max_conns,
                           .max_conns_per_tenant = m->opts.max_conns_per_tenant,
                           .timeout_ms = m->opts.timeout_ms, .idle_ms = m->opts.idle_ms,
                           .workers = WORKERS, .spin_us = m->opts.spin_us, .tick_ms = SWEEP_MS};
    xm_status_t status = rpc_server_create(&o, &s->srv);
    if (status != XM_OK) {
        free(s);
        return status;
    }
    *s_p = s;
    return XM_OK;
}

void mgr_server_run(mgr_server_t *s, int stop_fd, int hup_fd)
{
    rpc_server_run(s->srv, stop_fd, hup_fd);
    rpc_server_stats_t st;
    rpc_server_stats(s->srv, &st);
    xm_log_info("served %llu requests in %llu rounds, %llu of them on worker threads",
                (unsigned long long)st.served, (unsigned long long)st.rounds,
                (unsigned long long)st.worked);
}

void mgr_server_destroy(mgr_server_t *s)
{
    if (s == NULL) return;
    rpc_server_destroy(s->srv);
    free(s);
}
