/* Allocation manager: allocate+free pairs per second from T local clients,
 * time to allocate a large striped allocation, striped streaming bandwidth.
 * Runs against the manager in $XMEM_MANAGER (xmem up starts one).
 *   manager_alloc [--threads T] [--pairs N] [--big SIZE --policy P] [--stream SIZE --policy P]
 *                 [--passes K]  (K write+read passes of --stream; from pass 2 on the
 *                                appliances' pages are already touched)
 *                 [--suballoc N]  (N xm_suballoc+xm_subfree pairs of 4 KiB in a 64 MiB group,
 *                                  per thread; with --pairs, the ratio to the manager's rate)
 *                 [--live N]      (N 64 KiB allocations held during the pairs: a populated table)
 *                 [--run-dir DIR] (default $XMEM_RUN_DIR: CPU per pair of the manager and the
 *                                  appliances whose pid files `xmem up` wrote there, from
 *                                  /proc/PID/stat utime+stime, and of this process) */
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <xmem/xmem.h>

#include "bench_util.h"

static int pairs = 2000;
static int passes = 1;
static int subpairs = 0;
static uint64_t total_ns_max;

typedef struct th { int failures; uint64_t ns; char first_error[256]; } th_t;

/* Count a failed call; keep the first reason (a run with failures measures something else). */
static void churn_failed(th_t *t, xm_ctx_h ctx, const char *what)
{
    if (t->failures++ == 0) snprintf(t->first_error, sizeof(t->first_error), "%s: %s", what, xm_last_error(ctx));
}

static void *churn(void *arg)
{
    th_t *t = arg;
    xm_ctx_h ctx;
    if (xm_connect(NULL, &ctx) != XM_OK) {
        fprintf(stderr, "connect: %s\n", xm_last_error(NULL));
        snprintf(t->first_error, sizeof(t->first_error), "xm_connect: %s", xm_last_error(NULL));
        t->failures = pairs;
        return NULL;
    }
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < pairs; i++) {
        xm_alloc_h a;
        if (xm_alloc(ctx, 1u << 20, "single", NULL, &a) != XM_OK) {
            churn_failed(t, ctx, "xm_alloc");
            continue;
        }
        if (xm_free(ctx, xm_region_id(a), NULL) != XM_OK) churn_failed(t, ctx, "xm_free");
        xm_alloc_close(a);
    }
    t->ns = bench_now_ns() - t0;
    xm_disconnect(ctx);
    return NULL;
}

typedef struct sub { int idx; int failures; } sub_t;

/* CPU time of this process (all its threads, libfabric's included), ns. */
static uint64_t cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

/* utime+stime of a whole process (all its threads) from /proc/PID/stat, ns; 0 if gone. */
static uint64_t proc_cpu_ns(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long ut = 0, st = 0;
    /* after ')': state(3) ... utime is field 14, stime 15 */
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                            &st) != 2) {
        return 0;
    }
    return (ut + st) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

/* The manager's pid and the appliances' pids from the pid files of `xmem up` in dir. */
static int daemon_pids(const char *dir, int *mgr_p, int *appl, int max)
{
    char path[4096];
    int n = 0;
    *mgr_p = 0;
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int is_mgr = strcmp(e->d_name, "manager.pid") == 0;
        size_t len = strlen(e->d_name);
        if (!is_mgr && !(strncmp(e->d_name, "xmemd-", 6) == 0 && len > 4 &&
                         strcmp(e->d_name + len - 4, ".pid") == 0)) {
            continue;
        }
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "r");
        int pid = 0;
        if (f == NULL) continue;
        if (fscanf(f, "%d", &pid) != 1) pid = 0;
        fclose(f);
        if (pid <= 0) continue;
        if (is_mgr) *mgr_p = pid;
        else if (n < max) appl[n++] = pid;
    }
    closedir(d);
    return n;
}

/* Sub-allocation pairs in the shared group "bench-group" (another member of it per thread). */
static void *subchurn(void *arg)
{
    sub_t *t = arg;
    xm_ctx_h ctx;
    xm_group_h g;
    if (xm_connect(NULL, &ctx) != XM_OK) {
        t->failures = subpairs;
        return NULL;
    }
    if (xm_group_attach(ctx, "bench-group", &g) != XM_OK) {
        fprintf(stderr, "attach: %s\n", xm_last_error(ctx));
        t->failures = subpairs;
        xm_disconnect(ctx);
        return NULL;
    }
    for (int i = 0; i < subpairs; i++) {
        xm_piece_t p;
        if (xm_suballoc(g, 4096, &p) != XM_OK || xm_subfree(g, p) != XM_OK) t->failures++;
    }
    xm_group_close(g);
    xm_disconnect(ctx);
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 2, live = 0;
    const char *big = NULL, *stream = NULL, *policy = "stripe:4";
    const char *run_dir = getenv("XMEM_RUN_DIR");
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--pairs") == 0) pairs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--big") == 0) big = argv[i + 1];
        else if (strcmp(argv[i], "--stream") == 0) stream = argv[i + 1];
        else if (strcmp(argv[i], "--policy") == 0) policy = argv[i + 1];
        else if (strcmp(argv[i], "--suballoc") == 0) subpairs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--live") == 0) live = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--passes") == 0) passes = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--run-dir") == 0) run_dir = argv[i + 1];
    }
    double mgr_rate = 0;
    xm_ctx_h lctx = NULL;
    uint64_t *live_ids = NULL;
    if (live > 0) {
        live_ids = calloc((size_t)live, sizeof(*live_ids));
        if (live_ids == NULL || xm_connect(NULL, &lctx) != XM_OK) {
            fprintf(stderr, "live: %s\n", xm_last_error(NULL));
            return 1;
        }
        for (int i = 0; i < live; i++) {
            xm_alloc_h a;
            if (xm_alloc(lctx, 64u << 10, "single", NULL, &a) != XM_OK) {
                fprintf(stderr, "live allocation %d: %s\n", i, xm_last_error(lctx));
                return 1;
            }
            live_ids[i] = xm_region_id(a);
            xm_alloc_close(a);
        }
        printf("%-40s %10d held\n", "allocations in the table", live);
    }
    if (pairs > 0) {
        th_t *ts = calloc((size_t)threads, sizeof(*ts));
        pthread_t *ps = calloc((size_t)threads, sizeof(*ps));
        int mgr_pid = 0, appl_pids[64], nappl = 0;
        uint64_t mgr0 = 0, appl0 = 0;
        if (run_dir != NULL) nappl = daemon_pids(run_dir, &mgr_pid, appl_pids, 64);
        if (mgr_pid > 0) mgr0 = proc_cpu_ns(mgr_pid);
        for (int i = 0; i < nappl; i++) appl0 += proc_cpu_ns(appl_pids[i]);
        uint64_t self0 = cpu_ns();
        uint64_t t0 = bench_now_ns();
        for (int i = 0; i < threads; i++) pthread_create(&ps[i], NULL, churn, &ts[i]);
        int fails = 0;
        const char *first_error = NULL;
        for (int i = 0; i < threads; i++) {
            pthread_join(ps[i], NULL);
            fails += ts[i].failures;
            if (first_error == NULL && ts[i].failures > 0) first_error = ts[i].first_error;
        }
        uint64_t ns = bench_now_ns() - t0;
        (void)total_ns_max;
        /* only the pairs that were made count (every one failing made 5 M "pairs/s") */
        int made = threads * pairs - fails;
        mgr_rate = (double)made * 1e9 / (double)ns;
        printf("%-40s %10.0f pairs/s  (%d clients x %d pairs, %d failures)\n",
               "allocate+free 1 MiB single", mgr_rate, threads, pairs, fails);
        if (first_error != NULL) printf("first failure: %s\n", first_error);
        if (made == 0) {
            fprintf(stderr, "manager_alloc: no pair was made\n");
            return 1;
        }
        /* CPU of the whole run (the clients' connects included) over the pairs made */
        double npairs = (double)threads * pairs, self_us = (double)(cpu_ns() - self0) / 1e3 / npairs;
        if (mgr_pid > 0) {
            uint64_t appl1 = 0;
            for (int i = 0; i < nappl; i++) appl1 += proc_cpu_ns(appl_pids[i]);
            double mgr_us = (double)(proc_cpu_ns(mgr_pid) - mgr0) / 1e3 / npairs;
            double appl_us = (double)(appl1 - appl0) / 1e3 / npairs;
            printf("%-40s %10.1f us/pair (manager %.1f, %d appliances %.1f, client %.1f)\n",
                   "CPU per pair", mgr_us + appl_us + self_us, mgr_us, nappl, appl_us, self_us);
        } else {
            printf("%-40s %10s us/pair (client %.1f; --run-dir or XMEM_RUN_DIR for the daemons)\n",
                   "CPU per pair", "-", self_us);
        }
        free(ts);
        free(ps);
    }
    if (subpairs > 0) {
        xm_ctx_h gctx;
        xm_group_h g;
        if (xm_connect(NULL, &gctx) != XM_OK ||
            xm_group_create(gctx, 64u << 20, "bench-group", &g) != XM_OK) {
            fprintf(stderr, "group: %s\n", xm_last_error(gctx));
            return 1;
        }
        sub_t *ts = calloc((size_t)threads, sizeof(*ts));
        pthread_t *ps = calloc((size_t)threads, sizeof(*ps));
        uint64_t t0 = bench_now_ns();
        for (int i = 0; i < threads; i++) {
            ts[i].idx = i;
            pthread_create(&ps[i], NULL, subchurn, &ts[i]);
        }
        int fails = 0;
        for (int i = 0; i < threads; i++) {
            pthread_join(ps[i], NULL);
            fails += ts[i].failures;
        }
        uint64_t ns = bench_now_ns() - t0;
        double rate = (double)threads * subpairs * 1e9 / (double)ns;
        printf("%-40s %10.0f pairs/s  (%d clients x %d pairs, %d failures)", "suballoc+subfree 4 KiB",
               rate, threads, subpairs, fails);
        if (mgr_rate > 0) printf("  = %.1fx the manager's rate", rate / mgr_rate);
        printf("\n");
        free(ts);
        free(ps);
        xm_group_close(g);
        xm_free(gctx, 0, "bench-group");
        xm_disconnect(gctx);
    }
    xm_ctx_h ctx;
    if ((big != NULL || stream != NULL) && xm_connect(NULL, &ctx) != XM_OK) {
        fprintf(stderr, "connect: %s\n", xm_last_error(NULL));
        return 1;
    }
    if (big != NULL) {
        uint64_t size;
        xm_parse_size(big, &size);
        uint64_t best = UINT64_MAX;
        for (int r = 0; r < 5; r++) {
            xm_alloc_h a;
            uint64_t t0 = bench_now_ns();
            xm_status_t s = xm_alloc(ctx, size, policy, NULL, &a);
            uint64_t ns = bench_now_ns() - t0;
            if (s != XM_OK) {
                fprintf(stderr, "alloc %s %s: %s\n", big, policy, xm_last_error(ctx));
                return 1;
            }
            if (ns < best) best = ns;
            xm_free(ctx, xm_region_id(a), NULL);
            xm_alloc_close(a);
        }
        printf("%-40s %10.3f ms   (best of 5)\n", "allocate striped", (double)best / 1e6);
    }
    if (stream != NULL) {
        uint64_t size;
        xm_parse_size(stream, &size);
        xm_alloc_h a;
        if (xm_alloc(ctx, size, policy, NULL, &a) != XM_OK) {
            fprintf(stderr, "alloc: %s\n", xm_last_error(ctx));
            return 1;
        }
        const size_t op = 1u << 20;
        const int depth = 16;
        char *buf = malloc(op * depth);
        memset(buf, 1, op * depth);
        for (int w = 0; w < 2 * passes; w++) {
            int rd = w % 2;
            uint64_t t0 = bench_now_ns(), c0 = cpu_ns();
            for (uint64_t off = 0; off < size; off += op * depth) {
                xm_op_t ops[16];
                int n = 0;
                for (int k = 0; k < depth && off + (uint64_t)k * op < size; k++, n++) {
                    ops[k] = (xm_op_t){.opcode = rd ? XM_OP_READ : XM_OP_WRITE, .region = a,
                                       .offset = off + (uint64_t)k * op, .buf = buf + (size_t)k * op,
                                       .length = op};
                }
                if (xm_submit(ctx, ops, (size_t)n) != XM_OK) {
                    fprintf(stderr, "io: %s\n", xm_last_error(ctx));
                    return 1;
                }
            }
            uint64_t ns = bench_now_ns() - t0, cpu = cpu_ns() - c0;
            char what[48];
            if (w < 2) snprintf(what, sizeof(what), "striped streaming %s", rd ? "read" : "write");
            else snprintf(what, sizeof(what), "striped streaming %s, pass %d", rd ? "read" : "write", w / 2 + 1);
            printf("%-40s %10.2f GB/s (%s, %s, 1 MiB ops, depth 16, client CPU %3.0f%%)\n", what,
                   (double)size / (double)ns, stream, policy, 100.0 * (double)cpu / (double)ns);
        }
        xm_free(ctx, xm_region_id(a), NULL);
        xm_alloc_close(a);
        free(buf);
    }
    if (big != NULL || stream != NULL) xm_disconnect(ctx);
    if (lctx != NULL) {
        for (int i = 0; i < live; i++) xm_free(lctx, live_ids[i], NULL);
        xm_disconnect(lctx);
    }
    free(live_ids);
    return 0;
}
