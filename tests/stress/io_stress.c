/* Stress test of one context's data path shared by many threads (issue 11):
 * the public I/O calls from N threads at once, while the mapping engine
 * serves faults of a mapping on the same context.
 *
 *   io_stress [--provider tcp|local] [--seconds S] [--threads N] [--timeout S]
 *
 * A plain C program (Criterion cannot start under ThreadSanitizer here), run
 * by CTest under ASan and, with the label "stress", under TSan.
 *
 * What is checked:
 *  - every thread owns a slice of a region and writes it with xm_write and
 *    with batches of xm_post/xm_wait (its own ops, reaped by whichever thread
 *    polls), reading back every byte (a lost, torn or misrouted write or read
 *    fails);
 *  - all threads fetch-add one shared counter and compare-and-swap-increment
 *    another: both counters are exact at the end, and the fetch-add old values
 *    are all distinct (their sum is fixed);
 *  - one thread reads a mapping of a second region of the same context (its
 *    faults are served by the engine's handler threads through the same data
 *    path, with a cache smaller than the mapping) and checks every word.
 * Exit status: 0 passed, 1 a check failed, 2 setup error, 3 watchdog, 77 no
 * userfaultfd (then the mapping part is skipped, not the rest: see below).
 */
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stress.h"

#define MAXT 32
#define SLICE (1u << 20)
#define BATCH 16

static double g_seconds = 2;
static int g_threads = 8;
static xm_ctx_h g_ctx;
static xm_region_h g_data, g_counter;
static atomic_bool g_stop;
static uint64_t g_adds[MAXT], g_old_sum[MAXT], g_cas[MAXT], g_bytes[MAXT];

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void fill(uint8_t *b, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(rnd(&seed) >> 24);
}

static void *io_thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(t + 1), base = (uint64_t)t * SLICE;
    uint8_t *w = malloc(SLICE), *r = malloc(SLICE);
    xm_op_t *ops = calloc(BATCH, sizeof(*ops));
    xm_op_t *ptr[BATCH];
    if (w == NULL || r == NULL || ops == NULL) xs_setup_error("malloc");
    uint64_t round = 0;
    while (!atomic_load(&g_stop)) {
        round++;
        /* one write and read of a random piece of the slice */
        size_t len = 1 + rnd(&seed) % (SLICE / 4);
        uint64_t off = rnd(&seed) % (SLICE - len + 1);
        fill(w, len, seed ^ round);
        CHECK_OK(xm_write(g_data, base + off, w, len));
        memset(r, 0xa5, len);
        CHECK_OK(xm_read(g_data, base + off, r, len));
        if (memcmp(w, r, len) != 0) xs_fail("thread %d: %zu bytes at %llu read back differ", t, len, (unsigned long long)(base + off));
        g_bytes[t] += 2 * len;
        /* a batch: BATCH writes of pieces, waited in reverse, then BATCH reads */
        size_t piece = SLICE / BATCH;
        fill(w, SLICE, seed + round);
        for (int i = 0; i < BATCH; i++) {
            ops[i] = (xm_op_t){.opcode = XM_OP_WRITE, .region = g_data, .offset = base + (uint64_t)i * piece,
                               .buf = w + (size_t)i * piece, .length = piece};
            CHECK_OK(xm_post(g_ctx, &ops[i]));
            ptr[BATCH - 1 - i] = &ops[i];
        }
        CHECK_OK(xm_wait(g_ctx, ptr, BATCH));
        memset(r, 0, SLICE);
        for (int i = 0; i < BATCH; i++) {
            ops[i] = (xm_op_t){.opcode = XM_OP_READ, .region = g_data, .offset = base + (uint64_t)i * piece,
                               .buf = r + (size_t)i * piece, .length = piece};
            ptr[i] = &ops[i];
        }
        CHECK_OK(xm_submit(g_ctx, ops, BATCH));
        if (memcmp(w, r, SLICE) != 0) xs_fail("thread %d: a batch read back differs", t);
        g_bytes[t] += 2 * SLICE;
        /* atomics on the shared words */
        for (int i = 0; i < 16; i++) {
            uint64_t old;
            CHECK_OK(xm_fetch_add(g_counter, 0, 1, &old));
            g_adds[t]++;
            g_old_sum[t] += old;
        }
        for (int i = 0; i < 4; i++) {
            uint64_t cur = 0, old;
            /* an 8-byte read of a word others change with atomics: where it is mapped into
             * this process (the local transport) it is an atomic load, so no data race (the
             * tsan preset runs this; a plain memcpy there was reported) */
            CHECK_OK(xm_read(g_counter, 8, &cur, 8));
            for (;;) {
                CHECK_OK(xm_compare_swap(g_counter, 8, cur, cur + 1, &old));
                if (old == cur) break;
                cur = old;
            }
            g_cas[t]++;
        }
    }
    free(w);
    free(r);
    free(ops);
    return NULL;
}

/* Reads the mapping over and over: word i holds i ^ 0x5555. */
typedef struct mapper {
    const uint64_t *p;
    uint64_t words;
    uint64_t scans;
} mapper_t;

static void *map_thread(void *arg)
{
    mapper_t *m = arg;
    while (!atomic_load(&g_stop)) {
        for (uint64_t i = 0; i < m->words; i += 64) {
            if (m->p[i] != (i ^ 0x5555)) xs_fail("mapping: word %llu is %llx", (unsigned long long)i, (unsigned long long)m->p[i]);
        }
        m->scans++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"provider", required_argument, NULL, 'p'},
                                         {"seconds", required_argument, NULL, 's'},
                                         {"threads", required_argument, NULL, 't'},
                                         {"timeout", required_argument, NULL, 'w'},
                                         {NULL, 0, NULL, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "p:s:t:w:", opts, NULL)) != -1) {
        switch (o) {
        case 'p': xs_provider = optarg; break;
        case 's': g_seconds = atof(optarg); break;
        case 't': g_threads = atoi(optarg); break;
        case 'w': xs_timeout = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s [--provider P] [--seconds S] [--threads N] [--timeout S]\n", argv[0]);
            return EXIT_SETUP;
        }
    }
    if (g_threads < 1 || g_threads > MAXT || g_seconds <= 0 || xs_timeout <= 0) {
        fprintf(stderr, "io_stress: --threads 1..%d, --seconds > 0, --timeout > 0\n", MAXT);
        return EXIT_SETUP;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    xs_watchdog_start();
    xs_appliance_start("256M");
    g_ctx = xs_connect();
    xs_phase("setup");
    CHECK_OK(xm_region_create(g_ctx, (uint64_t)g_threads * SLICE, "data", &g_data));
    CHECK_OK(xm_region_create(g_ctx, 4096, "counter", &g_counter));
    /* the mapped region: 8 MiB, word i = i ^ 0x5555, mapped with a 1 MiB cache */
    const uint64_t msize = 8u << 20;
    xm_region_h mr;
    CHECK_OK(xm_region_create(g_ctx, msize, "mapped", &mr));
    uint64_t *img = malloc(msize);
    for (uint64_t i = 0; i < msize / 8; i++) img[i] = i ^ 0x5555;
    CHECK_OK(xm_write(mr, 0, img, msize));
    free(img);
    mapper_t mp = {.words = msize / 8};
    void *maddr = NULL;
    xm_map_opts_t mo = XM_MAP_OPTS_INIT;
    mo.cache_bytes = 1u << 20;
    mo.fetch_size = 65536;
    bool mapped = xm_map(g_ctx, mr, 0, msize, &mo, &maddr) == XM_OK;
    if (!mapped) printf("io_stress: no mapping (%s): the I/O part runs alone\n", xm_last_error(g_ctx));
    mp.p = maddr;

    printf("io_stress: provider %s, %d I/O threads%s, %.1f s, appliance %s\n", xs_provider, g_threads,
           mapped ? " + a mapping reader" : "", g_seconds, xs_addr);
    xs_phase("%d threads on one context", g_threads);
    pthread_t th[MAXT + 1];
    for (int t = 0; t < g_threads; t++) pthread_create(&th[t], NULL, io_thread, (void *)(intptr_t)t);
    if (mapped) pthread_create(&th[g_threads], NULL, map_thread, &mp);
    uint64_t t0 = xs_now_ns();
    while ((double)(xs_now_ns() - t0) / 1e9 < g_seconds) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&g_stop, true);
    for (int t = 0; t < g_threads; t++) pthread_join(th[t], NULL);
    if (mapped) pthread_join(th[g_threads], NULL);

    xs_phase("counters");
    uint64_t adds = 0, olds = 0, cas = 0, bytes = 0;
    for (int t = 0; t < g_threads; t++) {
        adds += g_adds[t];
        olds += g_old_sum[t];
        cas += g_cas[t];
        bytes += g_bytes[t];
    }
    uint64_t v[2];
    CHECK_OK(xm_read(g_counter, 0, v, 16));
    if (v[0] != adds) xs_fail("fetch-add counter %llu, expected %llu", (unsigned long long)v[0], (unsigned long long)adds);
    if (olds != adds * (adds - 1) / 2) xs_fail("fetch-add returned duplicate old values");
    if (v[1] != cas) xs_fail("compare-and-swap counter %llu, expected %llu", (unsigned long long)v[1], (unsigned long long)cas);
    if (mapped) CHECK_OK(xm_unmap(maddr));
    xm_region_close(mr);
    xm_region_close(g_data);
    xm_region_close(g_counter);
    xm_disconnect(g_ctx);
    xs_phase("appliance shutdown");
    int code = xs_appliance_stop();
    if (code != 0) xs_fail("xmemd exited with %d on SIGTERM", code);
    xs_remove_dir();
    printf("io_stress: PASS (%llu fetch-adds, %llu cswaps, %.0f MB moved, %llu mapping scans)\n",
           (unsigned long long)adds, (unsigned long long)cas, (double)bytes / 1e6, (unsigned long long)mp.scans);
    return 0;
}
