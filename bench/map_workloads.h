/* Workload kernels for the mapped-memory benchmarks (issue 4).
 *
 * Header-only, dependency-free C11 (plus POSIX clock_gettime). Every kernel
 * works on a caller-given area (base, len) -- plain local memory, a mapped
 * file, anonymous memory under a cgroup limit, or an xmem mapping -- so all
 * systems run exactly the same code. Each kernel is deterministic (fixed
 * seeds, xorshift64* RNG) and returns the elapsed seconds of its timed part
 * and a checksum: the same area length and parameters give the same checksum
 * on every system, which is how the benchmarks verify that a system returned
 * the data that was written.
 *
 * Usage, per measurement:
 *   xmw_fill(base, len, XMW_SEED_DATA);          // untimed: deterministic contents
 *   xmw_result_t r = xmw_scan(base, len);        // or xmw_gups / xmw_pages / xmw_sort
 *
 * The random-access kernels take a deadline: a slow system (a mapped file
 * under a cgroup limit can take milliseconds per update) stops early and
 * reports how many operations it did; rerunning the kernel with that count
 * on fresh memory gives the reference checksum, and seconds * planned / done
 * estimates the full run (the access pattern is uniform, so the miss rate is
 * the same throughout once the cache is warm).
 *
 * len is rounded down to whole 4 KiB pages; areas under one page do nothing.
 */
#ifndef XMEM_BENCH_MAP_WORKLOADS_H
#define XMEM_BENCH_MAP_WORKLOADS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define XMW_PAGE 4096u
#define XMW_PAGE_WORDS (XMW_PAGE / 8u)
#define XMW_SEED_DATA 0x9e3779b97f4a7c15ull
#define XMW_SEED_GUPS 0x2545f4914f6cdd1dull
#define XMW_SEED_PAGES 0x5851f42d4c957f2dull

typedef struct {
    double seconds;    /* elapsed time of the timed part */
    uint64_t checksum; /* deterministic for given len and parameters */
    uint64_t ops;      /* work done: words, updates, page ops or keys */
    int ok;            /* 1, or 0 when a self-check failed (sort: not sorted) */
} xmw_result_t;

static inline double xmw_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* xorshift64* (Vigna): never returns 0 for a non-zero state. */
static inline uint64_t xmw_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dull;
}

static inline size_t xmw_words(size_t len)
{
    return (len / XMW_PAGE) * XMW_PAGE_WORDS;
}

/* Fills the area with pseudo-random 64-bit words (incompressible data: what a
 * data set of keys or hashes looks like; zram gains nothing from compression). */
static inline void xmw_fill(uint8_t *base, size_t len, uint64_t seed)
{
    uint64_t *w = (uint64_t *)(void *)base, s = seed | 1u;
    size_t n = xmw_words(len);
    for (size_t i = 0; i < n; i++) {
        w[i] = xmw_rand(&s);
    }
}

/* Sequential scan: sums every 64-bit word, in address order. */
static inline xmw_result_t xmw_scan(const uint8_t *base, size_t len)
{
    const uint64_t *w = (const uint64_t *)(const void *)base;
    size_t n = xmw_words(len);
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    double t0 = xmw_now();
    for (size_t i = 0; i + 4 <= n; i += 4) {
        s0 += w[i];
        s1 += w[i + 1];
        s2 += w[i + 2];
        s3 += w[i + 3];
    }
    xmw_result_t r = {xmw_now() - t0, s0 + s1 + s2 + s3, n, 1};
    return r;
}

/* GUPS-like random updates: `updates` read-modify-writes of one 64-bit word
 * at a random 8-byte-aligned offset (w[i] ^= r). The checksum adds up the
 * values read, so it also checks that earlier writes were kept.
 * deadline: an xmw_now() time after which it stops early (0: never); r.ops
 * says how many were done, and the same call with updates = r.ops gives the
 * same checksum (the sequence is a prefix). Checked every 256 updates. */
static inline xmw_result_t xmw_gups(uint8_t *base, size_t len, uint64_t updates, double deadline)
{
    uint64_t *w = (uint64_t *)(void *)base, s = XMW_SEED_GUPS, sum = 0;
    size_t n = xmw_words(len);
    xmw_result_t r = {0, 0, 0, 1};
    if (n == 0) return r;
    double t0 = xmw_now();
    for (uint64_t u = 0; u < updates; u++) {
        uint64_t x = xmw_rand(&s);
        size_t i = (size_t)(x % n);
        uint64_t old = w[i];
        sum += old;
        w[i] = old ^ x;
        if ((u & 255u) == 255u && deadline > 0 && xmw_now() > deadline) {
            updates = u + 1;
            break;
        }
    }
    r.seconds = xmw_now() - t0;
    r.checksum = sum;
    r.ops = updates;
    return r;
}

/* Page-granular random access: `ops` operations, each on a random 4 KiB page;
 * half of them (chosen by the RNG) read the whole page (sum of its words), the
 * others rewrite the whole page (every word ^= r). Checksum: sum of reads.
 * deadline: as for xmw_gups (checked every 16 operations). */
static inline xmw_result_t xmw_pages(uint8_t *base, size_t len, uint64_t ops, double deadline)
{
    size_t pages = len / XMW_PAGE;
    uint64_t s = XMW_SEED_PAGES, sum = 0;
    xmw_result_t r = {0, 0, 0, 1};
    if (pages == 0) return r;
    double t0 = xmw_now();
    for (uint64_t o = 0; o < ops; o++) {
        uint64_t x = xmw_rand(&s);
        uint64_t *p = (uint64_t *)(void *)(base + (size_t)((x >> 1) % pages) * XMW_PAGE);
        if (x & 1u) {
            for (size_t i = 0; i < XMW_PAGE_WORDS; i++) p[i] ^= x;
        } else {
            uint64_t a = 0;
            for (size_t i = 0; i < XMW_PAGE_WORDS; i++) a += p[i];
            sum += a;
        }
        if ((o & 15u) == 15u && deadline > 0 && xmw_now() > deadline) {
            ops = o + 1;
            break;
        }
    }
    r.seconds = xmw_now() - t0;
    r.checksum = sum;
    r.ops = ops;
    return r;
}

/* Insertion sort of a[0..n): for the small buckets the radix sort leaves. */
static inline void xmw__insertion(uint64_t *a, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        uint64_t v = a[i];
        size_t j = i;
        while (j > 0 && a[j - 1] > v) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = v;
    }
}

#define XMW_SORT_SMALL 64
#define XMW_SORT_MAXDEPTH 8 /* 8 digits of 8 bits = 64-bit keys */

/* In-place MSD radix sort (American flag sort), 8 bits per digit, no memory
 * beyond a small stack: per level one counting pass and one in-place
 * permutation pass over the bucket, then recursion into each bucket (explicit
 * stack, depth <= 8 levels of 256 buckets). Random keys of an area of N words
 * take about log256(N) levels, i.e. 3-4 passes of reads and writes over the
 * area at 4 GiB; later levels work on buckets that fit in cache. */
static inline void xmw__radix(uint64_t *a, size_t n)
{
    struct frame {
        size_t off, n;
        int shift;
    };
    /* at most 255 pending siblings per level, 8 levels */
    static _Thread_local struct frame stack[XMW_SORT_MAXDEPTH * 256 + 1];
    size_t top = 0;
    stack[top++] = (struct frame){0, n, 56};
    while (top > 0) {
        struct frame f = stack[--top];
        uint64_t *b = a + f.off;
        if (f.n <= XMW_SORT_SMALL || f.shift < 0) {
            xmw__insertion(b, f.n);
            continue;
        }
        size_t count[256] = {0}, head[256], tail[256];
        for (size_t i = 0; i < f.n; i++) count[(b[i] >> f.shift) & 0xff]++;
        size_t pos = 0;
        for (int d = 0; d < 256; d++) {
            head[d] = pos;
            pos += count[d];
            tail[d] = pos;
        }
        for (int d = 0; d < 256; d++) {
            while (head[d] < tail[d]) {
                uint64_t v = b[head[d]];
                int dv = (int)((v >> f.shift) & 0xff);
                if (dv == d) {
                    head[d]++;
                    continue;
                }
                /* cycle v to its bucket until something for bucket d comes back */
                do {
                    size_t dst = head[dv]++;
                    uint64_t t = b[dst];
                    b[dst] = v;
                    v = t;
                    dv = (int)((v >> f.shift) & 0xff);
                } while (dv != d);
                b[head[d]++] = v;
            }
        }
        pos = 0;
        for (int d = 0; d < 256; d++) {
            if (count[d] > 1) stack[top++] = (struct frame){f.off + pos, count[d], f.shift - 8};
            pos += count[d];
        }
    }
}

/* In-place sort of the 64-bit keys filling the area (fill it first). Timed:
 * the sort. Untimed afterwards: one sequential pass that checks the order
 * (ok = 0 if not sorted) and computes the checksum, a position-weighted hash
 * of the sorted keys. */
static inline xmw_result_t xmw_sort(uint8_t *base, size_t len)
{
    uint64_t *w = (uint64_t *)(void *)base;
    size_t n = xmw_words(len);
    xmw_result_t r = {0, 0, n, 1};
    double t0 = xmw_now();
    xmw__radix(w, n);
    r.seconds = xmw_now() - t0;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && w[i - 1] > w[i]) r.ok = 0;
        h = (h ^ w[i]) * 0x100000001b3ull;
    }
    r.checksum = h;
    return r;
}

#endif /* XMEM_BENCH_MAP_WORKLOADS_H */
