/* ec: Reed-Solomon erasure coding of a stripe's pieces, on ISA-L. Pure computation, no I/O.
 *
 * A code ec(k, m) turns k data pieces of len bytes into m parity pieces of len bytes;
 * any k of the k + m pieces give back all of them. Pieces are numbered as in
 * src/common/layout.h: 0..k-1 data, k..k+m-1 parity. The generator is ISA-L's
 * Cauchy matrix (identity over a Cauchy block), whose every k x k submatrix is
 * invertible, so every choice of k survivors decodes.
 *
 * A code is immutable after xm__ec_init: many threads may use one at once. The
 * buffers are the caller's; nothing here allocates.
 */
#ifndef XM_EC_H
#define XM_EC_H

#include <stddef.h>
#include <stdint.h>

#include <xmem/status.h>

#include "layout.h"

#define XM_EC_K_MAX XM_LAYOUT_EC_K_MAX
#define XM_EC_M_MAX XM_LAYOUT_EC_M_MAX
#define XM_EC_N_MAX XM_LAYOUT_EC_N_MAX
/* Longest piece one call codes (ISA-L counts in int). */
#define XM_EC_LEN_MAX ((size_t)1 << 30)

typedef struct xm__ec {
    uint32_t k, m;
    uint8_t matrix[XM_EC_N_MAX * XM_EC_K_MAX];     /* (k + m) rows of k coefficients */
    uint8_t tables[32 * XM_EC_K_MAX * XM_EC_M_MAX]; /* ISA-L's expanded parity rows */
} xm__ec_t;

/* A prepared decode: which k pieces are read (have) and which are rebuilt (want). Built
 * once per pattern of losses by xm__ec_decoder_init, used for any number of stripes. */
typedef struct xm__ec_decoder {
    uint32_t k, nwant;
    uint32_t have[XM_EC_K_MAX];
    uint32_t want[XM_EC_N_MAX];
    uint8_t tables[32 * XM_EC_K_MAX * XM_EC_N_MAX];
} xm__ec_decoder_t;

/* Set up ec(k, m): k 1..16, m 1..4, k + m <= 20 (the layout's bounds). XM_ERR_INVALID
 * and a static reason in *why_p (may be NULL) otherwise. */
xm_status_t xm__ec_init(xm__ec_t *ec, uint32_t k, uint32_t m, const char **why_p);

/* parity[0..m-1] = the parity of data[0..k-1], len bytes each (1..XM_EC_LEN_MAX). */
xm_status_t xm__ec_encode(const xm__ec_t *ec, size_t len, uint8_t *const *data,
                          uint8_t *const *parity, const char **why_p);

/*
 * A partial-stripe write of data piece j: given delta = old XOR new of len bytes of
 * that piece (xm__ec_xor), add its contribution to the same bytes of every parity
 * piece: parity[i] ^= coefficient(i, j) * delta. The result equals a full re-encode
 * with the new data.
 */
xm_status_t xm__ec_update(const xm__ec_t *ec, size_t len, uint32_t j, const uint8_t *delta,
                          uint8_t *const *parity, const char **why_p);

/* dst = a XOR b, len bytes (dst may be a or b). */
void xm__ec_xor(uint8_t *dst, const uint8_t *a, const uint8_t *b, size_t len);

/*
 * Prepare rebuilding pieces want[0..nwant-1] (distinct, < k + m, 1..k + m of them)
 * from the k distinct pieces have[0..k-1]. A piece in both is allowed (copied).
 */
xm_status_t xm__ec_decoder_init(xm__ec_decoder_t *d, const xm__ec_t *ec, const uint32_t *have,
                                uint32_t nwant, const uint32_t *want, const char **why_p);
/* out[i] = piece want[i], rebuilt from src[j] = piece have[j], len bytes each. */
xm_status_t xm__ec_decoder_run(const xm__ec_decoder_t *d, size_t len, uint8_t *const *src,
                               uint8_t *const *out, const char **why_p);
/* Both in one call. */
xm_status_t xm__ec_decode(const xm__ec_t *ec, size_t len, const uint32_t *have,
                          uint8_t *const *src, uint32_t nwant, const uint32_t *want,
                          uint8_t *const *out, const char **why_p);

#endif
