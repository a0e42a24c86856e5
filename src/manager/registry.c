/* Registry: appliances that registered, their heartbeats, and the manager's
 * own control connections to them (as tenant XM_MANAGER_TENANT). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/common.h"
#include "manager.h"

mgr_appliance_t *mgr_registry_get(mgr_t *m, const char *addr, bool create)
{
    for (uint32_t i = 0; i < m->napps; i++) {
        if (strcmp(m->apps[i]->addr, addr) == 0) return m->apps[i];
    }
    if (!create) return NULL;
    mgr_appliance_t **apps = realloc(m->apps, (m->napps + 1) * sizeof(*apps));
    if (apps == NULL) return NULL;
    m->apps = apps;
    mgr_appliance_t *a = calloc(1, sizeof(*a));
    if (a == NULL) return NULL;
    a->idx = m->napps;
    snprintf(a->addr, sizeof(a->addr), "%s", addr);
    snprintf(a->domain, sizeof(a->domain), "default");
    rpc_conn_init(&a->conn, -1);
    pthread_mutex_init(&a->conn_lock, NULL);
    m->apps[m->napps++] = a;
    return a;
}

/* The IPv4 address a peer connected from, or "" */
static void peer_ip(const struct sockaddr_storage *peer, char *out, size_t len)
{
    out[0] = '\0';
    if (peer->ss_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)peer)->sin_addr, out, (socklen_t)len);
    } else if (peer->ss_family == AF_INET6) {
        char tmp[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)peer)->sin6_addr, tmp, sizeof(tmp));
        snprintf(out, len, "[%s]", tmp);
    }
}

/* The registry entry pinned to identity pk, or NULL. Manager lock held. */
static mgr_appliance_t *by_identity(mgr_t *m, const uint8_t *pk)
{
    for (uint32_t i = 0; i < m->napps; i++) {
        if (m->apps[i]->pinned && memcmp(m->apps[i]->identity, pk, XM_IDENTITY_PK_LEN) == 0)
            return m->apps[i];
    }
    return NULL;
}

xm_status_t mgr_registry_heartbeat(mgr_t *m, const Xmem__ApplianceRegister *reg,
                                   const struct sockaddr_storage *peer, const uint8_t transcript[32],
                                   bool first, bool nowait,
                                   char *addr_out, size_t addr_len, const char **why_p)
{
    /* the identity signed this session: a replayed registration or another session's
     * signature does not verify */
    uint8_t msg[14 + 32];
    memcpy(msg, "xmem-register", 14);
    memcpy(msg + 14, transcript, 32);
    if (crypto_sign_verify_detached(reg->identity_sig.data, msg, sizeof(msg),
                                    reg->identity_pk.data) != 0) {
        *why_p = "the registration's identity signature does not verify";
        return XM_ERR_AUTH;
    }
    char host[256], port[16], ip[INET6_ADDRSTRLEN + 2], addr[XM_NAME_MAX + 1];
    if (xm__parse_hostport(reg->control_addr, host, sizeof(host), port, sizeof(port)) != XM_OK) {
        *why_p = "control address is not HOST:PORT";
        return XM_ERR_INVALID;
    }
    /* an appliance listening on a wildcard is reached where it connected from */
    peer_ip(peer, ip, sizeof(ip));
    if ((strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0) && ip[0] != '\0') {
        snprintf(addr, sizeof(addr), "%s:%s", ip, port);
    } else {
        snprintf(addr, sizeof(addr), "%s", reg->control_addr);
    }
    uint8_t fa[XM_FABRIC_ADDR_MAX];
    size_t falen = reg->fabric_addr.len;
    memcpy(fa, reg->fabric_addr.data, falen);
    if (strcmp(reg->provider, "tcp") == 0) {
        if (falen != sizeof(struct sockaddr_in) || ((struct sockaddr_in *)fa)->sin_family != AF_INET) {
            *why_p = "tcp data address is not an IPv4 socket address";
            return XM_ERR_INVALID;
        }
        struct sockaddr_in *sin = (struct sockaddr_in *)fa;
        if (sin->sin_addr.s_addr == htonl(INADDR_ANY) && peer->ss_family == AF_INET) {
            sin->sin_addr = ((const struct sockaddr_in *)peer)->sin_addr;
        }
    }
    pthread_mutex_lock(&m->lock);
    if (nowait) {
        /* a registration, or an appliance to be reconciled, calls it back: not here */
        mgr_appliance_t *known = by_identity(m, reg->identity_pk.data);
        if (first || known == NULL || strcmp(known->addr, addr) != 0 || !known->validated ||
            known->boot_id != reg->boot_id) {
            pthread_mutex_unlock(&m->lock);
            return XM_ERR_AGAIN;
        }
    }
    /* an appliance is its identity: a known identity at a new address (or another spelling
     * of the same one) is the same appliance moved; another identity at a known address is
     * an impostor, or a replaced machine an operator must remove first */
    mgr_appliance_t *a = by_identity(m, reg->identity_pk.data);
    mgr_appliance_t *at_addr = mgr_registry_get(m, addr, false);
    char idn[17];
    rpc_identity_id(reg->identity_pk.data, idn);
    if (at_addr != NULL && at_addr != a && at_addr->pinned) {
        pthread_mutex_unlock(&m->lock);
        xm_log_warn("appliance registration refused: identity %s claims %s, which belongs to "
                    "another identity", idn, addr);
        *why_p = "another appliance identity is registered at this address";
        return XM_ERR_PERM;
    }
    if (a == NULL && at_addr != NULL) {
        a = at_addr; /* a table from before identities: pin this one now */
    }
    bool moved = false;
    char old_addr[XM_NAME_MAX + 1] = "";
    if (a != NULL && strcmp(a->addr, addr) != 0) {
        if (at_addr != NULL) {
            pthread_mutex_unlock(&m->lock);
            *why_p = "this address is taken in the registry";
            return XM_ERR_PERM;
        }
        /* a move is the same appliance, restarted or re-registered elsewhere: while the
         * process at the old address still heartbeats, a second process with its identity (a
         * copied identity file, or a stolen key) is refused rather than let the entry flap */
        if (a->up && a->boot_id != reg->boot_id) {
            char held[XM_NAME_MAX + 1];
            snprintf(held, sizeof(held), "%s", a->addr);
            pthread_mutex_unlock(&m->lock);
            xm_log_warn("appliance registration from %s refused: identity %s is in use by the "
                        "running appliance at %s (two processes share one identity file?)",
                        addr, idn, held);
            *why_p = "this appliance identity is in use by another running appliance";
            return XM_ERR_PERM;
        }
        xm_log_info("appliance %s moved from %s to %s", idn, a->addr, addr);
        snprintf(old_addr, sizeof(old_addr), "%s", a->addr);
        snprintf(a->addr, sizeof(a->addr), "%s", addr);
        moved = true;
    }
    if (a == NULL) a = mgr_registry_get(m, addr, true);
    if (a == NULL) {
        pthread_mutex_unlock(&m->lock);
        return XM_ERR_NO_MEMORY;
    }
    if (!a->pinned) {
        memcpy(a->identity, reg->identity_pk.data, XM_IDENTITY_PK_LEN);
        a->pinned = true;
        xm_log_info("appliance %s enrolled with identity %s", addr, idn);
    }
    bool changed = first || moved || a->boot_id != reg->boot_id || a->fabric_addr_len != falen ||
                   memcmp(a->fabric_addr, fa, falen) != 0 || a->capacity != reg->pool_size;
    if (first || a->boot_id != reg->boot_id) {
        a->validated = false; /* its regions are compared with the table before use */
    }
    snprintf(a->domain, sizeof(a->domain), "%s", reg->domain);
    snprintf(a->provider, sizeof(a->provider), "%s", reg->provider);
    snprintf(a->backing, sizeof(a->backing), "%s", reg->backing);
    memcpy(a->fabric_addr, fa, falen);
    a->fabric_addr_len = falen;
    a->capacity = reg->pool_size;
    a->extent_size = reg->extent_size;
    a->reported_used = reg->pool_used;
    /* what tenants made directly on the appliance is not the manager's to place on */
    a->foreign = reg->direct_used;
    a->boot_id = reg->boot_id;
    a->last_seen_ns = xm__now_ns();
    if (!a->up) {
        xm_log_info("appliance %s (domain %s) is up", a->addr, a->domain);
    }
    a->up = true;
    bool validate = !a->validated;
    pthread_mutex_unlock(&m->lock);
    if (changed && m->opts.store_ops != NULL) {
        if (moved && m->opts.store_ops->appliance_rename != NULL) {
            m->opts.store_ops->appliance_rename(m->store, old_addr, a->addr);
        }
        m->opts.store_ops->appliance_put(m->store, a);
    }
    if (validate) {
        mgr_reconcile(m, a);
    }
    snprintf(addr_out, addr_len, "%s", addr);
    return XM_OK;
}

void mgr_registry_lost(mgr_t *m, const char *addr)
{
    pthread_mutex_lock(&m->lock);
    mgr_appliance_t *a = mgr_registry_get(m, addr, false);
    if (a != NULL && a->up) {
        a->up = false;
        a->down_since_ns = xm__now_ns();
        xm_log_warn("appliance %s: heartbeat connection lost, marked down", a->addr);
    }
    pthread_mutex_unlock(&m->lock);
    mgr_rebuild_kick(m);
}

void mgr_registry_sweep(mgr_t *m)
{
    uint64_t now = xm__now_ns(), limit = (uint64_t)m->opts.down_after_ms * 1000000ull;
    pthread_mutex_lock(&m->lock);
    for (uint32_t i = 0; i < m->napps; i++) {
        mgr_appliance_t *a = m->apps[i];
        if (a->up && now - a->last_seen_ns > limit) {
            a->up = false;
            a->down_since_ns = now;
            xm_log_warn("appliance %s: no heartbeat for %u ms, marked down", a->addr,
                        m->opts.down_after_ms);
        }
    }
    pthread_mutex_unlock(&m->lock);
}

static void appl_disconnect(mgr_appliance_t *a)
{
    rpc_conn_close(&a->conn);
}

static xm_status_t appl_connect(mgr_t *m, mgr_appliance_t *a, char *why, size_t whylen)
{
    char host[256], port[16];
    if (xm__parse_hostport(a->addr, host, sizeof(host), port, sizeof(port)) != XM_OK) {
        snprintf(why, whylen, "appliance address %s is not HOST:PORT", a->addr);
        return XM_ERR_INVALID;
    }
    int fd;
    xm_status_t status = rpc_connect(host, port, m->opts.timeout_ms, &fd);
    if (status != XM_OK) {
        snprintf(why, whylen, "cannot connect to appliance %s: %s", a->addr, xm_status_str(status));
        return status;
    }
    rpc_conn_init(&a->conn, fd);
    xm_msg_t *welcome;
    char w[256];
    status = rpc_handshake_client(&a->conn, m->opts.cred, XM_MANAGER_TENANT, m->opts.timeout_ms,
                                  &welcome, w, sizeof(w));
    if (status != XM_OK) {
        snprintf(why, whylen, "appliance %s: %s", a->addr, w);
        appl_disconnect(a);
        return status;
    }
    proto_msg_free(welcome);
    /* whoever answers at the address must be the appliance enrolled there */
    pthread_mutex_lock(&m->lock);
    bool same = !a->pinned || (a->conn.peer_identified &&
                               memcmp(a->conn.peer_pk, a->identity, XM_IDENTITY_PK_LEN) == 0);
    pthread_mutex_unlock(&m->lock);
    if (!same) {
        xm_log_warn("appliance %s: the peer at this address has another identity; not used",
                    a->addr);
        snprintf(why, whylen, "appliance %s: the peer at this address is not the enrolled "
                 "appliance (identity mismatch)", a->addr);
        appl_disconnect(a);
        return XM_ERR_AUTH;
    }
    return XM_OK;
}

xm_status_t mgr_appl_call_many(mgr_t *m, mgr_appliance_t *a, xm_msg_t *const *reqs, size_t n,
                               xm_msg_t **reps, xm_status_t *statuses, char *why, size_t whylen)
{
    pthread_mutex_lock(&a->conn_lock);
    xm_status_t status = XM_OK;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool fresh = a->conn.fd < 0;
        if (fresh) {
            status = appl_connect(m, a, why, whylen);
            if (status != XM_OK) {
                for (size_t i = 0; i < n; i++) {
                    reps[i] = NULL;
                    statuses[i] = status;
                }
                break;
            }
        }
        char w[256] = "";
        status = rpc_call_many(&a->conn, reqs, n, m->opts.timeout_ms, reps, statuses, w,
                               sizeof(w));
        if (status == XM_OK) break;
        snprintf(why, whylen, "appliance %s: %s", a->addr, w);
        if (status == XM_ERR_DISCONNECTED || status == XM_ERR_TIMEOUT || status == XM_ERR_PROTOCOL) {
            appl_disconnect(a);
            /* a stale connection (the appliance restarted) that answered nothing is retried
             * once on a fresh one; the requests sent this way are safe to repeat or are
             * checked by the caller */
            if (!fresh && status == XM_ERR_DISCONNECTED && statuses[0] == XM_ERR_DISCONNECTED) {
                for (size_t i = 0; i < n; i++) proto_msg_free(reps[i]);
                continue;
            }
        }
        break;
    }
    pthread_mutex_unlock(&a->conn_lock);
    return status;
}

xm_status_t mgr_appl_call(mgr_t *m, mgr_appliance_t *a, xm_msg_t *req, xm_msg_t **rep_p,
                          char *why, size_t whylen)
{
    xm_status_t st;
    xm_status_t status = mgr_appl_call_many(m, a, &req, 1, rep_p, &st, why, whylen);
    return status != XM_OK ? status : st;
}

void mgr_registry_cleanup(mgr_t *m)
{
    for (uint32_t i = 0; i < m->napps; i++) {
        appl_disconnect(m->apps[i]);
        pthread_mutex_destroy(&m->apps[i]->conn_lock);
        free(m->apps[i]);
    }
    free(m->apps);
    m->apps = NULL;
    m->napps = 0;
}
