/* Rebuild and drain: restoring the redundancy of replicate allocations, appliance to
 * appliance (docs/resilience.md, "Rebuild").
 *
 * One thread. Each round it looks for one part to work on:
 *   - a part left `rebuilding` (a manager that stopped mid-rebuild, or a copy that failed):
 *     its copy is run again from the start into the same new region;
 *   - a part of a replicate allocation on an appliance down for rebuild_after_ms, or on a
 *     draining appliance: a new region is made on spare capacity (another failure domain
 *     where possible) and published as the part, `rebuilding`, generation bumped, in the
 *     table before any byte is copied.
 * Then, for that part:
 *   1. fence: every lock word of the lock home (and of the old region when its appliance is
 *      still up, for a drain) is raised to the free word of the new generation, waiting for
 *      each holder to let go. A client holding an older descriptor cannot take a lock any more
 *      (it sees the newer epoch, refreshes and learns the new part); every write from then on
 *      writes the new part too.
 *   2. the records of the lock home are read twice (A: versions, B: locks), the home's region is
 *      copied into the new one by the home's appliance (RegionCopy), the new part's record
 *      column is zeroed, and the records read again (C).
 *   3. every unit held in B or C, or whose version moved from A to C, was written during the
 *      copy and may hold an older byte on the new part: it is copied again, home to new part,
 *      under its lock (the manager takes it as a writer would).
 *   4. the part becomes ok (generation bumped), and a drained appliance's old region is
 *      destroyed. A lost appliance's old region is destroyed by reconciliation when it
 *      returns: it is no longer in the table (never read again).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "manager.h"

#define RB_TICK_MS 200            /* how often the thread looks when nothing woke it */
#define RB_POLL_MS 20             /* copy status polls */
#define RB_UNIT XM_LAYOUT_REPL_UNIT
#define RB_INFLIGHT 32            /* one-sided operations in flight */
#define RB_READ_MAX (1u << 20)    /* bytes per one-sided read */

/* ---- the manager's own data path (lock words, recopied units) ---------------- */

typedef struct rb_op {
    enum { RB_READ, RB_WRITE, RB_CSWAP } kind;
    fi_addr_t peer;
    uint64_t raddr, key;
    void *buf;
    size_t len;
    uint64_t compare, swap, result;
    xm_status_t status;
    bool done;
} rb_op_t;

typedef struct rb_peer {
    uint8_t fa[XM_FABRIC_ADDR_MAX];
    size_t fa_len;
    fi_addr_t fi;
    uint64_t region, key;
    char addr[XM_NAME_MAX + 1];
    uint32_t appl;
    bool missing;                /* the old part's region was gone from its appliance */
} rb_peer_t;

/* One job: a part being rebuilt, with what it needs copied out of the table. */
typedef struct rb_job {
    uint64_t alloc_id;
    uint32_t part;
    uint64_t gen;                /* the generation that published the part rebuilding */
    uint64_t part_size;
    xm__layout_t lay;
    rb_peer_t home, target, old; /* old: the region being moved off (drain), region 0: none */
    bool old_live;
    net_fabric_t fab;
    bool fab_open;
    uint64_t token;              /* the manager's lock token for this job */
    uint64_t lease_ns;
} rb_job_t;

static xm_status_t rb_run(mgr_t *m, rb_job_t *j, rb_op_t *ops, size_t n)
{
    size_t next = 0, done = 0, inflight = 0;
    uint64_t deadline = xm__now_ns() + (uint64_t)m->opts.timeout_ms * 1000000ull;
    for (size_t i = 0; i < n; i++) ops[i].done = false;
    while (done < n) {
        while (next < n && inflight < RB_INFLIGHT) {
            rb_op_t *o = &ops[next];
            xm_status_t st;
            if (o->kind == RB_READ) st = net_post_read(&j->fab, o->peer, o->buf, o->len, o->raddr, o->key, o);
            else if (o->kind == RB_WRITE) st = net_post_write(&j->fab, o->peer, o->buf, o->len, o->raddr, o->key, o);
            else st = net_post_cswap(&j->fab, o->peer, &o->swap, &o->compare, &o->result, o->raddr, o->key, o);
            if (st == XM_ERR_AGAIN) break;
            if (st != XM_OK) {
                o->status = st;
                o->done = true;
                done++;
            } else {
                inflight++;
            }
            next++;
        }
        net_completion_t c[RB_INFLIGHT];
        int got = net_poll(&j->fab, c, RB_INFLIGHT);
        if (got < 0) {
            net_fabric_close(&j->fab);
            j->fab_open = false;
            return XM_ERR_TRANSPORT;
        }
        for (int i = 0; i < got; i++) {
            rb_op_t *o = c[i].ctx;
            o->status = c[i].status;
            o->done = true;
            done++;
            inflight--;
        }
        if (got == 0) {
            if (xm__now_ns() > deadline) {
                /* operations still in flight name our buffers: the endpoint goes */
                net_fabric_close(&j->fab);
                j->fab_open = false;
                return XM_ERR_TIMEOUT;
            }
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (ops[i].status != XM_OK) return ops[i].status;
    }
    return XM_OK;
}

static xm_status_t rb_open(rb_job_t *j, const char *provider)
{
    if (net_fabric_open(provider, NET_ROLE_INITIATOR, NULL, NULL, &j->fab) != XM_OK)
        return XM_ERR_TRANSPORT;
    j->fab_open = true;
    rb_peer_t *ps[] = {&j->home, &j->target, &j->old};
    for (size_t i = 0; i < 3; i++) {
        if (ps[i]->region == 0) continue;
        if (net_peer_insert(&j->fab, ps[i]->fa, ps[i]->fa_len, NULL, &ps[i]->fi) != XM_OK)
            return XM_ERR_CONNECT;
    }
    return XM_OK;
}

/* Read the record column of peer p (count records of 32 bytes) into recs. */
static xm_status_t read_records(mgr_t *m, rb_job_t *j, const rb_peer_t *p, uint8_t *recs)
{
    uint64_t count = xm__layout_meta_count(&j->lay), base = xm__layout_meta_off(&j->lay, 0);
    uint64_t len = count * XM_LAYOUT_META_REC;
    size_t nops = (size_t)((len + RB_READ_MAX - 1) / RB_READ_MAX);
    rb_op_t *ops = calloc(nops ? nops : 1, sizeof(*ops));
    if (ops == NULL) return XM_ERR_NO_MEMORY;
    for (size_t i = 0; i < nops; i++) {
        uint64_t off = (uint64_t)i * RB_READ_MAX;
        ops[i] = (rb_op_t){.kind = RB_READ, .peer = p->fi, .raddr = base + off, .key = p->key,
                           .buf = recs + off, .len = (size_t)XM_MIN(RB_READ_MAX, len - off)};
    }
    xm_status_t st = rb_run(m, j, ops, nops);
    free(ops);
    return st;
}

static uint64_t rec_word(const uint8_t *recs, uint64_t u, uint32_t word)
{
    uint64_t v;
    memcpy(&v, recs + u * XM_LAYOUT_META_REC + word, 8);
    return v;
}

static void nap_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/*
 * Raise every lock word of p to the free word of j->gen: free words of older epochs are
 * swapped at once, held ones after their holder lets go; a lock whose token and beat stand
 * still for a lease is taken over (its writer died) and its unit marked dirty[u].
 */
static xm_status_t fence(mgr_t *m, rb_job_t *j, const rb_peer_t *p, bool *dirty)
{
    uint64_t count = xm__layout_meta_count(&j->lay);
    uint64_t want = xm__layout_lock_free(j->gen);
    uint8_t *recs = malloc(count * XM_LAYOUT_META_REC);
    uint64_t *seen_tok = calloc(count, 8), *seen_beat = calloc(count, 8), *seen_at = calloc(count, 8);
    rb_op_t *ops = calloc(count, sizeof(*ops));
    uint64_t *ou = calloc(count, 8);
    xm_status_t st = recs && seen_tok && seen_beat && seen_at && ops && ou ? XM_OK : XM_ERR_NO_MEMORY;
    uint64_t start = xm__now_ns();
    while (st == XM_OK) {
        st = read_records(m, j, p, recs);
        if (st != XM_OK) break;
        size_t n = 0;
        bool held = false;
        uint64_t now = xm__now_ns();
        for (uint64_t u = 0; u < count; u++) {
            uint64_t w = rec_word(recs, u, XM_LAYOUT_META_LOCK), e;
            if (xm__layout_lock_is_free(w, &e)) {
                if (e >= j->gen) continue;
            } else {
                held = true;
                uint64_t beat = rec_word(recs, u, XM_LAYOUT_META_BEAT);
                if (seen_tok[u] != w || seen_beat[u] != beat || seen_at[u] == 0) {
                    seen_tok[u] = w;
                    seen_beat[u] = beat;
                    seen_at[u] = now;
                    continue;
                }
                if (now - seen_at[u] < j->lease_ns) continue;
                xm_log_warn("allocation %llu: unit %llu locked by a writer that stopped (token "
                            "%016llx): taken over by the rebuild", (unsigned long long)j->alloc_id,
                            (unsigned long long)u, (unsigned long long)w);
                dirty[u] = true;
            }
            ops[n] = (rb_op_t){.kind = RB_CSWAP, .peer = p->fi, .key = p->key, .compare = w, .swap = want,
                               .raddr = xm__layout_meta_off(&j->lay, u) + XM_LAYOUT_META_LOCK};
            ou[n++] = u;
        }
        if (n == 0 && !held) break;
        if (n > 0) st = rb_run(m, j, ops, n);
        if (st != XM_OK) break;
        if (now - start > 4 * j->lease_ns + 10000000000ull) {
            st = XM_ERR_TIMEOUT;
            break;
        }
        if (held) nap_ms(1);
    }
    free(recs);
    free(seen_tok);
    free(seen_beat);
    free(seen_at);
    free(ops);
    free(ou);
    return st;
}

/* Lock unit u at the home as a writer does (CAS free word -> token), waiting for a holder;
 * a stale holder is taken over. */
static xm_status_t unit_lock(mgr_t *m, rb_job_t *j, uint64_t u, uint64_t *free_p)
{
    uint64_t raddr = xm__layout_meta_off(&j->lay, u);
    uint64_t tok = 0, beat = 0, seen_at = 0, cur = xm__layout_lock_free(j->gen);
    uint64_t start = xm__now_ns();
    for (;;) {
        rb_op_t o = {.kind = RB_CSWAP, .peer = j->home.fi, .key = j->home.key, .compare = cur,
                     .swap = j->token, .raddr = raddr + XM_LAYOUT_META_LOCK};
        xm_status_t st = rb_run(m, j, &o, 1);
        if (st != XM_OK) return st;
        uint64_t e;
        if (o.result == cur) break;
        if (xm__layout_lock_is_free(o.result, &e)) {
            cur = o.result;
            continue;
        }
        uint64_t b = 0;
        rb_op_t r = {.kind = RB_READ, .peer = j->home.fi, .key = j->home.key, .buf = &b, .len = 8,
                     .raddr = raddr + XM_LAYOUT_META_BEAT};
        if ((st = rb_run(m, j, &r, 1)) != XM_OK) return st;
        uint64_t now = xm__now_ns();
        if (o.result != tok || b != beat || seen_at == 0) {
            tok = o.result;
            beat = b;
            seen_at = now;
        } else if (now - seen_at > j->lease_ns) {
            cur = o.result; /* stale: taken over by the CAS of the next round */
            continue;
        }
        if (now - start > 4 * j->lease_ns + 10000000000ull) return XM_ERR_TIMEOUT;
        nap_ms(1);
    }
    *free_p = xm__layout_lock_free(j->gen);
    return XM_OK;
}

/* Copy unit u from the home to the new part under the unit's lock. */
static xm_status_t recopy_unit(mgr_t *m, rb_job_t *j, uint64_t u, uint8_t *buf)
{
    uint64_t fr;
    xm_status_t st = unit_lock(m, j, u, &fr);
    if (st != XM_OK) return st;
    uint64_t off = u * RB_UNIT;
    size_t len = (size_t)XM_MIN((uint64_t)RB_UNIT, j->lay.size - off);
    rb_op_t o = {.kind = RB_READ, .peer = j->home.fi, .key = j->home.key, .buf = buf, .len = len,
                 .raddr = off};
    st = rb_run(m, j, &o, 1);
    if (st == XM_OK) {
        o = (rb_op_t){.kind = RB_WRITE, .peer = j->target.fi, .key = j->target.key, .buf = buf,
                      .len = len, .raddr = off};
        st = rb_run(m, j, &o, 1);
    }
    rb_op_t un = {.kind = RB_CSWAP, .peer = j->home.fi, .key = j->home.key, .compare = j->token,
                  .swap = fr, .raddr = xm__layout_meta_off(&j->lay, u) + XM_LAYOUT_META_LOCK};
    xm_status_t ust = rb_run(m, j, &un, 1);
    return st != XM_OK ? st : ust;
}

/* Copy the home's region into the target's by the home's appliance; progress into the
 * allocation's move_done. */
static xm_status_t region_copy(mgr_t *m, rb_job_t *j, char *why, size_t whylen)
{
    Xmem__RegionRef src = XMEM__REGION_REF__INIT;
    src.id = j->home.region;
    src.name = "";
    src.tenant = ""; /* as the manager itself: every region's owner, and the copy is its own */
    Xmem__RegionCopy rc = XMEM__REGION_COPY__INIT;
    rc.source = &src;
    rc.target_fabric_addr = (ProtobufCBinaryData){j->target.fa_len, j->target.fa};
    rc.target_control = j->target.addr;
    rc.target_region = j->target.region;
    rc.target_key = j->target.key;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_REGION_COPY;
    req.region_copy = &rc;
    pthread_mutex_lock(&m->lock);
    mgr_appliance_t *ha = m->apps[j->home.appl];
    pthread_mutex_unlock(&m->lock);
    xm_status_t st = mgr_appl_call(m, ha, &req, &rep, why, whylen);
    if (st != XM_OK) return st;
    if (rep->body_case != XMEM__MSG__BODY_COPY_STATE) {
        proto_msg_free(rep);
        snprintf(why, whylen, "appliance %s sent no copy state", j->home.addr);
        return XM_ERR_PROTOCOL;
    }
    uint64_t id = rep->copy_state->id;
    proto_msg_free(rep);
    for (;;) {
        nap_ms(RB_POLL_MS);
        Xmem__CopyRef cr = XMEM__COPY_REF__INIT;
        cr.id = id;
        req = (xm_msg_t)XMEM__MSG__INIT;
        req.body_case = XMEM__MSG__BODY_COPY_STATUS;
        req.copy_status = &cr;
        st = mgr_appl_call(m, ha, &req, &rep, why, whylen);
        if (st != XM_OK) return st;
        if (rep->body_case != XMEM__MSG__BODY_COPY_STATE) {
            proto_msg_free(rep);
            snprintf(why, whylen, "appliance %s sent no copy state", j->home.addr);
            return XM_ERR_PROTOCOL;
        }
        const Xmem__CopyState *cs = rep->copy_state;
        uint32_t state = cs->state;
        pthread_mutex_lock(&m->lock);
        mgr_alloc_t *a = mgr_alloc_find(m, j->alloc_id);
        if (a != NULL) {
            a->move_done = cs->done;
            a->move_total = cs->total;
        }
        bool stop = m->rb_stop;
        pthread_mutex_unlock(&m->lock);
        if (state == 3) {
            snprintf(why, whylen, "copy from %s to %s failed: %s", j->home.addr, j->target.addr,
                     cs->why != NULL ? cs->why : "");
            st = cs->error != 0 ? (xm_status_t)cs->error : XM_ERR_IO;
            proto_msg_free(rep);
            return st;
        }
        proto_msg_free(rep);
        if (state == 2) return XM_OK;
        if (stop || a == NULL) {
            /* cancelled: a manager that stops resumes it at its next start */
            cr.cancel = true;
            if (mgr_appl_call(m, ha, &req, &rep, why, whylen) == XM_OK) proto_msg_free(rep);
            snprintf(why, whylen, "%s", a == NULL ? "the allocation was freed" : "the manager is stopping");
            return XM_ERR_AGAIN;
        }
    }
}

static void peer_of(const mgr_t *m, uint32_t appl, uint64_t region, uint64_t key, rb_peer_t *p)
{
    const mgr_appliance_t *ap = m->apps[appl];
    memset(p, 0, sizeof(*p));
    p->appl = appl;
    p->region = region;
    p->key = key;
    memcpy(p->fa, ap->fabric_addr, ap->fabric_addr_len);
    p->fa_len = ap->fabric_addr_len;
    snprintf(p->addr, sizeof(p->addr), "%s", ap->addr);
}

/*
 * Copy into part `part` of allocation id, which is rebuilding in the table: fence, copy,
 * recopy what raced, mark ok. old: the region the part was moved off, destroyed at the end
 * when its appliance is up (a drain); NULL when none.
 */
static xm_status_t rebuild_part(mgr_t *m, uint64_t id, uint32_t part, const rb_peer_t *old)
{
    char why[512] = "";
    rb_job_t *j = calloc(1, sizeof(*j));
    if (j == NULL) return XM_ERR_NO_MEMORY;
    char provider[16];
    pthread_mutex_lock(&m->lock);
    mgr_alloc_t *a = mgr_alloc_find(m, id);
    xm_status_t st = XM_OK;
    int home = -1;
    if (a == NULL || a->busy || part >= a->policy.width || a->parts[part].state != MGR_PART_REBUILDING ||
        !m->apps[a->parts[part].appl]->up) {
        st = XM_ERR_AGAIN;
    } else {
        for (uint32_t i = 0; i < a->policy.width && home < 0; i++) {
            const mgr_appliance_t *ap = m->apps[a->parts[i].appl];
            if (i != part && a->parts[i].state == MGR_PART_OK && !a->parts[i].missing && ap->up && ap->validated)
                home = (int)i;
        }
        const char *w;
        if (home < 0 || mgr_policy_layout(&a->policy, a->size, &j->lay, &w) != XM_OK) st = XM_ERR_AGAIN;
    }
    if (st == XM_OK) {
        a->moving = true;
        a->move_done = 0;
        a->move_total = a->parts[part].size;
        j->alloc_id = id;
        j->part = part;
        j->gen = a->generation;
        j->part_size = a->parts[part].size;
        peer_of(m, a->parts[home].appl, a->parts[home].region_id, a->parts[home].key, &j->home);
        peer_of(m, a->parts[part].appl, a->parts[part].region_id, a->parts[part].key, &j->target);
        if (old != NULL && old->region != 0 && m->apps[old->appl]->up && !old->missing) {
            j->old = *old;
            j->old_live = true;
        }
        snprintf(provider, sizeof(provider), "%s", m->apps[a->parts[home].appl]->provider);
    }
    pthread_mutex_unlock(&m->lock);
    if (st != XM_OK) {
        free(j);
        return st;
    }
    uint64_t lease_ms = 2ull * m->opts.timeout_ms + 500;
    j->lease_ns = XM_MAX(lease_ms, 2000ull) * 1000000ull;
    while (j->token == 0 || (j->token & XM_LAYOUT_LOCK_TAG_MASK) == XM_LAYOUT_LOCK_TAG) {
        if (getrandom(&j->token, sizeof(j->token), 0) != sizeof(j->token)) j->token = xm__now_ns() | 1;
    }
    uint64_t count = xm__layout_meta_count(&j->lay);
    bool *dirty = calloc(count + 1, sizeof(bool));
    uint8_t *ra = malloc(count * XM_LAYOUT_META_REC + 1), *rbk = malloc(count * XM_LAYOUT_META_REC + 1);
    uint8_t *rc = malloc(count * XM_LAYOUT_META_REC + 1), *unit = malloc(RB_UNIT);
    uint64_t t0 = xm__now_ns();
    if (dirty == NULL || ra == NULL || rbk == NULL || rc == NULL || unit == NULL) st = XM_ERR_NO_MEMORY;
    if (st == XM_OK) st = rb_open(j, provider);
    if (st != XM_OK) snprintf(why, sizeof(why), "cannot open a data endpoint over %s", provider);
    /* 1. fence writers of older descriptors, at the home and, for a drain, at the old part
     * (their lock home while they hold the old descriptor) */
    if (st == XM_OK && j->old_live) st = fence(m, j, &j->old, dirty);
    if (st == XM_OK) st = fence(m, j, &j->home, dirty);
    uint64_t tf = xm__now_ns();
    if (st != XM_OK && why[0] == '\0') snprintf(why, sizeof(why), "fencing the lock words: %s", xm_status_str(st));
    /* 2. A (versions), B (locks), copy, C */
    if (st == XM_OK) st = read_records(m, j, &j->home, ra);
    if (st == XM_OK) st = read_records(m, j, &j->home, rbk);
    if (st != XM_OK && why[0] == '\0') snprintf(why, sizeof(why), "reading the records: %s", xm_status_str(st));
    uint64_t t1 = xm__now_ns();
    if (st == XM_OK) st = region_copy(m, j, why, sizeof(why));
    uint64_t t2 = xm__now_ns();
    if (st == XM_OK) {
        /* the copied records are the home's: a new part's column starts free (it becomes a
         * lock home only when the parts before it are lost) */
        uint64_t len = count * XM_LAYOUT_META_REC, base = xm__layout_meta_off(&j->lay, 0);
        uint8_t *zero = calloc(1, XM_MIN(len, (uint64_t)RB_READ_MAX) + 1);
        for (uint64_t off = 0; zero != NULL && off < len && st == XM_OK; off += RB_READ_MAX) {
            rb_op_t o = {.kind = RB_WRITE, .peer = j->target.fi, .key = j->target.key, .buf = zero,
                         .len = (size_t)XM_MIN((uint64_t)RB_READ_MAX, len - off), .raddr = base + off};
            st = rb_run(m, j, &o, 1);
        }
        if (zero == NULL) st = XM_ERR_NO_MEMORY;
        free(zero);
        if (st == XM_OK) st = read_records(m, j, &j->home, rc);
        if (st != XM_OK) snprintf(why, sizeof(why), "after the copy: %s", xm_status_str(st));
    }
    /* 3. units written while the copy ran, again under their locks */
    uint64_t nd = 0;
    for (uint64_t u = 0; st == XM_OK && u < count; u++) {
        uint64_t e;
        bool raced = dirty[u] || !xm__layout_lock_is_free(rec_word(rbk, u, XM_LAYOUT_META_LOCK), &e) ||
                     !xm__layout_lock_is_free(rec_word(rc, u, XM_LAYOUT_META_LOCK), &e) ||
                     rec_word(ra, u, XM_LAYOUT_META_VER) != rec_word(rc, u, XM_LAYOUT_META_VER);
        if (!raced || u * RB_UNIT >= j->lay.size) continue;
        st = recopy_unit(m, j, u, unit);
        nd++;
        if (st != XM_OK) snprintf(why, sizeof(why), "copying unit %llu again: %s", (unsigned long long)u,
                                  xm_status_str(st));
    }
    uint64_t t3 = xm__now_ns();
    if (j->fab_open) net_fabric_close(&j->fab);
    free(dirty);
    free(ra);
    free(rbk);
    free(rc);
    free(unit);
    /* 4. ok */
    bool record = false;
    pthread_mutex_lock(&m->lock);
    a = mgr_alloc_find(m, id);
    if (a != NULL) {
        a->moving = false;
        if (st == XM_OK && !a->busy && a->parts[part].state == MGR_PART_REBUILDING &&
            a->parts[part].region_id == j->target.region && a->parts[part].appl == j->target.appl) {
            a->parts[part].state = MGR_PART_OK;
            a->generation++;
            a->busy = true;
            record = true;
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (record) {
        if (mgr_alloc_record(m, a) != XM_OK)
            xm_log_error("allocation %llu: part %u rebuilt but not recorded (rebuilt again at restart)",
                         (unsigned long long)id, part);
        mgr_alloc_release(m, a);
        double s = (double)(t2 - t1) / 1e9;
        xm_log_info("allocation %llu: part %u rebuilt on %s from %s: %llu bytes copied in %.3f s "
                    "(%.0f MiB/s), %llu units written meanwhile copied again; fence %.3f s, "
                    "recopy %.3f s, %.3f s in all",
                    (unsigned long long)id, part, j->target.addr, j->home.addr,
                    (unsigned long long)j->part_size, s, s > 0 ? (double)j->part_size / s / 1048576.0 : 0.0,
                    (unsigned long long)nd, (double)(tf - t0) / 1e9, (double)(t3 - t2) / 1e9,
                    (double)(t3 - t0) / 1e9);
        if (j->old_live) {
            char w[256];
            if (mgr_region_destroy(m, m->apps[j->old.appl], j->old.region, w, sizeof(w)) != XM_OK)
                xm_log_warn("allocation %llu: the drained region %llu on %s stays until reconciled: %s",
                            (unsigned long long)id, (unsigned long long)j->old.region, j->old.addr, w);
        }
    } else if (st != XM_OK) {
        xm_log_warn("allocation %llu: rebuilding part %u on %s: %s (tried again)",
                    (unsigned long long)id, part, j->target.addr, why);
    }
    free(j);
    return record ? XM_OK : st != XM_OK ? st : XM_ERR_AGAIN;
}

/*
 * Place a new region for part `part` of allocation id (on an appliance down past the grace,
 * or draining) and publish it rebuilding, generation bumped, before any byte moves.
 */
static xm_status_t move_part(mgr_t *m, uint64_t id, uint32_t part, rb_peer_t *old)
{
    char why[256];
    uint32_t appls[XM_ALLOC_PARTS_MAX];
    pthread_mutex_lock(&m->lock);
    mgr_alloc_t *a = mgr_alloc_find(m, id);
    if (a == NULL || a->busy || a->moving || part >= a->policy.width) {
        pthread_mutex_unlock(&m->lock);
        return XM_ERR_AGAIN;
    }
    for (uint32_t i = 0; i < a->policy.width; i++) appls[i] = a->parts[i].appl;
    uint64_t size = a->parts[part].size;
    int y = mgr_place_spare(m->apps, m->napps, appls, a->policy.width, part, size);
    if (y < 0) {
        pthread_mutex_unlock(&m->lock);
        return XM_ERR_NO_SPACE;
    }
    mgr_appliance_t *ya = m->apps[y];
    ya->reserved += mgr_extent_round(ya, size);
    a->moving = true;
    char owner[XM_NAME_MAX + 1], name[XM_NAME_MAX + 1];
    snprintf(owner, sizeof(owner), "%s", a->owner);
    snprintf(name, sizeof(name), "%s%llu.%u.%llu", MGR_REGION_PREFIX, (unsigned long long)id, part,
             (unsigned long long)a->generation + 1);
    uint32_t ngr = a->ngrants;
    mgr_grant_t *grants = ngr ? calloc(ngr, sizeof(*grants)) : NULL;
    if (grants != NULL) memcpy(grants, a->grants, ngr * sizeof(*grants));
    pthread_mutex_unlock(&m->lock);
    uint64_t rid = 0, key = 0;
    xm_status_t st = ngr > 0 && grants == NULL ? XM_ERR_NO_MEMORY
                     : mgr_region_create(m, ya, owner, size, name, &rid, &key, why, sizeof(why));
    /* grantees reach the new part as they reach the others */
    for (uint32_t g = 0; g < ngr && st == XM_OK; g++) {
        Xmem__RegionRef rr = XMEM__REGION_REF__INIT;
        rr.id = rid;
        rr.name = "";
        rr.tenant = "";
        Xmem__RegionGrant rg = XMEM__REGION_GRANT__INIT;
        rg.region = &rr;
        rg.tenant = grants[g].tenant;
        rg.access = (Xmem__Access)grants[g].access;
        xm_msg_t req = XMEM__MSG__INIT, *r;
        req.body_case = XMEM__MSG__BODY_REGION_GRANT;
        req.region_grant = &rg;
        st = mgr_appl_call(m, ya, &req, &r, why, sizeof(why));
        if (st == XM_OK) proto_msg_free(r);
    }
    free(grants);
    pthread_mutex_lock(&m->lock);
    a = mgr_alloc_find(m, id);
    /* busy: being freed or changed meanwhile; looked at again next round */
    bool gone = a == NULL || st != XM_OK || a->busy;
    if (gone) {
        uint64_t r = mgr_extent_round(ya, size);
        ya->reserved = ya->reserved > r ? ya->reserved - r : 0;
        if (a != NULL) a->moving = false;
        pthread_mutex_unlock(&m->lock);
        if (rid != 0) mgr_region_destroy(m, ya, rid, why, sizeof(why));
        if (st != XM_OK)
            xm_log_warn("allocation %llu: no new region for part %u on %s: %s", (unsigned long long)id,
                        part, ya->addr, why);
        return st != XM_OK ? st : XM_ERR_AGAIN;
    }
    mgr_part_t *p = &a->parts[part];
    mgr_appliance_t *xa = m->apps[p->appl];
    peer_of(m, p->appl, p->region_id, p->key, old);
    old->missing = p->missing;
    uint64_t r = mgr_extent_round(xa, p->size);
    xa->reserved = xa->reserved > r ? xa->reserved - r : 0;
    /* a down appliance that heartbeats again (it was stopped or cut off, not restarted) has
     * its regions compared with the table first: this part's old region is destroyed there,
     * never read */
    if (!xa->up) xa->validated = false;
    if (xa->nregions > 0) xa->nregions--;
    ya->nregions++;
    xm_log_info("allocation %llu: part %u moves from %s (%s) to %s: rebuilding", (unsigned long long)id,
                part, xa->addr, xa->up ? "draining" : "down", ya->addr);
    *p = (mgr_part_t){.appl = (uint32_t)y, .region_id = rid, .key = key, .size = size,
                      .state = MGR_PART_REBUILDING};
    a->generation++;
    a->busy = true;
    a->moving = false;
    pthread_mutex_unlock(&m->lock);
    st = mgr_alloc_record(m, a);
    mgr_alloc_release(m, a);
    if (st != XM_OK) xm_log_error("allocation %llu: its new part %u is not recorded", (unsigned long long)id, part);
    return XM_OK;
}

/* ---- the thread ---------------------------------------------------------------- */

typedef struct rb_pick {
    enum { PICK_NONE, PICK_RESUME, PICK_MOVE } kind;
    uint64_t id;
    uint32_t part;
} rb_pick_t;

/* The next part to work on. Lock held. */
static rb_pick_t pick(mgr_t *m, uint64_t started_ns, uint64_t *skip_until)
{
    uint64_t now = xm__now_ns(), grace = (uint64_t)m->opts.rebuild_after_ms * 1000000ull;
    /* a part left rebuilding by a manager that stopped is resumed once every up appliance was
     * reconciled: the region it was moved off (a drain; not in the table any more) is then
     * destroyed, so no writer of an older descriptor still locks there */
    bool settled = true;
    for (uint32_t i = 0; i < m->napps; i++) settled &= !m->apps[i]->up || m->apps[i]->validated;
    for (mgr_alloc_t *a = settled ? m->allocs : NULL; a != NULL; a = a->tnext) {
        if (a->busy || a->moving || a->policy.layout != MGR_LAYOUT_REPLICATE) continue;
        bool home = false;
        for (uint32_t i = 0; i < a->policy.width; i++) {
            const mgr_appliance_t *ap = m->apps[a->parts[i].appl];
            home |= a->parts[i].state == MGR_PART_OK && !a->parts[i].missing && ap->up && ap->validated;
        }
        for (uint32_t i = 0; i < a->policy.width && home; i++) {
            if (a->parts[i].state != MGR_PART_REBUILDING) continue;
            /* its new region went with its appliance (a restart): placed again elsewhere */
            if (a->parts[i].missing) return (rb_pick_t){PICK_MOVE, a->id, i};
            if (m->apps[a->parts[i].appl]->up) return (rb_pick_t){PICK_RESUME, a->id, i};
        }
    }
    if (now < *skip_until) return (rb_pick_t){PICK_NONE, 0, 0};
    for (mgr_alloc_t *a = m->allocs; a != NULL; a = a->tnext) {
        if (a->busy || a->moving || a->policy.layout != MGR_LAYOUT_REPLICATE) continue;
        bool rebuilding = false;
        uint32_t ok = 0;
        for (uint32_t i = 0; i < a->policy.width; i++) {
            const mgr_appliance_t *ap = m->apps[a->parts[i].appl];
            rebuilding |= a->parts[i].state == MGR_PART_REBUILDING;
            ok += a->parts[i].state == MGR_PART_OK && !a->parts[i].missing && ap->up && ap->validated;
        }
        if (rebuilding || ok == 0) continue; /* one part at a time; none to copy from: lost */
        for (uint32_t i = 0; i < a->policy.width; i++) {
            const mgr_appliance_t *ap = m->apps[a->parts[i].appl];
            uint64_t since = ap->down_since_ns != 0 ? ap->down_since_ns : started_ns;
            bool lost = (!ap->up || a->parts[i].missing) && m->opts.rebuild_after_ms > 0 &&
                        now - since >= grace;
            bool drain = ap->up && ap->draining && ok > (a->parts[i].state == MGR_PART_OK ? 1u : 0u);
            if (lost || drain) return (rb_pick_t){PICK_MOVE, a->id, i};
        }
    }
    return (rb_pick_t){PICK_NONE, 0, 0};
}

static void *rb_main(void *arg)
{
    mgr_t *m = arg;
    uint64_t started = xm__now_ns(), skip_until = 0;
    pthread_mutex_lock(&m->lock);
    while (!m->rb_stop) {
        rb_pick_t p = pick(m, started, &skip_until);
        if (p.kind == PICK_NONE) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += RB_TICK_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&m->rb_cond, &m->lock, &ts);
            continue;
        }
        pthread_mutex_unlock(&m->lock);
        rb_peer_t old = {0};
        xm_status_t st = XM_OK;
        if (p.kind == PICK_MOVE) {
            st = move_part(m, p.id, p.part, &old);
            if (st == XM_ERR_NO_SPACE) {
                xm_log_warn("allocation %llu: no spare appliance for part %u (another up appliance "
                            "without a part of it, with room): stays degraded", (unsigned long long)p.id,
                            p.part);
                skip_until = xm__now_ns() + 2000000000ull; /* look again later */
            }
        }
        /* tests: a window between publishing the part rebuilding and copying into it (a
         * manager killed there resumes the copy at its next start) */
        const char *stall = getenv("XMEM_TEST_REBUILD_STALL_MS");
        for (long ms = stall != NULL ? atol(stall) : 0; st == XM_OK && ms > 0 && !__atomic_load_n(&m->rb_stop, __ATOMIC_RELAXED); ms -= 10) nap_ms(10);
        if (st == XM_OK) st = rebuild_part(m, p.id, p.part, p.kind == PICK_MOVE ? &old : NULL);
        if (st != XM_OK && st != XM_ERR_NO_SPACE) nap_ms(RB_TICK_MS); /* not in a tight loop */
        pthread_mutex_lock(&m->lock);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

xm_status_t mgr_rebuild_start(mgr_t *m)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->rb_cond, &ca);
    pthread_condattr_destroy(&ca);
    m->rb_stop = false;
    if (pthread_create(&m->rb, NULL, rb_main, m) != 0) return XM_ERR_NO_MEMORY;
    m->rb_running = true;
    return XM_OK;
}

void mgr_rebuild_stop(mgr_t *m)
{
    if (!m->rb_running) return;
    pthread_mutex_lock(&m->lock);
    m->rb_stop = true;
    pthread_cond_signal(&m->rb_cond);
    pthread_mutex_unlock(&m->lock);
    pthread_join(m->rb, NULL);
    m->rb_running = false;
    pthread_cond_destroy(&m->rb_cond);
}

void mgr_rebuild_kick(mgr_t *m)
{
    if (!m->rb_running) return;
    pthread_mutex_lock(&m->lock);
    pthread_cond_signal(&m->rb_cond);
    pthread_mutex_unlock(&m->lock);
}

/* ---- xmem appliance drain | rm ---------------------------------------------------- */

/* The appliance named addr (its control HOST:PORT), not removed. Lock held. */
static mgr_appliance_t *named(mgr_t *m, const char *addr)
{
    return addr[0] != '\0' ? mgr_registry_get(m, addr, false) : NULL;
}

xm_status_t mgr_appliance_drain(mgr_t *m, const char *addr, bool stop, char *why, size_t whylen)
{
    pthread_mutex_lock(&m->lock);
    mgr_appliance_t *ap = named(m, addr);
    if (ap == NULL) {
        pthread_mutex_unlock(&m->lock);
        snprintf(why, whylen, "no appliance %s in the registry", addr);
        return XM_ERR_NOT_FOUND;
    }
    if (!stop && !ap->draining) xm_log_info("appliance %s: draining", ap->addr);
    ap->draining = !stop;
    pthread_mutex_unlock(&m->lock);
    mgr_rebuild_kick(m);
    return XM_OK;
}

/* Parts on appliance ap: movable (replicate) and not; the first allocation of each. Lock held. */
static void parts_on(mgr_t *m, const mgr_appliance_t *ap, bool copying, uint32_t *movable,
                     uint32_t *fixed, uint64_t *first_fixed, uint64_t *first_any)
{
    *movable = *fixed = 0;
    *first_fixed = *first_any = 0;
    for (mgr_alloc_t *a = m->allocs; a != NULL; a = a->tnext) {
        for (uint32_t i = 0; i < a->policy.width; i++) {
            /* a part moved off but still being copied counts until it is ok (the drained
             * appliance's region is its source until then) */
            if (copying && a->parts[i].state == MGR_PART_REBUILDING) {
                (*movable)++;
                continue;
            }
            if (a->parts[i].appl != ap->idx) continue;
            if (*first_any == 0) *first_any = a->id;
            if (a->policy.layout == MGR_LAYOUT_REPLICATE) {
                (*movable)++;
            } else {
                (*fixed)++;
                if (*first_fixed == 0) *first_fixed = a->id;
            }
        }
    }
}

xm_status_t mgr_appliance_drain_state(mgr_t *m, const char *addr, uint32_t *moving_p,
                                      uint32_t *unmovable_p, uint64_t *first_p)
{
    pthread_mutex_lock(&m->lock);
    mgr_appliance_t *ap = named(m, addr);
    if (ap == NULL) {
        pthread_mutex_unlock(&m->lock);
        return XM_ERR_NOT_FOUND;
    }
    uint64_t any;
    parts_on(m, ap, ap->draining, moving_p, unmovable_p, first_p, &any);
    pthread_mutex_unlock(&m->lock);
    return XM_OK;
}

xm_status_t mgr_appliance_remove(mgr_t *m, const char *addr, char *why, size_t whylen)
{
    pthread_mutex_lock(&m->lock);
    mgr_appliance_t *ap = named(m, addr);
    if (ap == NULL) {
        pthread_mutex_unlock(&m->lock);
        snprintf(why, whylen, "no appliance %s in the registry", addr);
        return XM_ERR_NOT_FOUND;
    }
    if (ap->up) {
        pthread_mutex_unlock(&m->lock);
        snprintf(why, whylen, "appliance %s is up: drain it (xmem appliance drain %s), stop it, then "
                 "remove it", addr, addr);
        return XM_ERR_INVALID;
    }
    uint32_t movable, fixed;
    uint64_t ff, any;
    parts_on(m, ap, false, &movable, &fixed, &ff, &any);
    if (movable + fixed > 0) {
        pthread_mutex_unlock(&m->lock);
        snprintf(why, whylen, "appliance %s still holds %u parts of allocations (allocation %llu "
                 "first): bring it back and drain it, wait for their rebuild elsewhere, or free "
                 "them", addr, movable + fixed, (unsigned long long)any);
        return XM_ERR_EXISTS;
    }
    /* forgotten: its entry stays (indexes are stable) under no address, unpinned */
    char old[XM_NAME_MAX + 1];
    snprintf(old, sizeof(old), "%s", ap->addr);
    ap->addr[0] = '\0';
    ap->pinned = false;
    ap->draining = false;
    memset(ap->identity, 0, sizeof(ap->identity));
    ap->capacity = 0;
    pthread_mutex_unlock(&m->lock);
    xm_status_t st = XM_OK;
    if (m->opts.store_ops->appliance_delete != NULL) st = m->opts.store_ops->appliance_delete(m->store, old);
    if (st != XM_OK) {
        snprintf(why, whylen, "appliance %s: forgotten, but not in the table (back at restart)", old);
        return st;
    }
    xm_log_info("appliance %s removed from the registry", old);
    return XM_OK;
}

xm_status_t mgr_appliance_request(mgr_t *m, const char *tenant, const xm_msg_t *msg, xm_msg_t *rep,
                                  char *why, size_t whylen)
{
    static Xmem__Empty empty = XMEM__EMPTY__INIT;
    /* what the cluster's administrator does: not a tenant's to move or forget appliances */
    if (strcmp(tenant, RPC_ROLE_ADMIN) != 0) {
        snprintf(why, whylen, "only the cluster's administrator (the cluster secret) drains or "
                 "removes appliances");
        return XM_ERR_PERM;
    }
    if (msg->body_case == XMEM__MSG__BODY_APPLIANCE_REMOVE) {
        xm_status_t st = mgr_appliance_remove(m, msg->appliance_remove->addr, why, whylen);
        if (st == XM_OK) {
            rep->body_case = XMEM__MSG__BODY_OK;
            rep->ok = &empty;
        }
        return st;
    }
    const Xmem__ApplianceRef *r = msg->appliance_drain;
    xm_status_t st = mgr_appliance_drain(m, r->addr, r->stop, why, whylen);
    if (st != XM_OK) return st;
    Xmem__DrainState *ds = calloc(1, sizeof(*ds));
    if (ds == NULL) return XM_ERR_NO_MEMORY;
    xmem__drain_state__init(ds);
    uint64_t first = 0;
    st = mgr_appliance_drain_state(m, r->addr, &ds->moving, &ds->unmovable, &first);
    ds->first_unmovable = first;
    if (st != XM_OK) {
        free(ds);
        snprintf(why, whylen, "no appliance %s in the registry", r->addr);
        return st;
    }
    rep->body_case = XMEM__MSG__BODY_DRAIN_STATE;
    rep->drain_state = ds;
    return XM_OK;
}
