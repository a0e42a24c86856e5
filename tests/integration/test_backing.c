/* Pool backings: hugetlb pages reserved at region creation. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static xt_appliance_t app;
static long saved_pages = -1;

static long read_long(const char *path)
{
    FILE *f = fopen(path, "r");
    long v = -1;
    if (f != NULL) {
        if (fscanf(f, "%ld", &v) != 1) v = -1;
        fclose(f);
    }
    return v;
}

static bool write_long(const char *path, long v)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) return false;
    bool ok = fprintf(f, "%ld\n", v) > 0;
    return fclose(f) == 0 && ok;
}

#define NR_HUGE "/proc/sys/vm/nr_hugepages"
#define FREE_HUGE "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"

static void teardown(void)
{
    if (app.pid > 0) cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly");
    xt_cleanup(&app);
    if (saved_pages >= 0) write_long(NR_HUGE, saved_pages);
}

Test(backing, hugetlb_pool_reserves_pages_per_region, .fini = teardown, .timeout = 60)
{
    saved_pages = read_long(NR_HUGE);
    if (saved_pages < 0 || access(FREE_HUGE, R_OK) != 0) {
        cr_skip_test("no 2 MiB hugetlb support in this kernel");
    }
    /* 32 huge pages = 64 MiB to serve; more pages than that may already exist */
    if (!write_long(NR_HUGE, saved_pages + 32) || read_long(FREE_HUGE) < 32) {
        cr_skip_test("cannot reserve 32 huge pages (not root, or memory too fragmented)");
    }
    long free0 = read_long(FREE_HUGE);
    xt_start(&app, &(xt_opts_t){.pool = "64M", .backing = "hugetlb"});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_appliance_info_t info;
    cr_assert_eq(xm_appliance_stat(ctx, &info), XM_OK);
    cr_assert_str_eq(info.backing, "hugetlb");
    cr_assert_eq(info.extent_size, 2u << 20);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 20u << 20, "huge", &r), XM_OK, "%s", xm_last_error(ctx));
    static uint8_t data[20u << 20], got[20u << 20];
    xt_fill(data, sizeof(data), 3);
    cr_assert_eq(xm_write(r, 0, data, sizeof(data)), XM_OK);
    cr_assert_eq(xm_read(r, 0, got, sizeof(got)), XM_OK);
    cr_assert(memcmp(data, got, sizeof(got)) == 0);
    long used = free0 - read_long(FREE_HUGE);
    cr_assert_geq(used, 10, "the region's data is not in huge pages (%ld used)", used);
    /* destroying gives the huge pages back */
    cr_assert_eq(xm_region_destroy(ctx, 0, "huge"), XM_OK);
    xm_region_close(r);
    cr_assert_eq(read_long(FREE_HUGE), free0, "huge pages not returned");
    xm_disconnect(ctx);
}

Test(backing, hugetlb_without_pages_fails_cleanly, .fini = teardown, .timeout = 60)
{
    saved_pages = read_long(NR_HUGE);
    if (saved_pages < 0 || access(FREE_HUGE, R_OK) != 0) {
        cr_skip_test("no 2 MiB hugetlb support in this kernel");
    }
    if (read_long(FREE_HUGE) != 0 && !write_long(NR_HUGE, 0)) {
        cr_skip_test("huge pages are reserved and cannot be released here");
    }
    if (read_long(FREE_HUGE) != 0) cr_skip_test("huge pages in use by someone else");
    xt_start(&app, &(xt_opts_t){.pool = "64M", .backing = "hugetlb"});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    /* no huge page to back it: refused at creation, not a SIGBUS on first touch */
    cr_assert_eq(xm_region_create(ctx, 4u << 20, NULL, &r), XM_ERR_NO_SPACE);
    xm_appliance_info_t info;
    cr_assert_eq(xm_appliance_stat(ctx, &info), XM_OK);
    cr_assert_eq(info.pool_used, 0, "a failed hugetlb region left extents allocated");
    cr_assert_eq(info.regions, 0);
    xm_disconnect(ctx);
}
