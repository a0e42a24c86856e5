/* layout: how an allocation's bytes are spread over its parts. Pure arithmetic, no I/O.
 *
 * The one place the stripe math lives: proto validates descriptors with it, the
 * manager sizes parts with it, the client routes reads and writes with it.
 *
 * Model. An allocation of `size` logical bytes is cut into rows. A row holds
 * ndata data chunks of `chunk` bytes each, one per data part; chunk j of row r
 * sits in part xm__layout_row_data_part(l, r, j) at part offset r * chunk (every
 * part holds row r at the same offset). The last row, and its last chunk, may be
 * short: a part holds only the bytes the allocation has, nothing is padded.
 *
 *   single        one row, one part, chunk = size: byte b is at part 0, offset b.
 *   stripe(w, c)  ndata = nparts = w; data chunk j of row r is in part j, so
 *                 logical chunk i is in part i % w at (i / w) * c.
 *
 * What comes next fits the same shape, so callers that route through
 * xm__layout_map / the segment iterator do not change:
 *
 *   ec(k, m, c)   a row is k data chunks plus m parity chunks (nparts = k + m);
 *                 with rotation, data chunk j of row r sits in part
 *                 (j + r) % (k + m) and the parity of row r in the others
 *                 (to come: xm__layout_row_parity_part). Parity parts hold full chunks for
 *                 every row. A writer groups its segments by row (seg.row) to
 *                 update the row's parity; a degraded reader rebuilds a row from
 *                 any k of its parts.
 *   replicate(r)  one data chunk per row (ndata = 1, nparts = r, chunk = size): the
 *                 data part is the primary; copies are the row's redundancy parts,
 *                 each holding the same bytes at the same offsets.
 *
 * `redundancy` (m, or r - 1) is 0 for single and stripe; xm__layout_check refuses
 * anything else until those kinds exist.
 *
 * Arithmetic is overflow-free for sizes up to XM_LAYOUT_SIZE_MAX (2^63) and chunks
 * up to XM_LAYOUT_CHUNK_MAX; every function below assumes a layout that passed
 * xm__layout_check.
 */
#ifndef XM_LAYOUT_H
#define XM_LAYOUT_H

#include <stdbool.h>
#include <stdint.h>

#include <xmem/status.h>

#define XM_LAYOUT_PARTS_MAX 1024u
#define XM_LAYOUT_CHUNK_MAX (1ull << 40)
#define XM_LAYOUT_SIZE_MAX (1ull << 63)

typedef enum xm__layout_kind {
    XM_LAYOUT_SINGLE = 1,
    XM_LAYOUT_STRIPE = 2,
    /* XM_LAYOUT_REPLICATE, XM_LAYOUT_EC: see above */
} xm__layout_kind_t;

typedef struct xm__layout {
    xm__layout_kind_t kind;
    uint32_t width;      /* data parts per row: 1 for single, w for stripe(w) */
    uint32_t redundancy; /* parity or copy parts per row; 0 for single and stripe */
    uint64_t chunk;      /* bytes of one part in one row; 0 for single (the row is the size) */
    uint64_t size;       /* logical bytes of the allocation */
} xm__layout_t;

/* Where one logical byte lives, and how far the part continues it. */
typedef struct xm__layout_loc {
    uint32_t part;       /* index into the allocation's parts */
    uint64_t part_off;   /* offset in that part */
    uint64_t contig;     /* bytes from here on that are consecutive in that part (>= 1) */
    uint64_t row;
} xm__layout_loc_t;

/* One row: logical bytes [off, off + len) held at part_off of each of its parts. */
typedef struct xm__layout_row {
    uint64_t index;
    uint64_t off;
    uint64_t len;        /* row_bytes, less for the last row */
    uint64_t part_off;
    uint32_t ndata;      /* data chunks that hold bytes in this row (fewer in a short last row) */
} xm__layout_row_t;

/* A piece of a range that lives in one part: logical bytes
 * [range start + buf_off, + len) are at part_off of part. */
typedef struct xm__layout_seg {
    uint32_t part;
    uint64_t part_off;
    uint64_t len;
    uint64_t buf_off;    /* from the start of the range (the caller's buffer) */
    uint64_t row;
} xm__layout_seg_t;

/* Walks a range piece by piece; see xm__layout_iter_init. Caller's storage, no cleanup. */
typedef struct xm__layout_iter {
    const xm__layout_t *l;
    uint64_t start, off, end;
    uint64_t max_seg;
} xm__layout_iter_t;

/* Fill *l and check it; on failure XM_ERR_INVALID with a static reason in *why_p
 * (may be NULL) and *l untouched. Single ignores width and chunk. */
xm_status_t xm__layout_init(xm__layout_t *l, xm__layout_kind_t kind, uint64_t size,
                            uint32_t width, uint64_t chunk, const char **why_p);
/* The layout of a plain region or a one-part allocation of size bytes (size checked by
 * the caller). */
xm__layout_t xm__layout_single(uint64_t size);
/* XM_OK when l is one this module can route: known kind, 1..XM_LAYOUT_SIZE_MAX bytes,
 * stripe width 1..XM_LAYOUT_PARTS_MAX, chunk a multiple of 8 up to XM_LAYOUT_CHUNK_MAX.
 * Otherwise XM_ERR_INVALID and a static reason in *why_p (may be NULL). */
xm_status_t xm__layout_check(const xm__layout_t *l, const char **why_p);

/* Parts the allocation needs (data + redundancy). */
uint32_t xm__layout_nparts(const xm__layout_t *l);
/* Bytes part holds (its region must be at least this big); 0 for a part out of range or
 * one the allocation is too small to reach. */
uint64_t xm__layout_part_size(const xm__layout_t *l, uint32_t part);
/* True when some part holds no byte (fewer chunks than data parts). */
bool xm__layout_has_empty_part(const xm__layout_t *l);

/* Logical bytes of a full row, and the number of rows (the last may be short). */
uint64_t xm__layout_row_bytes(const xm__layout_t *l);
uint64_t xm__layout_nrows(const xm__layout_t *l);
/* Describe row index (< nrows). */
void xm__layout_row(const xm__layout_t *l, uint64_t index, xm__layout_row_t *row_p);
/* The part holding data chunk j (< width) of row index. */
uint32_t xm__layout_row_data_part(const xm__layout_t *l, uint64_t index, uint32_t j);

/* True when [off, off + len) is inside the allocation (no wrap-around). */
bool xm__layout_range_ok(const xm__layout_t *l, uint64_t off, uint64_t len);
/* Where logical byte off (< size) lives. */
void xm__layout_map(const xm__layout_t *l, uint64_t off, xm__layout_loc_t *loc_p);

/* Iterate [off, off + len) (range_ok) in logical order as segments that each lie in one
 * part and one chunk, at most max_seg bytes each (0: no cap). */
void xm__layout_iter_init(xm__layout_iter_t *it, const xm__layout_t *l, uint64_t off,
                          uint64_t len, uint64_t max_seg);
/* The next segment into *seg_p; false when the range is done. */
bool xm__layout_iter_next(xm__layout_iter_t *it, xm__layout_seg_t *seg_p);
/* How many segments the iterator yields for that range. */
uint64_t xm__layout_count(const xm__layout_t *l, uint64_t off, uint64_t len, uint64_t max_seg);

#endif
