/* Leader election of a manager group through etcd (docs/ha.md).
 *
 * A campaign thread holds a lease (TTL lease_ttl_s) and, while standing by, tries
 * every poll_ms a txn that creates PREFIX/leader (value: our advertised address,
 * attached to the lease) only if it is absent. The winner's leadership is the key's
 * create revision: every table write is a txn that compares it (store_etcd.c), so a
 * deposed leader can never write, whatever it believes. The leader renews the lease
 * every TTL/4 and steps down on its own when it could not renew for 3/4 of the TTL
 * (before etcd lets the key expire) or when a guarded write fails. A clean stop
 * revokes the lease: a standby takes over within poll_ms.
 *
 * The main thread alternates: stand by (an rpc server whose handshake tells each
 * peer where the leader is, then ends the session), lead (create the manager, which
 * loads the table from etcd, and serve until stopped or deposed), stand by again.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "etcd.h"
#include "ha.h"
#include "metrics.h"

/*
 * The group state of this process. lock guards every field; cond wakes the campaign
 * thread (stop, the end of a leader phase). serving: from winning until the main
 * thread has torn the leader phase down (no new campaign meanwhile, so an old table
 * in memory never writes under a new leadership).
 */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    mgr_ha_opts_t o;
    char prefix[200];
    char key[220];                   /* PREFIX/leader */
    int64_t rev;                     /* our leadership: the key's create revision; 0: none */
    bool serving, stop;
    char leader[XM_NAME_MAX + 1];    /* where the leader is, as last seen */
    int elected_fd, lost_fd;         /* eventfds: the main thread's wake-ups */
    uint64_t settle_until_ns;        /* a new leader waits for its appliances until then */
} ha = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER,
        .elected_fd = -1, .lost_fd = -1};

static void poke(int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, sizeof(one)) < 0) { /* an eventfd: never full in practice */ }
}

static void drain(int fd)
{
    uint64_t v;
    if (read(fd, &v, sizeof(v)) < 0) { /* non-blocking: nothing there */ }
}

/* Every appliance of the table registered? (m's lock) */
static bool all_up(mgr_t *m)
{
    pthread_mutex_lock(&m->lock);
    bool up = true;
    for (uint32_t i = 0; i < m->napps && up; i++) up = m->apps[i]->up && m->apps[i]->validated;
    pthread_mutex_unlock(&m->lock);
    return up;
}

/* set once by mgr_ha_run: a process outside a group never takes ha.lock per request */
static bool ha_active;

bool mgr_ha_settling(mgr_t *m, bool nowait)
{
    if (!__atomic_load_n(&ha_active, __ATOMIC_RELAXED)) return false;
    pthread_mutex_lock(&ha.lock);
    uint64_t until = ha.rev != 0 ? ha.settle_until_ns : 0;
    pthread_mutex_unlock(&ha.lock);
    while (until != 0 && xm__now_ns() < until && !all_up(m)) {
        if (nowait) return true;
        usleep(10000);
    }
    if (until != 0) {
        pthread_mutex_lock(&ha.lock);
        ha.settle_until_ns = 0; /* settled: no more looking */
        pthread_mutex_unlock(&ha.lock);
    }
    return false;
}

const char *mgr_ha_prefix(void)
{
    return ha.prefix;
}

bool mgr_ha_fence(char *key, size_t keylen, int64_t *rev_p)
{
    pthread_mutex_lock(&ha.lock);
    snprintf(key, keylen, "%s", ha.key);
    *rev_p = ha.rev;
    pthread_mutex_unlock(&ha.lock);
    return *rev_p != 0;
}

/* Leadership lost (lock held). */
static void lose_locked(const char *why)
{
    if (ha.rev == 0) return;
    xm_log_error("no longer the leader: %s; standing by", why);
    ha.rev = 0;
    poke(ha.lost_fd);
}

void mgr_ha_deposed(const char *why)
{
    pthread_mutex_lock(&ha.lock);
    lose_locked(why);
    pthread_mutex_unlock(&ha.lock);
}

/* Wait ms on cond, or until stop; false: stopping. */
static bool nap(uint32_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&ha.lock);
    if (!ha.stop) pthread_cond_timedwait(&ha.cond, &ha.lock, &ts);
    bool go = !ha.stop;
    pthread_mutex_unlock(&ha.lock);
    return go;
}

static xm_status_t lease_grant(mgr_etcd_t *e, int64_t *lease_p, char *why, size_t whylen)
{
    json_t *rep;
    xm_status_t s = mgr_etcd_call(e, "/v3/lease/grant",
                                  json_pack("{s:I}", "TTL", (json_int_t)ha.o.lease_ttl_s), &rep,
                                  why, whylen);
    if (s != XM_OK) return s;
    *lease_p = mgr_etcd_int(rep, "ID");
    json_decref(rep);
    if (*lease_p == 0) {
        snprintf(why, whylen, "etcd granted no lease");
        return XM_ERR_PROTOCOL;
    }
    return XM_OK;
}

/* Renew the lease once; *alive_p false: it had expired. */
static xm_status_t lease_keepalive(mgr_etcd_t *e, int64_t lease, bool *alive_p, char *why,
                                   size_t whylen)
{
    json_t *rep;
    char id[32];
    snprintf(id, sizeof(id), "%lld", (long long)lease);
    xm_status_t s = mgr_etcd_call(e, "/v3/lease/keepalive", json_pack("{s:s}", "ID", id), &rep,
                                  why, whylen);
    if (s != XM_OK) return s;
    json_t *res = json_object_get(rep, "result");
    *alive_p = mgr_etcd_int(res != NULL ? res : rep, "TTL") > 0;
    json_decref(rep);
    return XM_OK;
}

static void lease_revoke(mgr_etcd_t *e, int64_t lease)
{
    json_t *rep;
    char why[256], id[32];
    snprintf(id, sizeof(id), "%lld", (long long)lease);
    if (mgr_etcd_call(e, "/v3/lease/revoke", json_pack("{s:s}", "ID", id), &rep, why,
                      sizeof(why)) == XM_OK) {
        json_decref(rep);
    }
}

/* Try to take the vacant leadership; *rev_p: its revision when won, else 0 (the
 * current leader's address is noted). */
static xm_status_t campaign(mgr_etcd_t *e, int64_t lease, int64_t *rev_p, char *why, size_t whylen)
{
    char id[32];
    snprintf(id, sizeof(id), "%lld", (long long)lease);
    json_t *body = json_pack("{s:[{s:o,s:s,s:s,s:s}],s:[{s:{s:o,s:o,s:s}}],s:[{s:{s:o}}]}",
                             "compare", "key", mgr_etcd_b64s(ha.key), "result", "EQUAL",
                             "target", "CREATE", "create_revision", "0",
                             "success", "request_put", "key", mgr_etcd_b64s(ha.key), "value",
                             mgr_etcd_b64s(ha.o.advertise), "lease", id,
                             "failure", "request_range", "key", mgr_etcd_b64s(ha.key));
    if (body == NULL) return XM_ERR_NO_MEMORY;
    json_t *rep;
    xm_status_t s = mgr_etcd_call(e, "/v3/kv/txn", body, &rep, why, whylen);
    if (s != XM_OK) return s;
    *rev_p = 0;
    if (json_is_true(json_object_get(rep, "succeeded"))) {
        *rev_p = mgr_etcd_int(json_object_get(rep, "header"), "revision");
    } else {
        json_t *r = json_array_get(json_object_get(rep, "responses"), 0);
        json_t *kv = json_array_get(json_object_get(json_object_get(r, "response_range"), "kvs"), 0);
        char *who = mgr_etcd_unb64(json_object_get(kv, "value"), NULL);
        pthread_mutex_lock(&ha.lock);
        snprintf(ha.leader, sizeof(ha.leader), "%s", who != NULL ? who : "");
        pthread_mutex_unlock(&ha.lock);
        free(who);
    }
    json_decref(rep);
    return XM_OK;
}

static void *campaign_main(void *arg)
{
    mgr_etcd_t *e = arg;
    const uint64_t ttl_ns = (uint64_t)ha.o.lease_ttl_s * 1000000000ull;
    int64_t lease = 0;
    uint64_t renewed_ns = 0;         /* when the last successful renewal was sent */
    bool warned = false, led = false;
    char why[512];
    for (;;) {
        pthread_mutex_lock(&ha.lock);
        bool stop = ha.stop, leading = ha.rev != 0, serving = ha.serving;
        pthread_mutex_unlock(&ha.lock);
        if (stop) break;
        if (led && !leading && lease != 0) {
            /* a leadership ended (deposed, or the table could not be loaded): give the key
             * up, whatever still holds it, and campaign afresh with a new lease */
            lease_revoke(e, lease);
            lease = 0;
        }
        led = leading;
        uint64_t now = xm__now_ns();
        if (leading) {
            bool alive = false;
            xm_status_t s = lease_keepalive(e, lease, &alive, why, sizeof(why));
            if (s == XM_OK && alive) {
                renewed_ns = now;
            } else if (s == XM_OK) {
                pthread_mutex_lock(&ha.lock);
                lose_locked("the lease expired");
                pthread_mutex_unlock(&ha.lock);
                lease = 0;
            } else if (xm__now_ns() - renewed_ns > ttl_ns / 4 * 3) {
                /* before etcd can hand the leadership to another */
                pthread_mutex_lock(&ha.lock);
                lose_locked(why);
                pthread_mutex_unlock(&ha.lock);
                lease_revoke(e, lease);
                lease = 0;
            }
            if (!nap((uint32_t)(ttl_ns / 4 / 1000000))) break;
            continue;
        }
        if (serving) {                  /* the last leader phase is being torn down */
            if (!nap(20)) break;
            continue;
        }
        xm_status_t s = XM_OK;
        if (lease != 0 && now - renewed_ns > ttl_ns / 4) {
            bool alive = false;
            s = lease_keepalive(e, lease, &alive, why, sizeof(why));
            if (s == XM_OK && alive) renewed_ns = now;
            else lease = 0;
        }
        if (lease == 0) {
            s = lease_grant(e, &lease, why, sizeof(why));
            if (s == XM_OK) renewed_ns = now;
        }
        int64_t rev = 0;
        if (s == XM_OK) s = campaign(e, lease, &rev, why, sizeof(why));
        if (s != XM_OK) {
            if (!warned) xm_log_warn("leader election: %s; retrying", why);
            warned = true;
            lease = 0;
        } else {
            warned = false;
        }
        if (rev != 0) {
            pthread_mutex_lock(&ha.lock);
            ha.rev = rev;
            ha.serving = true;
            snprintf(ha.leader, sizeof(ha.leader), "%s", ha.o.advertise);
            pthread_mutex_unlock(&ha.lock);
            xm_log_info("elected leader (revision %lld)", (long long)rev);
            poke(ha.elected_fd);
            continue;
        }
        if (!nap(ha.o.poll_ms)) break;
    }
    if (lease != 0) lease_revoke(e, lease); /* a clean stop hands over at once */
    mgr_etcd_destroy(e);
    return NULL;
}

/* ---- standing by: tell every peer where the leader is ---- */

typedef struct standby {
    Xmem__Welcome welcome;
    char leader[XM_NAME_MAX + 1];    /* the welcome's leader_addr (the loop thread's) */
} standby_t;

static xm_status_t standby_serve(void *arg, rpc_srv_conn_t *c, xm_msg_t *req, bool loop,
                                 size_t slot, xm_msg_t *rep, char *why, size_t whylen,
                                 bool *close_p)
{
    standby_t *sb = arg;
    *close_p = true;
    snprintf(why, whylen, "manager %s is a standby, not the leader%s%s", ha.o.advertise,
             sb->leader[0] ? "; the leader is at " : " (an election is under way)", sb->leader);
    return XM_ERR_CONNECT;
}

static void standby_tick(void *arg)
{
    standby_t *sb = arg;
    pthread_mutex_lock(&ha.lock);
    snprintf(sb->leader, sizeof(sb->leader), "%s", ha.rev != 0 ? "" : ha.leader);
    pthread_mutex_unlock(&ha.lock);
}

static const rpc_srv_ops_t standby_ops = {
    .serve = standby_serve,
    .tick = standby_tick,
};

/* Is fd readable now? */
static bool readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* An epoll descriptor readable when a or b is (one stop_fd for rpc_server_run). */
static int either(int a, int b)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) return -1;
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.fd = a;
    epoll_ctl(ep, EPOLL_CTL_ADD, a, &ev);
    ev.data.fd = b;
    epoll_ctl(ep, EPOLL_CTL_ADD, b, &ev);
    return ep;
}

int mgr_ha_run(const mgr_opts_t *o, const mgr_ha_opts_t *hao, int listen_fd, int sig_fd, int hup_fd)
{
    char why[512];
    __atomic_store_n(&ha_active, true, __ATOMIC_RELAXED);
    ha.o = *hao;
    if (ha.o.lease_ttl_s == 0) ha.o.lease_ttl_s = 2;
    if (ha.o.poll_ms == 0) ha.o.poll_ms = 200;
    size_t plen = strlen(hao->prefix);
    while (plen > 1 && hao->prefix[plen - 1] == '/') plen--;
    if (hao->prefix[0] != '/' || plen >= sizeof(ha.prefix) - 1) {
        fprintf(stderr, "xmem-manager: --etcd-prefix: an absolute key prefix like /xmem\n");
        return 2;
    }
    snprintf(ha.prefix, sizeof(ha.prefix), "%.*s", (int)plen, hao->prefix);
    snprintf(ha.key, sizeof(ha.key), "%s/leader", ha.prefix);
    mgr_etcd_t *e;
    if (mgr_etcd_create(hao->endpoints, o->timeout_ms, &e, why, sizeof(why)) != XM_OK) {
        fprintf(stderr, "xmem-manager: %s\n", why);
        return 2;
    }
    ha.elected_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ha.lost_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int standby_stop = either(sig_fd, ha.elected_fd), lead_stop = either(sig_fd, ha.lost_fd);
    pthread_t camp;
    if (ha.elected_fd < 0 || ha.lost_fd < 0 || standby_stop < 0 || lead_stop < 0 ||
        pthread_create(&camp, NULL, campaign_main, e) != 0) {
        fprintf(stderr, "xmem-manager: cannot start the election: %s\n", strerror(errno));
        mgr_etcd_destroy(e);
        return 1;
    }
    xm_log_info("manager group %s on etcd %s: standing by as %s", ha.prefix, hao->endpoints,
                hao->advertise);
    int rc = 0;
    standby_t sb;
    while (!readable(sig_fd)) {
        memset(&sb, 0, sizeof(sb));
        xmem__welcome__init(&sb.welcome);
        sb.welcome.manager = true;
        sb.welcome.provider = "";
        sb.welcome.standby = true;
        sb.welcome.leader_addr = sb.leader;
        standby_tick(&sb);
        rpc_server_opts_t so = {.listen_fd = listen_fd, .keyring = o->keyring, .welcome = &sb.welcome,
                                .ops = &standby_ops, .arg = &sb, .max_conns = o->max_conns,
                                .max_conns_per_tenant = o->max_conns_per_tenant,
                                .timeout_ms = o->timeout_ms, .idle_ms = o->idle_ms,
                                .workers = 0, .tick_ms = 50};
        rpc_server_t *srv;
        if (!readable(ha.elected_fd)) {
            if (rpc_server_create(&so, &srv) != XM_OK) {
                rc = 1;
                break;
            }
            rpc_server_run(srv, standby_stop, hup_fd);
            rpc_server_destroy(srv);
        }
        if (readable(sig_fd)) break;
        drain(ha.elected_fd);
        /* lead: the table comes from etcd, under this leadership's fence */
        mgr_t *m = NULL;
        mgr_server_t *server = NULL;
        bool metrics = false;
        if (mgr_create(o, &m, why, sizeof(why)) != XM_OK) {
            xm_log_error("cannot lead: %s", why);
            mgr_ha_deposed("the table could not be loaded");
        } else if (mgr_server_create(m, listen_fd, &server) != XM_OK) {
            mgr_ha_deposed("cannot serve");
        } else {
            pthread_mutex_lock(&ha.lock);
            /* registrations (each a reconciliation) can take a while on a loaded host */
            uint64_t settle_ms = 3ull * o->down_after_ms > 3000 ? 3ull * o->down_after_ms : 3000;
            ha.settle_until_ns = xm__now_ns() + settle_ms * 1000000ull;
            pthread_mutex_unlock(&ha.lock);
            xm_log_info("leading: serving allocations as %s", hao->advertise);
            metrics = mgr_metrics_register(m) == XM_OK; /* --metrics: the leader's table */
            mgr_server_run(server, lead_stop, hup_fd);
        }
        if (metrics) mgr_metrics_unregister(m);
        mgr_server_destroy(server);
        mgr_destroy(m);
        pthread_mutex_lock(&ha.lock);
        ha.rev = 0;
        ha.serving = false;
        pthread_cond_broadcast(&ha.cond);
        pthread_mutex_unlock(&ha.lock);
        drain(ha.lost_fd);
    }
    pthread_mutex_lock(&ha.lock);
    ha.stop = true;
    pthread_cond_broadcast(&ha.cond);
    pthread_mutex_unlock(&ha.lock);
    pthread_join(camp, NULL);
    close(standby_stop);
    close(lead_stop);
    close(ha.elected_fd);
    close(ha.lost_fd);
    return rc;
}
