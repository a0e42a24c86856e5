/* The stripe layout: part sizes, offset routing and range splitting, against a naive model. */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../../src/common/layout.h"

#define XM_MIN(a, b) ((a) < (b) ? (a) : (b))

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

/* ---- policies (the text users write) and the resilient layouts ---------------------- */

static void policy_ok(const char *text, xm__layout_kind_t kind, uint32_t width, uint32_t red,
                      uint64_t chunk, const char *canonical)
{
    xm__layout_policy_t p;
    const char *why = NULL;
    cr_assert_eq(xm__layout_policy_parse(text, 1u << 20, &p, &why), XM_OK, "%s refused: %s", text,
                 why ? why : "");
    cr_expect(p.kind == kind && p.width == width && p.redundancy == red && p.chunk == chunk,
              "%s: kind %d width %u redundancy %u chunk %llu", text, (int)p.kind, p.width,
              p.redundancy, (unsigned long long)p.chunk);
    char buf[XM_LAYOUT_POLICY_TEXT_MAX];
    xm__layout_policy_str(&p, buf, sizeof(buf));
    cr_expect_str_eq(buf, canonical);
    /* the canonical text reads back as the same policy */
    xm__layout_policy_t q;
    cr_assert_eq(xm__layout_policy_parse(buf, 1u << 20, &q, NULL), XM_OK, "%s", buf);
    cr_expect(memcmp(&p, &q, sizeof(p)) == 0, "%s does not read back", buf);
}

static void policy_refused(const char *text, const char *reason)
{
    xm__layout_policy_t p = {.kind = 77};
    const char *why = NULL;
    cr_expect_eq(xm__layout_policy_parse(text, 1u << 20, &p, &why), XM_ERR_INVALID, "%s accepted",
                 text);
    cr_expect(why != NULL && strstr(why, reason) != NULL, "%s: reason '%s' lacks '%s'", text,
              why ? why : "(null)", reason);
    cr_expect_eq(p.kind, 77, "%s: policy written on failure", text);
}

Test(layout, policies_parse_and_print)
{
    policy_ok(NULL, XM_LAYOUT_SINGLE, 1, 0, 0, "single");
    policy_ok("", XM_LAYOUT_SINGLE, 1, 0, 0, "single");
    policy_ok("single", XM_LAYOUT_SINGLE, 1, 0, 0, "single");
    policy_ok("stripe:4", XM_LAYOUT_STRIPE, 4, 0, 1u << 20, "stripe:4:1024K");
    policy_ok("stripe:3:64K", XM_LAYOUT_STRIPE, 3, 0, 65536, "stripe:3:64K");
    policy_ok("replicate:2", XM_LAYOUT_REPLICATE, 1, 1, 0, "replicate:2");
    policy_ok("replicate:8", XM_LAYOUT_REPLICATE, 1, 7, 0, "replicate:8");
    policy_ok("ec:4+2", XM_LAYOUT_EC, 4, 2, 65536, "ec:4+2:64K");
    policy_ok("ec:8+2:1M", XM_LAYOUT_EC, 8, 2, 1u << 20, "ec:8+2:1024K");
    policy_ok("ec:1+1:4K", XM_LAYOUT_EC, 1, 1, 4096, "ec:1+1:4K");
    policy_ok("ec:16+4:4M", XM_LAYOUT_EC, 16, 4, 4u << 20, "ec:16+4:4096K");
    policy_ok("ec:4+2:4096", XM_LAYOUT_EC, 4, 2, 4096, "ec:4+2:4K");

    policy_refused("raid5", "unknown policy");
    policy_refused("stripe", "unknown policy");
    policy_refused("stripe:0", "stripe width");
    policy_refused("stripe:1025", "stripe width");
    policy_refused("stripe:4:3K", "stripe chunk");
    policy_refused("stripe:4:", "stripe chunk");
    policy_refused("replicate:1", "replicas must be 2..8");
    policy_refused("replicate:9", "replicas must be 2..8");
    policy_refused("replicate:", "replicas");
    policy_refused("replicate:2:64K", "replicas");
    policy_refused("replicate:-2", "replicas");
    policy_refused("ec:4", "data pieces K");
    policy_refused("ec:0+2", "data pieces K must be 1..16");
    policy_refused("ec:17+1", "data pieces K must be 1..16");
    policy_refused("ec:+2", "data pieces K");
    policy_refused("ec:4+0", "parity pieces M must be 1..4");
    policy_refused("ec:4+5", "parity pieces M must be 1..4");
    policy_refused("ec:4+", "parity pieces M");
    policy_refused("ec:4+2x", "parity pieces M");
    policy_refused("ec:4+2:2K", "ec chunk must be a power of two from 4K to 4M");
    policy_refused("ec:4+2:8M", "ec chunk");
    policy_refused("ec:4+2:48K", "ec chunk");
    policy_refused("ec:4+2:", "ec chunk");
    policy_refused("ec:4+2:64K:1", "ec chunk");
    policy_refused("ec:99999999999999999999+2", "data pieces");
}

Test(layout, resilient_validation)
{
    xm__layout_t l = {.kind = 77, .size = 5};
    const char *why = NULL;
    /* replicate: one data piece, 2..8 copies, no chunk */
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_REPLICATE, 4096, 1, 0, 0, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_REPLICATE, 4096, 1, 8, 0, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_REPLICATE, 4096, 2, 1, 0, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_REPLICATE, 4096, 1, 1, 4096, &why), XM_ERR_INVALID);
    cr_expect(why != NULL && strstr(why, "replicate") != NULL);
    /* ec: bounds of k, m, k + m and the chunk */
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_EC, 1 << 20, 0, 2, 4096, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_EC, 1 << 20, 17, 2, 4096, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_EC, 1 << 20, 4, 0, 4096, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_EC, 1 << 20, 4, 5, 4096, &why), XM_ERR_INVALID);
    cr_expect(why != NULL && strstr(why, "parity") != NULL);
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_EC, 1 << 20, 4, 2, 2048, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_EC, 1 << 20, 4, 2, 12288, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_EC, 1 << 20, 4, 2, 8u << 20, &why), XM_ERR_INVALID);
    cr_expect(why != NULL && strstr(why, "chunk") != NULL);
    /* padded parts must fit: a size near 2^63 with wide rows is refused, not wrapped */
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_EC, XM_LAYOUT_SIZE_MAX, 16, 4, 4u << 20, &why),
                 XM_ERR_INVALID);
    /* redundancy on single / stripe, and the redundancy-less init of a resilient kind */
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_STRIPE, 4096, 2, 1, 4096, &why), XM_ERR_INVALID);
    cr_expect_eq(xm__layout_init(&l, XM_LAYOUT_EC, 4096, 4, 4096, &why), XM_ERR_INVALID);
    cr_expect_eq(l.kind, 77, "layout written on failure");
    /* the limits themselves */
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_EC, 1, 16, 4, 4u << 20, NULL), XM_OK);
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_EC, XM_LAYOUT_SIZE_MAX - (64ull << 20), 16, 4,
                                      4u << 20, NULL), XM_OK);
    uint64_t total = 0;
    for (uint32_t p = 0; p < 20; p++) total += xm__layout_part_size(&l, p) / 20;
    cr_expect_geq(total * 16, l.size - (64ull << 20), "parts do not hold the size");
    cr_expect_eq(xm__layout_init_full(&l, XM_LAYOUT_REPLICATE, XM_LAYOUT_SIZE_MAX, 1, 7, 0, NULL), XM_OK);
}

Test(layout, replicate_every_part_holds_every_byte)
{
    xm__layout_t l;
    cr_assert_eq(xm__layout_init_full(&l, XM_LAYOUT_REPLICATE, 100003, 1, 2, 0, NULL), XM_OK);
    cr_expect_eq(xm__layout_nparts(&l), 3);
    for (uint32_t p = 0; p < 3; p++) {
        /* the bytes, 8-aligned, then one 32-byte lock record per 64 KiB unit */
        cr_expect_eq(xm__layout_part_size(&l, p), 100008 + 2 * XM_LAYOUT_META_REC);
    }
    cr_expect_eq(xm__layout_part_size(&l, 3), 0);
    cr_expect(!xm__layout_has_empty_part(&l));
    cr_expect_eq(xm__layout_nrows(&l), 1);
    cr_expect_eq(xm__layout_piece_bytes(&l), 100003);
    xm__layout_loc_t loc;
    xm__layout_map(&l, 77777, &loc);
    cr_expect(loc.part == 0 && loc.part_off == 77777 && loc.contig == 100003 - 77777);
    /* the copies: parts 1 and 2, same offsets */
    cr_expect_eq(xm__layout_row_parity_part(&l, 0, 0), 1);
    cr_expect_eq(xm__layout_row_parity_part(&l, 0, 1), 2);
    xm__layout_span_iter_t it;
    xm__layout_span_t s;
    xm__layout_span_iter_init(&it, &l, 5, 1000);
    cr_assert(xm__layout_span_iter_next(&it, &s));
    cr_expect(s.row == 0 && s.first == 0 && s.last == 0 && s.lo == 5 && s.hi == 1005 && !s.full);
    uint64_t off[2], len[2];
    cr_expect_eq(xm__layout_span_parity(&l, &s, off, len), 1);
    cr_expect(off[0] == 5 && len[0] == 1000, "a copy changes where the data does");
    cr_expect(!xm__layout_span_iter_next(&it, &s));
}

/* ec(k, m, c) as the model: stripe s = b / (k c), data piece j, offset o; part (j + s) % n. */
Test(layout, ec_matches_a_byte_by_byte_model, .timeout = 120)
{
    uint64_t seed = 0x243f6a8885a308d3ull;
    for (int t = 0; t < 60; t++) {
        uint32_t k = 1 + (uint32_t)(rnd(&seed) % 5), m = 1 + (uint32_t)(rnd(&seed) % 3);
        uint32_t n = k + m;
        uint64_t c = 4096ull << (rnd(&seed) % 2);
        uint64_t size = 1 + rnd(&seed) % (3 * k * c + c);
        xm__layout_t l;
        const char *why = "";
        cr_assert_eq(xm__layout_init_full(&l, XM_LAYOUT_EC, size, k, m, c, &why), XM_OK, "%s", why);
        uint64_t rb = k * c, rows = (size + rb - 1) / rb;
        cr_assert_eq(xm__layout_nparts(&l), n);
        cr_assert_eq(xm__layout_nrows(&l), rows);
        cr_assert(!xm__layout_has_empty_part(&l));
        for (uint32_t p = 0; p < n; p++) cr_assert_eq(xm__layout_part_size(&l, p), rows * (c + XM_LAYOUT_META_REC),
                                                     "padded parts and a record per row");
        for (uint64_t r = 0; r < rows + n; r++) {
            /* pieces of a row are a permutation of the parts; part_piece inverts piece_part */
            bool seen[32] = {false};
            for (uint32_t p = 0; p < n; p++) {
                uint32_t part = xm__layout_piece_part(&l, r, p);
                cr_assert_lt(part, n);
                cr_assert(!seen[part], "row %llu: two pieces on part %u", (unsigned long long)r, part);
                seen[part] = true;
                cr_assert_eq(part, (p + r) % n);
                cr_assert_eq(xm__layout_part_piece(&l, r, part), p);
            }
            for (uint32_t i = 0; i < m; i++)
                cr_assert_eq(xm__layout_row_parity_part(&l, r, i), (k + i + r) % n);
        }
        for (uint64_t b = 0; b < size; b += 1 + rnd(&seed) % 97) {
            uint64_t s = b / rb, j = (b % rb) / c, o = b % c;
            xm__layout_loc_t loc;
            xm__layout_map(&l, b, &loc);
            cr_assert(loc.row == s && loc.piece == j && loc.piece_off == o &&
                      loc.part == (j + s) % n && loc.part_off == s * c + o,
                      "k %u m %u c %llu size %llu: byte %llu at part %u +%llu", k, m,
                      (unsigned long long)c, (unsigned long long)size, (unsigned long long)b,
                      loc.part, (unsigned long long)loc.part_off);
            cr_assert_eq(loc.contig, XM_MIN(c - o, size - b));
        }
        /* random ranges: spans cover them row by row, pieces and parity as a byte model says */
        for (int q = 0; q < 20; q++) {
            uint64_t off = rnd(&seed) % size, len = 1 + rnd(&seed) % (size - off);
            if (q % 4 == 0) len = 1 + rnd(&seed) % XM_MIN(size - off, 2 * c);
            uint64_t first_row, nrows;
            xm__layout_rows(&l, off, len, &first_row, &nrows);
            cr_assert_eq(first_row, off / rb);
            cr_assert_eq(nrows, (off + len - 1) / rb - off / rb + 1);
            xm__layout_span_iter_t it;
            xm__layout_span_t sp;
            uint64_t at = off, count = 0;
            xm__layout_span_iter_init(&it, &l, off, len);
            while (xm__layout_span_iter_next(&it, &sp)) {
                cr_assert_eq(sp.off, at);
                cr_assert_eq(sp.buf_off, at - off);
                cr_assert_eq(sp.row, first_row + count);
                uint64_t row_off = sp.row * rb, row_end = XM_MIN(row_off + rb, size);
                cr_assert(sp.off >= row_off && sp.off + sp.len <= row_end);
                cr_assert_eq(sp.full, sp.off == row_off && sp.off + sp.len == row_end);
                /* piece ranges: exactly the bytes of the span */
                uint8_t touched[4 * 8192] = {0};
                uint64_t sum = 0;
                for (uint32_t j = sp.first; j <= sp.last; j++) {
                    uint64_t po, pl;
                    xm__layout_span_piece(&l, &sp, j, &po, &pl);
                    cr_assert(pl >= 1 && po + pl <= c);
                    for (uint64_t x = 0; x < pl; x++) {
                        uint64_t b = row_off + j * c + po + x;
                        cr_assert(b >= sp.off && b < sp.off + sp.len, "piece byte outside the span");
                        touched[po + x] = 1;
                    }
                    sum += pl;
                }
                cr_assert_eq(sum, sp.len);
                /* parity ranges: exactly the offsets some touched data byte has */
                uint64_t po[2], pl[2];
                uint32_t nr = xm__layout_span_parity(&l, &sp, po, pl);
                cr_assert(nr == 1 || nr == 2);
                uint8_t par[4 * 8192] = {0};
                for (uint32_t i = 0; i < nr; i++) {
                    cr_assert(pl[i] >= 1 && po[i] + pl[i] <= c);
                    for (uint64_t x = 0; x < pl[i]; x++) par[po[i] + x] = 1;
                }
                cr_assert(memcmp(par, touched, c) == 0, "parity ranges are not the touched offsets");
                at += sp.len;
                count++;
            }
            cr_assert_eq(at, off + len);
            cr_assert_eq(count, nrows);
        }
    }
}

Test(layout, ec_rotation_spreads_parity)
{
    /* over k + m rows, every part holds parity m times and data k times */
    xm__layout_t l;
    cr_assert_eq(xm__layout_init_full(&l, XM_LAYOUT_EC, 64ull << 20, 4, 2, 65536, NULL), XM_OK);
    uint32_t parity[6] = {0};
    for (uint64_t r = 0; r < 6; r++) {
        for (uint32_t i = 0; i < 2; i++) parity[xm__layout_row_parity_part(&l, r, i)]++;
    }
    for (uint32_t p = 0; p < 6; p++) cr_expect_eq(parity[p], 2, "part %u holds parity %u times", p, parity[p]);
}
