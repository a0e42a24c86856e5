/* Reed-Solomon coding on ISA-L: every pattern of up to m lost pieces decodes to the
 * original, a parity update equals a re-encode, bad arguments are refused. */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../../src/common/ec.h"

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void fill(uint8_t *p, size_t len, uint64_t *seed)
{
    for (size_t i = 0; i < len; i++) p[i] = (uint8_t)rnd(seed);
}

/* A stripe: n pieces of len bytes, data then parity, encoded. */
typedef struct {
    uint32_t k, m;
    size_t len;
    uint8_t *piece[XM_EC_N_MAX];
} stripe_t;

static void stripe_make(stripe_t *s, const xm__ec_t *ec, size_t len, uint64_t *seed)
{
    s->k = ec->k;
    s->m = ec->m;
    s->len = len;
    for (uint32_t i = 0; i < s->k + s->m; i++) {
        s->piece[i] = malloc(len);
        cr_assert(s->piece[i] != NULL);
        if (i < s->k) fill(s->piece[i], len, seed);
    }
    const char *why = "";
    cr_assert_eq(xm__ec_encode(ec, len, s->piece, s->piece + s->k, &why), XM_OK, "%s", why);
}

static void stripe_free(stripe_t *s)
{
    for (uint32_t i = 0; i < s->k + s->m; i++) free(s->piece[i]);
}

/* Lose the pieces in mask (at most m), rebuild them from the first k survivors. */
static void lose_and_rebuild(const xm__ec_t *ec, const stripe_t *s, uint32_t mask)
{
    uint32_t n = s->k + s->m, have[XM_EC_K_MAX], want[XM_EC_N_MAX], nh = 0, nw = 0;
    uint8_t *src[XM_EC_K_MAX], *out[XM_EC_N_MAX];
    for (uint32_t i = 0; i < n; i++) {
        if (mask & (1u << i)) {
            want[nw] = i;
            out[nw] = malloc(s->len);
            memset(out[nw], 0xa5, s->len);
            nw++;
        } else if (nh < s->k) {
            have[nh] = i;
            src[nh] = s->piece[i];
            nh++;
        }
    }
    cr_assert_eq(nh, s->k);
    const char *why = "";
    cr_assert_eq(xm__ec_decode(ec, s->len, have, src, nw, want, out, &why), XM_OK, "%s", why);
    for (uint32_t w = 0; w < nw; w++) {
        cr_assert(memcmp(out[w], s->piece[want[w]], s->len) == 0,
                  "ec %u+%u len %zu: piece %u rebuilt wrong (lost mask %#x)", s->k, s->m, s->len,
                  want[w], mask);
        free(out[w]);
    }
}

Test(ec, every_loss_of_up_to_m_pieces_decodes)
{
    static const struct { uint32_t k, m; } codes[] = {
        {1, 1}, {2, 1}, {4, 2}, {8, 2}, {6, 3}, {10, 4}, {16, 4}};
    static const size_t lens[] = {1, 31, 4096, 65536 + 17};
    uint64_t seed = 0x853c49e6748fea9bull;
    for (size_t c = 0; c < sizeof(codes) / sizeof(codes[0]); c++) {
        xm__ec_t ec;
        cr_assert_eq(xm__ec_init(&ec, codes[c].k, codes[c].m, NULL), XM_OK);
        uint32_t n = codes[c].k + codes[c].m;
        for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
            /* the wide codes have many patterns: shorter pieces keep the run short */
            size_t len = n > 12 && lens[li] > 4096 ? 4096 : lens[li];
            stripe_t s;
            stripe_make(&s, &ec, len, &seed);
            uint32_t patterns = 0;
            for (uint32_t mask = 1; mask < (1u << n); mask++) {
                if ((uint32_t)__builtin_popcount(mask) > codes[c].m) continue;
                lose_and_rebuild(&ec, &s, mask);
                patterns++;
            }
            cr_assert_gt(patterns, 0);
            stripe_free(&s);
        }
    }
}

Test(ec, decode_from_any_k_survivors_including_parity_only)
{
    /* 4+2: rebuild all four data pieces from {data 3, parity 0, parity 1, data 0} in an
     * unsorted order, and a piece that is both had and wanted comes back as it is */
    xm__ec_t ec;
    cr_assert_eq(xm__ec_init(&ec, 4, 2, NULL), XM_OK);
    uint64_t seed = 7;
    stripe_t s;
    stripe_make(&s, &ec, 8192, &seed);
    uint32_t have[4] = {3, 4, 5, 0}, want[4] = {0, 1, 2, 3};
    uint8_t *src[4] = {s.piece[3], s.piece[4], s.piece[5], s.piece[0]}, *out[4];
    for (int i = 0; i < 4; i++) out[i] = calloc(1, 8192);
    xm__ec_decoder_t d;
    cr_assert_eq(xm__ec_decoder_init(&d, &ec, have, 4, want, NULL), XM_OK);
    cr_assert_eq(xm__ec_decoder_run(&d, 8192, src, out, NULL), XM_OK);
    for (int i = 0; i < 4; i++) {
        cr_assert(memcmp(out[i], s.piece[i], 8192) == 0, "data piece %d", i);
        free(out[i]);
    }
    stripe_free(&s);
}

Test(ec, parity_update_equals_a_full_reencode)
{
    static const struct { uint32_t k, m; } codes[] = {{4, 2}, {8, 2}, {3, 4}};
    uint64_t seed = 0xdeadbeefcafef00dull;
    for (size_t c = 0; c < 3; c++) {
        xm__ec_t ec;
        cr_assert_eq(xm__ec_init(&ec, codes[c].k, codes[c].m, NULL), XM_OK);
        const size_t len = 65536;
        stripe_t s;
        stripe_make(&s, &ec, len, &seed);
        uint8_t *neu = malloc(len), *delta = malloc(len);
        for (int round = 0; round < 20; round++) {
            /* a partial write: some bytes of one data piece */
            uint32_t j = (uint32_t)(rnd(&seed) % s.k);
            size_t off = rnd(&seed) % len, n = 1 + rnd(&seed) % (len - off);
            fill(neu, n, &seed);
            uint8_t *par[XM_EC_M_MAX];
            for (uint32_t i = 0; i < s.m; i++) par[i] = s.piece[s.k + i] + off;
            xm__ec_xor(delta, s.piece[j] + off, neu, n);
            cr_assert_eq(xm__ec_update(&ec, n, j, delta, par, NULL), XM_OK);
            memcpy(s.piece[j] + off, neu, n);
            /* the updated parity is what encoding the new data gives */
            uint8_t *fresh[XM_EC_M_MAX];
            for (uint32_t i = 0; i < s.m; i++) fresh[i] = malloc(len);
            cr_assert_eq(xm__ec_encode(&ec, len, s.piece, fresh, NULL), XM_OK);
            for (uint32_t i = 0; i < s.m; i++) {
                cr_assert(memcmp(fresh[i], s.piece[s.k + i], len) == 0,
                          "ec %u+%u: parity %u after updating piece %u at %zu+%zu differs from a "
                          "re-encode", s.k, s.m, i, j, off, n);
                free(fresh[i]);
            }
        }
        /* and the stripe still decodes after the updates */
        lose_and_rebuild(&ec, &s, 0x3);
        free(neu);
        free(delta);
        stripe_free(&s);
    }
}

Test(ec, bad_arguments_refused)
{
    xm__ec_t ec;
    const char *why = NULL;
    cr_expect_eq(xm__ec_init(&ec, 0, 2, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__ec_init(&ec, 17, 2, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__ec_init(&ec, 4, 0, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__ec_init(&ec, 4, 5, &why), XM_ERR_INVALID);
    cr_expect(why != NULL && strstr(why, "parity") != NULL);
    cr_assert_eq(xm__ec_init(&ec, 4, 2, NULL), XM_OK);
    uint8_t buf[6][64];
    uint8_t *p[6] = {buf[0], buf[1], buf[2], buf[3], buf[4], buf[5]};
    cr_expect_eq(xm__ec_encode(&ec, 0, p, p + 4, &why), XM_ERR_INVALID);
    cr_expect(strstr(why, "length") != NULL);
    cr_expect_eq(xm__ec_encode(&ec, XM_EC_LEN_MAX + 1, p, p + 4, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__ec_encode(&ec, 64, NULL, p + 4, &why), XM_ERR_INVALID);
    uint8_t *holey[4] = {buf[0], NULL, buf[2], buf[3]};
    cr_expect_eq(xm__ec_encode(&ec, 64, holey, p + 4, &why), XM_ERR_INVALID);
    cr_expect(strstr(why, "buffer") != NULL);
    xm__ec_t zero = {0};
    cr_expect_eq(xm__ec_encode(&zero, 64, p, p + 4, &why), XM_ERR_INVALID);
    /* update: only data pieces */
    cr_expect_eq(xm__ec_update(&ec, 64, 4, buf[0], p + 4, &why), XM_ERR_INVALID);
    cr_expect(strstr(why, "not data") != NULL);
    cr_expect_eq(xm__ec_update(&ec, 64, 0, NULL, p + 4, &why), XM_ERR_INVALID);
    /* decode: k distinct pieces in range, wanted pieces distinct and in range */
    xm__ec_decoder_t d;
    uint32_t dup[4] = {0, 1, 1, 2}, out_of_range[4] = {0, 1, 2, 6}, ok[4] = {0, 1, 2, 4};
    uint32_t want[2] = {3, 5}, want_dup[2] = {3, 3}, want_bad[1] = {6};
    cr_expect_eq(xm__ec_decoder_init(&d, &ec, dup, 2, want, &why), XM_ERR_INVALID);
    cr_expect(strstr(why, "distinct") != NULL);
    cr_expect_eq(xm__ec_decoder_init(&d, &ec, out_of_range, 2, want, &why), XM_ERR_INVALID);
    cr_expect(strstr(why, "range") != NULL);
    cr_expect_eq(xm__ec_decoder_init(&d, &ec, ok, 2, want_dup, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__ec_decoder_init(&d, &ec, ok, 1, want_bad, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__ec_decoder_init(&d, &ec, ok, 0, want, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__ec_decoder_init(&d, &ec, ok, 7, want, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__ec_decoder_init(&d, &ec, NULL, 2, want, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__ec_decoder_init(&d, &ec, ok, 2, want, &why), XM_OK);
    cr_expect_eq(xm__ec_decoder_run(&d, 0, p, p + 4, &why), XM_ERR_INVALID);
    xm__ec_decoder_t none = {0};
    cr_expect_eq(xm__ec_decoder_run(&none, 64, p, p + 4, &why), XM_ERR_INVALID);
}
