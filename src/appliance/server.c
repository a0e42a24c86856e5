/* Control server: one thread per authenticated connection. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdatomic.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/common.h"
#include "appliance.h"

typedef struct conn {
    appl_server_t *server;
    rpc_conn_t rc;
    pthread_t thread;
    char peer[64];
    bool admitted;                   /* counted in the server's admission */
    atomic_int done;                 /* set by its thread, read by the reaper */
    struct conn *next;
} conn_t;

/* lock guards conns and nconns; a connection's thread only reads its own conn_t (the
 * loop reads rc.principal, written before the connection's thread admits it). */
struct appl_server {
    appl_server_opts_t opts;
    pthread_mutex_t lock;
    conn_t *conns;
    uint32_t nconns;
    rpc_admission_t admission;
};

xm_status_t appl_server_create(const appl_server_opts_t *opts, appl_server_t **server_p)
{
    appl_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return XM_ERR_NO_MEMORY;
    s->opts = *opts;
    pthread_mutex_init(&s->lock, NULL);
    rpc_admission_init(&s->admission, opts->max_conns_per_tenant);
    *server_p = s;
    return XM_OK;
}

static xm_status_t reply(conn_t *c, xm_msg_t *rep, uint64_t seq, xm_status_t status,
                         const char *why)
{
    rep->seq = seq;
    rep->status = status;
    if (status != XM_OK) {
        rep->error = (char *)(why != NULL ? why : xm_status_str(status));
        rep->body_case = XMEM__MSG__BODY__NOT_SET;
    }
    return rpc_send(&c->rc, rep, rpc_deadline_after(c->server->opts.timeout_ms));
}

static xm_status_t admit(void *arg, const rpc_conn_t *rc, const char **why_p)
{
    conn_t *c = arg;
    xm_status_t status = rpc_admission_take(&c->server->admission, rc->principal, why_p);
    c->admitted = status == XM_OK;
    return status;
}

/* The one handshake; on success the principal is what the peer proved. */
static xm_status_t authenticate(conn_t *c)
{
    const appl_server_opts_t *o = &c->server->opts;
    Xmem__Welcome w = XMEM__WELCOME__INIT;
    w.provider = o->fab->provider;
    w.fabric_addr = (ProtobufCBinaryData){o->fab->addr_len, o->fab->addr};
    w.extent_size = o->regions->pool->extent_size;
    const char *why = NULL;
    xm_status_t status = rpc_handshake_server(&c->rc, o->keyring, o->identity, &w, admit, c,
                                              o->timeout_ms, &why);
    if (status != XM_OK) {
        xm_log_warn("connection from %s%s%s: handshake failed: %s", c->peer,
                    c->rc.principal[0] ? " as " : "", c->rc.principal, why != NULL ? why : "?");
    }
    return status;
}

static void info_to_msg(const xm_region_info_t *in, Xmem__RegionInfo *out)
{
    xmem__region_info__init(out);
    out->id = in->id;
    out->size = in->size;
    out->name = (char *)in->name;
    out->owner = (char *)in->owner;
    out->extents = in->extents;
    out->grants = in->grants;
    out->resident = in->resident;
}

/* Serve one request; a failed send ends the connection. */
static xm_status_t dispatch(conn_t *c, const xm_msg_t *m)
{
    appl_regions_t *t = c->server->opts.regions;
    xm_msg_t rep = XMEM__MSG__INIT;
    const char *why = NULL;
    xm_status_t status;
    appl_desc_t d;
    Xmem__RegionDesc rd = XMEM__REGION_DESC__INIT;
    Xmem__Empty empty = XMEM__EMPTY__INIT;
    /* only the manager's connection may act for another tenant: its role is proven by the
     * cluster credential */
    const char *me = c->rc.principal;
    bool manager = strcmp(me, RPC_ROLE_MANAGER) == 0;
    char name[XM_NAME_MAX + 1];
    switch (m->body_case) {
    case XMEM__MSG__BODY_REGION_CREATE: {
        const char *owner = manager && m->region_create->owner != NULL && m->region_create->owner[0]
                                ? m->region_create->owner : me;
        if (owner[0] == '@') {
            return reply(c, &rep, m->seq, XM_ERR_PERM, "regions need a tenant as owner");
        }
        status = rpc_scoped_name(me, m->region_create->name, true, name, sizeof(name), &why);
        if (status != XM_OK) return reply(c, &rep, m->seq, status, why);
        status = appl_region_create(t, owner, m->region_create->size, name, &d, &why);
        if (status == XM_OK) xm_log_info("tenant %s created region %llu (%llu bytes)", owner,
                                         (unsigned long long)d.id, (unsigned long long)d.size);
        goto desc;
    }
    case XMEM__MSG__BODY_REGION_OPEN: {
        const Xmem__RegionRef *r = m->region_open;
        xm_access_t a = r->access == XMEM__ACCESS__ACCESS_READ ? XM_ACCESS_READ
                                                               : XM_ACCESS_READ_WRITE;
        const char *who = manager && r->tenant != NULL && r->tenant[0] ? r->tenant : me;
        status = rpc_scoped_name(who, r->name, false, name, sizeof(name), &why);
        if (status != XM_OK) return reply(c, &rep, m->seq, status, why);
        status = appl_region_open(t, who, r->id, name, a, &d, &why);
        goto desc;
    }
    case XMEM__MSG__BODY_REGION_DESTROY:
        status = rpc_scoped_name(me, m->region_destroy->name, false, name, sizeof(name), &why);
        if (status == XM_OK) status = appl_region_destroy(t, me, m->region_destroy->id, name, &why);
        rep.body_case = XMEM__MSG__BODY_OK;
        rep.ok = &empty;
        return reply(c, &rep, m->seq, status, why);
    case XMEM__MSG__BODY_REGION_GRANT: {
        const Xmem__RegionGrant *g = m->region_grant;
        status = rpc_scoped_name(me, g->region->name, false, name, sizeof(name), &why);
        if (status == XM_OK)
            status = appl_region_grant(t, me, g->region->id, name, g->tenant,
                                       (xm_access_t)g->access, &why);
        rep.body_case = XMEM__MSG__BODY_OK;
        rep.ok = &empty;
        return reply(c, &rep, m->seq, status, why);
    }
    case XMEM__MSG__BODY_REGION_STAT: {
        xm_region_info_t info;
        Xmem__RegionInfo ri;
        memset(&info, 0, sizeof(info));
        status = rpc_scoped_name(me, m->region_stat->name, false, name, sizeof(name), &why);
        if (status == XM_OK)
            status = appl_region_stat(t, me, m->region_stat->id, name, &info, &why);
        info_to_msg(&info, &ri);
        rep.body_case = XMEM__MSG__BODY_REGION_INFO;
        rep.region_info = &ri;
        return reply(c, &rep, m->seq, status, why);
    }
    case XMEM__MSG__BODY_REGION_LIST: {
        xm_region_info_t *infos;
        size_t n;
        status = appl_region_list(t, me, &infos, &n);
        if (status != XM_OK) return reply(c, &rep, m->seq, status, NULL);
        Xmem__RegionInfo *ri = calloc(n + 1, sizeof(*ri));
        Xmem__RegionInfo **rp = calloc(n + 1, sizeof(*rp));
        Xmem__RegionList list = XMEM__REGION_LIST__INIT;
        if (ri == NULL || rp == NULL) {
            status = XM_ERR_NO_MEMORY;
        } else {
            for (size_t i = 0; i < n; i++) {
                info_to_msg(&infos[i], &ri[i]);
                rp[i] = &ri[i];
            }
            list.n_regions = n;
            list.regions = rp;
            rep.body_case = XMEM__MSG__BODY_REGIONS;
            rep.regions = &list;
        }
        status = reply(c, &rep, m->seq, status, NULL);
        free(ri);
        free(rp);
        free(infos);
        return status;
    }
    case XMEM__MSG__BODY_APPLIANCE_STAT: {
        xm_appliance_info_t info;
        appl_pool_info(t, &info);
        Xmem__ApplianceInfo ai = XMEM__APPLIANCE_INFO__INIT;
        ai.pool_size = info.pool_size;
        ai.pool_used = info.pool_used;
        ai.extent_size = info.extent_size;
        ai.regions = info.regions;
        ai.backing = info.backing;
        ai.provider = info.provider;
        rep.body_case = XMEM__MSG__BODY_APPLIANCE_INFO;
        rep.appliance_info = &ai;
        return reply(c, &rep, m->seq, XM_OK, NULL);
    }
    default:
        xm_log_warn("connection from %s: unexpected request %d", c->peer, (int)m->body_case);
        reply(c, &rep, m->seq, XM_ERR_PROTOCOL, "unexpected request");
        return XM_ERR_PROTOCOL;
    }
desc:
    if (status == XM_OK) {
        rd.id = d.id;
        rd.size = d.size;
        rd.key = d.key;
        rd.access = (Xmem__Access)d.access;
        rd.name = d.name;
        rep.body_case = XMEM__MSG__BODY_REGION_DESC;
        rep.region_desc = &rd;
    }
    return reply(c, &rep, m->seq, status, why);
}

static void *conn_main(void *arg)
{
    conn_t *c = arg;
    const appl_server_opts_t *o = &c->server->opts;
    if (authenticate(c) == XM_OK) {
        xm_log_info("connection from %s: %s authenticated", c->peer, c->rc.principal);
        for (;;) {
            xm_msg_t *m = NULL;
            const char *why = NULL;
            uint64_t idle = o->idle_ms == 0 ? UINT64_MAX : rpc_deadline_after(o->idle_ms);
            xm_status_t status = rpc_recv(&c->rc, XM_FRAME_MAX_REQUEST, idle, o->timeout_ms, &m,
                                          &why);
            if (status == XM_ERR_DISCONNECTED && why == NULL) {
                break; /* orderly close */
            }
            if (status == XM_ERR_TIMEOUT && why == NULL) {
                xm_log_info("connection from %s (%s) closed: idle for %u ms", c->peer,
                            c->rc.principal, o->idle_ms);
                break;
            }
            if (status != XM_OK) {
                xm_log_warn("connection from %s (%s) dropped: %s", c->peer, c->rc.principal,
                            why != NULL ? why : xm_status_str(status));
                break;
            }
            status = dispatch(c, m);
            proto_msg_free(m);
            if (status != XM_OK) {
                break;
            }
        }
    }
    shutdown(c->rc.fd, SHUT_RDWR);
    atomic_store(&c->done, 1);
    return NULL;
}

/* Join finished connection threads; all: end every connection. */
static void conns_reap(appl_server_t *s, bool all)
{
    pthread_mutex_lock(&s->lock);
    conn_t **pp = &s->conns;
    while (*pp != NULL) {
        conn_t *c = *pp;
        if (all) shutdown(c->rc.fd, SHUT_RDWR);
        if (all || atomic_load(&c->done)) {
            *pp = c->next;
            s->nconns--;
            pthread_mutex_unlock(&s->lock);
            pthread_join(c->thread, NULL);
            if (c->admitted) rpc_admission_put(&s->admission, c->rc.principal);
            rpc_conn_close(&c->rc);
            free(c);
            pthread_mutex_lock(&s->lock);
            pp = &s->conns;
        } else {
            pp = &c->next;
        }
    }
    pthread_mutex_unlock(&s->lock);
}

/* The tenant registry changed: end the sessions of credentials no longer in it. */
static void conns_revoke(appl_server_t *s)
{
    if (!rpc_keyring_refresh(s->opts.keyring)) return;
    pthread_mutex_lock(&s->lock);
    for (conn_t *c = s->conns; c != NULL; c = c->next) {
        if (c->admitted && !atomic_load(&c->done) &&
            !rpc_keyring_valid(s->opts.keyring, c->rc.principal, c->rc.cred_id)) {
            xm_log_warn("connection from %s: tenant %s's credential was revoked; session ended",
                        c->peer, c->rc.principal);
            shutdown(c->rc.fd, SHUT_RDWR);
        }
    }
    pthread_mutex_unlock(&s->lock);
}

void appl_server_run(appl_server_t *s, int stop_fd, int hup_fd)
{
    uint64_t paused_until = 0;
    for (;;) {
        uint64_t now = xm__now_ns();
        if (paused_until != 0 && now >= paused_until) paused_until = 0;
        struct pollfd p[4] = {{.fd = paused_until != 0 ? -1 : s->opts.listen_fd, .events = POLLIN},
                              {.fd = stop_fd, .events = POLLIN},
                              {.fd = s->opts.keyring->watch_fd, .events = POLLIN},
                              {.fd = hup_fd, .events = POLLIN}};
        /* wake for reaping only while connections exist: an idle appliance sleeps */
        pthread_mutex_lock(&s->lock);
        int timeout = s->nconns > 0 ? 1000 : -1;
        pthread_mutex_unlock(&s->lock);
        if (paused_until != 0) timeout = RPC_ACCEPT_PAUSE_MS;
        int n = poll(p, 4, timeout);
        conns_reap(s, false);
        if (n < 0 && errno != EINTR) {
            xm_log_error("poll: %m");
            return;
        }
        if (n > 0 && p[1].revents != 0) {
            return;
        }
        if (n > 0 && (p[2].revents != 0 || p[3].revents != 0)) {
            if (p[3].revents != 0) appl_hup_drain(hup_fd);
            conns_revoke(s);
        }
        if (n <= 0 || (p[0].revents & POLLIN) == 0) {
            continue;
        }
        struct sockaddr_storage ss;
        int fd = rpc_accept_paced(s->opts.listen_fd, &ss, &paused_until);
        if (fd < 0) {
            continue;
        }
        pthread_mutex_lock(&s->lock);
        bool full = s->nconns >= s->opts.max_conns;
        pthread_mutex_unlock(&s->lock);
        if (full) {
            xm_log_warn("connection refused: %u connections open", s->opts.max_conns);
            close(fd);
            continue;
        }
        conn_t *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->server = s;
        rpc_conn_init(&c->rc, fd);
        rpc_peer_name(&ss, c->peer, sizeof(c->peer));
        pthread_mutex_lock(&s->lock);
        if (pthread_create(&c->thread, NULL, conn_main, c) != 0) {
            pthread_mutex_unlock(&s->lock);
            close(fd);
            free(c);
            continue;
        }
        c->next = s->conns;
        s->conns = c;
        s->nconns++;
        pthread_mutex_unlock(&s->lock);
    }
}

void appl_server_destroy(appl_server_t *s)
{
    if (s == NULL) return;
    conns_reap(s, true);
    rpc_admission_cleanup(&s->admission);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
