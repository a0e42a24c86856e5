/* Stress test of mapped external memory (issue 4, item 5): many threads
 * faulting the same and different pages of a mapping whose cache is far
 * smaller than the mapping, eviction racing with stores and with xm_sync,
 * unmap while the library (and, in one case, the application) is still busy.
 *
 * A plain C program, not a Criterion test: Criterion cannot start under
 * ThreadSanitizer on our machines, and this is the test that must run under
 * TSan as well as ASan. It starts its own xmemd on loopback and stops it at
 * the end, also on failure (and the appliance dies with us: PDEATHSIG).
 *
 *   map_stress [--provider tcp|local] [--seconds S] [--threads N] [--timeout S] [--config I]
 *
 * Exit status: 0 passed, 1 a check failed (lost write, torn page, wrong
 * status), 2 setup error, 3 watchdog (deadlock or far too slow), 77 skipped
 * (no usable userfaultfd).
 *
 * What is checked, per mapping configuration (fetch size, read-ahead):
 *
 *  stress   Threads own pages (whole-page versions: every word of page pg
 *           holds enc(pg, word, gen)) and share pages (each thread has a
 *           64-word slot in every shared page); they read and write at random
 *           and in sequential sweeps, and read other threads' slots. A
 *           syncer thread calls xm_sync on the whole mapping or a random part
 *           and then reads the appliance's copy through a second connection:
 *           everything written before the xm_sync call must be there (no
 *           lost write). In the mapping, every thread sees its own last
 *           version of every page before it writes the next one (no lost
 *           write, no torn page) and never sees another thread's slot go
 *           backwards (no stale page). At the end: the mapping and the
 *           appliance hold exactly the last version of every page.
 *  discard  More stores without xm_sync, the threads stop, then two threads
 *           call xm_unmap_discard at once while a third calls xm_sync and
 *           xm_map_stat. The appliance holds what eviction wrote back: per
 *           page a version at least as new as the last xm_sync and never
 *           torn: eviction takes the page away from the application before
 *           copying it, so a page caught in the middle of a store sequence
 *           is a prefix of the new version over the old one, never a mix.
 *  unmap    More stores; the threads stop (they say so; they are not joined)
 *           and at once two threads call xm_unmap while a third calls
 *           xm_sync / xm_map_stat; read-ahead and evictions of the last
 *           faults are still in flight in the handler threads. Exactly one
 *           xm_unmap returns XM_OK, the other XM_ERR_INVALID; xm_sync and
 *           xm_map_stat return XM_OK or XM_ERR_INVALID; the appliance holds
 *           exactly the last version of every page.
 *  late     xm_unmap is called right after the stop flag is raised, while
 *           the threads are still storing and faulting. xm_unmap does not
 *           wait for application threads (src/client/map/map.c: it writes back,
 *           takes the mapping out of the engine's lists, waits for the
 *           handler threads working on it, then unregisters and munmaps), so
 *           an access racing xm_unmap is outside the contract: the
 *           application must stop touching a mapping before it unmaps it.
 *           Such an access gets SIGSEGV (after munmap) or, when its fault is
 *           retried between UFFDIO_UNREGISTER and munmap, the kernel's zero
 *           page; that includes a thread that was already blocked in a fault
 *           when xm_unmap was called. The threads catch SIGSEGV on the
 *           mapping's range (only after the flag), tolerate wrong words read
 *           after the flag, and the run prints how many of each it saw.
 *           What must hold: xm_unmap returns XM_OK, nothing deadlocks, every
 *           store that completed before xm_unmap was called is on the
 *           appliance, and every word there is one this thread wrote to that
 *           place (version between the last completed and the last begun).
 *  cycle    (second configuration) while the threads stress one mapping, a
 *           cycler thread maps a second region through the same context,
 *           writes a new version of it and unmaps it, over and over; the two
 *           mappings share a context-wide cache budget, so evictions from
 *           one mapping pick victims in the other while it is being
 *           unmapped. After each xm_unmap the appliance holds that version.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xmem/xmem.h>

#include "stress.h"

#define PAGE 4096u
#define WORDS (PAGE / 8)
#define MAXT 8
#define SLOT (WORDS / MAXT)  /* words of one thread's slot in a shared page */
#define OWN_PER_THREAD 64    /* pages each thread owns */
#define SHARED_PAGES 64
#define TAG (1ull << 31)
/* the stress phase runs until it has done at least this much */
#define MIN_EVICTIONS 500
#define MIN_SYNCS 10
#define MIN_CYCLES 5

/* ---- settings and global state ---------------------------------------- */

static double g_seconds = 2.0;   /* length of the main stress phase per configuration */
static int g_threads = 6;
static int g_only = -1;          /* --config: run one configuration */


/* ---- page contents ---------------------------------------------------- */

/* Word w of page pg at version g: the place and the version, never 0. */
static inline uint64_t enc(uint64_t pg, uint64_t w, uint64_t g)
{
    return (g << 32) | TAG | (pg << 9) | w;
}
static inline bool enc_place_ok(uint64_t v, uint64_t pg, uint64_t w)
{
    return (v & 0xffffffffull) == (TAG | (pg << 9) | w);
}
static inline uint64_t enc_gen(uint64_t v)
{
    return v >> 32;
}

static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* One mapping under test and everything the threads know about it. */
typedef struct sut {
    int nthreads;
    uint32_t own_pages, npages;   /* owned pages first, then SHARED_PAGES shared ones */
    uint64_t size;
    xm_region_h region;           /* main context's handle */
    uint64_t region_id;
    uint64_t *p;                  /* the mapping */
    /* published by the writers (release) after each completed store sequence */
    _Atomic uint64_t *own_done;               /* [own_pages] */
    _Atomic uint64_t *sh_done;                /* [MAXT][SHARED_PAGES] */
    /* the writers' own view; read by others only after a join or a stop handshake */
    uint64_t *own_gen;                        /* [own_pages]: version the page holds */
    uint64_t *own_hi;                         /* [own_pages]: newest version ever started */
    uint64_t *sh_cnt;                         /* [MAXT][SHARED_PAGES] */
    uint64_t *sh_hi;
    atomic_int stop;
    atomic_int running;           /* writers not yet stopped */
    bool late_mode;               /* the "late" phase: tolerate accesses after the flag */
} sut_t;

#define SH(s, t, i) ((size_t)(t) * SHARED_PAGES + (i))

static uint64_t *page_ptr(sut_t *s, uint32_t pg)
{
    return s->p + (size_t)pg * WORDS;
}

/* The image the appliance must hold when every writer's last version is there. */
static void expected_image(const sut_t *s, uint64_t *img)
{
    for (uint32_t pg = 0; pg < s->own_pages; pg++) {
        for (uint32_t w = 0; w < WORDS; w++) img[(size_t)pg * WORDS + w] = enc(pg, w, s->own_gen[pg]);
    }
    for (uint32_t i = 0; i < SHARED_PAGES; i++) {
        uint32_t pg = s->own_pages + i;
        for (uint32_t w = 0; w < WORDS; w++) {
            uint32_t t = w / SLOT;
            uint64_t c = t < (uint32_t)s->nthreads ? s->sh_cnt[SH(s, t, i)] : 0;
            img[(size_t)pg * WORDS + w] = enc(pg, w, c);
        }
    }
}

static void compare_image(const char *what, const uint64_t *got, const uint64_t *want, uint32_t npages)
{
    for (size_t i = 0; i < (size_t)npages * WORDS; i++) {
        if (got[i] != want[i]) {
            size_t bad = 0;
            for (size_t j = i; j < (size_t)npages * WORDS; j++) bad += got[j] != want[j];
            xs_fail("%s: page %zu word %zu holds %#llx (version %llu), expected %#llx (version %llu); "
                 "%zu words differ",
                 what, i / WORDS, i % WORDS, (unsigned long long)got[i], (unsigned long long)enc_gen(got[i]),
                 (unsigned long long)want[i], (unsigned long long)enc_gen(want[i]), bad);
        }
    }
}

/* ---- writer threads ----------------------------------------------------- */

typedef struct worker {
    sut_t *s;
    int t;
    uint64_t rng;
    uint64_t seen[MAXT][SHARED_PAGES]; /* newest count seen in other threads' slots */
    uint64_t ops, late_segv, late_bad;
    uint64_t late_inflight;   /* of those: the access began before xm_unmap was called */
    uint64_t late_zero;       /* mismatches that read 0: the kernel's zero page */
    uint64_t op_ns;           /* when the current access began */
    sigjmp_buf jb;
    pthread_t th;
} worker_t;

static __thread worker_t *tl_worker;
static uintptr_t g_late_lo, g_late_hi;
static _Atomic uint64_t g_unmap_ns = UINT64_MAX; /* when xm_unmap was called in the late phase */

/* The "late" phase only: an access after the stop flag that hits the unmapped range. */
static void on_segv(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    worker_t *w = tl_worker;
    uintptr_t a = (uintptr_t)si->si_addr;
    if (w != NULL && w->s->late_mode && atomic_load(&w->s->stop) && a >= g_late_lo && a < g_late_hi) {
        siglongjmp(w->jb, 1);
    }
    static const char msg[] = "map_stress: unexpected SIGSEGV/SIGBUS\n";
    if (write(2, msg, sizeof(msg) - 1) < 0) { /* nothing more to do */ }
    signal(sig, SIG_DFL);
    raise(sig);
}

/* A mismatch seen in the mapping. Before the stop flag it is a bug; in the
 * "late" phase after the flag it is an access racing with xm_unmap. */
static bool late_excuse(worker_t *w, uint64_t v)
{
    if (w->s->late_mode && atomic_load(&w->s->stop)) {
        w->late_bad++;
        if (v == 0) w->late_zero++;
        if (w->op_ns < atomic_load(&g_unmap_ns)) w->late_inflight++;
        return true;
    }
    return false;
}

/* Check own page pg holds version own_gen everywhere, then write the next version. */
static bool own_write(worker_t *w, uint32_t pg)
{
    sut_t *s = w->s;
    uint64_t *q = page_ptr(s, pg);
    uint64_t g = s->own_gen[pg];
    for (uint32_t i = 0; i < WORDS; i++) {
        uint64_t v = q[i];
        if (v != enc(pg, i, g)) {
            if (late_excuse(w, v)) return false;
            xs_fail("thread %d, own page %u word %u: read %#llx (version %llu), expected version %llu "
                 "(a lost write or a torn page)",
                 w->t, pg, i, (unsigned long long)v, (unsigned long long)enc_gen(v), (unsigned long long)g);
        }
    }
    s->own_hi[pg] = g + 1;
    for (uint32_t i = 0; i < WORDS; i++) q[i] = enc(pg, i, g + 1);
    s->own_gen[pg] = g + 1;
    atomic_store_explicit(&s->own_done[pg], g + 1, memory_order_release);
    return true;
}

/* Same for this thread's slot of shared page i (stores are atomic: other threads read them). */
static bool slot_write(worker_t *w, uint32_t i)
{
    sut_t *s = w->s;
    uint32_t pg = s->own_pages + i;
    _Atomic uint64_t *q = (_Atomic uint64_t *)page_ptr(s, pg) + (size_t)w->t * SLOT;
    uint64_t c = s->sh_cnt[SH(s, w->t, i)];
    for (uint32_t j = 0; j < SLOT; j++) {
        uint64_t v = atomic_load_explicit(&q[j], memory_order_relaxed);
        uint32_t word = (uint32_t)w->t * SLOT + j;
        if (v != enc(pg, word, c)) {
            if (late_excuse(w, v)) return false;
            xs_fail("thread %d, shared page %u word %u: read %#llx (count %llu), expected count %llu "
                 "(a lost write or a torn page)",
                 w->t, pg, word, (unsigned long long)v, (unsigned long long)enc_gen(v), (unsigned long long)c);
        }
    }
    s->sh_hi[SH(s, w->t, i)] = c + 1;
    for (uint32_t j = 0; j < SLOT; j++) {
        atomic_store_explicit(&q[j], enc(pg, (uint32_t)w->t * SLOT + j, c + 1), memory_order_relaxed);
    }
    s->sh_cnt[SH(s, w->t, i)] = c + 1;
    atomic_store_explicit(&s->sh_done[SH(s, w->t, i)], c + 1, memory_order_release);
    return true;
}

/* Another thread's slot: the right place, and never older than what this thread saw before. */
static bool slot_read(worker_t *w, uint32_t i, int t2)
{
    sut_t *s = w->s;
    uint32_t pg = s->own_pages + i;
    _Atomic uint64_t *q = (_Atomic uint64_t *)page_ptr(s, pg) + (size_t)t2 * SLOT;
    uint64_t v = atomic_load_explicit(&q[0], memory_order_acquire);
    uint32_t word = (uint32_t)t2 * SLOT;
    if (!enc_place_ok(v, pg, word) || enc_gen(v) < w->seen[t2][i]) {
        if (late_excuse(w, v)) return false;
        xs_fail("thread %d reading thread %d's slot of shared page %u: %#llx (count %llu) after count %llu "
             "(a stale or foreign page)",
             w->t, t2, pg, (unsigned long long)v, (unsigned long long)enc_gen(v),
             (unsigned long long)w->seen[t2][i]);
    }
    w->seen[t2][i] = enc_gen(v);
    return true;
}

static void *writer(void *arg)
{
    worker_t *w = arg;
    sut_t *s = w->s;
    tl_worker = w;
    uint32_t base = (uint32_t)w->t * OWN_PER_THREAD;
    if (sigsetjmp(w->jb, 1) != 0) {
        w->late_segv++; /* an access after xm_unmap (late phase only) */
        if (w->op_ns < atomic_load(&g_unmap_ns)) w->late_inflight++;
        goto out;
    }
    while (!atomic_load_explicit(&s->stop, memory_order_acquire)) {
        uint64_t r = rng_next(&w->rng);
        uint32_t op = (uint32_t)(r % 100);
        if (s->late_mode) w->op_ns = xs_now_ns();
        bool ok = true;
        if (op < 45) {
            ok = own_write(w, base + (uint32_t)((r >> 8) % OWN_PER_THREAD));
        } else if (op < 50) {
            /* a sequential sweep: read-ahead */
            uint32_t at = (uint32_t)((r >> 8) % OWN_PER_THREAD);
            for (uint32_t k = 0; k < 16 && ok; k++) ok = own_write(w, base + (at + k) % OWN_PER_THREAD);
        } else if (op < 80) {
            ok = slot_write(w, (uint32_t)((r >> 8) % SHARED_PAGES));
        } else {
            int t2 = (int)((r >> 40) % (uint64_t)s->nthreads);
            ok = slot_read(w, (uint32_t)((r >> 8) % SHARED_PAGES), t2);
        }
        if (!ok) break;
        w->ops++;
    }
out:
    tl_worker = NULL;
    atomic_fetch_sub(&s->running, 1);
    return NULL;
}

static worker_t *start_writers(sut_t *s, uint64_t seed)
{
    worker_t *ws = calloc((size_t)s->nthreads, sizeof(*ws));
    if (ws == NULL) xs_setup_error("out of memory");
    atomic_store(&s->stop, 0);
    atomic_store(&s->running, s->nthreads);
    for (int t = 0; t < s->nthreads; t++) {
        ws[t].s = s;
        ws[t].t = t;
        ws[t].rng = seed * 0x9e3779b97f4a7c15ull + (uint64_t)t * 7919 + 1;
        if (pthread_create(&ws[t].th, NULL, writer, &ws[t]) != 0) xs_setup_error("pthread_create: %m");
    }
    return ws;
}

static uint64_t join_writers(sut_t *s, worker_t *ws, uint64_t *late_segv, uint64_t *late_bad,
                             uint64_t *late_inflight, uint64_t *late_zero)
{
    uint64_t ops = 0;
    for (int t = 0; t < s->nthreads; t++) {
        pthread_join(ws[t].th, NULL);
        ops += ws[t].ops;
        if (late_segv != NULL) *late_segv += ws[t].late_segv;
        if (late_bad != NULL) *late_bad += ws[t].late_bad;
        if (late_inflight != NULL) *late_inflight += ws[t].late_inflight;
        if (late_zero != NULL) *late_zero += ws[t].late_zero;
    }
    free(ws);
    return ops;
}

/* Raise the flag and wait until every writer says it made its last access (no join). */
static void stop_and_wait_quiet(sut_t *s)
{
    atomic_store(&s->stop, 1);
    while (atomic_load(&s->running) > 0) sched_yield();
}

static void sleep_s(double sec)
{
    struct timespec ts = {.tv_sec = (time_t)sec, .tv_nsec = (long)((sec - (double)(time_t)sec) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) { /* rest of it */ }
}

/* ---- the appliance's copy ---------------------------------------------- */

/* Lower bounds: what writers had completed (published) at the moment of the snapshot. */
typedef struct bounds {
    uint64_t *own;   /* [own_pages] */
    uint64_t *sh;    /* [MAXT * SHARED_PAGES] */
} bounds_t;

static void bounds_take(sut_t *s, bounds_t *b)
{
    for (uint32_t pg = 0; pg < s->own_pages; pg++) {
        b->own[pg] = atomic_load_explicit(&s->own_done[pg], memory_order_acquire);
    }
    for (size_t i = 0; i < (size_t)MAXT * SHARED_PAGES; i++) {
        b->sh[i] = atomic_load_explicit(&s->sh_done[i], memory_order_acquire);
    }
}

/* Appliance copy of pages [pg0, pg0+n): every word in its place, versions in [lo, hi]
 * (hi NULL: no upper bound). */
static void check_range(sut_t *s, const char *what, const uint64_t *img, uint32_t pg0, uint32_t n,
                        const bounds_t *lo, const bounds_t *hi)
{
    for (uint32_t k = 0; k < n; k++) {
        uint32_t pg = pg0 + k;
        const uint64_t *q = img + (size_t)k * WORDS;
        for (uint32_t w = 0; w < WORDS; w++) {
            uint64_t v = q[w];
            uint64_t min, max = UINT64_MAX;
            if (pg < s->own_pages) {
                min = lo->own[pg];
                if (hi != NULL) max = hi->own[pg];
            } else {
                uint32_t t = w / SLOT;
                if (t >= (uint32_t)s->nthreads) {
                    min = max = 0;
                } else {
                    min = lo->sh[SH(s, t, pg - s->own_pages)];
                    if (hi != NULL) max = hi->sh[SH(s, t, pg - s->own_pages)];
                }
            }
            if (!enc_place_ok(v, pg, w) || enc_gen(v) < min || enc_gen(v) > max) {
                xs_fail("%s: the appliance's page %u word %u holds %#llx (version %llu), expected "
                     "version in [%llu, %llu]%s",
                     what, pg, w, (unsigned long long)v, (unsigned long long)enc_gen(v),
                     (unsigned long long)min, (unsigned long long)max,
                     enc_place_ok(v, pg, w) ? " (a lost write)" : " (a word from elsewhere)");
            }
        }
    }
}

/* Words [0, n) of one store sequence caught at one instant: a prefix of
 * version g+1 (possibly empty) over version g (possibly empty), g >= min. */
static void check_snapshot(const char *what, const uint64_t *q, uint32_t pg, uint32_t w0, uint32_t n,
                           uint64_t min, uint64_t max)
{
    uint64_t first = enc_gen(q[0]), last = enc_gen(q[n - 1]);
    bool ok = first >= last && first - last <= 1 && last >= min && first <= max;
    for (uint32_t i = 0; i < n && ok; i++) {
        uint64_t g = enc_gen(q[i]);
        ok = enc_place_ok(q[i], pg, w0 + i) && (g == first || g == last) && (i == 0 || g <= enc_gen(q[i - 1]));
    }
    if (!ok) {
        fprintf(stderr, "page %u words %u..%u versions:", pg, w0, w0 + n - 1);
        for (uint32_t i = 0; i < n; i++) {
            if (i == 0 || enc_gen(q[i]) != enc_gen(q[i - 1]) || !enc_place_ok(q[i], pg, w0 + i)) {
                fprintf(stderr, " [%u]=%llu%s", w0 + i, (unsigned long long)enc_gen(q[i]),
                        enc_place_ok(q[i], pg, w0 + i) ? "" : "(misplaced)");
            }
        }
        fputc('\n', stderr);
        xs_fail("%s: the appliance's page %u (words %u..%u) is torn or lost a write: versions %llu..%llu, "
             "expected one version or a prefix of the next in [%llu, %llu]",
             what, pg, w0, w0 + n - 1, (unsigned long long)first, (unsigned long long)last,
             (unsigned long long)min, (unsigned long long)max);
    }
}

/* ---- the syncer --------------------------------------------------------- */

typedef struct syncer {
    sut_t *s;
    xm_region_h vr;      /* the region through a second connection */
    atomic_int stop;
    uint64_t rng, partial, checked_pages;
    atomic_uint_fast64_t syncs;
    pthread_t th;
} syncer_t;

static void *syncer_main(void *arg)
{
    syncer_t *y = arg;
    sut_t *s = y->s;
    bounds_t lo = {malloc(s->own_pages * sizeof(uint64_t)), malloc((size_t)MAXT * SHARED_PAGES * sizeof(uint64_t))};
    uint64_t *img = malloc(s->size);
    if (lo.own == NULL || lo.sh == NULL || img == NULL) xs_setup_error("out of memory");
    while (!atomic_load(&y->stop)) {
        uint64_t r = rng_next(&y->rng);
        uint32_t pg0 = 0, n = s->npages;
        if (r % 2) { /* a random part */
            pg0 = (uint32_t)((r >> 8) % s->npages);
            n = 1 + (uint32_t)((r >> 24) % (s->npages - pg0));
            y->partial++;
        }
        bounds_take(s, &lo);
        xm_status_t st = xm_sync(page_ptr(s, pg0), (size_t)n * PAGE);
        if (st != XM_OK) xs_fail("xm_sync of pages [%u, %u) during the stress: %s", pg0, pg0 + n, xm_status_str(st));
        st = xm_read(y->vr, (uint64_t)pg0 * PAGE, img, (size_t)n * PAGE);
        if (st != XM_OK) xs_fail("xm_read of the appliance's copy: %s", xm_status_str(st));
        check_range(s, "after xm_sync", img, pg0, n, &lo, NULL);
        y->checked_pages += n;
        xm_map_stats_t ms = XM_MAP_STATS_INIT;
        st = xm_map_stat(s->p, &ms);
        if (st != XM_OK) xs_fail("xm_map_stat: %s", xm_status_str(st));
        if (ms.resident_bytes > ms.budget_bytes) {
            xs_fail("resident %llu bytes over the budget of %llu", (unsigned long long)ms.resident_bytes,
                 (unsigned long long)ms.budget_bytes);
        }
        y->syncs++;
    }
    free(lo.own);
    free(lo.sh);
    free(img);
    return NULL;
}

/* ---- the cycler: map, write, unmap a second region over and over ---------- */

typedef struct cycler {
    xm_ctx_h ctx;
    xm_region_h r;
    uint32_t npages;
    xm_map_opts_t opts;
    atomic_int stop;
    atomic_uint_fast64_t cycles;
    pthread_t th;
} cycler_t;

static void *cycler_main(void *arg)
{
    cycler_t *c = arg;
    uint64_t size = (uint64_t)c->npages * PAGE;
    uint64_t *img = malloc(size);
    if (img == NULL) xs_setup_error("out of memory");
    for (uint64_t gen = 1; !atomic_load(&c->stop); gen++) {
        uint64_t *p;
        xm_status_t st = xm_map(c->ctx, c->r, 0, size, &c->opts, (void **)&p);
        if (st != XM_OK) xs_fail("cycler: xm_map: %s (%s)", xm_status_str(st), xm_last_error(c->ctx));
        for (uint32_t pg = 0; pg < c->npages; pg++) {
            uint64_t *q = p + (size_t)pg * WORDS;
            for (uint32_t w = 0; w < WORDS; w++) {
                if (q[w] != enc(pg, w, gen - 1)) {
                    xs_fail("cycler: mapping #%llu, page %u word %u: %#llx, expected version %llu "
                         "(what the last xm_unmap wrote back)",
                         (unsigned long long)gen, pg, w, (unsigned long long)q[w], (unsigned long long)gen - 1);
                }
                q[w] = enc(pg, w, gen);
            }
            if (pg % 16 == 15 && gen % 2 == 0) CHECK_OK(xm_sync(p, size));
        }
        CHECK_OK(xm_unmap(p));
        CHECK_OK(xm_read(c->r, 0, img, size));
        for (uint32_t pg = 0; pg < c->npages; pg++) {
            for (uint32_t w = 0; w < WORDS; w++) {
                if (img[(size_t)pg * WORDS + w] != enc(pg, w, gen)) {
                    xs_fail("cycler: after xm_unmap #%llu the appliance's page %u word %u holds %#llx, "
                         "expected version %llu",
                         (unsigned long long)gen, pg, w, (unsigned long long)img[(size_t)pg * WORDS + w],
                         (unsigned long long)gen);
                }
            }
        }
        c->cycles++;
    }
    free(img);
    return NULL;
}

/* ---- one mapping configuration through every phase --------------------- */

typedef struct config {
    const char *name;
    uint32_t fetch;
    uint64_t cache;       /* the mapping's budget */
    uint32_t flags;
    bool cycle;           /* run the cycler with a shared context budget */
} config_t;

typedef struct {
    xm_status_t unmap_status[2];
    atomic_int done;
    atomic_int go;
    uint64_t other_calls;
    void *addr;
    uint64_t size;
    bool discard;
} race_t;

typedef struct {
    race_t *r;
    int me;
} race_arg_t;

static void *race_unmap(void *arg)
{
    race_t *r = ((race_arg_t *)arg)->r;
    int me = ((race_arg_t *)arg)->me;
    while (!atomic_load(&r->go)) { /* spin: start together */ }
    if (r->discard) {
        xm_unmap_discard(r->addr);
        r->unmap_status[me] = XM_OK;
    } else {
        r->unmap_status[me] = xm_unmap(r->addr);
    }
    atomic_fetch_add(&r->done, 1);
    return NULL;
}

static void *race_other(void *arg)
{
    race_t *r = arg;
    while (!atomic_load(&r->go)) { /* spin */ }
    while (atomic_load(&r->done) < 2) {
        xm_status_t a = xm_sync(r->addr, r->size);
        xm_map_stats_t ms = XM_MAP_STATS_INIT;
        xm_status_t b = xm_map_stat(r->addr, &ms);
        if ((a != XM_OK && a != XM_ERR_INVALID) || (b != XM_OK && b != XM_ERR_INVALID)) {
            xs_fail("xm_sync / xm_map_stat racing with unmap returned %s / %s (XM_OK or XM_ERR_INVALID "
                 "expected)", xm_status_str(a), xm_status_str(b));
        }
        r->other_calls++;
    }
    return NULL;
}

/* Two threads unmap at once while a third syncs and reads the counters. */
static void unmap_race(void *addr, uint64_t size, bool discard)
{
    race_t r = {.addr = addr, .size = size, .discard = discard};
    race_arg_t a0 = {&r, 0}, a1 = {&r, 1};
    pthread_t t0, t1, t2;
    if (pthread_create(&t0, NULL, race_unmap, &a0) != 0 || pthread_create(&t1, NULL, race_unmap, &a1) != 0 ||
        pthread_create(&t2, NULL, race_other, &r) != 0) {
        xs_setup_error("pthread_create: %m");
    }
    atomic_store(&r.go, 1);
    pthread_join(t0, NULL);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    if (!discard) {
        int ok = (r.unmap_status[0] == XM_OK) + (r.unmap_status[1] == XM_OK);
        int inval = (r.unmap_status[0] == XM_ERR_INVALID) + (r.unmap_status[1] == XM_ERR_INVALID);
        if (ok != 1 || inval != 1) {
            xs_fail("two concurrent xm_unmap of one mapping returned %s and %s (one XM_OK and one "
                 "XM_ERR_INVALID expected)",
                 xm_status_str(r.unmap_status[0]), xm_status_str(r.unmap_status[1]));
        }
    }
    xm_map_stats_t ms = XM_MAP_STATS_INIT;
    if (xm_map_stat(addr, &ms) != XM_ERR_INVALID) xs_fail("the mapping is still there after unmap");
}

static uint64_t *map_it(xm_ctx_h ctx, sut_t *s, const config_t *c)
{
    xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = c->cache, .fetch_size = c->fetch, .flags = c->flags};
    uint64_t *p;
    xm_status_t st = xm_map(ctx, s->region, 0, s->size, &o, (void **)&p);
    if (st != XM_OK) xs_fail("xm_map: %s (%s)", xm_status_str(st), xm_last_error(ctx));
    return p;
}

static void run_config(const config_t *c, int ci)
{
    uint64_t t_start = xs_now_ns();
    xm_ctx_h ctx = xs_connect(), vctx = xs_connect();
    sut_t s = {.nthreads = g_threads};
    s.own_pages = (uint32_t)g_threads * OWN_PER_THREAD;
    s.npages = s.own_pages + SHARED_PAGES;
    s.size = (uint64_t)s.npages * PAGE;
    s.own_done = calloc(s.own_pages, sizeof(*s.own_done));
    s.sh_done = calloc((size_t)MAXT * SHARED_PAGES, sizeof(*s.sh_done));
    s.own_gen = calloc(s.own_pages, sizeof(uint64_t));
    s.own_hi = calloc(s.own_pages, sizeof(uint64_t));
    s.sh_cnt = calloc((size_t)MAXT * SHARED_PAGES, sizeof(uint64_t));
    s.sh_hi = calloc((size_t)MAXT * SHARED_PAGES, sizeof(uint64_t));
    uint64_t *img = malloc(s.size), *want = malloc(s.size);
    bounds_t lo = {malloc(s.own_pages * sizeof(uint64_t)), malloc((size_t)MAXT * SHARED_PAGES * sizeof(uint64_t))};
    bounds_t hi = {malloc(s.own_pages * sizeof(uint64_t)), malloc((size_t)MAXT * SHARED_PAGES * sizeof(uint64_t))};
    if (!s.own_done || !s.sh_done || !s.own_gen || !s.own_hi || !s.sh_cnt || !s.sh_hi || !img || !want ||
        !lo.own || !lo.sh || !hi.own || !hi.sh) {
        xs_setup_error("out of memory");
    }

    xs_phase("%s: setup", c->name);
    CHECK_OK(xm_region_create(ctx, s.size, NULL, &s.region));
    s.region_id = xm_region_id(s.region);
    expected_image(&s, want); /* version 0 everywhere */
    CHECK_OK(xm_write(s.region, 0, want, s.size));
    xm_region_h vr;
    CHECK_OK(xm_region_open(vctx, s.region_id, NULL, XM_ACCESS_READ, &vr));

    cycler_t cy = {0};
    if (c->cycle) {
        cy.ctx = ctx;
        cy.npages = 32;
        /* one context budget over both mappings: faults of one evict the other */
        cy.opts = (xm_map_opts_t){.size = sizeof(xm_map_opts_t), .cache_bytes = 64u << 10, .fetch_size = c->fetch, .flags = c->flags,
                                  .ctx_cache_bytes = c->cache + (32u << 10)};
        CHECK_OK(xm_region_create(ctx, (uint64_t)cy.npages * PAGE, NULL, &cy.r));
        uint64_t *z = malloc((size_t)cy.npages * PAGE);
        for (uint32_t pg = 0; pg < cy.npages; pg++) {
            for (uint32_t w = 0; w < WORDS; w++) z[(size_t)pg * WORDS + w] = enc(pg, w, 0);
        }
        CHECK_OK(xm_write(cy.r, 0, z, (size_t)cy.npages * PAGE));
        free(z);
    }

    /* 1. stress: stores and loads from every thread, a tiny cache, xm_sync all the time */
    xs_phase("%s: stress", c->name);
    s.p = map_it(ctx, &s, c);
    syncer_t y = {.s = &s, .vr = vr, .rng = 12345 + (uint64_t)ci};
    worker_t *ws = start_writers(&s, 1000 + (uint64_t)ci);
    if (pthread_create(&y.th, NULL, syncer_main, &y) != 0) xs_setup_error("pthread_create: %m");
    if (c->cycle && pthread_create(&cy.th, NULL, cycler_main, &cy) != 0) xs_setup_error("pthread_create: %m");
    /* at least g_seconds, and on until the work that makes the checks mean something was
     * done (sanitizers slow everything down ten times); the watchdog bounds it */
    uint64_t t_stress = xs_now_ns();
    for (;;) {
        sleep_s(0.05);
        xm_map_stats_t now = XM_MAP_STATS_INIT;
        CHECK_OK(xm_map_stat(s.p, &now));
        bool enough = now.evictions >= MIN_EVICTIONS && atomic_load(&y.syncs) >= MIN_SYNCS &&
                      (!c->cycle || atomic_load(&cy.cycles) >= MIN_CYCLES);
        if ((double)(xs_now_ns() - t_stress) / 1e9 >= g_seconds && enough) break;
    }
    atomic_store(&s.stop, 1);
    uint64_t ops = join_writers(&s, ws, NULL, NULL, NULL, NULL);
    atomic_store(&y.stop, 1);
    pthread_join(y.th, NULL);
    if (c->cycle) {
        atomic_store(&cy.stop, 1);
        pthread_join(cy.th, NULL);
    }
    xm_map_stats_t ms = XM_MAP_STATS_INIT;
    CHECK_OK(xm_map_stat(s.p, &ms));
    /* quiet now: the mapping shows every last version, and so does the appliance after xm_sync */
    expected_image(&s, want);
    compare_image("the mapping after the stress", s.p, want, s.npages);
    CHECK_OK(xm_sync(s.p, s.size));
    CHECK_OK(xm_read(vr, 0, img, s.size));
    compare_image("the appliance after the stress and xm_sync", img, want, s.npages);
    printf("  %-26s stress:  %6.2f s, %llu store/load ops, %llu faults, %llu evictions, %llu pages "
           "written back, %llu syncs (%llu partial) verified on the appliance%s\n",
           c->name, (double)(xs_now_ns() - t_start) / 1e9, (unsigned long long)ops, (unsigned long long)ms.faults,
           (unsigned long long)ms.evictions, (unsigned long long)ms.writeback_pages, (unsigned long long)atomic_load(&y.syncs),
           (unsigned long long)y.partial, c->cycle ? "" : "");
    if (c->cycle) printf("  %-26s cycle:   %llu map/write/unmap cycles of a second mapping\n", c->name,
                         (unsigned long long)atomic_load(&cy.cycles));
    if (ms.writeback_pages == 0) xs_fail("no page was written back");

    /* 2. discard: stores without xm_sync, then two discards at once (with xm_sync and
     * xm_map_stat racing them); the appliance keeps what eviction wrote back */
    xs_phase("%s: discard", c->name);
    bounds_take(&s, &lo); /* everything up to here is on the appliance */
    ws = start_writers(&s, 2000 + (uint64_t)ci);
    sleep_s(g_seconds / 4);
    stop_and_wait_quiet(&s);
    unmap_race(s.p, s.size, true);
    join_writers(&s, ws, NULL, NULL, NULL, NULL);
    bounds_take(&s, &hi);
    CHECK_OK(xm_read(vr, 0, img, s.size));
    for (uint32_t pg = 0; pg < s.own_pages; pg++) {
        check_snapshot("after two racing xm_unmap_discard", img + (size_t)pg * WORDS, pg, 0, WORDS, lo.own[pg],
                       hi.own[pg]);
    }
    for (uint32_t i = 0; i < SHARED_PAGES; i++) {
        uint32_t pg = s.own_pages + i;
        for (int t = 0; t < s.nthreads; t++) {
            check_snapshot("after two racing xm_unmap_discard", img + (size_t)pg * WORDS + (size_t)t * SLOT, pg,
                           (uint32_t)t * SLOT, SLOT, lo.sh[SH(&s, t, i)], hi.sh[SH(&s, t, i)]);
        }
    }
    /* the writers continue from a clean last version: put it on the appliance */
    expected_image(&s, want);
    CHECK_OK(xm_write(s.region, 0, want, s.size));

    /* 3. unmap: the threads stop (not joined) and two xm_unmap race, with xm_sync and
     * xm_map_stat, while the handlers still fetch and evict for the last faults */
    xs_phase("%s: unmap", c->name);
    s.p = map_it(ctx, &s, c);
    ws = start_writers(&s, 3000 + (uint64_t)ci);
    sleep_s(g_seconds / 4);
    stop_and_wait_quiet(&s);
    unmap_race(s.p, s.size, false);
    join_writers(&s, ws, NULL, NULL, NULL, NULL);
    expected_image(&s, want);
    CHECK_OK(xm_read(vr, 0, img, s.size));
    compare_image("the appliance after two racing xm_unmap", img, want, s.npages);

    /* 4. late: xm_unmap right after the flag, the threads still storing */
    xs_phase("%s: late unmap", c->name);
    s.p = map_it(ctx, &s, c);
    g_late_lo = (uintptr_t)s.p;
    g_late_hi = (uintptr_t)s.p + s.size;
    s.late_mode = true;
    struct sigaction sa = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO | SA_NODEFER}, old_segv, old_bus;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    ws = start_writers(&s, 4000 + (uint64_t)ci);
    sleep_s(g_seconds / 4);
    atomic_store(&s.stop, 1);
    bounds_take(&s, &lo); /* completed before xm_unmap is called */
    atomic_store(&g_unmap_ns, xs_now_ns());
    xm_status_t st = xm_unmap(s.p);
    if (st != XM_OK) xs_fail("xm_unmap with threads still storing: %s", xm_status_str(st));
    uint64_t late_segv = 0, late_bad = 0, late_inflight = 0, late_zero = 0;
    join_writers(&s, ws, &late_segv, &late_bad, &late_inflight, &late_zero);
    atomic_store(&g_unmap_ns, UINT64_MAX);
    sigaction(SIGSEGV, &old_segv, NULL);
    sigaction(SIGBUS, &old_bus, NULL);
    s.late_mode = false;
    for (uint32_t pg = 0; pg < s.own_pages; pg++) hi.own[pg] = s.own_hi[pg];
    for (size_t i = 0; i < (size_t)MAXT * SHARED_PAGES; i++) hi.sh[i] = s.sh_hi[i];
    CHECK_OK(xm_read(vr, 0, img, s.size));
    check_range(&s, "after xm_unmap racing with stores", img, 0, s.npages, &lo, &hi);
    printf("  %-26s unmap:   discard, unmap and late-unmap phases passed (accesses racing xm_unmap: "
           "%llu SIGSEGV, %llu read a wrong word (%llu read 0); %llu began before xm_unmap was called)\n",
           c->name, (unsigned long long)late_segv, (unsigned long long)late_bad, (unsigned long long)late_zero,
           (unsigned long long)late_inflight);

    xm_region_close(vr);
    xm_region_destroy(ctx, s.region_id, NULL);
    xm_region_close(s.region);
    if (c->cycle) {
        xm_region_destroy(ctx, xm_region_id(cy.r), NULL);
        xm_region_close(cy.r);
    }
    xm_disconnect(vctx);
    xm_disconnect(ctx);
    free(s.own_done);
    free(s.sh_done);
    free(s.own_gen);
    free(s.own_hi);
    free(s.sh_cnt);
    free(s.sh_hi);
    free(img);
    free(want);
    free(lo.own);
    free(lo.sh);
    free(hi.own);
    free(hi.sh);
    printf("  %-26s total %.2f s\n", c->name, (double)(xs_now_ns() - t_start) / 1e9);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"provider", required_argument, NULL, 'p'},
                                         {"seconds", required_argument, NULL, 's'},
                                         {"threads", required_argument, NULL, 't'},
                                         {"timeout", required_argument, NULL, 'w'},
                                         {"config", required_argument, NULL, 'c'},
                                         {NULL, 0, NULL, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "p:s:t:w:c:", opts, NULL)) != -1) {
        switch (o) {
        case 'p': xs_provider = optarg; break;
        case 's': g_seconds = atof(optarg); break;
        case 't': g_threads = atoi(optarg); break;
        case 'w': xs_timeout = atoi(optarg); break;
        case 'c': g_only = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s [--provider tcp|local] [--seconds S] [--threads N] [--timeout S] [--config 0|1|2]\n", argv[0]);
            return EXIT_SETUP;
        }
    }
    if (g_threads < 2 || g_threads > MAXT || g_seconds <= 0 || xs_timeout <= 0) {
        fprintf(stderr, "map_stress: --threads 2..%d, --seconds > 0, --timeout > 0\n", MAXT);
        return EXIT_SETUP;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    xs_need_uffd();
    xs_watchdog_start();
    xs_appliance_start("256M");
    printf("map_stress: provider %s, %d threads, %.1f s per stress phase, appliance %s\n", xs_provider, g_threads,
           g_seconds, xs_addr);
    static const config_t configs[] = {
        {"4K fetch, no read-ahead", 4096, 64u << 10, XM_MAP_NO_READAHEAD, false},
        {"16K fetch, shared budget", 16384, 128u << 10, 0, true},
        {"64K fetch, read-ahead", 65536, 256u << 10, 0, false},
    };
    uint64_t t0 = xs_now_ns();
    for (size_t i = 0; i < sizeof(configs) / sizeof(configs[0]); i++) {
        if (g_only < 0 || (size_t)g_only == i) run_config(&configs[i], (int)i);
    }
    xs_phase("appliance shutdown");
    int code = xs_appliance_stop();
    if (code != 0) {
        xs_fail("xmemd exited with %d on SIGTERM (a sanitizer report or a leak in the appliance?)", code);
    }
    xs_remove_dir();
    printf("map_stress: PASS (%s, %.1f s)\n", xs_provider, (double)(xs_now_ns() - t0) / 1e9);
    return 0;
}
