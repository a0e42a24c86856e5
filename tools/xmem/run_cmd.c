/* xmem run [--heap SIZE] [--local SIZE] [--policy P] [--tier-local SIZE] [--spill DIR [--spill-size SIZE]]
 *          [--keep NAME] [--stats] -- CMD ARGS...
 *
 * Makes a region (or, with a manager, an allocation) for the program's heap,
 * runs CMD with libxmem-run.so preloaded (src/run/run.c), waits for it and
 * frees the region - also when CMD was killed - unless --keep NAME named it
 * (then it stays, under that name, for inspection with `xmem get`). Exit
 * status: CMD's, or 128+N when signal N ended it. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"

#ifndef XMEM_BIN_TO_LIB
#define XMEM_BIN_TO_LIB "../lib"
#endif

/* 32 MiB more than the heap: the allocator's arena must start on a 32 MiB boundary */
#define RUN_SLACK (32ull << 20)

static pid_t child_pid;

static void forward(int sig)
{
    if (child_pid > 0) kill(child_pid, sig);
}

/* libxmem-run.so: $XMEM_RUN_LIB, else beside this xmem (installed: $ORIGIN/<bin-to-lib>, build tree: ../lib) */
static int find_lib(char *out, size_t len)
{
    const char *env = getenv("XMEM_RUN_LIB");
    if (env != NULL && *env != '\0') {
        snprintf(out, len, "%s", env);
        return access(out, R_OK) == 0 ? 0 : -1;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) return -1;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash == NULL) return -1;
    *slash = '\0';
    const char *rel[] = {XMEM_BIN_TO_LIB, "../lib"};
    for (size_t i = 0; i < 2; i++) {
        char dir[2 * PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/%s", exe, rel[i]);
        char *real = realpath(dir, NULL);
        if (real == NULL) continue;
        snprintf(out, len, "%s/libxmem-run.so", real);
        free(real);
        if (access(out, R_OK) == 0) return 0;
    }
    return -1;
}

/* The reaper: a process of its own (a new session, stdio on /dev/null) that
 * outlives a killed `xmem run` and frees the heap then. xmem run tells it, over a
 * socket pair, the heap's id once it has one, the program's pid once it runs, and 'D'
 * when it has freed (or kept) the heap itself. End of file before 'D' means xmem
 * run died: the program dies with it (PR_SET_PDEATHSIG), the reaper waits for it
 * to be gone and frees the heap. Forked before any connection is made. */
static int reaper_start(cli_t *cli, bool manager)
{
    int p[2]; /* a socket pair, not a pipe: a write to a reaper that has gone must not SIGPIPE us */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) != 0) return -1;
    pid_t r = fork();
    if (r < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (r > 0) {
        close(p[0]);
        return p[1];
    }
    close(p[1]);
    setsid();
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
    }
    signal(SIGHUP, SIG_IGN);
    uint64_t id = 0;
    int32_t pid = 0;
    char done = 0;
    if (read(p[0], &id, sizeof(id)) != (ssize_t)sizeof(id) || id == 0) _exit(0); /* nothing allocated */
    ssize_t got = read(p[0], &pid, sizeof(pid));
    if (got == (ssize_t)sizeof(pid) && read(p[0], &done, 1) == 1 && done == 'D') _exit(0);
    /* xmem run is gone and never freed the heap: the program goes first (it has
     * PR_SET_PDEATHSIG; a few seconds' grace, then SIGKILL), then the heap */
    if (got == (ssize_t)sizeof(pid) && pid > 0) {
        for (int i = 0; i < 100 && kill(pid, 0) == 0; i++) usleep(50000);
        if (kill(pid, 0) == 0) kill(pid, SIGKILL);
        for (int i = 0; i < 100 && kill(pid, 0) == 0; i++) usleep(50000);
    }
    xm_ctx_h ctx;
    for (int attempt = 0; attempt < 5; attempt++) {
        if (xm_connect(&cli->conn, &ctx) == XM_OK) {
            xm_status_t st = manager ? xm_free(ctx, id, NULL) : xm_region_destroy(ctx, id, NULL);
            xm_disconnect(ctx);
            if (st == XM_OK || st == XM_ERR_NOT_FOUND) _exit(0);
        }
        sleep(1);
    }
    _exit(1);
}

int cmd_run(cli_t *cli)
{
    /* options before "--", the program after it */
    int dash = -1;
    for (int i = 0; i < cli->argc && dash < 0; i++)
        if (strcmp(cli->argv[i], "--") == 0) dash = i;
    if (dash < 0 || dash + 1 >= cli->argc) {
        fprintf(stderr, "xmem run: usage: xmem run [--heap SIZE] [--local SIZE] [--policy P] [--tier-local SIZE]\n"
                        "                         [--spill DIR [--spill-size SIZE]] [--keep NAME] [--stats] -- CMD ARGS...\n");
        return 2;
    }
    char **prog = &cli->argv[dash + 1];
    int all = cli->argc;
    cli->argc = dash;
    const char *heap_s = cli_take(cli, "--heap"), *local_s = cli_take(cli, "--local");
    const char *policy = cli_take(cli, "--policy");
    const char *tier_s = cli_take(cli, "--tier-local"), *spill_dir = cli_take(cli, "--spill");
    const char *spill_s = cli_take(cli, "--spill-size"), *keep = cli_take(cli, "--keep");
    bool stats = cli_take_flag(cli, "--stats");
    if (cli->argc != 0) {
        fprintf(stderr, "xmem run: unexpected argument '%s' before --\n", cli->argv[0]);
        return 2;
    }
    (void)all;
    uint64_t heap = 1ull << 30, local = 0;
    if (heap_s != NULL && (xm_parse_size(heap_s, &heap) != XM_OK || heap < (64ull << 20)))
        return cli_fail("run", "--heap %s: a size of at least 64M", heap_s);
    if (local_s != NULL && (xm_parse_size(local_s, &local) != XM_OK || local == 0))
        return cli_fail("run", "--local %s: a size", local_s);
    uint64_t tier_local = 0, spill = 0;
    if (tier_s != NULL && (xm_parse_size(tier_s, &tier_local) != XM_OK || tier_local < (32ull << 20)))
        return cli_fail("run", "--tier-local %s: a size of at least 32M (the allocator's segment)", tier_s);
    if (spill_s != NULL && spill_dir == NULL) return cli_fail("run", "--spill-size needs --spill DIR");
    if (spill_dir != NULL) {
        spill = heap;
        if (spill_s != NULL && (xm_parse_size(spill_s, &spill) != XM_OK || spill < (32ull << 20)))
            return cli_fail("run", "--spill-size %s: a size of at least 32M", spill_s);
        struct stat sd;
        if (stat(spill_dir, &sd) != 0 || !S_ISDIR(sd.st_mode) || access(spill_dir, W_OK) != 0)
            return cli_fail("run", "--spill %s: not a directory this user can write (create it first)", spill_dir);
    }
    bool manager = cli->conn.manager != NULL || (cli->conn.appliance == NULL && getenv("XMEM_MANAGER") != NULL &&
                                                 getenv("XMEM_MANAGER")[0] != '\0');
    if (policy != NULL && !manager)
        return cli_fail("run", "--policy needs a manager (--manager or XMEM_MANAGER)");
    char lib[PATH_MAX];
    if (find_lib(lib, sizeof(lib)) != 0)
        return cli_fail("run", "libxmem-run.so not found beside xmem (set XMEM_RUN_LIB)");

    /* before any connection: the reaper must not share libfabric state with us */
    int reaper = keep == NULL ? reaper_start(cli, manager) : -1;
    xm_ctx_h ctx;
    if (cli_connect(cli, &ctx) != 0) return 1;
    xm_region_h r;
    uint64_t bytes = heap + RUN_SLACK;
    xm_status_t st = manager ? xm_alloc(ctx, bytes, policy, keep, &r) : xm_region_create(ctx, bytes, keep, &r);
    uint64_t id = 0;
    if (st == XM_ERR_NO_SPACE && (spill_dir != NULL || tier_local != 0)) {
        /* no appliance capacity left: the program runs on the other tiers */
        fprintf(stderr, "xmem run: no external memory for the heap (%s); running on the %s%s%s tier%s\n",
                xm_last_error(ctx), tier_local != 0 ? "local" : "", tier_local != 0 && spill_dir != NULL ? " and " : "",
                spill_dir != NULL ? "file" : "", tier_local != 0 && spill_dir != NULL ? "s" : "");
    } else if (st != XM_OK) {
        int rc = cli_fail("run", "allocating the %llu-byte heap: %s: %s", (unsigned long long)bytes,
                          xm_status_str(st), xm_last_error(ctx));
        xm_disconnect(ctx);
        return rc;
    } else {
        id = xm_region_id(r);
        if (manager) xm_alloc_close(r);
        else xm_region_close(r);
    }
    if (reaper >= 0 && send(reaper, &id, sizeof(id), MSG_NOSIGNAL) != (ssize_t)sizeof(id)) {
        /* no reaper: a SIGKILL of xmem run would leave the heap behind, as before */
    }
    /* the program's connection is its own; ours would sit idle until it exits */
    xm_disconnect(ctx);

    char v[64];
    const char *old = getenv("LD_PRELOAD");
    char *pre = malloc(strlen(lib) + (old != NULL ? strlen(old) : 0) + 2);
    sprintf(pre, "%s%s%s", lib, old != NULL && *old != '\0' ? ":" : "", old != NULL ? old : "");
    setenv("LD_PRELOAD", pre, 1);
    free(pre);
    snprintf(v, sizeof(v), "%llu", (unsigned long long)id);
    setenv("XMEM_RUN_REGION", v, 1);
    snprintf(v, sizeof(v), "%llu", (unsigned long long)bytes);
    setenv("XMEM_RUN_HEAP", v, 1);
    snprintf(v, sizeof(v), "%llu", (unsigned long long)local);
    setenv("XMEM_RUN_LOCAL", v, 1);
    if (stats) setenv("XMEM_RUN_STATS", "1", 1);
    snprintf(v, sizeof(v), "%llu", (unsigned long long)tier_local);
    setenv("XMEM_RUN_TIER_LOCAL", v, 1);
    snprintf(v, sizeof(v), "%llu", (unsigned long long)spill);
    setenv("XMEM_RUN_SPILL", v, 1);
    if (spill_dir != NULL) setenv("XMEM_RUN_SPILL_DIR", spill_dir, 1);
    else unsetenv("XMEM_RUN_SPILL_DIR");
    /* libfabric pulls in libinfinipath, whose constructor installs a SIGSEGV/SIGBUS
     * handler in the program (it prints a backtrace and exits 1): the program's
     * signals are its own */
    setenv("IPATH_NO_BACKTRACE", "1", 0);
    /* what the global options chose, for the library's xm_connect */
    if (cli->conn.appliance != NULL) setenv("XMEM_APPLIANCE", cli->conn.appliance, 1);
    if (cli->conn.manager != NULL) setenv("XMEM_MANAGER", cli->conn.manager, 1);
    if (cli->conn.appliance != NULL && cli->conn.manager == NULL) unsetenv("XMEM_MANAGER");
    if (cli->conn.secret_file != NULL) setenv("XMEM_SECRET_FILE", cli->conn.secret_file, 1);
    if (cli->conn.tenant != NULL) setenv("XMEM_TENANT", cli->conn.tenant, 1);
    if (cli->conn.provider != NULL) setenv("XMEM_PROVIDER", cli->conn.provider, 1);
    if (cli->conn.timeout_ms != 0) {
        snprintf(v, sizeof(v), "%u", cli->conn.timeout_ms);
        setenv("XMEM_TIMEOUT_MS", v, 1);
    }

    int status = 0, rc;
    pid_t me = getpid();
    child_pid = fork();
    if (child_pid == 0) {
        /* the program does not outlive xmem run: its heap would be freed under it */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != me) _exit(128 + SIGKILL);
        execvp(prog[0], prog);
        fprintf(stderr, "xmem run: %s: %s\n", prog[0], strerror(errno));
        _exit(127);
    }
    if (child_pid > 0 && reaper >= 0) {
        int32_t cp = (int32_t)child_pid;
        if (send(reaper, &cp, sizeof(cp), MSG_NOSIGNAL) != (ssize_t)sizeof(cp)) { /* see above */ }
    }
    if (child_pid < 0) {
        rc = cli_fail("run", "fork: %s", strerror(errno));
    } else {
        /* a terminal's ^C and ^\ reach the program itself (same process group), as
         * with system(); kill and timeout reach only us: pass them on */
        struct sigaction sa = {.sa_handler = forward}, ign = {.sa_handler = SIG_IGN};
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
        sigaction(SIGINT, &ign, NULL);
        sigaction(SIGQUIT, &ign, NULL);
        while (waitpid(child_pid, &status, 0) < 0 && errno == EINTR) {}
        rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    /* the heap goes with the program, however it ended, unless it is to be kept */
    if (id == 0) {
        /* there was no external heap */
    } else if (keep != NULL) {
        fprintf(stderr, "xmem run: the heap is kept: %s %llu (%s); remove it with `xmem %s %s`\n",
                manager ? "allocation" : "region", (unsigned long long)id, keep, manager ? "free" : "region rm", keep);
    } else if (xm_connect(&cli->conn, &ctx) == XM_OK) {
        st = manager ? xm_free(ctx, id, NULL) : xm_region_destroy(ctx, id, NULL);
        if (st != XM_OK)
            fprintf(stderr, "xmem run: freeing the heap (%s %llu): %s: %s\n", manager ? "allocation" : "region",
                    (unsigned long long)id, xm_status_str(st), xm_last_error(ctx));
        xm_disconnect(ctx);
    } else {
        fprintf(stderr, "xmem run: freeing the heap (%s %llu): connect: %s\n", manager ? "allocation" : "region",
                (unsigned long long)id, xm_last_error(NULL));
    }
    if (reaper >= 0) {
        if (send(reaper, "D", 1, MSG_NOSIGNAL) != 1) { /* the reaper is gone: nothing to tell */ }
        close(reaper);
    }
    return rc;
}
