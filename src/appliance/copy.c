/* Region copy, appliance to appliance (docs/region-copy.md): the source appliance pushes a
 * region's bytes into a region on another appliance with one-sided writes from an initiator
 * endpoint of its own, in a worker thread per copy; the control loop only starts copies and
 * reports their state.
 *
 * Security: the session's tenant must be able to open the source region for reading (checked
 * by appl_region_open), the target key is the caller's capability (the target's provider
 * checks it on every write), the target data address must be a unicast IPv4 socket address
 * where something listens, and copies are bounded per tenant and per appliance, so the
 * appliance moves no more for a caller than the caller could move itself. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rdma/fi_errno.h>

#include "../common/common.h"
#include "appliance.h"

#define COPY_DEPTH_MAX 16                /* writes in flight: at most */
#define COPY_CHUNK_MIN (64ull << 10)
#define COPY_CHUNK_MAX (16ull << 20)
#define COPY_WRITE_TIMEOUT_NS (30ull * 1000000000ull) /* one write unacknowledged this long */
#define COPY_CONNECT_NS (5ull * 1000000000ull) /* the provider keeps refusing posts this long */
#define COPY_KEEP_FINISHED 64u           /* finished copies kept for their status */

typedef struct copy_slot {
    uint64_t off, len;                   /* len 0: free */
    uint64_t posted_ns;
} copy_slot_t;

/* One copy. The worker thread owns everything but the fields marked (lock): the table's
 * lock guards those. */
typedef struct appl_copy {
    uint64_t id;
    char tenant[XM_NAME_MAX + 1];
    uint64_t region;                     /* source region id */
    void *window;                        /* its window when the copy started */
    uint64_t total;
    uint8_t addr[XM_FABRIC_ADDR_MAX];
    size_t addr_len;
    uint64_t target_region, key, offset, chunk;
    pthread_t thread;
    bool joined;
    /* (lock) */
    uint64_t done, copied;
    int state;                           /* APPL_COPY_* */
    xm_status_t error;
    char why[256];
    bool cancel;
    struct appl_copy *next;
    appl_copies_t *owner;
} appl_copy_t;

struct appl_copies {
    pthread_mutex_t lock;                /* guards the list and the (lock) fields */
    appl_regions_t *regions;
    char provider[64];
    uint64_t default_chunk;
    int depth;                           /* writes in flight per copy */
    uint32_t max_running, max_per_tenant;
    uint64_t next_id;
    appl_copy_t *head;
};

xm_status_t appl_copies_create(appl_regions_t *t, const char *provider, appl_copies_t **c_p)
{
    appl_copies_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return XM_ERR_NO_MEMORY;
    pthread_mutex_init(&c->lock, NULL);
    c->regions = t;
    snprintf(c->provider, sizeof(c->provider), "%s", provider);
    c->default_chunk = 1ull << 20; /* 1M-4M measured: 1M as fast or faster (docs/performance.md) */
    c->max_running = APPL_COPY_MAX_RUNNING;
    c->max_per_tenant = APPL_COPY_MAX_PER_TENANT;
    const char *env = getenv("XMEM_COPY_CHUNK");
    uint64_t v;
    if (env != NULL && xm_parse_size(env, &v) == XM_OK && v >= COPY_CHUNK_MIN && v <= COPY_CHUNK_MAX)
        c->default_chunk = v;
    c->depth = 8;
    env = getenv("XMEM_COPY_DEPTH");
    if (env != NULL && atoi(env) >= 1 && atoi(env) <= COPY_DEPTH_MAX) c->depth = atoi(env);
    rpc_random(&c->next_id, sizeof(c->next_id));
    c->next_id = (c->next_id >> 16) | 1; /* not guessable from another tenant's ids */
    *c_p = c;
    return XM_OK;
}

static void copy_finish(appl_copy_t *cp, xm_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void copy_finish(appl_copy_t *cp, xm_status_t status, const char *fmt, ...)
{
    pthread_mutex_lock(&cp->owner->lock);
    if (cp->state == APPL_COPY_RUNNING) {
        cp->state = status == XM_OK ? APPL_COPY_DONE : APPL_COPY_FAILED;
        cp->error = status;
        if (fmt != NULL) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(cp->why, sizeof(cp->why), fmt, ap);
            va_end(ap);
        }
    }
    pthread_mutex_unlock(&cp->owner->lock);
    if (status == XM_OK) {
        xm_log_info("copy %llx of region %llu done (%llu bytes written)", (unsigned long long)cp->id,
                    (unsigned long long)cp->region, (unsigned long long)cp->copied);
    } else {
        xm_log_warn("copy %llx of region %llu failed at %llu: %s", (unsigned long long)cp->id,
                    (unsigned long long)cp->region, (unsigned long long)cp->done, cp->why);
    }
}

/* Is the source region still the one the copy started on? Table lock held. */
static appl_region_t *source_locked(appl_copy_t *cp)
{
    appl_region_t *r = NULL;
    HASH_FIND(hh_id, cp->owner->regions->by_id, &cp->region, sizeof(cp->region), r);
    return r != NULL && r->window == cp->window ? r : NULL;
}

/* The next run of data at or after off in region r: [*start, *end) (both total when none).
 * Holes (never written, or punched) read as zeros and are skipped. Table lock held. */
static void next_data(appl_regions_t *t, appl_region_t *r, uint64_t off, uint64_t total,
                      uint64_t *start, uint64_t *end)
{
    *start = *end = total;
    /* its own memfd, or a file region's file: both map at offset 0 */
    int fd = r->memfd >= 0 ? r->memfd : r->file_fd;
    if (fd >= 0) {
        off_t d = lseek(fd, (off_t)off, SEEK_DATA);
        if (d < 0) {
            if (errno != ENXIO) *start = off, *end = total; /* cannot tell: copy it */
            return;
        }
        off_t h = lseek(fd, d, SEEK_HOLE);
        *start = XM_MIN((uint64_t)d, total);
        *end = h < 0 ? total : XM_MIN((uint64_t)h, total);
        return;
    }
    /* a window on the pool file: its extents are scattered there */
    uint64_t es = t->pool->extent_size;
    for (uint64_t e = off / es; e < r->nextents && e * es < total; e++) {
        uint64_t in = e == off / es ? off % es : 0;
        off_t base = (off_t)((uint64_t)r->extents[e] * es);
        off_t d = lseek(t->pool->fd, base + (off_t)in, SEEK_DATA);
        if (d < 0 && errno != ENXIO) {
            d = base + (off_t)in; /* cannot tell: copy it */
        }
        if (d < 0 || d >= base + (off_t)es) continue;
        off_t h = lseek(t->pool->fd, d, SEEK_HOLE);
        if (h < 0 || h > base + (off_t)es) h = base + (off_t)es;
        *start = XM_MIN(e * es + (uint64_t)(d - base), total);
        *end = XM_MIN(e * es + (uint64_t)(h - base), total);
        return;
    }
}

/* Does something listen at the target's data address? Refused or unreachable: no. */
static bool target_listens(const struct sockaddr_in *sin, int wait_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return true;
    bool ok = true;
    if (connect(fd, (const struct sockaddr *)sin, sizeof(*sin)) != 0) {
        if (errno != EINPROGRESS) {
            ok = false;
        } else {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int err = 0;
            socklen_t elen = sizeof(err);
            if (poll(&p, 1, wait_ms) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0)
                ok = err == 0;
        }
    }
    close(fd);
    return ok;
}

static bool cancelled(appl_copy_t *cp)
{
    pthread_mutex_lock(&cp->owner->lock);
    bool c = cp->cancel;
    pthread_mutex_unlock(&cp->owner->lock);
    return c;
}

/* done: everything below the oldest write still in flight (or below the cursor). */
static void publish(appl_copy_t *cp, const copy_slot_t *slots, uint64_t cursor, uint64_t copied)
{
    uint64_t done = cursor;
    for (int i = 0; i < COPY_DEPTH_MAX; i++) {
        if (slots[i].len != 0 && slots[i].off < done) done = slots[i].off;
    }
    pthread_mutex_lock(&cp->owner->lock);
    if (done > cp->done) cp->done = done;
    cp->copied = copied;
    pthread_mutex_unlock(&cp->owner->lock);
}

/* Why a write failed, as the user should read it. */
static void write_failed(appl_copy_t *cp, const struct sockaddr_in *sin, xm_status_t st, int err)
{
    char a[INET_ADDRSTRLEN + 8];
    inet_ntop(AF_INET, &sin->sin_addr, a, sizeof(a));
    snprintf(a + strlen(a), sizeof(a) - strlen(a), ":%u", ntohs(sin->sin_port));
    if (!target_listens(sin, 500)) {
        copy_finish(cp, XM_ERR_DISCONNECTED, "target appliance %s is unreachable (its data endpoint "
                    "refused the connection: gone or restarted)", a);
    } else if (st == XM_ERR_ACCESS || st == XM_ERR_DISCONNECTED) {
        /* a target that still listens but dropped the connection refused an access: over tcp
         * it closes the connection of a peer whose write it refused, so with several writes
         * in flight the first failure seen may be the lost connection, not the refusal */
        copy_finish(cp, XM_ERR_ACCESS, "target appliance %s refused the write (wrong key for "
                    "region %llu, no write right, the region too small or destroyed)", a,
                    (unsigned long long)cp->target_region);
    } else {
        copy_finish(cp, st, "write to target appliance %s failed: %s", a,
                    err != 0 ? fi_strerror(err) : xm_status_str(st));
    }
}

static void *copy_main(void *arg)
{
    appl_copy_t *cp = arg;
    appl_copies_t *cs = cp->owner;
    appl_regions_t *t = cs->regions;
    struct sockaddr_in sin;
    memcpy(&sin, cp->addr, sizeof(sin));
    if (!target_listens(&sin, 2000)) {
        copy_finish(cp, XM_ERR_CONNECT, "nothing listens at the target data address %s:%u",
                    inet_ntoa(sin.sin_addr), ntohs(sin.sin_port));
        return NULL;
    }
    net_fabric_t fab;
    if (net_fabric_open(cs->provider, NET_ROLE_INITIATOR, NULL, NULL, &fab) != XM_OK) {
        copy_finish(cp, XM_ERR_TRANSPORT, "cannot open a %s endpoint for the copy", cs->provider);
        return NULL;
    }
    fi_addr_t peer;
    if (net_peer_insert(&fab, cp->addr, cp->addr_len, NULL, &peer) != XM_OK) {
        copy_finish(cp, XM_ERR_INVALID, "cannot resolve the target's data address");
        net_fabric_close(&fab);
        return NULL;
    }
    copy_slot_t slots[COPY_DEPTH_MAX];
    memset(slots, 0, sizeof(slots));
    uint64_t cursor = cp->offset, copied = 0, refused_since = 0;
    int inflight = 0;
    uint64_t run_start = 0, run_end = 0; /* the data run the cursor is in */
    bool failed = false;
    while (!failed && (cursor < cp->total || inflight > 0)) {
        if (cancelled(cp)) {
            copy_finish(cp, XM_ERR_INVALID, "cancelled");
            failed = true;
            break;
        }
        /* post while there is room */
        while (inflight < cs->depth && cursor < cp->total) {
            if (cursor >= run_end) {
                pthread_mutex_lock(&t->lock);
                appl_region_t *r = source_locked(cp);
                if (r != NULL) next_data(t, r, cursor, cp->total, &run_start, &run_end);
                pthread_mutex_unlock(&t->lock);
                if (r == NULL) {
                    copy_finish(cp, XM_ERR_NOT_FOUND, "source region %llu was destroyed during "
                                "the copy", (unsigned long long)cp->region);
                    failed = true;
                    break;
                }
                cursor = run_start;
                if (cursor >= cp->total) break;
            }
            uint64_t len = XM_MIN(cp->chunk, run_end - cursor);
            int i = 0;
            while (slots[i].len != 0) i++;
            xm_status_t st = net_post_write(&fab, peer, (uint8_t *)cp->window + cursor, len, cursor,
                                            cp->key, &slots[i]);
            if (st == XM_ERR_AGAIN) {
                /* a full queue, or rxm still connecting (again and again to a dead peer) */
                uint64_t now = xm__now_ns();
                if (inflight == 0) {
                    if (refused_since == 0) refused_since = now;
                    if (now - refused_since > COPY_CONNECT_NS) {
                        write_failed(cp, &sin, XM_ERR_TIMEOUT, 0);
                        failed = true;
                    }
                }
                break;
            }
            if (st != XM_OK) {
                write_failed(cp, &sin, st, 0);
                failed = true;
                break;
            }
            refused_since = 0;
            slots[i] = (copy_slot_t){.off = cursor, .len = len, .posted_ns = xm__now_ns()};
            inflight++;
            cursor += len;
        }
        if (failed) break;
        net_completion_t c[COPY_DEPTH_MAX];
        int n = net_poll(&fab, c, COPY_DEPTH_MAX);
        if (n < 0) {
            write_failed(cp, &sin, XM_ERR_TRANSPORT, 0);
            failed = true;
            break;
        }
        bool freed = false;
        for (int k = 0; k < n; k++) {
            copy_slot_t *s = c[k].ctx;
            if (s == NULL || c[k].status != XM_OK) {
                if (!failed) write_failed(cp, &sin, s == NULL ? XM_ERR_DISCONNECTED : c[k].status,
                                          c[k].err);
                failed = true;
                continue;
            }
            copied += s->len;
            s->len = 0;
            inflight--;
            freed = true;
        }
        if (failed) break;
        if (freed) {
            /* what completed was read from the region while it was still the source (a destroy
             * swaps its window for zeros: then nothing completed after it counts) */
            pthread_mutex_lock(&t->lock);
            bool alive = source_locked(cp) != NULL;
            pthread_mutex_unlock(&t->lock);
            if (!alive) {
                copy_finish(cp, XM_ERR_NOT_FOUND, "source region %llu was destroyed during the copy",
                            (unsigned long long)cp->region);
                failed = true;
                break;
            }
            publish(cp, slots, cursor, copied);
        }
        uint64_t now = xm__now_ns();
        for (int i = 0; i < COPY_DEPTH_MAX; i++) {
            if (slots[i].len != 0 && now - slots[i].posted_ns > COPY_WRITE_TIMEOUT_NS) {
                write_failed(cp, &sin, XM_ERR_TIMEOUT, 0);
                failed = true;
                break;
            }
        }
        /* no yield while writes are in flight: progress is manual, so each poll moves the
         * transfers on, and a yield on a busy machine cost whole time slices (0.1 GB/s) */
    }
    /* closing the endpoint cancels what is still in flight: no buffer is read afterwards */
    net_fabric_close(&fab);
    if (!failed) {
        publish(cp, slots, cp->total, copied);
        copy_finish(cp, XM_OK, NULL);
    }
    return NULL;
}

/* Drop finished copies past the ones kept (oldest first: the list is newest first). Lock held. */
static void prune_locked(appl_copies_t *cs)
{
    uint32_t kept = 0;
    for (appl_copy_t **pp = &cs->head; *pp != NULL;) {
        appl_copy_t *cp = *pp;
        if (cp->state != APPL_COPY_RUNNING && cp->joined && ++kept > COPY_KEEP_FINISHED) {
            *pp = cp->next;
            free(cp);
            continue;
        }
        pp = &cp->next;
    }
}

/* Join the threads of finished copies. Lock held (the threads have left copy_finish). */
static void reap_locked(appl_copies_t *cs)
{
    for (appl_copy_t *cp = cs->head; cp != NULL; cp = cp->next) {
        if (cp->state != APPL_COPY_RUNNING && !cp->joined) {
            pthread_mutex_unlock(&cs->lock);
            pthread_join(cp->thread, NULL);
            pthread_mutex_lock(&cs->lock);
            cp->joined = true;
        }
    }
}

/* A target data address we may write to: a unicast IPv4 socket address (a wildcard one is
 * reached at the target's control host). */
static xm_status_t target_addr(const appl_copy_req_t *req, struct sockaddr_in *sin,
                               const char **why_p)
{
    if (req->addr_len != sizeof(*sin)) {
        *why_p = "the target data address is not an IPv4 socket address";
        return XM_ERR_INVALID;
    }
    memcpy(sin, req->addr, sizeof(*sin));
    if (sin->sin_family != AF_INET || sin->sin_port == 0) {
        *why_p = "the target data address is not an IPv4 socket address with a port";
        return XM_ERR_INVALID;
    }
    uint32_t a = ntohl(sin->sin_addr.s_addr);
    if (a == INADDR_ANY) {
        char host[256];
        const char *ctl = req->target_control != NULL ? req->target_control : "";
        const char *colon = strrchr(ctl, ':');
        size_t hl = colon != NULL ? (size_t)(colon - ctl) : 0;
        struct in_addr in;
        if (hl == 0 || hl >= sizeof(host)) {
            *why_p = "the target data address is a wildcard and no target control address was given";
            return XM_ERR_INVALID;
        }
        memcpy(host, ctl, hl);
        host[hl] = '\0';
        if (inet_pton(AF_INET, host, &in) != 1) {
            *why_p = "the target control address must be a numeric IPv4 HOST:PORT";
            return XM_ERR_INVALID;
        }
        sin->sin_addr = in;
        a = ntohl(in.s_addr);
    }
    if (a == INADDR_ANY || a == INADDR_BROADCAST || IN_MULTICAST(a) || (a >> 24) == 0 ||
        IN_EXPERIMENTAL(a)) {
        *why_p = "the target data address is not a unicast address";
        return XM_ERR_INVALID;
    }
    return XM_OK; /* whether something listens there: the worker asks (the loop never waits) */
}

xm_status_t appl_copy_start(appl_copies_t *cs, const char *tenant, const appl_copy_req_t *req,
                            appl_copy_state_t *st, const char **why_p)
{
    struct sockaddr_in sin;
    xm_status_t status = target_addr(req, &sin, why_p);
    if (status != XM_OK) return status;
    uint64_t chunk = req->chunk != 0 ? req->chunk : cs->default_chunk;
    if (chunk < COPY_CHUNK_MIN || chunk > COPY_CHUNK_MAX) {
        *why_p = "copy chunk must be 64K..16M";
        return XM_ERR_INVALID;
    }
    /* the caller must be able to read the source, exactly as a region open checks it */
    appl_desc_t d;
    status = appl_region_open(cs->regions, tenant, req->id, req->name, XM_ACCESS_READ, &d, why_p);
    if (status != XM_OK) return status;
    if (req->offset > d.size) {
        *why_p = "copy offset past the end of the source region";
        return XM_ERR_RANGE;
    }
    appl_copy_t *cp = calloc(1, sizeof(*cp));
    if (cp == NULL) return XM_ERR_NO_MEMORY;
    pthread_mutex_lock(&cs->regions->lock);
    appl_region_t *r = NULL;
    HASH_FIND(hh_id, cs->regions->by_id, &d.id, sizeof(d.id), r);
    if (r != NULL) cp->window = r->window;
    pthread_mutex_unlock(&cs->regions->lock);
    if (r == NULL) {
        free(cp);
        *why_p = "no such region";
        return XM_ERR_NOT_FOUND;
    }
    snprintf(cp->tenant, sizeof(cp->tenant), "%s", tenant);
    cp->region = d.id;
    cp->total = d.size;
    memcpy(cp->addr, &sin, sizeof(sin));
    cp->addr_len = sizeof(sin);
    cp->target_region = req->target_region;
    cp->key = req->key;
    cp->offset = req->offset;
    cp->done = req->offset;
    cp->chunk = chunk;
    cp->state = APPL_COPY_RUNNING;
    cp->owner = cs;

    pthread_mutex_lock(&cs->lock);
    reap_locked(cs);
    prune_locked(cs);
    uint32_t running = 0, mine = 0;
    for (appl_copy_t *o = cs->head; o != NULL; o = o->next) {
        if (o->state != APPL_COPY_RUNNING) continue;
        running++;
        mine += strcmp(o->tenant, tenant) == 0;
    }
    if (mine >= cs->max_per_tenant || running >= cs->max_running) {
        pthread_mutex_unlock(&cs->lock);
        free(cp);
        *why_p = mine >= cs->max_per_tenant ? "too many copies of this tenant are running"
                                            : "too many copies are running on this appliance";
        return XM_ERR_AGAIN;
    }
    cp->id = cs->next_id++;
    if (pthread_create(&cp->thread, NULL, copy_main, cp) != 0) {
        pthread_mutex_unlock(&cs->lock);
        free(cp);
        *why_p = "cannot start a copy thread";
        return XM_ERR_NO_MEMORY;
    }
    cp->next = cs->head;
    cs->head = cp;
    *st = (appl_copy_state_t){.id = cp->id, .done = cp->done, .total = cp->total,
                              .state = APPL_COPY_RUNNING};
    pthread_mutex_unlock(&cs->lock);
    xm_log_info("tenant %s started copy %llx of region %llu (%llu bytes from %llu) to region %llu "
                "at %s:%u", tenant, (unsigned long long)cp->id, (unsigned long long)cp->region,
                (unsigned long long)cp->total, (unsigned long long)cp->offset,
                (unsigned long long)cp->target_region, inet_ntoa(sin.sin_addr), ntohs(sin.sin_port));
    return XM_OK;
}

xm_status_t appl_copy_status(appl_copies_t *cs, const char *tenant, uint64_t id, bool cancel,
                             appl_copy_state_t *st, const char **why_p)
{
    pthread_mutex_lock(&cs->lock);
    appl_copy_t *cp = cs->head;
    while (cp != NULL && cp->id != id) cp = cp->next;
    /* another tenant's copy is not there for this one */
    if (cp == NULL || strcmp(cp->tenant, tenant) != 0) {
        pthread_mutex_unlock(&cs->lock);
        *why_p = "no such copy";
        return XM_ERR_NOT_FOUND;
    }
    if (cancel) cp->cancel = true;
    memset(st, 0, sizeof(*st));
    st->id = cp->id;
    st->done = cp->done;
    st->total = cp->total;
    st->copied = cp->copied;
    st->state = cp->state;
    st->error = cp->error;
    snprintf(st->why, sizeof(st->why), "%s", cp->why);
    pthread_mutex_unlock(&cs->lock);
    return XM_OK;
}

void appl_copies_destroy(appl_copies_t *cs)
{
    if (cs == NULL) return;
    pthread_mutex_lock(&cs->lock);
    for (appl_copy_t *cp = cs->head; cp != NULL; cp = cp->next) cp->cancel = true;
    pthread_mutex_unlock(&cs->lock);
    for (appl_copy_t *cp = cs->head; cp != NULL;) {
        appl_copy_t *next = cp->next;
        if (!cp->joined) pthread_join(cp->thread, NULL);
        free(cp);
        cp = next;
    }
    pthread_mutex_destroy(&cs->lock);
    free(cs);
}
