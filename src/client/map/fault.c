/* libxmem mappings: userfaultfd handler threads. A missing-page fault
 * fetches its block from the appliance (with read-ahead when access is
 * sequential) and installs it write-protected (UFFDIO_COPY_MODE_WP), so the
 * kernel's asynchronous write-protect marks the pages the application
 * writes. A block that cannot be fetched is poisoned: the access gets
 * SIGBUS, never a zero page. */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#endif

#include "../../common/common.h"
#include "map.h"
#include "procstat.h"
#include "uffd_compat.h"

#define FETCH_ATTEMPTS 3
#define RETRY_PAUSE_US 20000

/* A fetch's attempts share one operation timeout, counted from its first
 * post, so a fault on an appliance that does not answer becomes SIGBUS
 * within it (each retry used to get a timeout of its own: 10-15 s with the
 * default 5 s); a retry's operation gets only the time left (its deadline). */
typedef struct retry {
    uint64_t t0;
    uint64_t deadline;   /* of every attempt: t0 + the data path's timeout */
    int attempts;        /* made so far */
} retry_t;

static retry_t retry_start(xm__map_t *m)
{
    uint64_t t0 = xm__now_ns();
    return (retry_t){.t0 = t0, .deadline = t0 + (uint64_t)m->eng->dp->timeout_ms * 1000000ull, .attempts = 1};
}

/* After an attempt failed with status: true (having paused) when another may be
 * made. Not when the appliance is known to be gone (its address refuses connections). */
static bool retry_again(retry_t *r, xm_status_t status)
{
    if (r->attempts >= FETCH_ATTEMPTS || status == XM_ERR_CONNECT) return false;
    uint64_t limit = r->deadline - r->t0;
    uint64_t pause = (uint64_t)RETRY_PAUSE_US * (uint64_t)r->attempts * 1000ull;
    /* and a tenth of the timeout at least for the attempt itself */
    if (xm__now_ns() - r->t0 + pause + limit / 10 >= limit) return false;
    usleep((useconds_t)(pause / 1000));
    r->attempts++;
    return true;
}

/* XXH3 (libxxhash): 40-55 GB/s on a cache-hot page with the library's
 * runtime choice of AVX2/AVX-512, against 8-14 GB/s for the xxHash64-style
 * loop it replaced (measured here: docs/performance.md, fifth round). Every
 * fetched and every evicted page is hashed, so this is on the fault path. */
uint64_t xm__page_hash(const void *page)
{
#if defined(__x86_64__)
    return XXH3_64bits_dispatch(page, XM__PAGE);
#else
    return XXH3_64bits(page, XM__PAGE);
#endif
}

static xm__map_t *find_map(xm__engine_t *eng, uintptr_t a)
{
    for (xm__map_t *m = eng->maps; m != NULL; m = m->next) {
        if (a >= (uintptr_t)m->addr && a < (uintptr_t)m->addr + m->vlen) return m;
    }
    return NULL;
}

static void wake(xm__engine_t *eng, uintptr_t a, uint64_t len)
{
    struct uffdio_range r = {.start = a, .len = len};
    ioctl(eng->uffd, UFFDIO_WAKE, &r);
}

/* Install len bytes at dst; pages already there are left alone. */
static void install(xm__engine_t *eng, xm__map_t *m, uint8_t *dst, const uint8_t *src, uint64_t len)
{
    uint64_t done = 0;
    while (done < len) {
        struct uffdio_copy c = {.dst = (uintptr_t)(dst + done), .src = (uintptr_t)(src + done),
                                .len = len - done, .mode = m->ro ? 0 : UFFDIO_COPY_MODE_WP};
        if (ioctl(eng->uffd, UFFDIO_COPY, &c) == 0) return;
        int err = errno;
        if (c.copy > 0) {
            done += (uint64_t)c.copy;
            continue;
        }
        if (err == EAGAIN) continue;
        if (err == EEXIST) {
            done += XM__PAGE;
            continue;
        }
        xm_log_error("map: cannot install a page at %p: %s", dst + done, strerror(err));
        return;
    }
}

xm_status_t xm__fetch_range(xm__map_t *m, uint64_t off, void *buf, uint64_t len, uint64_t deadline_ns)
{
    uint64_t n = XM_MIN(len, m->len - off);
    if (n < len) memset((uint8_t *)buf + n, 0, len - n);
    return xm__dp_rw(m->eng->dp, m->region, XM_OP_READ, m->off + off, buf, (size_t)n, deadline_ns);
}

static void hash_block(xm__map_t *m, uint32_t b, const uint8_t *buf, uint64_t bytes)
{
    uint64_t p0 = (uint64_t)b * m->fetch / XM__PAGE;
    for (uint64_t p = 0; p < bytes / XM__PAGE; p++) xm__hash_set(m, p0 + p, xm__page_hash(buf + p * XM__PAGE));
}

/* A block whose pages were installed: make it evictable and wake its waiters. */
static void mark_present(xm__map_t *m, uint32_t b, uint64_t p0, uint64_t n);

/* Blocks [b, b+n) whose pages were installed; a frame's are suspect (see
 * frame_fetch); pinned ones cannot be evicted until handle_fault unpins them. */
static void settle_run(xm__engine_t *eng, xm__map_t *m, uint32_t b, uint32_t n, bool frame, bool pin)
{
    pthread_mutex_lock(&eng->lock);
    for (uint32_t i = b; i < b + n; i++) {
        xm__block_t *blk = &m->blocks[i];
        blk->filled = 0;
        mark_present(m, i, (uint64_t)i * m->fetch / XM__PAGE, xm__block_bytes(m, i) / XM__PAGE);
        blk->state = XM__BLK_RESIDENT;
        blk->ref = 1;
        if (pin) blk->pins++;
        if (frame) {
            blk->suspect = !m->ro;
            blk->frame = 1;
        }
    }
    pthread_cond_broadcast(&eng->cond);
    pthread_mutex_unlock(&eng->lock);
}

static void settle(xm__engine_t *eng, xm__map_t *m, uint32_t b, bool pin)
{
    settle_run(eng, m, b, 1, false, pin);
}

/* Counted before the pages appear, so that whoever sees the data sees the counts. */
static void count(xm__engine_t *eng, xm__map_t *m, uint64_t bytes, bool readahead)
{
    pthread_mutex_lock(&eng->lock);
    m->stats.fetched_bytes += bytes;
    if (readahead) m->stats.readahead_blocks++;
    else m->stats.faults++;
    pthread_mutex_unlock(&eng->lock);
    XM__PS_ADD(fetched_bytes, bytes);
    if (readahead) XM__PS_ADD(readahead_blocks, 1);
    else XM__PS_ADD(faults, 1);
}

static void drop_claim(xm__engine_t *eng, xm__map_t *m, uint32_t b, uint64_t bytes)
{
    pthread_mutex_lock(&eng->lock);
    m->blocks[b].state = XM__BLK_EMPTY;
    xm__unreserve(eng, m, bytes);
    pthread_cond_broadcast(&eng->cond);
    pthread_mutex_unlock(&eng->lock);
}

static void poison(xm__engine_t *eng, xm__map_t *m, uint32_t b, uint64_t bytes, bool reserved,
                   xm_status_t status, const char *why, int attempts)
{
    uint8_t *a = m->addr + (uint64_t)b * m->fetch;
    xm_log_error("map: region %llu offset %llu (%llu bytes): %s (%s) after %d attempt(s); "
                 "accesses to it get SIGBUS",
                 (unsigned long long)m->region_id, (unsigned long long)(m->off + (uint64_t)b * m->fetch),
                 (unsigned long long)bytes, why, xm_status_str(status), attempts);
    struct uffdio_poison p = {.range = {.start = (uintptr_t)a, .len = bytes}};
    while (ioctl(eng->uffd, UFFDIO_POISON, &p) != 0 && errno == EAGAIN) {
        if (p.updated > 0) {
            p.range.start += (uint64_t)p.updated;
            p.range.len -= (uint64_t)p.updated;
        }
        p.updated = 0;
    }
    pthread_mutex_lock(&eng->lock);
    m->blocks[b].state = XM__BLK_POISONED;
    if (reserved) xm__unreserve(eng, m, bytes);
    pthread_cond_broadcast(&eng->cond);
    pthread_mutex_unlock(&eng->lock);
}

/* A page of a resident block is missing (the application dropped it with
 * madvise): fetch that page again. */
static void refill_page(xm__engine_t *eng, xm__map_t *m, uint32_t k, uintptr_t page)
{
    unsigned char vec = 0;
    if (mincore((void *)page, XM__PAGE, &vec) == 0 && (vec & 1)) {
        wake(eng, page, XM__PAGE);
        return;
    }
    uint64_t off = page - (uintptr_t)m->addr;
    uint8_t *buf = eng->bufs[k];
    uint64_t n = XM_MIN((uint64_t)XM__PAGE, m->len - off);
    memset(buf, 0, XM__PAGE);
    if (xm__dp_rw(eng->dp, m->region, XM_OP_READ, m->off + off, buf, (size_t)n, 0) == XM_OK) {
        xm__hash_set(m, off / XM__PAGE, xm__page_hash(buf));
        install(eng, m, (uint8_t *)page, buf, XM__PAGE);
    }
    wake(eng, page, XM__PAGE);
}

/* A fetch of m ended at page p: a fault on p + 1 continues a stream. Lock held. */
static void remember(xm__map_t *m, uint64_t p)
{
    m->recent[m->recent_at] = p + 1;
    m->recent_at = (m->recent_at + 1) % XM__RECENT;
}

static bool follows_recent(const xm__map_t *m, uint64_t p)
{
    for (uint32_t i = 0; i < XM__RECENT; i++) {
        if (m->recent[i] == p) return true; /* stored as end + 1 */
    }
    return false;
}

/* Pages [p0, p0+n) of m were installed by the owner of their block. Lock held. */
static void mark_present(xm__map_t *m, uint32_t b, uint64_t p0, uint64_t n)
{
    for (uint64_t p = p0; p < p0 + n; p++) {
        if (!xm__bit_get(m->present, p)) {
            xm__bit_set(m->present, p);
            m->blocks[b].filled++;
        }
    }
}

/* Block b of m is resident with some pages never fetched (a random fault
 * brought in one page), the fault is at page pg; we own it (FETCHING) and
 * have reserved `bytes` for the pages [q0, q1) we fetch. */
static void extend(xm__engine_t *eng, xm__map_t *m, uint32_t k, uint32_t b, uint64_t q0, uint64_t q1,
                   uint64_t bytes)
{
    uint8_t *buf = eng->bufs[k];
    uint64_t off = q0 * XM__PAGE, len = (q1 - q0) * XM__PAGE;
    uint64_t t0 = XM__PS_T0();
    retry_t rt = retry_start(m);
    xm_status_t status = xm__fetch_range(m, off, buf, len, rt.deadline);
    while (status != XM_OK && retry_again(&rt, status)) status = xm__fetch_range(m, off, buf, len, rt.deadline);
    pthread_mutex_lock(&eng->lock);
    uint64_t fresh = 0;
    for (uint64_t p = q0; p < q1; p++) {
        if (!xm__bit_get(m->present, p)) fresh++;
    }
    pthread_mutex_unlock(&eng->lock);
    if (status != XM_OK) {
        const char *why = xm__tls_error();
        xm_log_error("map: region %llu offset %llu (%llu bytes): %s (%s) after %d attempt(s); "
                     "accesses to it get SIGBUS",
                     (unsigned long long)m->region_id, (unsigned long long)(m->off + off),
                     (unsigned long long)len, why[0] ? why : "cannot fetch", xm_status_str(status), rt.attempts);
        for (uint64_t p = q0; p < q1; p++) {
            if (xm__bit_get(m->present, p)) continue;
            struct uffdio_poison pz = {.range = {.start = (uintptr_t)(m->addr + p * XM__PAGE), .len = XM__PAGE}};
            while (ioctl(eng->uffd, UFFDIO_POISON, &pz) != 0 && errno == EAGAIN) pz.updated = 0;
        }
        pthread_mutex_lock(&eng->lock);
        xm__unreserve(eng, m, bytes);
    } else {
        /* hashes only of pages not present: a present page keeps the hash of
         * what the appliance held when it came in (it may be dirty) */
        for (uint64_t p = q0; p < q1; p++) {
            if (!xm__bit_get(m->present, p)) xm__hash_set(m, p, xm__page_hash(buf + (p - q0) * XM__PAGE));
        }
        count(eng, m, len, false);
        XM__PS_FETCHED(t0);
        install(eng, m, m->addr + off, buf, len);
        pthread_mutex_lock(&eng->lock);
        mark_present(m, b, q0, q1 - q0);
        if (fresh * XM__PAGE < bytes) xm__unreserve(eng, m, bytes - fresh * XM__PAGE);
    }
    m->blocks[b].state = XM__BLK_RESIDENT;
    m->blocks[b].ref = 1;
    pthread_cond_broadcast(&eng->cond);
    pthread_mutex_unlock(&eng->lock);
    wake(eng, (uintptr_t)(m->addr + off), len);
}

/* Can the frame starting at block f0 be claimed whole (every block empty,
 * all of it inside the mapping)? Block `mine` is already ours (FETCHING). Lock held. */
static bool frame_free(const xm__map_t *m, uint32_t f0, uint32_t mine)
{
    if (m->fpb == 0 || f0 % m->fpb != 0 || (uint64_t)(f0 + m->fpb) * m->fetch > m->vlen) return false;
    for (uint32_t i = 0; i < m->fpb; i++) {
        if (f0 + i != mine && m->blocks[f0 + i].state != XM__BLK_EMPTY) return false;
    }
    return true;
}

static void frame_unclaim(xm__engine_t *eng, xm__map_t *m, uint32_t f0, uint32_t except)
{
    pthread_mutex_lock(&eng->lock);
    for (uint32_t i = 0; i < m->fpb; i++) {
        if (f0 + i != except) m->blocks[f0 + i].state = XM__BLK_EMPTY;
    }
    /* a read-ahead frame given up: a fault on it still continues the stream */
    if (except == UINT32_MAX && m->last_block == f0 + m->fpb) m->last_block = f0;
    pthread_cond_broadcast(&eng->cond);
    pthread_mutex_unlock(&eng->lock);
}

/* Fetch the claimed (FETCHING) frame at block f0 into this handler's huge
 * page and move that page into the mapping whole: no copy, one page-table
 * entry. The application can store to it between the move and the
 * write-protect that follows, unseen by PAGEMAP_SCAN, so its blocks are
 * suspect (xm_sync compares their pages with the hashes; eviction always
 * does). Demand: the faulting thread waits on it, room is made whatever it
 * takes and a failure poisons block `demand_b`; read-ahead: gives up
 * quietly. */
static void frame_fetch(xm__engine_t *eng, xm__map_t *m, uint32_t k, uint32_t f0, bool demand, uint32_t demand_b)
{
    uint64_t off = (uint64_t)f0 * m->fetch;
    /* an evicted frame's huge page if this handler kept one, else a fresh one */
    uint8_t *buf = eng->hbufs[k];
    uint32_t slot = UINT32_MAX;
    for (uint32_t i = 0; i < XM__SPARES && slot == UINT32_MAX; i++) {
        if (eng->spare_state[k * XM__SPARES + i] == XM__SPARE_FULL) slot = k * XM__SPARES + i;
    }
    if (slot != UINT32_MAX) {
        eng->spare_state[slot] = XM__SPARE_BUSY;
        buf = eng->spare[slot];
    }
    /* the read is posted before room is made: an eviction overlaps it */
    /* the region's bytes past the mapping's length are not the mapping's: zeros there */
    uint64_t n = XM_MIN((uint64_t)XM__HUGE, m->len - off);
    if (n < XM__HUGE) memset(buf + n, 0, XM__HUGE - n);
    xm_op_t op = {.opcode = XM_OP_READ, .region = m->region, .offset = m->off + off, .buf = buf,
                  .length = (size_t)n};
    uint64_t t0 = XM__PS_T0();
    retry_t rt = retry_start(m);
    xm_status_t status = xm__dp_post(eng->dp, &op, rt.deadline);
    pthread_mutex_lock(&eng->lock);
    bool reserved = xm__reserve(eng, m, XM__HUGE, k, demand);
    pthread_mutex_unlock(&eng->lock);
    if (status == XM_OK) {
        xm_op_t *p = &op;
        status = xm__dp_wait(eng->dp, &p, 1); /* buf is the library's until then */
    }
    while (reserved && demand && status != XM_OK && retry_again(&rt, status)) {
        status = xm__fetch_range(m, off, buf, XM__HUGE, rt.deadline);
    }
    if (!reserved || status != XM_OK) {
        if (slot != UINT32_MAX) eng->spare_state[slot] = XM__SPARE_FULL; /* every page still there */
        if (reserved) {
            pthread_mutex_lock(&eng->lock);
            xm__unreserve(eng, m, XM__HUGE);
            pthread_mutex_unlock(&eng->lock);
        }
        frame_unclaim(eng, m, f0, demand ? demand_b : UINT32_MAX);
        if (demand && !reserved) {
            poison(eng, m, demand_b, xm__block_bytes(m, demand_b), false, XM_ERR_NO_SPACE,
                   "no room in the local cache: write-backs keep failing", rt.attempts);
        } else if (demand) {
            const char *why = xm__tls_error();
            poison(eng, m, demand_b, xm__block_bytes(m, demand_b), false, status, why[0] ? why : "cannot fetch",
                   rt.attempts);
        }
        return;
    }
    hash_block(m, f0, buf, XM__HUGE);
    pthread_mutex_lock(&eng->lock);
    m->stats.fetched_bytes += XM__HUGE;
    if (demand) m->stats.faults++;
    m->stats.readahead_blocks += m->fpb - (demand ? 1 : 0);
    pthread_mutex_unlock(&eng->lock);
    XM__PS_ADD(fetched_bytes, XM__HUGE);
    if (demand) XM__PS_ADD(faults, 1);
    if (demand) XM__PS_FETCHED(t0);
    XM__PS_ADD(readahead_blocks, m->fpb - (demand ? 1 : 0));
    bool moved[XM__HUGE / XM__PAGE];
    memset(moved, 0, sizeof(moved));
    uint8_t *dst = m->addr + off;
    /* the faulting threads sleep on until the frame is write-protected */
    int err = xm__move_range(eng, dst, buf, XM__HUGE, moved, false);
    if (err == 0) {
        pthread_mutex_lock(&eng->lock);
        m->stats.huge_frames++;
        pthread_mutex_unlock(&eng->lock);
    } else { /* what did not move is copied (the buffer still holds it) */
        for (uint64_t p = 0; p < XM__HUGE / XM__PAGE; p++) {
            if (!moved[p]) install(eng, m, dst + p * XM__PAGE, buf + p * XM__PAGE, XM__PAGE);
        }
        madvise(buf, XM__HUGE, MADV_DONTNEED);
    }
    if (slot != UINT32_MAX) eng->spare_state[slot] = XM__SPARE_EMPTY; /* moved in: empty again */
    if (!m->ro) {
        struct uffdio_writeprotect wp = {.range = {.start = (uintptr_t)dst, .len = XM__HUGE},
                                         .mode = UFFDIO_WRITEPROTECT_MODE_WP};
        while (ioctl(eng->uffd, UFFDIO_WRITEPROTECT, &wp) != 0 && errno == EAGAIN) {
        }
    }
    settle_run(eng, m, f0, m->fpb, true, false);
    wake(eng, (uintptr_t)dst, XM__HUGE);
}

static void handle_fault(xm__engine_t *eng, uint32_t k, uintptr_t addr)
{
    uintptr_t page = addr & ~(uintptr_t)(XM__PAGE - 1);
    pthread_mutex_lock(&eng->lock);
    xm__map_t *m = find_map(eng, page);
    if (m == NULL) {
        pthread_mutex_unlock(&eng->lock);
        wake(eng, page, XM__PAGE);
        return;
    }
    uint32_t b = (uint32_t)((page - (uintptr_t)m->addr) / m->fetch);
    uint64_t pg = (page - (uintptr_t)m->addr) / XM__PAGE;
    uint64_t bp0 = (uint64_t)b * m->fetch / XM__PAGE, bpn = xm__block_bytes(m, b) / XM__PAGE;
    /* a user from here on: while this thread waits for a block below, the
     * fault may be resolved by whoever installs it and the application may
     * unmap, which must not free m under us */
    m->users++;
    /* sequential: the fault lands just past what the last fetch brought in,
     * or just past where one of the recent fetches ended (one of several
     * interleaved streams). Merely having the previous page present is not
     * enough: at 50% residency, half of all random faults would pass. */
    bool lookback = pg > 0 && xm__bit_get(m->present, pg - 1) && follows_recent(m, pg);
    for (;;) {
        uint8_t st = m->blocks[b].state;
        if (st == XM__BLK_EMPTY) break;
        if (st == XM__BLK_FETCHING || st == XM__BLK_EVICTING) {
            pthread_cond_wait(&eng->cond, &eng->lock);
            continue;
        }
        m->blocks[b].ref = 1;
        if (st == XM__BLK_RESIDENT && !xm__bit_get(m->present, pg)) {
            /* never fetched: one page, or the rest of the block after a page that is here */
            uint64_t q0 = lookback ? bp0 : pg, q1 = lookback ? bp0 + bpn : pg + 1;
            uint64_t need = 0;
            for (uint64_t p = q0; p < q1; p++) need += !xm__bit_get(m->present, p);
            m->blocks[b].state = XM__BLK_FETCHING;
            remember(m, q1 - 1);
            m->last_block = b + 1;
            m->stream_len = 1;
            m->stream_at = b;
            bool reserved = xm__reserve(eng, m, need * XM__PAGE, k, true);
            pthread_mutex_unlock(&eng->lock);
            if (reserved) {
                extend(eng, m, k, b, q0, q1, need * XM__PAGE);
            } else {
                pthread_mutex_lock(&eng->lock);
                m->blocks[b].state = XM__BLK_RESIDENT;
                pthread_cond_broadcast(&eng->cond);
                pthread_mutex_unlock(&eng->lock);
                xm_log_error("map: region %llu offset %llu: no room in the local cache (write-backs keep "
                             "failing); accesses to it get SIGBUS",
                             (unsigned long long)m->region_id, (unsigned long long)(m->off + pg * XM__PAGE));
                struct uffdio_poison pz = {.range = {.start = page, .len = XM__PAGE}};
                while (ioctl(eng->uffd, UFFDIO_POISON, &pz) != 0 && errno == EAGAIN) pz.updated = 0;
            }
            goto out_unlocked;
        }
        pthread_mutex_unlock(&eng->lock);
        if (st == XM__BLK_RESIDENT) {
            refill_page(eng, m, k, page);
        } else {
            wake(eng, page, XM__PAGE); /* poisoned: the retry gets SIGBUS */
        }
        goto out_unlocked;
    }
    m->blocks[b].state = XM__BLK_FETCHING;
    uint32_t window = 0;
    bool seq = b == m->last_block;
    if (m->readahead && seq) {
        /* at most a quarter of the cache: a window must not evict itself */
        uint64_t cache = XM_MIN(m->budget, eng->budget) / m->fetch / 4;
        uint32_t max = (uint32_t)XM_MAX(1u, XM_MIN((uint64_t)(XM__RA_MAX_BYTES / m->fetch), cache));
        window = m->ra_window == 0 ? XM_MIN(2u, max) : XM_MIN(m->ra_window * 2, max);
    }
    /* a long sequential run takes whole frames: this one and the next */
    /* (the context's budget may have shrunk since xm_map: a frame must fit several times) */
    if (seq && window > 0 && m->stream_len >= m->fpb && eng->budget >= 4ull * XM__HUGE && frame_free(m, b, b)) {
        uint32_t next = b + m->fpb;
        bool ra = frame_free(m, next, UINT32_MAX);
        for (uint32_t i = 0; i < m->fpb; i++) {
            m->blocks[b + i].state = XM__BLK_FETCHING;
            if (ra) m->blocks[next + i].state = XM__BLK_FETCHING;
        }
        m->ra_window = window;
        m->last_block = next + (ra ? m->fpb : 0);
        m->stream_len += m->fpb * (ra ? 2 : 1);
        m->stream_at = b;
        remember(m, (uint64_t)m->last_block * m->fetch / XM__PAGE - 1);
        pthread_mutex_unlock(&eng->lock);
        frame_fetch(eng, m, k, b, true, b);
        if (ra) frame_fetch(eng, m, k, next, false, 0);
        goto out_unlocked;
    }
    if (seq && window > 0 && m->fpb != 0) {
        /* the window stops at the frame's end when the next frame is free: the next fault takes it whole */
        uint32_t end = (b / m->fpb + 1) * m->fpb;
        if (b + 1 + window > end && frame_free(m, end, UINT32_MAX)) window = end - b - 1;
    }
    m->ra_window = window;
    m->last_block = b + 1 + window;
    m->stream_len = seq ? m->stream_len + 1 + window : 1;
    m->stream_at = b;
    bool single = !seq && !lookback && m->adapt && bpn > 1;
    if (single) m->blocks[b].filled = 0;
    remember(m, single ? pg : XM_MIN((uint64_t)(b + 1 + window) * m->fetch, m->vlen) / XM__PAGE - 1);
    pthread_mutex_unlock(&eng->lock);
    /* a random fault fetches one page (the rest of the block comes if a later
     * fault follows on); either way the read is posted before room is made,
     * so an eviction's write-back overlaps it instead of preceding it */
    uint64_t bytes = single ? XM__PAGE : xm__block_bytes(m, b);
    uint64_t off = single ? pg * XM__PAGE : (uint64_t)b * m->fetch;
    uint8_t *buf = eng->bufs[k];
    xm_op_t ops[1 + XM__RA_MAX_BYTES / XM__PAGE];
    memset(ops, 0, sizeof(ops));
    xm__dp_t *dp = eng->dp;
    uint64_t n = XM_MIN(bytes, m->len - off);
    if (n < bytes) memset(buf + n, 0, bytes - n);
    ops[0] = (xm_op_t){.opcode = XM_OP_READ, .region = m->region, .offset = m->off + off,
                       .buf = buf, .length = (size_t)n};
    uint64_t t0 = XM__PS_T0();
    retry_t rt = retry_start(m);
    xm_status_t status = xm__dp_post(dp, &ops[0], rt.deadline);
    pthread_mutex_lock(&eng->lock);
    bool reserved = xm__reserve(eng, m, bytes, k, true);
    pthread_mutex_unlock(&eng->lock);
    if (!reserved) {
        if (status == XM_OK) {
            xm_op_t *p = &ops[0];
            xm__dp_wait(dp, &p, 1); /* buf is the library's until then */
        }
        poison(eng, m, b, xm__block_bytes(m, b), false, XM_ERR_NO_SPACE,
               "no room in the local cache: write-backs keep failing", rt.attempts);
        goto out_unlocked;
    }
    if (single) {
        if (status == XM_OK) {
            xm_op_t *p = &ops[0];
            status = xm__dp_wait(dp, &p, 1);
        }
        while (status != XM_OK && retry_again(&rt, status)) {
            status = xm__fetch_range(m, off, buf, XM__PAGE, rt.deadline);
        }
        if (status != XM_OK) {
            const char *why = xm__tls_error();
            poison(eng, m, b, xm__block_bytes(m, b), false, status, why[0] ? why : "cannot fetch", rt.attempts);
            pthread_mutex_lock(&eng->lock);
            xm__unreserve(eng, m, XM__PAGE);
            pthread_mutex_unlock(&eng->lock);
            goto out_unlocked;
        }
        xm__hash_set(m, pg, xm__page_hash(buf));
        count(eng, m, XM__PAGE, false);
        XM__PS_FETCHED(t0);
        install(eng, m, (uint8_t *)page, buf, XM__PAGE);
        pthread_mutex_lock(&eng->lock);
        mark_present(m, b, pg, 1);
        m->blocks[b].state = XM__BLK_RESIDENT;
        m->blocks[b].ref = 1;
        pthread_cond_broadcast(&eng->cond);
        pthread_mutex_unlock(&eng->lock);
        goto out_unlocked;
    }

    /* claim the read-ahead blocks and post their reads while the demand read
     * is in flight; room for them is made only once the demand block is in,
     * so the faulting thread never waits for the read-ahead's evictions (and
     * their write-backs) — they overlap its run instead */
    uint32_t nra = 0;
    if (window > 0) {
        pthread_mutex_lock(&eng->lock);
        for (uint32_t j = 1; j <= window && b + j < m->nblocks; j++) {
            if (m->blocks[b + j].state != XM__BLK_EMPTY) break;
            m->blocks[b + j].state = XM__BLK_FETCHING;
            nra++;
        }
        pthread_mutex_unlock(&eng->lock);
    }
    for (uint32_t j = 1; j <= nra; j++) {
        uint32_t bb = b + j;
        uint64_t o = (uint64_t)bb * m->fetch, bl = xm__block_bytes(m, bb);
        uint64_t nn = XM_MIN(bl, m->len - o);
        uint8_t *dst = buf + (uint64_t)j * m->fetch;
        if (nn < bl) memset(dst + nn, 0, bl - nn);
        ops[j] = (xm_op_t){.opcode = XM_OP_READ, .region = m->region, .offset = m->off + o,
                           .buf = dst, .length = (size_t)nn};
        /* a failure to post is the op's status (the read-ahead block is given up) */
        xm__dp_post(dp, &ops[j], rt.deadline);
    }

    if (status == XM_OK) {
        xm_op_t *p = &ops[0];
        status = xm__dp_wait(dp, &p, 1);
    }
    while (status != XM_OK && retry_again(&rt, status)) {
        status = xm__fetch_range(m, (uint64_t)b * m->fetch, buf, bytes, rt.deadline);
    }
    if (status != XM_OK) {
        const char *why = xm__tls_error();
        poison(eng, m, b, bytes, true, status, why[0] ? why : "cannot fetch", rt.attempts);
    } else {
        hash_block(m, b, buf, bytes);
        count(eng, m, bytes, false);
        XM__PS_FETCHED(t0);
        install(eng, m, m->addr + off, buf, bytes); /* wakes the faulting threads */
        settle(eng, m, b, nra > 0);
    }
    /* the window's blocks installed so far stay pinned while room is made
     * for the rest, so that room is never made by evicting them */
    bool room = true, pinned[1 + XM__RA_MAX_BYTES / XM__PAGE];
    pinned[0] = nra > 0 && status == XM_OK;
    uint32_t dropped = 0; /* the first read-ahead block given up */
    for (uint32_t j = 1; j <= nra; j++) {
        uint32_t bb = b + j;
        uint64_t bl = xm__block_bytes(m, bb);
        pinned[j] = false;
        if (room) { /* never waits: with nothing evictable now the rest is given up */
            pthread_mutex_lock(&eng->lock);
            room = xm__reserve(eng, m, bl, k, false);
            pthread_mutex_unlock(&eng->lock);
        }
        xm_op_t *p = &ops[j];
        xm_status_t s = xm__dp_wait(dp, &p, 1); /* the buffer is the library's until then */
        if (!room || s != XM_OK) {
            drop_claim(eng, m, bb, room ? bl : 0);
            if (dropped == 0) dropped = bb;
            continue;
        }
        uint8_t *src = buf + (uint64_t)j * m->fetch;
        hash_block(m, bb, src, bl);
        count(eng, m, bl, true);
        install(eng, m, m->addr + (uint64_t)bb * m->fetch, src, bl);
        settle(eng, m, bb, true);
        pinned[j] = true;
    }
    if (nra > 0) {
        pthread_mutex_lock(&eng->lock);
        for (uint32_t j = 0; j <= nra; j++) {
            if (pinned[j]) m->blocks[b + j].pins--;
        }
        /* a fault on the first block given up still continues the stream */
        if (dropped != 0 && m->last_block == b + 1 + window) m->last_block = dropped;
        pthread_cond_broadcast(&eng->cond);
        pthread_mutex_unlock(&eng->lock);
    }
out_unlocked:
    pthread_mutex_lock(&eng->lock);
    m->users--;
    pthread_cond_broadcast(&eng->cond);
    pthread_mutex_unlock(&eng->lock);
}

/* Pin handler k to the k-th CPU the process may run on. */
static void pin(uint32_t k)
{
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
    uint32_t seen = 0;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &allowed)) continue;
        if (seen++ == k) {
            CPU_ZERO(&one);
            CPU_SET(c, &one);
            pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
            return;
        }
    }
}

void *xm__fault_thread(void *arg)
{
    xm__engine_t *eng = ((xm__fault_arg_t *)arg)->eng;
    uint32_t k = ((xm__fault_arg_t *)arg)->k;
    free(arg);
    /* measured (docs/performance.md): with the appliance on this host, pinned
     * handlers lost to unpinned ones (p50 37 vs 17 us), so pinning is opt-in */
    if (getenv("XMEM_MAP_PIN") != NULL) pin(k);
    pthread_setname_np(pthread_self(), "xm-fault");
    struct pollfd fds[2] = {{.fd = eng->uffd, .events = POLLIN}, {.fd = eng->stop_fd, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            xm_log_error("map: handler poll: %m");
            break;
        }
        if (fds[1].revents != 0) break;
        /* one message at a time: pending faults spread over the handlers */
        struct uffd_msg msgs[1];
        ssize_t got = read(eng->uffd, msgs, sizeof(msgs));
        if (got <= 0) continue; /* another handler took it */
        for (ssize_t i = 0; i < got / (ssize_t)sizeof(msgs[0]); i++) {
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT) {
                handle_fault(eng, k, (uintptr_t)msgs[i].arg.pagefault.address);
            }
        }
    }
    return NULL;
}
