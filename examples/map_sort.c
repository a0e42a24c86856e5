/* Sort a data set that lives on an appliance through a mapping whose local
 * cache is a quarter of its size, and show what it cost in local memory.
 *
 *   map_sort [SIZE]     (default 64M; XMEM_APPLIANCE, XMEM_SECRET_FILE)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <xmem/xmem.h>

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Rss of the VMA at addr from /proc/self/smaps, in KiB. */
static unsigned long vma_rss_kb(const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0;
    unsigned long kb = 0, lo, hi;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strstr(line, " rw") != NULL) {
            in = lo <= (unsigned long)addr && (unsigned long)addr < hi;
        } else if (in && sscanf(line, "Rss: %lu kB", &kb) == 1) {
            break;
        }
    }
    if (f != NULL) fclose(f);
    return kb;
}

int main(int argc, char **argv)
{
    /* fewer libfabric receive buffers per client context (README, "Configuration") */
    setenv("FI_OFI_RXM_MSG_RX_SIZE", "16", 0);
    uint64_t size = 64u << 20;
    if (argc > 1 && xm_parse_size(argv[1], &size) != XM_OK) {
        fprintf(stderr, "usage: map_sort [SIZE]\n");
        return 2;
    }
    xm_ctx_h ctx;
    xm_status_t s = xm_connect(NULL, &ctx);
    if (s != XM_OK) {
        fprintf(stderr, "map_sort: %s\n", xm_last_error(NULL));
        return 1;
    }
    xm_region_h r;
    if ((s = xm_region_create(ctx, size, NULL, &r)) != XM_OK) {
        fprintf(stderr, "map_sort: region: %s\n", xm_last_error(ctx));
        return 1;
    }
    uint64_t *a;
    xm_map_opts_t o = {.size = sizeof(xm_map_opts_t), .cache_bytes = size / 4};
    if ((s = xm_map(ctx, r, 0, size, &o, (void **)&a)) != XM_OK) {
        fprintf(stderr, "map_sort: xm_map: %s\n", xm_last_error(ctx));
        return 1;
    }
    size_t n = size / 8;
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        a[i] = x;
    }
    double t0 = now();
    qsort(a, n, sizeof(uint64_t), cmp_u64);
    double t = now() - t0;
    size_t bad = 0;
    for (size_t i = 1; i < n; i++) bad += a[i - 1] > a[i];
    unsigned long rss = vma_rss_kb(a);
    s = xm_sync(a, size);
    xm_map_stats_t st = XM_MAP_STATS_INIT;
    xm_map_stat(a, &st);
    printf("sorted %zu keys (%llu MiB on the appliance) in %.2f s through a %llu MiB local cache: %s\n",
           n, (unsigned long long)(size >> 20), t, (unsigned long long)(st.budget_bytes >> 20),
           bad == 0 ? "in order" : "NOT SORTED");
    printf("resident in the mapping: %lu KiB (smaps Rss); faults %llu, read-ahead blocks %llu, "
           "fetched %llu MiB, evictions %llu, pages written back %llu; xm_sync: %s\n",
           rss, (unsigned long long)st.faults, (unsigned long long)st.readahead_blocks,
           (unsigned long long)(st.fetched_bytes >> 20), (unsigned long long)st.evictions,
           (unsigned long long)st.writeback_pages, xm_status_str(s));
    /* the sorted data is on the appliance: check its ends with plain reads */
    uint64_t first, last;
    xm_read(r, 0, &first, 8);
    xm_read(r, size - 8, &last, 8);
    printf("on the appliance: first key %016llx <= last key %016llx: %s\n", (unsigned long long)first,
           (unsigned long long)last, first <= last ? "yes" : "no");
    xm_unmap(a);
    uint64_t id = xm_region_id(r);
    xm_region_close(r);
    xm_region_destroy(ctx, id, NULL);
    xm_disconnect(ctx);
    return bad == 0 && s == XM_OK ? 0 : 1;
}
