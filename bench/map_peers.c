/* map_peers: what a user would use instead of an xmem mapping, same workloads
 * (bench/map_workloads.h), same local memory (issue 4).
 *
 * For a working set of --size bytes and local-memory fractions (--fractions),
 * each workload runs on:
 *   local  plain anonymous memory, no limit (the baseline, run once per workload)
 *   file   a MAP_SHARED mapping of a fresh (unlinked) file under --dir, in a
 *          cgroup v1 memory cgroup limited to fraction * size + --allowance
 *   zram   anonymous memory in such a cgroup, the kernel swapping to zram (the
 *          swap device is set up by scripts/bench-map-peers.sh and passed with
 *          --zram; without it the zram rows are skipped)
 * Every measurement runs in a forked child that writes its own pid into
 * cgroup.procs of a cgroup made for it (<cgroup-root>/xmem-bench-<pid>-<n>)
 * before it maps anything, so the limit applies to it alone; the cgroup is
 * removed after the child exits. The child fills the area (timed separately,
 * "fill s"), then runs one workload (timed, "seconds"). Checksums must equal
 * the baseline's; the exit status is 1 if any differs or a sort self-check
 * fails. Prints one table.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "map_workloads.h"

enum { SYS_LOCAL, SYS_FILE, SYS_ZRAM, SYS_COUNT };
static const char *const sys_name[SYS_COUNT] = {"local", "file", "zram"};

enum { WL_SCAN, WL_GUPS, WL_PAGES, WL_SORT, WL_COUNT };
static const char *const wl_name[WL_COUNT] = {"scan", "gups", "pages", "sort"};

#define MAX_FRACTIONS 16

typedef struct {
    size_t size;
    int fractions[MAX_FRACTIONS];
    int nfractions;
    int workloads[WL_COUNT];
    int systems[SYS_COUNT];
    const char *dir;
    const char *zram; /* /dev/zramN, or NULL */
    const char *cgroup_root;
    size_t allowance;
    int timeout_s;
    int budget_s; /* gups/pages on file and zram stop after this long */
    int base_reps; /* the local baseline runs this often; the fastest counts */
    uint64_t gups_updates;
    uint64_t page_ops;
} opts_t;

/* what a child sends back through its pipe */
typedef struct {
    int stage_failed; /* 0 ok; else which step failed (see child_stage_str) */
    int err;          /* errno of the failed step */
    double fill_s;
    xmw_result_t r;
    uint64_t zram_orig, zram_compr; /* mm_stat at the end of the workload */
} child_msg_t;

typedef struct {
    int done;        /* a result exists */
    const char *why; /* not run / failed: the reason */
    double fill_s;
    xmw_result_t r;
    long majflt;
    uint64_t max_usage; /* memory.max_usage_in_bytes of its cgroup */
    uint64_t zram_orig, zram_compr;
    uint64_t planned;      /* operations asked for */
    double est_s;          /* seconds, scaled to planned ops if stopped early */
    uint64_t ref_checksum; /* local checksum for the same ops; valid if has_ref */
    int has_ref;
} meas_t;

static const char *child_stage_str(int s)
{
    switch (s) {
    case 1: return "joining the cgroup";
    case 2: return "creating the file";
    case 3: return "mmap";
    default: return "?";
    }
}

/* for the signal handler: the running child and its cgroup */
static volatile pid_t g_child = -1;
static char g_cgroup[512];

static void on_signal(int sig)
{
    pid_t c = g_child;
    if (c > 0) {
        kill(c, SIGKILL);
        waitpid(c, NULL, 0);
    }
    if (g_cgroup[0] != '\0') {
        for (int i = 0; i < 50 && rmdir(g_cgroup) != 0 && errno == EBUSY; i++) {
            struct timespec ts = {0, 20000000};
            nanosleep(&ts, NULL);
        }
    }
    _exit(128 + sig);
}

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    int e = errno;
    close(fd);
    errno = e;
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static int read_u64_file(const char *path, uint64_t *v)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) return -1;
    int ok = fscanf(f, "%" SCNu64, v) == 1;
    fclose(f);
    return ok ? 0 : -1;
}

/* "4G", "512M", "65536" -> bytes; 0 on error */
static size_t parse_size(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    default: break;
    }
    if (*end == 'i' || *end == 'B') end++;
    if (*end == 'B') end++;
    return *end == '\0' ? (size_t)v : 0;
}

static void fmt_size(char *buf, size_t len, uint64_t v)
{
    if (v >= (1ull << 30) && v % (1ull << 30) == 0) {
        snprintf(buf, len, "%" PRIu64 " GiB", v >> 30);
    } else if (v >= (1ull << 20)) {
        snprintf(buf, len, "%.0f MiB", (double)v / (1 << 20));
    } else {
        snprintf(buf, len, "%" PRIu64 " B", v);
    }
}

/* the zram device's mm_stat: orig_data_size compr_data_size ... */
static void zram_mm_stat(const char *dev, uint64_t *orig, uint64_t *compr)
{
    char path[256];
    *orig = *compr = 0;
    const char *name = strrchr(dev, '/');
    snprintf(path, sizeof(path), "/sys/block/%s/mm_stat", name ? name + 1 : dev);
    FILE *f = fopen(path, "re");
    if (f == NULL) return;
    if (fscanf(f, "%" SCNu64 " %" SCNu64, orig, compr) != 2) *orig = *compr = 0;
    fclose(f);
}

/* is dev an active swap area of at least min_bytes? */
static int swap_active(const char *dev, size_t min_bytes, char *why, size_t whylen)
{
    FILE *f = fopen("/proc/swaps", "re");
    char line[512];
    if (f == NULL) {
        snprintf(why, whylen, "no /proc/swaps");
        return 0;
    }
    int found = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        char name[256], type[64];
        unsigned long long kb;
        if (sscanf(line, "%255s %63s %llu", name, type, &kb) == 3 && strcmp(name, dev) == 0) {
            found = 1;
            if (kb * 1024ull < (unsigned long long)min_bytes) {
                snprintf(why, whylen, "%s is a swap area of only %llu KiB", dev, kb);
                found = 0;
            }
        }
    }
    fclose(f);
    if (!found && why[0] == '\0') snprintf(why, whylen, "%s is not an active swap area", dev);
    return found;
}

/* can we make a memory cgroup with a limit under root? */
static int cgroup_usable(const char *root, char *why, size_t whylen)
{
    char path[512], lim[600];
    snprintf(lim, sizeof(lim), "%s/memory.limit_in_bytes", root);
    if (access(lim, R_OK) != 0) {
        snprintf(why, whylen, "no cgroup v1 memory controller at %s (%s)", root, strerror(errno));
        return 0;
    }
    snprintf(path, sizeof(path), "%s/xmem-bench-%d-probe", root, (int)getpid());
    if (mkdir(path, 0755) != 0) {
        snprintf(why, whylen, "cannot create a memory cgroup under %s (%s)", root, strerror(errno));
        return 0;
    }
    snprintf(lim, sizeof(lim), "%s/memory.limit_in_bytes", path);
    int ok = write_file(lim, "67108864") == 0;
    if (!ok) snprintf(why, whylen, "cannot set memory.limit_in_bytes (%s)", strerror(errno));
    rmdir(path);
    return ok;
}

/* The child: join the cgroup, map, fill, run; report through fd. Never returns. */
static void child_run(const opts_t *o, int sys, int wl, const char *cgroup, int fd)
{
    child_msg_t m;
    memset(&m, 0, sizeof(m));
    uint8_t *base = MAP_FAILED;
    if (cgroup != NULL) {
        char procs[600], pid[32];
        snprintf(procs, sizeof(procs), "%s/cgroup.procs", cgroup);
        snprintf(pid, sizeof(pid), "%d", (int)getpid());
        if (write_file(procs, pid) != 0) {
            m.stage_failed = 1;
            goto out;
        }
    }
    if (sys == SYS_FILE) {
        char path[600];
        snprintf(path, sizeof(path), "%s/xmem-map-peers-XXXXXX", o->dir);
        int ffd = mkstemp(path);
        if (ffd < 0) {
            m.stage_failed = 2;
            goto out;
        }
        unlink(path); /* nothing to clean up, whatever happens */
        if (ftruncate(ffd, (off_t)o->size) != 0) {
            m.stage_failed = 2;
            goto out;
        }
        base = mmap(NULL, o->size, PROT_READ | PROT_WRITE, MAP_SHARED, ffd, 0);
        close(ffd);
    } else {
        base = mmap(NULL, o->size, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    }
    if (base == MAP_FAILED) {
        m.stage_failed = 3;
        goto out;
    }
    double t0 = xmw_now();
    xmw_fill(base, o->size, XMW_SEED_DATA);
    m.fill_s = xmw_now() - t0;
    double deadline = sys == SYS_LOCAL || o->budget_s <= 0 ? 0 : xmw_now() + o->budget_s;
    switch (wl) {
    case WL_SCAN: m.r = xmw_scan(base, o->size); break;
    case WL_GUPS: m.r = xmw_gups(base, o->size, o->gups_updates, deadline); break;
    case WL_PAGES: m.r = xmw_pages(base, o->size, o->page_ops, deadline); break;
    default: m.r = xmw_sort(base, o->size); break;
    }
    if (sys == SYS_ZRAM && o->zram != NULL) zram_mm_stat(o->zram, &m.zram_orig, &m.zram_compr);
out:
    m.err = errno;
    if (write(fd, &m, sizeof(m)) != (ssize_t)sizeof(m)) _exit(2);
    _exit(0); /* the kernel unmaps: no munmap of 4 GiB of swapped pages to time */
}

/* One measurement: fork a child (in a new cgroup unless local), wait for it
 * with a timeout, remove the cgroup. */
static void measure(const opts_t *o, int sys, int wl, int fraction, meas_t *res)
{
    static int seq;
    char cg[512] = "";
    memset(res, 0, sizeof(*res));
    if (sys != SYS_LOCAL) {
        char path[600], val[64];
        snprintf(cg, sizeof(cg), "%s/xmem-bench-%d-%d", o->cgroup_root, (int)getpid(), seq++);
        if (mkdir(cg, 0755) != 0) {
            res->why = "mkdir cgroup failed";
            fprintf(stderr, "map_peers: mkdir %s: %s\n", cg, strerror(errno));
            return;
        }
        snprintf(g_cgroup, sizeof(g_cgroup), "%s", cg);
        uint64_t limit = (uint64_t)((double)o->size * fraction / 100.0) + o->allowance;
        limit = (limit + 4095) & ~4095ull;
        snprintf(path, sizeof(path), "%s/memory.limit_in_bytes", cg);
        snprintf(val, sizeof(val), "%" PRIu64, limit);
        if (write_file(path, val) != 0) {
            fprintf(stderr, "map_peers: %s <- %s: %s\n", path, val, strerror(errno));
            res->why = "setting the limit failed";
            goto out_rmdir;
        }
    }
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        res->why = "pipe failed";
        goto out_rmdir;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        res->why = "fork failed";
        close(pfd[0]);
        close(pfd[1]);
        goto out_rmdir;
    }
    if (pid == 0) {
        close(pfd[0]);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        child_run(o, sys, wl, sys == SYS_LOCAL ? NULL : cg, pfd[1]);
    }
    g_child = pid;
    close(pfd[1]);

    child_msg_t m;
    size_t got = 0;
    double deadline = xmw_now() + o->timeout_s;
    int timed_out = 0;
    while (got < sizeof(m)) {
        double left = deadline - xmw_now();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        struct pollfd p = {pfd[0], POLLIN, 0};
        int n = poll(&p, 1, left > 60 ? 60000 : (int)(left * 1000) + 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) continue;
        ssize_t r = read(pfd[0], (char *)&m + got, sizeof(m) - got);
        if (r <= 0) break; /* child died */
        got += (size_t)r;
    }
    close(pfd[0]);
    if (timed_out) kill(pid, SIGKILL);
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof(ru));
    while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
    }
    g_child = -1;
    res->majflt = ru.ru_majflt;
    if (timed_out) {
        res->why = "timeout";
    } else if (got < sizeof(m)) {
        res->why = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL ? "killed (OOM?)" : "child died";
    } else if (m.stage_failed) {
        fprintf(stderr, "map_peers: child (%s): %s: %s\n", sys_name[sys],
                child_stage_str(m.stage_failed), strerror(m.err));
        res->why = child_stage_str(m.stage_failed);
    } else {
        res->done = 1;
        res->fill_s = m.fill_s;
        res->r = m.r;
        res->planned = wl == WL_GUPS ? o->gups_updates : wl == WL_PAGES ? o->page_ops : m.r.ops;
        res->est_s = m.r.seconds;
        if (m.r.ops > 0 && m.r.ops < res->planned) {
            res->est_s = m.r.seconds * (double)res->planned / (double)m.r.ops;
        }
        res->zram_orig = m.zram_orig;
        res->zram_compr = m.zram_compr;
    }
    if (sys != SYS_LOCAL) {
        char path[600];
        snprintf(path, sizeof(path), "%s/memory.max_usage_in_bytes", cg);
        read_u64_file(path, &res->max_usage);
    }
out_rmdir:
    if (cg[0] != '\0') {
        /* v1 may keep a just-emptied cgroup busy for a moment */
        int i;
        for (i = 0; i < 100 && rmdir(cg) != 0; i++) {
            if (errno != EBUSY) break;
            struct timespec ts = {0, 50000000};
            nanosleep(&ts, NULL);
        }
        if (access(cg, F_OK) == 0) fprintf(stderr, "map_peers: could not remove %s\n", cg);
        g_cgroup[0] = '\0';
    }
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: map_peers [--size 4G] [--fractions 100,75,50,25] [--workloads scan,gups,pages,sort]\n"
            "                 [--systems local,file,zram] [--dir /var/tmp] [--zram /dev/zramN]\n"
            "                 [--allowance 32M] [--timeout SECONDS] [--budget SECONDS] [--base-reps 3]\n"
            "                 [--gups-updates N] [--page-ops N]\n"
            "                 [--cgroup-root /sys/fs/cgroup/memory]\n"
            "Run as root (cgroups); the zram swap device is set up by scripts/bench-map-peers.sh.\n");
}

/* "a,b,c" of names -> flags; 0 or -1 */
static int parse_names(const char *arg, const char *const *names, int count, int *flags)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", arg);
    for (int i = 0; i < count; i++) flags[i] = 0;
    for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int i;
        for (i = 0; i < count && strcmp(t, names[i]) != 0; i++) {
        }
        if (i == count) return -1;
        flags[i] = 1;
    }
    return 0;
}

/* "/proc/stat" busy and total jiffies of all CPUs */
static void cpu_sample(unsigned long long *busy, unsigned long long *total)
{
    unsigned long long v[10] = {0};
    FILE *f = fopen("/proc/stat", "re");
    *busy = *total = 0;
    if (f == NULL) return;
    if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
               &v[4], &v[5], &v[6], &v[7]) == 8) {
        for (int i = 0; i < 8; i++) *total += v[i];
        *busy = *total - v[3] - v[4];
    }
    fclose(f);
}

int main(int argc, char **argv)
{
    opts_t o = {.size = 4ull << 30,
                .fractions = {100, 75, 50, 25},
                .nfractions = 4,
                .workloads = {1, 1, 1, 1},
                .systems = {1, 1, 1},
                .dir = "/var/tmp",
                .cgroup_root = "/sys/fs/cgroup/memory",
                .allowance = 32u << 20,
                .timeout_s = 1800,
                .budget_s = 60,
                .base_reps = 3};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (v == NULL) {
            usage(stderr);
            return 2;
        }
        i++;
        if (strcmp(a, "--size") == 0) {
            o.size = parse_size(v) / XMW_PAGE * XMW_PAGE;
            if (o.size == 0) goto bad;
        } else if (strcmp(a, "--fractions") == 0) {
            char buf[256];
            snprintf(buf, sizeof(buf), "%s", v);
            o.nfractions = 0;
            for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                int f = atoi(t);
                if (f < 1 || f > 100 || o.nfractions == MAX_FRACTIONS) goto bad;
                o.fractions[o.nfractions++] = f;
            }
            if (o.nfractions == 0) goto bad;
        } else if (strcmp(a, "--workloads") == 0) {
            if (parse_names(v, wl_name, WL_COUNT, o.workloads) != 0) goto bad;
        } else if (strcmp(a, "--systems") == 0) {
            if (parse_names(v, sys_name, SYS_COUNT, o.systems) != 0) goto bad;
        } else if (strcmp(a, "--dir") == 0) {
            o.dir = v;
        } else if (strcmp(a, "--zram") == 0) {
            o.zram = v;
        } else if (strcmp(a, "--cgroup-root") == 0) {
            o.cgroup_root = v;
        } else if (strcmp(a, "--allowance") == 0) {
            o.allowance = parse_size(v);
        } else if (strcmp(a, "--timeout") == 0) {
            o.timeout_s = atoi(v);
            if (o.timeout_s <= 0) goto bad;
        } else if (strcmp(a, "--base-reps") == 0) {
            o.base_reps = atoi(v);
            if (o.base_reps < 1 || o.base_reps > 20) goto bad;
        } else if (strcmp(a, "--budget") == 0) {
            o.budget_s = atoi(v);
        } else if (strcmp(a, "--gups-updates") == 0) {
            o.gups_updates = strtoull(v, NULL, 0);
        } else if (strcmp(a, "--page-ops") == 0) {
            o.page_ops = strtoull(v, NULL, 0);
        } else {
            goto bad;
        }
        continue;
    bad:
        fprintf(stderr, "map_peers: bad option %s %s\n", a, v);
        usage(stderr);
        return 2;
    }
    /* defaults scale with the working set, so every size sees the same miss rates */
    if (o.gups_updates == 0) o.gups_updates = o.size / 2048;
    if (o.page_ops == 0) o.page_ops = o.size / 8192;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    /* what is available: never fake a row */
    char cg_why[300] = "", zram_why[300] = "";
    int have_cgroup = (o.systems[SYS_FILE] || o.systems[SYS_ZRAM]) &&
                      cgroup_usable(o.cgroup_root, cg_why, sizeof(cg_why));
    int have_zram = 0;
    if (o.systems[SYS_ZRAM]) {
        if (o.zram == NULL) {
            snprintf(zram_why, sizeof(zram_why), "no --zram device (scripts/bench-map-peers.sh sets one up)");
        } else {
            have_zram = swap_active(o.zram, o.size, zram_why, sizeof(zram_why));
        }
    }

    char sz[32], al[32], buf[128] = "?";
    fmt_size(sz, sizeof(sz), o.size);
    fmt_size(al, sizeof(al), o.allowance);
    time_t now = time(NULL);
    strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", gmtime(&now));
    printf("map_peers, %s, %ld CPUs, working set %s, local memory %s", buf,
           sysconf(_SC_NPROCESSORS_ONLN), sz, "");
    for (int f = 0; f < o.nfractions; f++) printf("%s%d%%", f ? "/" : "", o.fractions[f]);
    printf(" (cgroup limit = fraction x working set + %s allowance)\n", al);
    printf("gups: %" PRIu64 " updates of 8 B; pages: %" PRIu64 " random 4 KiB page ops (half read, half write); "
           "sort: in-place radix sort of %zu 64-bit keys\n",
           o.gups_updates, o.page_ops, o.size / 8);
    if (o.budget_s > 0) {
        printf("gups and pages on file/zram stop after %d s: \"~\" seconds are scaled to all ops, the checksum is checked "
               "against a local run of the same ops\n", o.budget_s);
    }
    printf("timeout per measurement: %d s; local baseline: fastest of %d runs, every other row one run\n",
           o.timeout_s, o.base_reps);
    {
        FILE *f = fopen("/proc/loadavg", "re");
        char la[64] = "?";
        if (f) {
            if (fgets(la, sizeof(la), f) == NULL) la[0] = '\0';
            fclose(f);
            la[strcspn(la, "\n")] = '\0';
        }
        printf("load average at start: %s\n", la);
    }
    if (o.systems[SYS_FILE] || o.systems[SYS_ZRAM]) {
        if (!have_cgroup) printf("SKIPPED file and zram rows: %s\n", cg_why);
    }
    if (o.systems[SYS_FILE] && have_cgroup) printf("file: MAP_SHARED of an unlinked file in %s\n", o.dir);
    if (o.systems[SYS_ZRAM]) {
        if (!have_zram) {
            printf("SKIPPED zram rows: %s\n", zram_why);
        } else {
            char path[256], alg[128] = "?";
            const char *name = strrchr(o.zram, '/');
            snprintf(path, sizeof(path), "/sys/block/%s/comp_algorithm", name ? name + 1 : o.zram);
            FILE *f = fopen(path, "re");
            if (f) {
                if (fgets(alg, sizeof(alg), f) == NULL) alg[0] = '\0';
                fclose(f);
                alg[strcspn(alg, "\n")] = '\0';
            }
            printf("zram: anonymous memory, swap on %s (algorithms: %s; [x] is in use)\n", o.zram, alg);
        }
    }
    fflush(stdout);

    unsigned long long b0, t0, b1, t1;
    cpu_sample(&b0, &t0);
    double start = xmw_now();
    int bad = 0;

    static meas_t res[WL_COUNT][MAX_FRACTIONS][SYS_COUNT];
    static meas_t base[WL_COUNT];
    for (int w = 0; w < WL_COUNT; w++) {
        if (!o.workloads[w]) continue;
        measure(&o, SYS_LOCAL, w, 100, &base[w]);
        for (int rep = 1; rep < o.base_reps && base[w].done; rep++) {
            meas_t again;
            measure(&o, SYS_LOCAL, w, 100, &again);
            if (!again.done || again.r.checksum != base[w].r.checksum) {
                base[w] = again;
                if (again.done) base[w].why = "baseline checksum differs between runs";
                base[w].done = 0;
                break;
            }
            if (again.r.seconds < base[w].r.seconds) base[w] = again;
        }
        fprintf(stderr, "map_peers: %-5s local        %8.3f s%s%s\n", wl_name[w], base[w].r.seconds,
                base[w].done ? "" : " ", base[w].done ? "" : base[w].why);
        for (int f = 0; f < o.nfractions; f++) {
            for (int s = SYS_FILE; s < SYS_COUNT; s++) {
                meas_t *m = &res[w][f][s];
                if (!o.systems[s] || !have_cgroup || (s == SYS_ZRAM && !have_zram)) {
                    m->why = "skipped";
                    continue;
                }
                measure(&o, s, w, o.fractions[f], m);
                fprintf(stderr, "map_peers: %-5s %-5s %3d%%  %8.3f s (fill %.3f s, %" PRIu64 "/%" PRIu64 " ops)%s%s\n",
                        wl_name[w], sys_name[s], o.fractions[f], m->r.seconds, m->fill_s, m->r.ops,
                        m->planned, m->done ? "" : " ", m->done ? "" : m->why);
                if (m->done && m->r.ops < m->planned) {
                    /* stopped early: the reference is the local run of the same prefix */
                    opts_t o2 = o;
                    meas_t ref;
                    o2.gups_updates = o2.page_ops = m->r.ops;
                    measure(&o2, SYS_LOCAL, w, 100, &ref);
                    if (ref.done) {
                        m->ref_checksum = ref.r.checksum;
                        m->has_ref = 1;
                    }
                }
            }
        }
    }
    cpu_sample(&b1, &t1);

    printf("\n| workload | local memory | system | seconds | x local | ops done | fill s | major faults | max usage MiB | zram orig/compr MiB | checksum |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int w = 0; w < WL_COUNT; w++) {
        if (!o.workloads[w]) continue;
        meas_t *b = &base[w];
        if (b->done) {
            printf("| %s | all (no limit) | local | %.3f | 1.00 | all | %.3f | %ld | - | - | %016" PRIx64 "%s |\n",
                   wl_name[w], b->r.seconds, b->fill_s, b->majflt, b->r.checksum,
                   b->r.ok ? "" : " NOT SORTED");
            if (!b->r.ok) bad = 1;
        } else {
            printf("| %s | all (no limit) | local | %s | | | | | | | |\n", wl_name[w], b->why);
            bad = 1;
        }
        for (int f = 0; f < o.nfractions; f++) {
            for (int s = SYS_FILE; s < SYS_COUNT; s++) {
                meas_t *m = &res[w][f][s];
                if (!o.systems[s]) continue;
                if (!m->done && strcmp(m->why, "timeout") == 0) {
                    /* a lower bound, not a failure: killed after --timeout seconds */
                    char ratio[32] = "-";
                    if (b->done && b->r.seconds > 0) snprintf(ratio, sizeof(ratio), "> %.0f", o.timeout_s / b->r.seconds);
                    printf("| %s | %d%% | %s | > %d (killed) | %s | - | - | %ld | %.0f | | - |\n", wl_name[w],
                           o.fractions[f], sys_name[s], o.timeout_s, ratio, m->majflt, m->max_usage / 1048576.0);
                    continue;
                }
                if (!m->done) {
                    printf("| %s | %d%% | %s | %s | | | | | | | |\n", wl_name[w], o.fractions[f],
                           sys_name[s], m->why);
                    if (strcmp(m->why, "skipped") != 0) bad = 1;
                    continue;
                }
                const char *verdict = "";
                if (!m->r.ok) {
                    verdict = " NOT SORTED";
                    bad = 1;
                } else if (m->r.ops < m->planned) {
                    if (!m->has_ref) {
                        verdict = " no reference";
                        bad = 1;
                    } else if (m->r.checksum != m->ref_checksum) {
                        verdict = " MISMATCH";
                        bad = 1;
                    } else {
                        verdict = " ok (prefix)";
                    }
                } else if (b->done && m->r.checksum != b->r.checksum) {
                    verdict = " MISMATCH";
                    bad = 1;
                } else if (b->done) {
                    verdict = " ok";
                }
                char ratio[32] = "-", zr[48] = "-", secs[32], done[48] = "all";
                int early = m->r.ops < m->planned;
                snprintf(secs, sizeof(secs), early ? "~%.1f" : "%.3f", m->est_s);
                if (early) snprintf(done, sizeof(done), "%.1f%% in %.0f s", 100.0 * m->r.ops / m->planned, m->r.seconds);
                if (b->done && b->r.seconds > 0) snprintf(ratio, sizeof(ratio), early ? "~%.0f" : "%.2f", m->est_s / b->r.seconds);
                if (s == SYS_ZRAM)
                    snprintf(zr, sizeof(zr), "%.0f / %.0f", m->zram_orig / 1048576.0, m->zram_compr / 1048576.0);
                printf("| %s | %d%% | %s | %s | %s | %s | %.3f | %ld | %.0f | %s | %016" PRIx64 "%s |\n",
                       wl_name[w], o.fractions[f], sys_name[s], secs, ratio, done, m->fill_s, m->majflt,
                       m->max_usage / 1048576.0, zr, m->r.checksum, verdict);
            }
        }
    }
    printf("\nchecksums: %s\n", bad ? "SOME MISMATCH, FAILED OR NOT SORTED (see above)" : "all agree with the local baseline");
    if (t1 > t0) {
        printf("total %.0f s; machine CPU busy during the run: %llu%% of %ld CPUs (this benchmark included)\n",
               xmw_now() - start, 100 * (b1 - b0) / (t1 - t0), sysconf(_SC_NPROCESSORS_ONLN));
    }
    return bad ? 1 : 0;
}
