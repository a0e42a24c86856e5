/* region_create: how long xm_region_create of a 64 GiB region takes, against
 * what it cannot beat measured in the same run: the control RPC round trip
 * (xm_appliance_stat) and a local mmap(64 GiB, MAP_NORESERVE) + munmap.
 *
 *   region_create [--appliance HOST:PORT] [--secret-file PATH] [--size 64G]
 *                 [--count N] [--json]
 *
 * The appliance's pool must hold --size bytes (xmemd --pool 64G: the pool is
 * sparse and reserved, so this works on a machine with less memory).
 */
#include <errno.h>
#include <stdbool.h>
#include <sys/mman.h>

#include <xmem/xmem.h>

#include "bench_util.h"

#define TARGET_MS 1.0

typedef struct stats { double p50_ms, max_ms; } stats_t;

static stats_t stats_of(uint64_t *ns, size_t n)
{
    stats_t s = {(double)bench_quantile(ns, n, 0.5, 0) / 1e6, (double)ns[n - 1] / 1e6};
    return s;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: region_create [--appliance HOST:PORT] [--secret-file PATH] [--size 64G]\n"
                 "                     [--count N (default 20)] [--json]\n");
}

int main(int argc, char **argv)
{
    xm_connect_opts_t opts = XM_CONNECT_OPTS_INIT;
    const char *size_text = "64G";
    size_t count = 20;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (strcmp(a, "--json") == 0) {
            json = true;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (has && strcmp(a, "--appliance") == 0) {
            opts.appliance = argv[++i];
        } else if (has && strcmp(a, "--secret-file") == 0) {
            opts.secret_file = argv[++i];
        } else if (has && strcmp(a, "--size") == 0) {
            size_text = argv[++i];
        } else if (has && strcmp(a, "--count") == 0) {
            char *end;
            unsigned long v = strtoul(argv[++i], &end, 10);
            if (*end != '\0' || v < 1 || v > 100000) {
                fprintf(stderr, "region_create: --count: a number from 1 to 100000\n");
                return 2;
            }
            count = v;
        } else {
            fprintf(stderr, "region_create: unexpected argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    uint64_t size;
    if (xm_parse_size(size_text, &size) != XM_OK || size == 0) {
        fprintf(stderr, "region_create: --size: expected a size such as 64G\n");
        return 2;
    }

    xm_ctx_h ctx;
    xm_status_t s = xm_connect(&opts, &ctx);
    if (s != XM_OK) {
        fprintf(stderr, "region_create: connect: %s: %s\n", xm_status_str(s), xm_last_error(NULL));
        return 1;
    }
    int rc = 1;
    const size_t stat_iters = 2000;
    size_t n_ns = count > stat_iters ? count : stat_iters;
    uint64_t *create_ns = calloc(n_ns, sizeof(uint64_t));
    uint64_t *destroy_ns = calloc(n_ns, sizeof(uint64_t));
    uint64_t *mmap_ns = calloc(n_ns, sizeof(uint64_t));
    uint64_t *stat_ns = calloc(n_ns, sizeof(uint64_t));
    if (create_ns == NULL || destroy_ns == NULL || mmap_ns == NULL || stat_ns == NULL) goto out;

    xm_appliance_info_t ai;
    s = xm_appliance_stat(ctx, &ai);
    if (s != XM_OK) {
        fprintf(stderr, "region_create: appliance stat: %s: %s\n", xm_status_str(s), xm_last_error(ctx));
        goto out;
    }
    if (ai.pool_size - ai.pool_used < size) {
        fprintf(stderr, "region_create: the appliance has %llu free bytes of %llu, fewer than %llu: "
                        "start xmemd with --pool %s or more\n",
                (unsigned long long)(ai.pool_size - ai.pool_used), (unsigned long long)ai.pool_size,
                (unsigned long long)size, size_text);
        goto out;
    }

    /* the RPC cost: the smallest control round trip (warm-up first) */
    for (size_t i = 0; i < stat_iters / 10 + stat_iters; i++) {
        uint64_t t0 = bench_now_ns();
        s = xm_appliance_stat(ctx, &ai);
        uint64_t t = bench_now_ns() - t0;
        if (s != XM_OK) {
            fprintf(stderr, "region_create: appliance stat: %s: %s\n", xm_status_str(s), xm_last_error(ctx));
            goto out;
        }
        if (i >= stat_iters / 10) stat_ns[i - stat_iters / 10] = t;
    }

    /* create and destroy; one untimed round first */
    for (size_t i = 0; i < count + 1; i++) {
        xm_region_h r;
        uint64_t t0 = bench_now_ns();
        s = xm_region_create(ctx, size, NULL, &r);
        uint64_t t1 = bench_now_ns();
        if (s != XM_OK) {
            fprintf(stderr, "region_create: create of %llu bytes: %s: %s\n", (unsigned long long)size,
                    xm_status_str(s), xm_last_error(ctx));
            goto out;
        }
        uint64_t id = xm_region_id(r);
        if (xm_region_size(r) < size) {
            fprintf(stderr, "region_create: got a region of %llu bytes, asked for %llu\n",
                    (unsigned long long)xm_region_size(r), (unsigned long long)size);
            xm_region_close(r);
            xm_region_destroy(ctx, id, NULL);
            goto out;
        }
        xm_region_close(r);
        uint64_t t2 = bench_now_ns();
        s = xm_region_destroy(ctx, id, NULL);
        uint64_t t3 = bench_now_ns();
        if (s != XM_OK) {
            fprintf(stderr, "region_create: destroy: %s: %s\n", xm_status_str(s), xm_last_error(ctx));
            goto out;
        }
        if (i > 0) {
            create_ns[i - 1] = t1 - t0;
            destroy_ns[i - 1] = t3 - t2;
        }
    }

    /* local reference: reserve and release the same address space */
    for (size_t i = 0; i < count + 1; i++) {
        uint64_t t0 = bench_now_ns();
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "region_create: local mmap of %llu bytes: %s\n", (unsigned long long)size,
                    strerror(errno));
            goto out;
        }
        munmap(p, size);
        if (i > 0) mmap_ns[i - 1] = bench_now_ns() - t0;
    }

    stats_t c = stats_of(create_ns, count), d = stats_of(destroy_ns, count);
    stats_t m = stats_of(mmap_ns, count), st = stats_of(stat_ns, stat_iters);
    bool met = c.p50_ms <= TARGET_MS;
    if (json) {
        printf("{\"size\":%llu,\"count\":%zu,\"provider\":\"%s\",\"backing\":\"%s\","
               "\"create_p50_ms\":%.4f,\"create_max_ms\":%.4f,\"destroy_p50_ms\":%.4f,"
               "\"destroy_max_ms\":%.4f,\"rpc_p50_ms\":%.4f,\"mmap_p50_ms\":%.4f,"
               "\"create_over_rpc\":%.2f,\"create_over_mmap\":%.2f,\"target_ms\":%.1f,\"met\":%s}\n",
               (unsigned long long)size, count, ai.provider, ai.backing, c.p50_ms, c.max_ms, d.p50_ms,
               d.max_ms, st.p50_ms, m.p50_ms, c.p50_ms / st.p50_ms, c.p50_ms / m.p50_ms, TARGET_MS,
               met ? "true" : "false");
    } else {
        printf("region_create: %s region, %zu creates + destroys (after one warm-up), "
               "appliance pool %llu GiB %s over %s\n", size_text, count,
               (unsigned long long)(ai.pool_size >> 30), ai.backing, ai.provider);
        printf("%-36s %10s %10s %12s\n", "what", "p50 ms", "max ms", "p50 / rpc");
        printf("%-36s %10.3f %10.3f %11.1fx\n", "xm_region_create", c.p50_ms, c.max_ms, c.p50_ms / st.p50_ms);
        printf("%-36s %10.3f %10.3f %11.1fx\n", "xm_region_destroy", d.p50_ms, d.max_ms, d.p50_ms / st.p50_ms);
        printf("%-36s %10.3f %10.3f %11.1fx\n", "xm_appliance_stat (RPC round trip)", st.p50_ms,
               st.max_ms, 1.0);
        printf("%-36s %10.3f %10.3f %11.1fx\n", "local mmap+munmap, MAP_NORESERVE", m.p50_ms, m.max_ms,
               m.p50_ms / st.p50_ms);
        printf("create p50 / local mmap p50: %.1fx; target: create <= %.1f ms: %s\n",
               c.p50_ms / m.p50_ms, TARGET_MS, met ? "met" : "NOT met");
    }
    rc = 0;
out:
    free(create_ns);
    free(destroy_ns);
    free(mmap_ns);
    free(stat_ns);
    xm_disconnect(ctx);
    return rc;
}
