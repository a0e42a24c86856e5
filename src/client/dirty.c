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

#include "../common/common.h"
#include "map.h"
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

/* Pages [p, q) of m: copy, write back, record their hashes. */
static xm_status_t write_pages(xm__map_t *m, uint32_t lane, uint8_t *wbuf, uint64_t p, uint64_t q,
                               uint64_t *hashes, uint64_t *written)
{
    while (p < q) {
        uint64_t n = XM_MIN(q - p, (uint64_t)WB_MAX_PAGES);
        for (uint64_t i = 0; i < n; i++) {
            xm__page_copy_racy(wbuf + i * XM__PAGE, m->addr + (p + i) * XM__PAGE);
            hashes[i] = xm__page_hash(wbuf + i * XM__PAGE);
        }
        uint64_t off = p * XM__PAGE;
        uint64_t len = XM_MIN(n * XM__PAGE, m->len - off);
        xm_status_t status = xm_write(m->regions[lane], m->off + off, wbuf, len);
        if (status != XM_OK) {
            xm_log_warn("map: region %llu offset %llu: write-back of %llu bytes failed (%s): "
                        "kept resident and dirty", (unsigned long long)m->region_id,
                        (unsigned long long)(m->off + off), (unsigned long long)len,
                        xm_last_error(m->regions[lane]->ctx));
            return status;
        }
        for (uint64_t i = 0; i < n; i++) xm__hash_set(m, p + i, hashes[i]);
        *written += n;
        p += n;
    }
    return XM_OK;
}

/* Written pages of blocks [b0, b1) (all pinned and resident): scan, write back. */
static xm_status_t sync_run(xm__map_t *m, uint32_t lane, uint32_t b0, uint32_t b1, const bool *suspect,
                            uint8_t *wbuf, uint64_t *hashes, uint64_t *written)
{
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
            status = write_pages(m, lane, wbuf, p, q, hashes, written);
        }
        if (status != XM_OK) return status;
        if (arg.walk_end <= (uintptr_t)(m->addr + at)) break;
        at = arg.walk_end - (uintptr_t)m->addr;
    }
    /* blocks whose last write-back failed: compare every page with what the appliance holds */
    for (uint32_t b = b0; b < b1 && status == XM_OK; b++) {
        if (!suspect[b - b0]) continue;
        uint64_t p0 = (uint64_t)b * m->fetch / XM__PAGE, np = xm__block_bytes(m, b) / XM__PAGE;
        for (uint64_t p = p0; p < p0 + np && status == XM_OK; p++) {
            xm__page_copy_racy(wbuf, m->addr + p * XM__PAGE);
            if (xm__page_hash(wbuf) != xm__hash_get(m, p)) status = write_pages(m, lane, wbuf, p, p + 1, hashes, written);
        }
    }
    return status;
}

/* One pass over [b0, b1); blocks being fetched are skipped and flagged in *fetching. */
static xm_status_t sync_pass(xm__map_t *m, uint32_t b0, uint32_t b1, bool only_flagged, bool *fetching)
{
    xm__engine_t *eng = m->eng;
    if (m->ro || b0 >= b1) return XM_OK;
    uint32_t n = b1 - b0;
    bool *pinned = calloc(n, sizeof(bool)), *suspect = calloc(n, sizeof(bool));
    uint8_t *wbuf = aligned_alloc(XM__PAGE, (size_t)WB_MAX_PAGES * XM__PAGE);
    uint64_t *hashes = malloc(WB_MAX_PAGES * sizeof(uint64_t));
    if (pinned == NULL || suspect == NULL || wbuf == NULL || hashes == NULL) {
        free(pinned);
        free(suspect);
        free(wbuf);
        free(hashes);
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

    xm__lane_t *lane = &eng->lanes[XM__SYNC_LANE(eng)];
    pthread_mutex_lock(&lane->lock);
    xm_status_t status = XM_OK;
    uint64_t written = 0;
    uint32_t failed_from = b1;
    for (uint32_t b = b0; b < b1 && status == XM_OK;) {
        if (!pinned[b - b0]) {
            b++;
            continue;
        }
        uint32_t e = b;
        while (e < b1 && pinned[e - b0]) e++;
        status = sync_run(m, XM__SYNC_LANE(eng), b, e, suspect + (b - b0), wbuf, hashes, &written);
        if (status != XM_OK) failed_from = b;
        b = e;
    }
    pthread_mutex_unlock(&lane->lock);

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
    if (status != XM_OK) m->stats.writeback_errors++;
    pthread_cond_broadcast(&eng->cond);
    pthread_mutex_unlock(&eng->lock);
    free(pinned);
    free(suspect);
    free(wbuf);
    free(hashes);
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
    uint8_t *wbuf;
    uint64_t *hashes;
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
    xm__lane_t *lane = &eng->lanes[XM__CLEAN_LANE(eng)];
    pthread_mutex_lock(&lane->lock);
    xm_status_t status = XM_OK;
    uint64_t written = 0;
    uint32_t failed_from = b1;
    for (uint32_t b = b0; b < b1 && status == XM_OK;) {
        if (!c->sel[b - b0]) {
            b++;
            continue;
        }
        uint32_t e = b;
        while (e < b1 && c->sel[e - b0]) e++;
        status = sync_run(m, XM__CLEAN_LANE(eng), b, e, c->suspect + (b - b0), c->wbuf, c->hashes, &written);
        if (status != XM_OK) failed_from = b;
        b = e;
    }
    pthread_mutex_unlock(&lane->lock);
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
    if (status != XM_OK) m->stats.writeback_errors++;
    m->users--;
    pthread_cond_broadcast(&eng->cond);
    return written;
}

/* Any page of blocks [b0, b1) written since its last write-back? A hint
 * (nothing is re-protected), so clean spans cost one ioctl and no marking. */
static bool span_written(xm__map_t *m, uint32_t b0, uint32_t b1)
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
    if (b0 >= b1 || !span_written(m, b0, b1)) return 0;
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
    c->wbuf = aligned_alloc(XM__PAGE, (size_t)WB_MAX_PAGES * XM__PAGE);
    c->hashes = malloc(WB_MAX_PAGES * sizeof(uint64_t));
    if (c->wbuf == NULL || c->hashes == NULL) goto out;
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
    free(c->wbuf);
    free(c->hashes);
    free(c);
    return NULL;
}
