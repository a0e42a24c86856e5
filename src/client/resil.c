/* libxmem resilient I/O: replicate:R and ec:K+M allocations (docs/resilience.md).
 *
 * Every operation here is split into sub-operations on single parts, posted together on
 * the context's data path (dp.h) and waited for together. A part whose sub-operations
 * keep failing is marked down in the handle for good (sticky): writes skip it from then
 * on, so its bytes may be stale and it is never read again through this handle.
 *
 * Replicate: writes lock their 64 KiB units at the lock home (the first part not down:
 * the primary while it lives), write every reachable copy in parallel, unlock. Reads go
 * to the first reachable copy. Atomics: lock the unit, read the word at the home,
 * compute, write it to every copy, unlock.
 *
 * EC: healthy reads read data pieces; a stripe with a needed piece down is read under
 * the seqlock of its parity parts' records and decoded from any k pieces. Writes lock
 * the stripe on its reachable parity parts (CAS, parity order), bump ver, note the piece
 * range they change, write data and parity (a full stripe encodes; a partial one applies
 * the delta to the old parity, or re-encodes the range when a touched data piece is
 * down), unlock. A stale lock (its beat unchanged for a lease) is taken over and the
 * noted range re-encoded from the data pieces first.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "../common/common.h"
#include "../common/ec.h"
#include "client.h"

#define SUB_MAX_BYTES (1u << 20) /* a sub-operation's bytes at most */
#define RETRIES 2                /* a failed sub-operation is posted again this often */

struct xm__resil {
    int refs;
    xm__dp_t *dp;             /* the data path (kept alive by whoever holds the handle:
                               * its context, or the mapping engine for a copy) */
    uint64_t token;           /* this handle's lock token */
    uint64_t lease_ns;        /* a lock whose beat stands still this long is stale */
    bool has_ec;
    xm__ec_t ec;
    uint8_t down[XM_LAYOUT_PARTS_MAX]; /* atomic: part found unreachable (sticky until a
                                        * refreshed descriptor brings it back) */
    uint8_t rebuilding[XM_LAYOUT_PARTS_MAX]; /* atomic: written to, never read (replicate) */
    uint64_t down_at[XM_LAYOUT_PARTS_MAX];   /* when it was marked down (ns) */
    char what[96];            /* "allocation 7 (ec:4+2:64K)" */
    /* descriptor refresh (docs/resilience.md, "Rebuild"): the parts as the latest descriptor
     * has them. tab is swapped whole (atomic pointer); older tables stay until the state is
     * freed, since a sub-operation may still be reading one. refresh_lock serialises refreshes. */
    xm__part_t *tab;
    struct oldtab { struct oldtab *next; xm__part_t *tab; } *old;
    uint32_t nparts;
    uint64_t gen;             /* atomic: the generation of the descriptor in tab */
    uint64_t expect;          /* atomic: the free lock word last seen (0 until a fence) */
    int need_refresh;         /* atomic: a lock word showed a newer epoch */
    uint32_t down_events;     /* atomic: parts marked down so far */
    pthread_mutex_t refresh_lock;
};

typedef struct sub {
    xm_op_t op;
    struct xm_region reg;
    xm__part_t pc;
    uint32_t part;
} sub_t;

typedef struct batch {
    xm_region_h a;
    sub_t *s;
    size_t n, cap;
} batch_t;

/* ---- per-thread scratch ---------------------------------------------------------- */

/* Coding buffers are reused per thread: a fresh malloc of hundreds of KiB per operation
 * went to mmap/brk and back each time, and page faults on the new memory took most of an
 * ec write's time (perf: 64 KiB ec writes, local transport). Slots by role, so nested
 * users (a write that fetches, a repair inside a lock) never share one. */
enum { SCR_WRITE, SCR_FETCH, SCR_DEGRADED, SCR_REENCODE, SCR_N };
typedef struct scratch { uint8_t *p[SCR_N]; size_t len[SCR_N]; } scratch_t;
static pthread_key_t scr_key;
static pthread_once_t scr_once = PTHREAD_ONCE_INIT;

static void scr_free(void *v)
{
    scratch_t *sc = v;
    for (int i = 0; i < SCR_N; i++) free(sc->p[i]);
    free(sc);
}

static void scr_init(void)
{
    pthread_key_create(&scr_key, scr_free);
}

/* len bytes of slot's buffer (contents undefined); NULL when out of memory. */
static uint8_t *scratch(int slot, size_t len)
{
    pthread_once(&scr_once, scr_init);
    scratch_t *sc = pthread_getspecific(scr_key);
    if (sc == NULL) {
        sc = calloc(1, sizeof(*sc));
        if (sc == NULL || pthread_setspecific(scr_key, sc) != 0) {
            free(sc);
            return NULL;
        }
    }
    if (sc->len[slot] < len) {
        uint8_t *p = realloc(sc->p[slot], len);
        if (p == NULL) return NULL;
        sc->p[slot] = p;
        sc->len[slot] = len;
    }
    return sc->p[slot];
}

/* ---- the handle's state ----------------------------------------------------------- */

xm_status_t xm__resil_attach(xm_region_h a)
{
    xm__resil_t *rs = calloc(1, sizeof(*rs));
    if (rs == NULL) return XM_ERR_NO_MEMORY;
    rs->refs = 1;
    while (rs->token == 0) {
        if (getrandom(&rs->token, sizeof(rs->token), 0) != sizeof(rs->token)) rs->token = 0;
        if (rs->token == 0) rs->token = (uint64_t)xm__now_ns() * 0x9e3779b97f4a7c15ull;
    }
    uint64_t lease_ms = 2000;
    const char *env = getenv("XMEM_EC_LEASE_MS");
    if (env != NULL && atoll(env) > 0) lease_ms = (uint64_t)atoll(env);
    /* a holder may wait for one timed-out operation: the lease must outlast it, or a
     * waiter would take over a lock whose holder still writes */
    rs->dp = a->ctx->dp;
    uint64_t tmo = rs->dp->timeout_ms;
    if (lease_ms < 2 * tmo + 500) lease_ms = 2 * tmo + 500;
    rs->lease_ns = lease_ms * 1000000ull;
    if (a->layout.kind == XM_LAYOUT_EC) {
        const char *why = "";
        if (xm__ec_init(&rs->ec, a->layout.width, a->layout.redundancy, &why) != XM_OK) {
            free(rs);
            return xm__ctx_error(a->ctx, XM_ERR_INVALID, "allocation %llu: %s",
                                 (unsigned long long)a->id, why);
        }
        rs->has_ec = true;
    }
    char pol[XM_LAYOUT_POLICY_TEXT_MAX];
    xm__layout_policy_t p = xm__layout_policy_of(&a->layout);
    xm__layout_policy_str(&p, pol, sizeof(pol));
    snprintf(rs->what, sizeof(rs->what), "allocation %llu (%s)", (unsigned long long)a->id, pol);
    /* a part without a key (0: the manager could not reach its appliance at attach) is down
     * from the start: reads go around it at once instead of waiting out a timeout there */
    for (uint32_t p = 0; p < a->nparts && p < XM_LAYOUT_PARTS_MAX; p++) {
        if (a->parts[p].key == 0) {
            rs->down[p] = 1;
            xm_log_info("%s: part %u has no key (its appliance was unreachable at attach): "
                        "read around and not written", rs->what, p);
        }
    }
    rs->nparts = a->nparts;
    rs->tab = malloc((a->nparts ? a->nparts : 1) * sizeof(*rs->tab));
    if (rs->tab == NULL) {
        free(rs);
        return XM_ERR_NO_MEMORY;
    }
    memcpy(rs->tab, a->parts, a->nparts * sizeof(*rs->tab));
    rs->gen = a->generation;
    pthread_mutex_init(&rs->refresh_lock, NULL);
    for (uint32_t p = 0; p < a->nparts && p < XM_LAYOUT_PARTS_MAX; p++) {
        if (a->parts[p].state == XMEM__PART_STATE__PART_DOWN) rs->down[p] = 1;
        /* rebuilding parts are written and not read: only replicate routes that way */
        if (a->parts[p].state == XMEM__PART_STATE__PART_REBUILDING) {
            if (a->layout.kind == XM_LAYOUT_EC) rs->down[p] = 1;
            else rs->rebuilding[p] = 1;
        }
    }
    a->resil = rs;
    return XM_OK;
}

void xm__resil_get(xm__resil_t *rs)
{
    if (rs != NULL) __atomic_fetch_add(&rs->refs, 1, __ATOMIC_RELAXED);
}

void xm__resil_put(xm__resil_t *rs)
{
    if (rs != NULL && __atomic_sub_fetch(&rs->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        while (rs->old != NULL) {
            struct oldtab *o = rs->old;
            rs->old = o->next;
            free(o->tab);
            free(o);
        }
        free(rs->tab);
        pthread_mutex_destroy(&rs->refresh_lock);
        free(rs);
    }
}

static bool is_down(const xm_region_h a, uint32_t part)
{
    return __atomic_load_n(&a->resil->down[part], __ATOMIC_RELAXED) != 0;
}

static bool is_rebuilding(const xm_region_h a, uint32_t part)
{
    return __atomic_load_n(&a->resil->rebuilding[part], __ATOMIC_RELAXED) != 0;
}

static void mark_down(xm_region_h a, uint32_t part, xm_status_t why)
{
    if (__atomic_exchange_n(&a->resil->down[part], 1, __ATOMIC_RELAXED) == 0) {
        a->resil->down_at[part] = xm__now_ns();
        __atomic_fetch_add(&a->resil->down_events, 1, __ATOMIC_RELAXED);
        xm_log_warn("%s: part %u unreachable (%s): read around and not written from now on",
                    a->resil->what, part, xm_status_str(why));
    }
}

/* ---- batches of single-part sub-operations ---------------------------------------- */

static sub_t *batch_add(batch_t *b, uint32_t part, xm_opcode_t opcode, uint64_t part_off,
                        void *buf, size_t len)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 16;
        sub_t *s = realloc(b->s, cap * sizeof(*s));
        if (s == NULL) return NULL;
        b->s = s;
        b->cap = cap;
    }
    sub_t *s = &b->s[b->n++];
    memset(s, 0, sizeof(*s));
    s->part = part;
    s->op.opcode = opcode;
    s->op.offset = part_off;
    s->op.buf = buf;
    s->op.length = len;
    return s;
}

/* Reads or writes of [part_off, + len) of part, cut into sub-operations. */
static bool batch_rw(batch_t *b, uint32_t part, xm_opcode_t opcode, uint64_t part_off, void *buf,
                     size_t len)
{
    for (size_t done = 0; done < len;) {
        size_t n = XM_MIN(len - done, (size_t)SUB_MAX_BYTES);
        if (batch_add(b, part, opcode, part_off + done, (uint8_t *)buf + done, n) == NULL) return false;
        done += n;
    }
    return true;
}

static void batch_free(batch_t *b)
{
    free(b->s);
    b->s = NULL;
    b->n = b->cap = 0;
}

/* Post s[i] (its region: part s->part of the allocation, alone). */
static void sub_post(xm_region_h a, sub_t *s)
{
    /* the part as the latest descriptor has it (a refresh may swap the table meanwhile:
     * the sub-operation keeps its own copy) */
    const xm__part_t *tab = __atomic_load_n(&a->resil->tab, __ATOMIC_ACQUIRE);
    s->pc = tab[s->part];
    const xm__part_t *p = &s->pc;
    s->reg = (struct xm_region){
        .ctx = a->ctx, .id = a->id, .size = p->size, .key = p->key, .access = a->access,
        .parts = &s->pc, .nparts = 1, .layout = xm__layout_single(p->size),
    };
    s->op.region = &s->reg;
    s->op.status = XM_IN_PROGRESS;
    if (is_down(a, s->part)) {
        s->op.status = XM_ERR_DISCONNECTED;
        return;
    }
    xm_status_t st = xm__dp_post(a->resil->dp, &s->op, 0);
    if (st != XM_OK) s->op.status = st;
}

/* Run every sub-operation; those that fail are posted again (RETRIES times) and their
 * parts marked down if they still fail. Returns how many failed in the end (their
 * op.status says why). */
static size_t batch_run(batch_t *b)
{
    xm_region_h a = b->a;
    size_t nfail = 0;
    xm_op_t **ops = malloc((b->n ? b->n : 1) * sizeof(*ops));
    if (ops == NULL) {
        for (size_t i = 0; i < b->n; i++) b->s[i].op.status = XM_ERR_NO_MEMORY;
        return b->n;
    }
    for (int round = 0; round <= RETRIES; round++) {
        size_t n = 0;
        for (size_t i = 0; i < b->n; i++) {
            sub_t *s = &b->s[i];
            if (round > 0 && (s->op.status == XM_OK || is_down(a, s->part))) continue;
            sub_post(a, s);
            ops[n++] = &s->op;
        }
        if (n == 0) break;
        xm__dp_wait(a->resil->dp, ops, n);
        nfail = 0;
        for (size_t i = 0; i < b->n; i++) nfail += b->s[i].op.status != XM_OK;
        if (nfail == 0) break;
        /* gone (refused connections) or silent past the timeout: down at once */
        for (size_t i = 0; i < b->n; i++) {
            xm_status_t st = b->s[i].op.status;
            if (st == XM_ERR_CONNECT || st == XM_ERR_TIMEOUT) mark_down(a, b->s[i].part, st);
        }
    }
    for (size_t i = 0; i < b->n; i++) {
        if (b->s[i].op.status != XM_OK && b->s[i].op.status != XM_ERR_NO_MEMORY) {
            mark_down(a, b->s[i].part, b->s[i].op.status);
        }
    }
    free(ops);
    return nfail;
}

/* ---- records: lock, beat, ver, range ---------------------------------------------- */

#define GROUP_MAX 16u /* full ec stripes locked and written together */
#define GROUP_BYTES (8u << 20) /* coding scratch of a group at most (when chunks are big) */
#define LOCKSET_MAX (GROUP_MAX * XM_LAYOUT_EC_M_MAX)

typedef struct lockset {
    uint32_t n;
    uint32_t part[LOCKSET_MAX];
    uint64_t rec[LOCKSET_MAX];    /* record index in that part */
} lockset_t;

static uint64_t rec_off(xm_region_h a, uint64_t rec, uint32_t word)
{
    return xm__layout_meta_off(&a->layout, rec) + word;
}

static void nap(unsigned *spins)
{
    unsigned us = *spins < 10 ? 20 : *spins < 100 ? 200 : 1000;
    (*spins)++;
    struct timespec ts = {0, (long)us * 1000};
    nanosleep(&ts, NULL);
}

typedef xm_status_t (*repair_fn)(xm_region_h a, uint64_t unit, const uint64_t *range);

/*
 * Take the lock of every record in ls (records of parts not down), all at once: a
 * conflict releases what was taken and waits (no hold-and-wait: no deadlock). A lock
 * whose holder's token and beat stay the same for a lease is stale: taken over (CAS
 * old -> mine), then repair(unit, noted range) runs before the caller goes on. Then
 * ver is bumped on every record (readers' seqlock) and *range_word noted (0: none).
 */
static xm_status_t lock_take(xm_region_h a, lockset_t *ls, uint64_t unit, repair_fn repair)
{
    xm__resil_t *rs = a->resil;
    uint64_t start = xm__now_ns();
    uint64_t seen_tok = 0, seen_beat = 0, seen_at = 0;
    unsigned spins = 0;
    uint64_t gen = __atomic_load_n(&rs->gen, __ATOMIC_ACQUIRE);
    for (;;) {
        batch_t b = {.a = a};
        uint32_t live = 0;
        /* a free word is 0 or carries the epoch of the last fence (xm__layout_lock_free):
         * expect the one last seen, so the healthy path is one CAS */
        uint64_t expect = __atomic_load_n(&rs->expect, __ATOMIC_RELAXED);
        for (uint32_t i = 0; i < ls->n; i++) {
            if (is_down(a, ls->part[i])) continue;
            sub_t *s = batch_add(&b, ls->part[i], XM_OP_COMPARE_SWAP, rec_off(a, ls->rec[i], XM_LAYOUT_META_LOCK), NULL, 0);
            if (s == NULL) {
                batch_free(&b);
                return XM_ERR_NO_MEMORY;
            }
            s->op.compare = expect;
            s->op.operand = rs->token;
            live++;
        }
        if (live == 0 && a->layout.kind == XM_LAYOUT_EC) {
            /* every parity part of the stripe is down: no parity to keep in step with
             * the data, so nothing to lock (writers' bytes land old-or-new, as in a
             * stripe); with a data piece down too, more than M are and the write fails */
            batch_free(&b);
            return XM_OK;
        }
        if (live == 0) {
            batch_free(&b);
            return xm__ctx_error(a->ctx, XM_ERR_IO, "%s: no part holding the lock of unit %llu is reachable",
                                 rs->what, (unsigned long long)unit);
        }
        batch_run(&b);
        /* taken: result the expected free word (or mine: a retried CAS whose first try landed) */
        bool all = true, failed = false, refree = false, fenced = false;
        uint64_t other = 0;
        for (size_t i = 0; i < b.n; i++) {
            sub_t *s = &b.s[i];
            uint64_t e;
            if (s->op.status != XM_OK) failed = true;
            else if (s->op.result == expect || s->op.result == rs->token) continue;
            else if (xm__layout_lock_is_free(s->op.result, &e)) {
                all = false;
                if (e > gen) fenced = true; /* a newer descriptor exists: refresh first */
                else {
                    __atomic_store_n(&rs->expect, s->op.result, __ATOMIC_RELAXED);
                    refree = true;
                }
            } else {
                all = false;
                other = s->op.result;
            }
        }
        if (failed) {
            /* parts went down meanwhile: release and start again without them */
            all = false;
        }
        if (all) {
            batch_free(&b);
            break;
        }
        /* release what I took */
        batch_t r = {.a = a};
        for (size_t i = 0; i < b.n; i++) {
            sub_t *s = &b.s[i];
            if (s->op.status == XM_OK && (s->op.result == expect || s->op.result == rs->token)) {
                sub_t *u = batch_add(&r, s->part, XM_OP_COMPARE_SWAP, s->op.offset, NULL, 0);
                if (u != NULL) {
                    u->op.compare = rs->token;
                    u->op.operand = expect;
                }
            }
        }
        batch_run(&r);
        batch_free(&r);
        if (fenced) {
            batch_free(&b);
            __atomic_store_n(&rs->need_refresh, 1, __ATOMIC_RELAXED);
            return xm__ctx_error(a->ctx, XM_ERR_AGAIN, "%s: its descriptor is stale (a newer "
                                 "generation fenced unit %llu): refresh it", rs->what,
                                 (unsigned long long)unit);
        }
        if (other == 0 || refree) {
            batch_free(&b);
            continue; /* a part went down, or the free word is another epoch's: again */
        }
        /* held by another: its beat (from the first part that showed it) */
        uint32_t where = 0;
        for (size_t i = 0; i < b.n; i++) {
            if (b.s[i].op.status == XM_OK && b.s[i].op.result == other) where = b.s[i].part;
        }
        uint64_t recidx = 0;
        for (uint32_t i = 0; i < ls->n; i++) if (ls->part[i] == where) recidx = ls->rec[i];
        batch_free(&b);
        uint64_t beat = 0;
        batch_t rb = {.a = a};
        batch_add(&rb, where, XM_OP_READ, rec_off(a, recidx, XM_LAYOUT_META_BEAT), &beat, 8);
        batch_run(&rb);
        batch_free(&rb);
        uint64_t now = xm__now_ns();
        if (other != seen_tok || beat != seen_beat || seen_at == 0) {
            seen_tok = other;
            seen_beat = beat;
            seen_at = now;
        } else if (now - seen_at > rs->lease_ns) {
            /* stale: take it over everywhere it is held by that token or free */
            batch_t t = {.a = a};
            uint32_t idx[LOCKSET_MAX];
            bool from_dead[LOCKSET_MAX] = {false};
            for (uint32_t i = 0; i < ls->n; i++) {
                if (is_down(a, ls->part[i])) continue;
                sub_t *s = batch_add(&t, ls->part[i], XM_OP_COMPARE_SWAP, rec_off(a, ls->rec[i], XM_LAYOUT_META_LOCK), NULL, 0);
                if (s != NULL) {
                    s->op.compare = other;
                    s->op.operand = rs->token;
                    idx[t.n - 1] = i;
                }
            }
            batch_run(&t);
            bool took = true;
            for (size_t i = 0; i < t.n; i++) {
                uint64_t res = t.s[i].op.result;
                if (t.s[i].op.status != XM_OK) continue;
                uint64_t e;
                if (res == other) from_dead[idx[i]] = true;
                if (xm__layout_lock_is_free(res, &e)) {
                    /* free there: take it plainly */
                    t.s[i].op.compare = res;
                    t.s[i].op.operand = rs->token;
                    batch_t one = {.a = a, .s = &t.s[i], .n = 1, .cap = 1};
                    batch_run(&one);
                    if (e > gen || (t.s[i].op.status == XM_OK && t.s[i].op.result != res &&
                                    t.s[i].op.result != rs->token)) took = false;
                } else if (res != other && res != rs->token) {
                    took = false;
                }
            }
            batch_free(&t);
            if (took) {
                xm_log_warn("%s: lock of unit %llu held by a writer that stopped (token %016llx): taken over and repaired",
                            rs->what, (unsigned long long)unit, (unsigned long long)other);
                /* every unit (stripe) the dead writer held: its noted range, then repair */
                xm_status_t st = XM_OK;
                for (uint32_t i = 0; i < ls->n && st == XM_OK && repair != NULL; i++) {
                    bool first = from_dead[i];
                    for (uint32_t j = 0; j < i && first; j++) first = !(from_dead[j] && ls->rec[j] == ls->rec[i]);
                    if (!first) continue;
                    uint64_t range = 0;
                    batch_t q = {.a = a};
                    batch_add(&q, ls->part[i], XM_OP_READ, rec_off(a, ls->rec[i], XM_LAYOUT_META_RANGE), &range, 8);
                    size_t bad = batch_run(&q);
                    batch_free(&q);
                    st = bad ? XM_ERR_IO : repair(a, ls->rec[i], &range);
                }
                if (st != XM_OK) {
                    /* not repaired: the dead writer's token goes back, so whoever comes
                     * next (this handle too) finds the stripe unrepaired, not taken */
                    batch_t g = {.a = a};
                    for (uint32_t i = 0; i < ls->n; i++) {
                        if (is_down(a, ls->part[i])) continue;
                        sub_t *s = batch_add(&g, ls->part[i], XM_OP_COMPARE_SWAP,
                                             rec_off(a, ls->rec[i], XM_LAYOUT_META_LOCK), NULL, 0);
                        if (s != NULL) {
                            s->op.compare = rs->token;
                            s->op.operand = other;
                        }
                    }
                    batch_run(&g);
                    batch_free(&g);
                    return st;
                }
                break;
            }
            seen_at = 0;
        }
        if (now - start > rs->lease_ns + (uint64_t)a->resil->dp->timeout_ms * 1000000ull * 2) {
            return xm__ctx_error(a->ctx, XM_ERR_TIMEOUT, "%s: unit %llu stayed locked by another writer (token %016llx)",
                                 rs->what, (unsigned long long)unit, (unsigned long long)other);
        }
        nap(&spins);
    }
    return XM_OK;
}

/* Add to b, for locks just taken: bump ver (readers' seqlock) and beat (waiters see a
 * new hold, not a stuck one) on every record, and note *range (ec; NULL: none). Run
 * before (or, where order does not matter, with) the first operation under the lock;
 * the data writes come in a later batch, after it completed. */
static void lock_marks(xm_region_h a, const lockset_t *ls, const uint64_t *range, batch_t *b)
{
    for (uint32_t i = 0; i < ls->n; i++) {
        if (is_down(a, ls->part[i])) continue;
        sub_t *s = batch_add(b, ls->part[i], XM_OP_FETCH_ADD, rec_off(a, ls->rec[i], XM_LAYOUT_META_VER), NULL, 0);
        if (s != NULL) s->op.operand = 1;
        s = batch_add(b, ls->part[i], XM_OP_FETCH_ADD, rec_off(a, ls->rec[i], XM_LAYOUT_META_BEAT), NULL, 0);
        if (s != NULL) s->op.operand = 1;
        if (range != NULL) {
            batch_add(b, ls->part[i], XM_OP_WRITE, rec_off(a, ls->rec[i], XM_LAYOUT_META_RANGE), (void *)range, 8);
        }
    }
}

/* Release the locks, all at once. The range stays: the next holder writes its own
 * before changing anything, and a stale holder's range (or, if it died before noting
 * one, its predecessor's finished one) is only ever re-encoded from the data, which is
 * right for any range while the lock is held. */
static void lock_drop(xm_region_h a, const lockset_t *ls)
{
    batch_t b = {.a = a};
    for (uint32_t i = 0; i < ls->n; i++) {
        if (is_down(a, ls->part[i])) continue;
        sub_t *s = batch_add(&b, ls->part[i], XM_OP_COMPARE_SWAP, rec_off(a, ls->rec[i], XM_LAYOUT_META_LOCK), NULL, 0);
        if (s != NULL) {
            s->op.compare = a->resil->token;
            s->op.operand = __atomic_load_n(&a->resil->expect, __ATOMIC_RELAXED);
        }
    }
    batch_run(&b);
    batch_free(&b);
}

/* ---- replicate -------------------------------------------------------------------- */

/* The lock home and the copy reads go to: the first part neither down nor being rebuilt. */
static int repl_home(xm_region_h a)
{
    for (uint32_t p = 0; p < a->nparts; p++) if (!is_down(a, p) && !is_rebuilding(a, p)) return (int)p;
    return -1;
}

static xm_status_t repl_lost(xm_region_h a)
{
    return xm__ctx_error(a->ctx, XM_ERR_IO, "%s: every copy is unreachable (%u of %u parts down)",
                         a->resil->what, a->nparts, a->nparts);
}

/* A stale unit lock: make every reachable copy of the unit equal to the home's. */
static xm_status_t repl_repair(xm_region_h a, uint64_t unit, const uint64_t *range)
{
    (void)range;
    uint64_t off = unit * XM_LAYOUT_REPL_UNIT;
    size_t len = (size_t)XM_MIN(XM_LAYOUT_REPL_UNIT, a->layout.size - off);
    uint8_t *buf = malloc(len);
    if (buf == NULL) return XM_ERR_NO_MEMORY;
    xm_status_t st = XM_ERR_IO;
    for (int tries = 0; tries < (int)a->nparts; tries++) {
        int home = repl_home(a);
        if (home < 0) break;
        batch_t b = {.a = a};
        batch_rw(&b, (uint32_t)home, XM_OP_READ, off, buf, len);
        size_t bad = batch_run(&b);
        batch_free(&b);
        if (bad) continue;
        for (uint32_t p = 0; p < a->nparts; p++) {
            if (p != (uint32_t)home && !is_down(a, p)) batch_rw(&b, p, XM_OP_WRITE, off, buf, len);
        }
        batch_run(&b);
        batch_free(&b);
        st = XM_OK;
        break;
    }
    free(buf);
    return st;
}

/* Lock units [u0, u1] at the home (all at once, one lockset per unit would serialise:
 * they are taken unit by unit in ascending order, which is one global order). */
/* Lock units [u0, u1] (at most LOCKSET_MAX) at the home, all at once. */
static xm_status_t repl_lock(xm_region_h a, uint64_t u0, uint64_t u1, int *home_p)
{
    for (;;) {
        int home = repl_home(a);
        if (home < 0) return repl_lost(a);
        lockset_t ls = {.n = 0};
        for (uint64_t u = u0; u <= u1; u++) {
            ls.part[ls.n] = (uint32_t)home;
            ls.rec[ls.n++] = u;
        }
        xm_status_t st = lock_take(a, &ls, u0, repl_repair);
        if (st == XM_OK && !is_down(a, (uint32_t)home)) {
            *home_p = home;
            return XM_OK;
        }
        if (st == XM_OK) lock_drop(a, &ls);
        /* a home that went down: again at the next one */
        if (!is_down(a, (uint32_t)home)) return st;
    }
}

static void repl_unlock(xm_region_h a, int home, uint64_t u0, uint64_t u1)
{
    batch_t b = {.a = a};
    for (uint64_t u = u0; u <= u1; u++) {
        sub_t *s = batch_add(&b, (uint32_t)home, XM_OP_COMPARE_SWAP, rec_off(a, u, XM_LAYOUT_META_LOCK), NULL, 0);
        if (s != NULL) {
            s->op.compare = a->resil->token;
            s->op.operand = __atomic_load_n(&a->resil->expect, __ATOMIC_RELAXED);
        }
    }
    batch_run(&b);
    batch_free(&b);
}

static xm_status_t repl_read(xm_region_h a, uint64_t off, void *buf, size_t len)
{
    for (;;) {
        int home = repl_home(a);
        if (home < 0) return repl_lost(a);
        batch_t b = {.a = a};
        if (!batch_rw(&b, (uint32_t)home, XM_OP_READ, off, buf, len)) {
            batch_free(&b);
            return XM_ERR_NO_MEMORY;
        }
        size_t bad = batch_run(&b);
        batch_free(&b);
        if (bad == 0) return XM_OK;
    }
}

static xm_status_t repl_write_locked(xm_region_h a, uint64_t off, const void *buf, size_t len);

/* Writes of more than LOCKSET_MAX units go in pieces of that many (each locked alone). */
static xm_status_t repl_write(xm_region_h a, uint64_t off, const void *buf, size_t len)
{
    const uint64_t step = (uint64_t)LOCKSET_MAX * XM_LAYOUT_REPL_UNIT;
    while (len > 0) {
        uint64_t end = XM_MIN(off + len, (off / step + 1) * step);
        xm_status_t st = repl_write_locked(a, off, buf, (size_t)(end - off));
        if (st != XM_OK) return st;
        buf = (const uint8_t *)buf + (end - off);
        len -= (size_t)(end - off);
        off = end;
    }
    return XM_OK;
}

static xm_status_t repl_write_locked(xm_region_h a, uint64_t off, const void *buf, size_t len)
{
    uint64_t u0 = xm__layout_meta_unit(&a->layout, off), u1 = xm__layout_meta_unit(&a->layout, off + len - 1);
    int home;
    xm_status_t st = repl_lock(a, u0, u1, &home);
    if (st != XM_OK) return st;
    batch_t b = {.a = a};
    for (uint64_t u = u0; u <= u1; u++) {
        lockset_t ls = {.n = 1, .part = {(uint32_t)home}, .rec = {u}};
        lock_marks(a, &ls, NULL, &b);
    }
    for (uint32_t p = 0; p < a->nparts; p++) {
        if (!is_down(a, p)) batch_rw(&b, p, XM_OP_WRITE, off, (void *)buf, len);
    }
    batch_run(&b);
    bool any = false;
    for (uint32_t p = 0; p < a->nparts; p++) any |= !is_down(a, p) && !is_rebuilding(a, p);
    batch_free(&b);
    if (!is_down(a, (uint32_t)home)) repl_unlock(a, home, u0, u1);
    return any ? XM_OK : repl_lost(a);
}

static xm_status_t repl_atomic(xm_region_h a, xm_op_t *op)
{
    uint64_t u = xm__layout_meta_unit(&a->layout, op->offset);
    int home;
    xm_status_t st = repl_lock(a, u, u, &home);
    if (st != XM_OK) return st;
    uint64_t old = 0, nw;
    st = repl_read(a, op->offset, &old, 8);
    if (st == XM_OK) {
        if (op->opcode == XM_OP_FETCH_ADD) nw = old + op->operand;
        else nw = old == op->compare ? op->operand : old;
        if (nw != old) {
            batch_t b = {.a = a};
            lockset_t ls = {.n = 1, .part = {(uint32_t)home}, .rec = {u}};
            lock_marks(a, &ls, NULL, &b);
            for (uint32_t p = 0; p < a->nparts; p++) {
                if (!is_down(a, p)) batch_rw(&b, p, XM_OP_WRITE, op->offset, &nw, 8);
            }
            batch_run(&b);
            batch_free(&b);
            if (repl_home(a) < 0) st = repl_lost(a);
        }
        op->result = old;
    }
    if (!is_down(a, (uint32_t)home)) repl_unlock(a, home, u, u);
    return st;
}

/* ---- ec ----------------------------------------------------------------------------- */

static uint32_t ec_n(xm_region_h a)
{
    return a->layout.width + a->layout.redundancy;
}

static xm_status_t ec_short(xm_region_h a, uint64_t row)
{
    uint32_t n = ec_n(a), down = 0;
    for (uint32_t p = 0; p < n; p++) down += is_down(a, p);
    return xm__ctx_error(a->ctx, XM_ERR_IO,
                         "%s: stripe %llu has %u of %u pieces reachable, %u needed (%u appliances down)",
                         a->resil->what, (unsigned long long)row, n - down, n, a->layout.width, down);
}

/*
 * Pieces want (bit mask over pieces 0..n-1) of row, bytes [wlo, wlo + wlen) of each,
 * into out[piece] (wlen bytes each, for wanted pieces): read directly where reachable,
 * else decoded from k reachable pieces. exclude_range: when a stale writer's noted range
 * overlaps (a data piece in it lost), those bytes are not reconstructible.
 */
static xm_status_t ec_fetch(xm_region_h a, uint64_t row, uint32_t want, uint64_t wlo, uint64_t wlen,
                            uint8_t **out, const lockset_t *mark, const uint64_t *range)
{
    bool marked = mark == NULL;
    const xm__layout_t *l = &a->layout;
    uint32_t k = l->width, n = ec_n(a);
    uint64_t base = row * l->chunk + wlo;
    for (;;) {
        uint32_t missing = 0, avail = 0;
        for (uint32_t p = 0; p < n; p++) {
            bool dn = is_down(a, xm__layout_piece_part(l, row, p));
            if (dn && (want >> p & 1)) missing |= 1u << p;
            if (!dn) avail |= 1u << p;
        }
        if ((uint32_t)__builtin_popcount(avail) < k && missing) return ec_short(a, row);
        uint8_t *tmp = NULL;
        uint32_t have[XM_EC_K_MAX], nhave = 0;
        batch_t b = {.a = a};
        if (!marked) {
            /* a writer's lock marks ride with its first reads */
            lock_marks(a, mark, range, &b);
            marked = true;
        }
        if (missing == 0) {
            for (uint32_t p = 0; p < n; p++) {
                if (want >> p & 1) batch_rw(&b, xm__layout_piece_part(l, row, p), XM_OP_READ, base, out[p], wlen);
            }
        } else {
            /* k sources: wanted reachable pieces first, then data, then parity */
            for (int pass = 0; pass < 2 && nhave < k; pass++) {
                for (uint32_t p = 0; p < n && nhave < k; p++) {
                    if (!(avail >> p & 1)) continue;
                    bool w = want >> p & 1;
                    if ((pass == 0) != w) continue;
                    have[nhave++] = p;
                }
            }
            tmp = scratch(SCR_FETCH, (size_t)k * wlen);
            if (tmp == NULL) return XM_ERR_NO_MEMORY;
            for (uint32_t i = 0; i < nhave; i++) {
                batch_rw(&b, xm__layout_piece_part(l, row, have[i]), XM_OP_READ, base, tmp + i * wlen, wlen);
            }
        }
        size_t bad = batch_run(&b);
        batch_free(&b);
        if (bad) {
            continue; /* parts went down: choose again */
        }
        if (missing == 0) return XM_OK;
        /* sort have ascending (the decoder takes any order, our tmp follows have) */
        uint8_t *src[XM_EC_K_MAX];
        for (uint32_t i = 0; i < nhave; i++) src[i] = tmp + i * wlen;
        uint32_t wl[XM_EC_N_MAX], nw = 0;
        uint8_t *o[XM_EC_N_MAX];
        for (uint32_t p = 0; p < n; p++) {
            if (want >> p & 1) {
                bool direct = false;
                for (uint32_t i = 0; i < nhave; i++) {
                    if (have[i] == p) {
                        memcpy(out[p], src[i], wlen);
                        direct = true;
                    }
                }
                if (!direct) {
                    wl[nw] = p;
                    o[nw++] = out[p];
                }
            }
        }
        const char *why = "";
        xm_status_t st = xm__ec_decode(&a->resil->ec, wlen, have, src, nw, wl, o, &why);
        if (st != XM_OK) return xm__ctx_error(a->ctx, st, "%s: decode of stripe %llu: %s", a->resil->what, (unsigned long long)row, why);
        return XM_OK;
    }
}

static void ec_lockset(xm_region_h a, uint64_t row, lockset_t *ls)
{
    ls->n = a->layout.redundancy;
    for (uint32_t i = 0; i < ls->n; i++) {
        ls->part[i] = xm__layout_row_parity_part(&a->layout, row, i);
        ls->rec[i] = row;
    }
}

/* Re-encode parity over piece bytes [lo, lo + len) of row from its data pieces and write
 * it to the reachable parity parts. */
static xm_status_t ec_reencode(xm_region_h a, uint64_t row, uint64_t lo, uint64_t len)
{
    const xm__layout_t *l = &a->layout;
    uint32_t k = l->width, m = l->redundancy;
    uint8_t *buf = scratch(SCR_REENCODE, (size_t)(k + m) * len);
    if (buf == NULL) return XM_ERR_NO_MEMORY;
    uint8_t *p[XM_EC_N_MAX];
    for (uint32_t i = 0; i < k + m; i++) p[i] = buf + i * len;
    xm_status_t st = ec_fetch(a, row, (1u << k) - 1, lo, len, p, NULL, NULL);
    if (st == XM_OK) st = xm__ec_encode(&a->resil->ec, len, p, p + k, NULL);
    if (st == XM_OK) {
        batch_t b = {.a = a};
        for (uint32_t i = 0; i < m; i++) {
            uint32_t part = xm__layout_row_parity_part(l, row, i);
            if (!is_down(a, part)) batch_rw(&b, part, XM_OP_WRITE, row * l->chunk + lo, p[k + i], len);
        }
        batch_run(&b);
        batch_free(&b);
    }
    return st;
}

/* A stale stripe lock: the dead writer's noted range is re-encoded from the data as it
 * now is (each byte old or new). A data piece down makes that range unrecoverable. */
static xm_status_t ec_repair(xm_region_h a, uint64_t row, const uint64_t *range)
{
    uint64_t len = *range >> 24, lo = *range & 0xffffff;
    if (len == 0) return XM_OK; /* it had changed nothing yet */
    for (uint32_t j = 0; j < a->layout.width; j++) {
        if (is_down(a, xm__layout_row_data_part(&a->layout, row, j))) {
            return xm__ctx_error(a->ctx, XM_ERR_IO,
                                 "%s: stripe %llu, piece bytes %llu..%llu were being written by a client that "
                                 "died, then a data part was lost: not reconstructible until written again",
                                 a->resil->what, (unsigned long long)row, (unsigned long long)lo,
                                 (unsigned long long)(lo + len));
        }
    }
    return ec_reencode(a, row, lo, len);
}

static xm_status_t ec_repair_cb(xm_region_h a, uint64_t unit, const uint64_t *range)
{
    return ec_repair(a, unit, range);
}

/* The piece window a span touches: [*lo, *lo + *len). */
static void span_window(const xm__layout_t *l, const xm__layout_span_t *s, uint64_t *lo, uint64_t *len)
{
    uint64_t o[2], n[2];
    uint32_t c = xm__layout_span_parity(l, s, o, n);
    if (c == 1) {
        *lo = o[0];
        *len = n[0];
    } else {
        *lo = 0;
        *len = l->chunk;
    }
}

/* A degraded read of one span: seqlock on the parity parts' records, decode. */
static xm_status_t ec_read_degraded(xm_region_h a, const xm__layout_span_t *s, uint8_t *dst)
{
    const xm__layout_t *l = &a->layout;
    uint32_t k = l->width, m = l->redundancy;
    uint64_t wlo, wlen;
    span_window(l, s, &wlo, &wlen);
    uint32_t want = 0;
    for (uint32_t j = s->first; j <= s->last; j++) want |= 1u << j;
    uint8_t *buf = scratch(SCR_DEGRADED, (size_t)k * wlen);
    if (buf == NULL) return XM_ERR_NO_MEMORY;
    uint8_t *out[XM_EC_N_MAX] = {0};
    for (uint32_t j = 0; j < k; j++) out[j] = buf + j * wlen;
    uint64_t start = xm__now_ns();
    unsigned spins = 0;
    xm_status_t st;
    for (;;) {
        uint64_t r1[XM_LAYOUT_EC_M_MAX][4], r2[XM_LAYOUT_EC_M_MAX][4];
        batch_t b = {.a = a};
        for (uint32_t i = 0; i < m; i++) {
            uint32_t part = xm__layout_row_parity_part(l, s->row, i);
            if (!is_down(a, part)) batch_rw(&b, part, XM_OP_READ, rec_off(a, s->row, 0), r1[i], 32);
        }
        batch_run(&b);
        bool busy = false;
        for (size_t i = 0; i < b.n; i++) {
            if (b.s[i].op.status == XM_OK && ((uint64_t *)b.s[i].op.buf)[0] != 0) busy = true;
        }
        batch_free(&b);
        if (!busy) {
            st = ec_fetch(a, s->row, want, wlo, wlen, out, NULL, NULL);
            if (st != XM_OK) break;
            for (uint32_t i = 0; i < m; i++) {
                uint32_t part = xm__layout_row_parity_part(l, s->row, i);
                if (!is_down(a, part)) batch_rw(&b, part, XM_OP_READ, rec_off(a, s->row, 0), r2[i], 32);
            }
            batch_run(&b);
            bool same = true;
            for (size_t i = 0; i < b.n; i++) {
                uint64_t *w2 = b.s[i].op.buf;
                uint64_t *w1 = (uint64_t *)((uint8_t *)r1 + ((uint8_t *)w2 - (uint8_t *)r2));
                if (b.s[i].op.status != XM_OK || w2[0] != 0 || w2[2] != w1[2]) same = false;
            }
            batch_free(&b);
            if (same) break;
        } else if (a->access == XM_ACCESS_READ_WRITE) {
            /* take the lock (a stale one is repaired), then read under it */
            lockset_t ls;
            ec_lockset(a, s->row, &ls);
            st = lock_take(a, &ls, s->row, ec_repair_cb);
            if (st != XM_OK) break;
            st = ec_fetch(a, s->row, want, wlo, wlen, out, NULL, NULL);
            lock_drop(a, &ls);
            break;
        }
        if (xm__now_ns() - start > a->resil->lease_ns + (uint64_t)a->resil->dp->timeout_ms * 2000000ull) {
            st = xm__ctx_error(a->ctx, XM_ERR_TIMEOUT, "%s: stripe %llu stayed locked by a writer",
                               a->resil->what, (unsigned long long)s->row);
            break;
        }
        nap(&spins);
    }
    if (st == XM_OK) {
        for (uint32_t j = s->first; j <= s->last; j++) {
            uint64_t po, pl;
            xm__layout_span_piece(l, s, j, &po, &pl);
            uint64_t at = (uint64_t)(j - s->first) * l->chunk + po - s->lo; /* offset in span */
            memcpy(dst + at, out[j] + (po - wlo), pl);
        }
    }
    return st;
}

static xm_status_t ec_read(xm_region_h a, uint64_t off, uint8_t *buf, size_t len)
{
    const xm__layout_t *l = &a->layout;
    /* healthy: every segment on a part not down, all at once */
    batch_t b = {.a = a};
    xm__layout_iter_t it;
    xm__layout_seg_t seg;
    xm__layout_iter_init(&it, l, off, len, SUB_MAX_BYTES);
    while (xm__layout_iter_next(&it, &seg)) {
        if (!is_down(a, seg.part)) batch_add(&b, seg.part, XM_OP_READ, seg.part_off, buf + seg.buf_off, seg.len);
    }
    batch_run(&b);
    batch_free(&b);
    /* stripes with a piece not read: degraded */
    xm__layout_span_iter_t si;
    xm__layout_span_t s;
    xm__layout_span_iter_init(&si, l, off, len);
    while (xm__layout_span_iter_next(&si, &s)) {
        bool need = false;
        for (uint32_t j = s.first; j <= s.last; j++) need |= is_down(a, xm__layout_row_data_part(l, s.row, j));
        if (!need) continue;
        xm_status_t st = ec_read_degraded(a, &s, buf + s.buf_off);
        if (st != XM_OK) return st;
    }
    return XM_OK;
}

/* One stripe's write, under its lock. */
static xm_status_t ec_write_span(xm_region_h a, const xm__layout_span_t *s, const uint8_t *src)
{
    const xm__layout_t *l = &a->layout;
    uint32_t k = l->width, m = l->redundancy, n = k + m;
    uint64_t c = l->chunk, pbase = s->row * c;
    uint32_t up = 0;
    for (uint32_t p = 0; p < n; p++) up += !is_down(a, p);
    if (up < k) return ec_short(a, s->row);
    uint64_t wlo, wlen;
    span_window(l, s, &wlo, &wlen);
    lockset_t ls;
    ec_lockset(a, s->row, &ls);
    /* a full stripe re-encodes all its parity from the new data: a dead writer's stripe
     * needs no repair first (and is how a stripe that cannot be repaired is healed) */
    xm_status_t st = lock_take(a, &ls, s->row, s->full ? NULL : ec_repair_cb);
    uint64_t range = (wlen << 24) | wlo;
    if (st != XM_OK) return st;
    /* new data over the window for every data piece, and parity */
    uint8_t *buf = scratch(SCR_WRITE, 2 * (size_t)n * wlen);
    uint8_t *old = buf != NULL ? buf + (size_t)n * wlen : NULL;
    uint8_t *p[XM_EC_N_MAX], *q[XM_EC_N_MAX];
    if (buf == NULL || old == NULL) {
        st = XM_ERR_NO_MEMORY;
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) {
        p[i] = buf + i * wlen;
        q[i] = old + i * wlen;
    }
    bool touched_down = false;
    for (uint32_t j = s->first; j <= s->last; j++) touched_down |= is_down(a, xm__layout_row_data_part(l, s->row, j));
    if (s->full) {
        /* parity from the new data alone (the bytes past the allocation's end are zero) */
        memset(buf, 0, (size_t)n * wlen);
        for (uint32_t j = s->first; j <= s->last; j++) {
            uint64_t po, pl;
            xm__layout_span_piece(l, s, j, &po, &pl);
            memcpy(p[j] + po - wlo, src + (uint64_t)j * c + po - s->lo, pl);
        }
        st = xm__ec_encode(&a->resil->ec, wlen, p, p + k, NULL);
        /* the marks (range noted) complete before any data changes */
        batch_t mb = {.a = a};
        lock_marks(a, &ls, &range, &mb);
        batch_run(&mb);
        batch_free(&mb);
    } else if (!touched_down) {
        /* delta: old touched data and old parity over the window */
        uint32_t want = 0;
        for (uint32_t j = s->first; j <= s->last; j++) want |= 1u << j;
        for (uint32_t i = 0; i < m; i++) want |= 1u << (k + i);
        /* parity parts down: fetched by decode only if needed; we just skip them */
        uint32_t wantp = want;
        for (uint32_t i = 0; i < m; i++) {
            if (is_down(a, xm__layout_row_parity_part(l, s->row, i))) wantp &= ~(1u << (k + i));
        }
        st = ec_fetch(a, s->row, wantp, wlo, wlen, q, &ls, &range);
        if (st == XM_OK) {
            for (uint32_t i = 0; i < m; i++) memcpy(p[k + i], q[k + i], wlen);
            for (uint32_t j = s->first; j <= s->last && st == XM_OK; j++) {
                uint64_t po, pl;
                xm__layout_span_piece(l, s, j, &po, &pl);
                memcpy(p[j], q[j], wlen);
                memcpy(p[j] + po - wlo, src + (uint64_t)(j - s->first) * c + po - s->lo, pl);
                uint8_t *d = q[j]; /* the delta over the window (zero where unchanged) */
                xm__ec_xor(d, q[j], p[j], wlen);
                st = xm__ec_update(&a->resil->ec, wlen, j, d, p + k, NULL);
            }
        }
    } else {
        /* a touched data piece is down: every data piece over the window (decoded), the
         * new bytes on top, parity re-encoded */
        st = ec_fetch(a, s->row, (1u << k) - 1, wlo, wlen, p, &ls, &range);
        for (uint32_t j = s->first; j <= s->last && st == XM_OK; j++) {
            uint64_t po, pl;
            xm__layout_span_piece(l, s, j, &po, &pl);
            memcpy(p[j] + po - wlo, src + (uint64_t)(j - s->first) * c + po - s->lo, pl);
        }
        if (st == XM_OK) st = xm__ec_encode(&a->resil->ec, wlen, p, p + k, NULL);
    }
    if (st != XM_OK) goto out;
    {
        batch_t b = {.a = a};
        for (uint32_t j = s->first; j <= s->last; j++) {
            uint32_t part = xm__layout_row_data_part(l, s->row, j);
            uint64_t po, pl;
            xm__layout_span_piece(l, s, j, &po, &pl);
            if (!is_down(a, part)) {
                batch_rw(&b, part, XM_OP_WRITE, pbase + po,
                         (void *)(src + (uint64_t)(j - s->first) * c + po - s->lo), pl);
            }
        }
        for (uint32_t i = 0; i < m; i++) {
            uint32_t part = xm__layout_row_parity_part(l, s->row, i);
            if (!is_down(a, part)) batch_rw(&b, part, XM_OP_WRITE, pbase + wlo, p[k + i], wlen);
        }
        batch_run(&b);
        batch_free(&b);
        up = 0;
        for (uint32_t q2 = 0; q2 < n; q2++) up += !is_down(a, xm__layout_piece_part(l, s->row, q2));
        if (up < k) st = ec_short(a, s->row);
    }
out:
    lock_drop(a, &ls);
    return st;
}

/*
 * Full stripes s[0..g-1] (consecutive, none down to fewer than k pieces), all at once:
 * one lock round for every parity record, one for the marks, one for every data and
 * parity piece, one to unlock — instead of four per stripe. Needs no repair of a stale
 * lock (every parity byte is encoded from the new data).
 */
static xm_status_t ec_write_full_group(xm_region_h a, const xm__layout_span_t *s, uint32_t g,
                                       const uint8_t *src)
{
    const xm__layout_t *l = &a->layout;
    uint32_t k = l->width, m = l->redundancy, n = k + m;
    uint64_t c = l->chunk;
    lockset_t ls = {.n = 0};
    for (uint32_t i = 0; i < g; i++) {
        for (uint32_t j = 0; j < m; j++) {
            ls.part[ls.n] = xm__layout_row_parity_part(l, s[i].row, j);
            ls.rec[ls.n++] = s[i].row;
        }
    }
    xm_status_t st = lock_take(a, &ls, s[0].row, NULL);
    if (st != XM_OK) return st;
    uint8_t *par = scratch(SCR_WRITE, (size_t)g * m * c + c);
    if (par == NULL) {
        st = XM_ERR_NO_MEMORY;
        goto out;
    }
    uint8_t *zero = par + (size_t)g * m * c; /* a zero piece for short last rows */
    memset(zero, 0, c);
    uint64_t range = (c << 24) | 0;
    batch_t b = {.a = a};
    lock_marks(a, &ls, &range, &b);
    batch_run(&b);
    batch_free(&b);
    for (uint32_t i = 0; i < g && st == XM_OK; i++) {
        const uint8_t *base = src + (s[i].buf_off - s[0].buf_off);
        uint8_t *d[XM_EC_K_MAX], *p[XM_EC_M_MAX];
        for (uint32_t j = 0; j < k; j++) d[j] = j <= s[i].last && s[i].hi == c ? (uint8_t *)base + j * c : zero;
        for (uint32_t j = 0; j < m; j++) p[j] = par + ((size_t)i * m + j) * c;
        if (s[i].hi != c || s[i].last != k - 1) {
            /* a short last row: not in a group (ec_write keeps those apart) */
            st = XM_ERR_INVALID;
            break;
        }
        st = xm__ec_encode(&a->resil->ec, c, d, p, NULL);
        for (uint32_t j = 0; j < n && st == XM_OK; j++) {
            uint32_t part = xm__layout_piece_part(l, s[i].row, j);
            if (!is_down(a, part)) batch_rw(&b, part, XM_OP_WRITE, s[i].row * c, j < k ? d[j] : p[j - k], c);
        }
    }
    if (st == XM_OK) {
        batch_run(&b);
        for (uint32_t i = 0; i < g && st == XM_OK; i++) {
            uint32_t up = 0;
            for (uint32_t q = 0; q < n; q++) up += !is_down(a, q);
            if (up < k) st = ec_short(a, s[i].row);
        }
    }
    batch_free(&b);
out:
    lock_drop(a, &ls);
    return st;
}

static xm_status_t ec_write(xm_region_h a, uint64_t off, const uint8_t *buf, size_t len)
{
    const xm__layout_t *l = &a->layout;
    uint32_t gmax = (uint32_t)XM_MIN((uint64_t)GROUP_MAX,
                                     XM_MAX(1, GROUP_BYTES / ((uint64_t)l->redundancy * l->chunk)));
    xm__layout_span_t grp[GROUP_MAX];
    uint32_t g = 0;
    xm__layout_span_iter_t si;
    xm__layout_span_t s;
    xm_status_t st = XM_OK;
    xm__layout_span_iter_init(&si, l, off, len);
    for (bool more = xm__layout_span_iter_next(&si, &s); st == XM_OK; more = xm__layout_span_iter_next(&si, &s)) {
        /* whole rows gather into a group; anything else (partial, a short last row) alone */
        bool whole = more && s.full && s.last == l->width - 1 && s.hi == l->chunk;
        if (g > 0 && (!whole || g == gmax || !more)) {
            st = g == 1 ? ec_write_span(a, &grp[0], buf + grp[0].buf_off)
                        : ec_write_full_group(a, grp, g, buf + grp[0].buf_off);
            g = 0;
            if (st != XM_OK) break;
        }
        if (!more) break;
        if (whole) grp[g++] = s;
        else st = ec_write_span(a, &s, buf + s.buf_off);
    }
    return st;
}

/* ---- scrub -------------------------------------------------------------------------- */

/* One replicate unit: under its lock, every reachable copy compared with the home's and
 * rewritten from it where it differs. *repaired_p: a copy was rewritten. */
static xm_status_t repl_scrub_unit(xm_region_h a, uint64_t u, uint8_t *buf, bool *repaired_p,
                                   bool *skipped_p)
{
    uint64_t off = u * XM_LAYOUT_REPL_UNIT;
    size_t len = (size_t)XM_MIN(XM_LAYOUT_REPL_UNIT, a->layout.size - off);
    int home;
    xm_status_t st = repl_lock(a, u, u, &home);
    if (st != XM_OK) return st;
    batch_t b = {.a = a};
    uint32_t live = 0;
    for (uint32_t p = 0; p < a->nparts; p++) {
        if (!is_down(a, p)) {
            batch_rw(&b, p, XM_OP_READ, off, buf + (size_t)p * XM_LAYOUT_REPL_UNIT, len);
            live++;
        }
    }
    batch_run(&b);
    batch_free(&b);
    if (live < 2 || is_down(a, (uint32_t)home)) {
        *skipped_p = true; /* one copy (or none) left: nothing to compare it with */
    } else {
        const uint8_t *ref = buf + (size_t)home * XM_LAYOUT_REPL_UNIT;
        for (uint32_t p = 0; p < a->nparts; p++) {
            if (p == (uint32_t)home || is_down(a, p)) continue;
            if (memcmp(buf + (size_t)p * XM_LAYOUT_REPL_UNIT, ref, len) != 0) {
                batch_rw(&b, p, XM_OP_WRITE, off, (void *)ref, len);
                *repaired_p = true;
            }
        }
        if (batch_run(&b) != 0) st = xm__ctx_error(a->ctx, XM_ERR_IO, "%s: unit %llu: a copy could not be rewritten",
                                                   a->resil->what, (unsigned long long)u);
        batch_free(&b);
    }
    repl_unlock(a, home, u, u);
    return st;
}

/* One ec stripe: under its lock, parity re-encoded from the data and compared with what
 * the parity pieces hold; rewritten where it differs (range noted and ver bumped first,
 * as a writer does). A stripe with a piece down is skipped: it cannot be checked whole. */
static xm_status_t ec_scrub_row(xm_region_h a, uint64_t row, bool *repaired_p, bool *skipped_p)
{
    const xm__layout_t *l = &a->layout;
    uint32_t k = l->width, m = l->redundancy, n = k + m;
    for (uint32_t p = 0; p < n; p++) {
        if (is_down(a, xm__layout_piece_part(l, row, p))) {
            *skipped_p = true;
            return XM_OK;
        }
    }
    lockset_t ls;
    ec_lockset(a, row, &ls);
    xm_status_t st = lock_take(a, &ls, row, ec_repair_cb);
    if (st != XM_OK) return st;
    uint64_t c = l->chunk;
    uint8_t *buf = scratch(SCR_REENCODE, (size_t)(n + m) * c);
    if (buf == NULL) {
        st = XM_ERR_NO_MEMORY;
        goto out;
    }
    uint8_t *p[XM_EC_N_MAX + XM_EC_N_MAX];
    for (uint32_t i = 0; i < n + m; i++) p[i] = buf + (size_t)i * c;
    st = ec_fetch(a, row, (1u << n) - 1, 0, c, p, NULL, NULL);
    if (st == XM_OK) st = xm__ec_encode(&a->resil->ec, c, p, p + n, NULL); /* fresh parity after the pieces */
    if (st != XM_OK) goto out;
    bool differ = false;
    for (uint32_t i = 0; i < m; i++) differ |= memcmp(p[k + i], p[n + i], c) != 0;
    if (differ) {
        uint64_t range = (c << 24) | 0;
        batch_t b = {.a = a};
        lock_marks(a, &ls, &range, &b);
        batch_run(&b);
        batch_free(&b);
        for (uint32_t i = 0; i < m; i++) {
            batch_rw(&b, xm__layout_row_parity_part(l, row, i), XM_OP_WRITE, row * c, p[n + i], c);
        }
        if (batch_run(&b) != 0) st = xm__ctx_error(a->ctx, XM_ERR_IO, "%s: stripe %llu: parity could not be rewritten",
                                                   a->resil->what, (unsigned long long)row);
        batch_free(&b);
        *repaired_p = true;
    }
out:
    lock_drop(a, &ls);
    return st;
}

xm_status_t xm__resil_scrub(xm_region_h a, xm_scrub_report_t *rep,
                            void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg)
{
    bool ec = a->layout.kind == XM_LAYOUT_EC;
    uint64_t total = ec ? xm__layout_nrows(&a->layout)
                        : (a->layout.size + XM_LAYOUT_REPL_UNIT - 1) / XM_LAYOUT_REPL_UNIT;
    uint8_t *buf = ec ? NULL : malloc((size_t)a->nparts * XM_LAYOUT_REPL_UNIT);
    if (!ec && buf == NULL) return XM_ERR_NO_MEMORY;
    xm_status_t st = XM_OK;
    uint64_t last_ns = 0;
    for (uint64_t u = 0; u < total && st == XM_OK; u++) {
        bool repaired = false, skipped = false;
        st = ec ? ec_scrub_row(a, u, &repaired, &skipped) : repl_scrub_unit(a, u, buf, &repaired, &skipped);
        rep->units++;
        rep->repaired += repaired;
        rep->skipped += skipped;
        uint64_t now = xm__now_ns();
        if (progress != NULL && (now - last_ns > 100000000ull || u + 1 == total)) {
            last_ns = now;
            progress(u + 1, total, arg);
        }
    }
    free(buf);
    return st;
}

/* ---- entry -------------------------------------------------------------------------- */

bool xm__resil_is(xm_region_h r)
{
    return r->parts != NULL && r->resil != NULL;
}

/* A part unchanged and ok in a refreshed descriptor is trusted again only after this long
 * down: a part that keeps failing (a stopped appliance the manager still counts up) is not
 * retried at every refresh. */
#define DOWN_RETRUST_NS (5ull * 1000000000ull)

/*
 * Re-attach through the manager and take its descriptor's parts: a part that moved (another
 * appliance, region or key) or that the manager says is ok again comes back; a part it says
 * is down is marked down; a rebuilding part is written, not read. A handle without a context
 * (a mapping's copy) cannot ask.
 */
static xm_status_t resil_refresh(xm_region_h a)
{
    xm__resil_t *rs = a->resil;
    xm_ctx_h ctx = a->ctx;
    if (ctx == NULL || !ctx->manager) return XM_ERR_INVALID;
    pthread_mutex_lock(&rs->refresh_lock);
    Xmem__AllocRef ref = XMEM__ALLOC_REF__INIT;
    ref.id = a->id;
    ref.name = "";
    ref.access = (Xmem__Access)a->access;
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_ALLOC_ATTACH;
    req.alloc_attach = &ref;
    xm_status_t st = xm__rpc(ctx, &req, &rep);
    if (st != XM_OK) {
        pthread_mutex_unlock(&rs->refresh_lock);
        return st;
    }
    const Xmem__AllocDesc *d = rep->body_case == XMEM__MSG__BODY_ALLOC_DESC ? rep->alloc_desc : NULL;
    xm__part_t *tab = NULL;
    if (d == NULL || d->id != a->id || d->n_parts != rs->nparts ||
        (tab = malloc(rs->nparts * sizeof(*tab))) == NULL) {
        proto_msg_free(rep);
        pthread_mutex_unlock(&rs->refresh_lock);
        return d == NULL ? XM_ERR_PROTOCOL : tab == NULL ? XM_ERR_NO_MEMORY : XM_ERR_INVALID;
    }
    memcpy(tab, rs->tab, rs->nparts * sizeof(*tab));
    uint64_t now = xm__now_ns();
    for (uint32_t p = 0; p < rs->nparts && st == XM_OK; p++) {
        const Xmem__AllocPart *dp = d->parts[p];
        uint32_t peer;
        st = xm__dp_peer_add(rs->dp, dp->fabric_addr.data, dp->fabric_addr.len, &peer);
        if (st != XM_OK) break;
        bool changed = peer != tab[p].peer || dp->key != tab[p].key || dp->size != tab[p].size;
        if (changed) {
            /* over the fabric from now on (the local transport's mapping was of the old region) */
            tab[p] = (xm__part_t){.peer = peer, .key = dp->key, .size = dp->size};
        }
        tab[p].state = (uint8_t)dp->state;
        bool rebuilding = dp->state == XMEM__PART_STATE__PART_REBUILDING && a->layout.kind != XM_LAYOUT_EC;
        __atomic_store_n(&rs->rebuilding[p], rebuilding, __ATOMIC_RELAXED);
        if (dp->key == 0 || dp->state == XMEM__PART_STATE__PART_DOWN ||
            (dp->state == XMEM__PART_STATE__PART_REBUILDING && !rebuilding)) {
            mark_down(a, p, XM_ERR_DISCONNECTED);
        } else if (is_down(a, p) && (changed || now - rs->down_at[p] > DOWN_RETRUST_NS)) {
            xm_log_info("%s: part %u is back (%s)", rs->what, p,
                        rebuilding ? "being rebuilt: written, not read" : "ok");
            __atomic_store_n(&rs->down[p], 0, __ATOMIC_RELAXED);
        }
    }
    for (uint32_t p = 0; p < rs->nparts; p++)
        xm_log_debug("%s: refreshed: part %u key %s state %d down %d rebuilding %d", rs->what, p,
                     d->parts[p]->key ? "set" : "0", (int)d->parts[p]->state, is_down(a, p),
                     is_rebuilding(a, p));
    if (st == XM_OK) {
        struct oldtab *o = malloc(sizeof(*o));
        if (o == NULL) {
            st = XM_ERR_NO_MEMORY;
        } else {
            o->tab = rs->tab;
            o->next = rs->old;
            rs->old = o;
            __atomic_store_n(&rs->tab, tab, __ATOMIC_RELEASE);
            tab = NULL;
            __atomic_store_n(&rs->gen, d->generation, __ATOMIC_RELEASE);
        }
    }
    free(tab);
    proto_msg_free(rep);
    pthread_mutex_unlock(&rs->refresh_lock);
    return st;
}

static xm_status_t resil_run(xm_op_t *op)
{
    xm_region_h a = op->region;
    xm_status_t st;
    switch (op->opcode) {
    case XM_OP_READ:
        st = a->layout.kind == XM_LAYOUT_EC ? ec_read(a, op->offset, op->buf, op->length)
                                            : repl_read(a, op->offset, op->buf, op->length);
        break;
    case XM_OP_WRITE:
        st = a->layout.kind == XM_LAYOUT_EC ? ec_write(a, op->offset, op->buf, op->length)
                                            : repl_write(a, op->offset, op->buf, op->length);
        break;
    default:
        if (a->layout.kind == XM_LAYOUT_EC) {
            st = xm__ctx_error(a->ctx, XM_ERR_INVALID,
                               "%s: atomics are not available on ec allocations (a word's parity cannot be "
                               "updated atomically with it); use replicate or stripe for words updated atomically",
                               a->resil->what);
        } else {
            st = repl_atomic(a, op);
        }
        break;
    }
    return st;
}

void xm__resil_op(xm_op_t *op)
{
    xm_region_h a = op->region;
    xm__resil_t *rs = a->resil;
    uint32_t ev = __atomic_load_n(&rs->down_events, __ATOMIC_RELAXED);
    xm_status_t st = resil_run(op);
    /* a part failed, or a lock word showed that a newer descriptor exists (the manager
     * fenced this one for a rebuild): re-attach, then run a failed operation once more. The
     * path when all is well is unchanged: nothing here runs. */
    bool fenced = __atomic_exchange_n(&rs->need_refresh, 0, __ATOMIC_RELAXED) != 0;
    bool downs = __atomic_load_n(&rs->down_events, __ATOMIC_RELAXED) != ev;
    if ((st != XM_OK || fenced || downs) && a->ctx != NULL && a->ctx->manager) {
        xm_status_t rst = resil_refresh(a);
        if (rst != XM_OK) {
            xm_log_warn("%s: cannot refresh its descriptor: %s", rs->what, xm_status_str(rst));
        } else if (st != XM_OK && (fenced || op->opcode == XM_OP_READ || op->opcode == XM_OP_WRITE)) {
            /* reads and writes are safe to repeat; an atomic only when it was refused before
             * it took its lock (fenced) */
            st = resil_run(op);
            xm_log_debug("%s: operation run again after a refresh: %s", rs->what, xm_status_str(st));
        }
    }
    op->pending_ = 0;
    __atomic_store_n(&op->status, st, __ATOMIC_RELEASE);
}
