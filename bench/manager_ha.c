/* The manager group on etcd (docs/ha.md) against the single manager on SQLite, in one run:
 *   allocate+free pairs/s from T threads: SQLite store, etcd store (the group's leader);
 *   the raw etcd txn rate from T threads through the same HTTP client (what bounds the
 *   etcd store: each allocation and each free is one guarded txn, or part of one);
 *   leader failover: F times kill -9 the leader under a loop of allocations, the time from
 *   the kill to the next allocation served; at the end, no allocation lost or duplicated.
 * Starts its own etcd (on loopback free ports, data dir under --etcd-dir, default /tmp:
 * this machine's disk; /dev/shm takes fsync out), managers and an appliance from the
 * directory of this program (build/bin).
 *   manager_ha [--threads T] [--pairs N] [--failovers F] [--etcd-dir DIR] */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xmem/xmem.h>

#include "../src/manager/etcd.h"
#include "bench_util.h"

static char bindir[PATH_MAX], dir[PATH_MAX], secret[PATH_MAX + 16], cred[PATH_MAX + 16];
static int threads = 6, pairs = 1000, failovers = 20;

static void die(const char *what)
{
    fprintf(stderr, "manager_ha: %s\n", what);
    exit(1);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) die("no free port");
    close(fd);
    return ntohs(sa.sin_port);
}

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                             .sin_port = htons((uint16_t)port)};
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/* Start argv (NULL-terminated) with stderr to log; with want_addr, wait for its
 * "listening on HOST:PORT" line and copy the address. */
static pid_t spawn(const char *const *argv, const char *log, char *addr, size_t addrlen)
{
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(out[1], 1);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) dup2(fd, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(out[1]);
    if (addr != NULL) {
        char buf[512] = {0};
        size_t got = 0;
        uint64_t deadline = bench_now_ns() + 20000000000ull;
        while (strchr(buf, '\n') == NULL && got < sizeof(buf) - 1 && bench_now_ns() < deadline) {
            struct pollfd p = {.fd = out[0], .events = POLLIN};
            if (poll(&p, 1, 200) <= 0) continue;
            ssize_t r = read(out[0], buf + got, sizeof(buf) - 1 - got);
            if (r <= 0) break;
            got += (size_t)r;
        }
        char *at = strstr(buf, "listening on ");
        if (at == NULL) {
            fprintf(stderr, "manager_ha: %s did not start (log %s)\n", argv[0], log);
            exit(1);
        }
        at += strlen("listening on ");
        at[strcspn(at, "\n")] = '\0';
        snprintf(addr, addrlen, "%s", at);
    }
    close(out[0]);
    return pid;
}

static void stop(pid_t *pid, int sig)
{
    if (*pid <= 0) return;
    kill(*pid, sig);
    waitpid(*pid, NULL, 0);
    *pid = 0;
}

/* CPU time (user + system) of a process so far, ns; 0 when unknown. */
static uint64_t proc_cpu_ns(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    /* fields after the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt
     * cmajflt utime stime */
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    return (ut + st) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

/* ---- allocate+free pairs ---- */

typedef struct churn {
    const char *managers;
    int failures;
    char error[256];
} churn_t;

static xm_ctx_h connect_to(const char *managers)
{
    xm_connect_opts_t o = XM_CONNECT_OPTS_INIT;
    o.manager = managers;
    o.secret_file = cred;
    o.timeout_ms = 10000;
    xm_ctx_h ctx;
    if (xm_connect(&o, &ctx) != XM_OK) {
        fprintf(stderr, "manager_ha: connect %s: %s\n", managers, xm_last_error(NULL));
        exit(1);
    }
    return ctx;
}

static void *churn_main(void *arg)
{
    churn_t *c = arg;
    xm_ctx_h ctx = connect_to(c->managers);
    for (int i = 0; i < pairs; i++) {
        xm_alloc_h a;
        if (xm_alloc(ctx, 1 << 20, "single", NULL, &a) != XM_OK) {
            if (c->failures++ == 0) snprintf(c->error, sizeof(c->error), "alloc: %s", xm_last_error(ctx));
            continue;
        }
        if (xm_free(ctx, xm_region_id(a), NULL) != XM_OK && c->failures++ == 0)
            snprintf(c->error, sizeof(c->error), "free: %s", xm_last_error(ctx));
        xm_alloc_close(a);
    }
    xm_disconnect(ctx);
    return NULL;
}

static double pairs_per_s(const char *managers)
{
    pthread_t th[64];
    churn_t c[64];
    memset(c, 0, sizeof(c));
    /* warm-up: connections, the stock of fresh regions */
    int saved = pairs;
    pairs = 200;
    c[0].managers = managers;
    churn_main(&c[0]);
    pairs = saved;
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < threads; i++) {
        c[i].managers = managers;
        pthread_create(&th[i], NULL, churn_main, &c[i]);
    }
    int failures = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        if (c[i].failures) fprintf(stderr, "manager_ha: %d failures: %s\n", c[i].failures, c[i].error);
        failures += c[i].failures;
    }
    double s = (double)(bench_now_ns() - t0) / 1e9;
    return failures ? -1 : threads * pairs / s;
}

/* ---- the raw etcd txn rate through the same client ---- */

static const char *etcd_url;
static int raw_txns = 2000;

static void *raw_main(void *arg)
{
    long k = (long)arg;
    mgr_etcd_t *e;
    char why[512];
    if (mgr_etcd_create(etcd_url, 5000, &e, why, sizeof(why)) != XM_OK) die(why);
    for (int i = 0; i < raw_txns; i++) {
        char key[64], val[300];
        snprintf(key, sizeof(key), "/bench-raw/%ld/%d", k, i % 64);
        memset(val, 'v', sizeof(val) - 1); /* about an allocation record's size */
        val[sizeof(val) - 1] = '\0';
        json_t *body = json_pack("{s:[{s:o,s:s,s:s,s:s}],s:[{s:{s:o,s:o}}]}", "compare", "key",
                                 mgr_etcd_b64s("/bench-raw/none"), "result", "EQUAL", "target",
                                 "CREATE", "create_revision", "0", "success", "request_put", "key",
                                 mgr_etcd_b64s(key), "value", mgr_etcd_b64s(val));
        json_t *rep;
        if (mgr_etcd_call(e, "/v3/kv/txn", body, &rep, why, sizeof(why)) != XM_OK) die(why);
        json_decref(rep);
    }
    mgr_etcd_destroy(e);
    return NULL;
}

static double raw_txn_rate(int n)
{
    pthread_t th[64];
    uint64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++) pthread_create(&th[i], NULL, raw_main, (void *)i);
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
    return n * raw_txns / ((double)(bench_now_ns() - t0) / 1e9);
}

/* ---- failovers ---- */

#define MAX_IDS 65536
static struct {
    const char *managers;
    volatile bool stop;
    pthread_mutex_t lock;
    uint64_t ids[MAX_IDS];
    size_t n;
    uint64_t last_ok_ns;
    char error[512];
} fo = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void *fo_main(void *arg)
{
    xm_ctx_h ctx = connect_to(fo.managers);
    for (uint64_t k = 0; !fo.stop && fo.error[0] == '\0'; k++) {
        xm_alloc_h a;
        if (xm_alloc(ctx, 64 << 10, "single", NULL, &a) != XM_OK) {
            snprintf(fo.error, sizeof(fo.error), "alloc: %s", xm_last_error(ctx));
            break;
        }
        uint64_t id = xm_region_id(a);
        xm_alloc_close(a);
        pthread_mutex_lock(&fo.lock);
        if (fo.n < MAX_IDS) fo.ids[fo.n++] = id;
        fo.last_ok_ns = bench_now_ns();
        pthread_mutex_unlock(&fo.lock);
        if (k % 2 == 1) { /* keep the table small: free the one before */
            pthread_mutex_lock(&fo.lock);
            uint64_t victim = fo.ids[fo.n - 2];
            pthread_mutex_unlock(&fo.lock);
            if (xm_free(ctx, victim, NULL) != XM_OK) {
                snprintf(fo.error, sizeof(fo.error), "free: %s", xm_last_error(ctx));
                break;
            }
            pthread_mutex_lock(&fo.lock);
            fo.ids[fo.n - 2] = fo.ids[fo.n - 1];
            fo.n--;
            pthread_mutex_unlock(&fo.lock);
        }
    }
    xm_disconnect(ctx);
    return NULL;
}

/* Which manager leads (a handshake that is not a standby's), -1: none. */
static int leader_of(char addrs[][64], int n)
{
    for (int i = 0; i < n; i++) {
        xm_connect_opts_t o = XM_CONNECT_OPTS_INIT;
        o.manager = addrs[i];
        o.secret_file = cred;
        o.timeout_ms = 1000;
        xm_ctx_h ctx;
        if (xm_connect(&o, &ctx) == XM_OK) {
            xm_disconnect(ctx);
            return i;
        }
    }
    return -1;
}

int main(int argc, char **argv)
{
    const char *etcd_dir_base = "/tmp";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--pairs") == 0) pairs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--failovers") == 0) failovers = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--etcd-dir") == 0) etcd_dir_base = argv[i + 1];
        else die("usage: manager_ha [--threads T] [--pairs N] [--failovers F] [--etcd-dir DIR]");
    }
    if (threads < 1 || threads > 64) die("--threads: 1..64");
    if (access("/usr/bin/etcd", X_OK) != 0) die("etcd is not installed (apt-get install etcd-server)");
    ssize_t n = readlink("/proc/self/exe", bindir, sizeof(bindir) - 1);
    if (n <= 0) die("readlink /proc/self/exe");
    bindir[n] = '\0';
    *strrchr(bindir, '/') = '\0';
    snprintf(dir, sizeof(dir), "%s/xmem-ha-bench-XXXXXX", etcd_dir_base);
    if (mkdtemp(dir) == NULL) die("mkdtemp");
    snprintf(secret, sizeof(secret), "%s/secret", dir);
    snprintf(cred, sizeof(cred), "%s/bench.cred", dir);
    char cmd[6 * PATH_MAX];
    snprintf(cmd, sizeof(cmd), "'%s/xmem' secret new '%s' >/dev/null && '%s/xmem' --secret-file '%s' "
             "tenant add bench --out '%s' >/dev/null", bindir, secret, bindir, secret, cred);
    if (system(cmd) != 0) die("cannot make the secret and the tenant credential");

    /* etcd */
    int cport = free_port(), pport = free_port();
    static char url[64], peer[64], cluster[96], edir[PATH_MAX + 8], elog[PATH_MAX + 16];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", cport);
    snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", pport);
    snprintf(cluster, sizeof(cluster), "b=%s", peer);
    snprintf(edir, sizeof(edir), "%s/etcd", dir);
    snprintf(elog, sizeof(elog), "%s/etcd.log", dir);
    etcd_url = url;
    const char *eargv[] = {"/usr/bin/etcd", "--name", "b", "--data-dir", edir, "--listen-client-urls",
                           url, "--advertise-client-urls", url, "--listen-peer-urls", peer,
                           "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster,
                           "--log-level", "warn", NULL};
    pid_t etcd = spawn(eargv, elog, NULL, 0);
    for (int i = 0; i < 200 && !port_open(cport); i++) usleep(50000);
    if (!port_open(cport)) die("etcd did not start");

    /* the SQLite manager and its appliance */
    char log[PATH_MAX + 32], db[PATH_MAX + 16], mbin[PATH_MAX + 32], abin[PATH_MAX + 16];
    snprintf(mbin, sizeof(mbin), "%s/xmem-manager", bindir);
    snprintf(abin, sizeof(abin), "%s/xmemd", bindir);
    snprintf(db, sizeof(db), "%s/manager.db", dir);
    snprintf(log, sizeof(log), "%s/sqlite-manager.log", dir);
    char sq_addr[64], appl_addr[64];
    const char *sargv[] = {mbin, "--listen", "127.0.0.1:0", "--db", db, "--secret-file", secret,
                           "--log-level", "warn", NULL};
    pid_t sq = spawn(sargv, log, sq_addr, sizeof(sq_addr));
    snprintf(log, sizeof(log), "%s/appliance-sqlite.log", dir);
    const char *aargv[] = {abin, "--listen", "127.0.0.1:0", "--pool", "8G", "--secret-file", secret,
                           "--manager", sq_addr, "--domain", "d0", "--heartbeat-ms", "100",
                           "--log-level", "warn", NULL};
    pid_t sq_appl = spawn(aargv, log, appl_addr, sizeof(appl_addr));
    usleep(500000);
    double sqlite_rate = pairs_per_s(sq_addr);
    stop(&sq_appl, SIGTERM);
    stop(&sq, SIGTERM);

    /* the group: two managers on etcd and an appliance */
    char maddr[2][64], mlisten[2][64], managers[160];
    pid_t mpid[2];
    for (int i = 0; i < 2; i++) {
        snprintf(mlisten[i], sizeof(mlisten[i]), "127.0.0.1:%d", free_port());
        snprintf(log, sizeof(log), "%s/manager%d.log", dir, i);
        const char *margv[] = {mbin, "--listen", mlisten[i], "--store", "etcd", "--etcd", url,
                               "--secret-file", secret, "--log-level", "warn", "--down-after-ms", "3000", NULL};
        mpid[i] = spawn(margv, log, maddr[i], sizeof(maddr[i]));
    }
    snprintf(managers, sizeof(managers), "%s,%s", maddr[0], maddr[1]);
    snprintf(log, sizeof(log), "%s/appliance-etcd.log", dir);
    const char *gargv[] = {abin, "--listen", "127.0.0.1:0", "--pool", "8G", "--secret-file", secret,
                           "--manager", managers, "--domain", "d0", "--heartbeat-ms", "100",
                           "--log-level", "warn", NULL};
    pid_t g_appl = spawn(gargv, log, appl_addr, sizeof(appl_addr));
    usleep(1000000);
    int lead0 = -1;
    for (int k = 0; k < 100 && (lead0 = leader_of(maddr, 2)) < 0; k++) usleep(50000);
    uint64_t etcd_cpu0 = proc_cpu_ns(etcd), mgr_cpu0 = lead0 >= 0 ? proc_cpu_ns(mpid[lead0]) : 0;
    double etcd_rate = pairs_per_s(managers);
    double npairs = (double)threads * pairs + 200; /* the warm-up's 200 pairs too */
    double etcd_us = (double)(proc_cpu_ns(etcd) - etcd_cpu0) / 1e3 / npairs;
    double mgr_us = lead0 >= 0 ? (double)(proc_cpu_ns(mpid[lead0]) - mgr_cpu0) / 1e3 / npairs : 0;
    double raw1 = raw_txn_rate(1), rawt = raw_txn_rate(threads);

    printf("manager_ha: %d threads x %d allocate+free pairs of 1 MiB, etcd data in %s\n", threads,
           pairs, etcd_dir_base);
    printf("%-46s %12s\n", "", "per second");
    printf("%-46s %12.0f\n", "pairs, SQLite store (one manager)", sqlite_rate);
    printf("%-46s %12.0f  (%.2fx SQLite)\n", "pairs, etcd store (leader of two)", etcd_rate,
           etcd_rate / sqlite_rate);
    printf("%-46s %12.0f us etcd, %.0f us the leader\n", "CPU per etcd-store pair", etcd_us, mgr_us);
    printf("%-46s %12.0f\n", "raw etcd txns, 1 client (same HTTP client)", raw1);
    printf("%-46s %12.0f  (pairs on etcd = %.2f of these / 2)\n", "raw etcd txns, T clients", rawt,
           2 * etcd_rate / rawt);
    fflush(stdout);

    /* failovers */
    uint64_t *fo_ns = calloc((size_t)failovers + 1, sizeof(*fo_ns));
    fo.managers = managers;
    pthread_t th;
    pthread_create(&th, NULL, fo_main, NULL);
    int done = 0;
    for (int f = 0; f < failovers && fo.error[0] == '\0'; f++) {
        int leader = -1;
        for (int k = 0; k < 400 && (leader = leader_of(maddr, 2)) < 0; k++) usleep(50000);
        if (leader < 0) die("no leader");
        usleep(300000); /* allocations flowing */
        stop(&mpid[leader], SIGKILL);
        uint64_t killed = bench_now_ns(); /* reaped: any success from now on is the new leader's */
        while (fo.last_ok_ns <= killed && fo.error[0] == '\0' && bench_now_ns() < killed + 60000000000ull)
            usleep(1000);
        if (fo.last_ok_ns <= killed) break;
        fo_ns[done++] = fo.last_ok_ns - killed;
        snprintf(log, sizeof(log), "%s/manager%d.log", dir, leader);
        const char *margv[] = {mbin, "--listen", maddr[leader], "--store", "etcd", "--etcd", url,
                               "--secret-file", secret, "--log-level", "warn", "--down-after-ms", "3000", NULL};
        mpid[leader] = spawn(margv, log, maddr[leader], sizeof(maddr[leader]));
        usleep(500000);
    }
    fo.stop = true;
    pthread_join(th, NULL);
    if (fo.error[0] != '\0') fprintf(stderr, "manager_ha: failover loop: %s\n", fo.error);
    /* nothing lost, nothing made twice: the table lists exactly what the client holds */
    xm_ctx_h ctx = connect_to(managers);
    xm_alloc_info_t *infos = NULL;
    size_t nl = 0;
    int mismatch = -1;
    if (xm_alloc_list(ctx, &infos, &nl) == XM_OK) {
        qsort(fo.ids, fo.n, sizeof(uint64_t), bench_cmp_u64);
        uint64_t *l = calloc(nl + 1, sizeof(*l));
        for (size_t i = 0; i < nl; i++) l[i] = infos[i].id;
        qsort(l, nl, sizeof(*l), bench_cmp_u64);
        mismatch = nl != fo.n;
        for (size_t i = 0; !mismatch && i < nl; i++) mismatch = l[i] != fo.ids[i];
        free(l);
        free(infos);
    }
    xm_disconnect(ctx);
    qsort(fo_ns, (size_t)done, sizeof(*fo_ns), bench_cmp_u64);
    printf("leader failovers (kill -9 to the next allocation served): %d of %d\n", done, failovers);
    if (done > 0) {
        printf("  min %.2f s, median %.2f s, max %.2f s (lease TTL 2 s)\n", fo_ns[0] / 1e9,
               fo_ns[done / 2] / 1e9, fo_ns[done - 1] / 1e9);
    }
    printf("  allocations held %zu, listed %zu: %s\n", fo.n, nl,
           mismatch == 0 ? "none lost, none made twice" : "MISMATCH");
    free(fo_ns);
    stop(&g_appl, SIGTERM);
    for (int i = 0; i < 2; i++) stop(&mpid[i], SIGTERM);
    stop(&etcd, SIGTERM);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) { /* best effort */ }
    return mismatch == 0 && fo.error[0] == '\0' ? 0 : 1;
}
