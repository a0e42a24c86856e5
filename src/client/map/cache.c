/* libxmem mappings: the bounded local cache. CLOCK picks victims; eviction
 * moves a block out of the mapping (UFFDIO_MOVE) before deciding whether it
 * is dirty, so no store can slip past it: after the move any access faults
 * and waits until the block's write-back is done. */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../../common/common.h"
#include "map.h"
#include "procstat.h"
#include "uffd_compat.h"

uint64_t xm__block_bytes(const xm__map_t *m, uint32_t b)
{
    uint64_t start = (uint64_t)b * m->fetch;
    return XM_MIN((uint64_t)m->fetch, m->vlen - start);
}

bool xm__clock_pick(xm__block_t *blocks, uint32_t n, uint32_t *hand, uint32_t *victim_p)
{
    if (n == 0) return false;
    /* two sweeps: the first may only clear referenced bits */
    for (uint64_t i = 0; i < 2ull * n + 1; i++) {
        uint32_t b = *hand;
        *hand = b + 1 == n ? 0 : b + 1;
        xm__block_t *blk = &blocks[b];
        if (blk->state != XM__BLK_RESIDENT || blk->pins != 0 || blk->cleaning) continue;
        if (blk->ref) {
            blk->ref = 0;
            continue;
        }
        *victim_p = b;
        return true;
    }
    return false;
}

bool xm__behind_pick(const xm__block_t *blocks, uint32_t from, uint32_t span, uint32_t *victim_p)
{
    for (uint32_t i = 0; i < span && i < from; i++) {
        uint32_t b = from - 1 - i;
        if (blocks[b].state == XM__BLK_RESIDENT && blocks[b].pins == 0 && !blocks[b].cleaning) {
            *victim_p = b;
            return true;
        }
    }
    return false;
}

/* A long sequential run in m (longer than an eighth of its cache) gives up
 * the blocks it has passed, at least a full read-ahead window behind it:
 * a single pass over more data than the cache keeps what was resident
 * (CLOCK, like LRU, would evict exactly the blocks the pass reaches next),
 * while runs that fit (a bucket of a sort) stay under CLOCK. */
static bool drop_behind(xm__map_t *m, uint32_t *victim_p)
{
    uint32_t lag = XM_MAX(2u, XM__RA_MAX_BYTES / m->fetch);
    uint64_t budget_blocks = m->budget / m->fetch;
    if (m->stream_len < XM_MAX((uint64_t)2 * lag, budget_blocks / 8)) return false;
    if (m->stream_at <= lag) return false;
    return xm__behind_pick(m->blocks, m->stream_at - lag, 4 * lag, victim_p);
}

/* Drop-behind's victim and the evictable blocks just below it, up to a
 * staging area's worth (2 MiB), go together when none of them was written
 * (a scan): one move, one TLB flush and one page-table release for the run
 * instead of one per block (each a cross-CPU flush on these VMs: 2 MiB at
 * once cost 30 us per 256 KiB block against 95 one by one, docs/performance.md,
 * sixth round). Written blocks go one at a time, as before (a 2 MiB
 * write-back on a fault's path made a radix sort wait). Frame blocks go by
 * frame_victim. Returns the number of blocks from *victim_p (moved down). */
static uint32_t behind_run(xm__map_t *m, uint32_t *victim_p)
{
    uint32_t v = *victim_p, lo = v, max = XM__FETCH_MAX / m->fetch;
    if (m->blocks[v].frame) return 1;
    while (lo > 0 && v - lo + 1 < max) {
        const xm__block_t *blk = &m->blocks[lo - 1];
        if (blk->state != XM__BLK_RESIDENT || blk->pins != 0 || blk->cleaning || blk->frame) break;
        lo--;
    }
    if (lo == v || xm__span_written(m, lo, v + 1)) return 1;
    *victim_p = lo;
    return v - lo + 1;
}

/* A victim anywhere in the engine, mappings taken in turn. */
static bool pick_global(xm__engine_t *eng, xm__map_t **m_p, uint32_t *victim_p)
{
    xm__map_t *start = eng->hand_map != NULL ? eng->hand_map : eng->maps;
    xm__map_t *m = start;
    if (m == NULL) return false;
    do {
        xm__map_t *next = m->next != NULL ? m->next : eng->maps;
        if (xm__clock_pick(m->blocks, m->nblocks, &m->hand, victim_p)) {
            eng->hand_map = next;
            *m_p = m;
            return true;
        }
        m = next;
    } while (m != start);
    return false;
}

/* A victim that came in with its frame takes the whole frame with it (one
 * huge page moved out); if some block of the frame is busy, the frame is
 * given up (its huge page is split by the partial move) and the block goes
 * alone. Returns the number of blocks from *victim_p (moved to the frame's
 * first). Lock held. */
static uint32_t frame_victim(xm__map_t *m, uint32_t *victim_p)
{
    uint32_t v = *victim_p;
    if (!m->blocks[v].frame || m->fpb <= 1) return 1;
    uint32_t f0 = v - v % m->fpb;
    bool whole = true;
    for (uint32_t i = 0; i < m->fpb; i++) {
        const xm__block_t *blk = &m->blocks[f0 + i];
        if (!blk->frame || blk->state != XM__BLK_RESIDENT || blk->pins != 0 || blk->cleaning) whole = false;
    }
    if (!whole) {
        for (uint32_t i = 0; i < m->fpb; i++) m->blocks[f0 + i].frame = 0;
        return 1;
    }
    *victim_p = f0;
    return m->fpb;
}

void xm__unreserve(xm__engine_t *eng, xm__map_t *m, uint64_t bytes)
{
    m->resident -= bytes;
    eng->resident -= bytes;
    XM__PS_SUB(resident_bytes, bytes);
}

bool xm__reserve(xm__engine_t *eng, xm__map_t *m, uint64_t bytes, uint32_t k, bool wait)
{
    int failures = 0;
    for (;;) {
        bool over_map = m->resident + bytes > m->budget;
        bool over_eng = eng->resident + bytes > eng->budget;
        if (!over_map && !over_eng) {
            m->resident += bytes;
            eng->resident += bytes;
            XM__PS_ADD(resident_bytes, bytes);
            return true;
        }
        xm__map_t *vm = NULL;
        uint32_t v;
        if (!eng->clean_wanted) {
            eng->clean_wanted = true;
            pthread_cond_signal(&eng->clean_cond);
        }
        uint32_t n = 1;
        bool frame = false;
        if (drop_behind(m, &v)) {
            vm = m;
            n = behind_run(m, &v);
        } else if (over_map) {
            if (xm__clock_pick(m->blocks, m->nblocks, &m->hand, &v)) vm = m;
        } else {
            pick_global(eng, &vm, &v);
        }
        if (vm != NULL) {
            if (n == 1) {
                n = frame_victim(vm, &v);
                frame = n > 1;
            }
            for (uint32_t i = 0; i < n; i++) vm->blocks[v + i].state = XM__BLK_EVICTING;
            vm->users++;
            pthread_mutex_unlock(&eng->lock);
            bool ok = xm__evict(vm, k, v, n, frame);
            pthread_mutex_lock(&eng->lock);
            vm->users--;
            pthread_cond_broadcast(&eng->cond);
            /* a victim that cannot be written back stays; give up after a few */
            if (!ok && ++failures >= 3) return false;
            continue;
        }
        if (!wait) return false;
        /* everything is being fetched, evicted or synced: one of them finishes soon */
        pthread_cond_wait(&eng->cond, &eng->lock);
    }
}

/* Is there a page at addr, in memory or in swap? (/proc/self/pagemap: bit 63
 * present, bit 62 swapped; mincore would call a swapped-out page absent.) */
static bool page_there(int pagemap_fd, const void *addr, bool *there)
{
    uint64_t e;
    if (pread(pagemap_fd, &e, sizeof(e), (off_t)((uintptr_t)addr / XM__PAGE * sizeof(e))) != sizeof(e)) return false;
    *there = ((e >> 63) & 1) != 0 || ((e >> 62) & 1) != 0;
    return true;
}

/* Move [src, src+len) to dst (whole huge pages where both sides allow it),
 * page by page where there are holes; present[i] says whether page i moved.
 * Returns 0 or an errno. */
int xm__move_range(xm__engine_t *eng, uint8_t *dst, uint8_t *src, uint64_t len, bool *present, bool wake)
{
    int uffd = eng->uffd;
    uint64_t done = 0;
    while (done < len) {
        struct uffdio_move mv = {.dst = (uintptr_t)(dst + done), .src = (uintptr_t)(src + done),
                                 .len = len - done, .mode = wake ? 0 : UFFDIO_MOVE_MODE_DONTWAKE};
        if (ioctl(uffd, UFFDIO_MOVE, &mv) == 0) {
            for (uint64_t p = done / XM__PAGE; p < len / XM__PAGE; p++) present[p] = true;
            return 0;
        }
        int err = errno;
        if (mv.move > 0) {
            for (uint64_t p = done / XM__PAGE; p < (done + (uint64_t)mv.move) / XM__PAGE; p++) present[p] = true;
            done += (uint64_t)mv.move;
            continue;
        }
        if (err == EAGAIN) continue;
        if (err == ENOENT) { /* a hole: nothing there (dropped by the application) */
            present[done / XM__PAGE] = false;
            done += XM__PAGE;
            continue;
        }
        /* Linux 6.18 sometimes fails a move with EEXIST having moved the page (seen when a
         * write to the source races the move: tests/stress/uffd_move_probe). Trust the
         * pages, not the error: the page moved if the destination holds it and the source
         * does not (the destination was empty: staging is this handler's alone). */
        bool in_dst = false, in_src = true;
        if (page_there(eng->pagemap_fd, dst + done, &in_dst) && page_there(eng->pagemap_fd, src + done, &in_src) &&
            !in_src) {
            present[done / XM__PAGE] = in_dst;
            done += XM__PAGE;
            continue;
        }
        return err;
    }
    return 0;
}

/* Put staged pages back into the mapping (write-back failed): moved back, or copied if a move is refused. */
static void unstage(xm__engine_t *eng, uint8_t *a, uint8_t *st, uint64_t bytes, const bool *present)
{
    for (uint64_t p = 0; p < bytes / XM__PAGE; p++) {
        if (!present[p]) continue;
        bool one = false;
        if (xm__move_range(eng, a + p * XM__PAGE, st + p * XM__PAGE, XM__PAGE, &one, true) == 0 && one) {
            continue;
        }
        struct uffdio_copy c = {.dst = (uintptr_t)(a + p * XM__PAGE), .src = (uintptr_t)(st + p * XM__PAGE),
                                .len = XM__PAGE};
        if (ioctl(eng->uffd, UFFDIO_COPY, &c) != 0 && errno != EEXIST) {
            xm_log_error("map: cannot put back a page at %p after a failed write-back: %m", a + p * XM__PAGE);
        }
    }
    madvise(st, bytes, MADV_DONTNEED);
}

/* The staging area holds a whole evicted frame, every page of it: keep it in
 * an empty spare slot (the areas swap) to receive a later frame. A page
 * missing would make the transport's write into it a fault no one serves. */
static bool keep_spare(xm__engine_t *eng, const xm__map_t *m, uint32_t k, uint64_t bytes, const bool *present)
{
    if (m->fpb == 0 || bytes != XM__HUGE) return false; /* only frames ever use one */
    for (uint64_t p = 0; p < XM__HUGE / XM__PAGE; p++) {
        if (!present[p]) return false;
    }
    for (uint32_t i = 0; i < XM__SPARES; i++) {
        uint32_t s = k * XM__SPARES + i;
        if (eng->spare_state[s] != XM__SPARE_EMPTY) continue;
        uint8_t *full = eng->staging[k];
        eng->staging[k] = eng->spare[s];
        eng->spare[s] = full;
        eng->spare_state[s] = XM__SPARE_FULL;
        return true;
    }
    return false;
}

/* Write the runs of changed pages of a staged block (or frame; its first page
 * is p0 of m) back, all in flight at once (the endpoint's
 * depth bounds them) instead of one after another; every write is settled
 * before returning, since they read the staging area. Staged pages cannot
 * change, so a page's hash is what was written: acknowledged runs get theirs
 * even if another run fails (the block then stays, suspect, and only what
 * differs from those hashes goes back later). */
static xm_status_t write_runs(xm__map_t *m, uint32_t k, uint64_t p0, const uint8_t *st, const bool *changed,
                              const uint64_t *hashes, uint64_t np, uint32_t *dirty_p)
{
    xm_op_t ops[XM__FETCH_MAX / XM__PAGE / 2 + 1]; /* alternating pages: the most runs a block has */
    uint64_t first[XM__FETCH_MAX / XM__PAGE / 2 + 1];
    xm__dp_t *dp = m->eng->dp;
    uint32_t nops = 0;
    xm_status_t status = XM_OK;
    for (uint64_t p = 0; p < np && status == XM_OK;) {
        if (!changed[p]) {
            p++;
            continue;
        }
        uint64_t q = p;
        while (q < np && changed[q]) q++;
        uint64_t off = (p0 + p) * XM__PAGE;
        first[nops] = p;
        ops[nops] = (xm_op_t){.opcode = XM_OP_WRITE, .region = m->region, .offset = m->off + off,
                              .buf = (void *)(st + p * XM__PAGE),
                              .length = (size_t)XM_MIN((q - p) * XM__PAGE, m->len - off)};
        status = xm__dp_post(dp, &ops[nops++], 0);
        p = q;
    }
    bool logged = false;
    for (uint32_t i = 0; i < nops; i++) {
        xm_op_t *op = &ops[i];
        xm_status_t s = xm__dp_wait(dp, &op, 1);
        if (s != XM_OK) {
            if (!logged) {
                logged = true;
                xm_log_warn("map: region %llu offset %llu: write-back of %llu bytes failed (%s): "
                            "kept resident and dirty",
                            (unsigned long long)m->region_id, (unsigned long long)op->offset,
                            (unsigned long long)op->length, xm__tls_error());
            }
            if (status == XM_OK) status = s;
            continue;
        }
        uint64_t n = (op->length + XM__PAGE - 1) / XM__PAGE;
        for (uint64_t j = first[i]; j < first[i] + n; j++) xm__hash_set(m, p0 + j, hashes[j]);
        *dirty_p += (uint32_t)n;
    }
    return status;
}

/* Hash the staged pages (present[p]) into hashes[p], reading them through
 * copies the kernel makes into buf (ebuf_bytes) with process_vm_readv on this
 * process: on a shadow-paged VM (this project's machines, PVM) the first user
 * access to each 4 KiB page a UFFDIO_MOVE has just mapped costs 5-13 us, the
 * kernel's copy through its own mapping ~1 us (docs/performance.md, sixth
 * round). Returns where the pages can be written back from: buf when they all
 * fit in it, else st; st, read directly, when a copy falls short. */
static const uint8_t *stage_hash(uint8_t *buf, uint64_t ebuf_bytes, const uint8_t *st, uint64_t bytes,
                                 const bool *present, uint64_t *hashes)
{
    uint64_t np = bytes / XM__PAGE, per = ebuf_bytes / XM__PAGE;
    bool direct = false;
    for (uint64_t c0 = 0; c0 < np; c0 += per) {
        uint64_t c1 = XM_MIN(np, c0 + per);
        struct iovec loc[XM__EBUF / XM__PAGE / 2 + 1], rem[XM__EBUF / XM__PAGE / 2 + 1];
        unsigned long nv = 0;
        size_t total = 0;
        for (uint64_t p = c0; p < c1 && !direct;) {
            if (!present[p]) {
                p++;
                continue;
            }
            uint64_t q = p;
            while (q < c1 && present[q]) q++;
            loc[nv] = (struct iovec){.iov_base = buf + (p - c0) * XM__PAGE, .iov_len = (size_t)(q - p) * XM__PAGE};
            rem[nv] = (struct iovec){.iov_base = (void *)(st + p * XM__PAGE), .iov_len = loc[nv].iov_len};
            total += loc[nv++].iov_len;
            p = q;
        }
        if (!direct && nv > 0 && process_vm_readv(getpid(), loc, nv, rem, nv, 0) != (ssize_t)total) direct = true;
        for (uint64_t p = c0; p < c1; p++) {
            const uint8_t *src = direct ? st + p * XM__PAGE : buf + (p - c0) * XM__PAGE;
            hashes[p] = present[p] ? xm__page_hash(src) : 0;
        }
    }
    return !direct && np <= per ? buf : st;
}

bool xm__evict(xm__map_t *m, uint32_t k, uint32_t b, uint32_t n, bool frame)
{
    xm__engine_t *eng = m->eng;
    uint8_t *a = m->addr + (uint64_t)b * m->fetch;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < n; i++) bytes += xm__block_bytes(m, b + i);
    uint32_t dirty = 0;
    xm_status_t status = XM_OK;
    if (m->ro) {
        madvise(a, bytes, MADV_DONTNEED);
    } else {
        uint8_t *st = eng->staging[k];
        bool present[XM__FETCH_MAX / XM__PAGE];
        memset(present, 0, sizeof(present));
        /* the destination must be empty (EEXIST otherwise); a page left there
         * by anything would make this eviction fail, so clear it first */
        madvise(st, bytes, MADV_DONTNEED);
        /* only the pages fetched (a block a random fault brought in holds a few) */
        int err = 0;
        uint64_t pb = (uint64_t)b * m->fetch / XM__PAGE, npg = bytes / XM__PAGE;
        for (uint64_t p = 0; p < npg && err == 0;) {
            if (!xm__bit_get(m->present, pb + p)) {
                p++;
                continue;
            }
            uint64_t q = p;
            while (q < npg && xm__bit_get(m->present, pb + q)) q++;
            err = xm__move_range(eng, st + p * XM__PAGE, a + p * XM__PAGE, (q - p) * XM__PAGE, present + p,
                             false);
            p = q;
        }
        if (err != 0) {
            errno = err;
            xm_log_error("map: region %llu offset %llu: cannot move a block out for eviction: %m",
                         (unsigned long long)m->region_id,
                         (unsigned long long)(m->off + (uint64_t)b * m->fetch));
            unstage(eng, a, st, bytes, present);
            status = XM_ERR_IO;
        }
        /* write back runs of pages whose content differs from what the appliance holds;
         * a block's pages are read from a copy the kernel makes (a frame's huge page is
         * cheap to touch where it is) */
        uint64_t p0 = (uint64_t)b * m->fetch / XM__PAGE, np = bytes / XM__PAGE;
        const uint8_t *data = st;
        bool changed[XM__FETCH_MAX / XM__PAGE];
        uint64_t hashes[XM__FETCH_MAX / XM__PAGE];
        if (status == XM_OK && !frame) {
            data = stage_hash(eng->ebufs[k], XM__EBUF, st, bytes, present, hashes);
        } else {
            for (uint64_t p = 0; p < np && status == XM_OK; p++) {
                hashes[p] = present[p] ? xm__page_hash(st + p * XM__PAGE) : 0;
            }
        }
        for (uint64_t p = 0; p < np && status == XM_OK; p++) {
            changed[p] = present[p] && hashes[p] != xm__hash_get(m, p0 + p);
        }
        if (status == XM_OK) status = write_runs(m, k, p0, data, changed, hashes, np, &dirty);
        if (status != XM_OK && err == 0) {
            unstage(eng, a, st, bytes, present);
        } else if (status == XM_OK && !(frame && keep_spare(eng, m, k, bytes, present))) {
            madvise(st, bytes, MADV_DONTNEED);
        }
    }
    /* a frame's pages left one by one (it was split) leave an empty page
     * table behind, and a later frame could not move in as a huge page:
     * MADV_DONTNEED of the empty range frees it (CONFIG_PT_RECLAIM); so for
     * a run of blocks dropped behind a scan */
    if (n > 1 && status == XM_OK && !m->ro) madvise(a, bytes, MADV_DONTNEED);
    pthread_mutex_lock(&eng->lock);
    for (uint32_t i = 0; i < n; i++) {
        xm__block_t *blk = &m->blocks[b + i];
        if (status == XM_OK) {
            blk->state = XM__BLK_EMPTY;
            blk->ref = 0;
            blk->suspect = 0;
            blk->frame = 0;
            xm__unreserve(eng, m, (uint64_t)blk->filled * XM__PAGE);
            blk->filled = 0;
            m->stats.evictions++;
            XM__PS_ADD(evictions, 1);
        } else {
            blk->state = XM__BLK_RESIDENT;
            blk->ref = 1;
            blk->suspect = 1;
        }
    }
    if (status == XM_OK) {
        for (uint64_t p = (uint64_t)b * m->fetch / XM__PAGE, e = p + bytes / XM__PAGE; p < e; p++) {
            xm__bit_clear(m->present, p);
        }
    } else {
        m->stats.writeback_errors++;
        XM__PS_ADD(writeback_errors, 1);
    }
    m->stats.writeback_pages += dirty;
    XM__PS_ADD(writeback_pages, dirty);
    pthread_cond_broadcast(&eng->cond);
    pthread_mutex_unlock(&eng->lock);
    return status == XM_OK;
}
