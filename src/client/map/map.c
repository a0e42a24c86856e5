/* libxmem mappings: xm_map / xm_sync / xm_unmap and the per-context engine
 * (userfaultfd, handler threads, shared budget, the context's data path). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../../common/common.h"
#include "../abi.h"
#include "map.h"
#include "procstat.h"
#include "uffd_compat.h"

#define MAX_HANDLERS 8
#define STAGING_BYTES XM__FETCH_MAX
_Static_assert(STAGING_BYTES == XM__HUGE, "the staging area and the spare frame areas swap");
#define BUF_BYTES (XM__FETCH_MAX + XM__RA_MAX_BYTES)
#define GUARD XM__PAGE

/* Every mapping of the process, for xm_sync / xm_unmap by address. Taken before any eng->lock. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
typedef struct gmap {
    xm__map_t *m;
    struct gmap *next;
} gmap_t;
static gmap_t *g_maps;

/* bytes of fresh anonymous memory starting on a frame (2 MiB) boundary, so
 * that a whole huge page can be moved in or out of it; the rest is unmapped */
static void *map_aligned(uint64_t bytes, int prot)
{
    uint8_t *raw = mmap(NULL, bytes + XM__HUGE, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) return MAP_FAILED;
    uint8_t *a = (uint8_t *)(((uintptr_t)raw + XM__HUGE - 1) & ~(uintptr_t)(XM__HUGE - 1));
    if (a > raw) munmap(raw, (size_t)(a - raw));
    uint8_t *end = raw + bytes + XM__HUGE;
    if (end > a + bytes) munmap(a + bytes, (size_t)(end - (a + bytes)));
    return a;
}

/* A frame-sized area eviction can move a frame into (and a spare can be):
 * aligned, not inherited by a child, huge-page backed where it is filled,
 * registered with the engine's uffd (UFFDIO_MOVE needs its destination
 * registered with the same uffd). NULL with errno set on failure. */
static uint8_t *frame_area(const xm__engine_t *eng)
{
    uint8_t *a = map_aligned(XM__HUGE, PROT_READ | PROT_WRITE);
    if (a == MAP_FAILED) return NULL;
    madvise(a, XM__HUGE, MADV_DONTFORK);
    madvise(a, XM__HUGE, MADV_HUGEPAGE);
    struct uffdio_register reg = {.range = {.start = (uintptr_t)a, .len = XM__HUGE},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(eng->uffd, UFFDIO_REGISTER, &reg) != 0) {
        int err = errno;
        munmap(a, XM__HUGE);
        errno = err;
        return NULL;
    }
    return a;
}

/* Transparent huge pages usable with madvise (the "enabled" mode is not [never]). */
static bool thp_usable(void)
{
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f == NULL) return false;
    char line[128] = "";
    bool ok = fgets(line, sizeof(line), f) != NULL && strstr(line, "[never]") == NULL;
    fclose(f);
    return ok;
}

static void engine_destroy(xm__engine_t *eng)
{
    if (eng->threads != NULL) {
        uint64_t one = 1;
        if (write(eng->stop_fd, &one, sizeof(one)) != sizeof(one)) xm_log_error("map: eventfd: %m");
        for (uint32_t k = 0; k < eng->nthreads; k++) {
            if (eng->threads[k]) pthread_join(eng->threads[k], NULL);
        }
    }
    if (eng->cleaner) {
        pthread_mutex_lock(&eng->lock);
        eng->stopping = true;
        pthread_cond_broadcast(&eng->clean_cond);
        pthread_mutex_unlock(&eng->lock);
        pthread_join(eng->cleaner, NULL);
    }
    for (uint32_t k = 0; k < eng->nthreads; k++) {
        if (eng->staging != NULL && eng->staging[k] != NULL) munmap(eng->staging[k], STAGING_BYTES);
        if (eng->bufs != NULL && eng->bufs[k] != NULL) munmap(eng->bufs[k], BUF_BYTES);
        if (eng->hbufs != NULL && eng->hbufs[k] != NULL) munmap(eng->hbufs[k], XM__HUGE);
        if (eng->ebufs != NULL && eng->ebufs[k] != NULL) munmap(eng->ebufs[k], XM__EBUF);
        for (uint32_t i = 0; eng->spare != NULL && i < XM__SPARES; i++) {
            if (eng->spare[k * XM__SPARES + i] != NULL) munmap(eng->spare[k * XM__SPARES + i], XM__HUGE);
        }
    }
    xm__dp_put(eng->dp);
    if (eng->uffd >= 0) close(eng->uffd);
    if (eng->stop_fd >= 0) close(eng->stop_fd);
    if (eng->pagemap_fd >= 0) close(eng->pagemap_fd);
    pthread_mutex_destroy(&eng->lock);
    pthread_cond_destroy(&eng->cond);
    pthread_cond_destroy(&eng->clean_cond);
    free(eng->threads);
    free(eng->staging);
    free(eng->hbufs);
    free(eng->ebufs);
    free(eng->spare);
    free(eng->spare_state);
    free(eng->bufs);
    free(eng);
}

/* g_lock held */
static void engine_put(xm__engine_t *eng)
{
    if (--eng->refs == 0) engine_destroy(eng);
}

static xm_status_t engine_create(xm_ctx_h ctx, xm__engine_t **eng_p)
{
    xm__engine_t *eng = calloc(1, sizeof(*eng));
    if (eng == NULL) return XM_ERR_NO_MEMORY;
    pthread_mutex_init(&eng->lock, NULL);
    pthread_cond_init(&eng->cond, NULL);
    pthread_cond_init(&eng->clean_cond, NULL);
    eng->uffd = eng->stop_fd = eng->pagemap_fd = -1;
    eng->budget = UINT64_MAX;
    eng->dp = ctx->dp; /* shared with the context, kept after xm_disconnect */
    xm__dp_get(eng->dp);
    xm_status_t status = XM_ERR_IO;
    eng->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (eng->uffd < 0) {
        xm__ctx_error(ctx, status, "userfaultfd: %s (needs root or vm.unprivileged_userfaultfd=1)",
                      strerror(errno));
        goto err;
    }
    struct uffdio_api api = {.api = UFFD_API,
                             .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_MOVE | UFFD_FEATURE_POISON};
    if (ioctl(eng->uffd, UFFDIO_API, &api) != 0) {
        xm__ctx_error(ctx, status, "userfaultfd lacks WP_ASYNC, MOVE or POISON (Linux >= 6.8 needed): %s",
                      strerror(errno));
        goto err;
    }
    eng->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    eng->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (eng->pagemap_fd < 0 || eng->stop_fd < 0) {
        xm__ctx_error(ctx, status, "cannot open /proc/self/pagemap or an eventfd: %s", strerror(errno));
        goto err;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    const char *env = getenv("XMEM_MAP_THREADS");
    if (env != NULL && atoi(env) > 0) ncpu = atoi(env);
    eng->nthreads = (uint32_t)XM_MAX(1, XM_MIN(ncpu, MAX_HANDLERS));
    eng->staging = calloc(eng->nthreads, sizeof(*eng->staging));
    eng->bufs = calloc(eng->nthreads, sizeof(*eng->bufs));
    eng->hbufs = calloc(eng->nthreads, sizeof(*eng->hbufs));
    eng->ebufs = calloc(eng->nthreads, sizeof(*eng->ebufs));
    eng->spare = calloc((size_t)eng->nthreads * XM__SPARES, sizeof(*eng->spare));
    eng->spare_state = calloc((size_t)eng->nthreads * XM__SPARES, sizeof(*eng->spare_state));
    eng->threads = calloc(eng->nthreads, sizeof(*eng->threads));
    if (eng->staging == NULL || eng->bufs == NULL || eng->hbufs == NULL || eng->ebufs == NULL ||
        eng->spare == NULL || eng->spare_state == NULL || eng->threads == NULL) {
        status = XM_ERR_NO_MEMORY;
        goto err;
    }
    status = XM_ERR_IO;
    for (uint32_t k = 0; k < eng->nthreads; k++) {
        uint8_t *bf = mmap(NULL, BUF_BYTES, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        uint8_t *hb = map_aligned(XM__HUGE, PROT_READ | PROT_WRITE);
        uint8_t *eb = mmap(NULL, XM__EBUF, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        eng->bufs[k] = bf == MAP_FAILED ? NULL : bf;
        eng->hbufs[k] = hb == MAP_FAILED ? NULL : hb;
        eng->ebufs[k] = eb == MAP_FAILED ? NULL : eb;
        if (bf == MAP_FAILED || hb == MAP_FAILED || eb == MAP_FAILED) {
            xm__ctx_error(ctx, XM_ERR_NO_MEMORY, "mmap: %s", strerror(errno));
            status = XM_ERR_NO_MEMORY;
            goto err;
        }
        madvise(bf, BUF_BYTES, MADV_DONTFORK);
        madvise(eb, XM__EBUF, MADV_DONTFORK);
        /* a frame's data lands in a huge page (faulted in fresh after each move-in) */
        madvise(hb, XM__HUGE, MADV_DONTFORK);
        madvise(hb, XM__HUGE, MADV_HUGEPAGE);
        /* the staging area and the spares: frame-aligned, so that an evicted
         * frame moves out as one huge page; they swap roles (keep_spare) */
        eng->staging[k] = frame_area(eng);
        for (uint32_t i = 0; i < XM__SPARES && eng->staging[k] != NULL; i++) {
            if ((eng->spare[k * XM__SPARES + i] = frame_area(eng)) == NULL) break;
        }
        if (eng->staging[k] == NULL || eng->spare[k * XM__SPARES + XM__SPARES - 1] == NULL) {
            status = errno == ENOMEM ? XM_ERR_NO_MEMORY : XM_ERR_IO;
            xm__ctx_error(ctx, status, "a staging area (mmap, UFFDIO_REGISTER): %s", strerror(errno));
            goto err;
        }
    }
    for (uint32_t k = 0; k < eng->nthreads; k++) {
        xm__fault_arg_t *arg = malloc(sizeof(*arg));
        if (arg == NULL) {
            status = XM_ERR_NO_MEMORY;
            goto err;
        }
        arg->eng = eng;
        arg->k = k;
        if (pthread_create(&eng->threads[k], NULL, xm__fault_thread, arg) != 0) {
            free(arg);
            eng->threads[k] = 0;
            xm__ctx_error(ctx, status, "cannot start a fault handler thread");
            goto err;
        }
    }
    /* opt-in: on the 2-vCPU machine of docs/performance.md it measured no
     * better (it competes for the CPUs the fault path and the appliance use) */
    const char *cl = getenv("XMEM_MAP_CLEANER");
    if (cl != NULL && atoi(cl) != 0 && pthread_create(&eng->cleaner, NULL, xm__clean_thread, eng) != 0) {
        eng->cleaner = 0;
        xm__ctx_error(ctx, status, "cannot start the cleaner thread");
        goto err;
    }
    eng->refs = 1; /* the context's */
    eng->owned = true;
    *eng_p = eng;
    return XM_OK;

err:
    engine_destroy(eng);
    return status;
}

void xm__map_ctx_gone(xm_ctx_h ctx)
{
    pthread_mutex_lock(&g_lock);
    xm__engine_t *eng = ctx->map_engine;
    if (eng != NULL) {
        ctx->map_engine = NULL;
        eng->owned = false;
        engine_put(eng);
    }
    pthread_mutex_unlock(&g_lock);
}

static void map_free(xm__map_t *m)
{
    xm__region_free(m->region);
    free(m->blocks);
    free(m->hash);
    free(m->present);
    free(m);
}

/* The fetch unit when none is asked for. Measured (docs/performance.md,
 * 512 MiB and 4 GiB at 75/50/25 % cache): 256 KiB beat 64 KiB on every
 * workload — a scan at 50 % 1.7x faster, the radix sort 2.16x -> 1.67x local
 * — because each block costs a read, an install and an eviction whatever
 * its size; 1 MiB made the sort thrash once its 256 cursor blocks outgrew
 * the cache (54x at 25 %). */
static uint32_t default_fetch(const xm_map_opts_t *o)
{
    uint64_t budget = UINT64_MAX;
    if (o->cache_bytes != 0) budget = o->cache_bytes;
    if (o->ctx_cache_bytes != 0) budget = XM_MIN(budget, o->ctx_cache_bytes);
    uint32_t f = 256u << 10;
    while (f > (16u << 10) && (uint64_t)f * 512 > budget) f >>= 1;
    return f;
}

XM_EXPORT xm_status_t xm_map(xm_ctx_h ctx, xm_region_h region, uint64_t offset, uint64_t length,
                             const xm_map_opts_t *opts, void **addr_p)
{
    xm_map_opts_t given = XM_MAP_OPTS_INIT; /* defaults for what the caller's struct lacks */
    if (ctx == NULL || addr_p == NULL) return XM_ERR_INVALID;
    if (opts != NULL && xm__sized_in(&given, sizeof(given), opts) != XM_OK) {
        return xm__ctx_error(ctx, XM_ERR_INVALID,
                             "xm_map: xm_map_opts_t.size %zu is invalid, or options this library "
                             "does not know are set (initialise with XM_MAP_OPTS_INIT)",
                             opts->size);
    }
    opts = &given;
    if (region == NULL || region->ctx != ctx) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "xm_map: no region or allocation of this context");
    }
    xm__procstat_open(); /* the counters of xmem stat --pid (once per process) */
    uint32_t fetch = opts->fetch_size != 0 ? opts->fetch_size : default_fetch(opts);
    if (fetch < XM__PAGE || fetch > XM__FETCH_MAX || (fetch & (fetch - 1)) != 0) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "fetch size %u is not a power of two from 4K to 2M",
                             fetch);
    }
    if (offset % XM__PAGE != 0) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "map offset %llu is not a multiple of 4096",
                             (unsigned long long)offset);
    }
    if (length == 0 || offset >= region->size || length > region->size - offset) {
        return xm__ctx_error(ctx, XM_ERR_RANGE, "%llu bytes at %llu do not fit region %llu of %llu bytes",
                             (unsigned long long)length, (unsigned long long)offset,
                             (unsigned long long)region->id, (unsigned long long)region->size);
    }
    if (opts->ctx_cache_bytes != 0 && opts->ctx_cache_bytes < fetch) {
        return xm__ctx_error(ctx, XM_ERR_INVALID, "context cache budget below one fetch unit");
    }
    xm_status_t status;
    pthread_mutex_lock(&g_lock);
    if (ctx->map_engine == NULL) {
        status = engine_create(ctx, &ctx->map_engine);
        if (status != XM_OK) {
            pthread_mutex_unlock(&g_lock);
            return status;
        }
    }
    xm__engine_t *eng = ctx->map_engine;
    eng->refs++; /* this mapping's, dropped on failure below */
    pthread_mutex_unlock(&g_lock);

    status = XM_ERR_NO_MEMORY;
    xm__map_t *m = calloc(1, sizeof(*m));
    if (m == NULL) goto err_put;
    m->eng = eng;
    m->len = length;
    m->vlen = (length + XM__PAGE - 1) & ~(uint64_t)(XM__PAGE - 1);
    m->off = offset;
    m->region_id = region->id;
    m->fetch = fetch;
    m->nblocks = (uint32_t)((m->vlen + fetch - 1) / fetch);
    m->readahead = (opts->flags & XM_MAP_NO_READAHEAD) == 0;
    m->ro = region->access != XM_ACCESS_READ_WRITE;
    m->budget = opts->cache_bytes != 0 ? XM_MAX(opts->cache_bytes / fetch * fetch, (uint64_t)fetch)
                                       : (uint64_t)m->nblocks * fetch;
    m->stats.budget_bytes = m->budget;
    m->blocks = calloc(m->nblocks, sizeof(*m->blocks));
    m->hash = calloc(m->vlen / XM__PAGE, sizeof(*m->hash));
    m->present = calloc((m->vlen / XM__PAGE + 63) / 64, sizeof(uint64_t));
    /* fetch-size adaptation (random faults fetch one page); XMEM_MAP_ADAPT=0: whole blocks */
    const char *adapt = getenv("XMEM_MAP_ADAPT");
    m->adapt = adapt == NULL || atoi(adapt) != 0;
    if (m->blocks == NULL || m->hash == NULL || m->present == NULL) goto err_free;
    status = xm__region_copy(region, &m->region);
    if (status != XM_OK) goto err_free;
    /* the endpoint opened before the first fault, not by it (only local parts: none needed) */
    if (region->local == NULL) {
        status = xm__dp_ready(eng->dp);
        if (status != XM_OK) goto err_free;
    }
    /* frames (opt-in, XMEM_MAP_HUGE=1): a sequential stream fetches whole
     * 2 MiB frames, each into a transparent huge page moved in with one
     * UFFDIO_MOVE (no copy) and out again at eviction; only once the cache
     * holds a few of them. Off by default: measured (docs/performance.md,
     * fourth round) faster over shm at 50 and 25 % cache, slower over tcp at
     * 75 % and no faster below, at 4 GiB */
    uint64_t budget = m->budget;
    if (opts->ctx_cache_bytes != 0) budget = XM_MIN(budget, opts->ctx_cache_bytes);
    pthread_mutex_lock(&eng->lock);
    budget = XM_MIN(budget, eng->budget);
    pthread_mutex_unlock(&eng->lock);
    const char *huge = getenv("XMEM_MAP_HUGE");
    /* not read-only mappings: UFFDIO_MOVE refuses a read-write page into a PROT_READ area */
    if (huge != NULL && atoi(huge) != 0 && m->readahead && !m->ro && m->vlen >= XM__HUGE &&
        budget >= 4ull * XM__HUGE && thp_usable()) {
        m->fpb = XM__HUGE / fetch;
    }
    void *a = map_aligned(m->vlen + GUARD, m->ro ? PROT_READ : PROT_READ | PROT_WRITE);
    if (a == MAP_FAILED) {
        status = xm__ctx_error(ctx, XM_ERR_NO_MEMORY, "mmap of %llu bytes: %s",
                               (unsigned long long)m->vlen, strerror(errno));
        goto err_free;
    }
    /* an inaccessible page after it: the kernel never merges two mappings (or a
     * mapping and the application's memory) into one VMA, so /proc/PID/smaps
     * shows each mapping's resident size on its own */
    mprotect((uint8_t *)a + m->vlen, GUARD, PROT_NONE);
    m->addr = a;
    /* the child of a fork gets no mapping here: it can corrupt neither our pages nor the appliance's */
    madvise(a, m->vlen, MADV_DONTFORK);
    /* blocks move in and out as 4 KiB pages, frames as huge pages */
    madvise(a, m->vlen, m->fpb != 0 ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    struct uffdio_register reg = {
        .range = {.start = (uintptr_t)a, .len = m->vlen},
        .mode = UFFDIO_REGISTER_MODE_MISSING | (m->ro ? 0 : UFFDIO_REGISTER_MODE_WP)};
    if (ioctl(eng->uffd, UFFDIO_REGISTER, &reg) != 0) {
        status = xm__ctx_error(ctx, XM_ERR_IO, "UFFDIO_REGISTER: %s", strerror(errno));
        munmap(a, m->vlen + GUARD);
        goto err_free;
    }
    gmap_t *g = malloc(sizeof(*g));
    if (g == NULL) {
        struct uffdio_range r = {.start = (uintptr_t)a, .len = m->vlen};
        ioctl(eng->uffd, UFFDIO_UNREGISTER, &r);
        munmap(a, m->vlen + GUARD);
        status = XM_ERR_NO_MEMORY;
        goto err_free;
    }
    pthread_mutex_lock(&g_lock);
    pthread_mutex_lock(&eng->lock);
    if (opts->ctx_cache_bytes != 0) eng->budget = opts->ctx_cache_bytes / fetch * fetch;
    m->next = eng->maps;
    eng->maps = m;
    pthread_mutex_unlock(&eng->lock);
    g->m = m;
    g->next = g_maps;
    g_maps = g;
    pthread_mutex_unlock(&g_lock);
    XM__PS_ADD(mappings, 1);
    *addr_p = a;
    return XM_OK;

err_free:
    map_free(m);
err_put:
    pthread_mutex_lock(&g_lock);
    engine_put(eng);
    pthread_mutex_unlock(&g_lock);
    return status;
}

/* The mapping containing [addr, addr+1), with a user reference; g_lock taken here. */
static xm__map_t *map_get(const void *addr, bool exact)
{
    xm__map_t *found = NULL;
    pthread_mutex_lock(&g_lock);
    for (gmap_t *g = g_maps; g != NULL; g = g->next) {
        xm__map_t *m = g->m;
        uintptr_t a = (uintptr_t)addr, s = (uintptr_t)m->addr;
        if (exact ? a == s : (a >= s && a < s + m->vlen)) {
            found = m;
            break;
        }
    }
    if (found != NULL) {
        pthread_mutex_lock(&found->eng->lock);
        found->users++;
        pthread_mutex_unlock(&found->eng->lock);
    }
    pthread_mutex_unlock(&g_lock);
    return found;
}

static void map_release(xm__map_t *m)
{
    pthread_mutex_lock(&m->eng->lock);
    m->users--;
    pthread_cond_broadcast(&m->eng->cond);
    pthread_mutex_unlock(&m->eng->lock);
}

XM_EXPORT xm_status_t xm_sync(void *addr, size_t length)
{
    if (addr == NULL) return XM_ERR_INVALID;
    xm__map_t *m = map_get(addr, false);
    if (m == NULL) return XM_ERR_INVALID;
    uint64_t start = (uintptr_t)addr - (uintptr_t)m->addr;
    uint64_t end = length > m->vlen - start ? m->vlen : start + length;
    uint32_t b0 = (uint32_t)(start / m->fetch);
    uint32_t b1 = (uint32_t)((end + m->fetch - 1) / m->fetch);
    xm_status_t status = length == 0 ? XM_OK : xm__sync_blocks(m, b0, b1);
    map_release(m);
    return status;
}

static xm_status_t unmap(void *addr, bool discard)
{
    if (addr == NULL) return XM_ERR_INVALID;
    xm__map_t *m = map_get(addr, true);
    if (m == NULL) return XM_ERR_INVALID;
    xm__engine_t *eng = m->eng;
    pthread_mutex_lock(&eng->lock);
    if (m->dying) {
        m->users--;
        pthread_cond_broadcast(&eng->cond); /* the unmapping thread may be waiting for us */
        pthread_mutex_unlock(&eng->lock);
        return XM_ERR_INVALID; /* another thread is unmapping it */
    }
    m->dying = true;
    pthread_mutex_unlock(&eng->lock);
    if (!discard) {
        xm_status_t status = xm__sync_blocks(m, 0, m->nblocks);
        if (status != XM_OK) {
            pthread_mutex_lock(&eng->lock);
            m->dying = false;
            m->users--;
            pthread_cond_broadcast(&eng->cond);
            pthread_mutex_unlock(&eng->lock);
            return status;
        }
    }
    /* out of the lists first: new faults on it are just woken until it is unregistered */
    pthread_mutex_lock(&g_lock);
    for (gmap_t **gp = &g_maps; *gp != NULL; gp = &(*gp)->next) {
        if ((*gp)->m == m) {
            gmap_t *g = *gp;
            *gp = g->next;
            free(g);
            break;
        }
    }
    pthread_mutex_lock(&eng->lock);
    for (xm__map_t **mp = &eng->maps; *mp != NULL; mp = &(*mp)->next) {
        if (*mp == m) {
            *mp = m->next;
            break;
        }
    }
    if (eng->hand_map == m) eng->hand_map = NULL;
    m->users--;
    while (m->users > 0) pthread_cond_wait(&eng->cond, &eng->lock);
    eng->resident -= m->resident;
    XM__PS_SUB(resident_bytes, m->resident);
    XM__PS_SUB(mappings, 1);
    pthread_mutex_unlock(&eng->lock);
    /* an access racing the unmap (outside the contract) faults with SIGSEGV, never reads
     * the kernel's zero page, which it would between the unregister and the munmap */
    mprotect(m->addr, m->vlen, PROT_NONE);
    struct uffdio_range r = {.start = (uintptr_t)m->addr, .len = m->vlen};
    ioctl(eng->uffd, UFFDIO_UNREGISTER, &r);
    munmap(m->addr, m->vlen + GUARD);
    map_free(m);
    engine_put(eng);
    pthread_mutex_unlock(&g_lock);
    return XM_OK;
}

XM_EXPORT xm_status_t xm_unmap(void *addr)
{
    return unmap(addr, false);
}

XM_EXPORT void xm_unmap_discard(void *addr)
{
    unmap(addr, true);
}

XM_EXPORT xm_status_t xm_map_stat(const void *addr, xm_map_stats_t *stats_p)
{
    if (addr == NULL || stats_p == NULL) return XM_ERR_INVALID;
    xm__map_t *m = map_get(addr, false);
    if (m == NULL) return XM_ERR_INVALID;
    pthread_mutex_lock(&m->eng->lock);
    xm_map_stats_t st = m->stats;
    st.resident_bytes = m->resident;
    st.budget_bytes = m->budget;
    st.fetch_size = m->fetch;
    m->users--;
    pthread_cond_broadcast(&m->eng->cond);
    pthread_mutex_unlock(&m->eng->lock);
    /* never past the caller's size: an older program's struct is smaller */
    return xm__sized_out(stats_p, &st, sizeof(st));
}
