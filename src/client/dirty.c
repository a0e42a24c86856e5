/* libxmem mappings: dirty tracking and write-back. Pages are installed
 * write-protected with the kernel's asynchronous write-protect
 * (UFFD_FEATURE_WP_ASYNC): the first store to a page un-protects it in the
 * kernel (0.66 us, no fault to us). PAGEMAP_SCAN then reports exactly the
 * pages written since the last scan and re-protects them in the same walk,
 * so a page written again after its write-back is reported again. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
static xm_status_t write_pages(xm__map_t *m, uint8_t *wbuf, uint64_t p, uint64_t q, uint64_t *hashes,
                               uint64_t *written)
{
    xm__engine_t *eng = m->eng;
    while (p < q) {
        uint64_t n = XM_MIN(q - p, (uint64_t)WB_MAX_PAGES);
        for (uint64_t i = 0; i < n; i++) {
            xm__page_copy_racy(wbuf + i * XM__PAGE, m->addr + (p + i) * XM__PAGE);
            hashes[i] = xm__page_hash(wbuf + i * XM__PAGE);
        }
        uint64_t off = p * XM__PAGE;
        uint64_t len = XM_MIN(n * XM__PAGE, m->len - off);
        xm_status_t status = xm_write(m->regions[XM__SYNC_LANE(eng)], m->off + off, wbuf, len);
        if (status != XM_OK) {
            xm_log_warn("map: region %llu offset %llu: write-back of %llu bytes failed (%s): "
                        "kept resident and dirty", (unsigned long long)m->region_id,
                        (unsigned long long)(m->off + off), (unsigned long long)len,
                        xm_last_error(m->regions[XM__SYNC_LANE(eng)]->ctx));
            return status;
        }
        for (uint64_t i = 0; i < n; i++) m->hash[p + i] = hashes[i];
        *written += n;
        p += n;
    }
    return XM_OK;
}

/* Written pages of blocks [b0, b1) (all pinned and resident): scan, write back. */
static xm_status_t sync_run(xm__map_t *m, uint32_t b0, uint32_t b1, const bool *suspect, uint8_t *wbuf,
                            uint64_t *hashes, uint64_t *written)
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
            .category_mask = PAGE_IS_WRITTEN,
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
            status = write_pages(m, wbuf, p, q, hashes, written);
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
            if (xm__page_hash(wbuf) != m->hash[p]) status = write_pages(m, wbuf, p, p + 1, hashes, written);
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
        while (m->blocks[b].state == XM__BLK_EVICTING) pthread_cond_wait(&eng->cond, &eng->lock);
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
        status = sync_run(m, b, e, suspect + (b - b0), wbuf, hashes, &written);
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
    bool again = false;
    pthread_mutex_lock(&m->eng->lock);
    for (uint32_t b = b0; b < b1; b++) {
        if (!fetching[b - b0]) continue;
        again = true;
        while (m->blocks[b].state == XM__BLK_FETCHING) pthread_cond_wait(&m->eng->cond, &m->eng->lock);
    }
    pthread_mutex_unlock(&m->eng->lock);
    /* once more for those: a block fetched again since was evicted (written back) meanwhile */
    if (again && status == XM_OK) status = sync_pass(m, b0, b1, true, fetching);
    free(fetching);
    return status;
}
