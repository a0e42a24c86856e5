/* layout: how an allocation's bytes are spread over its parts. Pure arithmetic, no I/O.
 *
 * The one place the stripe math lives: proto validates descriptors with it, the
 * manager sizes parts with it, the client routes reads and writes with it, and the
 * policy text ("single", "stripe:N[:CHUNK]", "replicate:R", "ec:K+M[:CHUNK]") is
 * parsed and printed here.
 *
 * Model. An allocation of `size` logical bytes is cut into rows (stripes). A row
 * holds `width` data pieces of `chunk` bytes each plus `redundancy` pieces that
 * protect them; every piece of a row sits in its own part, and every part holds
 * row r at the same part offset r * chunk. Piece p of a row (0 <= p < width: data
 * piece p; width <= p < nparts: redundancy piece p - width) is in part
 * xm__layout_piece_part(l, r, p).
 *
 *   single        one row, one part, chunk = size: byte b is at part 0, offset b.
 *   stripe(w, c)  nparts = w, no redundancy; data piece j of row r is in part j, so
 *                 logical chunk i is in part i % w at (i / w) * c. The last row and
 *                 its last chunk may be short: a part holds only the bytes the
 *                 allocation has, nothing is padded.
 *   ec(k, m, c)   a row is k data pieces plus m Reed-Solomon parity pieces
 *                 (nparts = k + m). Piece p of row r sits in part (p + r) % (k + m):
 *                 the parity rotates one part per row, as RAID-5/6 rotate theirs, so
 *                 the parity updates of small writes and the reads of data spread
 *                 over all k + m appliances instead of loading m parity appliances
 *                 with every write and leaving them idle for reads. Every part holds
 *                 one piece of every row, padded: each part is nrows * c bytes, and
 *                 the bytes of the last row beyond `size` are zero (never written),
 *                 so parity is always computed over whole pieces.
 *   replicate(r)  one row (chunk = size), one data piece (width = 1) in part 0, the
 *                 primary; redundancy piece i (a copy) in part 1 + i. Every part
 *                 holds every byte at the same offset.
 *
 * Arithmetic is overflow-free for sizes up to XM_LAYOUT_SIZE_MAX (2^63) and chunks
 * up to XM_LAYOUT_CHUNK_MAX; every function below assumes a layout that passed
 * xm__layout_check.
 */
#ifndef XM_LAYOUT_H
#define XM_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <xmem/status.h>

#define XM_LAYOUT_PARTS_MAX 1024u
#define XM_LAYOUT_CHUNK_MAX (1ull << 40)
#define XM_LAYOUT_SIZE_MAX (1ull << 63)

/* Bounds of the resilient policies. R 2..8: a ninth copy buys nothing a user can
 * measure and makes every write 9 writes. EC: k up to 16 and m up to 4 with k + m <= 20
 * (Hydra and Carbink use 8+2; 16+4 is the widest code anyone would use over a network:
 * a degraded read waits for k pieces); the chunk a power of two from one page (4 KiB,
 * the unit a mapping faults in) to 4 MiB (beyond it a small partial-stripe write still
 * costs nothing more, but a degraded read and the zero padding of the last row grow
 * with it). */
#define XM_LAYOUT_REPLICAS_MIN 2u
#define XM_LAYOUT_REPLICAS_MAX 8u
#define XM_LAYOUT_EC_K_MAX 16u
#define XM_LAYOUT_EC_M_MAX 4u
#define XM_LAYOUT_EC_N_MAX 20u
#define XM_LAYOUT_EC_CHUNK_MIN 4096ull
#define XM_LAYOUT_EC_CHUNK_MAX (4ull << 20)
#define XM_LAYOUT_EC_CHUNK_DEFAULT (64ull << 10)
/* Longest policy text xm__layout_policy_str writes, with its NUL. */
#define XM_LAYOUT_POLICY_TEXT_MAX 48

/* The numbers match the wire's Layout enum and the manager's table. */
typedef enum xm__layout_kind {
    XM_LAYOUT_SINGLE = 1,
    XM_LAYOUT_STRIPE = 2,
    XM_LAYOUT_REPLICATE = 3,
    XM_LAYOUT_EC = 4,
} xm__layout_kind_t;

typedef struct xm__layout {
    xm__layout_kind_t kind;
    uint32_t width;      /* data pieces per row: 1 for single and replicate, w, k */
    uint32_t redundancy; /* parity or copy pieces per row: 0 for single and stripe, m, r - 1 */
    uint64_t chunk;      /* bytes of one piece; 0 for single and replicate (the row is the size) */
    uint64_t size;       /* logical bytes of the allocation */
} xm__layout_t;

/* A policy as a user names it: a layout without a size. */
typedef struct xm__layout_policy {
    xm__layout_kind_t kind;
    uint32_t width;
    uint32_t redundancy;
    uint64_t chunk;
} xm__layout_policy_t;

/* Where one logical byte lives, and how far the part continues it. */
typedef struct xm__layout_loc {
    uint32_t part;       /* index into the allocation's parts */
    uint64_t part_off;   /* offset in that part */
    uint64_t contig;     /* bytes from here on that are consecutive in that part (>= 1) */
    uint64_t row;
    uint32_t piece;      /* data piece index in the row (< width) */
    uint64_t piece_off;  /* offset in that piece (part_off - row * chunk) */
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
    uint32_t piece;      /* data piece index in the row */
} xm__layout_seg_t;

/*
 * What a range does to one row (stripe): logical bytes [off, off + len) of the row,
 * at buf_off of the range; they are data pieces first..last, from offset lo in piece
 * first to offset hi (exclusive) in piece last. A writer updates the row's
 * redundancy over xm__layout_span_parity; full: the range covers every byte the row
 * holds, so its parity can be computed from the new data alone (no read).
 */
typedef struct xm__layout_span {
    uint64_t row;
    uint64_t off, len, buf_off;
    uint32_t first, last;
    uint64_t lo, hi;
    bool full;
} xm__layout_span_t;

/* Walks a range row by row; see xm__layout_span_iter_init. */
typedef struct xm__layout_span_iter {
    const xm__layout_t *l;
    uint64_t start, off, end;
} xm__layout_span_iter_t;

/* Walks a range piece by piece; see xm__layout_iter_init. Caller's storage, no cleanup. */
typedef struct xm__layout_iter {
    const xm__layout_t *l;
    uint64_t start, off, end;
    uint64_t max_seg;
} xm__layout_iter_t;

/* Fill *l and check it; on failure XM_ERR_INVALID with a static reason in *why_p
 * (may be NULL) and *l untouched. Single ignores width and chunk. No redundancy: for
 * single and stripe. */
xm_status_t xm__layout_init(xm__layout_t *l, xm__layout_kind_t kind, uint64_t size,
                            uint32_t width, uint64_t chunk, const char **why_p);
/* The same for any kind: replicate(r) is (1, r - 1, 0), ec(k, m, c) is (k, m, c). */
xm_status_t xm__layout_init_full(xm__layout_t *l, xm__layout_kind_t kind, uint64_t size,
                                 uint32_t width, uint32_t redundancy, uint64_t chunk,
                                 const char **why_p);
/* The layout of policy p for size bytes (checked). */
xm_status_t xm__layout_from_policy(xm__layout_t *l, const xm__layout_policy_t *p, uint64_t size,
                                   const char **why_p);

/*
 * Parse a policy: "single" (also NULL or ""), "stripe:N[:CHUNK]" (N 1..1024, CHUNK a
 * power of two from 4K, default stripe_chunk), "replicate:R" (R 2..8),
 * "ec:K+M[:CHUNK]" (K 1..16, M 1..4, K+M <= 20, CHUNK a power of two 4K..4M, default
 * 64K). On failure XM_ERR_INVALID, a static reason that names the rule in *why_p, and
 * *p untouched.
 */
xm_status_t xm__layout_policy_parse(const char *text, uint64_t stripe_chunk,
                                    xm__layout_policy_t *p, const char **why_p);
/* The canonical text of a policy ("stripe:4:1024K", "ec:4+2:64K", "replicate:2"), as
 * parse reads it back; len >= XM_LAYOUT_POLICY_TEXT_MAX always suffices. */
void xm__layout_policy_str(const xm__layout_policy_t *p, char *buf, size_t len);
/* The policy a layout was made from. */
xm__layout_policy_t xm__layout_policy_of(const xm__layout_t *l);
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
/*
 * The metadata column (docs/resilience.md, consistency model): replicate and ec parts end
 * with one 32-byte record per ec stripe (row) or per 64 KiB replicate lock unit, four
 * 8-byte words changed only by one-sided atomics and delivery-complete writes:
 * lock (0 free, else the holder's token), beat (lease heartbeat), ver (bumped when a
 * writer takes the lock), range (ec: the piece offsets a writer is changing, len << 24 |
 * off; 0 none). Every part of the allocation has the column at the same offset (only
 * the records of a row's parity parts, or of the replicate lock home, are used), so the
 * part sizes stay equal; xm__layout_part_size counts it. None for single and stripe.
 */
#define XM_LAYOUT_META_REC 32u
#define XM_LAYOUT_REPL_UNIT (64ull << 10)
enum { XM_LAYOUT_META_LOCK = 0, XM_LAYOUT_META_BEAT = 8, XM_LAYOUT_META_VER = 16,
       XM_LAYOUT_META_RANGE = 24 };
/* A free lock word carries the lock epoch it was freed under (docs/resilience.md,
 * "Rebuild"): 0 (epoch 0) or XM_LAYOUT_LOCK_TAG | epoch. A holder's token never has the tag.
 * The manager fences writers of older descriptors by raising every free word's epoch. */
#define XM_LAYOUT_LOCK_TAG 0xFE5C000000000000ull
#define XM_LAYOUT_LOCK_TAG_MASK 0xFFFF000000000000ull
static inline uint64_t xm__layout_lock_free(uint64_t epoch)
{
    return epoch == 0 ? 0 : XM_LAYOUT_LOCK_TAG | (epoch & ~XM_LAYOUT_LOCK_TAG_MASK);
}
/* Is w a free lock word? Its epoch in *epoch_p. */
static inline bool xm__layout_lock_is_free(uint64_t w, uint64_t *epoch_p)
{
    if (w == 0) { *epoch_p = 0; return true; }
    if ((w & XM_LAYOUT_LOCK_TAG_MASK) != XM_LAYOUT_LOCK_TAG) return false;
    *epoch_p = w & ~XM_LAYOUT_LOCK_TAG_MASK;
    return true;
}
/* Records per part: nrows (ec), lock units of XM_LAYOUT_REPL_UNIT (replicate), 0 others. */
uint64_t xm__layout_meta_count(const xm__layout_t *l);
/* Part offset of the column (8-aligned, after every data byte of the part). */
uint64_t xm__layout_meta_base(const xm__layout_t *l);
/* Part offset of record index (< meta_count). */
uint64_t xm__layout_meta_off(const xm__layout_t *l, uint64_t index);
/* The replicate lock unit of logical byte off. */
uint64_t xm__layout_meta_unit(const xm__layout_t *l, uint64_t off);

/* True when some part holds no byte (fewer chunks than data parts). */
bool xm__layout_has_empty_part(const xm__layout_t *l);

/* Logical bytes of a full row, and the number of rows (the last may be short). */
uint64_t xm__layout_row_bytes(const xm__layout_t *l);
uint64_t xm__layout_nrows(const xm__layout_t *l);
/* Describe row index (< nrows). */
void xm__layout_row(const xm__layout_t *l, uint64_t index, xm__layout_row_t *row_p);
/* The part holding data chunk j (< width) of row index. */
uint32_t xm__layout_row_data_part(const xm__layout_t *l, uint64_t index, uint32_t j);
/* The part holding redundancy piece i (< redundancy) of row index: EC parity i, or copy
 * i + 1 of replicate. */
uint32_t xm__layout_row_parity_part(const xm__layout_t *l, uint64_t index, uint32_t i);
/* The part holding piece p (< nparts: data first, then redundancy) of row index. */
uint32_t xm__layout_piece_part(const xm__layout_t *l, uint64_t index, uint32_t p);
/* The piece of row index that part (< nparts) holds: the inverse of piece_part. */
uint32_t xm__layout_part_piece(const xm__layout_t *l, uint64_t index, uint32_t part);
/* Bytes of one piece: the chunk, or the size for single and replicate. */
uint64_t xm__layout_piece_bytes(const xm__layout_t *l);
/* Rows [*first_p, *first_p + *count_p) that [off, off + len) (range_ok, len > 0) touches. */
void xm__layout_rows(const xm__layout_t *l, uint64_t off, uint64_t len, uint64_t *first_p,
                     uint64_t *count_p);

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

/* Iterate [off, off + len) (range_ok) row by row. */
void xm__layout_span_iter_init(xm__layout_span_iter_t *it, const xm__layout_t *l, uint64_t off,
                               uint64_t len);
bool xm__layout_span_iter_next(xm__layout_span_iter_t *it, xm__layout_span_t *span_p);
/* The bytes of data piece j (first <= j <= last) the span touches: [*off_p, + *len_p). */
void xm__layout_span_piece(const xm__layout_t *l, const xm__layout_span_t *s, uint32_t j,
                           uint64_t *off_p, uint64_t *len_p);
/* The bytes of every redundancy piece of the row the span changes (a parity byte at offset
 * x depends on the data bytes at offset x of every data piece): one or two ranges, the
 * count returned. For replicate: the same bytes as the data. */
uint32_t xm__layout_span_parity(const xm__layout_t *l, const xm__layout_span_t *s,
                                uint64_t off[2], uint64_t len[2]);

#endif
