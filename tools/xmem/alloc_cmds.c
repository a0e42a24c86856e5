/* xmem appliances / alloc / ls / free (through a manager) and up / down (a local cluster). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xmem/tenant.h>

#include "cli.h"

static int fail(xm_ctx_h ctx, const char *what, xm_status_t s)
{
    const char *detail = xm_last_error(ctx);
    if (strcmp(detail, xm_status_str(s)) == 0) detail = "";
    int rc = cli_fail(what, "%s%s%s", xm_status_str(s), detail[0] ? ": " : "", detail);
    xm_disconnect(ctx);
    return rc;
}

/* Connect to the manager named by --manager or XMEM_MANAGER. */
static int connect_manager(cli_t *cli, xm_ctx_h *ctx_p)
{
    if (cli->conn.manager == NULL) {
        const char *env = getenv("XMEM_MANAGER");
        if (env == NULL || env[0] == '\0') {
            return cli_fail("connect", "no manager: use --manager HOST:PORT or XMEM_MANAGER "
                                       "(xmem up starts a local one)");
        }
        cli->conn.manager = env;
    }
    return cli_connect(cli, ctx_p);
}

int cmd_appliances(cli_t *cli)
{
    if (cli_no_more(cli, 0) != 0) return 2;
    xm_ctx_h ctx;
    if (connect_manager(cli, &ctx) != 0) return 1;
    xm_appliance_entry_t *es;
    size_t n;
    xm_status_t s = xm_appliance_list(ctx, &es, &n);
    if (s != XM_OK) return fail(ctx, "appliances", s);
    char a[32], b[32];
    if (!cli->json) printf("%-22s %-8s %-10s %-10s %-10s %-8s %s\n", "ADDRESS", "STATE", "DOMAIN",
                           "CAPACITY", "USED", "REGIONS", "PROVIDER");
    for (size_t i = 0; i < n; i++) {
        if (cli->json) {
            printf("%s{\"addr\":\"%s\",\"state\":\"%s\",\"domain\":\"%s\",\"capacity\":%llu,"
                   "\"used\":%llu,\"regions\":%u,\"provider\":\"%s\"}", i == 0 ? "[" : ",",
                   es[i].addr, es[i].state, es[i].domain, (unsigned long long)es[i].capacity,
                   (unsigned long long)es[i].used, es[i].regions, es[i].provider);
        } else {
            printf("%-22s %-8s %-10s %-10s %-10s %-8u %s\n", es[i].addr, es[i].state, es[i].domain,
                   cli_size(es[i].capacity, a, sizeof(a)), cli_size(es[i].used, b, sizeof(b)),
                   es[i].regions, es[i].provider);
        }
    }
    if (cli->json) printf(n == 0 ? "[]\n" : "]\n");
    free(es);
    xm_disconnect(ctx);
    return 0;
}

int cmd_alloc(cli_t *cli)
{
    const char *size_text = cli_take(cli, "--size");
    const char *policy = cli_take(cli, "--policy");
    const char *name = cli_take(cli, "--name");
    uint64_t size;
    if (size_text == NULL || xm_parse_size(size_text, &size) != XM_OK || size == 0) {
        fprintf(stderr, "usage: xmem alloc --size SIZE [--policy POLICY] [--name N]\n"
                        "  POLICY: single | stripe:N[:CHUNK] | replicate:R | ec:K+M[:CHUNK]\n"
                        "  (N 1..1024; R 2..8; K 1..16, M 1..4, K+M <= 20; CHUNK a power of two,\n"
                        "   ec 4K..4M, default 64K)\n");
        return 2;
    }
    if (cli_no_more(cli, 0) != 0) return 2;
    xm_ctx_h ctx;
    if (connect_manager(cli, &ctx) != 0) return 1;
    /* made, not opened: the CLI reads and writes nothing */
    xm_alloc_info_t in;
    xm_status_t s = xm_alloc_create(ctx, size, policy, name, &in);
    if (s != XM_OK) return fail(ctx, "alloc", s);
    printf("%llu\n", (unsigned long long)in.id);
    /* the manager places parts in distinct failure domains where there are enough and
     * anyway where there are not: say which it was (stdout keeps only the id) */
    if (in.redundancy > 0 && in.domains < in.parts) {
        bool survives = in.domain_max <= in.redundancy;
        fprintf(stderr, "xmem alloc: %s: allocation %llu (%s): its %u parts are in %u failure "
                "domain%s, up to %u in one; it survives the loss of any %u appliance%s, %s\n",
                survives ? "note" : "warning", (unsigned long long)in.id, in.policy, in.parts,
                in.domains, in.domains == 1 ? "" : "s", in.domain_max, in.redundancy,
                in.redundancy == 1 ? "" : "s",
                survives ? "and of any one domain" : "not of a whole domain");
    }
    xm_disconnect(ctx);
    return 0;
}

int cmd_ls(cli_t *cli)
{
    if (cli_no_more(cli, 0) != 0) return 2;
    xm_ctx_h ctx;
    if (connect_manager(cli, &ctx) != 0) return 1;
    xm_alloc_info_t *in;
    size_t n;
    xm_status_t s = xm_alloc_list(ctx, &in, &n);
    if (s != XM_OK) return fail(ctx, "ls", s);
    char a[32];
    if (!cli->json) printf("%-6s %-12s %-16s %-20s %-10s %-6s %s\n", "ID", "SIZE", "POLICY", "NAME",
                           "OWNER", "PARTS", "STATE");
    for (size_t i = 0; i < n; i++) {
        if (cli->json) {
            printf("%s{\"id\":%llu,\"size\":%llu,\"policy\":\"%s\",\"name\":\"%s\",\"owner\":\"%s\","
                   "\"parts\":%u,\"state\":\"%s\",\"redundancy\":%u,\"unavailable\":%u,"
                   "\"domains\":%u,\"domain_max\":%u}", i == 0 ? "[" : ",",
                   (unsigned long long)in[i].id, (unsigned long long)in[i].size, in[i].policy,
                   in[i].name, in[i].owner, in[i].parts, in[i].state, in[i].redundancy,
                   in[i].unavailable, in[i].domains, in[i].domain_max);
        } else {
            printf("%-6llu %-12s %-16s %-20s %-10s %-6u %s\n", (unsigned long long)in[i].id,
                   cli_size(in[i].size, a, sizeof(a)), in[i].policy, in[i].name[0] ? in[i].name : "-",
                   in[i].owner, in[i].parts, in[i].state);
        }
    }
    if (cli->json) printf(n == 0 ? "[]\n" : "]\n");
    free(in);
    xm_disconnect(ctx);
    return 0;
}

int cmd_free(cli_t *cli)
{
    if (cli->argc < 1 || cli->argv[0][0] == '-') {
        fprintf(stderr, "usage: xmem free ID|NAME\n");
        return 2;
    }
    uint64_t id;
    const char *name;
    cli_ref(cli->argv[0], &id, &name);
    if (cli_no_more(cli, 1) != 0) return 2;
    xm_ctx_h ctx;
    if (connect_manager(cli, &ctx) != 0) return 1;
    xm_status_t s = xm_free(ctx, id, name);
    if (s != XM_OK) return fail(ctx, "free", s);
    xm_disconnect(ctx);
    return 0;
}

static void scrub_progress(uint64_t done, uint64_t total, void *arg)
{
    (void)arg;
    fprintf(stderr, "\rxmem scrub: %llu of %llu (%.0f %%)", (unsigned long long)done,
            (unsigned long long)total, total ? 100.0 * (double)done / (double)total : 100.0);
    if (done == total) fputc('\n', stderr);
}

int cmd_scrub(cli_t *cli)
{
    if (cli->argc < 1 || cli->argv[0][0] == '-') {
        fprintf(stderr, "usage: xmem scrub ID|NAME\n"
                        "  check a replicate or ec allocation whole and repair what disagrees\n");
        return 2;
    }
    uint64_t id;
    const char *name;
    cli_ref(cli->argv[0], &id, &name);
    if (cli_no_more(cli, 1) != 0) return 2;
    xm_ctx_h ctx;
    if (connect_manager(cli, &ctx) != 0) return 1;
    xm_alloc_h a;
    xm_status_t s = xm_attach(ctx, id, name, XM_ACCESS_READ_WRITE, &a);
    if (s != XM_OK) return fail(ctx, "scrub", s);
    xm_scrub_report_t rep;
    s = xm_alloc_scrub(a, isatty(STDERR_FILENO) ? scrub_progress : NULL, NULL, &rep);
    if (cli->json) {
        printf("{\"units\":%llu,\"repaired\":%llu,\"skipped\":%llu,\"ok\":%s}\n",
               (unsigned long long)rep.units, (unsigned long long)rep.repaired,
               (unsigned long long)rep.skipped, s == XM_OK ? "true" : "false");
    } else {
        printf("checked %llu units: %llu repaired, %llu skipped (a piece unreachable)\n",
               (unsigned long long)rep.units, (unsigned long long)rep.repaired,
               (unsigned long long)rep.skipped);
    }
    xm_alloc_close(a);
    if (s != XM_OK) return fail(ctx, "scrub", s);
    xm_disconnect(ctx);
    return 0;
}

/* ---- xmem up / down: a manager and N appliances in the background ---------- */

static void run_dir(cli_t *cli, char *dir, size_t len)
{
    const char *d = cli_take(cli, "--dir");
    if (d == NULL) d = getenv("XMEM_RUN_DIR");
    if (d != NULL) snprintf(dir, len, "%s", d);
    else snprintf(dir, len, "/tmp/xmem-run-%u", (unsigned)getuid());
}

/* Start argv in the background, detached, stdout to out and stderr to log; its pid. */
static pid_t spawn(const char *const *argv, const char *out, const char *log)
{
    unlink(out); /* a previous run's "listening on" line must not be read as this one's */
    pid_t pid = fork();
    if (pid != 0) return pid;
    setsid();
    int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644), e = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    int in = open("/dev/null", O_RDONLY);
    dup2(in, 0);
    dup2(o, 1);
    dup2(e, 2);
    execv(argv[0], (char *const *)argv);
    _exit(127);
}

/* Wait for "listening on ADDR" in path; ADDR into addr. */
static bool wait_listening(const char *path, pid_t pid, char *addr, size_t len)
{
    for (int i = 0; i < 200; i++) {
        FILE *f = fopen(path, "r");
        char line[256];
        if (f != NULL) {
            while (fgets(line, sizeof(line), f) != NULL) {
                char *at = strstr(line, "listening on ");
                if (at != NULL) {
                    at += strlen("listening on ");
                    at[strcspn(at, "\n")] = '\0';
                    snprintf(addr, len, "%s", at);
                    fclose(f);
                    return true;
                }
            }
            fclose(f);
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) return false;
        usleep(50000);
    }
    return false;
}

static void sibling(const char *name, char *out, size_t len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    self[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(self, '/');
    if (slash != NULL) *slash = '\0';
    snprintf(out, len, "%s/%s", self, name);
}

int cmd_up(cli_t *cli)
{
    char dir[PATH_MAX], path[PATH_MAX + 64], secret[PATH_MAX + 16], bin[PATH_MAX + 32];
    run_dir(cli, dir, sizeof(dir));
    const char *nt = cli_take(cli, "--appliances"), *pool = cli_take(cli, "--pool");
    const char *provider = cli_take(cli, "--data-provider");
    int n = nt != NULL ? atoi(nt) : 3;
    if (pool == NULL) pool = "1G";
    if (provider == NULL) provider = "tcp";
    if (n < 1 || n > 64 || cli_no_more(cli, 0) != 0) {
        fprintf(stderr, "usage: xmem up [--appliances N (1..64)] [--pool SIZE] [--dir DIR]\n");
        return 2;
    }
    snprintf(path, sizeof(path), "%s/manager.pid", dir);
    if (access(path, F_OK) == 0) return cli_fail("up", "%s already holds a running cluster (xmem down)", dir);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) return cli_fail("up", "mkdir %s: %s", dir, strerror(errno));
    /* a run directory someone else made could hold their secret or their pid files */
    struct stat dst;
    if (lstat(dir, &dst) != 0 || !S_ISDIR(dst.st_mode) || dst.st_uid != geteuid() ||
        (dst.st_mode & 077) != 0) {
        return cli_fail("up", "%s is not a private directory of this user (mode 0700, owner uid %u): "
                        "refused; remove it or set XMEM_RUN_DIR", dir, (unsigned)geteuid());
    }
    snprintf(secret, sizeof(secret), "%s/secret", dir);
    if (access(secret, R_OK) != 0) {
        sibling("xmem", bin, sizeof(bin));
        char cmd[3 * PATH_MAX + 64];
        snprintf(cmd, sizeof(cmd), "'%s' secret new '%s' >/dev/null", bin, secret);
        if (system(cmd) != 0) return cli_fail("up", "cannot write a secret in %s", dir);
    }
    char db[PATH_MAX + 16], out[PATH_MAX + 16], log[PATH_MAX + 16], maddr[64];
    const char *log_level = getenv("XMEM_LOG_LEVEL") != NULL ? getenv("XMEM_LOG_LEVEL") : "warn";
    snprintf(db, sizeof(db), "%s/manager.db", dir);
    snprintf(out, sizeof(out), "%s/manager.out", dir);
    snprintf(log, sizeof(log), "%s/manager.log", dir);
    sibling("xmem-manager", bin, sizeof(bin));
    const char *margv[] = {bin, "--listen", "127.0.0.1:0", "--db", db, "--secret-file", secret,
                           "--log-level", log_level, NULL};
    pid_t mp = spawn(margv, out, log);
    if (!wait_listening(out, mp, maddr, sizeof(maddr))) {
        kill(mp, SIGKILL);
        return cli_fail("up", "xmem-manager did not start (see %s)", log);
    }
    FILE *pf = fopen(path, "w");
    fprintf(pf, "%d\n", (int)mp);
    fclose(pf);
    sibling("xmemd", bin, sizeof(bin));
    for (int i = 0; i < n; i++) {
        char dom[16], aout[PATH_MAX + 32], alog[PATH_MAX + 32], aaddr[64];
        snprintf(dom, sizeof(dom), "d%d", i);
        snprintf(aout, sizeof(aout), "%s/xmemd-%d.out", dir, i);
        snprintf(alog, sizeof(alog), "%s/xmemd-%d.log", dir, i);
        const char *aargv[] = {bin, "--listen", "127.0.0.1:0", "--pool", pool, "--secret-file", secret,
                               "--manager", maddr, "--domain", dom, "--provider", provider,
                               "--log-level", log_level, NULL};
        pid_t ap = spawn(aargv, aout, alog);
        if (!wait_listening(aout, ap, aaddr, sizeof(aaddr))) {
            kill(ap, SIGKILL);
            return cli_fail("up", "xmemd %d did not start (see %s; xmem down stops the rest)", i, alog);
        }
        snprintf(aout, sizeof(aout), "%s/xmemd-%d.pid", dir, i);
        pf = fopen(aout, "w");
        fprintf(pf, "%d\n", (int)ap);
        fclose(pf);
    }
    /* wait until every appliance is registered and validated */
    cli->conn.manager = maddr;
    cli->conn.secret_file = secret;
    for (int tries = 0; tries < 100; tries++) {
        xm_ctx_h ctx;
        int up = 0;
        if (xm_connect(&cli->conn, &ctx) == XM_OK) {
            xm_appliance_entry_t *es;
            size_t k;
            if (xm_appliance_list(ctx, &es, &k) == XM_OK) {
                for (size_t i = 0; i < k; i++) up += strcmp(es[i].state, "up") == 0;
                free(es);
            }
            xm_disconnect(ctx);
        }
        if (up >= n) break;
        usleep(100000);
    }
    /* the user works as a tenant of this cluster, with a credential of its own */
    char tenant[XM_NAME_MAX + 1], cred[PATH_MAX + 96], why[512];
    const char *user = getenv("USER");
    snprintf(tenant, sizeof(tenant), "%s", user != NULL && user[0] != '\0' && user[0] != '@' &&
             strchr(user, '/') == NULL ? user : "user");
    snprintf(cred, sizeof(cred), "%s/%s.cred", dir, tenant);
    if (access(cred, R_OK) != 0 && xm_tenant_add(secret, NULL, tenant, cred, why, sizeof(why)) != XM_OK)
        return cli_fail("up", "cannot issue a credential for tenant %s: %s", tenant, why);
    snprintf(path, sizeof(path), "%s/env", dir);
    pf = fopen(path, "w");
    fprintf(pf, "export XMEM_MANAGER=%s XMEM_SECRET_FILE=%s\n", maddr, cred);
    fclose(pf);
    printf("export XMEM_MANAGER=%s XMEM_SECRET_FILE=%s\n", maddr, cred);
    fprintf(stderr, "xmem: manager on %s and %d appliances of %s each; state in %s (eval the line "
                    "above, or: . %s/env)\n", maddr, n, pool, dir, dir);
    return 0;
}

static int stop_pidfile(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    int pid = 0;
    if (fscanf(f, "%d", &pid) != 1) pid = 0;
    fclose(f);
    unlink(path);
    /* only ever one of ours: a stale or planted pid file must not stop another program */
    char exe_link[64], exe[PATH_MAX];
    snprintf(exe_link, sizeof(exe_link), "/proc/%d/exe", pid);
    ssize_t n = pid > 0 ? readlink(exe_link, exe, sizeof(exe) - 1) : -1;
    if (n <= 0) return 0;
    exe[n] = '\0';
    char *space = strstr(exe, " (deleted)");
    if (space != NULL) *space = '\0';
    const char *base = strrchr(exe, '/') != NULL ? strrchr(exe, '/') + 1 : exe;
    if (strcmp(base, "xmemd") != 0 && strcmp(base, "xmem-manager") != 0) {
        fprintf(stderr, "xmem: %s names pid %d, which is %s, not an xmem daemon: not stopped\n",
                path, pid, exe);
        return 0;
    }
    if (kill(pid, SIGTERM) != 0) return 0;
    for (int i = 0; i < 100 && kill(pid, 0) == 0; i++) usleep(50000);
    if (kill(pid, 0) == 0) kill(pid, SIGKILL);
    return 1;
}

int cmd_down(cli_t *cli)
{
    char dir[PATH_MAX], path[PATH_MAX + 64];
    run_dir(cli, dir, sizeof(dir));
    /* the same rule as up: pid files in a directory another user controls are not ours */
    struct stat dst;
    if (lstat(dir, &dst) == 0 && (!S_ISDIR(dst.st_mode) || dst.st_uid != geteuid() ||
                                  (dst.st_mode & 077) != 0)) {
        return cli_fail("down", "%s is not a private directory of this user: nothing stopped", dir);
    }
    if (cli_no_more(cli, 0) != 0) return 2;
    int stopped = 0;
    for (int i = 0; i < 64; i++) {
        snprintf(path, sizeof(path), "%s/xmemd-%d.pid", dir, i);
        stopped += stop_pidfile(path);
    }
    snprintf(path, sizeof(path), "%s/manager.pid", dir);
    stopped += stop_pidfile(path);
    snprintf(path, sizeof(path), "%s/env", dir);
    unlink(path);
    fprintf(stderr, "xmem: stopped %d processes (the table stays in %s/manager.db)\n", stopped, dir);
    return 0;
}
