/* client: mapped external memory (xm_map). Private to map.c, fault.c,
 * cache.c, dirty.c and clone.c.
 *
 * A context's mappings share one engine: one userfaultfd, one handler thread
 * per CPU (all reading the uffd; pinned only with XMEM_MAP_PIN), one cache
 * budget, and the context's data path (src/client/dp.h), which handler
 * threads, xm_sync callers, the cleaner and the application's own I/O share.
 * The engine never reaches the control channel.
 *
 * The cache unit is a block of fetch_size bytes. A block is absent (EMPTY,
 * POISONED) or RESIDENT; a resident block holds the pages marked in the
 * mapping's present bits (all of them when a sequential fault fetched it,
 * one page or a few when random faults did) and is accounted by those pages.
 * The transient states FETCHING and EVICTING belong to one thread, and every
 * other fault on such a block waits on the engine's condition variable.
 * Eviction: a long sequential run gives up the blocks it passed
 * (drop-behind), otherwise CLOCK.
 *
 * Frames (opt-in, XMEM_MAP_HUGE=1): the mapping is 2 MiB-aligned and a long
 * sequential run fetches whole 2 MiB frames (fpb blocks each) into a
 * transparent huge page that one UFFDIO_MOVE puts in place; its blocks carry
 * `frame` and are evicted together, and the evicted huge page is kept in a
 * spare area of the handler to receive a later frame.
 */
#ifndef XM_MAP_H
#define XM_MAP_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "../client.h"

#define XM__PAGE 4096u
#define XM__FETCH_MAX (2u << 20)
#define XM__RA_MAX_BYTES (2u << 20) /* read-ahead window cap */
#define XM__EBUF (256u << 10)  /* eviction's copy buffer per handler (eng->ebufs) */
#define XM__HUGE (2u << 20)    /* a frame: one transparent huge page (x86-64 PMD) */
#define XM__SPARES 2u
enum { XM__SPARE_EMPTY = 0, XM__SPARE_FULL, XM__SPARE_BUSY };
#define XM__RECENT 512u /* fetch ends remembered: interleaved streams detected (a radix sort has 256) */

enum {
    XM__BLK_EMPTY = 0,
    XM__BLK_FETCHING,
    XM__BLK_RESIDENT,
    XM__BLK_EVICTING,
    XM__BLK_POISONED,
};

typedef struct xm__block {
    uint8_t state;
    uint8_t ref;     /* CLOCK: touched since the hand last passed */
    uint8_t suspect; /* content may differ from the hashes unseen by PAGEMAP_SCAN
                      * (a failed write-back): xm_sync compares every page */
    uint8_t cleaning; /* the cleaner is writing it back: not evictable, xm_sync waits */
    uint32_t pins;   /* xm_sync copies from it, or its fault is making room for the rest of
                      * its read-ahead window: not evictable, the cleaner skips it */
    uint16_t filled; /* pages fetched and accounted (a random fault fetches one page) */
    uint8_t frame;   /* moved in with its whole frame as one huge page: evicted with it */
} xm__block_t;

/* Bits of xm__map_t.present. A block's bits change only under the engine
 * lock by the thread that owns the block (FETCHING, EVICTING), which may
 * read them without the lock; a word holds bits of neighbouring blocks,
 * hence the atomics. */
static inline bool xm__bit_get(const uint64_t *bm, uint64_t i)
{
    return (__atomic_load_n(&bm[i >> 6], __ATOMIC_RELAXED) >> (i & 63)) & 1u;
}
static inline void xm__bit_set(uint64_t *bm, uint64_t i)
{
    __atomic_fetch_or(&bm[i >> 6], 1ull << (i & 63), __ATOMIC_RELAXED);
}
static inline void xm__bit_clear(uint64_t *bm, uint64_t i)
{
    __atomic_fetch_and(&bm[i >> 6], ~(1ull << (i & 63)), __ATOMIC_RELAXED);
}

struct xm__engine;

/* One mapping. Fields below "engine lock" are guarded by eng->lock. */
typedef struct xm__map {
    struct xm__engine *eng;
    uint8_t *addr;
    uint64_t len;          /* bytes of the region mapped */
    uint64_t vlen;         /* len rounded up to pages */
    uint64_t off;          /* offset in the region */
    uint64_t region_id;
    xm_region_h region;    /* a copy of the handle mapped, bound to no context (xm__region_copy) */
    uint32_t fetch;        /* block size */
    uint32_t nblocks;
    bool readahead;
    bool ro;               /* read-only handle: PROT_READ, no dirty pages */
    bool adapt;            /* random faults fetch one page (XMEM_MAP_ADAPT=0: whole blocks) */
    uint32_t fpb;          /* blocks per frame; 0: no frames (XMEM_MAP_HUGE=0, no THP, small budget) */
    /* engine lock */
    struct xm__map *next;
    xm__block_t *blocks;
    uint64_t *hash;        /* per page: hash of the content the appliance holds */
    uint64_t *present;     /* per page, a bit: fetched and accounted (resident unless the application dropped it) */
    uint64_t budget;
    uint64_t resident;
    uint32_t hand;         /* CLOCK hand, a block index */
    uint32_t last_block;   /* sequential detection */
    uint32_t ra_window;    /* blocks read ahead on the next sequential fault */
    uint32_t stream_at;    /* block of the last fault */
    uint64_t recent[XM__RECENT]; /* pages where recent fetches ended (1 + page; 0: none) */
    uint32_t recent_at;
    uint32_t stream_len;   /* blocks the current sequential run has brought in */
    uint32_t users;        /* threads working on it with the lock dropped */
    uint32_t clean_round;  /* the cleaner's last round over it */
    bool dying;
    xm_map_stats_t stats;
} xm__map_t;

/*
 * Per context. Lock order: g_lock (map.c), then eng->lock; the data path's
 * locks are never taken under eng->lock (I/O runs with eng->lock dropped).
 */
typedef struct xm__engine {
    pthread_mutex_t lock;
    pthread_cond_t cond;   /* a block left FETCHING/EVICTING, pins dropped */
    int uffd;
    int stop_fd;           /* eventfd: handler threads exit */
    int pagemap_fd;        /* /proc/self/pagemap for PAGEMAP_SCAN */
    uint32_t nthreads;
    pthread_t *threads;
    xm__dp_t *dp;          /* the context's data path (a reference) */
    uint8_t **staging;     /* per handler thread: uffd-registered, eviction moves blocks here */
    uint8_t **bufs;        /* per handler thread: fetch buffers */
    uint8_t **hbufs;       /* per handler thread: a frame's fetch buffer (a THP, moved in whole) */
    uint8_t **ebufs;       /* per handler thread: an evicted block's pages, copied out of the
                            * staging area by the kernel (hashed and written back from here) */
    /* per handler thread, XM__SPARES uffd-registered frame areas each: an
     * evicted frame's huge page is kept in one (swapped with the staging
     * area) and receives a later frame's data, so the kernel need not zero
     * a fresh huge page for it. Only handler k touches its own. */
    uint8_t **spare;       /* [k * XM__SPARES + i] */
    uint8_t *spare_state;  /* XM__SPARE_EMPTY / _FULL (all 512 pages there) / _BUSY (being filled) */
    pthread_t cleaner;     /* 0: none (XMEM_MAP_CLEANER=0) */
    pthread_cond_t clean_cond; /* the cleaner sleeps on it */
    /* lock */
    bool stopping;         /* the cleaner exits */
    bool clean_wanted;     /* a fault had to evict: the cleaner looks again */
    xm__map_t *maps;
    uint64_t budget;       /* UINT64_MAX: none */
    uint64_t resident;
    xm__map_t *hand_map;   /* global CLOCK: the mapping the hand is in */
    int refs;              /* mappings + the context (until xm_disconnect) */
    bool owned;            /* the context still points to it */
} xm__engine_t;

/* fault.c */
typedef struct xm__fault_arg {
    xm__engine_t *eng;
    uint32_t k;
} xm__fault_arg_t;
void *xm__fault_thread(void *arg);
uint64_t xm__page_hash(const void *page);
/* Read len bytes at offset off of m into buf by deadline (zeros past the mapping's end). */
xm_status_t xm__fetch_range(xm__map_t *m, uint64_t off, void *buf, uint64_t len, uint64_t deadline_ns);

/* cache.c (engine lock held unless said) */
uint64_t xm__block_bytes(const xm__map_t *m, uint32_t b);
/* Pick an evictable block of m by CLOCK: clears referenced bits as it passes. */
bool xm__clock_pick(xm__block_t *blocks, uint32_t n, uint32_t *hand, uint32_t *victim_p);
/* Drop-behind: the resident, unpinned block nearest below `from` (at most
 * `span` blocks down), so a sequential stream larger than the cache evicts
 * what it has just passed instead of what it is about to reach. */
bool xm__behind_pick(const xm__block_t *blocks, uint32_t from, uint32_t span, uint32_t *victim_p);
/* Account bytes for a new block of m, evicting (lock dropped meanwhile) as
 * needed. Returns false when nothing can be evicted now and !wait. */
bool xm__reserve(xm__engine_t *eng, xm__map_t *m, uint64_t bytes, uint32_t k, bool wait);
void xm__unreserve(xm__engine_t *eng, xm__map_t *m, uint64_t bytes);
/* Evict blocks [b, b+n) of m (state EVICTING, lock NOT held): a whole frame
 * (frame), or a run of blocks dropped behind a scan. True when dropped. */
bool xm__evict(xm__map_t *m, uint32_t k, uint32_t b, uint32_t n, bool frame);
/* Move [src, src+len) to dst by UFFDIO_MOVE; present[i]: page i moved. 0 or an errno. */
int xm__move_range(xm__engine_t *eng, uint8_t *dst, uint8_t *src, uint64_t len, bool *present, bool wake);

/* dirty.c: write back written pages of blocks [b0, b1) of m (any thread). */
xm_status_t xm__sync_blocks(xm__map_t *m, uint32_t b0, uint32_t b1);
/* dirty.c: any page of blocks [b0, b1) written since its last write-back? A
 * hint (PAGEMAP_SCAN, nothing re-protected; pages of a suspect block may be
 * missed): one ioctl, any thread. */
bool xm__span_written(xm__map_t *m, uint32_t b0, uint32_t b1);
/* The cleaner thread: writes back written pages of the blocks eviction will
 * reach next (ahead of the CLOCK hand, behind a long sequential run), so a
 * fault that needs room normally finds a clean victim. */
void *xm__clean_thread(void *arg);
/* Copy a page the application may be writing at the same time. */
void xm__page_copy_racy(void *dst, const void *src);


/* A page's content hash is written by whichever thread last moved the page (fault,
 * eviction, sync) and read by the others; the kernel orders those moves (a page is
 * installed before it can be written, scanned or moved out), so plain relaxed atomics
 * suffice — they make that visible to ThreadSanitizer, which cannot see the kernel. */
static inline uint64_t xm__hash_get(const xm__map_t *m, uint64_t p)
{
    return __atomic_load_n(&m->hash[p], __ATOMIC_RELAXED);
}

static inline void xm__hash_set(xm__map_t *m, uint64_t p, uint64_t h)
{
    __atomic_store_n(&m->hash[p], h, __ATOMIC_RELAXED);
}

#endif
