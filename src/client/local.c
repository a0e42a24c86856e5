/*
 * libxmem's side of the local transport (src/xfer/local.h): a region on an appliance of
 * this host is mapped into the process, and its I/O is loads and stores.
 *
 * XMEM_TRANSPORT picks it: tcp (never), local (wherever an appliance offers it; a failure
 * to map a region it offers is an error), auto (the default: local where it works, the
 * fabric otherwise). An appliance offers it when its Welcome names a local socket and the
 * boot id of this host (the same kernel: any network namespace or container of it that
 * sees the socket's path). File-pool regions stay on the fabric.
 *
 * A context has one local session (the rpc handshake, on the appliance's AF_UNIX socket)
 * per appliance; REGION_FD on it returns the region's memfd (read-only regions: a
 * read-only reopen), which is mapped MAP_SHARED and closed.
 *
 * The appliance retires a memfd it destroys or moves away from a revoked holder by
 * setting the word at the start of the page after its window (the trailer). After every
 * operation a mapping checks that word and its own generation; if either says the
 * operation may have hit a retired memfd, the region's fd is fetched again, mapped over the
 * same addresses (MAP_FIXED: the base never changes, so other threads never see a dangling
 * pointer), and the operation is redone: reads and writes are idempotent; an atomic whose
 * effect cannot be known fails with XM_ERR_IO. A region that is gone fails with the
 * appliance's reason.
 *
 * A dead appliance: its memfds live on in our mappings, but the region is gone for everyone
 * else (tcp clients fail, nothing will ever read what we write), so I/O on them must fail
 * too. Each session maps the appliance's liveness page (net_local_live_ok: a word the kernel
 * marks when xmemd ends, SIGKILL included), and every operation checks it before and after
 * touching the memory: once xmemd's death can be seen (waitpid), every operation fails with
 * XM_ERR_DISCONNECTED, and one that overlapped the death fails too (its write may be in the
 * dead copy only). An appliance without the page (an older xmemd) is checked by polling the
 * session for a hang-up, at most every LIVE_CHECK_NS (a death is then noticed within a
 * millisecond of operations, and remembered).
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/common.h"
#include "../xfer/local.h"
#include "client.h"
#include "local.h"

#define LIVE_CHECK_NS 1000000ull

typedef enum lmode { LMODE_AUTO, LMODE_TCP, LMODE_LOCAL } lmode_t;

/* An appliance's liveness page, mapped read-only; refs atomic (its session, its lmaps). */
typedef struct xm__llive {
    int refs;
    const uint32_t *word;
    size_t len;
    dev_t dev;                       /* which appliance process's page (a restart: another) */
    ino_t ino;
} xm__llive_t;

/* One AF_UNIX session to an appliance. lock guards conn and dead; refs is atomic. */
typedef struct xm__lsess {
    int refs;
    pthread_mutex_t lock;
    char addr[300];                  /* the appliance's control HOST:PORT */
    char path[NET_LOCAL_PATH_MAX];   /* "" : the appliance is not local */
    rpc_conn_t conn;
    bool dead;
    xm__llive_t *live;               /* the liveness page of the appliance it last reached */
    uint64_t last_check_ns;          /* atomic */
    const rpc_cred_t *cred;          /* the context's (sessions die with it, see put) */
    char tenant[XM_NAME_MAX + 1];
    uint32_t timeout_ms;
    struct xm__lsess *next;
} xm__lsess_t;

/* A mapped region or part. base and len never change; gen is even while stable. */
struct xm__lmap {
    int refs;                        /* atomic */
    uint8_t *base;
    size_t len;                      /* mapped bytes of data (the region's, page-rounded) */
    const uint64_t *trailer;         /* the retirement word */
    size_t trailer_len;
    xm__llive_t *live;               /* its appliance's liveness page (set at the first fetch,
                                      * never changed), NULL: an appliance without one */
    bool gone;                       /* atomic: found dead (without a liveness page) */
    uint64_t gen;                    /* atomic: +1 before and after a remap */
    pthread_mutex_t lock;            /* one refresh at a time */
    xm__lsess_t *sess;
    uint64_t id, key, size;
    xm_access_t access;
    char why[160];                   /* why the last refresh failed */
};

typedef struct xm__local {
    pthread_mutex_t lock;            /* guards sessions */
    lmode_t mode;
    xm__lsess_t *sessions;
    char boot_id[64], path[NET_LOCAL_PATH_MAX]; /* the context's own appliance's Welcome */
} xm__local_t;

static char boot_id_buf[NET_LOCAL_BOOT_ID_LEN + 1];

static void boot_id_read(void)
{
    if (net_local_boot_id(boot_id_buf) != XM_OK) boot_id_buf[0] = '\0';
}

/* Is an appliance whose host has boot_id on ours? */
static bool same_host(const char *boot_id)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, boot_id_read);
    return boot_id != NULL && boot_id[0] != '\0' && boot_id_buf[0] != '\0' &&
           strcmp(boot_id_buf, boot_id) == 0;
}

static xm__local_t *state(xm_ctx_h ctx)
{
    if (ctx->local_state != NULL) return ctx->local_state;
    xm__local_t *l = calloc(1, sizeof(*l));
    if (l == NULL) return NULL;
    pthread_mutex_init(&l->lock, NULL);
    const char *m = getenv("XMEM_TRANSPORT");
    l->mode = m == NULL || m[0] == '\0' || strcmp(m, "auto") == 0 ? LMODE_AUTO
              : strcmp(m, "tcp") == 0                             ? LMODE_TCP
              : strcmp(m, "local") == 0                           ? LMODE_LOCAL
                                                                  : LMODE_AUTO;
    if (m != NULL && m[0] != '\0' && strcmp(m, "auto") != 0 && strcmp(m, "tcp") != 0 &&
        strcmp(m, "local") != 0) {
        xm_log_warn("XMEM_TRANSPORT=%s: expected local, tcp or auto; using auto", m);
    }
    ctx->local_state = l;
    return l;
}

void xm__local_welcome(xm_ctx_h ctx, const Xmem__Welcome *w)
{
    xm__local_t *l = state(ctx);
    if (l == NULL) return;
    pthread_mutex_lock(&l->lock);
    snprintf(l->boot_id, sizeof(l->boot_id), "%s", w->boot_id != NULL ? w->boot_id : "");
    snprintf(l->path, sizeof(l->path), "%s", w->local_path != NULL ? w->local_path : "");
    pthread_mutex_unlock(&l->lock);
}

static void live_put(xm__llive_t *v)
{
    if (v == NULL || __atomic_sub_fetch(&v->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    munmap((void *)v->word, v->len);
    free(v);
}

static xm__llive_t *live_get(xm__llive_t *v)
{
    if (v != NULL) __atomic_add_fetch(&v->refs, 1, __ATOMIC_RELAXED);
    return v;
}

static void sess_put(xm__lsess_t *s)
{
    if (s == NULL || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    live_put(s->live);
    rpc_conn_close(&s->conn);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void xm__local_ctx_gone(xm_ctx_h ctx)
{
    xm__local_t *l = ctx->local_state;
    if (l == NULL) return;
    for (xm__lsess_t *s = l->sessions; s != NULL;) {
        xm__lsess_t *next = s->next;
        /* mappings may outlive the context: they keep the session, not the credential */
        pthread_mutex_lock(&s->lock);
        s->cred = NULL;
        pthread_mutex_unlock(&s->lock);
        sess_put(s);
        s = next;
    }
    pthread_mutex_destroy(&l->lock);
    free(l);
    ctx->local_state = NULL;
}

static xm_status_t sess_call_raw(xm__lsess_t *s, xm_msg_t *req, xm_msg_t **rep_p, int *fd_p,
                                 char *why, size_t whylen);
static void sess_live(xm__lsess_t *s);

/* Connect and authenticate s's session. s->lock held. */
static xm_status_t sess_connect(xm__lsess_t *s, char *why, size_t whylen)
{
    rpc_conn_close(&s->conn);
    if (s->cred == NULL) {
        snprintf(why, whylen, "the context was disconnected");
        return XM_ERR_DISCONNECTED;
    }
    int fd;
    xm_status_t status = net_local_connect(s->path, s->timeout_ms, &fd);
    if (status != XM_OK) {
        snprintf(why, whylen, "cannot connect to the local socket %s", s->path);
        return status;
    }
    rpc_conn_init(&s->conn, fd);
    xm_msg_t *w;
    status = rpc_handshake_client(&s->conn, s->cred, s->tenant, s->timeout_ms, &w, why, whylen);
    if (status != XM_OK) {
        rpc_conn_close(&s->conn);
        return status;
    }
    proto_msg_free(w);
    s->dead = false;
    __atomic_store_n(&s->last_check_ns, xm__now_ns(), __ATOMIC_RELAXED);
    return XM_OK;
}

/* (Re)open s's session, and map its appliance's liveness page. s->lock held. */
static xm_status_t sess_open(xm__lsess_t *s, char *why, size_t whylen)
{
    xm_status_t status = sess_connect(s, why, whylen);
    if (status != XM_OK) return status;
    sess_live(s);
    /* an appliance that dropped the session over the request: once more, without the page */
    return s->conn.fd >= 0 ? XM_OK : sess_connect(s, why, whylen);
}

/* The session to the appliance at addr whose Welcome said boot_id / path; NULL with *status_p
 * when it is not local or the session cannot be made. l->lock held. */
static xm__lsess_t *sess_get(xm_ctx_h ctx, xm__local_t *l, const char *addr, const char *boot_id,
                             const char *path, xm_status_t *status_p)
{
    for (xm__lsess_t *s = l->sessions; s != NULL; s = s->next) {
        if (strcmp(s->addr, addr) == 0) {
            *status_p = s->path[0] != '\0' ? XM_OK : XM_ERR_INVALID;
            return s->path[0] != '\0' ? s : NULL;
        }
    }
    xm__lsess_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        *status_p = XM_ERR_NO_MEMORY;
        return NULL;
    }
    s->refs = 1;
    pthread_mutex_init(&s->lock, NULL);
    rpc_conn_init(&s->conn, -1);
    snprintf(s->addr, sizeof(s->addr), "%s", addr);
    s->cred = &ctx->cred;
    snprintf(s->tenant, sizeof(s->tenant), "%s", ctx->tenant);
    s->timeout_ms = ctx->timeout_ms;
    if (same_host(boot_id) && path != NULL && path[0] != '\0') {
        snprintf(s->path, sizeof(s->path), "%s", path);
    }
    s->next = l->sessions;
    l->sessions = s; /* remembered also when not local: asked once */
    if (s->path[0] == '\0') {
        *status_p = XM_ERR_INVALID;
        return NULL;
    }
    char why[256];
    pthread_mutex_lock(&s->lock);
    *status_p = sess_open(s, why, sizeof(why));
    pthread_mutex_unlock(&s->lock);
    if (*status_p != XM_OK) {
        xm_log_debug("local transport to %s: %s", addr, why);
        s->dead = true; /* tried again at the next region */
    }
    return s;
}

/* One call on the session whose reply may bring a descriptor. s->lock held. */
static xm_status_t sess_call_fd(xm__lsess_t *s, xm_msg_t *req, xm_msg_t **rep_p, int *fd_p,
                                char *why, size_t whylen)
{
    *fd_p = -1;
    if (s->dead || s->conn.fd < 0) {
        xm_status_t st = sess_open(s, why, whylen);
        if (st != XM_OK) return st;
    }
    return sess_call_raw(s, req, rep_p, fd_p, why, whylen);
}

/* The same on an open session. */
static xm_status_t sess_call_raw(xm__lsess_t *s, xm_msg_t *req, xm_msg_t **rep_p, int *fd_p,
                                 char *why, size_t whylen)
{
    *fd_p = -1;
    uint64_t deadline = xm__now_ns() + (uint64_t)s->timeout_ms * 1000000ull;
    req->seq = ++s->conn.seq;
    xm_status_t status = rpc_send(&s->conn, req, deadline);
    uint8_t hdr[XM_FRAME_HEADER];
    size_t got = 0;
    int fd = -1;
    while (status == XM_OK && got < sizeof(hdr)) {
        int f;
        ssize_t n = net_local_recv_fd(s->conn.fd, hdr + got, sizeof(hdr) - got, &f);
        if (f >= 0) {
            if (fd < 0) fd = f;
            else close(f);
        }
        if (n > 0) {
            got += (size_t)n;
        } else if (n == 0) {
            status = XM_ERR_DISCONNECTED;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            uint64_t now = xm__now_ns();
            struct pollfd p = {.fd = s->conn.fd, .events = POLLIN};
            if (now >= deadline || poll(&p, 1, (int)((deadline - now) / 1000000 + 1)) == 0)
                status = XM_ERR_TIMEOUT;
        } else {
            status = XM_ERR_DISCONNECTED;
        }
    }
    size_t len = 0;
    uint8_t *body = NULL;
    if (status == XM_OK) status = proto_frame_len(hdr, rpc_frame_max(XM_FRAME_MAX_REPLY), &len);
    if (status == XM_OK) {
        body = malloc(len);
        status = body == NULL ? XM_ERR_NO_MEMORY : rpc_sock_xfer(s->conn.fd, body, len, false, deadline);
    }
    xm_msg_t *rep = NULL;
    const char *w = NULL;
    if (status == XM_OK) status = rpc_open(&s->conn, body, len, XM_FRAME_MAX_REPLY, &rep, &w);
    free(body);
    if (status == XM_OK && rep->seq != req->seq) {
        proto_msg_free(rep);
        status = XM_ERR_PROTOCOL;
    }
    if (status != XM_OK) {
        if (fd >= 0) close(fd);
        rpc_conn_close(&s->conn);
        s->dead = true;
        snprintf(why, whylen, "local session: %s", w != NULL ? w : xm_status_str(status));
        return status;
    }
    status = rpc_reply_status(rep, why, whylen);
    if (status != XM_OK) {
        if (fd >= 0) close(fd);
        proto_msg_free(rep);
        return status;
    }
    *rep_p = rep;
    *fd_p = fd;
    return XM_OK;
}

/* A freshly opened session: map its appliance's liveness page , which
 * replaces the one of an appliance it reached before (REGION_FD of NET_LOCAL_LIVE_ID). An appliance without one: s->live NULL
 * (liveness by polling the session). s->lock held. */
static void sess_live(xm__lsess_t *s)
{
    Xmem__RegionRef ref = XMEM__REGION_REF__INIT;
    ref.id = NET_LOCAL_LIVE_ID;
    ref.name = "";
    ref.access = XMEM__ACCESS__ACCESS_READ;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_FD;
    req.region_fd = &ref;
    int fd;
    char why[160];
    xm__llive_t *v = NULL;
    if (sess_call_raw(s, &req, &rep, &fd, why, sizeof(why)) == XM_OK) {
        bool ok = rep->body_case == XMEM__MSG__BODY_REGION_DESC &&
                  rep->region_desc->id == NET_LOCAL_LIVE_ID;
        proto_msg_free(rep);
        struct stat st;
        v = calloc(1, sizeof(*v));
        void *p = MAP_FAILED;
        if (ok && v != NULL && fd >= 0 && fstat(fd, &st) == 0 && st.st_size >= (off_t)sizeof(uint32_t) &&
            st.st_size <= (1 << 20)) {
            p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        }
        if (p != MAP_FAILED) {
            *v = (xm__llive_t){.refs = 1, .word = p, .len = (size_t)st.st_size, .dev = st.st_dev,
                               .ino = st.st_ino};
        } else {
            xm_log_debug("local transport: the appliance's liveness page is unusable");
            free(v);
            v = NULL;
        }
        if (fd >= 0) close(fd);
    } else {
        xm_log_debug("local transport: no liveness page (%s): polling the session instead", why);
    }
    live_put(s->live);
    s->live = v;
}

/* Ask for the region's descriptor and map it at m->base (NULL: anywhere, setting base).
 * m->lock held (or m not yet shared). */
static xm_status_t lmap_fetch(xm__lmap_t *m)
{
    uint64_t size = m->size;
    xm__lsess_t *s = m->sess;
    Xmem__RegionRef ref = XMEM__REGION_REF__INIT;
    ref.id = m->id;
    ref.name = "";
    ref.key = m->key;
    ref.access = (Xmem__Access)m->access;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_FD;
    req.region_fd = &ref;
    int fd;
    pthread_mutex_lock(&s->lock);
    xm_status_t status = sess_call_fd(s, &req, &rep, &fd, m->why, sizeof(m->why));
    xm__llive_t *live = status == XM_OK ? live_get(s->live) : NULL;
    pthread_mutex_unlock(&s->lock);
    if (status != XM_OK) return status;
    /* a mapping belongs to one appliance process: fetched again from another (a restart, whose
     * region of the same id is another region), it is gone */
    bool first = m->base == NULL;
    bool same = first || (live == NULL ? m->live == NULL
                                       : m->live != NULL && live->dev == m->live->dev &&
                                             live->ino == m->live->ino);
    if (first) m->live = live;
    else live_put(live);
    if (!same) {
        proto_msg_free(rep);
        if (fd >= 0) close(fd);
        snprintf(m->why, sizeof(m->why), "the appliance restarted: the region is gone with it");
        return XM_ERR_DISCONNECTED;
    }
    bool ok = rep->body_case == XMEM__MSG__BODY_REGION_DESC && fd >= 0 &&
              rep->region_desc->id == m->id && rep->region_desc->size >= size;
    proto_msg_free(rep);
    struct stat st;
    if (!ok || fstat(fd, &st) != 0 || st.st_blksize <= 0) {
        if (fd >= 0) close(fd);
        snprintf(m->why, sizeof(m->why), "the appliance sent no usable descriptor");
        return XM_ERR_PROTOCOL;
    }
    /* the memfd: the window (extents), then the trailer page (hugetlb: a huge page) */
    size_t blk = (size_t)st.st_blksize;
    size_t len = (size + blk - 1) / blk * blk;
    if ((uint64_t)st.st_size < len + blk) {
        close(fd);
        snprintf(m->why, sizeof(m->why), "the region's descriptor is smaller than the region");
        return XM_ERR_PROTOCOL;
    }
    int prot = PROT_READ | (m->access == XM_ACCESS_READ_WRITE ? PROT_WRITE : 0);
    int fixed = m->base != NULL ? MAP_FIXED : 0;
    void *p = mmap(m->base, len, prot, MAP_SHARED | fixed, fd, 0);
    void *t = p == MAP_FAILED ? MAP_FAILED
                              : mmap((void *)m->trailer, blk, PROT_READ, MAP_SHARED |
                                     (m->trailer != NULL ? MAP_FIXED : 0), fd,
                                     (off_t)st.st_size - (off_t)blk);
    int err = errno;
    close(fd);
    if (p == MAP_FAILED || t == MAP_FAILED) {
        if (p != MAP_FAILED && fixed == 0) munmap(p, len);
        snprintf(m->why, sizeof(m->why), "cannot map the region's descriptor: %s", strerror(err));
        return XM_ERR_IO;
    }
    m->base = p;
    m->len = len;
    m->trailer = t;
    m->trailer_len = blk;
    return XM_OK;
}

static void lmap_put(xm__lmap_t *m)
{
    if (m == NULL || __atomic_sub_fetch(&m->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    munmap(m->base, m->len);
    munmap((void *)m->trailer, m->trailer_len);
    live_put(m->live);
    sess_put(m->sess);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void xm__lmap_get(xm__lmap_t *m)
{
    if (m != NULL) __atomic_add_fetch(&m->refs, 1, __ATOMIC_RELAXED);
}

void xm__lmap_put(xm__lmap_t *m)
{
    lmap_put(m);
}

/* Map region id (or the part with key) of the appliance at addr. *m_p NULL: over the fabric. */
static xm_status_t local_map(xm_ctx_h ctx, const char *addr, const char *boot_id, const char *path,
                             uint64_t id, uint64_t key, uint64_t size, xm_access_t access,
                             xm__lmap_t **m_p)
{
    *m_p = NULL;
    xm__local_t *l = state(ctx);
    if (l == NULL || l->mode == LMODE_TCP) return XM_OK;
    pthread_mutex_lock(&l->lock);
    xm_status_t status;
    xm__lsess_t *s = sess_get(ctx, l, addr, boot_id, path, &status);
    if (s != NULL) __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&l->lock);
    if (s == NULL) return XM_OK; /* not on this host, or no local transport there */
    xm__lmap_t *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        sess_put(s);
        return XM_ERR_NO_MEMORY;
    }
    m->refs = 1;
    pthread_mutex_init(&m->lock, NULL);
    m->sess = s;
    m->id = id;
    m->key = key;
    m->access = access;
    m->size = size;
    status = lmap_fetch(m);
    if (status != XM_OK) {
        xm__ctx_error(ctx, status, "local transport, region %llu: %s", (unsigned long long)id,
                      m->why);
        xm_log_debug("local transport, region %llu: %s", (unsigned long long)id, m->why);
        live_put(m->live);
        sess_put(s);
        pthread_mutex_destroy(&m->lock);
        free(m);
        /* a file-pool region is reached over the fabric whatever the mode */
        return l->mode == LMODE_LOCAL && status != XM_ERR_INVALID ? status : XM_OK;
    }
    *m_p = m;
    return XM_OK;
}

xm_status_t xm__local_region(xm_ctx_h ctx, xm_region_h r)
{
    xm__local_t *l = state(ctx);
    if (l == NULL) return XM_OK;
    char addr[300], boot[64], path[NET_LOCAL_PATH_MAX];
    snprintf(addr, sizeof(addr), "%s:%s", ctx->host, ctx->port);
    pthread_mutex_lock(&l->lock);
    snprintf(boot, sizeof(boot), "%s", l->boot_id);
    snprintf(path, sizeof(path), "%s", l->path);
    pthread_mutex_unlock(&l->lock);
    xm__lmap_t *m;
    xm_status_t status = local_map(ctx, addr, boot, path, r->id, 0, r->size, r->access, &m);
    if (status != XM_OK) return status;
    r->lmap = m;
    r->local = m != NULL ? m->base : NULL;
    return XM_OK;
}

/* An allocation part's appliance: what its Welcome says (a session of its own, closed). */
static void part_welcome(xm_ctx_h ctx, const char *addr, char *boot, size_t blen, char *path,
                         size_t plen)
{
    boot[0] = path[0] = '\0';
    char host[256], port[16];
    int fd;
    if (xm__parse_hostport(addr, host, sizeof(host), port, sizeof(port)) != XM_OK ||
        rpc_connect(host, port, ctx->timeout_ms, &fd) != XM_OK) {
        return;
    }
    rpc_conn_t c;
    rpc_conn_init(&c, fd);
    xm_msg_t *w;
    char why[256];
    if (rpc_handshake_client(&c, &ctx->cred, ctx->tenant, ctx->timeout_ms, &w, why,
                             sizeof(why)) == XM_OK) {
        if (w->body_case == XMEM__MSG__BODY_WELCOME && !w->welcome->manager) {
            snprintf(boot, blen, "%s", w->welcome->boot_id != NULL ? w->welcome->boot_id : "");
            snprintf(path, plen, "%s", w->welcome->local_path != NULL ? w->welcome->local_path : "");
        }
        proto_msg_free(w);
    }
    rpc_conn_close(&c);
}

xm_status_t xm__local_alloc(xm_ctx_h ctx, xm_region_h a, const Xmem__AllocDesc *d)
{
    xm__local_t *l = state(ctx);
    if (l == NULL || l->mode == LMODE_TCP) return XM_OK;
    for (uint32_t i = 0; i < a->nparts; i++) {
        const char *addr = d->parts[i]->appliance;
        char boot[64] = "", path[NET_LOCAL_PATH_MAX] = "";
        pthread_mutex_lock(&l->lock);
        bool known = false;
        for (xm__lsess_t *s = l->sessions; s != NULL; s = s->next) known |= strcmp(s->addr, addr) == 0;
        pthread_mutex_unlock(&l->lock);
        if (!known) part_welcome(ctx, addr, boot, sizeof(boot), path, sizeof(path));
        xm__lmap_t *m;
        xm_status_t status = local_map(ctx, addr, boot, path, d->parts[i]->region_id,
                                       d->parts[i]->key, a->parts[i].size, a->access, &m);
        if (status != XM_OK) {
            xm__local_close(a);
            return status;
        }
        a->parts[i].lmap = m;
        a->parts[i].local = m != NULL ? m->base : NULL;
    }
    return XM_OK;
}

void xm__local_close(xm_region_h r)
{
    lmap_put(r->lmap);
    r->lmap = NULL;
    r->local = NULL;
    for (uint32_t i = 0; r->parts != NULL && i < r->nparts; i++) {
        lmap_put(r->parts[i].lmap);
        r->parts[i].lmap = NULL;
        r->parts[i].local = NULL;
    }
}

/* Has the appliance behind m been seen dead? No system call. */
static bool lmap_dead(xm__lmap_t *m)
{
    if (m->live != NULL) return !net_local_live_ok(m->live->word);
    return __atomic_load_n(&m->gone, __ATOMIC_RELAXED);
}

/* Is the appliance behind m still there? Its liveness page; without one, the session is
 * polled at most every LIVE_CHECK_NS, and a death is remembered. */
static xm_status_t lmap_alive(xm__lmap_t *m)
{
    if (lmap_dead(m)) return XM_ERR_DISCONNECTED;
    if (m->live != NULL) return XM_OK;
    xm__lsess_t *s = m->sess;
    uint64_t now = xm__now_ns();
    if (now - __atomic_load_n(&s->last_check_ns, __ATOMIC_RELAXED) < LIVE_CHECK_NS) return XM_OK;
    __atomic_store_n(&s->last_check_ns, now, __ATOMIC_RELAXED);
    pthread_mutex_lock(&s->lock);
    xm_status_t status = XM_OK;
    struct pollfd p = {.fd = s->conn.fd, .events = POLLRDHUP};
    if (s->conn.fd < 0 || (poll(&p, 1, 0) > 0 && p.revents != 0)) {
        /* closed: the appliance is gone, or ended an idle session: try once more */
        char why[256];
        status = sess_open(s, why, sizeof(why));
        if (status != XM_OK) {
            s->dead = true;
            status = XM_ERR_DISCONNECTED;
            __atomic_store_n(&m->gone, true, __ATOMIC_RELAXED);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return status;
}

/* The memfd m maps was retired (or remapped under g): fetch the region again. */
static xm_status_t lmap_refresh(xm__lmap_t *m, uint64_t g)
{
    pthread_mutex_lock(&m->lock);
    xm_status_t status = XM_OK;
    if (__atomic_load_n(&m->gen, __ATOMIC_ACQUIRE) == g &&
        __atomic_load_n(m->trailer, __ATOMIC_ACQUIRE) != 0) {
        __atomic_add_fetch(&m->gen, 1, __ATOMIC_SEQ_CST);
        status = lmap_fetch(m); /* over the same addresses; on failure the retired
                                 * mapping stays (zeros, marked) and m->why says why */
        __atomic_add_fetch(&m->gen, 1, __ATOMIC_SEQ_CST);
    }
    pthread_mutex_unlock(&m->lock);
    return status;
}

/* One segment of op at p. An aligned 8-byte read or write is one relaxed atomic load or
 * store: a word other threads or processes change with atomics (a counter, a lock) is then
 * never read or written with a plain access racing theirs (a data race, and memcpy may
 * tear it); larger ones are memcpy, as over the fabric (no atomicity promised). */
/*
 * ThreadSanitizer and the region's bytes: they are external memory that other processes
 * (the appliance's provider serving tcp clients, other local clients) read and write
 * where TSan cannot see, exactly as over the fabric, where it never sees the provider's
 * accesses at all. What this process's own threads do to the same bytes at once is the
 * application's business (each byte old or new, as documented), and the library's own
 * users of a mapping (a fault's fetch, xm_sync's write-back) are ordered through the
 * kernel (userfaultfd), which TSan cannot see either. So the bulk copies' accesses to the
 * region are not tracked; the caller's buffer is on the other side of the same memcpy
 * and goes untracked with it (interceptors cannot tell the sides apart).
 */
#if defined(__SANITIZE_THREAD__)
#define LOCAL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LOCAL_TSAN 1
#endif
#endif
#ifdef LOCAL_TSAN
void AnnotateIgnoreReadsBegin(const char *file, int line);
void AnnotateIgnoreReadsEnd(const char *file, int line);
void AnnotateIgnoreWritesBegin(const char *file, int line);
void AnnotateIgnoreWritesEnd(const char *file, int line);
static void region_copy(void *dst, const void *src, size_t len)
{
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    memcpy(dst, src, len);
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
}
#else
#define region_copy memcpy
#endif

static void seg_do(xm_op_t *op, uint8_t *p, uint64_t buf_off, uint64_t len)
{
    uint8_t *b = (uint8_t *)op->buf + buf_off;
    uint64_t w;
    switch (op->opcode) {
    case XM_OP_READ:
        if (len == 8 && ((uintptr_t)p & 7) == 0) {
            w = __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
            memcpy(b, &w, 8);
        } else {
            region_copy(b, p, len);
        }
        break;
    case XM_OP_WRITE:
        if (len == 8 && ((uintptr_t)p & 7) == 0) {
            memcpy(&w, b, 8);
            __atomic_store_n((uint64_t *)p, w, __ATOMIC_RELAXED);
        } else {
            region_copy(p, b, len);
        }
        break;
    case XM_OP_FETCH_ADD:
        op->result = __atomic_fetch_add((uint64_t *)p, op->operand, __ATOMIC_SEQ_CST);
        break;
    case XM_OP_COMPARE_SWAP: {
        uint64_t expected = op->compare;
        __atomic_compare_exchange_n((uint64_t *)p, &expected, op->operand, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST);
        op->result = expected;
        break;
    }
    }
}

/* The mapping of part (or of the plain region) behind op's segment, NULL: over the fabric. */
static xm__lmap_t *seg_map(xm_region_h r, uint32_t part)
{
    return r->parts != NULL ? r->parts[part].lmap : r->lmap;
}

bool xm__local_part(xm_region_h r, uint32_t part)
{
    return seg_map(r, part) != NULL;
}

bool xm__local_any(xm_region_h r)
{
    if (r->parts == NULL) return r->lmap != NULL;
    for (uint32_t i = 0; i < r->nparts; i++) {
        if (r->parts[i].lmap != NULL) return true;
    }
    return false;
}

#define PART_WORDS ((XM_ALLOC_PARTS_MAX + 63) / 64)

/*
 * Do the segments of op that lie in locally mapped parts, with the retirement and liveness
 * checks of the parts they touch (and no other: a dead appliance holding a part op does not
 * touch is no concern of op's).
 * A read or write that may have hit a retired memfd is redone; an atomic fails.
 */
static xm_status_t local_run(xm_op_t *op, const char **why_p)
{
    xm_region_h r = op->region;
    bool bulk = op->opcode == XM_OP_READ || op->opcode == XM_OP_WRITE;
    uint64_t total = bulk ? op->length : 8;
    xm__layout_t l = r->parts != NULL ? r->layout : xm__layout_single(r->size);
    xm__layout_iter_t it;
    xm__layout_seg_t seg;
    /* which local parts op touches, checked against what the mapping allows, whatever the
     * handle says: a handle's fields are the caller's memory, and a store past the mapping
     * or into a read-only one would fault */
    uint64_t touched[PART_WORDS] = {0};
    xm__layout_iter_init(&it, &l, op->offset, total, UINT64_MAX);
    while (xm__layout_iter_next(&it, &seg)) {
        xm__lmap_t *m = seg_map(r, seg.part);
        if (m == NULL) continue;
        if (seg.part_off > m->size || seg.len > m->size - seg.part_off ||
            (op->opcode != XM_OP_READ && m->access != XM_ACCESS_READ_WRITE)) {
            *why_p = "outside what the local mapping allows (range or rights)";
            return XM_ERR_ACCESS;
        }
        touched[seg.part / 64] |= 1ull << (seg.part % 64);
    }
    uint64_t gens[XM_ALLOC_PARTS_MAX];
    for (int attempt = 0; attempt < 8; attempt++) {
        /* the generations first, then the memory, then the retirement and liveness words */
        for (uint32_t w = 0; w < PART_WORDS; w++) {
            for (uint64_t bits = touched[w]; bits != 0; bits &= bits - 1) {
                uint32_t i = w * 64 + (uint32_t)__builtin_ctzll(bits);
                xm__lmap_t *m = seg_map(r, i);
                if (lmap_alive(m) != XM_OK) {
                    *why_p = "the appliance is gone (xmemd ended)";
                    return XM_ERR_DISCONNECTED;
                }
                gens[i] = __atomic_load_n(&m->gen, __ATOMIC_ACQUIRE);
                if ((gens[i] & 1) != 0 || __atomic_load_n(m->trailer, __ATOMIC_ACQUIRE) != 0) {
                    xm_status_t status = lmap_refresh(m, gens[i]);
                    if (status != XM_OK) {
                        *why_p = m->why;
                        return status;
                    }
                    gens[i] = __atomic_load_n(&m->gen, __ATOMIC_ACQUIRE);
                }
            }
        }
        xm__layout_iter_init(&it, &l, op->offset, total, UINT64_MAX);
        while (xm__layout_iter_next(&it, &seg)) {
            xm__lmap_t *m = seg_map(r, seg.part);
            if (m != NULL) seg_do(op, m->base + seg.part_off, seg.buf_off, seg.len);
        }
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        bool moved = false;
        for (uint32_t w = 0; w < PART_WORDS; w++) {
            for (uint64_t bits = touched[w]; bits != 0; bits &= bits - 1) {
                uint32_t i = w * 64 + (uint32_t)__builtin_ctzll(bits);
                xm__lmap_t *m = seg_map(r, i);
                if (lmap_dead(m)) {
                    /* acknowledged only if the appliance outlived the access */
                    *why_p = "the appliance died during the operation";
                    return XM_ERR_DISCONNECTED;
                }
                moved |= __atomic_load_n(m->trailer, __ATOMIC_ACQUIRE) != 0 ||
                         __atomic_load_n(&m->gen, __ATOMIC_ACQUIRE) != gens[i];
            }
        }
        if (!moved) return XM_OK;
        if (!bulk) {
            *why_p = "the region moved while the atomic ran (a revocation or destroy): its effect "
                     "is unknown";
            return XM_ERR_IO;
        }
        /* a read or write that may have hit a retired memfd: fetch again and redo */
    }
    *why_p = "the region kept moving";
    return XM_ERR_IO;
}

bool xm__local_op(xm_op_t *op)
{
    xm_region_h r = op->region;
    if (r->parts == NULL) {
        if (r->lmap == NULL) return false;
    } else {
        /* every part op touches must be mapped: otherwise the caller splits it */
        if (!xm__local_any(r)) return false;
        bool bulk = op->opcode == XM_OP_READ || op->opcode == XM_OP_WRITE;
        xm__layout_iter_t it;
        xm__layout_seg_t seg;
        xm__layout_iter_init(&it, &r->layout, op->offset, bulk ? op->length : 8, UINT64_MAX);
        while (xm__layout_iter_next(&it, &seg)) {
            if (r->parts[seg.part].lmap == NULL) return false;
        }
    }
    const char *why = "";
    xm_status_t status = local_run(op, &why);
    op->pending_ = 0;
    if (status != XM_OK) {
        xm__set_error("region %llu (local): %s", (unsigned long long)r->id, why);
    }
    __atomic_store_n(&op->status, status, __ATOMIC_RELEASE);
    return true;
}

xm_status_t xm__local_some(xm_op_t *op)
{
    const char *why = "";
    xm_status_t status = local_run(op, &why);
    if (status != XM_OK) {
        xm__set_error("region %llu (local part): %s", (unsigned long long)op->region->id, why);
    }
    return status;
}
