/* Operating the daemons: command line (--version, unknown options, bad numbers named with
 * their source), log files (ISO 8601 lines, reopened on SIGHUP), the Prometheus metrics
 * endpoint (counters move with work; bad HTTP leaves the daemon serving). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xmem/version.h>

#include "harness.h"

/* ---- helpers ------------------------------------------------------------------------ */

/* Run argv (env: extra "NAME=VALUE" or NULL) and capture stdout+stderr; returns the exit code. */
static int run_capture(const char *const *argv, const char *env, char *out, size_t outlen)
{
    int p[2];
    cr_assert(pipe2(p, O_CLOEXEC) == 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 1);
        dup2(p[1], 2);
        if (env != NULL) putenv((char *)env);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    size_t got = 0;
    ssize_t r;
    while ((r = read(p[0], out + got, outlen - 1 - got)) > 0) got += (size_t)r;
    out[got] = '\0';
    close(p[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) return NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) fwrite(chunk, 1, n, m);
    fclose(f);
    fclose(m);
    return buf;
}

/* Wait until path holds needle; the file's text (malloc'd) or NULL after timeout_ms. */
static char *wait_for_text(const char *path, const char *needle, int timeout_ms)
{
    uint64_t until = xt_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        char *t = slurp(path);
        if (t != NULL && strstr(t, needle) != NULL) return t;
        free(t);
        if (xt_now_ms() > until) return NULL;
        usleep(20000);
    }
}

/* The HOST:PORT of the metrics endpoint a daemon logged ("metrics on http://H:P/metrics"). */
static void metrics_addr(const char *log, char *addr, size_t len)
{
    char *t = wait_for_text(log, "metrics on http://", 10000);
    cr_assert_not_null(t, "no metrics line in %s", log);
    char *at = strstr(t, "metrics on http://") + strlen("metrics on http://");
    size_t n = strcspn(at, "/");
    snprintf(addr, len, "%.*s", (int)n, at);
    free(t);
}

static int tcp_connect(const char *addr)
{
    char host[64];
    snprintf(host, sizeof(host), "%s", addr);
    char *colon = strrchr(host, ':');
    cr_assert_not_null(colon);
    *colon = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    cr_assert_eq(inet_pton(AF_INET, host, &sa.sin_addr), 1);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect %s: %s", addr, strerror(errno));
    return fd;
}

/* Send req as is and read the whole answer (the server closes: HTTP/1.0). malloc'd. */
static char *http_raw(const char *addr, const void *req, size_t len)
{
    int fd = tcp_connect(addr);
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, (const char *)req + off, len - off, MSG_NOSIGNAL);
        if (w <= 0) break; /* the server may close early on bad input */
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    char *buf = NULL;
    size_t blen = 0;
    FILE *m = open_memstream(&buf, &blen);
    char chunk[8192];
    uint64_t until = xt_now_ms() + 15000;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 500) == 0) {
            if (xt_now_ms() > until) break;
            continue;
        }
        ssize_t r = recv(fd, chunk, sizeof(chunk), 0);
        if (r <= 0) break;
        fwrite(chunk, 1, (size_t)r, m);
    }
    fclose(m);
    close(fd);
    return buf;
}

static char *scrape(const char *addr)
{
    static const char req[] = "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n";
    char *r = http_raw(addr, req, sizeof(req) - 1);
    cr_assert(strncmp(r, "HTTP/1.", 7) == 0 && strstr(r, " 200 ") != NULL, "scrape of %s: '%.200s'", addr, r);
    cr_assert_not_null(strstr(r, "text/plain; version=0.0.4"), "content type: '%.300s'", r);
    return r;
}

/* The value of the sample "name{labels}" (labels "" for none); -1 when absent. */
static long long sample(const char *text, const char *name, const char *labels)
{
    char key[256];
    if (labels[0] != '\0') snprintf(key, sizeof(key), "\n%s{%s} ", name, labels);
    else snprintf(key, sizeof(key), "\n%s ", name);
    const char *at = strstr(text, key);
    return at != NULL ? atoll(at + strlen(key)) : -1;
}

/* ---- command line ------------------------------------------------------------------- */

Test(ops, version_unknown_options_and_bad_numbers)
{
    char out[8192];
    const char *v[] = {XMEM_BIN_DIR "/xmemd", "--version", NULL};
    cr_assert_eq(run_capture(v, NULL, out, sizeof(out)), 0);
    cr_expect_str_eq(out, "xmemd (xmem) " XM_VERSION_STRING "\n");
    const char *mv[] = {XMEM_BIN_DIR "/xmem-manager", "--version", NULL};
    cr_assert_eq(run_capture(mv, NULL, out, sizeof(out)), 0);
    cr_expect_str_eq(out, "xmem-manager (xmem) " XM_VERSION_STRING "\n");

    const char *typo[] = {XMEM_BIN_DIR "/xmemd", "--pooll", "1G", NULL};
    cr_assert_eq(run_capture(typo, NULL, out, sizeof(out)), 2);
    cr_expect_not_null(strstr(out, "unknown option '--pooll'; did you mean '--pool'?"), "%s", out);

    const char *eq[] = {XMEM_BIN_DIR "/xmemd", "--pool=banana", NULL};
    cr_assert_eq(run_capture(eq, NULL, out, sizeof(out)), 2);
    cr_expect_not_null(strstr(out, "pool = 'banana' (from --pool)"), "%s", out);

    const char *env[] = {XMEM_BIN_DIR "/xmem-manager", "--db", "/nonexistent/x.db", NULL};
    cr_assert_eq(run_capture(env, "XMEM_TIMEOUT_MS=banana", out, sizeof(out)), 2);
    cr_expect_not_null(strstr(out, "timeout-ms = 'banana' (from XMEM_TIMEOUT_MS)"), "%s", out);

    const char *missing[] = {XMEM_BIN_DIR "/xmemd", "--config", "/nonexistent/xmemd.conf", NULL};
    cr_assert_eq(run_capture(missing, NULL, out, sizeof(out)), 2);
    cr_expect_not_null(strstr(out, "/nonexistent/xmemd.conf"), "%s", out);

    const char *help[] = {XMEM_BIN_DIR "/xmem-manager", "--help", NULL};
    cr_assert_eq(run_capture(help, NULL, out, sizeof(out)), 0);
    cr_expect(strncmp(out, "usage: xmem-manager", 19) == 0, "%s", out);
    cr_expect_not_null(strstr(out, "--metrics"));
    cr_expect_not_null(strstr(out, "/etc/xmem/manager.conf"));
}

/* ---- logs ---------------------------------------------------------------------------- */

Test(ops, log_file_has_dated_lines_and_is_reopened_on_sighup, .timeout = 60)
{
    xt_appliance_t a;
    char dir[] = "/tmp/xmem-test-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char log[300], rotated[310];
    snprintf(log, sizeof(log), "%s/daemon.log", dir); /* xmemd.log: the harness's stderr */
    snprintf(rotated, sizeof(rotated), "%s.1", log);
    xt_opts_t o = {.dir = dir, .extra = {"--log-file", log}};
    xt_start(&a, &o);
    struct stat st;
    cr_assert_eq(stat(log, &st), 0);
    cr_expect_eq(st.st_mode & 0777, 0640, "log file mode %o", st.st_mode & 0777);
    char *text = wait_for_text(log, "identity", 10000);
    cr_assert_not_null(text);
    regex_t re;
    cr_assert_eq(regcomp(&re, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}"
                              "[+-][0-9]{2}:[0-9]{2} xmemd\\[[0-9]+\\] (error|warn|info|debug): ",
                         REG_EXTENDED | REG_NOSUB), 0);
    int lines = 0;
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l != NULL; l = strtok_r(NULL, "\n", &save)) {
        cr_expect_eq(regexec(&re, l, 0, NULL, 0), 0, "not an ISO 8601 dated line: '%s'", l);
        lines++;
    }
    cr_expect_geq(lines, 2);
    free(text);

    /* logrotate: move the file, SIGHUP; new lines go to a new file at the old path */
    cr_assert_eq(rename(log, rotated), 0);
    cr_assert_eq(kill(a.pid, SIGHUP), 0);
    text = wait_for_text(log, "SIGHUP", 10000);
    cr_assert_not_null(text, "no new log file after SIGHUP");
    free(text);
    xm_ctx_h ctx = xt_connect(&a, NULL); /* an info line: "alice authenticated" */
    xm_disconnect(ctx);
    text = wait_for_text(log, "authenticated", 10000);
    cr_assert_not_null(text, "a line after the reopen did not reach the new file");
    char *first = strtok(text, "\n");
    cr_expect_eq(regexec(&re, first, 0, NULL, 0), 0, "'%s'", first);
    free(text);
    char *old = slurp(rotated);
    cr_expect_null(strstr(old, "authenticated"), "the rotated file still got lines");
    free(old);
    regfree(&re);
    cr_expect_eq(xt_stop(&a), 0);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

/* ---- metrics ------------------------------------------------------------------------- */

static xt_cluster_t cl;

static void cluster_teardown(void)
{
    xt_cluster_stop(&cl);
    unsetenv("XMEM_METRICS");
}

Test(ops, metrics_move_with_work_and_survive_bad_http, .fini = cluster_teardown, .timeout = 120)
{
    /* both daemons take --metrics from the environment (XMEM_METRICS): free ports each */
    setenv("XMEM_METRICS", "127.0.0.1:0", 1);
    xt_cluster_start(&cl, 1, "256M", "tcp", NULL);
    char maddr[64], aaddr[64];
    metrics_addr(cl.mgr.log, maddr, sizeof(maddr));
    metrics_addr(cl.app[0].log, aaddr, sizeof(aaddr));

    char *m0 = scrape(maddr), *a0 = scrape(aaddr);
    cr_expect_eq(sample(m0, "xmem_manager_appliances", "state=\"up\""), 1, "%s", m0);
    cr_expect_eq(sample(a0, "xmem_pool_size_bytes", ""), 256ll << 20, "%s", a0);
    cr_expect_geq(sample(m0, "xmem_manager_heartbeats_total", ""), 1);

    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, NULL);
    xm_alloc_info_t info;
    cr_assert_eq(xm_alloc_create(ctx, 8 << 20, "single", "ops-a", &info), XM_OK);
    cr_assert_eq(xm_alloc_create(ctx, 4 << 20, "single", "ops-b", &info), XM_OK);
    cr_assert_eq(xm_free(ctx, 0, "ops-a"), XM_OK);
    cr_assert_neq(xm_free(ctx, 0, "no-such-allocation"), XM_OK);

    char *m1 = scrape(maddr), *a1 = scrape(aaddr);
    cr_expect_eq(sample(m1, "xmem_manager_allocations_total", "") -
                     sample(m0, "xmem_manager_allocations_total", ""), 2, "%s", m1);
    cr_expect_eq(sample(m1, "xmem_manager_frees_total", "") - sample(m0, "xmem_manager_frees_total", ""), 1);
    cr_expect_eq(sample(m1, "xmem_manager_allocations", "state=\"ok\""), 1, "%s", m1);
    cr_expect_eq(sample(m1, "xmem_manager_allocated_bytes", ""), 4 << 20);
    cr_expect_eq(sample(m1, "xmem_manager_rebuilds", ""), 0, "nothing to rebuild: %s", m1);
    cr_expect_geq(sample(m1, "xmem_control_requests_total", "kind=\"alloc_create\""), 2);
    cr_expect_geq(sample(m1, "xmem_control_errors_total", "kind=\"alloc_free\""), 1, "%s", m1);
    cr_expect_geq(sample(m1, "xmem_sessions", ""), 2, "the client's and the appliance's");
    /* heartbeats come every 100 ms: wait for the next one rather than assume it came */
    long long hb0 = sample(m0, "xmem_manager_heartbeats_total", ""), hb = hb0;
    for (uint64_t until = xt_now_ms() + 10000; hb <= hb0 && xt_now_ms() < until;) {
        usleep(50000);
        char *mx = scrape(maddr);
        hb = sample(mx, "xmem_manager_heartbeats_total", "");
        free(mx);
    }
    cr_expect_gt(hb, hb0, "no heartbeat counted in 10 s");
    /* the appliance made the allocation's regions */
    cr_expect_gt(sample(a1, "xmem_control_requests_total", "kind=\"region_create\""),
                 sample(a0, "xmem_control_requests_total", "kind=\"region_create\"") < 0 ? 0
                     : sample(a0, "xmem_control_requests_total", "kind=\"region_create\""), "%s", a1);
    cr_expect_geq(sample(a1, "xmem_pool_used_bytes", ""), 4 << 20);
    cr_expect_geq(sample(a1, "xmem_regions", ""), 1);

    /* bad HTTP: garbage, an oversized header, a body-carrying method, an unknown path, a
     * half request abandoned, and idle connections held open meanwhile */
    int idle[4];
    for (int i = 0; i < 4; i++) idle[i] = tcp_connect(aaddr);
    static const char garbage[] = "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not http at all\r\n\r\n";
    free(http_raw(aaddr, garbage, sizeof(garbage) - 1));
    size_t big = 200 * 1024;
    char *huge = malloc(big);
    memset(huge, 'a', big);
    memcpy(huge, "GET /metrics HTTP/1.1\r\nX-Big: ", 30);
    free(http_raw(aaddr, huge, big));
    free(huge);
    static const char post[] = "POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    char *r = http_raw(aaddr, post, sizeof(post) - 1);
    cr_expect_not_null(strstr(r, " 405 "), "POST: '%.100s'", r);
    free(r);
    static const char other[] = "GET /../../etc/passwd HTTP/1.0\r\n\r\n";
    r = http_raw(aaddr, other, sizeof(other) - 1);
    cr_expect_not_null(strstr(r, " 404 "), "'%.100s'", r);
    free(r);
    static const char half[] = "GET /metr";
    int hf = tcp_connect(aaddr);
    cr_assert_eq(send(hf, half, sizeof(half) - 1, MSG_NOSIGNAL), (ssize_t)(sizeof(half) - 1));
    close(hf);

    char *a2 = scrape(aaddr);
    cr_expect_geq(sample(a2, "xmem_pool_size_bytes", ""), 1, "still serving metrics");
    for (int i = 0; i < 4; i++) close(idle[i]);
    /* and the daemons still serve their clients */
    cr_assert_eq(xm_alloc_create(ctx, 4 << 20, "single", "ops-c", &info), XM_OK);
    cr_assert_eq(xm_free(ctx, 0, "ops-c"), XM_OK);
    cr_assert_eq(xm_free(ctx, 0, "ops-b"), XM_OK);
    xm_disconnect(ctx);
    free(m0);
    free(a0);
    free(m1);
    free(a1);
    free(a2);
}

/* ---- service integration: cmake --install into a DESTDIR ----------------------------- */

static int sh(const char *cmd, char *out, size_t outlen)
{
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    return run_capture(argv, NULL, out, outlen);
}

Test(ops, install_puts_units_man_pages_and_completion_in_place, .timeout = 120)
{
    char dest[] = "/tmp/xmem-test-XXXXXX";
    cr_assert_not_null(mkdtemp(dest));
    char cmd[1024], out[16384];
    snprintf(cmd, sizeof(cmd), "DESTDIR='%s' '%s' --install '%s' --prefix /usr --component service",
             dest, XMEM_CMAKE, XMEM_BUILD_DIR);
    cr_assert_eq(sh(cmd, out, sizeof(out)), 0, "%s\n%s", cmd, out);
    static const char *const files[] = {
        "usr/lib/systemd/system/xmemd@.service", "usr/lib/systemd/system/xmem-manager.service",
        "usr/lib/sysusers.d/xmem.conf", "usr/share/man/man1/xmem.1", "usr/share/man/man3/libxmem.3",
        "usr/share/man/man8/xmemd.8", "usr/share/man/man8/xmem-manager.8",
        "usr/share/bash-completion/completions/xmem", "usr/share/doc/xmem/examples/xmemd-example.conf",
        "usr/share/doc/xmem/examples/manager-example.conf",
    };
    char path[600];
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dest, files[i]);
        cr_expect_eq(access(path, R_OK), 0, "not installed: %s", files[i]);
    }
    /* the units: notify, restart, sandbox, the instance's config file */
    snprintf(path, sizeof(path), "%s/usr/lib/systemd/system/xmemd@.service", dest);
    char *unit = slurp(path);
    cr_assert_not_null(unit);
    static const char *const want[] = {"Type=notify", "Restart=on-failure", "ProtectSystem=strict",
                                       "PrivateTmp=yes", "NoNewPrivileges=yes", "StateDirectory=xmem",
                                       "LimitMEMLOCK=infinity", "/xmemd --config /etc/xmem/xmemd-%i.conf"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        cr_expect_not_null(strstr(unit, want[i]), "xmemd@.service lacks %s", want[i]);
    free(unit);
    /* every man page renders without a warning (groff -ww -z: what man -l runs, all warnings) */
    static const char *const pages[] = {"man1/xmem.1", "man3/libxmem.3", "man8/xmemd.8", "man8/xmem-manager.8"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(cmd, sizeof(cmd), "groff -ww -z -man '%s/usr/share/man/%s' 2>&1", dest, pages[i]);
        cr_expect_eq(sh(cmd, out, sizeof(out)), 0, "%s", pages[i]);
        cr_expect_str_eq(out, "", "groff warns on %s: %s", pages[i], out);
    }
    /* the man pages name the real options: each flag of --help is in the daemon's page */
    static const char *const daemons[][2] = {{"xmemd", "man8/xmemd.8"}, {"xmem-manager", "man8/xmem-manager.8"}};
    for (int d = 0; d < 2; d++) {
        snprintf(path, sizeof(path), "%s/usr/share/man/%s", dest, daemons[d][1]);
        char *page = slurp(path);
        cr_assert_not_null(page);
        snprintf(cmd, sizeof(cmd), "'%s/%s' --help", XMEM_BIN_DIR, daemons[d][0]);
        cr_assert_eq(sh(cmd, out, sizeof(out)), 0);
        for (char *save = NULL, *l = strtok_r(out, "\n", &save); l != NULL; l = strtok_r(NULL, "\n", &save)) {
            char *opt = strstr(l, "  --");
            if (opt == NULL) continue;
            opt += 4;
            char name[64], roff[160];
            snprintf(name, sizeof(name), "%.*s", (int)strcspn(opt, " ,"), opt);
            /* in roff a dash is \-: --log-file is \-\-log\-file */
            size_t j = 0;
            j += (size_t)snprintf(roff, sizeof(roff), "\\-\\-");
            for (const char *p = name; *p != '\0' && j + 3 < sizeof(roff); p++) {
                if (*p == '-') roff[j++] = '\\';
                roff[j++] = *p;
            }
            roff[j] = '\0';
            cr_expect_not_null(strstr(page, roff), "%s(8) does not document --%s", daemons[d][0], name);
        }
        free(page);
    }
    /* the completion is valid bash and completes commands */
    snprintf(cmd, sizeof(cmd), "bash -n '%s/usr/share/bash-completion/completions/xmem'", dest);
    cr_expect_eq(sh(cmd, out, sizeof(out)), 0, "%s", out);
    if (access("/usr/share/bash-completion/bash_completion", R_OK) == 0) {
        snprintf(cmd, sizeof(cmd),
                 "bash -c 'source /usr/share/bash-completion/bash_completion; source \"%s/usr/share/"
                 "bash-completion/completions/xmem\"; COMP_WORDS=(xmem region \"\"); COMP_CWORD=2; "
                 "COMP_LINE=\"xmem region \"; COMP_POINT=${#COMP_LINE}; _xmem; echo \"${COMPREPLY[*]}\"'",
                 dest);
        cr_expect_eq(sh(cmd, out, sizeof(out)), 0, "%s", out);
        cr_expect_not_null(strstr(out, "create"), "completion of 'xmem region ': %s", out);
        cr_expect_not_null(strstr(out, "snapshot"), "completion of 'xmem region ': %s", out);
    }
    /* systemd accepts the units (their binaries pointed at this build) */
    if (access("/usr/bin/systemd-analyze", X_OK) == 0) {
        snprintf(cmd, sizeof(cmd),
                 "cd '%s' && mkdir v && sed 's|ExecStart=[^ ]*/|ExecStart=%s/|' usr/lib/systemd/system/xmemd@.service "
                 "> v/xmemd@t.service && sed 's|ExecStart=[^ ]*/|ExecStart=%s/|' "
                 "usr/lib/systemd/system/xmem-manager.service > v/xmem-manager.service && "
                 "MANPATH='%s/usr/share/man' timeout 60 systemd-analyze verify v/xmemd@t.service "
                 "v/xmem-manager.service 2>&1",
                 dest, XMEM_BIN_DIR, XMEM_BIN_DIR, dest);
        cr_expect_eq(sh(cmd, out, sizeof(out)), 0, "systemd-analyze verify: %s", out);
    } else {
        cr_log_warn("systemd-analyze not installed: the units' syntax is not checked");
    }
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dest);
    cr_expect_eq(system(cmd), 0);
}

/* ---- xmem stat --pid: a mapped process's counters ------------------------------------- */

#include <xmem/procstat.h>

Test(ops, stat_pid_shows_a_mapped_process_counters_to_its_user_only, .timeout = 120)
{
    xt_appliance_t a;
    xt_start(&a, NULL);
    xm_ctx_h ctx = xt_connect(&a, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 8 << 20, NULL, &r), XM_OK);
    xm_map_opts_t mo = XM_MAP_OPTS_INIT;
    mo.cache_bytes = 1 << 20; /* 1 MiB of 8: touching all of it evicts and writes back */
    mo.fetch_size = 64 << 10;
    uint8_t *p;
    cr_assert_eq(xm_map(ctx, r, 0, 8 << 20, &mo, (void **)&p), XM_OK);
    char path[96];
    snprintf(path, sizeof(path), XM_PROCSTAT_PATH_FMT, (unsigned)getuid(), (int)getpid());
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
    cr_expect_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);

    char out[16384], pidtext[16];
    snprintf(pidtext, sizeof(pidtext), "%d", (int)getpid());
    const char *argv[] = {XMEM_BIN_DIR "/xmem", "stat", "--pid", pidtext, "--json", NULL};
    cr_assert_eq(run_capture(argv, NULL, out, sizeof(out)), 0, "%s", out);
    cr_expect_not_null(strstr(out, "\"faults\": 0"), "before any access: %s", out);
    for (size_t off = 0; off < (8u << 20); off += 4096) p[off] = (uint8_t)(off >> 12);
    cr_assert_eq(xm_sync(p, 8 << 20), XM_OK);
    /* the same counters as xm_map_stat, read by another process */
    xm_map_stats_t ms = XM_MAP_STATS_INIT;
    cr_assert_eq(xm_map_stat(p, &ms), XM_OK);
    cr_assert_eq(run_capture(argv, NULL, out, sizeof(out)), 0, "%s", out);
    char want[96];
    snprintf(want, sizeof(want), "\"faults\": %llu", (unsigned long long)ms.faults);
    cr_expect_gt(ms.faults, 0);
    cr_expect_not_null(strstr(out, want), "want %s in %s", want, out);
    snprintf(want, sizeof(want), "\"evictions\": %llu", (unsigned long long)ms.evictions);
    cr_expect_gt(ms.evictions, 0);
    cr_expect_not_null(strstr(out, want), "want %s in %s", want, out);
    snprintf(want, sizeof(want), "\"writeback_pages\": %llu", (unsigned long long)ms.writeback_pages);
    cr_expect_gt(ms.writeback_pages, 0);
    cr_expect_not_null(strstr(out, want), "want %s in %s", want, out);
    snprintf(want, sizeof(want), "\"resident_bytes\": %llu", (unsigned long long)ms.resident_bytes);
    cr_expect_not_null(strstr(out, want), "want %s in %s", want, out);
    cr_expect_not_null(strstr(out, "\"mappings\": 1"), "%s", out);
    cr_expect_null(strstr(out, "\"fetches\": 0,"), "the histogram counted no fetch: %s", out);
    /* the human form too */
    const char *plain[] = {XMEM_BIN_DIR "/xmem", "stat", "--pid=", NULL};
    char arg[32];
    snprintf(arg, sizeof(arg), "--pid=%d", (int)getpid());
    plain[2] = arg;
    cr_assert_eq(run_capture(plain, NULL, out, sizeof(out)), 0, "%s", out);
    cr_expect_not_null(strstr(out, "fetch latency:"), "%s", out);

    /* another user: neither the file nor xmem stat --pid gives the counters */
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        if (setgid(65534) != 0 || setuid(65534) != 0) _exit(3);
        int fd = open(path, O_RDONLY);
        if (fd >= 0) _exit(4); /* readable by another user */
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execv(argv[0], (char *const *)argv);
        _exit(5);
    }
    int status;
    waitpid(child, &status, 0);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) != 3, "cannot test as another user");
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) != 4, "another user opened %s", path);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 1,
              "xmem stat --pid as another user: exit %d, expected a refusal (1)", WEXITSTATUS(status));

    /* a forked child that maps gets a file of its own (not its parent's); once it is gone,
     * its pid is "no process" */
    pid_t mapper = fork();
    cr_assert_geq(mapper, 0);
    if (mapper == 0) {
        xm_ctx_h c2 = xt_connect(&a, NULL);
        xm_region_h r2;
        uint8_t *q;
        if (xm_region_create(c2, 1 << 20, NULL, &r2) != XM_OK || xm_map(c2, r2, 0, 1 << 20, NULL, (void **)&q) != XM_OK)
            _exit(2);
        q[0] = 1;
        char mine[96];
        snprintf(mine, sizeof(mine), XM_PROCSTAT_PATH_FMT, (unsigned)getuid(), (int)getpid());
        /* _exit: no exit handlers of the test framework in this child (so the file stays) */
        _exit(access(mine, F_OK) == 0 ? 0 : 6);
    }
    waitpid(mapper, &status, 0);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child's file: exit %d", WEXITSTATUS(status));
    snprintf(pidtext, sizeof(pidtext), "%d", (int)mapper);
    const char *gone[] = {XMEM_BIN_DIR "/xmem", "stat", "--pid", pidtext, NULL};
    cr_expect_eq(run_capture(gone, NULL, out, sizeof(out)), 1, "%s", out);
    cr_expect_not_null(strstr(out, "no process"), "%s", out);
    /* the dead child's file (it ended by _exit) is swept by the next process that maps */
    char stale[96];
    snprintf(stale, sizeof(stale), XM_PROCSTAT_PATH_FMT, (unsigned)getuid(), (int)mapper);
    cr_expect_eq(access(stale, F_OK), 0, "the dead child's file should still be there");
    pid_t sweeper = fork();
    cr_assert_geq(sweeper, 0);
    if (sweeper == 0) {
        xm_ctx_h c3 = xt_connect(&a, NULL);
        xm_region_h r3;
        uint8_t *q;
        if (xm_region_create(c3, 1 << 20, NULL, &r3) != XM_OK || xm_map(c3, r3, 0, 1 << 20, NULL, (void **)&q) != XM_OK)
            _exit(2);
        _exit(access(stale, F_OK) != 0 ? 0 : 7);
    }
    waitpid(sweeper, &status, 0);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "stale file not swept: exit %d", WEXITSTATUS(status));
    unlink(stale);
    snprintf(stale, sizeof(stale), XM_PROCSTAT_PATH_FMT, (unsigned)getuid(), (int)sweeper);
    unlink(stale);
    const char *bad[] = {XMEM_BIN_DIR "/xmem", "stat", "--pid", "banana", NULL};
    cr_expect_eq(run_capture(bad, NULL, out, sizeof(out)), 2, "%s", out);
    cr_expect_eq(xm_unmap(p), XM_OK);
    xm_region_close(r);
    xm_disconnect(ctx);
    cr_expect_eq(xt_stop(&a), 0);
    xt_cleanup(&a);
}
