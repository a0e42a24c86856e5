/* Test harness: xmem-manager and local clusters of appliances registered with it. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static void dump(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    char line[1024];
    fprintf(stderr, "---- %s ----\n", path);
    while (fgets(line, sizeof(line), f) != NULL) fputs(line, stderr);
    fclose(f);
}

void xt_manager_start(xt_manager_t *m, const char *dir, const char *secret, const char *listen,
                      const char *const *extra)
{
    snprintf(m->dir, sizeof(m->dir), "%s", dir);
    snprintf(m->secret, sizeof(m->secret), "%s", secret);
    snprintf(m->db, sizeof(m->db), "%s/manager.db", dir);
    snprintf(m->log, sizeof(m->log), "%s/manager.log", dir);
    const char *argv[40];
    int n = 0;
    argv[n++] = XMEM_BIN_DIR "/xmem-manager";
    argv[n++] = "--listen";
    argv[n++] = listen != NULL ? listen : "127.0.0.1:0";
    argv[n++] = "--db";
    argv[n++] = m->db;
    argv[n++] = "--secret-file";
    argv[n++] = m->secret;
    argv[n++] = "--down-after-ms";
    argv[n++] = "600";
    argv[n++] = "--log-level";
    argv[n++] = "info";
    for (int i = 0; extra != NULL && extra[i] != NULL && n < 38; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    int out[2];
    cr_assert(pipe2(out, O_CLOEXEC) == 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        dup2(out[1], 1);
        int logfd = open(m->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (logfd >= 0) dup2(logfd, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(out[1]);
    m->pid = pid;
    char buf[256] = {0};
    size_t got = 0;
    uint64_t deadline = xt_now_ms() + 20000;
    while (got < sizeof(buf) - 1 && strchr(buf, '\n') == NULL && xt_now_ms() < deadline) {
        struct pollfd p = {.fd = out[0], .events = POLLIN};
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t r = read(out[0], buf + got, sizeof(buf) - 1 - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(out[0]);
    char *at = strstr(buf, "listening on ");
    if (at == NULL) {
        dump(m->log);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        m->pid = 0;
        cr_assert_fail("xmem-manager did not start (output: '%s')", buf);
    }
    at += strlen("listening on ");
    at[strcspn(at, "\n")] = '\0';
    snprintf(m->addr, sizeof(m->addr), "%s", at);
}

int xt_manager_stop(xt_manager_t *m)
{
    if (m->pid <= 0) return 0;
    kill(m->pid, SIGTERM);
    uint64_t deadline = xt_now_ms() + 15000;
    int st = 0;
    pid_t r = 0;
    while (xt_now_ms() < deadline && (r = waitpid(m->pid, &st, WNOHANG)) == 0) usleep(10000);
    if (r != m->pid) {
        kill(m->pid, SIGKILL);
        waitpid(m->pid, NULL, 0);
        m->pid = 0;
        dump(m->log);
        return -1;
    }
    m->pid = 0;
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (code != 0) dump(m->log);
    return code;
}

void xt_manager_kill9(xt_manager_t *m)
{
    if (m->pid <= 0) return;
    kill(m->pid, SIGKILL);
    waitpid(m->pid, NULL, 0);
    m->pid = 0;
}

xm_status_t xt_manager_try_connect(const xt_manager_t *m, const char *tenant, xm_ctx_h *ctx_p)
{
    char cred[PATH_MAX + 80];
    if (tenant == NULL) tenant = "alice";
    xm_connect_opts_t o = {.size = sizeof(xm_connect_opts_t), .manager = m->addr,
                           .secret_file = xt_cred(m->secret, tenant, cred, sizeof(cred)),
                           .tenant = tenant, .timeout_ms = 5000};
    return xm_connect(&o, ctx_p);
}

xm_ctx_h xt_manager_connect(const xt_manager_t *m, const char *tenant)
{
    xm_ctx_h ctx = NULL;
    xm_status_t s = xt_manager_try_connect(m, tenant, &ctx);
    cr_assert_eq(s, XM_OK, "connect to manager %s: %s (%s)", m->addr, xm_status_str(s),
                 xm_last_error(NULL));
    return ctx;
}

void xt_cluster_start_appliance(xt_cluster_t *c, int i)
{
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/a%d", c->dir, i);
    mkdir(sub, 0755);
    static char domains[XT_CLUSTER_MAX][8];
    snprintf(domains[i], sizeof(domains[i]), "d%d", i);
    xt_opts_t o = {.provider = c->provider, .pool = c->pool, .secret = c->secret, .dir = sub,
                   .extra = {"--manager", c->mgr.addr, "--domain", domains[i], "--heartbeat-ms",
                             "100"}};
    xt_start(&c->app[i], &o);
}

bool xt_cluster_wait_up(xt_cluster_t *c, int up, int timeout_ms)
{
    uint64_t deadline = xt_now_ms() + (uint64_t)timeout_ms;
    while (xt_now_ms() < deadline) {
        xm_ctx_h ctx;
        if (xt_manager_try_connect(&c->mgr, "harness", &ctx) == XM_OK) {
            xm_appliance_entry_t *es = NULL;
            size_t n = 0;
            int count = 0;
            if (xm_appliance_list(ctx, &es, &n) == XM_OK) {
                for (size_t i = 0; i < n; i++) count += strcmp(es[i].state, "up") == 0;
                free(es);
            }
            xm_disconnect(ctx);
            if (count == up) return true;
        }
        usleep(50000);
    }
    return false;
}

void xt_cluster_start(xt_cluster_t *c, int n, const char *pool, const char *provider,
                      const char *const *mgr_extra)
{
    cr_assert(n <= XT_CLUSTER_MAX);
    memset(c, 0, sizeof(*c));
    snprintf(c->dir, sizeof(c->dir), "/tmp/xmem-test-XXXXXX");
    cr_assert(mkdtemp(c->dir) != NULL, "mkdtemp: %s", strerror(errno));
    snprintf(c->secret, sizeof(c->secret), "%s/secret", c->dir);
    xt_make_secret(c->secret);
    c->n = n;
    c->pool = pool != NULL ? pool : "256M";
    c->provider = provider != NULL ? provider : "tcp";
    xt_manager_start(&c->mgr, c->dir, c->secret, NULL, mgr_extra);
    for (int i = 0; i < n; i++) xt_cluster_start_appliance(c, i);
    if (!xt_cluster_wait_up(c, n, 10000)) {
        dump(c->mgr.log);
        cr_assert_fail("%d appliances did not come up", n);
    }
}

void xt_cluster_stop(xt_cluster_t *c)
{
    for (int i = 0; i < c->n; i++) {
        if (c->app[i].pid > 0) cr_expect_eq(xt_stop(&c->app[i]), 0, "appliance %d: unclean exit", i);
    }
    if (c->mgr.pid > 0) cr_expect_eq(xt_manager_stop(&c->mgr), 0, "manager: unclean exit");
    if (getenv("XT_KEEP_LOG") != NULL) {
        char cmd[PATH_MAX + 64];
        snprintf(cmd, sizeof(cmd), "cp '%s' /tmp/mgr-last.log; cp '%s.tenants' /tmp/tenants-last", c->mgr.log, c->secret);
        if (system(cmd) != 0) { /* debugging aid */ }
    }
    if (c->dir[0] != '\0' && strncmp(c->dir, "/tmp/xmem-test-", 15) == 0) {
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", c->dir);
        if (system(cmd) != 0) { /* best effort */ }
    }
}

void xt_alloc_state(xm_ctx_h ctx, uint64_t id, char *state, size_t len)
{
    state[0] = '\0';
    xm_alloc_info_t *infos = NULL;
    size_t n = 0;
    if (xm_alloc_list(ctx, &infos, &n) != XM_OK) return;
    for (size_t i = 0; i < n; i++) {
        if (infos[i].id == id) snprintf(state, len, "%s", infos[i].state);
    }
    free(infos);
}

uint64_t xt_used_on_appliances(xm_ctx_h ctx, uint32_t *regions_p)
{
    xm_appliance_entry_t *es = NULL;
    size_t n = 0;
    cr_assert_eq(xm_appliance_list(ctx, &es, &n), XM_OK, "%s", xm_last_error(ctx));
    uint64_t used = 0;
    uint32_t regions = 0;
    for (size_t i = 0; i < n; i++) {
        used += es[i].used;
        regions += es[i].regions;
    }
    free(es);
    if (regions_p != NULL) *regions_p = regions;
    return used;
}
