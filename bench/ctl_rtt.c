/* Control round trip: p50/p99 of one small request/reply on the control connection,
 * xm_alloc_list against the manager or xm_appliance_stat against an appliance.
 * Uses only the public API with default options (credentials from the environment),
 * so the same source builds against older trees for an A/B in one run.
 *   ctl_rtt [--manager HOST:PORT | --appliance HOST:PORT] [--iters N] [--runs R]
 * Without an address: $XMEM_MANAGER (xm_alloc_list), else $XMEM_APPLIANCE (xm_appliance_stat).
 * Each run: N/10 warm-up calls, then N timed calls; one line per run and the median run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <xmem/xmem.h>

#include "bench_util.h"

static uint64_t self_cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

static xm_status_t one_call(xm_ctx_h ctx, int manager)
{
    if (manager) {
        xm_alloc_info_t *infos = NULL;
        size_t n = 0;
        xm_status_t s = xm_alloc_list(ctx, &infos, &n);
        free(infos);
        return s;
    }
    xm_appliance_info_t ai;
    return xm_appliance_stat(ctx, &ai);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *manager = NULL, *appliance = NULL;
    int iters = 20000, runs = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--manager") == 0 && i + 1 < argc) manager = argv[++i];
        else if (strcmp(argv[i], "--appliance") == 0 && i + 1 < argc) appliance = argv[++i];
        else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) iters = atoi(argv[++i]);
        else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) runs = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: ctl_rtt [--manager HOST:PORT | --appliance HOST:PORT] "
                            "[--iters N] [--runs R]\n");
            return 2;
        }
    }
    if (iters < 100 || runs < 1 || runs > 64) {
        fprintf(stderr, "ctl_rtt: --iters >= 100, --runs 1..64\n");
        return 2;
    }
    /* the address goes through the environment: xm_connect(NULL) reads it in every tree */
    if (manager != NULL) {
        setenv("XMEM_MANAGER", manager, 1);
    } else if (appliance != NULL) {
        unsetenv("XMEM_MANAGER");
        setenv("XMEM_APPLIANCE", appliance, 1);
    }
    const char *m = getenv("XMEM_MANAGER");
    int to_manager = m != NULL && m[0] != '\0';
    xm_ctx_h ctx;
    if (xm_connect(NULL, &ctx) != XM_OK) {
        fprintf(stderr, "ctl_rtt: connect: %s\n", xm_last_error(NULL));
        return 1;
    }
    const char *what = to_manager ? "xm_alloc_list (manager)" : "xm_appliance_stat (appliance)";
    uint64_t *ns = calloc((size_t)iters, sizeof(*ns));
    double p50s[64], p99s[64], cpus[64];
    if (ns == NULL) return 1;
    printf("ctl_rtt: %s, %d runs of %d calls (+%d warm-up), one connection, client blocking\n",
           what, runs, iters, iters / 10);
    printf("%-6s %10s %10s %10s %14s\n", "run", "p50 us", "p99 us", "mean us", "client CPU us");
    for (int r = 0; r < runs; r++) {
        for (int i = 0; i < iters / 10; i++) {
            if (one_call(ctx, to_manager) != XM_OK) goto fail;
        }
        uint64_t sum = 0, c0 = self_cpu_ns();
        for (int i = 0; i < iters; i++) {
            uint64_t t0 = bench_now_ns();
            if (one_call(ctx, to_manager) != XM_OK) goto fail;
            ns[i] = bench_now_ns() - t0;
            sum += ns[i];
        }
        uint64_t cpu = self_cpu_ns() - c0;
        p50s[r] = (double)bench_quantile(ns, (size_t)iters, 0.50, 0) / 1e3;
        p99s[r] = (double)bench_quantile(ns, (size_t)iters, 0.99, 1) / 1e3;
        cpus[r] = (double)cpu / 1e3 / iters;
        printf("%-6d %10.1f %10.1f %10.1f %14.1f\n", r + 1, p50s[r], p99s[r],
               (double)sum / 1e3 / iters, cpus[r]);
    }
    qsort(p50s, (size_t)runs, sizeof(double), cmp_double);
    qsort(p99s, (size_t)runs, sizeof(double), cmp_double);
    qsort(cpus, (size_t)runs, sizeof(double), cmp_double);
    printf("%-6s %10.1f %10.1f %10s %14.1f\n", "median", p50s[runs / 2], p99s[runs / 2], "",
           cpus[runs / 2]);
    free(ns);
    xm_disconnect(ctx);
    return 0;
fail:
    fprintf(stderr, "ctl_rtt: %s: %s\n", what, xm_last_error(ctx));
    free(ns);
    xm_disconnect(ctx);
    return 1;
}
