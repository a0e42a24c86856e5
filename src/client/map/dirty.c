/* libxmem mappings: dirty tracking and write-back. Pages are installed
 * write-protected with the kernel's asynchronous write-protect
 * (UFFD_FEATURE_WP_ASYNC): the first store to a page un-protects it in the
 * kernel (0.66 us, no fault to us). PAGEMAP_SCAN then reports exactly the
 * pages written since the last scan and re-protects them in the same walk,
 * so a page written again after its write-back is reported again. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../common/common.h"
#include "map.h"
#include "procstat.h"
#include "uffd_compat.h"

#define SCAN_VEC 256
#define WB_MAX_PAGES 256 /* 1 MiB per write */

/* The application may store into the page while we copy it: a torn copy is
 * fine (the page is un-protected again by that store and goes back at the
 * next sync or eviction), but the sanitizer must not call it a bug. */
#if defined(__SANITIZE_THREAD__)
#define XM_NO_TSAN __attribute__((no_sanitize("thread")))
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define XM_NO_TSAN __attribute__((no_sanitize("thread")))
#endif
#endif
#ifndef XM_NO_TSAN
#define XM_NO_TSAN
#endif

XM_NO_TSAN void xm__page_copy_racy(void *dst, const void *src)
{
    volatile const uint64_t *s = src;
    uint64_t *d = dst;
    for (size_t i = 0; i < XM__PAGE / 8; i++) d[i] = s[i];
}

/*
 * Write-back in flight: the written pages of a pass are copied into a ring
 * and posted as writes (a run of adjacent pages is one write of up to
 * WB_MAX_PAGES), up to WB_WINDOW of them in flight on the data path,
 * instead of one blocking write per run (32k scattered pages took 14-27 s
 * over tcp that way). A page's hash is recorded only when its write is
 * acknowledged (delivery-complete: in the appliance's memory); a failed
 * write leaves the old hash, and the caller marks the blocks from the
 * lowest failed page on suspect, so the next sync compares them page by
 * page. Every write of a pass is settled before its blocks are unpinned or
 * a page is written again (wb_drain), so no two writes of one page are ever
 * in flight together.
 */
#define WB_WINDOW 128u
#define WB_RING_PAGES 2048u /* 8 MiB of copies in flight */

typedef struct wb_slot {
    xm_op_t op;
    uint64_t p, n; /* pages [p, p+n) of the mapping */
    uint32_t at;   /* their copies: ring pages [at, at+n) */
    uint32_t span; /* ring pages this write holds (n, plus the tail it skipped when it wrapped) */
} wb_slot_t;

/* One pass's writes; owned by the thread making the pass. */
typedef struct xm__wb {
    xm__map_t *m;
    xm_region_h region;      /* the mapping's handle (m->region) */
    xm__dp_t *dp;
    uint8_t *ring;           /* WB_RING_PAGES pages */
    uint64_t *rhash;         /* hash of each ring page's copy */
    wb_slot_t slot[WB_WINDOW];
    uint32_t head, count;    /* slots in flight, oldest first */
    uint32_t ring_head, ring_used;
    xm_status_t status;      /* the first failure */
    uint64_t failed_page;    /* lowest page of a failed write; UINT64_MAX: none */
    uint64_t written;        /* pages acknowledged */
} xm__wb_t;

static xm__wb_t *wb_create(void)
{
    xm__wb_t *wb = calloc(1, sizeof(*wb));
    if (wb == NULL) return NULL;
    wb->ring = aligned_alloc(XM__PAGE, (size_t)WB_RING_PAGES * XM__PAGE);
    wb->rhash = malloc(WB_RING_PAGES * sizeof(uint64_t));
    if (wb->ring == NULL || wb->rhash == NULL) {
        free(wb->ring);
        free(wb->rhash);
        free(wb);
        return NULL;
    }
    return wb;
}

static void wb_destroy(xm__wb_t *wb)
{
    if (wb == NULL) return;
    free(wb->ring);
    free(wb->rhash);
    free(wb);
}

/* Start a pass over m; nothing in flight. */
static void wb_begin(xm__wb_t *wb, xm__map_t *m)
{
    wb->m = m;
    wb->region = m->region;
    wb->dp = m->eng->dp;
    wb->head = wb->count = 0;
    wb->ring_head = wb->ring_used = 0;
    wb->status = XM_OK;
    wb->failed_page = UINT64_MAX;
    wb->written = 0;
}

/* Wait for the oldest write and settle it. */
static void wb_retire(xm__wb_t *wb)
{
    wb_slot_t *s = &wb->slot[wb->head];
    xm_op_t *op = &s->op;
    xm_status_t status = xm__dp_wait(wb->dp, &op, 1);
    if (status == XM_OK) {
        for (uint64_t i = 0; i < s->n; i++) xm__hash_set(wb->m, s->p + i, wb->rhash[s->at + i]);
        wb->written += s->n;
    } else {
        if (wb->status == XM_OK) {
            xm_log_warn("map: region %llu offset %llu: write-back of %llu bytes failed (%s): "
                        "kept resident and dirty", (unsigned long long)wb->m->region_id,
                        (unsigned long long)(op->offset), (unsigned long long)op->length,
                        xm__tls_error());
            wb->status = status;
        }
        wb->failed_page = XM_MIN(wb->failed_page, s->p);
    }
    wb->ring_used -= s->span;
    wb->head = (wb->head + 1) % WB_WINDOW;
    wb->count--;
}

/* Settle every write in flight; the pass's first failure. */
static xm_status_t wb_drain(xm__wb_t *wb)
{
    while (wb->count > 0) wb_retire(wb);
    return wb->status;
}

/* Room for n (<= WB_MAX_PAGES) pages of copies: their first ring page. */
static uint32_t wb_room(xm__wb_t *wb, uint32_t n, uint32_t *span_p)
{
    for (;;) {
        if (wb->count < WB_WINDOW) {
            if (wb->ring_used == 0) wb->ring_head = 0;
            uint32_t end_room = WB_RING_PAGES - wb->ring_head, free_pages = WB_RING_PAGES - wb->ring_used;
            uint32_t at = UINT32_MAX, span = 0;
            if (n <= end_room && n <= free_pages) {
                at = wb->ring_head;
                span = n;
            } else if (n > end_room && end_room + n <= free_pages) {
                at = 0; /* wrap: the tail stays unused until this write is settled */
                span = end_room + n;
            }
            if (at != UINT32_MAX) {
                wb->ring_head = (at + n) % WB_RING_PAGES;
                wb->ring_used += span;
                *span_p = span;
                return at;
            }
        }
        wb_retire(wb);
    }
}

/* Pages [p, q) of the mapping (present, pinned): copy, hash, post their writes.
 * Stops posting at the pass's first failure (which it returns). */
static xm_status_t wb_write(xm__wb_t *wb, uint64_t p, uint64_t q)
{
    xm__map_t *m = wb->m;
    while (p < q && wb->status == XM_OK) {
        uint32_t n = (uint32_t)XM_MIN(q - p, (uint64_t)WB_MAX_PAGES), span;
        uint32_t at = wb_room(wb, n, &span);
        if (wb->status != XM_OK) { /* found while making room */
            wb->ring_used -= span;
            wb->ring_head = at;
            break;
        }
        uint8_t *buf = wb->ring + (uint64_t)at * XM__PAGE;
        for (uint32_t i = 0; i < n; i++) {
            xm__page_copy_racy(buf + (uint64_t)i * XM__PAGE, m->addr + (p + i) * XM__PAGE);
            wb->rhash[at + i] = xm__page_hash(buf + (uint64_t)i * XM__PAGE);
        }
        uint64_t off = p * XM__PAGE;
        wb_slot_t *s = &wb->slot[(wb->head + wb->count) % WB_WINDOW];
        *s = (wb_slot_t){.p = p, .n = n, .at = at, .span = span};
        s->op = (xm_op_t){.opcode = XM_OP_WRITE, .region = wb->region, .offset = m->off + off, .buf = buf,
                          .length = (size_t)XM_MIN((uint64_t)n * XM__PAGE, m->len - off)};
        wb->count++;
        xm__dp_post(wb->dp, &s->op, 0); /* a failure to post is the op's status: settled as one */
        p += n;
    }
    return wb->status;
}

/* Written pages of blocks [b0, b1) (all pinned and resident): scan, post their
 * write-back. A suspect block's pages are compared once this pass's writes are
 * settled. Returns the pass's first failure seen so far. */
static xm_status_t sync_run(xm__wb_t *wb, uint32_t b0, uint32_t b1, const bool *suspect)
{
    xm__map_t *m = wb->m;
    xm__engine_t *eng = m->eng;
    uint64_t start = (uint64_t)b0 * m->fetch, end = XM_MIN((uint64_t)b1 * m->fetch, m->vlen);
    struct page_region vec[SCAN_VEC];
    uint64_t at = start;
    xm_status_t status = XM_OK;
    while (at < end) {
        struct pm_scan_arg arg = {
            .size = sizeof(arg),
            .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            .start = (uintptr_t)(m->addr + at),
            .end = (uintptr_t)(m->addr + end),
            .vec = (uintptr_t)vec,
            .vec_len = SCAN_VEC,
            /* there too (present or swapped out): to PAGEMAP_SCAN an empty page
             * of a write-protect-async range counts as written (the unfetched
             * pages of a block a random fault brought in one page of), and
             * copying one would fault; a swapped-out page keeps its bit, and
             * copying it swaps it in */
            .category_mask = PAGE_IS_WRITTEN,
            .category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            .return_mask = PAGE_IS_WRITTEN,
        };
        long n = ioctl(eng->pagemap_fd, PAGEMAP_SCAN, &arg);
        if (n < 0) {
            xm_log_error("map: PAGEMAP_SCAN: %m");
            return XM_ERR_IO;
        }
        /* pages reported here are re-protected: from now on a failure must
         * leave their blocks suspect so nothing written is forgotten */
        for (long i = 0; i < n && status == XM_OK; i++) {
            uint64_t p = (vec[i].start - (uintptr_t)m->addr) / XM__PAGE;
            uint64_t q = (vec[i].end - (uintptr_t)m->addr) / XM__PAGE;
            status = wb_write(wb, p, q);
        }
        if (status != XM_OK) return status;
        if (arg.walk_end <= (uintptr_t)(m->addr + at)) break;
        at = arg.walk_end - (uintptr_t)m->addr;
    }
    /* blocks whose last write-back failed: compare every page with what the appliance
     * holds, once the hashes of the writes above are in (a page is never in two writes) */
    bool any = false;
    for (uint32_t b = b0; b < b1 && !any; b++) any = suspect[b - b0];
    if (any) status = wb_drain(wb);
    uint8_t page[XM__PAGE] __attribute__((aligned(64)));
    for (uint32_t b = b0; b < b1 && any && status == XM_OK; b++) {
        if (!suspect[b - b0]) continue;
        uint64_t p0 = (uint64_t)b * m->fetch / XM__PAGE, np = xm__block_bytes(m, b) / XM__PAGE;
        for (uint64_t p = p0; p < p0 + np && status == XM_OK; p++) {
            xm__page_copy_racy(page, m->addr + p * XM__PAGE);
            if (xm__page_hash(page) != xm__hash_get(m, p)) status = wb_write(wb, p, p + 1);
        }
    }
    return status;
}

/* The block from which a pass's blocks must stay (or become) suspect: the run that
 * saw the failure, from its start, and every block from the lowest failed write on. */
static uint32_t failed_block(const xm__wb_t *wb, uint32_t failed_from)
{
    if (wb->failed_page == UINT64_MAX) return failed_from;
    return XM_MIN(failed_from, (uint32_t)(wb->failed_page * XM__PAGE / wb->m->fetch));
}

/* One pass over [b0, b1); blocks being fetched are skipped and flagged in *fetching. */
static xm_status_t sync_pass(xm__map_t *m, uint32_t b0, uint32_t b1, bool only_flagged, bool *fetching)
{
    xm__engine_t *eng = m->eng;
    if (m->ro || b0 >= b1) return XM_OK;
    uint32_t n = b1 - b0;
    bool *pinned = calloc(n, sizeof(bool)), *suspect = calloc(n, sizeof(bool));
    xm__wb_t *wb = wb_create();
    if (pinned == NULL || suspect == NULL || wb == NULL) {
        free(pinned);
        free(suspect);
        wb_destroy(wb);
        return XM_ERR_NO_MEMORY;
    }
    /* pin what is resident; wait for evictions in flight (their write-back is
     * part of what this call must make durable; they never wait for anything).
     * A block being fetched may already show its pages (and take stores) but
     * its fetch may be waiting for room that our pins hold: flag it, and the
     * caller waits for it with no pins held. */
    pthread_mutex_lock(&eng->lock);
    for (uint32_t b = b0; b < b1; b++) {
        if (only_flagged && !fetching[b - b0]) continue;
        fetching[b - b0] = false;
        /* the cleaner may hold pages it has re-protected but not yet written back */
        while (m->blocks[b].state == XM__BLK_EVICTING || m->blocks[b].cleaning) {
            pthread_cond_wait(&eng->cond, &eng->lock);
        }
        if (m->blocks[b].state == XM__BLK_FETCHING) fetching[b - b0] = true;
        if (m->blocks[b].state == XM__BLK_RESIDENT) {
            m->blocks[b].pins++;
            pinned[b - b0] = true;
            suspect[b - b0] = m->blocks[b].suspect;
        }
    }
    pthread_mutex_unlock(&eng->lock);

    wb_begin(wb, m);
    xm_status_t status = XM_OK;
    uint32_t failed_from = b1;
    for (uint32_t b = b0; b < b1 && status == XM_OK;) {
        if (!pinned[b - b0]) {
            b++;
            continue;
        }
        uint32_t e = b;
        while (e < b1 && pinned[e - b0]) e++;
        status = sync_run(wb, b, e, suspect + (b - b0));
        if (status != XM_OK) failed_from = b;
        b = e;
    }
    /* every write settled (acknowledged, failed or cancelled) before the pins go */
    xm_status_t settled = wb_drain(wb);
    if (status == XM_OK) status = settled;
    failed_from = failed_block(wb, failed_from);
    uint64_t written = wb->written;

    pthread_mutex_lock(&eng->lock);
    for (uint32_t b = b0; b < b1; b++) {
        if (!pinned[b - b0]) continue;
        m->blocks[b].pins--;
        if (b >= failed_from) {
            /* pages of this run may have been re-protected without being written back */
            m->blocks[b].suspect = 1;
        } else if (suspect[b - b0]) {
            m->blocks[b].suspect = 0;
        }
    }
    m->stats.writeback_pages += written;
    XM__PS_ADD(writeback_pages, written);
    if (status != XM_OK) {
        m->stats.writeback_errors++;
        XM__PS_ADD(writeback_errors, 1);
    }
    pthread_cond_broadcast(&eng->cond);
    pthread_mutex_unlock(&eng->lock);
    free(pinned);
    free(suspect);
    wb_destroy(wb);
    return status;
}

xm_status_t xm__sync_blocks(xm__map_t *m, uint32_t b0, uint32_t b1)
{
    if (m->ro || b0 >= b1) return XM_OK;
    bool *fetching = calloc(b1 - b0, sizeof(bool));
    if (fetching == NULL) return XM_ERR_NO_MEMORY;
    xm_status_t status = sync_pass(m, b0, b1, false, fetching);
    /* again for those: a block fetched whole since was evicted (written back) meanwhile;
     * one a fault is filling in (a partly fetched block) holds pages that may have been
     * written, and may be being filled in again by the next pass: until none is. Ends:
     * a block is filled in at most once per page it lacks. */
    for (;;) {
        bool again = false;
        pthread_mutex_lock(&m->eng->lock);
        for (uint32_t b = b0; b < b1; b++) {
            if (!fetching[b - b0]) continue;
            again = true;
            while (m->blocks[b].state == XM__BLK_FETCHING) pthread_cond_wait(&m->eng->cond, &m->eng->lock);
        }
        pthread_mutex_unlock(&m->eng->lock);
        if (!again || status != XM_OK) break;
        status = sync_pass(m, b0, b1, true, fetching);
    }
    free(fetching);
    return status;
}

/* ---- the cleaner ------------------------------------------------------- */

#define CLEAN_BATCH 16u /* blocks marked at a time (eviction passes over them meanwhile) */

typedef struct cleaner {
    xm__engine_t *eng;
    xm__wb_t *wb;
    bool sel[CLEAN_BATCH], suspect[CLEAN_BATCH];
} cleaner_t;

/* Blocks [b0, b1) of m (at most CLEAN_BATCH): write back the written pages
 * of the resident, idle ones. eng->lock held; dropped for the I/O. */
static uint64_t clean_range(cleaner_t *c, xm__map_t *m, uint32_t b0, uint32_t b1, bool cold_only)
{
    xm__engine_t *eng = c->eng;
    uint32_t n = 0;
    for (uint32_t b = b0; b < b1; b++) {
        xm__block_t *blk = &m->blocks[b];
        bool sel = blk->state == XM__BLK_RESIDENT && blk->pins == 0 && !blk->cleaning &&
                   !(cold_only && blk->ref);
        c->sel[b - b0] = sel;
        c->suspect[b - b0] = sel && blk->suspect;
        if (sel) {
            blk->cleaning = 1;
            n++;
        }
    }
    if (n == 0) return 0;
    m->users++;
    pthread_mutex_unlock(&eng->lock);
    wb_begin(c->wb, m);
    xm_status_t status = XM_OK;
    uint32_t failed_from = b1;
    for (uint32_t b = b0; b < b1 && status == XM_OK;) {
        if (!c->sel[b - b0]) {
            b++;
            continue;
        }
        uint32_t e = b;
        while (e < b1 && c->sel[e - b0]) e++;
        status = sync_run(c->wb, b, e, c->suspect + (b - b0));
        if (status != XM_OK) failed_from = b;
        b = e;
    }
    xm_status_t settled = wb_drain(c->wb); /* before the blocks are given back */
    if (status == XM_OK) status = settled;
    failed_from = failed_block(c->wb, failed_from);
    uint64_t written = c->wb->written;
    pthread_mutex_lock(&eng->lock);
    for (uint32_t b = b0; b < b1; b++) {
        if (!c->sel[b - b0]) continue;
        m->blocks[b].cleaning = 0;
        if (b >= failed_from) {
            m->blocks[b].suspect = 1; /* pages may have been re-protected, not written back */
        } else if (c->suspect[b - b0]) {
            m->blocks[b].suspect = 0;
        }
    }
    m->stats.writeback_pages += written;
    XM__PS_ADD(writeback_pages, written);
    if (status != XM_OK) {
        m->stats.writeback_errors++;
        XM__PS_ADD(writeback_errors, 1);
    }
    m->users--;
    pthread_cond_broadcast(&eng->cond);
    return written;
}

bool xm__span_written(xm__map_t *m, uint32_t b0, uint32_t b1)
{
    struct page_region vec[1];
    struct pm_scan_arg arg = {
        .size = sizeof(arg),
        .flags = 0,
        .start = (uintptr_t)(m->addr + (uint64_t)b0 * m->fetch),
        .end = (uintptr_t)(m->addr + XM_MIN((uint64_t)b1 * m->fetch, m->vlen)),
        .vec = (uintptr_t)vec,
        .vec_len = 1,
        .max_pages = 1,
        .category_mask = PAGE_IS_WRITTEN,
        .category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        .return_mask = PAGE_IS_WRITTEN,
    };
    return ioctl(m->eng->pagemap_fd, PAGEMAP_SCAN, &arg) != 0; /* an error: look closer */
}

/* Clean [b0, b1) in batches. Lock held. */
static uint64_t clean_span(cleaner_t *c, xm__map_t *m, uint32_t b0, uint32_t b1, bool cold_only)
{
    uint64_t written = 0;
    if (b0 >= b1 || !xm__span_written(m, b0, b1)) return 0;
    for (uint32_t b = b0; b < b1 && !m->dying && !c->eng->stopping; b += CLEAN_BATCH) {
        written += clean_range(c, m, b, XM_MIN(b1, b + CLEAN_BATCH), cold_only);
    }
    return written;
}

/* One mapping: when its cache (or the engine's) is within `ahead` blocks of
 * full, clean the blocks a long sequential run will give up next and those
 * the CLOCK hand reaches next. Lock held. */
static uint64_t clean_map(cleaner_t *c, xm__map_t *m)
{
    xm__engine_t *eng = c->eng;
    uint32_t lag = XM_MAX(2u, XM__RA_MAX_BYTES / m->fetch);
    uint64_t budget_blocks = m->budget / m->fetch;
    uint32_t ahead = (uint32_t)XM_MIN((uint64_t)m->nblocks, XM_MAX(budget_blocks / 8, (uint64_t)2 * lag));
    uint64_t near = (uint64_t)ahead * m->fetch;
    bool full = m->resident + near >= m->budget || (eng->budget != UINT64_MAX && eng->resident + near >= eng->budget);
    if (!full) return 0;
    uint64_t written = 0;
    if (m->stream_len >= XM_MAX((uint64_t)2 * lag, budget_blocks / 8) && m->stream_at > lag) {
        uint32_t hi = m->stream_at - lag;
        written += clean_span(c, m, hi > 2 * lag ? hi - 2 * lag : 0, hi, false);
    }
    uint32_t h = m->hand;
    uint32_t end = h + ahead;
    /* referenced blocks will be passed over once more: not yet */
    written += clean_span(c, m, h, XM_MIN(end, m->nblocks), true);
    if (end > m->nblocks) written += clean_span(c, m, 0, end - m->nblocks, true);
    return written;
}

void *xm__clean_thread(void *arg)
{
    cleaner_t *c = calloc(1, sizeof(*c));
    xm__engine_t *eng = arg;
    if (c == NULL) return NULL;
    c->eng = eng;
    c->wb = wb_create();
    if (c->wb == NULL) goto out;
    pthread_mutex_lock(&eng->lock);
    uint32_t round = 0;
    while (!eng->stopping) {
        eng->clean_wanted = false;
        round++;
        uint64_t written = 0;
        /* one mapping at a time, from the head each time (the lock is dropped
         * while cleaning, and the list may change) */
        for (;;) {
            xm__map_t *m = eng->maps;
            while (m != NULL && (m->ro || m->dying || m->clean_round == round)) m = m->next;
            if (m == NULL || eng->stopping) break;
            m->clean_round = round;
            written += clean_map(c, m);
        }
        if (written > 0 || eng->stopping) continue;
        /* nothing to write: look again when a fault has to evict, at the latest in 20 ms */
        pthread_mutex_unlock(&eng->lock);
        usleep(2000);
        pthread_mutex_lock(&eng->lock);
        if (!eng->clean_wanted && !eng->stopping) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 20 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&eng->clean_cond, &eng->lock, &ts);
        }
    }
    pthread_mutex_unlock(&eng->lock);
out:
    wb_destroy(c->wb);
    free(c);
    return NULL;
}
