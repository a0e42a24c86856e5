/* Reed-Solomon coding of stripes on ISA-L (see ec.h). */
#include <string.h>

#include <isa-l/erasure_code.h>

#include "common.h"
#include "ec.h"

#define FAIL(reason)                                                                         \
    do {                                                                                     \
        if (why_p != NULL) *why_p = (reason);                                                \
        return XM_ERR_INVALID;                                                               \
    } while (0)

xm_status_t xm__ec_init(xm__ec_t *ec, uint32_t k, uint32_t m, const char **why_p)
{
    if (k == 0 || k > XM_EC_K_MAX || m == 0 || m > XM_EC_M_MAX || k + m > XM_EC_N_MAX)
        FAIL("ec needs 1..16 data and 1..4 parity pieces, 20 at most");
    memset(ec, 0, sizeof(*ec));
    ec->k = k;
    ec->m = m;
    gf_gen_cauchy1_matrix(ec->matrix, (int)(k + m), (int)k);
    ec_init_tables((int)k, (int)m, &ec->matrix[k * k], ec->tables);
    return XM_OK;
}

static bool len_ok(size_t len)
{
    return len > 0 && len <= XM_EC_LEN_MAX;
}

static bool ptrs_ok(uint8_t *const *p, uint32_t n)
{
    if (p == NULL) return false;
    for (uint32_t i = 0; i < n; i++) {
        if (p[i] == NULL) return false;
    }
    return true;
}

xm_status_t xm__ec_encode(const xm__ec_t *ec, size_t len, uint8_t *const *data,
                          uint8_t *const *parity, const char **why_p)
{
    if (ec == NULL || ec->k == 0) FAIL("ec code not initialised");
    if (!len_ok(len)) FAIL("ec piece length must be 1 byte to 1 GiB");
    if (!ptrs_ok(data, ec->k) || !ptrs_ok(parity, ec->m)) FAIL("ec buffer missing");
    ec_encode_data((int)len, (int)ec->k, (int)ec->m, (uint8_t *)ec->tables, (uint8_t **)data,
                   (uint8_t **)parity);
    return XM_OK;
}

xm_status_t xm__ec_update(const xm__ec_t *ec, size_t len, uint32_t j, const uint8_t *delta,
                          uint8_t *const *parity, const char **why_p)
{
    if (ec == NULL || ec->k == 0) FAIL("ec code not initialised");
    if (!len_ok(len)) FAIL("ec piece length must be 1 byte to 1 GiB");
    if (j >= ec->k) FAIL("ec update of a piece that is not data");
    if (delta == NULL || !ptrs_ok(parity, ec->m)) FAIL("ec buffer missing");
    ec_encode_data_update((int)len, (int)ec->k, (int)ec->m, (int)j, (uint8_t *)ec->tables,
                          (uint8_t *)delta, (uint8_t **)parity);
    return XM_OK;
}

void xm__ec_xor(uint8_t *dst, const uint8_t *a, const uint8_t *b, size_t len)
{
    size_t i = 0;
    /* word at a time; the compiler vectorises this loop */
    for (; i + 8 <= len; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        x ^= y;
        memcpy(dst + i, &x, 8);
    }
    for (; i < len; i++) dst[i] = a[i] ^ b[i];
}

xm_status_t xm__ec_decoder_init(xm__ec_decoder_t *d, const xm__ec_t *ec, const uint32_t *have,
                                uint32_t nwant, const uint32_t *want, const char **why_p)
{
    if (ec == NULL || ec->k == 0) FAIL("ec code not initialised");
    uint32_t k = ec->k, n = ec->k + ec->m;
    if (have == NULL || want == NULL) FAIL("ec decode without pieces");
    if (nwant == 0 || nwant > n) FAIL("ec decode wants 1..k+m pieces");
    bool seen[XM_EC_N_MAX] = {false};
    for (uint32_t i = 0; i < k; i++) {
        if (have[i] >= n) FAIL("ec decode from a piece out of range");
        if (seen[have[i]]) FAIL("ec decode needs k distinct pieces");
        seen[have[i]] = true;
    }
    bool wanted[XM_EC_N_MAX] = {false};
    for (uint32_t i = 0; i < nwant; i++) {
        if (want[i] >= n) FAIL("ec decode of a piece out of range");
        if (wanted[want[i]]) FAIL("ec decode wants a piece twice");
        wanted[want[i]] = true;
    }
    /* B: the generator's rows of the pieces we have; B * data = have, so data = B^-1 * have */
    uint8_t b[XM_EC_K_MAX * XM_EC_K_MAX], inv[XM_EC_K_MAX * XM_EC_K_MAX];
    for (uint32_t i = 0; i < k; i++) memcpy(&b[i * k], &ec->matrix[have[i] * k], k);
    if (gf_invert_matrix(b, inv, (int)k) != 0) FAIL("ec pieces do not determine the stripe");
    /* row of piece w in terms of the have pieces: G[w] * B^-1 */
    uint8_t rows[XM_EC_N_MAX * XM_EC_K_MAX];
    for (uint32_t i = 0; i < nwant; i++) {
        const uint8_t *g = &ec->matrix[want[i] * k];
        for (uint32_t j = 0; j < k; j++) {
            uint8_t s = 0;
            for (uint32_t t = 0; t < k; t++) s ^= gf_mul(g[t], inv[t * k + j]);
            rows[i * k + j] = s;
        }
    }
    memset(d, 0, sizeof(*d));
    d->k = k;
    d->nwant = nwant;
    memcpy(d->have, have, k * sizeof(*have));
    memcpy(d->want, want, nwant * sizeof(*want));
    ec_init_tables((int)k, (int)nwant, rows, d->tables);
    return XM_OK;
}

xm_status_t xm__ec_decoder_run(const xm__ec_decoder_t *d, size_t len, uint8_t *const *src,
                               uint8_t *const *out, const char **why_p)
{
    if (d == NULL || d->k == 0) FAIL("ec decoder not prepared");
    if (!len_ok(len)) FAIL("ec piece length must be 1 byte to 1 GiB");
    if (!ptrs_ok(src, d->k) || !ptrs_ok(out, d->nwant)) FAIL("ec buffer missing");
    ec_encode_data((int)len, (int)d->k, (int)d->nwant, (uint8_t *)d->tables, (uint8_t **)src,
                   (uint8_t **)out);
    return XM_OK;
}

xm_status_t xm__ec_decode(const xm__ec_t *ec, size_t len, const uint32_t *have,
                          uint8_t *const *src, uint32_t nwant, const uint32_t *want,
                          uint8_t *const *out, const char **why_p)
{
    xm__ec_decoder_t d;
    xm_status_t status = xm__ec_decoder_init(&d, ec, have, nwant, want, why_p);
    if (status != XM_OK) return status;
    return xm__ec_decoder_run(&d, len, src, out, why_p);
}
