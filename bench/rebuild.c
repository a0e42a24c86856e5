/* rebuild: how fast the manager restores a lost copy of a replicate:2 allocation, appliance
 * to appliance (docs/resilience.md, "Rebuild"), against a raw TCP stream on loopback in the
 * same run. Each round starts its own manager (--rebuild-after-ms 200) and three appliances
 * from this program's directory, fills a replicate:2 allocation of SIZE MiB, kills -9 one
 * appliance holding a copy and waits until the allocation is ok again.
 *
 *   rebuild [--size MIB] [--rounds N]
 *
 * Printed per round: the copy phase as the manager measured it (RegionCopy from the
 * surviving appliance into the new region, which is fresh memory: every page touched for the
 * first time), the whole rebuild (fence + copy + recopy of the units written meanwhile, from
 * the manager's log), the time from the kill to "ok" seen by a client (includes the 200 ms
 * grace and the heartbeat loss), and the raw TCP stream of SIZE MiB (1 MiB sends into one 1 MiB
 * buffer, tcp_ref.h) measured just before. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xmem/tenant.h>
#include <xmem/xmem.h>

#include "bench_util.h"
#include "tcp_ref.h"

typedef struct proc {
    pid_t pid;
    char addr[64];
} proc_t;

/* Start argv with stdout to a pipe (its first line "... listening on ADDR") and stderr to log. */
static int start(const char *const *argv, const char *log, proc_t *p)
{
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(out[1], 1);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) dup2(fd, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(out[1]);
    char line[256];
    size_t len = 0;
    while (len < sizeof(line) - 1) {
        ssize_t n = read(out[0], line + len, 1);
        if (n <= 0 || line[len] == '\n') break;
        len++;
    }
    line[len] = '\0';
    close(out[0]);
    const char *at = strstr(line, "listening on ");
    if (at == NULL) {
        fprintf(stderr, "rebuild: %s did not start (%s; see %s)\n", argv[0], line, log);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    p->pid = pid;
    snprintf(p->addr, sizeof(p->addr), "%s", at + strlen("listening on "));
    return 0;
}

static void stop(proc_t *p)
{
    if (p->pid <= 0) return;
    kill(p->pid, SIGTERM);
    waitpid(p->pid, NULL, 0);
    p->pid = 0;
}

static double raw_stream(uint64_t total)
{
    static uint8_t buf[1u << 20];
    tcp_ref_t t;
    int fd;
    if (tcp_ref_start(&t, &fd) != 0) return 0;
    double gbs = tcp_ref_stream(fd, buf, sizeof(buf), total);
    tcp_ref_stop(&t, fd);
    return gbs;
}

/* The same stream received into a fresh memfd mapping of total bytes (MAP_SHARED, as an
 * appliance's pool): the receiver touches every page for the first time, as the target of a
 * rebuild does. */
typedef struct fresh {
    int fd;
    uint64_t total;
} fresh_t;

static void *fresh_main(void *arg)
{
    fresh_t *f = arg;
    int mfd = memfd_create("rebuild_ref", MFD_CLOEXEC);
    uint8_t *dst = mfd >= 0 && ftruncate(mfd, (off_t)f->total) == 0
                       ? mmap(NULL, f->total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, mfd, 0)
                       : MAP_FAILED;
    for (uint64_t got = 0; dst != MAP_FAILED && got < f->total;) {
        size_t want = f->total - got < (1u << 20) ? (size_t)(f->total - got) : (1u << 20);
        ssize_t n = recv(f->fd, dst + got, want, 0);
        if (n <= 0) break;
        got += (uint64_t)n;
    }
    if (dst != MAP_FAILED) munmap(dst, f->total);
    if (mfd >= 0) close(mfd);
    return NULL;
}

static double raw_fresh(uint64_t total)
{
    static uint8_t buf[1u << 20];
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(l, 1) != 0 ||
        getsockname(l, (struct sockaddr *)&sa, &sl) != 0)
        return 0;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&sa, sizeof(sa)) != 0) return 0;
    int s = accept(l, NULL, NULL);
    close(l);
    fresh_t f = {.fd = s, .total = total};
    pthread_t th;
    pthread_create(&th, NULL, fresh_main, &f);
    uint64_t t0 = bench_now_ns();
    for (uint64_t done = 0; done < total; done += sizeof(buf)) {
        if (send(c, buf, sizeof(buf), MSG_NOSIGNAL) != (ssize_t)sizeof(buf)) break;
    }
    pthread_join(th, NULL);
    double gbs = (double)total / (double)(bench_now_ns() - t0);
    close(c);
    close(s);
    return gbs;
}

static int state_of(xm_ctx_h ctx, uint64_t id, char *st, size_t len)
{
    xm_alloc_info_t *in = NULL;
    size_t n = 0;
    st[0] = '\0';
    if (xm_alloc_list(ctx, &in, &n) != XM_OK) return -1;
    for (size_t i = 0; i < n; i++) {
        if (in[i].id == id) snprintf(st, len, "%s", in[i].state);
    }
    free(in);
    return 0;
}

/* The manager's "rebuilt" line: copy seconds and whole seconds. */
static int parse_log(const char *log, double *copy_s, double *all_s)
{
    FILE *f = fopen(log, "r");
    if (f == NULL) return -1;
    char line[1024];
    int found = -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        char *c = strstr(line, "bytes copied in "), *a = strstr(line, " s in all");
        if (c == NULL || a == NULL) continue;
        *copy_s = atof(c + strlen("bytes copied in "));
        char *b = a;
        while (b > line && b[-1] != ' ') b--;
        *all_s = atof(b);
        found = 0;
    }
    fclose(f);
    return found;
}

static int round_run(const char *dir, const char *bin, uint64_t size, int r, double *copy_gbs,
                     double *all_gbs, double *e2e_s)
{
    char secret[600], cred[700], db[600], mlog[600], alog[600], tenants[700];
    snprintf(secret, sizeof(secret), "%s/secret", dir);
    snprintf(cred, sizeof(cred), "%s.bench.cred", secret);
    snprintf(tenants, sizeof(tenants), "%s.tenants", secret);
    snprintf(db, sizeof(db), "%s/manager-%d.db", dir, r);
    snprintf(mlog, sizeof(mlog), "%s/manager-%d.log", dir, r);
    snprintf(alog, sizeof(alog), "%s/appliances-%d.log", dir, r);
    char mgr_bin[600], appl_bin[600], pool[32];
    snprintf(mgr_bin, sizeof(mgr_bin), "%s/xmem-manager", bin);
    snprintf(appl_bin, sizeof(appl_bin), "%s/xmemd", bin);
    snprintf(pool, sizeof(pool), "%lluM", (unsigned long long)(2 * (size >> 20) + 64));
    proc_t m = {0}, a[3] = {{0}};
    int rc = -1;
    xm_ctx_h ctx = NULL;
    xm_alloc_h al = NULL;
    const char *margv[] = {mgr_bin, "--listen", "127.0.0.1:0", "--db", db, "--secret-file", secret,
                           "--tenants", tenants, "--rebuild-after-ms", "200", "--stock", "0",
                           "--log-level", "info", NULL};
    if (start(margv, mlog, &m) != 0) return -1;
    for (int i = 0; i < 3; i++) {
        char dom[8];
        snprintf(dom, sizeof(dom), "d%d", i);
        const char *aargv[] = {appl_bin, "--listen", "127.0.0.1:0", "--pool", pool, "--secret-file",
                               secret, "--manager", m.addr, "--domain", dom, "--heartbeat-ms", "100",
                               "--log-level", "warn", NULL};
        if (start(aargv, alog, &a[i]) != 0) goto fail;
    }
    xm_connect_opts_t o = {.size = sizeof(o), .manager = m.addr, .secret_file = cred, .tenant = "bench"};
    for (int i = 0; i < 100 && xm_connect(&o, &ctx) != XM_OK; i++) usleep(50000);
    if (ctx == NULL) goto fail;
    /* every appliance up before placing */
    for (int i = 0; i < 200; i++) {
        xm_appliance_entry_t *es = NULL;
        size_t n = 0, up = 0;
        if (xm_appliance_list(ctx, &es, &n) == XM_OK) {
            for (size_t e = 0; e < n; e++) up += strcmp(es[e].state, "up") == 0;
            free(es);
        }
        if (up == 3) break;
        usleep(50000);
    }
    if (xm_alloc(ctx, size, "replicate:2", "bench-rebuild", &al) != XM_OK) {
        fprintf(stderr, "rebuild: alloc: %s\n", xm_last_error(ctx));
        goto out;
    }
    uint8_t *buf = malloc(1u << 20);
    for (uint64_t off = 0; off < size; off += 1u << 20) {
        memset(buf, (int)(off >> 20) | 1, 1u << 20);
        if (xm_write(al, off, buf, 1u << 20) != XM_OK) {
            fprintf(stderr, "rebuild: write: %s\n", xm_last_error(ctx));
            free(buf);
            goto out;
        }
    }
    free(buf);
    int victim = -1;
    xm_appliance_entry_t *es = NULL;
    size_t n = 0;
    if (xm_appliance_list(ctx, &es, &n) == XM_OK) {
        for (size_t e = 0; e < n && victim < 0; e++) {
            for (int i = 0; i < 3; i++) {
                if (es[e].regions > 0 && strcmp(es[e].addr, a[i].addr) == 0) victim = i;
            }
        }
        free(es);
    }
    if (victim < 0) goto out;
    uint64_t t0 = bench_now_ns();
    kill(a[victim].pid, SIGKILL);
    waitpid(a[victim].pid, NULL, 0);
    a[victim].pid = 0;
    char st[32] = "";
    bool left_ok = false;
    for (int i = 0; i < 12000; i++) {
        state_of(ctx, xm_region_id(al), st, sizeof(st));
        if (strcmp(st, "ok") != 0) left_ok = true;
        else if (left_ok) break;
        usleep(5000);
    }
    *e2e_s = (double)(bench_now_ns() - t0) / 1e9;
    if (strcmp(st, "ok") != 0) {
        fprintf(stderr, "rebuild: allocation still '%s' (see %s)\n", st, mlog);
        goto out;
    }
    double copy_s = 0, all_s = 0;
    if (parse_log(mlog, &copy_s, &all_s) != 0 || copy_s <= 0 || all_s <= 0) goto out;
    *copy_gbs = (double)size / copy_s / 1e9;
    *all_gbs = (double)size / all_s / 1e9;
    rc = 0;
out:
    if (al != NULL) xm_alloc_close(al);
    if (ctx != NULL) xm_disconnect(ctx);
fail:
    for (int i = 0; i < 3; i++) stop(&a[i]);
    stop(&m);
    return rc;
}

int main(int argc, char **argv)
{
    uint64_t mib = 256;
    int rounds = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--size") == 0) mib = strtoull(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--rounds") == 0) rounds = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: rebuild [--size MIB] [--rounds N]\n");
            return 2;
        }
    }
    if (argc % 2 == 0 || mib == 0 || rounds < 1) {
        fprintf(stderr, "usage: rebuild [--size MIB] [--rounds N]\n");
        return 2;
    }
    char bin[512] = ".";
    ssize_t sl = readlink("/proc/self/exe", bin, sizeof(bin) - 1);
    if (sl > 0) {
        bin[sl] = '\0';
        char *slash = strrchr(bin, '/');
        if (slash != NULL) *slash = '\0';
    }
    char dir[] = "/tmp/xmem-bench-rebuild-XXXXXX";
    if (mkdtemp(dir) == NULL) return 1;
    char secret[600], cred[700], why[256];
    snprintf(secret, sizeof(secret), "%s/secret", dir);
    snprintf(cred, sizeof(cred), "%s.bench.cred", secret);
    int sfd = open(secret, O_WRONLY | O_CREAT | O_EXCL, 0600), rfd = open("/dev/urandom", O_RDONLY);
    uint8_t key[32];
    if (sfd < 0 || rfd < 0 || read(rfd, key, sizeof(key)) != (ssize_t)sizeof(key) ||
        write(sfd, key, sizeof(key)) != (ssize_t)sizeof(key)) {
        fprintf(stderr, "rebuild: cannot make a secret\n");
        return 1;
    }
    close(sfd);
    close(rfd);
    if (xm_tenant_add(secret, NULL, "bench", cred, why, sizeof(why)) != XM_OK) {
        fprintf(stderr, "rebuild: %s\n", why);
        return 1;
    }
    uint64_t size = mib << 20;
    printf("rebuild of replicate:2, %llu MiB fully written, 3 appliances on loopback (tcp)\n",
           (unsigned long long)mib);
    printf("round | raw stream GB/s | raw into fresh pages GB/s | copy GB/s | copy / fresh raw | "
           "whole rebuild GB/s | kill -> ok s\n");
    for (int r = 0; r < rounds; r++) {
        double raw = raw_stream(size), fresh = raw_fresh(size), cg = 0, ag = 0, e2e = 0;
        if (round_run(dir, bin, size, r, &cg, &ag, &e2e) != 0) {
            printf("%d | failed (logs in %s)\n", r, dir);
            continue;
        }
        printf("%d | %.2f | %.2f | %.3f | %.0f %% | %.3f | %.2f\n", r, raw, fresh, cg,
               fresh > 0 ? 100 * cg / fresh : 0, ag, e2e);
        fflush(stdout);
    }
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (getenv("REBUILD_KEEP") == NULL && system(cmd) != 0) return 1;
    return 0;
}
