/* Erasure coding speed (src/common/ec.c on ISA-L) against memcpy of the same bytes, same run.
 *
 *   bench/ec [--seconds S]
 *
 * For ec 4+2 and 8+2 and stripes of 4 KiB, 64 KiB and 1 MiB of data (pieces of stripe / k):
 * encode (k data pieces -> m parity) and decode (rebuild m lost data pieces from k
 * survivors) in GB/s of stripe data, cache-hot (one stripe over and over) and streaming
 * (stripes cycling through 512 MiB), each with memcpy of the stripe's data bytes in the
 * same conditions as the reference. Then the parity update of a 4 KiB partial-stripe
 * write of a 4+2 stripe: by delta (old XOR new, then ec_encode_data_update) against a
 * re-encode of the 4 KiB column of all k pieces. One thread; LIMITS.md has ISA-L's figures
 * on this machine kind. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/common/ec.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double seconds = 0.3;
static volatile uint8_t sink;

#define ARENA (512ull << 20)

/* What one measurement does to stripe i of `stripes` (all pieces inside the arena). */
typedef enum { OP_ENCODE, OP_DECODE, OP_MEMCPY } op_t;

typedef struct {
    const xm__ec_t *ec;
    xm__ec_decoder_t dec;
    size_t piece;
    uint8_t *arena;
    uint8_t *dst;    /* memcpy target, the size of the arena */
} ctx_t;

static void run_one(ctx_t *c, op_t op, size_t i)
{
    uint32_t k = c->ec->k, m = c->ec->m;
    size_t stride = (size_t)(k + m) * c->piece;
    uint8_t *base = c->arena + i * stride;
    uint8_t *p[XM_EC_N_MAX];
    for (uint32_t j = 0; j < k + m; j++) p[j] = base + j * c->piece;
    switch (op) {
    case OP_ENCODE:
        xm__ec_encode(c->ec, c->piece, p, p + k, NULL);
        break;
    case OP_DECODE: {
        /* survivors: data m..k-1 and the m parity pieces; rebuild data 0..m-1 into place */
        uint8_t *src[XM_EC_K_MAX];
        for (uint32_t j = 0; j < k; j++) src[j] = p[c->dec.have[j]];
        xm__ec_decoder_run(&c->dec, c->piece, src, p, NULL);
        break;
    }
    case OP_MEMCPY:
        memcpy(c->dst + i * stride, base, (size_t)k * c->piece);
        break;
    }
    sink = base[0];
}

/* GB/s of stripe data for op over `stripes` stripes (1: cache-hot). */
static double measure(ctx_t *c, op_t op, size_t stripes)
{
    size_t data = (size_t)c->ec->k * c->piece, n = 0;
    for (size_t i = 0; i < stripes && i < 64; i++) run_one(c, op, i); /* warm */
    double t0 = now(), t;
    do {
        for (int r = 0; r < 16; r++) run_one(c, op, n++ % stripes);
        t = now();
    } while (t - t0 < seconds);
    return (double)n * (double)data / (t - t0) / 1e9;
}

static void bench_code(uint32_t k, uint32_t m, uint8_t *arena, uint8_t *dst)
{
    xm__ec_t ec;
    if (xm__ec_init(&ec, k, m, NULL) != XM_OK) abort();
    static const size_t stripe_bytes[] = {4096, 65536, 1u << 20};
    for (size_t s = 0; s < 3; s++) {
        ctx_t c = {.ec = &ec, .piece = stripe_bytes[s] / k, .arena = arena, .dst = dst};
        uint32_t have[XM_EC_K_MAX], want[XM_EC_M_MAX];
        for (uint32_t j = 0; j < k; j++) have[j] = m + j; /* data m..k-1, then parity */
        for (uint32_t j = 0; j < m; j++) want[j] = j;
        if (xm__ec_decoder_init(&c.dec, &ec, have, m, want, NULL) != XM_OK) abort();
        size_t stream = ARENA / ((size_t)(k + m) * c.piece);
        double enc_hot = measure(&c, OP_ENCODE, 1), cpy_hot = measure(&c, OP_MEMCPY, 1);
        double dec_hot = measure(&c, OP_DECODE, 1);
        double enc_str = measure(&c, OP_ENCODE, stream), cpy_str = measure(&c, OP_MEMCPY, stream);
        double dec_str = measure(&c, OP_DECODE, stream);
        printf("%2u+%u  %7zu  %7zu | %6.1f %6.1f %6.1f  %4.2fx %4.2fx | %6.1f %6.1f %6.1f  %4.2fx %4.2fx\n",
               k, m, stripe_bytes[s], c.piece, enc_hot, dec_hot, cpy_hot, enc_hot / cpy_hot,
               dec_hot / cpy_hot, enc_str, dec_str, cpy_str, enc_str / cpy_str, dec_str / cpy_str);
    }
}

/* ns per parity update of a 4 KiB write into one data piece of a 4+2 stripe. */
static void bench_update(void)
{
    xm__ec_t ec;
    if (xm__ec_init(&ec, 4, 2, NULL) != XM_OK) abort();
    enum { LEN = 4096, ROUNDS = 200000 };
    uint8_t *buf = aligned_alloc(64, 9 * LEN);
    for (size_t i = 0; i < 9 * LEN; i++) buf[i] = (uint8_t)(i * 131 + 7);
    uint8_t *data[4] = {buf, buf + LEN, buf + 2 * LEN, buf + 3 * LEN};
    uint8_t *par[2] = {buf + 4 * LEN, buf + 5 * LEN};
    uint8_t *neu = buf + 6 * LEN, *delta = buf + 7 * LEN;
    double best_delta = 1e9, best_two = 1e9, best_full = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        /* delta: delta = old ^ new, parity ^= coef * delta; then the new data is in place */
        double t0 = now();
        for (int r = 0; r < ROUNDS; r++) {
            neu[r % LEN] ^= 1;
            xm__ec_xor(delta, data[1], neu, LEN);
            xm__ec_update(&ec, LEN, 1, delta, par, NULL);
            memcpy(data[1], neu, LEN);
        }
        double t1 = now();
        /* the delta applied as two updates (old out, new in): no scratch buffer */
        for (int r = 0; r < ROUNDS; r++) {
            neu[r % LEN] ^= 1;
            xm__ec_update(&ec, LEN, 1, data[1], par, NULL);
            xm__ec_update(&ec, LEN, 1, neu, par, NULL);
            memcpy(data[1], neu, LEN);
        }
        double t2 = now();
        /* re-encode the 4 KiB column from all four data pieces (the other three read) */
        for (int r = 0; r < ROUNDS; r++) {
            neu[r % LEN] ^= 1;
            memcpy(data[1], neu, LEN);
            xm__ec_encode(&ec, LEN, data, par, NULL);
        }
        double t3 = now();
        best_delta = (t1 - t0) / ROUNDS * 1e9 < best_delta ? (t1 - t0) / ROUNDS * 1e9 : best_delta;
        best_two = (t2 - t1) / ROUNDS * 1e9 < best_two ? (t2 - t1) / ROUNDS * 1e9 : best_two;
        best_full = (t3 - t2) / ROUNDS * 1e9 < best_full ? (t3 - t2) / ROUNDS * 1e9 : best_full;
    }
    printf("\nparity update, 4 KiB write into a 4+2 stripe (best of 5 x %d, ns per write, cache-hot)\n",
           ROUNDS);
    printf("  delta (xor + update)          %7.0f ns\n", best_delta);
    printf("  two updates (old out, new in) %7.0f ns  %4.2fx of delta\n", best_two, best_two / best_delta);
    printf("  re-encode the 4 KiB column    %7.0f ns  %4.2fx of delta\n", best_full, best_full / best_delta);
    printf("  (the delta reads 1 old piece and m parity pieces from appliances; the re-encode "
           "reads k-1 other data pieces)\n");
    free(buf);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--seconds") == 0) seconds = atof(argv[2]);
    uint8_t *arena = aligned_alloc(4096, ARENA), *dst = aligned_alloc(4096, ARENA);
    if (arena == NULL || dst == NULL) return 1;
    for (size_t i = 0; i < ARENA; i += 8) {
        uint64_t v = i * 0x9e3779b97f4a7c15ull;
        memcpy(arena + i, &v, 8);
    }
    memset(dst, 0, ARENA);
    printf("ec speed, GB/s of stripe data, one thread; memcpy copies the stripe's data bytes\n");
    printf("code  stripe    piece  |   cache-hot: encode decode memcpy  enc/cpy dec/cpy |   "
           "streaming 512 MiB: encode decode memcpy  enc/cpy dec/cpy\n");
    bench_code(4, 2, arena, dst);
    bench_code(8, 2, arena, dst);
    bench_update();
    free(arena);
    free(dst);
    return 0;
}
