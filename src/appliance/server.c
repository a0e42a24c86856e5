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
    int fd;
    pthread_t thread;
    char peer[64];
    char tenant[XM_NAME_MAX + 1];
    atomic_int done;                 /* set by its thread, read by the reaper */
    struct conn *next;
} conn_t;

/* lock guards conns and nconns; a connection's thread only reads its own conn_t. */
struct appl_server {
    appl_server_opts_t opts;
    pthread_mutex_t lock;
    conn_t *conns;
    uint32_t nconns;
};

xm_status_t appl_server_create(const appl_server_opts_t *opts, appl_server_t **server_p)
{
    appl_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return XM_ERR_NO_MEMORY;
    s->opts = *opts;
    pthread_mutex_init(&s->lock, NULL);
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
    return net_send_msg(c->fd, rep, c->server->opts.timeout_ms);
}

/* Mutual challenge-response; on success the tenant is known and trusted. */
static xm_status_t authenticate(conn_t *c)
{
    const appl_server_opts_t *o = &c->server->opts;
    xm_msg_t *m = NULL;
    const char *why;
    /* the whole handshake has one budget: a peer without the secret cannot
     * hold a connection slot longer than timeout_ms */
    uint64_t deadline = xm__now_ns() + (uint64_t)o->timeout_ms * 1000000ull;
    xm_status_t status = net_recv_msg_by(c->fd, XM_FRAME_MAX_REQUEST, deadline, o->timeout_ms,
                                         &m, &why);
    if (status != XM_OK || m->body_case != XMEM__MSG__BODY_HELLO) {
        xm_log_warn("connection from %s: no valid hello (%s)", c->peer,
                    why != NULL ? why : xm_status_str(status));
        proto_msg_free(m);
        return XM_ERR_PROTOCOL;
    }
    uint8_t client_nonce[XM_NONCE_LEN], server_nonce[XM_NONCE_LEN], mac[XM_MAC_LEN];
    memcpy(client_nonce, m->hello->client_nonce.data, XM_NONCE_LEN);
    snprintf(c->tenant, sizeof(c->tenant), "%s", m->hello->tenant);
    bool version_ok = m->hello->version == XM_PROTO_VERSION;
    uint64_t seq = m->seq;
    proto_msg_free(m);
    m = NULL;
    xm_msg_t rep = XMEM__MSG__INIT;
    if (!version_ok) {
        reply(c, &rep, seq, XM_ERR_PROTOCOL, "unsupported protocol version");
        return XM_ERR_PROTOCOL;
    }
    net_random(server_nonce, sizeof(server_nonce));
    net_auth_mac(o->secret, "xmem-server", client_nonce, server_nonce, c->tenant, mac);
    Xmem__Challenge ch = XMEM__CHALLENGE__INIT;
    ch.server_nonce = (ProtobufCBinaryData){XM_NONCE_LEN, server_nonce};
    ch.server_mac = (ProtobufCBinaryData){XM_MAC_LEN, mac};
    rep.body_case = XMEM__MSG__BODY_CHALLENGE;
    rep.challenge = &ch;
    if (reply(c, &rep, seq, XM_OK, NULL) != XM_OK) return XM_ERR_DISCONNECTED;

    status = net_recv_msg_by(c->fd, XM_FRAME_MAX_REQUEST, deadline, o->timeout_ms, &m, &why);
    if (status != XM_OK || m->body_case != XMEM__MSG__BODY_AUTH) {
        xm_log_warn("connection from %s: no valid auth (%s)", c->peer,
                    why != NULL ? why : xm_status_str(status));
        proto_msg_free(m);
        return XM_ERR_PROTOCOL;
    }
    bool ok = net_auth_verify(o->secret, "xmem-client", server_nonce, client_nonce, c->tenant,
                              m->auth->client_mac.data);
    seq = m->seq;
    proto_msg_free(m);
    xm_msg_t rep2 = XMEM__MSG__INIT;
    if (!ok) {
        xm_log_warn("connection from %s (tenant %s): wrong cluster secret", c->peer, c->tenant);
        reply(c, &rep2, seq, XM_ERR_AUTH, "wrong cluster secret");
        return XM_ERR_AUTH;
    }
    Xmem__Welcome w = XMEM__WELCOME__INIT;
    w.provider = o->fab->provider;
    w.fabric_addr = (ProtobufCBinaryData){o->fab->addr_len, o->fab->addr};
    w.extent_size = o->regions->pool->extent_size;
    rep2.body_case = XMEM__MSG__BODY_WELCOME;
    rep2.welcome = &w;
    return reply(c, &rep2, seq, XM_OK, NULL);
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
    /* only the manager's connection may act for another tenant */
    bool manager = strcmp(c->tenant, XM_MANAGER_TENANT) == 0;
    switch (m->body_case) {
    case XMEM__MSG__BODY_REGION_CREATE: {
        const char *owner = manager && m->region_create->owner != NULL && m->region_create->owner[0]
                                ? m->region_create->owner : c->tenant;
        if (owner[0] == '@') {
            return reply(c, &rep, m->seq, XM_ERR_PERM, "regions need a tenant as owner");
        }
        status = appl_region_create(t, owner, m->region_create->size, m->region_create->name,
                                    &d, &why);
        if (status == XM_OK) xm_log_info("tenant %s created region %llu (%llu bytes)", owner,
                                         (unsigned long long)d.id, (unsigned long long)d.size);
        goto desc;
    }
    case XMEM__MSG__BODY_REGION_OPEN: {
        const Xmem__RegionRef *r = m->region_open;
        xm_access_t a = r->access == XMEM__ACCESS__ACCESS_READ ? XM_ACCESS_READ
                                                               : XM_ACCESS_READ_WRITE;
        const char *who = manager && r->tenant != NULL && r->tenant[0] ? r->tenant : c->tenant;
        status = appl_region_open(t, who, r->id, r->name, a, &d, &why);
        goto desc;
    }
    case XMEM__MSG__BODY_REGION_DESTROY:
        status = appl_region_destroy(t, c->tenant, m->region_destroy->id, m->region_destroy->name,
                                     &why);
        rep.body_case = XMEM__MSG__BODY_OK;
        rep.ok = &empty;
        return reply(c, &rep, m->seq, status, why);
    case XMEM__MSG__BODY_REGION_GRANT: {
        const Xmem__RegionGrant *g = m->region_grant;
        status = appl_region_grant(t, c->tenant, g->region->id, g->region->name, g->tenant,
                                   (xm_access_t)g->access, &why);
        rep.body_case = XMEM__MSG__BODY_OK;
        rep.ok = &empty;
        return reply(c, &rep, m->seq, status, why);
    }
    case XMEM__MSG__BODY_REGION_STAT: {
        xm_region_info_t info;
        Xmem__RegionInfo ri;
        status = appl_region_stat(t, c->tenant, m->region_stat->id, m->region_stat->name, &info,
                                  &why);
        info_to_msg(&info, &ri);
        rep.body_case = XMEM__MSG__BODY_REGION_INFO;
        rep.region_info = &ri;
        return reply(c, &rep, m->seq, status, why);
    }
    case XMEM__MSG__BODY_REGION_LIST: {
        xm_region_info_t *infos;
        size_t n;
        status = appl_region_list(t, c->tenant, &infos, &n);
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
        xm_log_info("connection from %s: tenant %s authenticated", c->peer, c->tenant);
        for (;;) {
            xm_msg_t *m = NULL;
            const char *why = NULL;
            xm_status_t status = net_recv_msg(c->fd, XM_FRAME_MAX_REQUEST, -1, o->timeout_ms, &m,
                                              &why);
            if (status == XM_ERR_DISCONNECTED && why == NULL) {
                break; /* orderly close */
            }
            if (status != XM_OK) {
                xm_log_warn("connection from %s (tenant %s) dropped: %s", c->peer, c->tenant,
                            why != NULL ? why : xm_status_str(status));
                break;
            }
            status = dispatch(c, m);
            proto_msg_free(m);
            if (status != XM_OK && status != XM_ERR_PROTOCOL) {
                break;
            }
            if (status == XM_ERR_PROTOCOL) {
                break;
            }
        }
    }
    shutdown(c->fd, SHUT_RDWR);
    atomic_store(&c->done, 1);
    return NULL;
}

/* Join finished connection threads. */
static void conns_reap(appl_server_t *s, bool all)
{
    pthread_mutex_lock(&s->lock);
    conn_t **pp = &s->conns;
    while (*pp != NULL) {
        conn_t *c = *pp;
        if (all) shutdown(c->fd, SHUT_RDWR);
        if (all || atomic_load(&c->done)) {
            *pp = c->next;
            s->nconns--;
            pthread_mutex_unlock(&s->lock);
            pthread_join(c->thread, NULL);
            close(c->fd);
            free(c);
            pthread_mutex_lock(&s->lock);
            pp = &s->conns;
        } else {
            pp = &c->next;
        }
    }
    pthread_mutex_unlock(&s->lock);
}

void appl_server_run(appl_server_t *s, int stop_fd)
{
    for (;;) {
        struct pollfd p[2] = {{.fd = s->opts.listen_fd, .events = POLLIN},
                              {.fd = stop_fd, .events = POLLIN}};
        int n = poll(p, 2, 1000);
        conns_reap(s, false);
        if (n < 0 && errno != EINTR) {
            xm_log_error("poll: %m");
            return;
        }
        if (p[1].revents != 0) {
            return;
        }
        if (n <= 0 || (p[0].revents & POLLIN) == 0) {
            continue;
        }
        struct sockaddr_storage ss;
        int fd = net_accept(s->opts.listen_fd, &ss);
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
        c->fd = fd;
        net_peer_name(&ss, c->peer, sizeof(c->peer));
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
    pthread_mutex_destroy(&s->lock);
    free(s);
}
