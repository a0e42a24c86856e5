/* The event-loop server both daemons run (rpc.h, "the event-loop server").
 *
 * One loop thread owns every READY connection: it reads what their sockets have,
 * opens whole frames, and serves a round — at most one request from each
 * connection that has one — through the owner's serve callback, between the
 * owner's round hooks (the manager commits a round's table writes there), then
 * seals and sends the replies. A request whose serve would wait goes to a worker
 * thread, which serves it, seals the reply and hands the connection back. A
 * handshake runs on a thread of its own, so a slow or silent peer never holds the
 * loop. Why one loop: with a thread per connection the manager spent 74% of its
 * time in the kernel switching threads (docs/performance.md, "Allocation
 * manager"), and an appliance held a thread per idle session.
 *
 * The loop sleeps until something is due: an event, the next tick, the earliest
 * frame, reply or idle deadline of a connection, the end of an accept pause. With
 * no connections and no tick it sleeps until a peer connects.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/common.h"
#include "../common/metrics.h"
#include "rpc.h"

#define NEVER UINT64_MAX

typedef enum conn_state {
    CONN_HANDSHAKE, /* its handshake thread owns it */
    CONN_READY,     /* the loop owns it */
    CONN_WORKER,    /* a worker owns it (one request being served) */
} conn_state_t;

/*
 * One connection. state says which thread owns every other field; ownership moves
 * only through the server's queues (under its lock), so a field is touched by one
 * thread at a time. next (the list of all connections) is guarded by the lock.
 */
typedef struct conn {
    rpc_srv_conn_t pub;              /* first: the callbacks' view */
    rpc_server_t *server;
    conn_state_t state;
    pthread_t hs_thread;
    bool hs_ok;
    bool admitted;                   /* counted in the server's admission */
    uint8_t source[17];              /* who connected, for the pending-handshake caps */
    bool dead;                       /* a worker could not seal its reply: close on return */
    bool recheck;                    /* the keyring changed while another thread owned it */
    uint64_t last_active_ns;         /* last request; the idle timeout counts from here */
    /* input: bytes received, not yet consumed as frames */
    uint8_t *in;
    size_t in_len, in_cap;
    uint64_t frame_start_ns;         /* when the incomplete frame in `in` began; 0: none */
    /* output: a reply the socket did not take at once */
    uint8_t *out;
    size_t out_len, out_off;
    int out_fd;                      /* sent with out's first byte (SCM_RIGHTS), -1: none */
    uint64_t out_since_ns;
    bool close_after_out;
    xm_msg_t *job;                   /* the request a worker serves */
    bool on_ready;                   /* in the loop's ready list */
    bool in_round;                   /* one of its requests is in the round being gathered */
    struct conn *rnext;              /* the ready list */
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
 * lock guards conns, nconns, the job queue, the returned queue and stopping. The
 * loop thread alone touches ep, the round, the ready list and the deadlines.
 */
struct rpc_server {
    rpc_server_opts_t o;
    int ep;
    int wake_fd;                     /* eventfd: a connection came back to the loop */
    pthread_mutex_t lock;
    pthread_cond_t job_cond;
    conn_t *conns;
    uint32_t nconns;
    conn_t *jobs, **jobs_tail;
    conn_t *returned;
    bool stopping;
    pthread_t *workers;
    uint32_t nworkers;
    slot_t slots[RPC_SRV_ROUND_MAX];
    bool failed[RPC_SRV_ROUND_MAX];
    conn_t *ready;                   /* READY connections that may have a request buffered */
    rpc_admission_t admission;       /* sessions per tenant */
    uint64_t accept_paused_until;    /* out of descriptors: the listener is not watched */
    uint64_t refused_log_ns;         /* last "connection refused" line (a flood logs once a second) */
    uint64_t next_check_ns;          /* earliest frame/reply/idle deadline; NEVER: none */
    rpc_server_stats_t stats;
};

/* ---- replies ------------------------------------------------------------------ */

/* Seal rep (status, why) as c's pending output, then release rep's parts; false: failed. */
static bool reply_seal(rpc_server_t *s, conn_t *c, uint64_t seq, xm_status_t status,
                       const char *why, xm_msg_t *rep, bool close_after)
{
    xm_msg_t body = *rep; /* an error's reply has no body: keep it for the cleanup */
    rep->seq = seq;
    rep->status = status;
    if (status != XM_OK) {
        rep->error = (char *)(why != NULL && why[0] ? why : xm_status_str(status));
        rep->body_case = XMEM__MSG__BODY__NOT_SET;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    bool ok = rpc_seal(&c->pub.rc, rep, &buf, &len) == XM_OK;
    if (s->o.ops->reply_cleanup != NULL) s->o.ops->reply_cleanup(s->o.arg, &body);
    if (ok) {
        c->out = buf;
        c->out_len = len;
        c->out_off = 0;
        c->close_after_out = close_after;
    }
    /* a descriptor goes only with a successful reply (local transport) */
    if (ok && status == XM_OK && c->pub.pass_fd >= 0) c->out_fd = c->pub.pass_fd;
    else if (c->pub.pass_fd >= 0) close(c->pub.pass_fd);
    c->pub.pass_fd = -1;
    return ok;
}

/* ---- workers and handshakes ---------------------------------------------------- */

static void wake_loop(rpc_server_t *s)
{
    uint64_t one = 1;
    ssize_t n = write(s->wake_fd, &one, sizeof(one));
    (void)n; /* a full counter still wakes the loop */
}

/* Give a connection back to the loop (from a worker or a handshake thread). */
static void conn_return(conn_t *c)
{
    rpc_server_t *s = c->server;
    pthread_mutex_lock(&s->lock);
    c->qnext = s->returned;
    s->returned = c;
    pthread_mutex_unlock(&s->lock);
    wake_loop(s);
}

/* Serve one request off the loop and seal its reply; the loop sends it. */
/* Send what the socket takes of c's pending output, never waiting: 1 all sent (the buffer is
 * freed), 0 the socket is full, -1 broken. */
static int out_push(conn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n;
        if (c->out_fd >= 0) {
            /* the reply's descriptor rides on its first bytes (local transport) */
            union {
                struct cmsghdr h;
                char b[CMSG_SPACE(sizeof(int))];
            } cm;
            memset(&cm, 0, sizeof(cm));
            struct iovec iov = {.iov_base = c->out + c->out_off, .iov_len = c->out_len - c->out_off};
            struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b,
                                .msg_controllen = sizeof(cm.b)};
            struct cmsghdr *ch = CMSG_FIRSTHDR(&mh);
            ch->cmsg_level = SOL_SOCKET;
            ch->cmsg_type = SCM_RIGHTS;
            ch->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(ch), &c->out_fd, sizeof(int));
            n = sendmsg(c->pub.rc.fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                close(c->out_fd);
                c->out_fd = -1;
            }
        } else {
            n = send(c->pub.rc.fd, c->out + c->out_off, c->out_len - c->out_off,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    }
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = 0;
    return 1;
}

static void serve_blocking(rpc_server_t *s, conn_t *c, xm_msg_t *msg)
{
    xm_msg_t rep = XMEM__MSG__INIT;
    char why[512] = "";
    bool close_after = false;
    xm_status_t status = s->o.ops->serve(s->o.arg, &c->pub, msg, false, 0, &rep, why,
                                         sizeof(why), &close_after);
    xm__metrics_request((unsigned)msg->body_case, status);
    if (!reply_seal(s, c, msg->seq, status, why, &rep, close_after)) c->dead = true;
    proto_msg_free(msg);
    /* send what the socket takes now: the reply must not wait for the loop to wake up (a
     * cross-CPU wake-up costs 20-25 us here); the loop flushes any rest, or finds it broken */
    if (!c->dead && !close_after && c->out != NULL) out_push(c);
}

static void *worker_main(void *arg)
{
    rpc_server_t *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (s->jobs == NULL && !s->stopping) pthread_cond_wait(&s->job_cond, &s->lock);
        if (s->jobs == NULL) break;
        conn_t *c = s->jobs;
        s->jobs = c->qnext;
        if (s->jobs == NULL) s->jobs_tail = &s->jobs;
        pthread_mutex_unlock(&s->lock);
        xm_msg_t *msg = c->job;
        c->job = NULL;
        serve_blocking(s, c, msg);
        conn_return(c);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static void job_push(rpc_server_t *s, conn_t *c, xm_msg_t *msg)
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

static xm_status_t admit(void *arg, const rpc_conn_t *rc, const char **why_p)
{
    conn_t *c = arg;
    xm_status_t status = rpc_admission_take(&c->server->admission, rc->principal, why_p);
    c->admitted = status == XM_OK;
    return status;
}

static void *handshake_main(void *arg)
{
    conn_t *c = arg;
    const rpc_server_opts_t *o = &c->server->o;
    const char *why = NULL;
    c->hs_ok = rpc_handshake_server(&c->pub.rc, o->keyring, o->identity, o->welcome, admit, c,
                                    o->timeout_ms, &why) == XM_OK;
    if (c->hs_ok) {
        atomic_fetch_add_explicit(&xm__rpc_metrics.sessions, 1, memory_order_relaxed);
        xm__metrics_inc(&xm__rpc_metrics.sessions_total);
    } else {
        xm__metrics_inc(&xm__rpc_metrics.handshake_failures);
    }
    if (!c->hs_ok) {
        xm_log_warn("connection from %s%s%s: handshake failed: %s", c->pub.peer,
                    c->pub.rc.principal[0] ? " as " : "", c->pub.rc.principal,
                    why != NULL ? why : "?");
    } else if (o->log_sessions) {
        xm_log_info("connection from %s: %s authenticated", c->pub.peer, c->pub.rc.principal);
    } else {
        xm_log_debug("connection from %s: %s authenticated", c->pub.peer, c->pub.rc.principal);
    }
    c->last_active_ns = xm__now_ns();
    conn_return(c);
    return NULL;
}

/* ---- connections (loop thread) ------------------------------------------------- */

static bool ep_set(rpc_server_t *s, conn_t *c, int op, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    return epoll_ctl(s->ep, op, c->pub.rc.fd, &ev) == 0;
}

/* The earliest time c is to be looked at by the sweep; NEVER: none. */
static uint64_t conn_deadline(rpc_server_t *s, const conn_t *c)
{
    uint64_t limit = (uint64_t)s->o.timeout_ms * 1000000ull, t = NEVER;
    if (c->frame_start_ns != 0) t = c->frame_start_ns + limit;
    if (c->out_since_ns != 0 && c->out_since_ns + limit < t) t = c->out_since_ns + limit;
    if (s->o.idle_ms != 0 && !c->pub.keep && c->in_len == 0 && c->out == NULL && !c->in_round) {
        uint64_t idle = c->last_active_ns + (uint64_t)s->o.idle_ms * 1000000ull;
        if (idle < t) t = idle;
    }
    return t;
}

static void note_deadline(rpc_server_t *s, const conn_t *c)
{
    uint64_t t = conn_deadline(s, c);
    if (t < s->next_check_ns) s->next_check_ns = t;
}

static void conn_close(rpc_server_t *s, conn_t *c)
{
    if (c->state == CONN_READY) epoll_ctl(s->ep, EPOLL_CTL_DEL, c->pub.rc.fd, NULL);
    if (c->admitted) rpc_admission_put(&s->admission, c->pub.rc.principal);
    if (c->hs_ok) atomic_fetch_sub_explicit(&xm__rpc_metrics.sessions, 1, memory_order_relaxed);
    if (c->hs_ok && s->o.ops->conn_closed != NULL) s->o.ops->conn_closed(s->o.arg, &c->pub);
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
    rpc_conn_close(&c->pub.rc);
    if (c->out_fd >= 0) close(c->out_fd);
    if (c->pub.pass_fd >= 0) close(c->pub.pass_fd);
    free(c->in);
    free(c->out);
    free(c);
}

/*
 * Unauthenticated connections are capped twice, so that peers without a credential cannot
 * keep authenticated clients out by holding handshakes open until they time out: at most
 * half of max_conns in all, and at most an eighth of max_conns (no more than
 * PENDING_PER_SOURCE) from one source (an IP address; on the local socket, a uid) - so that
 * one flooding host leaves handshakes for others, and filling them takes several.
 */
#define PENDING_PER_SOURCE 32

/* The source of a connection: family, then the address (or uid) without the port. */
static void source_of(const struct sockaddr_storage *ss, int fd, bool local, uint8_t out[17])
{
    memset(out, 0, 17);
    if (local) {
        struct ucred uc;
        socklen_t ul = sizeof(uc);
        out[0] = AF_UNIX;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) == 0) memcpy(out + 1, &uc.uid, sizeof(uc.uid));
    } else if (ss->ss_family == AF_INET) {
        out[0] = AF_INET;
        memcpy(out + 1, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        out[0] = AF_INET6;
        memcpy(out + 1, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    }
}

/* Would one more handshake from source go over a cap? Loop thread, under s->lock. */
static const char *pending_over(rpc_server_t *s, const uint8_t source[17])
{
    uint32_t all = 0, same = 0;
    for (conn_t *c = s->conns; c != NULL; c = c->next) {
        if (c->state != CONN_HANDSHAKE) continue;
        all++;
        if (memcmp(c->source, source, 17) == 0) same++;
    }
    if (same >= XM_MAX(XM_MIN(s->o.max_conns / 8, (uint32_t)PENDING_PER_SOURCE), 1u)) return "too many unauthenticated connections from this source";
    if (all >= XM_MAX(s->o.max_conns / 2, 1u)) return "too many unauthenticated connections";
    return NULL;
}

static void conn_accept(rpc_server_t *s, int *lfd)
{
    for (;;) {
        struct sockaddr_storage ss;
        int fd = rpc_accept_paced(*lfd, &ss, &s->accept_paused_until);
        if (fd < 0) {
            if (s->accept_paused_until != 0) {
                /* stop watching the listener until the pause ends: the pending connection
                 * would make every epoll_wait return at once */
                struct epoll_event ev = {.events = 0, .data.ptr = lfd};
                epoll_ctl(s->ep, EPOLL_CTL_MOD, *lfd, &ev);
            }
            return;
        }
        uint8_t source[17];
        source_of(&ss, fd, lfd == &s->o.local_fd, source);
        pthread_mutex_lock(&s->lock);
        bool full = s->nconns >= s->o.max_conns;
        const char *over = full ? NULL : pending_over(s, source);
        pthread_mutex_unlock(&s->lock);
        if (full || over != NULL) {
            xm__metrics_inc(&xm__rpc_metrics.refused);
            char peer[128];
            rpc_peer_name(&ss, peer, sizeof(peer));
            uint64_t now = xm__now_ns();
            if (now - s->refused_log_ns > 1000000000ull) { /* a flood logs once a second */
                s->refused_log_ns = now;
                if (full) xm_log_warn("connection from %s refused: %u connections open", peer, s->o.max_conns);
                else xm_log_warn("connection from %s refused: %s", peer, over);
            }
            close(fd);
            continue;
        }
        conn_t *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->server = s;
        rpc_conn_init(&c->pub.rc, fd);
        c->pub.peer_ss = ss;
        c->state = CONN_HANDSHAKE;
        memcpy(c->source, source, sizeof(c->source));
        c->out_fd = c->pub.pass_fd = -1;
        c->pub.local = lfd == &s->o.local_fd;
        rpc_peer_name(&ss, c->pub.peer, sizeof(c->pub.peer));
        if (c->pub.local) {
            /* who it is comes from the handshake; the process is only logged */
            struct ucred uc;
            socklen_t ul = sizeof(uc);
            if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) == 0)
                snprintf(c->pub.peer, sizeof(c->pub.peer), "local pid %d uid %u", (int)uc.pid,
                         (unsigned)uc.uid);
            else
                snprintf(c->pub.peer, sizeof(c->pub.peer), "local");
        }
        pthread_mutex_lock(&s->lock);
        if (pthread_create(&c->hs_thread, NULL, handshake_main, c) != 0) {
            pthread_mutex_unlock(&s->lock);
            xm_log_warn("connection from %s refused: cannot start a thread", c->pub.peer);
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
static bool conn_fill(rpc_server_t *s, conn_t *c)
{
    const size_t max = XM_FRAME_HEADER + rpc_frame_max(XM_FRAME_MAX_REQUEST);
    for (;;) {
        if (c->in_len == c->in_cap) {
            size_t cap = c->in_cap == 0 ? 4096 : c->in_cap * 2;
            if (cap > max) cap = max;
            if (cap == c->in_cap) return true; /* a whole frame fits: parse it first */
            uint8_t *in = realloc(c->in, cap);
            if (in == NULL) return false;
            c->in = in;
            c->in_cap = cap;
        }
        ssize_t n = recv(c->pub.rc.fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n > 0) {
            if (c->in_len == 0) c->frame_start_ns = xm__now_ns();
            c->in_len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
        if (n == 0 && c->in_len > 0) {
            xm_log_warn("connection from %s (%s) dropped: truncated frame", c->pub.peer,
                        c->pub.rc.principal);
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
                    c->pub.peer, c->pub.rc.principal);
        return -1;
    }
    if (c->in_len < XM_FRAME_HEADER + len) return 0;
    const char *why = NULL;
    xm_status_t status = rpc_open(&c->pub.rc, c->in + XM_FRAME_HEADER, len, XM_FRAME_MAX_REQUEST,
                                  msg_p, &why);
    c->last_active_ns = xm__now_ns();
    c->in_len -= XM_FRAME_HEADER + len;
    memmove(c->in, c->in + XM_FRAME_HEADER + len, c->in_len);
    c->frame_start_ns = c->in_len > 0 ? c->last_active_ns : 0;
    if (status != XM_OK) {
        xm_log_warn("connection from %s (%s) dropped: %s", c->pub.peer, c->pub.rc.principal,
                    why != NULL ? why : xm_status_str(status));
        return -1;
    }
    return 1;
}

/* Send what is pending; false: broken, or done and the session is to end. */
static bool conn_flush(rpc_server_t *s, conn_t *c)
{
    int sent = out_push(c);
    if (sent < 0) return false;
    if (sent == 0) {
        if (c->out_since_ns == 0) {
            c->out_since_ns = xm__now_ns();
            ep_set(s, c, EPOLL_CTL_MOD, EPOLLOUT); /* no more requests until it drains */
        }
        return true;
    }
    if (c->out_since_ns != 0) {
        c->out_since_ns = 0;
        ep_set(s, c, EPOLL_CTL_MOD, EPOLLIN);
    }
    return !c->close_after_out;
}

/* ---- rounds ------------------------------------------------------------------------ */

/* A request may be buffered on c already (no readiness event will say so). */
static void mark_ready(rpc_server_t *s, conn_t *c)
{
    if (c->on_ready) return;
    c->on_ready = true;
    c->rnext = s->ready;
    s->ready = c;
}

/* Add a READY connection's next whole frame to the round; false: close it. */
static bool round_take(rpc_server_t *s, conn_t *c, size_t *n)
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

/* Serve a round: what needs no waiting here between the round hooks, the rest on workers. */
static void round_serve(rpc_server_t *s, size_t n)
{
    const rpc_srv_ops_t *ops = s->o.ops;
    if (ops->round_begin != NULL) ops->round_begin(s->o.arg);
    for (size_t i = 0; i < n; i++) {
        slot_t *sl = &s->slots[i];
        s->failed[i] = false;
        sl->status = ops->serve(s->o.arg, &sl->c->pub, sl->msg, true, i, &sl->rep, sl->why,
                                sizeof(sl->why), &sl->close_after);
    }
    const char *fail_why = NULL;
    xm_status_t fail_status = XM_OK;
    if (ops->round_end != NULL) fail_status = ops->round_end(s->o.arg, n, s->failed, &fail_why);
    s->stats.rounds++;
    s->stats.served += n;
    for (size_t i = 0; i < n; i++) {
        slot_t *sl = &s->slots[i];
        conn_t *c = sl->c;
        c->in_round = false;
        if (sl->status == XM_ERR_AGAIN) {
            s->stats.worked++;
            if (s->nworkers == 0) {
                serve_blocking(s, c, sl->msg); /* no workers: the loop waits */
                if (c->dead || !conn_flush(s, c)) {
                    conn_close(s, c);
                    continue;
                }
            } else {
                epoll_ctl(s->ep, EPOLL_CTL_DEL, c->pub.rc.fd, NULL);
                job_push(s, c, sl->msg);
                continue;
            }
        } else {
            if (s->failed[i]) {
                if (ops->reply_cleanup != NULL) ops->reply_cleanup(s->o.arg, &sl->rep);
                sl->rep = (xm_msg_t)XMEM__MSG__INIT;
                sl->status = fail_status != XM_OK ? fail_status : XM_ERR_IO;
                snprintf(sl->why, sizeof(sl->why), "%s", fail_why != NULL ? fail_why : "");
            }
            xm__metrics_request((unsigned)sl->msg->body_case, sl->status);
            bool ok = reply_seal(s, c, sl->msg->seq, sl->status, sl->why, &sl->rep, sl->close_after);
            proto_msg_free(sl->msg);
            if (!ok || !conn_flush(s, c)) {
                conn_close(s, c);
                continue;
            }
        }
        if (c->out == NULL && c->in_len >= XM_FRAME_HEADER) {
            mark_ready(s, c); /* the client sent its next request already */
        }
        note_deadline(s, c);
    }
}

/* ---- the loop ---------------------------------------------------------------------- */

static bool revoked(rpc_server_t *s, conn_t *c)
{
    if (rpc_keyring_valid(s->o.keyring, c->pub.rc.principal, c->pub.rc.cred_id)) return false;
    xm_log_warn("connection from %s (%s) dropped: its credential was revoked", c->pub.peer,
                c->pub.rc.principal);
    return true;
}

/* Take back connections that handshake threads and workers finished with. */
static void take_returned(rpc_server_t *s)
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
        bool handshake = c->state == CONN_HANDSHAKE;
        if (handshake) pthread_join(c->hs_thread, NULL);
        bool bad = (handshake && !c->hs_ok) || c->dead || (c->recheck && revoked(s, c));
        c->recheck = false;
        c->state = CONN_READY;
        if (bad) {
            conn_close(s, c); /* not in the epoll set: conn_close's DEL fails harmlessly */
            continue;
        }
        if (!ep_set(s, c, EPOLL_CTL_ADD, EPOLLIN)) {
            xm_log_warn("connection from %s: epoll: %m", c->pub.peer);
            conn_close(s, c);
            continue;
        }
        if (c->out != NULL && !conn_flush(s, c)) { /* a worker's reply */
            conn_close(s, c);
            continue;
        }
        if (c->out == NULL) mark_ready(s, c);
        note_deadline(s, c);
    }
}

/* Drop READY connections past a deadline (and, with revoke, those whose credential was
 * revoked; the others are checked when they come back); find the next deadline. */
static void sweep(rpc_server_t *s, uint64_t now, bool revoke)
{
    uint64_t limit = (uint64_t)s->o.timeout_ms * 1000000ull;
    conn_t *drop = NULL;
    uint64_t next = NEVER;
    pthread_mutex_lock(&s->lock);
    for (conn_t *c = s->conns; c != NULL; c = c->next) {
        if (c->state != CONN_READY) {
            c->recheck |= revoke;
            continue;
        }
        bool in = c->frame_start_ns != 0 && now - c->frame_start_ns > limit;
        bool out = c->out_since_ns != 0 && now - c->out_since_ns > limit;
        uint64_t t = conn_deadline(s, c);
        bool idle = !in && !out && t <= now && s->o.idle_ms != 0 && c->frame_start_ns == 0 &&
                    c->out_since_ns == 0;
        if (in || out || idle) {
            if (idle) {
                xm_log_info("connection from %s (%s) closed: idle for %u ms", c->pub.peer,
                            c->pub.rc.principal, s->o.idle_ms);
            } else {
                xm_log_warn("connection from %s (%s) dropped: %s", c->pub.peer, c->pub.rc.principal,
                            in ? "request frame not done in time" : "reply not taken in time");
            }
        } else if (!(revoke && revoked(s, c))) {
            if (t < next) next = t;
            continue;
        }
        c->qnext = drop;
        drop = c;
    }
    pthread_mutex_unlock(&s->lock);
    s->next_check_ns = next;
    while (drop != NULL) {
        conn_t *c = drop;
        drop = c->qnext;
        conn_close(s, c);
    }
}

xm_status_t rpc_server_create(const rpc_server_opts_t *opts, rpc_server_t **s_p)
{
    rpc_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return XM_ERR_NO_MEMORY;
    s->o = *opts;
    s->ep = s->wake_fd = -1;
    s->jobs_tail = &s->jobs;
    s->next_check_ns = NEVER;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->job_cond, NULL);
    rpc_admission_init(&s->admission, opts->max_conns_per_tenant);
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->ep < 0 || s->wake_fd < 0) {
        xm_log_error("epoll/eventfd: %m");
        goto err;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &s->o.listen_fd};
    struct epoll_event wev = {.events = EPOLLIN, .data.ptr = &s->wake_fd};
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &s->o.local_fd};
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->o.listen_fd, &ev) != 0 ||
        epoll_ctl(s->ep, EPOLL_CTL_ADD, s->wake_fd, &wev) != 0 ||
        (s->o.local_fd > 0 && epoll_ctl(s->ep, EPOLL_CTL_ADD, s->o.local_fd, &lev) != 0)) {
        xm_log_error("epoll: %m");
        goto err;
    }
    if (opts->workers > 0) {
        s->workers = calloc(opts->workers, sizeof(*s->workers));
        if (s->workers == NULL) goto err;
    }
    for (; s->nworkers < opts->workers; s->nworkers++) {
        if (pthread_create(&s->workers[s->nworkers], NULL, worker_main, s) != 0) {
            xm_log_error("cannot start worker threads");
            goto err;
        }
    }
    *s_p = s;
    return XM_OK;
err:
    rpc_server_destroy(s);
    return XM_ERR_IO;
}

/* Milliseconds to sleep until `until` (NEVER: -1, forever). */
static int sleep_ms(uint64_t now, uint64_t until)
{
    if (until == NEVER) return -1;
    if (until <= now) return 0;
    uint64_t ms = (until - now + 999999) / 1000000;
    return ms > 60000 ? 60000 : (int)ms;
}

void rpc_server_run(rpc_server_t *s, int stop_fd, int hup_fd)
{
    int watch_fd = s->o.keyring->watch_fd;
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &stop_fd};
    struct epoll_event hev = {.events = EPOLLIN, .data.ptr = &hup_fd};
    struct epoll_event kev = {.events = EPOLLIN, .data.ptr = &watch_fd};
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, stop_fd, &sev) != 0 ||
        (hup_fd >= 0 && epoll_ctl(s->ep, EPOLL_CTL_ADD, hup_fd, &hev) != 0) ||
        (watch_fd >= 0 && epoll_ctl(s->ep, EPOLL_CTL_ADD, watch_fd, &kev) != 0)) {
        xm_log_error("epoll: %m");
        return;
    }
    const uint64_t spin_ns = (uint64_t)s->o.spin_us * 1000ull;
    const uint64_t tick_ns = (uint64_t)s->o.tick_ms * 1000000ull;
    uint64_t next_tick = s->o.ops->tick != NULL && tick_ns != 0 ? xm__now_ns() + tick_ns : NEVER;
    uint64_t last_active = 0;
    bool stop = false;
    while (!stop) {
        size_t n = 0;
        /* connections with a request buffered already go first, without waiting */
        while (s->ready != NULL && n < RPC_SRV_ROUND_MAX) {
            conn_t *c = s->ready;
            s->ready = c->rnext;
            c->on_ready = false;
            if (c->state == CONN_READY && !round_take(s, c, &n)) conn_close(s, c);
        }
        uint64_t now = xm__now_ns();
        uint64_t until = s->next_check_ns < next_tick ? s->next_check_ns : next_tick;
        if (s->accept_paused_until != 0 && s->accept_paused_until < until)
            until = s->accept_paused_until;
        int timeout = n > 0 || s->ready != NULL || now - last_active < spin_ns ? 0
                                                                               : sleep_ms(now, until);
        struct epoll_event evs[RPC_SRV_ROUND_MAX];
        int ne = n < RPC_SRV_ROUND_MAX ? epoll_wait(s->ep, evs, (int)(RPC_SRV_ROUND_MAX - n), timeout)
                                       : 0;
        if (ne < 0 && errno != EINTR) {
            xm_log_error("epoll_wait: %m");
            break;
        }
        /* the registry first: a peer that connects right after its credential was issued
         * is checked against the reloaded registry */
        bool reload = false, revoke = false;
        for (int i = 0; i < ne; i++) {
            void *p = evs[i].data.ptr;
            if (p == &hup_fd) {
                struct signalfd_siginfo si;
                while (read(hup_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                }
                xm__log_reopen(); /* logrotate moved the file: lines go to a new one */
                xm_log_info("SIGHUP: log file reopened, reloading the tenant registry");
                reload = true;
            } else if (p == &watch_fd) {
                reload = true;
            }
        }
        if (reload) revoke = rpc_keyring_refresh(s->o.keyring);
        for (int i = 0; i < ne; i++) {
            void *p = evs[i].data.ptr;
            if (p == &stop_fd) {
                stop = true;
            } else if (p == &hup_fd || p == &watch_fd) {
                continue;
            } else if (p == &s->o.listen_fd || p == &s->o.local_fd) {
                conn_accept(s, p);
            } else if (p == &s->wake_fd) {
                take_returned(s);
            } else {
                conn_t *c = p; /* READY: only READY connections are in the set */
                bool ok = true;
                if (c->out != NULL) {
                    ok = (evs[i].events & (EPOLLERR | EPOLLHUP)) == 0 && conn_flush(s, c);
                    if (ok && c->out == NULL) ok = round_take(s, c, &n);
                } else {
                    ok = conn_fill(s, c) && round_take(s, c, &n);
                }
                if (!ok) {
                    conn_close(s, c);
                    continue;
                }
                note_deadline(s, c);
            }
        }
        if (n > 0) {
            round_serve(s, n);
            last_active = xm__now_ns();
        }
        now = xm__now_ns();
        /* after the events: a sweep may close connections an event above still named */
        if (revoke) sweep(s, now, true);
        if (s->accept_paused_until != 0 && now >= s->accept_paused_until) {
            s->accept_paused_until = 0;
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &s->o.listen_fd};
            epoll_ctl(s->ep, EPOLL_CTL_MOD, s->o.listen_fd, &ev);
            if (s->o.local_fd > 0) {
                struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &s->o.local_fd};
                epoll_ctl(s->ep, EPOLL_CTL_MOD, s->o.local_fd, &lev);
            }
        }
        if (now >= next_tick) {
            s->o.ops->tick(s->o.arg);
            next_tick = now + tick_ns;
        }
        if (now >= s->next_check_ns) sweep(s, now, false);
    }
    epoll_ctl(s->ep, EPOLL_CTL_DEL, stop_fd, NULL);
    if (hup_fd >= 0) epoll_ctl(s->ep, EPOLL_CTL_DEL, hup_fd, NULL);
    if (watch_fd >= 0) epoll_ctl(s->ep, EPOLL_CTL_DEL, watch_fd, NULL);
}

void rpc_server_stats(rpc_server_t *s, rpc_server_stats_t *st)
{
    *st = s->stats;
}

void rpc_server_destroy(rpc_server_t *s)
{
    if (s == NULL) return;
    /* wake and stop the workers and handshakes; every connection comes back or is ours */
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->job_cond);
    for (conn_t *c = s->conns; c != NULL; c = c->next) shutdown(c->pub.rc.fd, SHUT_RDWR);
    pthread_mutex_unlock(&s->lock);
    for (uint32_t i = 0; i < s->nworkers; i++) pthread_join(s->workers[i], NULL);
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
    free(s->workers);
    pthread_cond_destroy(&s->job_cond);
    pthread_mutex_destroy(&s->lock);
    rpc_admission_cleanup(&s->admission);
    free(s);
}
