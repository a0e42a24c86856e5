/* The stripe layout math, once (see layout.h for the model). */
#include <stddef.h>

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
    if (l->redundancy != 0) {
        set_why(why_p, "layout with parity or copies is not supported yet");
        return XM_ERR_INVALID;
    }
    switch (l->kind) {
    case XM_LAYOUT_SINGLE:
        if (l->width != 1 || l->chunk != 0) {
            set_why(why_p, "single layout has one part and no chunk");
            return XM_ERR_INVALID;
        }
        return XM_OK;
    case XM_LAYOUT_STRIPE:
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
    }
    set_why(why_p, "unknown layout");
    return XM_ERR_INVALID;
}

xm_status_t xm__layout_init(xm__layout_t *l, xm__layout_kind_t kind, uint64_t size,
                            uint32_t width, uint64_t chunk, const char **why_p)
{
    xm__layout_t n = {.kind = kind, .width = width, .chunk = chunk, .size = size};
    if (kind == XM_LAYOUT_SINGLE) n = xm__layout_single(size);
    xm_status_t status = xm__layout_check(&n, why_p);
    if (status != XM_OK) return status;
    *l = n;
    return XM_OK;
}

/* The unit a part holds per row: the chunk, or for single the whole size. */
static uint64_t unit(const xm__layout_t *l)
{
    return l->kind == XM_LAYOUT_SINGLE ? l->size : l->chunk;
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

uint64_t xm__layout_row_bytes(const xm__layout_t *l)
{
    /* width * chunk <= 2^10 * 2^40: no overflow */
    return l->kind == XM_LAYOUT_SINGLE ? l->size : (uint64_t)l->width * l->chunk;
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

uint32_t xm__layout_row_data_part(const xm__layout_t *l, uint64_t index, uint32_t j)
{
    (void)l;
    (void)index;
    /* single and stripe: no rotation, data chunk j is in part j */
    return j;
}

uint64_t xm__layout_part_size(const xm__layout_t *l, uint32_t part)
{
    if (part >= xm__layout_nparts(l)) return 0;
    uint64_t u = unit(l), n = nchunks(l);
    uint64_t count = n / l->width + (part < n % l->width);
    if (count == 0) return 0;
    /* count * u <= n * u < size + u <= 2^63 + 2^40: no overflow */
    uint64_t bytes = count * u;
    /* the allocation's last chunk may be partial; it lives in part (n - 1) % width */
    if ((n - 1) % l->width == part && l->size % u != 0) bytes -= u - l->size % u;
    return bytes;
}

bool xm__layout_has_empty_part(const xm__layout_t *l)
{
    return nchunks(l) < l->width;
}

bool xm__layout_range_ok(const xm__layout_t *l, uint64_t off, uint64_t len)
{
    return off <= l->size && len <= l->size - off;
}

void xm__layout_map(const xm__layout_t *l, uint64_t off, xm__layout_loc_t *loc_p)
{
    uint64_t u = unit(l);
    uint64_t c = off / u, within = off % u;
    uint64_t row = c / l->width;
    *loc_p = (xm__layout_loc_t){
        .part = xm__layout_row_data_part(l, row, (uint32_t)(c % l->width)),
        .part_off = row * u + within,
        .contig = XM_MIN(u - within, l->size - off),
        .row = row,
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
