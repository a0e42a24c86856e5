/* Manager control server: one thread per authenticated connection, serving
 * clients (allocations) and appliances (registration and heartbeats). */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/common.h"
#include "manager.h"

/* The tenant name xmemd uses for its heartbeat connection. */
#define APPLIANCE_TENANT "@appliance"

typedef struct conn {
    mgr_server_t *server;
    int fd;
    pthread_t thread;
    struct sockaddr_storage peer_ss;
    char peer[64];
    char tenant[XM_NAME_MAX + 1];
    char appliance[XM_NAME_MAX + 1]; /* set once an appliance registered on it */
    volatile int done;
    struct conn *next;
} conn_t;

/* lock guards conns and nconns. */
struct mgr_server {
    mgr_t *m;
    int listen_fd;
    pthread_mutex_t lock;
    conn_t *conns;
    uint32_t nconns;
};

xm_status_t mgr_server_create(mgr_t *m, int listen_fd, mgr_server_t **s_p)
{
    mgr_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return XM_ERR_NO_MEMORY;
    s->m = m;
    s->listen_fd = listen_fd;
    pthread_mutex_init(&s->lock, NULL);
    *s_p = s;
    return XM_OK;
}

static xm_status_t reply(conn_t *c, xm_msg_t *rep, uint64_t seq, xm_status_t status,
                         const char *why)
{
    rep->seq = seq;
    rep->status = status;
    if (status != XM_OK) {
        rep->error = (char *)(why != NULL && why[0] ? why : xm_status_str(status));
        rep->body_case = XMEM__MSG__BODY__NOT_SET;
    }
    return net_send_msg(c->fd, rep, c->server->m->opts.timeout_ms);
}

static xm_status_t dispatch(conn_t *c, const xm_msg_t *msg)
{
    mgr_t *m = c->server->m;
    xm_msg_t rep = XMEM__MSG__INIT;
    Xmem__Empty empty = XMEM__EMPTY__INIT;
    char why[512] = "";
    const char *w = NULL;
    xm_status_t status;
    bool is_appliance = strcmp(c->tenant, APPLIANCE_TENANT) == 0;
    if (is_appliance != (msg->body_case == XMEM__MSG__BODY_APPLIANCE_REGISTER)) {
        xm_log_warn("connection from %s (tenant %s): request %d not allowed", c->peer, c->tenant,
                    (int)msg->body_case);
        reply(c, &rep, msg->seq, XM_ERR_PERM,
              is_appliance ? "appliances only register" : "only appliances register");
        return XM_ERR_PROTOCOL;
    }
    switch (msg->body_case) {
    case XMEM__MSG__BODY_APPLIANCE_REGISTER: {
        char addr[XM_NAME_MAX + 1];
        status = mgr_registry_heartbeat(m, msg->appliance_register, &c->peer_ss,
                                        c->appliance[0] == '\0', addr, sizeof(addr), &w);
        if (status == XM_OK && c->appliance[0] == '\0') {
            snprintf(c->appliance, sizeof(c->appliance), "%s", addr);
        }
        rep.body_case = XMEM__MSG__BODY_OK;
        rep.ok = &empty;
        return reply(c, &rep, msg->seq, status, w);
    }
    case XMEM__MSG__BODY_ALLOC_CREATE:
        status = mgr_alloc_create(m, c->tenant, msg->alloc_create, &rep, why, sizeof(why));
        if (status == XM_OK) {
            xm_log_debug("tenant %s: allocation %llu (%llu bytes, %s)", c->tenant,
                         (unsigned long long)rep.alloc_desc->id,
                         (unsigned long long)rep.alloc_desc->size, rep.alloc_desc->policy);
        }
        break;
    case XMEM__MSG__BODY_ALLOC_FREE:
        status = mgr_alloc_destroy(m, c->tenant, msg->alloc_free, why, sizeof(why));
        if (status == XM_OK) {
            rep.body_case = XMEM__MSG__BODY_OK;
            rep.ok = &empty;
        }
        break;
    case XMEM__MSG__BODY_ALLOC_ATTACH:
        status = mgr_alloc_attach(m, c->tenant, msg->alloc_attach, &rep, why, sizeof(why));
        break;
    case XMEM__MSG__BODY_ALLOC_GRANT:
        status = mgr_alloc_grant(m, c->tenant, msg->alloc_grant, why, sizeof(why));
        if (status == XM_OK) {
            rep.body_case = XMEM__MSG__BODY_OK;
            rep.ok = &empty;
        }
        break;
    case XMEM__MSG__BODY_ALLOC_LIST:
        status = mgr_alloc_list(m, c->tenant, &rep);
        break;
    case XMEM__MSG__BODY_APPLIANCE_LIST:
        status = mgr_appliance_list(m, &rep);
        break;
    default:
        xm_log_warn("connection from %s: unexpected request %d", c->peer, (int)msg->body_case);
        reply(c, &rep, msg->seq, XM_ERR_PROTOCOL, "unexpected request");
        return XM_ERR_PROTOCOL;
    }
    xm_msg_t out = rep; /* reply() clears the body of an error; keep it for cleanup */
    xm_status_t sent = reply(c, &rep, msg->seq, status, why);
    mgr_reply_cleanup(&out);
    return sent;
}

/* Poll fd without sleeping for up to ns: a client's next request usually follows its
 * reply within microseconds, and a sleeping thread costs a cross-CPU wake-up (~20 us). */
static void spin_for_input(int fd, uint64_t ns)
{
    if (ns == 0) return;
    uint64_t end = xm__now_ns() + ns;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    do {
        if (poll(&p, 1, 0) != 0) return;
    } while (xm__now_ns() < end);
}

static void *conn_main(void *arg)
{
    conn_t *c = arg;
    mgr_t *m = c->server->m;
    Xmem__Welcome welcome = XMEM__WELCOME__INIT;
    welcome.manager = true;
    welcome.provider = "";
    const char *why = NULL;
    if (net_handshake_server(c->fd, m->opts.secret, &welcome, m->opts.timeout_ms, c->tenant,
                             sizeof(c->tenant), &why) != XM_OK) {
        xm_log_warn("connection from %s: handshake failed (%s)", c->peer, why != NULL ? why : "?");
        goto out;
    }
    xm_log_debug("connection from %s: tenant %s authenticated", c->peer, c->tenant);
    for (;;) {
        xm_msg_t *msg = NULL;
        why = NULL;
        spin_for_input(c->fd, (uint64_t)m->opts.spin_us * 1000);
        xm_status_t status = net_recv_msg(c->fd, XM_FRAME_MAX_REQUEST, -1, m->opts.timeout_ms,
                                          &msg, &why);
        if (status == XM_ERR_DISCONNECTED && why == NULL) break;
        if (status != XM_OK) {
            xm_log_warn("connection from %s (tenant %s) dropped: %s", c->peer, c->tenant,
                        why != NULL ? why : xm_status_str(status));
            break;
        }
        status = dispatch(c, msg);
        proto_msg_free(msg);
        if (status != XM_OK) break;
    }
    if (c->appliance[0] != '\0') mgr_registry_lost(m, c->appliance);
out:
    shutdown(c->fd, SHUT_RDWR);
    c->done = 1;
    return NULL;
}

static void conns_reap(mgr_server_t *s, bool all)
{
    pthread_mutex_lock(&s->lock);
    conn_t **pp = &s->conns;
    while (*pp != NULL) {
        conn_t *c = *pp;
        if (all) shutdown(c->fd, SHUT_RDWR);
        if (all || c->done) {
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

void mgr_server_run(mgr_server_t *s, int stop_fd)
{
    uint64_t last_sweep = 0;
    for (;;) {
        struct pollfd p[2] = {{.fd = s->listen_fd, .events = POLLIN},
                              {.fd = stop_fd, .events = POLLIN}};
        int n = poll(p, 2, 50);
        uint64_t now = xm__now_ns();
        if (now - last_sweep > 50000000ull) {
            mgr_registry_sweep(s->m);
            conns_reap(s, false);
            last_sweep = now;
        }
        if (n < 0 && errno != EINTR) {
            xm_log_error("poll: %m");
            return;
        }
        if (p[1].revents != 0) return;
        if (n <= 0 || (p[0].revents & POLLIN) == 0) continue;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(s->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) continue;
        pthread_mutex_lock(&s->lock);
        bool full = s->nconns >= s->m->opts.max_conns;
        pthread_mutex_unlock(&s->lock);
        if (full) {
            xm_log_warn("connection refused: %u connections open", s->m->opts.max_conns);
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
        c->peer_ss = ss;
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

void mgr_server_destroy(mgr_server_t *s)
{
    if (s == NULL) return;
    conns_reap(s, true);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
