/* The stripe layout math, once (see layout.h for the model). */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "layout.h"

static void set_why(const char **why_p, const char *why)
{
    if (why_p != NULL) *why_p = why;
}

xm__layout_t xm__layout_single(uint64_t size)
{
    return (xm__layout_t){.kind = XM_LAYOUT_SINGLE, .width = 1, .size = size};
}

xm_status_t xm__layout_check(const xm__layout_t *l, const char **why_p)
{
    if (l->size == 0 || l->size > XM_LAYOUT_SIZE_MAX) {
        set_why(why_p, "layout size must be 1 byte to 8 EiB");
        return XM_ERR_INVALID;
    }
    switch (l->kind) {
    case XM_LAYOUT_SINGLE:
        if (l->width != 1 || l->chunk != 0 || l->redundancy != 0) {
            set_why(why_p, "single layout has one part and no chunk");
            return XM_ERR_INVALID;
        }
        return XM_OK;
    case XM_LAYOUT_STRIPE:
        if (l->redundancy != 0) {
            set_why(why_p, "stripe layout has no parity or copies");
            return XM_ERR_INVALID;
        }
        if (l->width == 0 || l->width > XM_LAYOUT_PARTS_MAX) {
            set_why(why_p, "bad stripe width");
            return XM_ERR_INVALID;
        }
        if (l->chunk == 0 || l->chunk % 8 != 0 || l->chunk > XM_LAYOUT_CHUNK_MAX) {
            /* 8-byte atomics must never straddle two parts */
            set_why(why_p, "bad stripe chunk");
            return XM_ERR_INVALID;
        }
        return XM_OK;
    case XM_LAYOUT_REPLICATE:
        if (l->width != 1 || l->chunk != 0 || l->redundancy + 1 < XM_LAYOUT_REPLICAS_MIN ||
            l->redundancy + 1 > XM_LAYOUT_REPLICAS_MAX) {
            set_why(why_p, "replicate layout has 2..8 copies of one piece and no chunk");
            return XM_ERR_INVALID;
        }
        return XM_OK;
    case XM_LAYOUT_EC:
        if (l->width == 0 || l->width > XM_LAYOUT_EC_K_MAX || l->redundancy == 0 ||
            l->redundancy > XM_LAYOUT_EC_M_MAX || l->width + l->redundancy > XM_LAYOUT_EC_N_MAX) {
            set_why(why_p, "ec layout needs 1..16 data and 1..4 parity pieces, 20 at most");
            return XM_ERR_INVALID;
        }
        if (l->chunk < XM_LAYOUT_EC_CHUNK_MIN || l->chunk > XM_LAYOUT_EC_CHUNK_MAX ||
            (l->chunk & (l->chunk - 1)) != 0) {
            set_why(why_p, "bad ec chunk (a power of two from 4K to 4M)");
            return XM_ERR_INVALID;
        }
        /* every part is nrows * chunk: that must not overflow */
        if (l->size > XM_LAYOUT_SIZE_MAX - (uint64_t)l->width * l->chunk) {
            set_why(why_p, "layout size must be 1 byte to 8 EiB");
            return XM_ERR_INVALID;
        }
        return XM_OK;
    }
    set_why(why_p, "unknown layout");
    return XM_ERR_INVALID;
}

xm_status_t xm__layout_init_full(xm__layout_t *l, xm__layout_kind_t kind, uint64_t size,
                                 uint32_t width, uint32_t redundancy, uint64_t chunk,
                                 const char **why_p)
{
    xm__layout_t n = {.kind = kind, .width = width, .redundancy = redundancy, .chunk = chunk,
                      .size = size};
    if (kind == XM_LAYOUT_SINGLE) n = xm__layout_single(size);
    xm_status_t status = xm__layout_check(&n, why_p);
    if (status != XM_OK) return status;
    *l = n;
    return XM_OK;
}

xm_status_t xm__layout_init(xm__layout_t *l, xm__layout_kind_t kind, uint64_t size,
                            uint32_t width, uint64_t chunk, const char **why_p)
{
    if (kind == XM_LAYOUT_REPLICATE || kind == XM_LAYOUT_EC) {
        set_why(why_p, "layout with parity or copies needs its redundancy");
        return XM_ERR_INVALID;
    }
    return xm__layout_init_full(l, kind, size, width, 0, chunk, why_p);
}

xm_status_t xm__layout_from_policy(xm__layout_t *l, const xm__layout_policy_t *p, uint64_t size,
                                   const char **why_p)
{
    return xm__layout_init_full(l, p->kind, size, p->width, p->redundancy, p->chunk, why_p);
}

xm__layout_policy_t xm__layout_policy_of(const xm__layout_t *l)
{
    return (xm__layout_policy_t){.kind = l->kind, .width = l->width, .redundancy = l->redundancy,
                                 .chunk = l->chunk};
}

/* A decimal number 1..max at *s, followed by one of the characters in ends; its value
 * and where it ends, or false. */
static bool parse_count(const char *s, unsigned long max, const char *ends, unsigned long *v_p,
                        const char **end_p)
{
    if (s[0] < '0' || s[0] > '9') return false;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || v == 0 || v > max || strchr(ends, *end) == NULL) return false;
    *v_p = v;
    *end_p = end;
    return true;
}

static bool pow2_in(uint64_t v, uint64_t lo, uint64_t hi)
{
    return v >= lo && v <= hi && (v & (v - 1)) == 0;
}

xm_status_t xm__layout_policy_parse(const char *text, uint64_t stripe_chunk,
                                    xm__layout_policy_t *p, const char **why_p)
{
    xm__layout_policy_t n = {0};
    unsigned long v, w;
    const char *end;
    if (text == NULL || text[0] == '\0' || strcmp(text, "single") == 0) {
        n = (xm__layout_policy_t){.kind = XM_LAYOUT_SINGLE, .width = 1};
    } else if (strncmp(text, "stripe:", 7) == 0) {
        /* strchr(ends, '\0') matches the terminator: "" ends take only the string's end */
        if (!parse_count(text + 7, XM_LAYOUT_PARTS_MAX, ":", &v, &end)) {
            set_why(why_p, "stripe width must be 1..1024 (stripe:N[:CHUNK])");
            return XM_ERR_INVALID;
        }
        n = (xm__layout_policy_t){.kind = XM_LAYOUT_STRIPE, .width = (uint32_t)v,
                                  .chunk = stripe_chunk};
        if (*end == ':' && (xm__parse_size(end + 1, &n.chunk) != XM_OK ||
                            !pow2_in(n.chunk, 4096, XM_LAYOUT_CHUNK_MAX))) {
            set_why(why_p, "stripe chunk must be a power of two from 4K (stripe:N:CHUNK)");
            return XM_ERR_INVALID;
        }
    } else if (strncmp(text, "replicate:", 10) == 0) {
        if (!parse_count(text + 10, XM_LAYOUT_REPLICAS_MAX, "", &v, &end) ||
            v < XM_LAYOUT_REPLICAS_MIN) {
            set_why(why_p, "replicas must be 2..8 (replicate:R)");
            return XM_ERR_INVALID;
        }
        n = (xm__layout_policy_t){.kind = XM_LAYOUT_REPLICATE, .width = 1,
                                  .redundancy = (uint32_t)v - 1};
    } else if (strncmp(text, "ec:", 3) == 0) {
        if (!parse_count(text + 3, XM_LAYOUT_EC_K_MAX, "+", &v, &end) || *end != '+') {
            set_why(why_p, "ec data pieces K must be 1..16 (ec:K+M[:CHUNK])");
            return XM_ERR_INVALID;
        }
        if (!parse_count(end + 1, XM_LAYOUT_EC_M_MAX, ":", &w, &end)) {
            set_why(why_p, "ec parity pieces M must be 1..4 (ec:K+M[:CHUNK])");
            return XM_ERR_INVALID;
        }
        /* K <= 16 and M <= 4 keep K + M within XM_LAYOUT_EC_N_MAX (20) */
        n = (xm__layout_policy_t){.kind = XM_LAYOUT_EC, .width = (uint32_t)v,
                                  .redundancy = (uint32_t)w, .chunk = XM_LAYOUT_EC_CHUNK_DEFAULT};
        if (*end == ':' && (xm__parse_size(end + 1, &n.chunk) != XM_OK ||
                            !pow2_in(n.chunk, XM_LAYOUT_EC_CHUNK_MIN, XM_LAYOUT_EC_CHUNK_MAX))) {
            set_why(why_p, "ec chunk must be a power of two from 4K to 4M (ec:K+M:CHUNK)");
            return XM_ERR_INVALID;
        }
    } else {
        set_why(why_p, "unknown policy (use single, stripe:N[:CHUNK], replicate:R or "
                       "ec:K+M[:CHUNK])");
        return XM_ERR_INVALID;
    }
    *p = n;
    return XM_OK;
}

void xm__layout_policy_str(const xm__layout_policy_t *p, char *buf, size_t len)
{
    switch (p->kind) {
    case XM_LAYOUT_STRIPE:
        snprintf(buf, len, "stripe:%u:%lluK", p->width, (unsigned long long)(p->chunk >> 10));
        return;
    case XM_LAYOUT_REPLICATE:
        snprintf(buf, len, "replicate:%u", p->redundancy + 1);
        return;
    case XM_LAYOUT_EC:
        snprintf(buf, len, "ec:%u+%u:%lluK", p->width, p->redundancy,
                 (unsigned long long)(p->chunk >> 10));
        return;
    case XM_LAYOUT_SINGLE:
        break;
    }
    snprintf(buf, len, "single");
}

/* The unit a part holds per row: the chunk, or for single and replicate the whole size. */
static uint64_t unit(const xm__layout_t *l)
{
    return l->kind == XM_LAYOUT_SINGLE || l->kind == XM_LAYOUT_REPLICATE ? l->size : l->chunk;
}

/* Chunks the allocation's bytes fill, the last possibly partial. */
static uint64_t nchunks(const xm__layout_t *l)
{
    uint64_t u = unit(l);
    return l->size / u + (l->size % u != 0);
}

uint32_t xm__layout_nparts(const xm__layout_t *l)
{
    return l->width + l->redundancy;
}

uint64_t xm__layout_piece_bytes(const xm__layout_t *l)
{
    return unit(l);
}

uint64_t xm__layout_row_bytes(const xm__layout_t *l)
{
    /* width * chunk <= 2^10 * 2^40: no overflow */
    return (uint64_t)l->width * unit(l);
}

uint64_t xm__layout_nrows(const xm__layout_t *l)
{
    uint64_t rb = xm__layout_row_bytes(l);
    return l->size / rb + (l->size % rb != 0);
}

void xm__layout_row(const xm__layout_t *l, uint64_t index, xm__layout_row_t *row_p)
{
    uint64_t rb = xm__layout_row_bytes(l), u = unit(l);
    uint64_t off = index * rb; /* index < nrows, so off < size */
    uint64_t len = XM_MIN(rb, l->size - off);
    *row_p = (xm__layout_row_t){
        .index = index,
        .off = off,
        .len = len,
        .part_off = index * u,
        .ndata = (uint32_t)(len / u + (len % u != 0)),
    };
}

uint32_t xm__layout_piece_part(const xm__layout_t *l, uint64_t index, uint32_t p)
{
    /* ec rotates a row's pieces one part per row; the others never move */
    if (l->kind != XM_LAYOUT_EC) return p;
    uint32_t n = xm__layout_nparts(l);
    return (uint32_t)((p + index % n) % n);
}

uint32_t xm__layout_part_piece(const xm__layout_t *l, uint64_t index, uint32_t part)
{
    if (l->kind != XM_LAYOUT_EC) return part;
    uint32_t n = xm__layout_nparts(l);
    return (uint32_t)((part + n - index % n) % n);
}

uint32_t xm__layout_row_data_part(const xm__layout_t *l, uint64_t index, uint32_t j)
{
    return xm__layout_piece_part(l, index, j);
}

uint32_t xm__layout_row_parity_part(const xm__layout_t *l, uint64_t index, uint32_t i)
{
    return xm__layout_piece_part(l, index, l->width + i);
}

uint64_t xm__layout_part_size(const xm__layout_t *l, uint32_t part)
{
    if (part >= xm__layout_nparts(l)) return 0;
    uint64_t u = unit(l), n = nchunks(l);
    /* replicate and ec: the data, then the metadata column (32 bytes per row or 64 KiB
     * unit: at most size / 2048 more, no overflow) */
    if (l->kind == XM_LAYOUT_REPLICATE || l->kind == XM_LAYOUT_EC) {
        return xm__layout_meta_base(l) + xm__layout_meta_count(l) * XM_LAYOUT_META_REC;
    }
    uint64_t count = n / l->width + (part < n % l->width);
    if (count == 0) return 0;
    /* count * u <= n * u < size + u <= 2^63 + 2^40: no overflow */
    uint64_t bytes = count * u;
    /* the allocation's last chunk may be partial; it lives in part (n - 1) % width */
    if ((n - 1) % l->width == part && l->size % u != 0) bytes -= u - l->size % u;
    return bytes;
}

uint64_t xm__layout_meta_count(const xm__layout_t *l)
{
    if (l->kind == XM_LAYOUT_EC) return xm__layout_nrows(l);
    if (l->kind == XM_LAYOUT_REPLICATE) {
        return l->size / XM_LAYOUT_REPL_UNIT + (l->size % XM_LAYOUT_REPL_UNIT != 0);
    }
    return 0;
}

uint64_t xm__layout_meta_base(const xm__layout_t *l)
{
    /* every ec part holds one whole piece of every row (padded): nrows * chunk fits, as
     * xm__layout_check made sure; chunks are multiples of 8 */
    if (l->kind == XM_LAYOUT_EC) return xm__layout_nrows(l) * l->chunk;
    return (l->size + 7) & ~7ull;
}

uint64_t xm__layout_meta_off(const xm__layout_t *l, uint64_t index)
{
    return xm__layout_meta_base(l) + index * XM_LAYOUT_META_REC;
}

uint64_t xm__layout_meta_unit(const xm__layout_t *l, uint64_t off)
{
    (void)l;
    return off / XM_LAYOUT_REPL_UNIT;
}

bool xm__layout_has_empty_part(const xm__layout_t *l)
{
    return l->kind == XM_LAYOUT_STRIPE && nchunks(l) < l->width;
}

bool xm__layout_range_ok(const xm__layout_t *l, uint64_t off, uint64_t len)
{
    return off <= l->size && len <= l->size - off;
}

void xm__layout_rows(const xm__layout_t *l, uint64_t off, uint64_t len, uint64_t *first_p,
                     uint64_t *count_p)
{
    uint64_t rb = xm__layout_row_bytes(l);
    uint64_t first = off / rb, last = (off + len - 1) / rb;
    *first_p = first;
    *count_p = last - first + 1;
}

void xm__layout_map(const xm__layout_t *l, uint64_t off, xm__layout_loc_t *loc_p)
{
    uint64_t u = unit(l);
    uint64_t c = off / u, within = off % u;
    uint64_t row = c / l->width;
    uint32_t j = (uint32_t)(c % l->width);
    *loc_p = (xm__layout_loc_t){
        .part = xm__layout_row_data_part(l, row, j),
        .part_off = row * u + within,
        .contig = XM_MIN(u - within, l->size - off),
        .row = row,
        .piece = j,
        .piece_off = within,
    };
}

void xm__layout_iter_init(xm__layout_iter_t *it, const xm__layout_t *l, uint64_t off,
                          uint64_t len, uint64_t max_seg)
{
    *it = (xm__layout_iter_t){.l = l, .start = off, .off = off, .end = off + len,
                              .max_seg = max_seg};
}

bool xm__layout_iter_next(xm__layout_iter_t *it, xm__layout_seg_t *seg_p)
{
    if (it->off >= it->end) return false;
    xm__layout_loc_t loc;
    xm__layout_map(it->l, it->off, &loc);
    uint64_t len = XM_MIN(loc.contig, it->end - it->off);
    if (it->max_seg != 0) len = XM_MIN(len, it->max_seg);
    *seg_p = (xm__layout_seg_t){
        .part = loc.part,
        .part_off = loc.part_off,
        .len = len,
        .buf_off = it->off - it->start,
        .row = loc.row,
        .piece = loc.piece,
    };
    it->off += len;
    return true;
}

uint64_t xm__layout_count(const xm__layout_t *l, uint64_t off, uint64_t len, uint64_t max_seg)
{
    xm__layout_iter_t it;
    xm__layout_seg_t seg;
    uint64_t n = 0;
    xm__layout_iter_init(&it, l, off, len, max_seg);
    while (xm__layout_iter_next(&it, &seg)) n++;
    return n;
}

void xm__layout_span_iter_init(xm__layout_span_iter_t *it, const xm__layout_t *l, uint64_t off,
                               uint64_t len)
{
    *it = (xm__layout_span_iter_t){.l = l, .start = off, .off = off, .end = off + len};
}

bool xm__layout_span_iter_next(xm__layout_span_iter_t *it, xm__layout_span_t *span_p)
{
    if (it->off >= it->end) return false;
    const xm__layout_t *l = it->l;
    uint64_t u = unit(l), rb = xm__layout_row_bytes(l);
    uint64_t row = it->off / rb, row_off = row * rb;
    uint64_t row_end = XM_MIN(row_off + rb, l->size); /* row_off < size: no overflow */
    uint64_t end = XM_MIN(row_end, it->end);
    uint64_t a = it->off - row_off, b = end - row_off; /* [a, b) within the row */
    *span_p = (xm__layout_span_t){
        .row = row,
        .off = it->off,
        .len = end - it->off,
        .buf_off = it->off - it->start,
        .first = (uint32_t)(a / u),
        .last = (uint32_t)((b - 1) / u),
        .lo = a % u,
        .hi = (b - 1) % u + 1,
        .full = it->off == row_off && end == row_end,
    };
    it->off = end;
    return true;
}

void xm__layout_span_piece(const xm__layout_t *l, const xm__layout_span_t *s, uint32_t j,
                           uint64_t *off_p, uint64_t *len_p)
{
    uint64_t lo = j == s->first ? s->lo : 0;
    uint64_t hi = j == s->last ? s->hi : unit(l);
    *off_p = lo;
    *len_p = hi - lo;
}

uint32_t xm__layout_span_parity(const xm__layout_t *l, const xm__layout_span_t *s,
                                uint64_t off[2], uint64_t len[2])
{
    uint64_t u = unit(l);
    if (s->first == s->last) {
        off[0] = s->lo;
        len[0] = s->hi - s->lo;
        return 1;
    }
    if (s->last == s->first + 1 && s->hi < s->lo) {
        /* the end of one piece and the start of the next: two separate ranges */
        off[0] = 0;
        len[0] = s->hi;
        off[1] = s->lo;
        len[1] = u - s->lo;
        return 2;
    }
    off[0] = 0;
    len[0] = u;
    return 1;
}
