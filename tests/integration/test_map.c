/* Mapped external memory against a real xmemd: loads and stores through
 * xm_map, bounded cache, dirty-only write-back, failures, fork. */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static xt_appliance_t app;
static bool started;

static void teardown(void)
{
    if (started) {
        cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
        xt_cleanup(&app);
        started = false;
    }
}

/* Skip (with the reason) where this kernel or user cannot use userfaultfd. */
static void need_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    if (fd < 0) cr_skip_test("userfaultfd unavailable (%m): needs root or vm.unprivileged_userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = (1 << 15) | (1 << 16) | (1 << 14)};
    int rc = ioctl(fd, UFFDIO_API, &api);
    close(fd);
    if (rc != 0) cr_skip_test("userfaultfd lacks WP_ASYNC/MOVE/POISON (Linux >= 6.8 needed)");
}

static void start(const char *provider, const char *pool)
{
    need_uffd();
    xt_start(&app, &(xt_opts_t){.provider = provider, .pool = pool});
    started = true;
}

/* Rss of the VMA that starts at addr, from /proc/self/smaps (bytes). */
static uint64_t vma_rss(const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    cr_assert_not_null(f);
    char line[512];
    bool in = false;
    uint64_t rss = UINT64_MAX;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') == line + strcspn(line, "-") &&
            line[strcspn(line, " ") - 1] != ':') {
            in = lo <= (uintptr_t)addr && (uintptr_t)addr < hi;
            continue;
        }
        unsigned long kb;
        if (in && sscanf(line, "Rss: %lu kB", &kb) == 1) {
            rss = kb * 1024;
            break;
        }
    }
    fclose(f);
    cr_assert_neq(rss, UINT64_MAX, "no VMA at %p in smaps", addr);
    return rss;
}

static xm_map_stats_t stat_of(const void *addr)
{
    xm_map_stats_t st;
    cr_assert_eq(xm_map_stat(addr, &st), XM_OK);
    return st;
}

XT_TEST_PROVIDERS(map, loads_and_stores_round_trip, .fini = teardown, .timeout = 120)
{
    start(provider, "256M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    const uint64_t size = (8u << 20) + 12345; /* the last page is partial */
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, size, "mapped", &r), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *data = malloc(size), *back = malloc(size);
    xt_fill(data, size, 7);
    cr_assert_eq(xm_write(r, 0, data, size), XM_OK);

    uint8_t *p;
    cr_assert_eq(xm_map(ctx, r, 0, size, NULL, (void **)&p), XM_OK, "%s", xm_last_error(ctx));
    /* loads see what xm_write put there, to the last byte */
    cr_assert(memcmp(p, data, size) == 0, "mapped bytes differ from the region's");
    xm_map_stats_t st = stat_of(p);
    cr_assert_gt(st.faults, 0);
    cr_assert_geq(st.fetched_bytes, size);

    /* stores go back with xm_sync and xm_read sees them */
    for (uint64_t off = 0; off < size; off += 4096 * 3) p[off] ^= 0x5a, data[off] ^= 0x5a;
    p[size - 1] = 0x42;
    data[size - 1] = 0x42;
    cr_assert_eq(xm_sync(p, size), XM_OK);
    cr_assert_eq(xm_read(r, 0, back, size), XM_OK);
    cr_assert(memcmp(back, data, size) == 0, "the appliance lacks stores made through the mapping");

    /* an offset mapping of the same region, read-ahead off, 4 KiB fetches */
    xm_map_opts_t o = {.fetch_size = 4096, .flags = XM_MAP_NO_READAHEAD};
    uint8_t *q;
    cr_assert_eq(xm_map(ctx, r, 1u << 20, 1u << 20, &o, (void **)&q), XM_OK);
    cr_assert(memcmp(q, data + (1u << 20), 1u << 20) == 0);
    cr_assert_eq(stat_of(q).faults, 256, "one fault per page without read-ahead");
    cr_assert_eq(stat_of(q).readahead_blocks, 0);

    /* and writes made with xm_write show up in a fresh mapping */
    xt_fill(data, 65536, 8);
    cr_assert_eq(xm_write(r, 3u << 20, data, 65536), XM_OK);
    cr_assert_eq(xm_unmap(p), XM_OK);
    cr_assert_eq(xm_map(ctx, r, 0, size, NULL, (void **)&p), XM_OK);
    cr_assert(memcmp(p + (3u << 20), data, 65536) == 0);
    cr_assert_eq(xm_unmap(p), XM_OK);
    cr_assert_eq(xm_unmap(q), XM_OK);

    cr_assert_eq(xm_map(ctx, r, 1, 4096, NULL, (void **)&p), XM_ERR_INVALID, "unaligned offset");
    cr_assert_eq(xm_map(ctx, r, 0, size + 1, NULL, (void **)&p), XM_ERR_RANGE);
    cr_assert_eq(xm_map(ctx, r, 0, 4096, &(xm_map_opts_t){.fetch_size = 3000}, (void **)&p),
                 XM_ERR_INVALID, "fetch size not a power of two");
    cr_assert_eq(xm_unmap(data), XM_ERR_INVALID, "not a mapping");
    free(data);
    free(back);
    xm_region_close(r);
    xm_disconnect(ctx);
}
