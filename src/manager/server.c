/* Manager control server: one event-loop thread serves every authenticated
 * connection, clients (allocations) and appliances (registration, heartbeats).
 *
 * Each round of the loop takes at most one request from every connection
 * that has one, serves those that need no waiting right there with their
 * table writes in one store batch (group commit), and sends the replies once
 * the batch is durable. A request that would wait — an appliance call, a busy
 * allocation, a registration — goes to a small pool of worker threads, which
 * serve it as before (blocking, their own commit) and hand the connection
 * back. Handshakes run on a thread per new connection, so a slow or silent
 * peer never holds the loop. Why: with a thread per connection, the manager
 * spent 74% of its time in the kernel switching threads and waiting on
 * futexes (docs/performance.md, "Allocation manager").
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/common.h"
#include "manager.h"

/* The tenant name xmemd uses for its heartbeat connection. */
#define APPLIANCE_TENANT "@appliance"
/* Threads serving requests that wait (appliance calls, busy allocations). */
#define WORKERS 4
/* How often heartbeats, stalled frames and stalled replies are looked at. */
#define SWEEP_MS 50

typedef enum conn_state {
    CONN_HANDSHAKE, /* its handshake thread owns it */
    CONN_READY,     /* the loop owns it */
    CONN_WORKER,    /* a worker owns it (one request being served) */
} conn_state_t;

/*
 * One control connection. state says who owns every other field; ownership
 * moves only under the server's lock (queues below), so a field is touched by
 * one thread at a time.
 */
typedef struct conn {
    mgr_server_t *server;
    rpc_conn_t rc;                   /* the session; rc.principal is who the peer proved to be */
    conn_state_t state;
    pthread_t hs_thread;
    bool hs_ok;
    bool admitted;                   /* counted in the server's admission */
    uint64_t last_active_ns;         /* last request; the idle timeout counts from here */
    bool dead;                       /* a worker found it broken: close on return */
    struct sockaddr_storage peer_ss;
    char peer[64];
    char appliance[XM_NAME_MAX + 1]; /* set once an appliance registered on it */
    /* input: bytes received, not yet consumed as frames */
    uint8_t *in;
    size_t in_len, in_cap;
    uint64_t frame_start_ns;         /* when the incomplete frame in `in` began; 0: none */
    /* output: a reply the socket did not take at once */
    uint8_t *out;
    size_t out_len, out_off;
    uint64_t out_since_ns;
    bool close_after_out;
    xm_msg_t *job;                   /* the request a worker serves */
    bool on_ready;                   /* in the loop's ready list */
    bool in_round;                   /* one of its requests is in the round being gathered */
    struct conn *rnext;
    struct conn *next;               /* all connections */
    struct conn *qnext;              /* the job or returned queue */
} conn_t;

/* One request of a round. */
typedef struct slot {
    conn_t *c;
    xm_msg_t *msg;
    xm_msg_t rep;
    xm_status_t status;
    bool close_after;
    char why[512];
} slot_t;

/*
 * lock guards conns, nconns, the job queue, the returned queue and stopping.
 * The loop thread alone touches ep and the READY connections' fields.
 */
struct mgr_server {
    mgr_t *m;
    int listen_fd;
    int ep;
    int wake_fd;                     /* eventfd: a connection came back to the loop */
    pthread_mutex_t lock;
    pthread_cond_t job_cond;
    conn_t *conns;
    uint32_t nconns;
    conn_t *jobs, **jobs_tail;
    conn_t *returned;
    bool stopping;
    pthread_t workers[WORKERS];
    int nworkers;
    /* the loop's round */
    slot_t slots[MGR_BATCH_MAX];
    bool failed[MGR_BATCH_MAX];
    mgr_batch_t batch;
    conn_t *ready;                   /* READY connections that may have a request buffered */
    uint64_t nrounds, nserved, nworked; /* for the log line at the end */
    rpc_admission_t admission;       /* sessions per tenant */
    uint64_t accept_paused_until;    /* out of descriptors: the listener is not watched */
    bool revoke;                     /* the sweep also ends sessions of revoked credentials */
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

static xm_status_t admit(void *arg, const rpc_conn_t *rc, const char **why_p)
{
    conn_t *c = arg;
    xm_status_t status = rpc_admission_take(&c->server->admission, rc->principal, why_p);
    c->admitted = status == XM_OK;
    return status;
}

/*
 * Serve one request into *rep. With b (the loop), never wait: XM_ERR_AGAIN hands
 * the request to a worker. *close_p: the peer broke the protocol, close after
 * the reply.
 */
static xm_status_t dispatch(conn_t *c, const xm_msg_t *msg, mgr_batch_t *b, size_t slot,
                            xm_msg_t *rep, char *why, size_t whylen, bool *close_p)
{
    mgr_t *m = c->server->m;
    static Xmem__Empty empty = XMEM__EMPTY__INIT;
    const char *w = NULL;
    xm_status_t status;
    const char *tenant = c->rc.principal;
    bool is_appliance = strcmp(tenant, APPLIANCE_TENANT) == 0;
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
                                        c->appliance[0] == '\0', b != NULL, addr, sizeof(addr), &w);
        if (status == XM_ERR_AGAIN) return status;
        if (status == XM_OK && c->appliance[0] == '\0') {
            snprintf(c->appliance, sizeof(c->appliance), "%s", addr);
        }
        if (status != XM_OK) snprintf(why, whylen, "%s", w != NULL ? w : "");
        rep->body_case = XMEM__MSG__BODY_OK;
        rep->ok = &empty;
        return status;
    }
    case XMEM__MSG__BODY_ALLOC_CREATE:
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
    case XMEM__MSG__BODY_ALLOC_LIST:
        return mgr_alloc_list(m, tenant, rep);
    case XMEM__MSG__BODY_APPLIANCE_LIST:
        return mgr_appliance_list(m, rep);
    default:
        xm_log_warn("connection from %s: unexpected request %d", c->peer, (int)msg->body_case);
        snprintf(why, whylen, "unexpected request");
        *close_p = true;
        return XM_ERR_PROTOCOL;
    }
}

/* Finish a reply for the wire: an error carries its reason and no body. */
static void reply_prepare(xm_msg_t *rep, uint64_t seq, xm_status_t status, const char *why)
{
    rep->seq = seq;
    rep->status = status;
    if (status != XM_OK) {
        rep->error = (char *)(why != NULL && why[0] ? why : xm_status_str(status));
        rep->body_case = XMEM__MSG__BODY__NOT_SET;
    }
}

/* ---- workers ---------------------------------------------------------------- */

static void wake_loop(mgr_server_t *s)
{
    uint64_t one = 1;
    ssize_t n = write(s->wake_fd, &one, sizeof(one));
    (void)n; /* a full counter still wakes the loop */
}

/* Give a connection back to the loop (from a worker or a handshake thread). */
static void conn_return(conn_t *c)
{
    mgr_server_t *s = c->server;
    pthread_mutex_lock(&s->lock);
    c->qnext = s->returned;
    s->returned = c;
    pthread_mutex_unlock(&s->lock);
    wake_loop(s);
}

static void *worker_main(void *arg)
{
    mgr_server_t *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (s->jobs == NULL && !s->stopping) pthread_cond_wait(&s->job_cond, &s->lock);
        if (s->jobs == NULL) break;
        conn_t *c = s->jobs;
        s->jobs = c->qnext;
        if (s->jobs == NULL) s->jobs_tail = &s->jobs;
        pthread_mutex_unlock(&s->lock);

        xm_msg_t rep = XMEM__MSG__INIT;
        char why[512] = "";
        bool close_after;
        xm_status_t status = dispatch(c, c->job, NULL, 0, &rep, why, sizeof(why), &close_after);
        xm_msg_t out = rep; /* reply_prepare clears the body of an error; keep it for cleanup */
        reply_prepare(&rep, c->job->seq, status, why);
        if (rpc_send(&c->rc, &rep, rpc_deadline_after(s->m->opts.timeout_ms)) != XM_OK || close_after)
            c->dead = true;
        mgr_reply_cleanup(&out);
        proto_msg_free(c->job);
        c->job = NULL;
        conn_return(c);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static void job_push(mgr_server_t *s, conn_t *c, xm_msg_t *msg)
{
    c->job = msg;
    c->state = CONN_WORKER;
    c->qnext = NULL;
    pthread_mutex_lock(&s->lock);
    *s->jobs_tail = c;
    s->jobs_tail = &c->qnext;
    pthread_cond_signal(&s->job_cond);
    pthread_mutex_unlock(&s->lock);
}

/* ---- connections (loop thread) --------------------------------------------- */

static void *handshake_main(void *arg)
{
    conn_t *c = arg;
    mgr_t *m = c->server->m;
    Xmem__Welcome welcome = XMEM__WELCOME__INIT;
    welcome.manager = true;
    welcome.provider = "";
    const char *why = NULL;
    c->hs_ok = rpc_handshake_server(&c->rc, m->opts.keyring, NULL, &welcome, admit, c,
                                    m->opts.timeout_ms, &why) == XM_OK;
    if (!c->hs_ok) {
        xm_log_warn("connection from %s%s%s: handshake failed (%s)", c->peer,
                    c->rc.principal[0] ? " as " : "", c->rc.principal, why != NULL ? why : "?");
    } else {
        xm_log_debug("connection from %s: %s authenticated", c->peer, c->rc.principal);
    }
    c->last_active_ns = xm__now_ns();
    conn_return(c);
    return NULL;
}

static bool ep_set(mgr_server_t *s, conn_t *c, int op, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    return epoll_ctl(s->ep, op, c->rc.fd, &ev) == 0;
}

static void conn_close(mgr_server_t *s, conn_t *c)
{
    if (c->state == CONN_READY) epoll_ctl(s->ep, EPOLL_CTL_DEL, c->rc.fd, NULL);
    if (c->admitted) rpc_admission_put(&s->admission, c->rc.principal);
    if (c->appliance[0] != '\0') mgr_registry_lost(s->m, c->appliance);
    pthread_mutex_lock(&s->lock);
    for (conn_t **pp = &s->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            s->nconns--;
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (c->on_ready) {
        for (conn_t **pp = &s->ready; *pp != NULL; pp = &(*pp)->rnext) {
            if (*pp == c) {
                *pp = c->rnext;
                break;
            }
        }
    }
    rpc_conn_close(&c->rc);
    free(c->in);
    free(c->out);
    free(c);
}

static void conn_accept(mgr_server_t *s)
{
    for (;;) {
        struct sockaddr_storage ss;
        int fd = rpc_accept_paced(s->listen_fd, &ss, &s->accept_paused_until);
        if (fd < 0) {
            if (s->accept_paused_until != 0) {
                struct epoll_event ev = {.events = 0, .data.ptr = &s->listen_fd};
                epoll_ctl(s->ep, EPOLL_CTL_MOD, s->listen_fd, &ev);
            }
            return;
        }
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
        rpc_conn_init(&c->rc, fd);
        c->peer_ss = ss;
        c->state = CONN_HANDSHAKE;
        rpc_peer_name(&ss, c->peer, sizeof(c->peer));
        pthread_mutex_lock(&s->lock);
        if (pthread_create(&c->hs_thread, NULL, handshake_main, c) != 0) {
            pthread_mutex_unlock(&s->lock);
            xm_log_warn("connection from %s refused: cannot start a thread", c->peer);
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

/* Receive what the socket has; false: the connection ended or broke. */
static bool conn_fill(conn_t *c)
{
    for (;;) {
        if (c->in_len == c->in_cap) {
            size_t cap = c->in_cap == 0 ? 4096 : c->in_cap * 2;
            if (cap > XM_FRAME_HEADER + rpc_frame_max(XM_FRAME_MAX_REQUEST))
                cap = XM_FRAME_HEADER + rpc_frame_max(XM_FRAME_MAX_REQUEST);
            if (cap == c->in_cap) return true; /* a whole frame fits: parse it first */
            uint8_t *in = realloc(c->in, cap);
            if (in == NULL) return false;
            c->in = in;
            c->in_cap = cap;
        }
        ssize_t n = recv(c->rc.fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n > 0) {
            if (c->in_len == 0) c->frame_start_ns = xm__now_ns();
            c->in_len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
        if (n == 0 && c->in_len > 0) {
            xm_log_warn("connection from %s (%s) dropped: truncated frame", c->peer, c->rc.principal);
        }
        return false;
    }
}

/* Take one whole frame off the input: 1 and *msg_p, 0: none yet, -1: a bad frame. */
static int conn_take_frame(conn_t *c, xm_msg_t **msg_p)
{
    if (c->in_len < XM_FRAME_HEADER) return 0;
    size_t len;
    if (proto_frame_len(c->in, rpc_frame_max(XM_FRAME_MAX_REQUEST), &len) != XM_OK) {
        xm_log_warn("connection from %s (%s) dropped: frame length 0 or above the limit",
                    c->peer, c->rc.principal);
        return -1;
    }
    if (c->in_len < XM_FRAME_HEADER + len) return 0;
    const char *why = NULL;
    xm_status_t status = rpc_open(&c->rc, c->in + XM_FRAME_HEADER, len, XM_FRAME_MAX_REQUEST, msg_p, &why);
    c->last_active_ns = xm__now_ns();
    c->in_len -= XM_FRAME_HEADER + len;
    memmove(c->in, c->in + XM_FRAME_HEADER + len, c->in_len);
    c->frame_start_ns = c->in_len > 0 ? xm__now_ns() : 0;
    if (status != XM_OK) {
        xm_log_warn("connection from %s (%s) dropped: %s", c->peer, c->rc.principal,
                    why != NULL ? why : xm_status_str(status));
        return -1;
    }
    return 1;
}

/* Send what is pending; false: broken. */
static bool conn_flush(mgr_server_t *s, conn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->rc.fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (c->out_since_ns == 0) {
                c->out_since_ns = xm__now_ns();
                ep_set(s, c, EPOLL_CTL_MOD, EPOLLOUT); /* no more requests until it drains */
            }
            return true;
        }
        return false;
    }
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = 0;
    if (c->out_since_ns != 0) {
        c->out_since_ns = 0;
        ep_set(s, c, EPOLL_CTL_MOD, EPOLLIN);
    }
    return !c->close_after_out;
}

/* ---- the loop ---------------------------------------------------------------- */

/* A request may be buffered on c already (no readiness event will say so). */
static void mark_ready(mgr_server_t *s, conn_t *c)
{
    if (c->on_ready) return;
    c->on_ready = true;
    c->rnext = s->ready;
    s->ready = c;
}

/* Add a READY connection's next whole frame to the round; false: close it. */
static bool round_take(mgr_server_t *s, conn_t *c, size_t *n)
{
    if (c->out != NULL || c->in_round) return true; /* one request at a time */
    xm_msg_t *msg;
    int got = conn_take_frame(c, &msg);
    if (got < 0) return false;
    if (got == 0) return true;
    c->in_round = true;
    slot_t *sl = &s->slots[(*n)++];
    memset(sl, 0, sizeof(*sl));
    sl->c = c;
    sl->msg = msg;
    sl->rep = (xm_msg_t)XMEM__MSG__INIT;
    return true;
}

/* Serve a round: the requests that need no waiting in one store batch, the rest to workers. */
static void round_serve(mgr_server_t *s, size_t n)
{
    mgr_t *m = s->m;
    const mgr_store_ops_t *ops = m->opts.store_ops;
    s->batch.nops = 0;
    ops->batch_begin(m->store);
    for (size_t i = 0; i < n; i++) {
        slot_t *sl = &s->slots[i];
        s->failed[i] = false;
        sl->status = dispatch(sl->c, sl->msg, &s->batch, i, &sl->rep, sl->why, sizeof(sl->why),
                              &sl->close_after);
    }
    bool committed = ops->batch_end(m->store, true) == XM_OK;
    s->nrounds++;
    s->nserved += n;
    if (!committed) xm_log_error("allocation table: a batch of %zu requests was not recorded", n);
    mgr_batch_finish(m, &s->batch, committed, s->failed);
    for (size_t i = 0; i < n; i++) {
        slot_t *sl = &s->slots[i];
        conn_t *c = sl->c;
        c->in_round = false;
        if (sl->status == XM_ERR_AGAIN) {
            s->nworked++;
            epoll_ctl(s->ep, EPOLL_CTL_DEL, c->rc.fd, NULL);
            job_push(s, c, sl->msg);
            continue;
        }
        if (s->failed[i]) {
            mgr_reply_cleanup(&sl->rep);
            sl->rep = (xm_msg_t)XMEM__MSG__INIT;
            sl->status = XM_ERR_IO;
            snprintf(sl->why, sizeof(sl->why), "cannot record the change in the allocation table");
        }
        xm_msg_t out = sl->rep;
        reply_prepare(&sl->rep, sl->msg->seq, sl->status, sl->why);
        uint8_t *buf = NULL;
        size_t len = 0;
        bool ok = rpc_seal(&c->rc, &sl->rep, &buf, &len) == XM_OK;
        mgr_reply_cleanup(&out);
        proto_msg_free(sl->msg);
        if (ok) {
            c->out = buf;
            c->out_len = len;
            c->out_off = 0;
            c->close_after_out = sl->close_after;
            ok = conn_flush(s, c);
        }
        if (!ok) {
            conn_close(s, c);
        } else if (c->out == NULL && c->in_len >= XM_FRAME_HEADER) {
            mark_ready(s, c); /* the client sent its next request already */
        }
    }
}

/* Take back connections that handshake threads and workers finished with. */
static void take_returned(mgr_server_t *s)
{
    uint64_t v;
    ssize_t r = read(s->wake_fd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&s->lock);
    conn_t *list = s->returned;
    s->returned = NULL;
    pthread_mutex_unlock(&s->lock);
    while (list != NULL) {
        conn_t *c = list;
        list = c->qnext;
        if (c->state == CONN_HANDSHAKE) {
            pthread_join(c->hs_thread, NULL);
            if (!c->hs_ok) {
                conn_close(s, c);
                continue;
            }
        } else if (c->dead) {
            c->state = CONN_READY; /* not in the epoll set: conn_close's DEL fails harmlessly */
            conn_close(s, c);
            continue;
        }
        c->state = CONN_READY;
        if (!ep_set(s, c, EPOLL_CTL_ADD, EPOLLIN)) {
            xm_log_warn("connection from %s: epoll: %m", c->peer);
            conn_close(s, c);
            continue;
        }
        mark_ready(s, c);
    }
}

/* Drop connections whose frame or reply has been stuck longer than the timeout. */
static void sweep_stalled(mgr_server_t *s, uint64_t now)
{
    uint64_t limit = (uint64_t)s->m->opts.timeout_ms * 1000000ull;
    pthread_mutex_lock(&s->lock);
    conn_t *stalled = NULL;
    for (conn_t *c = s->conns; c != NULL; c = c->next) {
        if (c->state != CONN_READY) continue;
        bool in = c->frame_start_ns != 0 && now - c->frame_start_ns > limit;
        bool out = c->out_since_ns != 0 && now - c->out_since_ns > limit;
        bool idle = s->m->opts.idle_ms != 0 && c->in_len == 0 && c->out == NULL && !c->in_round &&
                    now - c->last_active_ns > (uint64_t)s->m->opts.idle_ms * 1000000ull &&
                    c->appliance[0] == '\0';
        bool revoked = s->revoke && !rpc_keyring_valid(s->m->opts.keyring, c->rc.principal, c->rc.cred_id);
        if (in || out || idle || revoked) {
            xm_log_warn("connection from %s (%s) dropped: %s", c->peer, c->rc.principal,
                        revoked ? "its credential was revoked" : idle ? "idle" :
                        in ? "request frame not done in time" : "reply not taken in time");
            c->qnext = stalled;
            stalled = c;
        }
    }
    pthread_mutex_unlock(&s->lock);
    while (stalled != NULL) {
        conn_t *c = stalled;
        stalled = c->qnext;
        conn_close(s, c);
    }
}

xm_status_t mgr_server_create(mgr_t *m, int listen_fd, mgr_server_t **s_p)
{
    if (m->opts.store_ops->batch_begin == NULL || m->opts.store_ops->batch_end == NULL) {
        xm_log_error("the %s store cannot batch writes", m->opts.store_ops->name);
        return XM_ERR_INVALID;
    }
    mgr_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return XM_ERR_NO_MEMORY;
    s->m = m;
    s->listen_fd = listen_fd;
    s->jobs_tail = &s->jobs;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->job_cond, NULL);
    rpc_admission_init(&s->admission, m->opts.max_conns_per_tenant);
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->ep < 0 || s->wake_fd < 0) {
        xm_log_error("epoll/eventfd: %m");
        goto err;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &s->listen_fd};
    struct epoll_event wev = {.events = EPOLLIN, .data.ptr = &s->wake_fd};
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, listen_fd, &ev) != 0 ||
        epoll_ctl(s->ep, EPOLL_CTL_ADD, s->wake_fd, &wev) != 0) {
        xm_log_error("epoll: %m");
        goto err;
    }
    for (; s->nworkers < WORKERS; s->nworkers++) {
        if (pthread_create(&s->workers[s->nworkers], NULL, worker_main, s) != 0) {
            xm_log_error("cannot start worker threads");
            goto err;
        }
    }
    *s_p = s;
    return XM_OK;
err:
    mgr_server_destroy(s);
    return XM_ERR_IO;
}

void mgr_server_run(mgr_server_t *s, int stop_fd, int hup_fd)
{
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &stop_fd};
    struct epoll_event hev = {.events = EPOLLIN, .data.ptr = &hup_fd};
    int watch_fd = s->m->opts.keyring->watch_fd;
    struct epoll_event kev = {.events = EPOLLIN, .data.ptr = &s->m->opts.keyring->watch_fd};
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, stop_fd, &sev) != 0 ||
        (hup_fd >= 0 && epoll_ctl(s->ep, EPOLL_CTL_ADD, hup_fd, &hev) != 0) ||
        (watch_fd >= 0 && epoll_ctl(s->ep, EPOLL_CTL_ADD, watch_fd, &kev) != 0)) {
        xm_log_error("epoll: %m");
        return;
    }
    const uint64_t spin_ns = (uint64_t)s->m->opts.spin_us * 1000ull;
    uint64_t last_sweep = 0, last_active = 0;
    bool stop = false;
    while (!stop) {
        size_t n = 0;
        /* connections with a request buffered already go first, without waiting */
        while (s->ready != NULL && n < MGR_BATCH_MAX) {
            conn_t *c = s->ready;
            s->ready = c->rnext;
            c->on_ready = false;
            if (c->state == CONN_READY && !round_take(s, c, &n)) conn_close(s, c);
        }
        uint64_t now = xm__now_ns();
        int timeout = n > 0 || s->ready != NULL || now - last_active < spin_ns ? 0 : SWEEP_MS;
        struct epoll_event evs[MGR_BATCH_MAX];
        int ne = n < MGR_BATCH_MAX ? epoll_wait(s->ep, evs, (int)(MGR_BATCH_MAX - n), timeout) : 0;
        if (ne < 0 && errno != EINTR) {
            xm_log_error("epoll_wait: %m");
            break;
        }
        for (int i = 0; i < ne; i++) {
            void *p = evs[i].data.ptr;
            if (p == &stop_fd) {
                stop = true;
            } else if (p == &hup_fd || p == &s->m->opts.keyring->watch_fd) {
                if (p == &hup_fd) {
                    struct signalfd_siginfo si;
                    while (read(hup_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                    }
                    xm_log_info("SIGHUP: reloading the tenant registry");
                }
                if (rpc_keyring_refresh(s->m->opts.keyring)) {
                    s->revoke = true;
                    sweep_stalled(s, xm__now_ns());
                    s->revoke = false;
                }
            } else if (p == &s->listen_fd) {
                conn_accept(s);
            } else if (p == &s->wake_fd) {
                take_returned(s);
            } else {
                conn_t *c = p;
                if (c->state != CONN_READY) continue; /* closed earlier in this batch of events */
                bool ok = true;
                if (c->out != NULL) {
                    ok = (evs[i].events & (EPOLLERR | EPOLLHUP)) == 0 && conn_flush(s, c);
                    if (ok && c->out == NULL) ok = round_take(s, c, &n);
                } else {
                    ok = conn_fill(c) && round_take(s, c, &n);
                }
                if (!ok) conn_close(s, c);
            }
        }
        if (n > 0) {
            round_serve(s, n);
            last_active = xm__now_ns();
        }
        now = xm__now_ns();
        if (s->accept_paused_until != 0 && now >= s->accept_paused_until) {
            s->accept_paused_until = 0;
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &s->listen_fd};
            epoll_ctl(s->ep, EPOLL_CTL_MOD, s->listen_fd, &ev);
        }
        if (now - last_sweep > (uint64_t)SWEEP_MS * 1000000ull) {
            mgr_registry_sweep(s->m);
            sweep_stalled(s, now);
            last_sweep = now;
        }
    }
    epoll_ctl(s->ep, EPOLL_CTL_DEL, stop_fd, NULL);
    xm_log_info("served %llu requests in %llu rounds, %llu of them on worker threads",
                (unsigned long long)s->nserved, (unsigned long long)s->nrounds,
                (unsigned long long)s->nworked);
}

void mgr_server_destroy(mgr_server_t *s)
{
    if (s == NULL) return;
    /* wake and stop the workers and handshakes; every connection comes back or is ours */
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->job_cond);
    for (conn_t *c = s->conns; c != NULL; c = c->next) shutdown(c->rc.fd, SHUT_RDWR);
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < s->nworkers; i++) pthread_join(s->workers[i], NULL);
    /* queued jobs no worker took: their connections are the loop's again */
    pthread_mutex_lock(&s->lock);
    for (conn_t *c = s->jobs; c != NULL; c = c->qnext) {
        proto_msg_free(c->job);
        c->job = NULL;
        c->state = CONN_READY;
    }
    s->jobs = NULL;
    s->jobs_tail = &s->jobs;
    pthread_mutex_unlock(&s->lock);
    for (;;) {
        pthread_mutex_lock(&s->lock);
        bool handshaking = false;
        for (conn_t *c = s->conns; c != NULL; c = c->next) {
            if (c->state == CONN_HANDSHAKE) handshaking = true;
        }
        conn_t *ret = s->returned;
        s->returned = NULL;
        pthread_mutex_unlock(&s->lock);
        for (; ret != NULL; ret = ret->qnext) {
            if (ret->state == CONN_HANDSHAKE) pthread_join(ret->hs_thread, NULL);
            ret->state = CONN_READY;
        }
        if (!handshaking) break;
        usleep(1000);
    }
    while (s->conns != NULL) conn_close(s, s->conns);
    if (s->ep >= 0) close(s->ep);
    if (s->wake_fd >= 0) close(s->wake_fd);
    pthread_cond_destroy(&s->job_cond);
    pthread_mutex_destroy(&s->lock);
    rpc_admission_cleanup(&s->admission);
    free(s);
}
