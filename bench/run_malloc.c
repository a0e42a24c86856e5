/* xmem run (issue 14): the interposed malloc against glibc's, and a program's
 * runtime at 100/50/25 % of its working set local against plain memory, in
 * the same run. Needs a running appliance (XMEM_APPLIANCE, XMEM_SECRET_FILE;
 * on this host the local transport is used) and `xmem` beside this program.
 *   run_malloc [--pairs N] [--rounds R] [--entries E]
 * Prints one table. */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* worker: N small-object malloc/free pairs (16..256 bytes, 64 live at a time);
 * prints ns per pair */
static int pairs(long n)
{
    void *live[64] = {0};
    uint64_t s = 1;
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        unsigned k = (unsigned)(s >> 58);
        free(live[k]);
        live[k] = malloc(16 + ((s >> 20) % 241));
        if (live[k] == NULL) return 1;
        *(volatile char *)live[k] = 1;
    }
    double t = now_s() - t0;
    for (int k = 0; k < 64; k++) free(live[k]);
    printf("%.2f\n", t * 1e9 / (double)n);
    return 0;
}

static char self_dir[PATH_MAX];

/* run argv (NULL-terminated), stdout into out (may be NULL); wall seconds, and peak RSS in KiB */
static double run(char *const argv[], char *out, size_t outlen, long *maxrss_kb)
{
    int p[2];
    if (pipe(p) != 0) return -1;
    double t0 = now_s();
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    size_t len = 0;
    char buf[4096];
    ssize_t r;
    while ((r = read(p[0], buf, sizeof(buf))) > 0) {
        if (out != NULL && len + (size_t)r < outlen) memcpy(out + len, buf, (size_t)r), len += (size_t)r;
    }
    if (out != NULL) out[len] = '\0';
    close(p[0]);
    int st;
    struct rusage ru;
    wait4(pid, &st, 0, &ru);
    double t = now_s() - t0;
    if (maxrss_kb != NULL) *maxrss_kb = ru.ru_maxrss;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "run_malloc: %s failed (status %d)\n", argv[0], st);
        return -1;
    }
    return t;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_d);
    return v[n / 2];
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--worker-pairs") == 0) return pairs(atol(argv[2]));
    long n = 20000000, entries = 600000;
    int rounds = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--pairs") == 0) n = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--rounds") == 0) rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--entries") == 0) entries = atol(argv[i + 1]);
    }
    if (rounds > 15) rounds = 15;
    char exe[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (l <= 0) return 1;
    exe[l] = '\0';
    snprintf(self_dir, sizeof(self_dir), "%s", exe);
    *strrchr(self_dir, '/') = '\0';
    char xmem[PATH_MAX + 8], nstr[32];
    snprintf(xmem, sizeof(xmem), "%s/xmem", self_dir);
    snprintf(nstr, sizeof(nstr), "%ld", n);

    /* 1. malloc/free pairs: glibc vs the interposer with the whole heap local */
    double g[15], x[15];
    char out[256];
    for (int r = 0; r < rounds; r++) {
        char *const plain[] = {exe, "--worker-pairs", nstr, NULL};
        char *const under[] = {xmem, "run", "--heap", "256M", "--", exe, "--worker-pairs", nstr, NULL};
        if (run(plain, out, sizeof(out), NULL) < 0) return 1;
        g[r] = atof(out);
        if (run(under, out, sizeof(out), NULL) < 0) return 1;
        x[r] = atof(out);
    }
    double gm = median(g, rounds), xm = median(x, rounds);
    printf("| what | reference | xmem run | ratio |\n|---|---|---|---|\n");
    printf("| malloc/free pair, 16-256 B, 64 live, heap all local (ns, median of %d) | %.1f (glibc) | %.1f | %.2fx |\n",
           rounds, gm, xm, xm / gm);

    /* 2. a program's runtime at 100/50/25 % of its working set local */
    char prog[512];
    snprintf(prog, sizeof(prog),
             "import hashlib\nd = {i: ('%%d' %% i) * 8 for i in range(%ld)}\n"
             "l = [(k, v[::-1]) for k, v in d.items()]\nprint(len(d), hashlib.sha256(repr(l).encode()).hexdigest())\n",
             entries);
    setenv("PYTHONMALLOC", "malloc", 1);
    char *const plain[] = {"/usr/bin/python3", "-c", prog, NULL};
    char ref[256], got[256];
    long rss_kb = 0;
    double tp[15];
    for (int r = 0; r < rounds; r++) tp[r] = run(plain, ref, sizeof(ref), &rss_kb);
    double tpm = median(tp, rounds);
    /* the working set: the plain run's peak RSS (less the interpreter's ~10 MB is not subtracted) */
    uint64_t ws = (uint64_t)rss_kb * 1024;
    printf("| python3 dict+list of %ld entries (PYTHONMALLOC=malloc), peak RSS %.0f MiB: plain (s) | %.2f | | |\n",
           entries, (double)ws / 1048576, tpm);
    static const int pct[] = {100, 50, 25};
    for (int i = 0; i < 3; i++) {
        char local[32];
        snprintf(local, sizeof(local), "%lluK", (unsigned long long)(ws * (uint64_t)pct[i] / 100 / 1024));
        char *const under[] = {xmem, "run", "--heap", "2G", "--local", local, "--", "/usr/bin/python3", "-c", prog, NULL};
        double t[15];
        for (int r = 0; r < rounds; r++) {
            t[r] = run(under, got, sizeof(got), NULL);
            if (t[r] < 0 || strcmp(got, ref) != 0) {
                fprintf(stderr, "run_malloc: python3 under xmem run printed '%s', plain '%s'\n", got, ref);
                return 1;
            }
        }
        double tm = median(t, rounds);
        printf("| same, --local %d %% (%s) (s) | %.2f | %.2f | %.2fx |\n", pct[i], local, tpm, tm, tm / tpm);
    }
    return 0;
}
