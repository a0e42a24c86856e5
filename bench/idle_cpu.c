/* idle_cpu: what an idle appliance costs, and what its first operation after a
 * pause costs, per provider.
 *
 * For each provider it starts an xmemd (loopback, free port, 256 MiB pool), lets
 * it settle for a second, then reads the appliance's CPU time (utime + stime
 * from /proc/PID/stat) over an idle period (no client), and again over a period
 * with a connected client that does nothing. Then it measures the busy p50 of
 * 4 KiB reads (back to back, after a warm-up) and the first 4 KiB read after
 * each of N idle pauses, and prints the ratio first-after-pause / busy p50.
 *
 *   idle_cpu [--xmemd PATH] [--providers tcp,local] [--idle-s 10] [--pause-ms 1000]
 *            [--pauses 10] [--iters 5000] [--pin-appliance CPU] [--pin-client CPU]
 *
 * Targets (issue 11): idle < 1 % of a CPU over 10 s; first op after an idle
 * second <= 2x the busy p50.
 *
 * The reference, measured first in the same run: a raw TCP server that busy-polls 10 ms
 * after a request and then sleeps in poll(2) (bench/tcp_ref.h), answering 4 KiB - its busy
 * round trip and its first round trip after each pause. Waking a CPU that has slept for a
 * second costs what it costs on the machine; "x raw" is xmem's first op over the raw one.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xmem/tenant.h>
#include <xmem/xmem.h>

#include "bench_util.h"
#include "tcp_ref.h"

typedef struct appliance {
    pid_t pid;
    char addr[64];
} appliance_t;

/* utime + stime of pid in clock ticks; -1 when unreadable */
static long long cpu_ticks(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may hold spaces */
    if (p == NULL) return -1;
    unsigned long long ut = 0, st = 0;
    /* after ")": state(3) ... utime is field 14, stime 15 */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (long long)(ut + st);
}

static int start_appliance(const char *xmemd, const char *provider, const char *secret, int pin,
                           appliance_t *a)
{
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(out[1], 1);
        if (pin >= 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(pin, &set);
            sched_setaffinity(0, sizeof(set), &set);
        }
        (void)provider; /* xmemd serves tcp and, to clients on its host, the local transport */
        execl(xmemd, xmemd, "--listen", "127.0.0.1:0", "--pool", "256M", "--provider", "tcp",
              "--secret-file", secret, "--log-level", "warn", (char *)NULL);
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
    const char *pfx = "xmemd listening on ";
    if (strncmp(line, pfx, strlen(pfx)) != 0) {
        fprintf(stderr, "idle_cpu: %s did not start (%s)\n", xmemd, line);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    a->pid = pid;
    snprintf(a->addr, sizeof(a->addr), "%s", line + strlen(pfx));
    return 0;
}

static void stop_appliance(appliance_t *a)
{
    kill(a->pid, SIGTERM);
    waitpid(a->pid, NULL, 0);
}

static double cpu_percent(pid_t pid, unsigned seconds)
{
    long long t0 = cpu_ticks(pid);
    uint64_t w0 = bench_now_ns();
    sleep(seconds);
    long long t1 = cpu_ticks(pid);
    uint64_t w1 = bench_now_ns();
    if (t0 < 0 || t1 < 0) return -1;
    return 100.0 * (double)(t1 - t0) / (double)sysconf(_SC_CLK_TCK) / ((double)(w1 - w0) / 1e9);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* The raw TCP row: busy 4 KiB round trips, then one after each pause; returns the first
 * round trip's p50 in us (0 when the reference could not run). */
static double raw_reference(unsigned pauses, unsigned pause_ms, unsigned iters, int pin_server)
{
    tcp_ref_t t;
    int fd = -1;
    if (tcp_ref_start(&t, &fd) != 0) {
        fprintf(stderr, "idle_cpu: the raw TCP reference did not start: %s\n", strerror(errno));
        return 0;
    }
    if (pin_server >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(pin_server, &set);
        pthread_setaffinity_np(t.thread, sizeof(set), &set);
    }
    static uint8_t buf[4096];
    uint64_t *lat = calloc(iters, sizeof(*lat));
    uint64_t *first = calloc(pauses, sizeof(*first));
    tcp_ref_rtt(fd, sizeof(buf), iters, buf, lat);
    uint64_t req = sizeof(buf);
    for (unsigned i = 0; i < pauses; i++) {
        sleep_ms(pause_ms);
        uint64_t t0 = bench_now_ns();
        tcp_ref_xfer(fd, &req, sizeof(req), true);
        tcp_ref_xfer(fd, buf, sizeof(buf), false);
        first[i] = bench_now_ns() - t0;
    }
    double busy = (double)bench_quantile(lat, iters, 0.5, 0) / 1e3;
    double f50 = (double)bench_quantile(first, pauses, 0.5, 0) / 1e3;
    double f90 = (double)bench_quantile(first, pauses, 0.9, 1) / 1e3;
    double fmax = (double)first[pauses - 1] / 1e3;
    printf("%-8s %12s %14s %11.1f %14.1f %14.1f %14.1f %9.2f %9.2f %7.2f\n", "raw tcp", "-", "-", busy,
           f50, fmax, f90, f50 / busy, fmax / busy, 1.0);
    fflush(stdout);
    free(lat);
    free(first);
    tcp_ref_stop(&t, fd);
    return f50;
}

int main(int argc, char **argv)
{
    char self_dir[4096] = ".";
    ssize_t sl = readlink("/proc/self/exe", self_dir, sizeof(self_dir) - 1);
    if (sl > 0) {
        self_dir[sl] = '\0';
        char *slash = strrchr(self_dir, '/');
        if (slash != NULL) *slash = '\0';
    }
    char xmemd[4200];
    snprintf(xmemd, sizeof(xmemd), "%s/xmemd", self_dir);
    const char *providers = "tcp,local";
    unsigned idle_s = 10, pause_ms = 1000, pauses = 10, iters = 5000;
    int pin_appl = -1, pin_client = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) goto usage;
        if (strcmp(a, "--xmemd") == 0) snprintf(xmemd, sizeof(xmemd), "%s", v);
        else if (strcmp(a, "--providers") == 0) providers = v;
        else if (strcmp(a, "--idle-s") == 0) idle_s = (unsigned)atoi(v);
        else if (strcmp(a, "--pause-ms") == 0) pause_ms = (unsigned)atoi(v);
        else if (strcmp(a, "--pauses") == 0) pauses = (unsigned)atoi(v);
        else if (strcmp(a, "--iters") == 0) iters = (unsigned)atoi(v);
        else if (strcmp(a, "--pin-appliance") == 0) pin_appl = atoi(v);
        else if (strcmp(a, "--pin-client") == 0) pin_client = atoi(v);
        else goto usage;
        i++;
    }
    if (idle_s == 0 || pauses == 0 || pauses > 1000 || iters < 100) goto usage;
    if (pin_client >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(pin_client, &set);
        sched_setaffinity(0, sizeof(set), &set);
    }

    char secret[] = "/tmp/xmem-idle-cpu-secret-XXXXXX";
    int sfd = mkstemp(secret);
    uint8_t key[32];
    int rfd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (sfd < 0 || rfd < 0 || read(rfd, key, sizeof(key)) != (ssize_t)sizeof(key) ||
        write(sfd, key, sizeof(key)) != (ssize_t)sizeof(key)) {
        fprintf(stderr, "idle_cpu: cannot make a secret file\n");
        return 1;
    }
    close(rfd);
    close(sfd);
    /* regions belong to tenants: the bench works as tenant "bench" with its own credential */
    char cred[sizeof(secret) + 16];
    snprintf(cred, sizeof(cred), "%s.cred", secret);
    char why[256];
    if (xm_tenant_add(secret, NULL, "bench", cred, why, sizeof(why)) != XM_OK) {
        fprintf(stderr, "idle_cpu: cannot issue a tenant credential: %s\n", why);
        unlink(secret);
        return 1;
    }
    /* the bench's own main, before any thread: libxmem reads these at xm_connect */
    setenv("XMEM_SECRET_FILE", cred, 1);

    printf("idle_cpu: xmemd %s; idle %u s; %u pauses of %u ms; busy p50 over %u 4 KiB reads; "
           "appliance CPU %d, client CPU %d (-1: not pinned)\n",
           xmemd, idle_s, pauses, pause_ms, iters, pin_appl, pin_client);
    printf("%-8s %12s %14s %11s %14s %14s %14s %9s %9s %7s\n", "provider", "idle %CPU", "idle+client %",
           "busy p50 us", "first p50 us", "first max us", "first p90 us", "p50 x", "max x", "x raw");
    double raw_first = raw_reference(pauses, pause_ms, iters, pin_appl);
    int rc = 0;
    char list[256];
    snprintf(list, sizeof(list), "%s", providers);
    char *save = NULL;
    for (char *prov = strtok_r(list, ",", &save); prov != NULL; prov = strtok_r(NULL, ",", &save)) {
        appliance_t a;
        if (start_appliance(xmemd, prov, secret, pin_appl, &a) != 0) {
            rc = 1;
            continue;
        }
        sleep(1); /* startup done */
        double idle = cpu_percent(a.pid, idle_s);

        setenv("XMEM_APPLIANCE", a.addr, 1);
        setenv("XMEM_TRANSPORT", prov, 1); /* tcp, or local: the appliance maps regions to us */
        xm_ctx_h ctx = NULL;
        xm_region_h reg = NULL;
        if (xm_connect(NULL, &ctx) != XM_OK ||
            xm_region_create(ctx, 1u << 20, NULL, &reg) != XM_OK) {
            fprintf(stderr, "idle_cpu: %s: %s\n", prov, ctx != NULL ? xm_last_error(ctx) : "connect");
            if (ctx != NULL) xm_disconnect(ctx);
            stop_appliance(&a);
            rc = 1;
            continue;
        }
        static char buf[4096];
        uint64_t *lat = calloc(iters, sizeof(*lat));
        uint64_t *first = calloc(pauses, sizeof(*first));
        bool ok = true;
        for (unsigned i = 0; i < 200 && ok; i++) ok = xm_read(reg, 0, buf, sizeof(buf)) == XM_OK;
        sleep_ms(1500); /* let the appliance fall asleep after the warm-up */
        double idle_client = cpu_percent(a.pid, idle_s);
        for (unsigned i = 0; i < 200 && ok; i++) ok = xm_read(reg, 0, buf, sizeof(buf)) == XM_OK;
        for (unsigned i = 0; i < iters && ok; i++) {
            uint64_t t0 = bench_now_ns();
            ok = xm_read(reg, (i % 256) * 4096ull, buf, sizeof(buf)) == XM_OK;
            lat[i] = bench_now_ns() - t0;
        }
        for (unsigned i = 0; i < pauses && ok; i++) {
            sleep_ms(pause_ms);
            uint64_t t0 = bench_now_ns();
            ok = xm_read(reg, (i % 256) * 4096ull, buf, sizeof(buf)) == XM_OK;
            first[i] = bench_now_ns() - t0;
        }
        if (!ok) {
            fprintf(stderr, "idle_cpu: %s: read: %s\n", prov, xm_last_error(ctx));
            rc = 1;
        } else {
            double busy = (double)bench_quantile(lat, iters, 0.5, 0) / 1e3;
            double f50 = (double)bench_quantile(first, pauses, 0.5, 0) / 1e3;
            double f90 = (double)bench_quantile(first, pauses, 0.9, 1) / 1e3;
            double fmax = (double)first[pauses - 1] / 1e3;
            printf("%-8s %12.2f %14.2f %11.1f %14.1f %14.1f %14.1f %9.2f %9.2f %7.2f\n", prov, idle,
                   idle_client, busy, f50, fmax, f90, f50 / busy, fmax / busy,
                   raw_first > 0 ? f50 / raw_first : 0.0);
            fflush(stdout);
        }
        free(lat);
        free(first);
        xm_region_destroy(ctx, xm_region_id(reg), NULL);
        xm_region_close(reg);
        xm_disconnect(ctx);
        stop_appliance(&a);
    }
    unlink(cred);
    char tenants[sizeof(secret) + 16];
    snprintf(tenants, sizeof(tenants), "%s.tenants", secret);
    unlink(tenants);
    snprintf(tenants, sizeof(tenants), "%s.tenants.lock", secret);
    unlink(tenants);
    unlink(secret);
    return rc;

usage:
    fprintf(stderr, "usage: idle_cpu [--xmemd PATH] [--providers tcp,local] [--idle-s N] "
                    "[--pause-ms MS] [--pauses N] [--iters N] [--pin-appliance CPU] [--pin-client CPU]\n");
    return 2;
}
