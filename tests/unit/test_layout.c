/* The stripe layout: part sizes, offset routing and range splitting, against a naive model. */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../../src/common/layout.h"

static xm__layout_t make(xm__layout_kind_t kind, uint64_t size, uint32_t width, uint64_t chunk)
{
    xm__layout_t l;
    const char *why = "none";
    xm_status_t st = xm__layout_init(&l, kind, size, width, chunk, &why);
    cr_assert_eq(st, XM_OK, "layout kind %d size %llu width %u chunk %llu refused: %s", (int)kind,
                 (unsigned long long)size, width, (unsigned long long)chunk, why);
    return l;
}

static void refused(xm__layout_kind_t kind, uint64_t size, uint32_t width, uint64_t chunk,
                    const char *reason)
{
    xm__layout_t l = {.kind = 77, .size = 5};
    const char *why = NULL;
    xm_status_t st = xm__layout_init(&l, kind, size, width, chunk, &why);
    cr_expect_eq(st, XM_ERR_INVALID, "kind %d size %llu width %u chunk %llu accepted", (int)kind,
                 (unsigned long long)size, width, (unsigned long long)chunk);
    cr_expect(why != NULL && strstr(why, reason) != NULL, "reason '%s' lacks '%s'",
              why ? why : "(null)", reason);
    cr_expect_eq(l.kind, 77, "layout written on failure");
    cr_expect_eq(l.size, 5, "layout written on failure");
}

/* The segments of [off, off + len) as a flat array of {part, part_off, len, buf_off}. */
typedef struct {
    uint32_t part;
    uint64_t part_off, len, buf_off;
} seg_t;

static size_t segs(const xm__layout_t *l, uint64_t off, uint64_t len, uint64_t max, seg_t *out,
                   size_t cap)
{
    xm__layout_iter_t it;
    xm__layout_seg_t s;
    size_t n = 0;
    xm__layout_iter_init(&it, l, off, len, max);
    while (xm__layout_iter_next(&it, &s)) {
        cr_assert_lt(n, cap, "more segments than expected");
        out[n++] = (seg_t){s.part, s.part_off, s.len, s.buf_off};
    }
    cr_expect_eq(xm__layout_count(l, off, len, max), n, "count disagrees with the iterator");
    return n;
}

#define EXPECT_SEG(s, p, po, ln, bo)                                                         \
    do {                                                                                     \
        cr_expect_eq((s).part, (p), "part %u, want %u", (s).part, (uint32_t)(p));            \
        cr_expect_eq((s).part_off, (po), "part_off %llu, want %llu",                         \
                     (unsigned long long)(s).part_off, (unsigned long long)(po));            \
        cr_expect_eq((s).len, (ln), "len %llu, want %llu", (unsigned long long)(s).len,      \
                     (unsigned long long)(ln));                                              \
        cr_expect_eq((s).buf_off, (bo), "buf_off %llu, want %llu",                           \
                     (unsigned long long)(s).buf_off, (unsigned long long)(bo));             \
    } while (0)

Test(layout, single)
{
    xm__layout_t l = make(XM_LAYOUT_SINGLE, 12345, 7, 4096); /* width and chunk ignored */
    cr_expect_eq(l.width, 1);
    cr_expect_eq(l.chunk, 0);
    cr_expect_eq(xm__layout_nparts(&l), 1);
    cr_expect_eq(xm__layout_part_size(&l, 0), 12345);
    cr_expect_eq(xm__layout_part_size(&l, 1), 0, "no second part");
    cr_expect(!xm__layout_has_empty_part(&l));
    cr_expect_eq(xm__layout_nrows(&l), 1);
    cr_expect_eq(xm__layout_row_bytes(&l), 12345);
    xm__layout_loc_t loc;
    xm__layout_map(&l, 1000, &loc);
    cr_expect_eq(loc.part, 0);
    cr_expect_eq(loc.part_off, 1000);
    cr_expect_eq(loc.contig, 12345 - 1000);
    cr_expect_eq(loc.row, 0);
    xm__layout_map(&l, 12344, &loc);
    cr_expect_eq(loc.contig, 1);

    seg_t s[8];
    cr_assert_eq(segs(&l, 100, 12000, 0, s, 8), 1);
    EXPECT_SEG(s[0], 0, 100, 12000, 0);
    /* a cap cuts the range without regard to chunks */
    cr_assert_eq(segs(&l, 100, 12000, 5000, s, 8), 3);
    EXPECT_SEG(s[0], 0, 100, 5000, 0);
    EXPECT_SEG(s[1], 0, 5100, 5000, 5000);
    EXPECT_SEG(s[2], 0, 10100, 2000, 10000);

    xm__layout_t one = xm__layout_single(8);
    cr_expect_eq(xm__layout_check(&one, NULL), XM_OK);
    cr_expect_eq(xm__layout_part_size(&one, 0), 8);
}

Test(layout, stripe_part_sizes)
{
    /* 3 full chunks and 100 bytes over 4 parts */
    xm__layout_t l = make(XM_LAYOUT_STRIPE, 3 * 65536 + 100, 4, 65536);
    cr_expect_eq(xm__layout_nparts(&l), 4);
    cr_expect_eq(xm__layout_part_size(&l, 0), 65536);
    cr_expect_eq(xm__layout_part_size(&l, 1), 65536);
    cr_expect_eq(xm__layout_part_size(&l, 2), 65536);
    cr_expect_eq(xm__layout_part_size(&l, 3), 100, "the last, partial chunk");
    cr_expect_eq(xm__layout_part_size(&l, 4), 0);
    cr_expect(!xm__layout_has_empty_part(&l));
    cr_expect_eq(xm__layout_nrows(&l), 1);

    /* 9 chunks over 4 parts, the ninth partial: part 0 holds rows 0, 1 and 2's stub */
    l = make(XM_LAYOUT_STRIPE, 8 * 4096 + 8, 4, 4096);
    cr_expect_eq(xm__layout_part_size(&l, 0), 2 * 4096 + 8);
    cr_expect_eq(xm__layout_part_size(&l, 1), 2 * 4096);
    cr_expect_eq(xm__layout_part_size(&l, 3), 2 * 4096);
    cr_expect_eq(xm__layout_nrows(&l), 3);
    xm__layout_row_t row;
    xm__layout_row(&l, 2, &row);
    cr_expect_eq(row.off, 8 * 4096);
    cr_expect_eq(row.len, 8);
    cr_expect_eq(row.part_off, 2 * 4096);
    cr_expect_eq(row.ndata, 1, "the short last row has data in one part");
    xm__layout_row(&l, 1, &row);
    cr_expect_eq(row.len, 4 * 4096);
    cr_expect_eq(row.ndata, 4);

    /* fewer chunks than parts: the manager refuses such an allocation */
    l = make(XM_LAYOUT_STRIPE, 2 * 4096, 3, 4096);
    cr_expect(xm__layout_has_empty_part(&l));
    cr_expect_eq(xm__layout_part_size(&l, 2), 0);
}

Test(layout, stripe_ranges_cross_chunks_and_rows)
{
    /* 3 parts, 64-byte chunks, 1000 bytes: rows of 192 bytes, last chunk (15) is 40 bytes */
    xm__layout_t l = make(XM_LAYOUT_STRIPE, 1000, 3, 64);
    seg_t s[32];
    /* inside one chunk */
    cr_assert_eq(segs(&l, 70, 10, 0, s, 32), 1);
    EXPECT_SEG(s[0], 1, 6, 10, 0);
    /* across a chunk boundary within a row */
    cr_assert_eq(segs(&l, 60, 10, 0, s, 32), 2);
    EXPECT_SEG(s[0], 0, 60, 4, 0);
    EXPECT_SEG(s[1], 1, 0, 6, 4);
    /* across a row boundary: chunk 2 (part 2, row 0) then chunk 3 (part 0, row 1) */
    cr_assert_eq(segs(&l, 180, 100, 0, s, 32), 3);
    EXPECT_SEG(s[0], 2, 52, 12, 0);
    EXPECT_SEG(s[1], 0, 64, 64, 12);
    EXPECT_SEG(s[2], 1, 64, 24, 76);
    /* to the end, through the last partial chunk (chunk 15: part 0, row 5) */
    cr_assert_eq(segs(&l, 950, 50, 0, s, 32), 2);
    EXPECT_SEG(s[0], 2, 4 * 64 + 54, 10, 0);
    EXPECT_SEG(s[1], 0, 5 * 64, 40, 10);
    cr_expect_eq(xm__layout_part_size(&l, 0), 5 * 64 + 40);
    /* a cap smaller than a chunk */
    cr_assert_eq(segs(&l, 60, 80, 30, s, 32), 5);
    EXPECT_SEG(s[0], 0, 60, 4, 0);
    EXPECT_SEG(s[1], 1, 0, 30, 4);
    EXPECT_SEG(s[2], 1, 30, 30, 34);
    EXPECT_SEG(s[3], 1, 60, 4, 64);
    EXPECT_SEG(s[4], 2, 0, 12, 68);
    /* the last byte */
    xm__layout_loc_t loc;
    xm__layout_map(&l, 999, &loc);
    cr_expect_eq(loc.part, 0);
    cr_expect_eq(loc.part_off, 5 * 64 + 39);
    cr_expect_eq(loc.contig, 1);
    cr_expect_eq(loc.row, 5);
    /* an empty range yields nothing */
    cr_expect_eq(segs(&l, 1000, 0, 0, s, 32), 0);
    cr_expect_eq(segs(&l, 10, 0, 0, s, 32), 0);
}

Test(layout, range_ok)
{
    xm__layout_t l = make(XM_LAYOUT_STRIPE, 1000, 3, 64);
    cr_expect(xm__layout_range_ok(&l, 0, 1000));
    cr_expect(xm__layout_range_ok(&l, 999, 1));
    cr_expect(xm__layout_range_ok(&l, 1000, 0));
    cr_expect(!xm__layout_range_ok(&l, 999, 2));
    cr_expect(!xm__layout_range_ok(&l, 1001, 0));
    cr_expect(!xm__layout_range_ok(&l, 8, UINT64_MAX - 4), "off + len wraps around");
    cr_expect(!xm__layout_range_ok(&l, UINT64_MAX, 1));
}

Test(layout, validation)
{
    refused(XM_LAYOUT_STRIPE, 1 << 20, 2, 0, "chunk");
    refused(XM_LAYOUT_STRIPE, 1 << 20, 2, 65532, "chunk");
    refused(XM_LAYOUT_STRIPE, 1 << 20, 2, 12, "chunk");
    refused(XM_LAYOUT_STRIPE, 1 << 20, 2, XM_LAYOUT_CHUNK_MAX + 8, "chunk");
    refused(XM_LAYOUT_STRIPE, 1 << 20, 0, 4096, "width");
    refused(XM_LAYOUT_STRIPE, 1 << 20, XM_LAYOUT_PARTS_MAX + 1, 4096, "width");
    refused(XM_LAYOUT_STRIPE, 0, 2, 4096, "size");
    refused(XM_LAYOUT_SINGLE, 0, 1, 0, "size");
    refused(XM_LAYOUT_STRIPE, XM_LAYOUT_SIZE_MAX + 1, 2, 4096, "size");
    refused(XM_LAYOUT_SINGLE, UINT64_MAX, 1, 0, "size");
    refused((xm__layout_kind_t)0, 4096, 1, 0, "unknown");
    refused((xm__layout_kind_t)9, 4096, 1, 0, "unknown");
    /* the limits themselves are fine */
    make(XM_LAYOUT_STRIPE, XM_LAYOUT_SIZE_MAX, XM_LAYOUT_PARTS_MAX, XM_LAYOUT_CHUNK_MAX);
    make(XM_LAYOUT_STRIPE, 1, 1, 8);
    /* a hand-made layout: single with a chunk or two parts, parity not yet */
    xm__layout_t l = {.kind = XM_LAYOUT_SINGLE, .width = 2, .size = 4096};
    cr_expect_eq(xm__layout_check(&l, NULL), XM_ERR_INVALID);
    l = (xm__layout_t){.kind = XM_LAYOUT_SINGLE, .width = 1, .chunk = 64, .size = 4096};
    cr_expect_eq(xm__layout_check(&l, NULL), XM_ERR_INVALID);
    l = (xm__layout_t){.kind = XM_LAYOUT_STRIPE, .width = 4, .redundancy = 2, .chunk = 64,
                       .size = 4096};
    const char *why = NULL;
    cr_expect_eq(xm__layout_check(&l, &why), XM_ERR_INVALID);
    cr_expect(why != NULL && strstr(why, "parity") != NULL);
}

/* Sizes near 2^63: part sizes add up to the size, the end maps inside the last part. */
Test(layout, huge_sizes_do_not_overflow)
{
    static const struct {
        uint64_t size;
        uint32_t width;
        uint64_t chunk;
    } cases[] = {
        {XM_LAYOUT_SIZE_MAX, 1, 8},
        {XM_LAYOUT_SIZE_MAX, 1024, 8},
        {XM_LAYOUT_SIZE_MAX, 1024, XM_LAYOUT_CHUNK_MAX},
        {XM_LAYOUT_SIZE_MAX, 3, XM_LAYOUT_CHUNK_MAX},
        {XM_LAYOUT_SIZE_MAX - 1, 7, XM_LAYOUT_CHUNK_MAX - 8},
        {XM_LAYOUT_SIZE_MAX - 12345, 1000, 4096},
        {(1ull << 62) + 3, 5, 1ull << 30},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        xm__layout_t l = make(XM_LAYOUT_STRIPE, cases[c].size, cases[c].width, cases[c].chunk);
        unsigned __int128 sum = 0;
        for (uint32_t p = 0; p < cases[c].width; p++) {
            uint64_t ps = xm__layout_part_size(&l, p);
            cr_expect_leq(ps, cases[c].size);
            sum += ps;
        }
        cr_expect(sum == cases[c].size, "case %zu: part sizes add up to %llu, not %llu", c,
                  (unsigned long long)sum, (unsigned long long)cases[c].size);
        /* the last bytes, byte by byte against the formula */
        for (uint64_t off = cases[c].size - 20; off < cases[c].size; off++) {
            xm__layout_loc_t loc;
            xm__layout_map(&l, off, &loc);
            uint64_t ci = off / cases[c].chunk;
            cr_expect_eq(loc.part, ci % cases[c].width);
            cr_expect_eq(loc.part_off, (ci / cases[c].width) * cases[c].chunk + off % cases[c].chunk);
            cr_expect_lt(loc.part_off, xm__layout_part_size(&l, loc.part), "case %zu: off %llu "
                         "maps past its part's end", c, (unsigned long long)off);
            uint64_t to_chunk_end = cases[c].chunk - off % cases[c].chunk;
            uint64_t to_end = cases[c].size - off;
            cr_expect_eq(loc.contig, to_chunk_end < to_end ? to_chunk_end : to_end);
        }
        /* a range ending at the very end, capped */
        xm__layout_iter_t it;
        xm__layout_seg_t s;
        uint64_t total = 0, n = 0;
        xm__layout_iter_init(&it, &l, cases[c].size - (3u << 20), 3u << 20, 1u << 20);
        while (xm__layout_iter_next(&it, &s)) {
            cr_expect_leq(s.part_off + s.len, xm__layout_part_size(&l, s.part));
            cr_expect_eq(s.buf_off, total);
            total += s.len;
            n++;
        }
        cr_expect_eq(total, 3u << 20);
        cr_expect_geq(n, 3);
        cr_expect_eq(xm__layout_nrows(&l) - 1,
                     (cases[c].size - 1) / ((uint64_t)cases[c].width * cases[c].chunk));
    }
}

/* xorshift64*: reproducible from the seed printed on failure */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/*
 * The naive model: deal the bytes out chunk after chunk, round robin, each part
 * filling up from 0. For single, one part takes every byte.
 */
static void naive(uint64_t size, uint32_t width, uint64_t chunk, uint32_t *part, uint64_t *poff,
                  uint64_t *fill)
{
    memset(fill, 0, width * sizeof(*fill));
    uint32_t p = 0;
    uint64_t in_chunk = 0;
    for (uint64_t b = 0; b < size; b++) {
        part[b] = p;
        poff[b] = fill[p]++;
        if (chunk != 0 && ++in_chunk == chunk) {
            in_chunk = 0;
            p = (p + 1) % width;
        }
    }
}

Test(layout, random_layouts_match_a_byte_by_byte_model, .timeout = 120)
{
    enum { MAXSIZE = 4000, MAXW = 9 };
    uint32_t *part = malloc(MAXSIZE * sizeof(*part));
    uint64_t *poff = malloc(MAXSIZE * sizeof(*poff));
    uint64_t fill[MAXW];
    cr_assert(part != NULL && poff != NULL);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int t = 0; t < 3000; t++) {
        uint64_t tseed = seed;
        bool single = rnd(&seed) % 8 == 0;
        uint64_t size = 1 + rnd(&seed) % MAXSIZE;
        uint32_t width = single ? 1 : 1 + (uint32_t)(rnd(&seed) % MAXW);
        uint64_t chunk = single ? 0 : 8 * (1 + rnd(&seed) % 48);
        xm__layout_t l = make(single ? XM_LAYOUT_SINGLE : XM_LAYOUT_STRIPE, size, width, chunk);
        naive(size, width, chunk, part, poff, fill);
        /* every part holds what the model dealt it */
        for (uint32_t p = 0; p < width; p++) {
            cr_assert_eq(xm__layout_part_size(&l, p), fill[p],
                         "seed %#llx: size %llu width %u chunk %llu: part %u holds %llu, model %llu",
                         (unsigned long long)tseed, (unsigned long long)size, width,
                         (unsigned long long)chunk, p,
                         (unsigned long long)xm__layout_part_size(&l, p),
                         (unsigned long long)fill[p]);
        }
        bool empty = false;
        for (uint32_t p = 0; p < width; p++) empty |= fill[p] == 0;
        cr_assert_eq(xm__layout_has_empty_part(&l), empty, "seed %#llx", (unsigned long long)tseed);
        /* every byte maps where the model put it; contig stays in the part and chunk */
        uint64_t rb = xm__layout_row_bytes(&l);
        for (uint64_t b = 0; b < size; b++) {
            xm__layout_loc_t loc;
            xm__layout_map(&l, b, &loc);
            cr_assert(loc.part == part[b] && loc.part_off == poff[b],
                      "seed %#llx: size %llu width %u chunk %llu: byte %llu at part %u +%llu, "
                      "model part %u +%llu", (unsigned long long)tseed, (unsigned long long)size,
                      width, (unsigned long long)chunk, (unsigned long long)b, loc.part,
                      (unsigned long long)loc.part_off, part[b], (unsigned long long)poff[b]);
            cr_assert_geq(loc.contig, 1);
            cr_assert_leq(b + loc.contig, size);
            uint64_t e = b + loc.contig - 1;
            cr_assert(part[e] == loc.part && poff[e] == loc.part_off + loc.contig - 1,
                      "seed %#llx: byte %llu: contig %llu runs out of its part",
                      (unsigned long long)tseed, (unsigned long long)b,
                      (unsigned long long)loc.contig);
            /* contig ends at the end of the chunk or of the allocation */
            cr_assert(e + 1 == size || chunk == 0 || (e + 1) % chunk == 0);
            cr_assert_eq(loc.row, b / rb);
            xm__layout_row_t row;
            xm__layout_row(&l, loc.row, &row);
            cr_assert(row.off <= b && b < row.off + row.len);
            cr_assert_eq(row.part_off, chunk == 0 ? 0 : loc.row * chunk);
            uint64_t j = chunk == 0 ? 0 : (b - row.off) / chunk;
            cr_assert_lt(j, row.ndata);
            cr_assert_eq(xm__layout_row_data_part(&l, loc.row, (uint32_t)j), loc.part);
        }
        cr_assert_eq(xm__layout_nrows(&l), (size + rb - 1) / rb);
        /* random ranges, split with and without a cap, reassemble byte for byte */
        for (int r = 0; r < 8; r++) {
            uint64_t off = rnd(&seed) % size;
            uint64_t len = 1 + rnd(&seed) % (size - off);
            uint64_t max = rnd(&seed) % 3 == 0 ? 0 : 1 + rnd(&seed) % 200;
            cr_assert(xm__layout_range_ok(&l, off, len));
            xm__layout_iter_t it;
            xm__layout_seg_t s;
            uint64_t at = 0, n = 0;
            xm__layout_iter_init(&it, &l, off, len, max);
            while (xm__layout_iter_next(&it, &s)) {
                cr_assert_eq(s.buf_off, at, "seed %#llx: segments not in order",
                             (unsigned long long)tseed);
                cr_assert(s.len >= 1 && (max == 0 || s.len <= max));
                for (uint64_t k = 0; k < s.len; k++) {
                    uint64_t b = off + at + k;
                    cr_assert(b < off + len);
                    cr_assert(part[b] == s.part && poff[b] == s.part_off + k,
                              "seed %#llx: size %llu width %u chunk %llu range %llu+%llu max "
                              "%llu: byte %llu misrouted", (unsigned long long)tseed,
                              (unsigned long long)size, width, (unsigned long long)chunk,
                              (unsigned long long)off, (unsigned long long)len,
                              (unsigned long long)max, (unsigned long long)b);
                }
                cr_assert_eq(s.row, (off + at) / rb);
                at += s.len;
                n++;
            }
            cr_assert_eq(at, len, "seed %#llx: segments cover %llu of %llu bytes",
                         (unsigned long long)tseed, (unsigned long long)at,
                         (unsigned long long)len);
            cr_assert_eq(xm__layout_count(&l, off, len, max), n);
        }
    }
    free(part);
    free(poff);
}
