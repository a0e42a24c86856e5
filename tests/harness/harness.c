/* Test harness: xmemd processes and the CLI, stopped whatever happens. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xmem/tenant.h>

#include "harness.h"

uint64_t xt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void xt_fill(void *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    uint8_t *p = buf;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

void xt_make_secret(const char *path)
{
    char hex[65];
    uint8_t raw[32];
    xt_fill(raw, sizeof(raw), (uint64_t)getpid() ^ xt_now_ms());
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", raw[i]);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(fd >= 0, "cannot create %s: %s", path, strerror(errno));
    cr_assert(write(fd, hex, 64) == 64);
    close(fd);
}

void xt_dump_log(const xt_appliance_t *a)
{
    FILE *f = fopen(a->log, "r");
    if (f == NULL) return;
    char line[1024];
    fprintf(stderr, "---- xmemd log %s ----\n", a->log);
    while (fgets(line, sizeof(line), f) != NULL) fputs(line, stderr);
    fclose(f);
}

void xt_start(xt_appliance_t *a, const xt_opts_t *o)
{
    xt_opts_t none = {0};
    if (o == NULL) o = &none;
    if (o->dir != NULL) {
        snprintf(a->dir, sizeof(a->dir), "%s", o->dir);
    } else {
        snprintf(a->dir, sizeof(a->dir), "/tmp/xmem-test-XXXXXX");
        cr_assert(mkdtemp(a->dir) != NULL, "mkdtemp: %s", strerror(errno));
    }
    snprintf(a->provider, sizeof(a->provider), "%s", o->provider != NULL ? o->provider : "tcp");
    if (o->secret != NULL) {
        snprintf(a->secret, sizeof(a->secret), "%s", o->secret);
    } else {
        snprintf(a->secret, sizeof(a->secret), "%s/secret", a->dir);
        if (access(a->secret, R_OK) != 0) xt_make_secret(a->secret);
    }
    snprintf(a->log, sizeof(a->log), "%s/xmemd.log", a->dir);
    const char *argv[32];
    int n = 0;
    argv[n++] = XMEM_BIN_DIR "/xmemd";
    argv[n++] = "--listen";
    argv[n++] = o->listen != NULL ? o->listen : "127.0.0.1:0";
    argv[n++] = "--pool";
    argv[n++] = o->pool != NULL ? o->pool : "256M";
    argv[n++] = "--backing";
    argv[n++] = o->backing != NULL ? o->backing : "memfd";
    argv[n++] = "--provider";
    /* local: xmemd serves tcp and (always) the local transport; the clients of this test
     * process choose with XMEM_TRANSPORT */
    argv[n++] = "tcp";
    setenv("XMEM_TRANSPORT", strcmp(a->provider, "tcp") == 0 ? "tcp" : "local", 1);
    argv[n++] = "--secret-file";
    argv[n++] = a->secret;
    argv[n++] = "--log-level";
    argv[n++] = "info";
    for (int i = 0; i < 8 && o->extra[i] != NULL; i++) argv[n++] = o->extra[i];
    argv[n] = NULL;

    int out[2];
    cr_assert(pipe2(out, O_CLOEXEC) == 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        /* the appliance never outlives the test process */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        dup2(out[1], 1);
        int logfd = open(a->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (logfd >= 0) dup2(logfd, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(out[1]);
    a->pid = pid;
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
        xt_dump_log(a);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        a->pid = 0;
        cr_assert_fail("xmemd did not start (output: '%s')", buf);
    }
    at += strlen("listening on ");
    at[strcspn(at, "\n")] = '\0';
    snprintf(a->addr, sizeof(a->addr), "%s", at);
}

static int wait_exit(pid_t pid, int timeout_ms)
{
    uint64_t deadline = xt_now_ms() + (uint64_t)timeout_ms;
    int st;
    while (xt_now_ms() < deadline) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return st;
        usleep(10000);
    }
    return -1;
}

int xt_stop(xt_appliance_t *a)
{
    if (a->pid <= 0) return 0;
    kill(a->pid, SIGTERM);
    int st = wait_exit(a->pid, 15000);
    if (st == -1) {
        kill(a->pid, SIGKILL);
        waitpid(a->pid, NULL, 0);
        a->pid = 0;
        xt_dump_log(a);
        return -1;
    }
    a->pid = 0;
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (code != 0) xt_dump_log(a);
    return code;
}

void xt_kill9(xt_appliance_t *a)
{
    if (a->pid <= 0) return;
    kill(a->pid, SIGKILL);
    waitpid(a->pid, NULL, 0);
    a->pid = 0;
}

void xt_cleanup(xt_appliance_t *a)
{
    if (a->pid > 0) xt_kill9(a);
    if (a->dir[0] != '\0' && strncmp(a->dir, "/tmp/xmem-test-", 15) == 0) {
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", a->dir);
        if (system(cmd) != 0) { /* best effort */ }
    }
}

const char *xt_cred(const char *secret, const char *tenant, char *path, size_t len)
{
    if (tenant[0] == '@') {
        snprintf(path, len, "%s", secret);
        return path;
    }
    snprintf(path, len, "%s.%s.cred", secret, tenant);
    if (access(path, F_OK) != 0) {
        char why[512];
        xm_status_t s = xm_tenant_add(secret, NULL, tenant, path, why, sizeof(why));
        if (s != XM_OK && access(path, F_OK) == 0) {
            usleep(200000); /* another process of the test issued it just now: let it finish */
            s = XM_OK;
        }
        cr_assert_eq(s, XM_OK, "issue a credential for %s: %s", tenant, why);
    }
    return path;
}

xm_status_t xt_try_connect(const xt_appliance_t *a, const char *tenant, const char *secret,
                           uint32_t timeout_ms, xm_ctx_h *ctx_p)
{
    char cred[PATH_MAX + 80];
    if (tenant == NULL) tenant = "alice";
    if (secret == NULL) secret = xt_cred(a->secret, tenant, cred, sizeof(cred));
    xm_connect_opts_t o = {.size = sizeof(xm_connect_opts_t), .appliance = a->addr, .secret_file = secret,
                           .tenant = tenant, .timeout_ms = timeout_ms};
    return xm_connect(&o, ctx_p);
}

xm_ctx_h xt_connect(const xt_appliance_t *a, const char *tenant)
{
    xm_ctx_h ctx = NULL;
    xm_status_t s = xt_try_connect(a, tenant, NULL, 5000, &ctx);
    cr_assert_eq(s, XM_OK, "connect to %s: %s", a->addr, xm_status_str(s));
    return ctx;
}

static char *slurp(int fd, size_t *len_p)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (len == cap) buf = realloc(buf, (cap *= 2) + 1);
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    if (len_p != NULL) *len_p = len;
    return buf;
}

int xt_cli(const xt_appliance_t *a, const void *in, size_t in_len, char **out, size_t *out_len,
           char **err, const char *arg0, ...)
{
    const char *argv[40];
    int n = 0;
    argv[n++] = XMEM_BIN_DIR "/xmem";
    va_list ap;
    va_start(ap, arg0);
    for (const char *s = arg0; s != NULL && n < 39; s = va_arg(ap, const char *)) argv[n++] = s;
    va_end(ap);
    argv[n] = NULL;
    char inpath[PATH_MAX], outpath[PATH_MAX], errpath[PATH_MAX];
    snprintf(inpath, sizeof(inpath), "%s/cli.in", a->dir);
    snprintf(outpath, sizeof(outpath), "%s/cli.out", a->dir);
    snprintf(errpath, sizeof(errpath), "%s/cli.err", a->dir);
    int fd = open(inpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (in_len > 0) cr_assert(write(fd, in, in_len) == (ssize_t)in_len);
    close(fd);
    /* the CLI proves its tenant with that tenant's credential */
    char cred[PATH_MAX + 80];
    const char *who = getenv("XMEM_TENANT") != NULL ? getenv("XMEM_TENANT") : "alice";
    xt_cred(a->secret, who, cred, sizeof(cred));
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int i = open(inpath, O_RDONLY), o = open(outpath, O_WRONLY | O_CREAT | O_TRUNC, 0600),
            e = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(i, 0);
        dup2(o, 1);
        dup2(e, 2);
        setenv("XMEM_APPLIANCE", a->addr, 1);
        setenv("XMEM_SECRET_FILE", cred, 1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st = wait_exit(pid, 60000);
    if (st == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        cr_assert_fail("xmem CLI hung");
    }
    if (out != NULL) {
        fd = open(outpath, O_RDONLY);
        *out = slurp(fd, out_len);
        close(fd);
    }
    if (err != NULL) {
        fd = open(errpath, O_RDONLY);
        *err = slurp(fd, NULL);
        close(fd);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

size_t xt_rss(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    size_t kb = 0;
    if (f == NULL) return 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) kb = strtoul(line + 6, NULL, 10);
    }
    fclose(f);
    return kb * 1024;
}
