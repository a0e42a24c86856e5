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
    return cli_fail_ctx(ctx, what, s);
}

static int no_args(cli_t *cli, int want)
{
    if (cli->argc < want) {
        fprintf(stderr, "xmem: %s: give the allocation's ID|NAME; see xmem %s --help\n", cli->cmd, cli->cmd);
        return 2;
    }
    if (cli->argc > want) {
        fprintf(stderr, "xmem: %s: unexpected argument '%s'; see xmem %s --help\n", cli->cmd,
                cli->argv[want], cli->cmd);
        return 2;
    }
    return 0;
}

/* Connect to the manager named by --manager or XMEM_MANAGER. */
static int connect_manager(cli_t *cli, xm_ctx_h *ctx_p)
{
    if (cli->conn.manager == NULL) {
        const char *env = getenv("XMEM_MANAGER");
        if (env == NULL || env[0] == '\0') {
            return cli_fail(cli->cmd, "no manager: give --manager HOST:PORT or export "
                            "XMEM_MANAGER (eval \"$(xmem up)\" starts a local one)");
        }
        cli->conn.manager = env;
    }
    return cli_connect(cli, ctx_p);
}

int cmd_appliances(cli_t *cli)
{
    if (cli_parse(cli, NULL) != 0 || no_args(cli, 0) != 0) return 2;
    xm_ctx_h ctx;
    if (connect_manager(cli, &ctx) != 0) return 1;
    xm_appliance_entry_t *es;
    size_t n;
    xm_status_t s = xm_appliance_list(ctx, &es, &n);
    if (s != XM_OK) return fail(ctx, "appliances", s);
    char a[32], b[32];
    json_t *all = cli->json ? json_array() : NULL;
    if (!cli->json) printf("%-22s %-8s %-10s %-10s %-10s %-8s %s\n", "ADDRESS", "STATE", "DOMAIN",
                           "CAPACITY", "USED", "REGIONS", "PROVIDER");
    for (size_t i = 0; i < n; i++) {
        if (cli->json) {
            json_array_append_new(all, json_pack("{s:s, s:s, s:s, s:I, s:I, s:i, s:s, s:I}",
                "addr", es[i].addr, "state", es[i].state, "domain", es[i].domain,
                "capacity", (json_int_t)es[i].capacity, "used", (json_int_t)es[i].used,
                "regions", (int)es[i].regions, "provider", es[i].provider,
                "other_used", (json_int_t)es[i].other_used));
        } else {
            printf("%-22s %-8s %-10s %-10s %-10s %-8u %s\n", es[i].addr, es[i].state, es[i].domain,
                   cli_size(es[i].capacity, a, sizeof(a)), cli_size(es[i].used, b, sizeof(b)),
                   es[i].regions, es[i].provider);
        }
    }
    free(es);
    xm_disconnect(ctx);
    return cli->json ? cli_json_print(all) : 0;
}

int cmd_alloc(cli_t *cli)
{
    const char *size_text = NULL, *policy = NULL, *name = NULL;
    const cli_opt_t opts[] = {{"size", &size_text, NULL}, {"policy", &policy, NULL},
                              {"name", &name, NULL}, {NULL}};
    uint64_t size;
    if (cli_parse(cli, opts) != 0) return 2;
    if (size_text == NULL) {
        fprintf(stderr, "xmem: alloc: give --size SIZE (e.g. 1G); see xmem alloc --help\n");
        return 2;
    }
    if (cli_sz(cli, "--size", size_text, 1, &size) != 0 || no_args(cli, 0) != 0) return 2;
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
    if (cli_parse(cli, NULL) != 0 || no_args(cli, 0) != 0) return 2;
    xm_ctx_h ctx;
    if (connect_manager(cli, &ctx) != 0) return 1;
    xm_alloc_info_t *in;
    size_t n;
    xm_status_t s = xm_alloc_list(ctx, &in, &n);
    if (s != XM_OK) return fail(ctx, "ls", s);
    char a[32];
    json_t *all = cli->json ? json_array() : NULL;
    if (!cli->json) printf("%-6s %-12s %-16s %-20s %-10s %-6s %s\n", "ID", "SIZE", "POLICY", "NAME",
                           "OWNER", "PARTS", "STATE");
    for (size_t i = 0; i < n; i++) {
        if (cli->json) {
            json_t *o = json_pack("{s:I, s:I, s:s, s:s, s:s, s:i, s:s, s:i, s:i, s:i, s:i}",
                "id", (json_int_t)in[i].id, "size", (json_int_t)in[i].size, "policy", in[i].policy,
                "name", in[i].name, "owner", in[i].owner, "parts", (int)in[i].parts,
                "state", in[i].state, "redundancy", (int)in[i].redundancy,
                "unavailable", (int)in[i].unavailable, "domains", (int)in[i].domains,
                "domain_max", (int)in[i].domain_max);
            json_array_append_new(all, o);
        } else {
            printf("%-6llu %-12s %-16s %-20s %-10s %-6u %s\n", (unsigned long long)in[i].id,
                   cli_size(in[i].size, a, sizeof(a)), in[i].policy, in[i].name[0] ? in[i].name : "-",
                   in[i].owner, in[i].parts, in[i].state);
        }
    }
    free(in);
    xm_disconnect(ctx);
    return cli->json ? cli_json_print(all) : 0;
}

int cmd_free(cli_t *cli)
{
    if (cli_parse(cli, NULL) != 0 || no_args(cli, 1) != 0) return 2;
    uint64_t id;
    const char *name;
    cli_ref(cli->argv[0], &id, &name);
    xm_ctx_h ctx;
    if (connect_manager(cli, &ctx) != 0) return 1;
    xm_status_t s = xm_free(ctx, id, name);
    if (s != XM_OK) return fail(ctx, "free", s);
    xm_disconnect(ctx);
    return 0;
}

static void scrub_progress(uint64_t done, uint64_t total, void *arg)
{
    cli_progress_step(arg, "scrub", "units", (unsigned)(done < total ? done : total), (unsigned)total);
}

int cmd_scrub(cli_t *cli)
{
    if (cli_parse(cli, NULL) != 0 || no_args(cli, 1) != 0) return 2;
    uint64_t id;
    const char *name;
    cli_ref(cli->argv[0], &id, &name);
    xm_ctx_h ctx;
    if (connect_manager(cli, &ctx) != 0) return 1;
    xm_alloc_h a;
    xm_status_t s = xm_attach(ctx, id, name, XM_ACCESS_READ_WRITE, &a);
    if (s != XM_OK) return fail(ctx, "scrub", s);
    xm_scrub_report_t rep;
    cli_progress_t prog = {0};
    s = xm_alloc_scrub(a, isatty(STDERR_FILENO) ? scrub_progress : NULL, &prog, &rep);
    cli_progress_end(&prog);
    if (cli->json) {
        cli_json_print(json_pack("{s:I, s:I, s:I, s:b}", "units", (json_int_t)rep.units,
                                 "repaired", (json_int_t)rep.repaired,
                                 "skipped", (json_int_t)rep.skipped, "ok", s == XM_OK));
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

static void run_dir(const char *d, char *dir, size_t len)
{
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

/* xmem up with XMEM_MANAGER exported: a manager that answers is used as it is (true: the
 * export lines are printed again); one that does not on this host is taken for a leftover of
 * an earlier `xmem up` (false: a new cluster starts); elsewhere, refused (cli->argc = -1). */
static bool reuse_exported(cli_t *cli)
{
    const char *m = getenv("XMEM_MANAGER");
    if (cli->conn.manager != NULL) m = cli->conn.manager;
    if (m == NULL || m[0] == '\0') return false;
    xm_connect_opts_t o = cli->conn;
    o.manager = m;
    o.timeout_ms = 2000;
    xm_ctx_h ctx;
    xm_status_t s = xm_connect(&o, &ctx);
    if (s == XM_OK) {
        xm_disconnect(ctx);
        const char *sf = cli->conn.secret_file != NULL ? cli->conn.secret_file : getenv("XMEM_SECRET_FILE");
        printf("export XMEM_MANAGER='%s';\n", m);
        if (sf != NULL && sf[0] != '\0') printf("export XMEM_SECRET_FILE='%s';\n", sf);
        fprintf(stderr, "xmem: up: the manager at %s (XMEM_MANAGER) is already running and answers: "
                "nothing started (xmem down stops a local cluster; unset XMEM_MANAGER to start "
                "another)\n", m);
        return true;
    }
    if (s == XM_ERR_CONNECT || s == XM_ERR_TIMEOUT || s == XM_ERR_DISCONNECTED) {
        if (strncmp(m, "127.", 4) == 0 || strncmp(m, "localhost:", 10) == 0 || strncmp(m, "[::1]", 5) == 0) {
            fprintf(stderr, "xmem: up: XMEM_MANAGER=%s does not answer (left from an earlier "
                    "xmem up?): starting a new local cluster\n", m);
            return false;
        }
        cli_fail("up", "XMEM_MANAGER=%s is exported but does not answer (%s): unset it to start "
                 "a local cluster", m, xm_last_error(NULL));
    } else {
        cli_fail("up", "XMEM_MANAGER=%s is exported and running, but refused this client (%s): fix "
                 "XMEM_SECRET_FILE, or unset XMEM_MANAGER to start a local cluster", m,
                 xm_last_error(NULL));
    }
    cli->argc = -1;
    return false;
}

int cmd_up(cli_t *cli)
{
    char dir[PATH_MAX], path[PATH_MAX + 64], secret[PATH_MAX + 16], bin[PATH_MAX + 32];
    const char *nt = NULL, *pool = "1G", *provider = "tcp", *dopt = NULL;
    const cli_opt_t opts[] = {{"appliances", &nt, NULL}, {"pool", &pool, NULL},
                              {"data-provider", &provider, NULL}, {"dir", &dopt, NULL}, {NULL}};
    uint64_t n = 3, pool_bytes;
    if (cli_parse(cli, opts) != 0 || (nt != NULL && cli_u64(cli, "--appliances", nt, 1, 64, &n) != 0) ||
        cli_sz(cli, "--pool", pool, 1, &pool_bytes) != 0 || no_args(cli, 0) != 0)
        return 2;
    run_dir(dopt, dir, sizeof(dir));
    if (reuse_exported(cli)) return 0;
    if (cli->argc < 0) return 1; /* reuse_exported refused */
    snprintf(path, sizeof(path), "%s/manager.pid", dir);
    if (access(path, F_OK) == 0) {
        /* ours, still running: print its lines again (eval is idempotent) */
        snprintf(path, sizeof(path), "%s/env", dir);
        FILE *ef = fopen(path, "r");
        char line[2 * PATH_MAX];
        if (ef != NULL) {
            while (fgets(line, sizeof(line), ef) != NULL) fputs(line, stdout);
            fclose(ef);
            fprintf(stderr, "xmem: up: a local cluster from %s is already running: its settings "
                    "again above (xmem down stops it)\n", dir);
            return 0;
        }
        return cli_fail("up", "%s already holds a running cluster (xmem down stops it)", dir);
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        if (errno == ENOENT)
            return cli_fail("up", "cannot create the run directory %s: its parent directory does "
                            "not exist (create it, or set --dir / XMEM_RUN_DIR)", dir);
        return cli_fail("up", "cannot create the run directory %s: %s", dir, strerror(errno));
    }
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
    if (getenv("XMEM_SECRET_FILE") != NULL && getenv("XMEM_SECRET_FILE")[0] != '\0') {
        fprintf(stderr, "xmem: up: XMEM_SECRET_FILE=%s is exported: the lines below replace it "
                "with this cluster's credential\n", getenv("XMEM_SECRET_FILE"));
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
    for (int i = 0; i < (int)n; i++) {
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
        if (up >= (int)n) break;
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
    /* stdout is for eval "$(xmem up)": shell lines only; what a person reads goes to stderr */
    char lines[3 * PATH_MAX];
    snprintf(lines, sizeof(lines), "export XMEM_MANAGER='%s';\nexport XMEM_SECRET_FILE='%s';\n",
             maddr, cred);
    snprintf(path, sizeof(path), "%s/env", dir);
    pf = fopen(path, "w");
    if (pf != NULL) {
        fputs(lines, pf);
        fclose(pf);
    }
    fputs(lines, stdout);
    fprintf(stderr, "xmem: manager on %s and %d appliance%s of %s each; state in %s\n"
                    "xmem: run as eval \"$(xmem up ...)\" the export lines above set XMEM_MANAGER and "
                    "XMEM_SECRET_FILE in this shell; otherwise: . %s/env\n",
            maddr, (int)n, n == 1 ? "" : "s", pool, dir, dir);
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
    const char *dopt = NULL;
    const cli_opt_t opts[] = {{"dir", &dopt, NULL}, {NULL}};
    if (cli_parse(cli, opts) != 0 || no_args(cli, 0) != 0) return 2;
    run_dir(dopt, dir, sizeof(dir));
    /* the same rule as up: pid files in a directory another user controls are not ours */
    struct stat dst;
    if (lstat(dir, &dst) == 0 && (!S_ISDIR(dst.st_mode) || dst.st_uid != geteuid() ||
                                  (dst.st_mode & 077) != 0)) {
        return cli_fail("down", "%s is not a private directory of this user: nothing stopped", dir);
    }
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
