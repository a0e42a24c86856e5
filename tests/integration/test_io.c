/* Data path against a real xmemd: round trips, atomics, batches, bounds. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static xt_appliance_t app;

static void teardown(void)
{
    cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
    xt_cleanup(&app);
}

XT_TEST_PROVIDERS(io, random_round_trips, .fini = teardown, .timeout = 120)
{
    xt_start(&app, &(xt_opts_t){.provider = provider, .pool = "256M"});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    /* an odd size, so the region's last byte is not an extent boundary */
    const uint64_t size = (8u << 20) + 12345;
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, size, "data", &r), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_size(r), size);

    /* fresh memory reads as zeros */
    uint8_t *z = malloc(65536);
    cr_assert_eq(xm_read(r, size - 65536, z, 65536), XM_OK);
    for (size_t i = 0; i < 65536; i++) cr_assert_eq(z[i], 0, "byte %zu of fresh region not zero", i);
    free(z);

    static const size_t lens[] = {1, 7, 8, 63, 4096, 4097, 65536, 100000, 1u << 20, 3u << 20};
    uint8_t *wbuf = malloc(4u << 20), *rbuf = malloc(4u << 20);
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        size_t len = lens[k];
        uint64_t offs[] = {0, 3, size / 2 + 1, size - len}; /* start, odd, middle, flush with the end */
        for (size_t j = 0; j < 4; j++) {
            uint64_t off = offs[j];
            xt_fill(wbuf, len, k * 31 + j);
            cr_assert_eq(xm_write(r, off, wbuf, len), XM_OK, "write %zu@%llu: %s", len,
                         (unsigned long long)off, xm_last_error(ctx));
            memset(rbuf, 0xee, len);
            cr_assert_eq(xm_read(r, off, rbuf, len), XM_OK, "read %zu@%llu: %s", len,
                         (unsigned long long)off, xm_last_error(ctx));
            cr_assert(memcmp(wbuf, rbuf, len) == 0, "data differs: %zu bytes at %llu", len,
                      (unsigned long long)off);
        }
    }
    /* a second handle, opened by name, sees the same bytes */
    xm_region_h r2;
    cr_assert_eq(xm_region_open(ctx, 0, "data", XM_ACCESS_READ, &r2), XM_OK);
    xt_fill(wbuf, 4096, 99);
    cr_assert_eq(xm_write(r, 4096, wbuf, 4096), XM_OK);
    cr_assert_eq(xm_read(r2, 4096, rbuf, 4096), XM_OK);
    cr_assert(memcmp(wbuf, rbuf, 4096) == 0);
    xm_region_close(r2);
    free(wbuf);
    free(rbuf);
    xm_region_close(r);
    xm_disconnect(ctx);
}

XT_TEST_PROVIDERS(io, bounds_checked_before_sending, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.provider = provider});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, NULL, &r), XM_OK);
    uint8_t buf[64];
    uint64_t old;
    cr_assert_eq(xm_read(r, 0, buf, 0), XM_ERR_RANGE, "zero length");
    cr_assert_eq(xm_read(r, (1u << 20) - 10, buf, 11), XM_ERR_RANGE, "one byte past the end");
    cr_assert_eq(xm_write(r, 1u << 20, buf, 1), XM_ERR_RANGE, "at the end");
    cr_assert_eq(xm_read(r, UINT64_MAX - 2, buf, 8), XM_ERR_RANGE, "offset overflow");
    cr_assert_eq(xm_fetch_add(r, 3, 1, &old), XM_ERR_INVALID, "unaligned atomic");
    cr_assert_eq(xm_fetch_add(r, 1u << 20, 1, &old), XM_ERR_RANGE, "atomic past the end");
    cr_assert_eq(xm_read(NULL, 0, buf, 8), XM_ERR_INVALID);
    /* the connection still works after refusals made locally */
    cr_assert_eq(xm_write(r, (1u << 20) - 8, "12345678", 8), XM_OK);
    cr_assert_eq(xm_read(r, (1u << 20) - 8, buf, 8), XM_OK);
    cr_assert(memcmp(buf, "12345678", 8) == 0);
    xm_region_h bad;
    cr_assert_eq(xm_region_open(ctx, 999, NULL, XM_ACCESS_READ, &bad), XM_ERR_NOT_FOUND);
    cr_assert_eq(xm_region_open(ctx, 0, "nope", XM_ACCESS_READ, &bad), XM_ERR_NOT_FOUND);
    cr_assert_eq(xm_region_create(ctx, 0, NULL, &bad), XM_ERR_INVALID);
    cr_assert_eq(xm_region_create(ctx, 10, "bad name", &bad), XM_ERR_INVALID);
    xm_region_close(r);
    xm_disconnect(ctx);
}

typedef struct adder {
    const xt_appliance_t *app;
    uint64_t id;
    int n;
    uint64_t sum_of_olds;
} adder_t;

static void *add_loop(void *arg)
{
    adder_t *a = arg;
    xm_ctx_h ctx = xt_connect(a->app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_open(ctx, a->id, NULL, XM_ACCESS_READ_WRITE, &r), XM_OK);
    for (int i = 0; i < a->n; i++) {
        uint64_t old;
        cr_assert_eq(xm_fetch_add(r, 64, 1, &old), XM_OK, "%s", xm_last_error(ctx));
        a->sum_of_olds += old;
    }
    xm_region_close(r);
    xm_disconnect(ctx);
    return NULL;
}

XT_TEST_PROVIDERS(io, two_clients_fetch_add_sum_exactly, .fini = teardown, .timeout = 120)
{
    xt_start(&app, &(xt_opts_t){.provider = provider});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 4096, "counter", &r), XM_OK);
    const int n = 2000;
    adder_t a[2] = {{&app, xm_region_id(r), n, 0}, {&app, xm_region_id(r), n, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, add_loop, &a[i]);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    uint64_t v;
    cr_assert_eq(xm_read(r, 64, &v, 8), XM_OK);
    cr_assert_eq(v, (uint64_t)2 * n, "counter is %llu, expected %d", (unsigned long long)v, 2 * n);
    /* every old value 0..2n-1 was seen exactly once: their sum is fixed */
    uint64_t total = (uint64_t)(2 * n) * (2 * n - 1) / 2;
    cr_assert_eq(a[0].sum_of_olds + a[1].sum_of_olds, total, "fetch-add returned duplicate values");
    /* compare-and-swap: only a matching expectation swaps */
    uint64_t old;
    cr_assert_eq(xm_compare_swap(r, 64, 1, 77, &old), XM_OK);
    cr_assert_eq(old, (uint64_t)2 * n);
    cr_assert_eq(xm_read(r, 64, &v, 8), XM_OK);
    cr_assert_eq(v, (uint64_t)2 * n, "cswap with the wrong expectation changed the word");
    cr_assert_eq(xm_compare_swap(r, 64, 2 * n, 77, &old), XM_OK);
    cr_assert_eq(xm_read(r, 64, &v, 8), XM_OK);
    cr_assert_eq(v, 77);
    xm_region_close(r);
    xm_disconnect(ctx);
}

XT_TEST_PROVIDERS(io, batched_async_io, .fini = teardown, .timeout = 120)
{
    xt_start(&app, &(xt_opts_t){.provider = provider});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 16u << 20, NULL, &r), XM_OK);
    enum { N = 300, LEN = 16384 };
    uint8_t *src = malloc((size_t)N * LEN), *dst = calloc(N, LEN);
    xt_fill(src, (size_t)N * LEN, 5);
    xm_op_t *ops = calloc(N, sizeof(*ops));
    for (int i = 0; i < N; i++) {
        ops[i] = (xm_op_t){.opcode = XM_OP_WRITE, .region = r, .offset = (uint64_t)i * LEN,
                           .buf = src + (size_t)i * LEN, .length = LEN};
    }
    cr_assert_eq(xm_submit(ctx, ops, N), XM_OK, "%s", xm_last_error(ctx));
    for (int i = 0; i < N; i++) {
        cr_assert_eq(ops[i].status, XM_OK);
        ops[i] = (xm_op_t){.opcode = XM_OP_READ, .region = r, .offset = (uint64_t)i * LEN,
                           .buf = dst + (size_t)i * LEN, .length = LEN};
    }
    /* post, then wait for them in reverse order */
    for (int i = 0; i < N; i++) cr_assert_eq(xm_post(ctx, &ops[i]), XM_OK);
    xm_op_t **ptrs = calloc(N, sizeof(*ptrs));
    for (int i = 0; i < N; i++) ptrs[i] = &ops[N - 1 - i];
    cr_assert_eq(xm_wait(ctx, ptrs, N), XM_OK);
    cr_assert(memcmp(src, dst, (size_t)N * LEN) == 0, "batched reads differ from batched writes");
    /* atomics in a batch */
    xm_op_t adds[8];
    for (int i = 0; i < 8; i++) {
        adds[i] = (xm_op_t){.opcode = XM_OP_FETCH_ADD, .region = r, .offset = 0, .operand = 1};
    }
    uint64_t zero = 0;
    cr_assert_eq(xm_write(r, 0, &zero, 8), XM_OK);
    cr_assert_eq(xm_submit(ctx, adds, 8), XM_OK);
    uint64_t v;
    cr_assert_eq(xm_read(r, 0, &v, 8), XM_OK);
    cr_assert_eq(v, 8);
    free(ptrs);
    free(ops);
    free(src);
    free(dst);
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* One context, many threads (issue 11): 8 threads write and read their own
 * slices (every byte checked), post and wait for batches of their own, and
 * fetch-add / compare-and-swap shared counters, all on one context at once. */
enum { SHARE_THREADS = 8, SHARE_SLICE = 256 * 1024, SHARE_ROUNDS = 40, SHARE_ADDS = 200 };

typedef struct sharer {
    xm_ctx_h ctx;
    xm_region_h r;
    int t;
    uint64_t sum_of_olds;
    char why[256];
} sharer_t;

static void *share_loop(void *arg)
{
    sharer_t *s = arg;
    uint64_t base = 4096 + (uint64_t)s->t * SHARE_SLICE;
    uint8_t *w = malloc(SHARE_SLICE), *rd = malloc(SHARE_SLICE);
    xm_op_t ops[8];
    for (int round = 0; round < SHARE_ROUNDS && s->why[0] == '\0'; round++) {
        size_t len = 1 + (size_t)((round * 7919 + s->t * 104729) % SHARE_SLICE);
        uint64_t off = base + (SHARE_SLICE - len) / 2;
        xt_fill(w, len, (uint64_t)(s->t * 1000 + round));
        memset(rd, 0xee, len);
        if (xm_write(s->r, off, w, len) != XM_OK || xm_read(s->r, off, rd, len) != XM_OK) {
            snprintf(s->why, sizeof(s->why), "thread %d: I/O failed: %s", s->t, xm_last_error(s->ctx));
        } else if (memcmp(w, rd, len) != 0) {
            snprintf(s->why, sizeof(s->why), "thread %d: %zu bytes at %llu read back differ", s->t, len,
                     (unsigned long long)off);
        }
        /* a batch of its own ops, waited for in reverse (anyone's poll completes them) */
        xt_fill(w, SHARE_SLICE, (uint64_t)(s->t * 7 + round));
        size_t piece = SHARE_SLICE / 8;
        xm_op_t *ptr[8];
        for (int i = 0; i < 8; i++) {
            ops[i] = (xm_op_t){.opcode = XM_OP_WRITE, .region = s->r, .offset = base + (uint64_t)i * piece,
                               .buf = w + (size_t)i * piece, .length = piece};
            ptr[7 - i] = &ops[i];
            if (xm_post(s->ctx, &ops[i]) != XM_OK) snprintf(s->why, sizeof(s->why), "post: %s", xm_last_error(s->ctx));
        }
        if (xm_wait(s->ctx, ptr, 8) != XM_OK) snprintf(s->why, sizeof(s->why), "wait: %s", xm_last_error(s->ctx));
        memset(rd, 0, SHARE_SLICE);
        if (xm_read(s->r, base, rd, SHARE_SLICE) != XM_OK || memcmp(w, rd, SHARE_SLICE) != 0) {
            snprintf(s->why, sizeof(s->why), "thread %d: a batch read back differs", s->t);
        }
        for (int i = 0; i < SHARE_ADDS / SHARE_ROUNDS; i++) {
            uint64_t old;
            if (xm_fetch_add(s->r, 0, 1, &old) != XM_OK) {
                snprintf(s->why, sizeof(s->why), "fetch-add: %s", xm_last_error(s->ctx));
                break;
            }
            s->sum_of_olds += old;
            uint64_t cur = 0;
            for (int tries = 0; tries < 10000; tries++) { /* a compare-and-swap increment */
                if (xm_compare_swap(s->r, 8, cur, cur + 1, &old) != XM_OK) break;
                if (old == cur) break;
                cur = old;
            }
        }
    }
    free(w);
    free(rd);
    return NULL;
}

XT_TEST_PROVIDERS(io, threads_share_one_context, .fini = teardown, .timeout = 180)
{
    xt_start(&app, &(xt_opts_t){.provider = provider, .pool = "64M"});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 4096 + (uint64_t)SHARE_THREADS * SHARE_SLICE, NULL, &r), XM_OK);
    sharer_t s[SHARE_THREADS];
    pthread_t t[SHARE_THREADS];
    for (int i = 0; i < SHARE_THREADS; i++) {
        s[i] = (sharer_t){.ctx = ctx, .r = r, .t = i};
        pthread_create(&t[i], NULL, share_loop, &s[i]);
    }
    uint64_t olds = 0;
    for (int i = 0; i < SHARE_THREADS; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(s[i].why[0], '\0', "%s", s[i].why);
        olds += s[i].sum_of_olds;
    }
    const uint64_t n = (uint64_t)SHARE_THREADS * SHARE_ADDS;
    uint64_t v[2];
    cr_assert_eq(xm_read(r, 0, v, 16), XM_OK);
    cr_assert_eq(v[0], n, "fetch-add counter %llu, expected %llu", (unsigned long long)v[0], (unsigned long long)n);
    cr_assert_eq(olds, n * (n - 1) / 2, "fetch-add returned duplicate old values");
    cr_assert_eq(v[1], n, "compare-and-swap counter %llu, expected %llu", (unsigned long long)v[1], (unsigned long long)n);
    /* the error text is the calling thread's: another thread's failure does not show here */
    uint8_t b;
    cr_assert_eq(xm_read(r, 1u << 30, &b, 1), XM_ERR_RANGE);
    cr_assert(strstr(xm_last_error(ctx), "do not fit") != NULL, "%s", xm_last_error(ctx));
    xm_region_close(r);
    xm_disconnect(ctx);
}
