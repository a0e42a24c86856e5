/* Helpers of the stress tests (plain programs, no Criterion): an appliance of
 * their own on loopback, stopped whatever happens; failure reports; a
 * watchdog that turns a deadlock into a report and an exit code. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xmem/tenant.h>

#include "stress.h"

#ifndef XMEM_BIN_DIR
#error "XMEM_BIN_DIR must name the directory holding xmemd"
#endif

const char *xs_provider = "tcp";
int xs_timeout = 120;

static pid_t g_xmemd;
static char g_dir[256];
static char g_log[512];
static char g_secret[512];
char xs_addr[64];
static _Atomic(const char *) g_phase = "setup";

uint64_t xs_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void dump_file(const char *path, const char *title)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    fprintf(stderr, "---- %s ----\n", title);
    char line[1024];
    while (fgets(line, sizeof(line), f) != NULL) fputs(line, stderr);
    fclose(f);
}

void xs_remove_dir(void)
{
    if (strncmp(g_dir, "/tmp/xmem-stress-", 17) != 0) return;
    char path[600];
    DIR *d = opendir(g_dir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            snprintf(path, sizeof(path), "%s/%s", g_dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(g_dir);
}

/* Kill the appliance, keep its log on stderr, leave with code (no atexit, no leak check). */
static void die(int code)
{
    if (g_xmemd > 0) {
        kill(g_xmemd, SIGKILL);
        waitpid(g_xmemd, NULL, 0);
        g_xmemd = 0;
        dump_file(g_log, "xmemd log");
    }
    xs_remove_dir();
    fflush(stderr);
    fflush(stdout);
    syscall(SYS_exit_group, code);
    _exit(code);
}

static pthread_mutex_t g_fail_lock = PTHREAD_MUTEX_INITIALIZER;

void xs_fail(const char *fmt, ...)
{
    pthread_mutex_lock(&g_fail_lock); /* one report; other failing threads wait for the exit */
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "map_stress[%s]: FAIL in phase '%s': ", xs_provider, atomic_load(&g_phase));
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    die(EXIT_FAIL);
    for (;;) pause();
}

void xs_setup_error(const char *fmt, ...)
{
    pthread_mutex_lock(&g_fail_lock);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "map_stress[%s]: ERROR in phase '%s': ", xs_provider, atomic_load(&g_phase));
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    die(EXIT_SETUP);
    for (;;) pause();
}

/* Name the phase for failure and watchdog reports (a ring of buffers: the
 * watchdog may still read the previous name). */
void xs_phase(const char *fmt, ...)
{
    static char names[8][128];
    static int next;
    char *buf = names[next++ % 8];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(names[0]), fmt, ap);
    va_end(ap);
    atomic_store(&g_phase, buf);
}

/* ---- watchdog: a deadlock (or a run far too slow) ends the test with a report ----- */

static void dump_tasks(void)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL) return;
    struct dirent *e;
    fprintf(stderr, "---- threads (comm, wchan, kernel stack) ----\n");
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[300], comm[64] = "", wchan[128] = "";
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f != NULL) {
            if (fgets(comm, sizeof(comm), f) == NULL) comm[0] = '\0';
            fclose(f);
        }
        comm[strcspn(comm, "\n")] = '\0';
        snprintf(path, sizeof(path), "/proc/self/task/%s/wchan", e->d_name);
        f = fopen(path, "r");
        if (f != NULL) {
            if (fgets(wchan, sizeof(wchan), f) == NULL) wchan[0] = '\0';
            fclose(f);
        }
        fprintf(stderr, "tid %s %s wchan=%s\n", e->d_name, comm, wchan);
        snprintf(path, sizeof(path), "/proc/self/task/%s/stack", e->d_name);
        f = fopen(path, "r");
        if (f != NULL) {
            char line[256];
            for (int i = 0; i < 8 && fgets(line, sizeof(line), f) != NULL; i++) fprintf(stderr, "    %s", line);
            fclose(f);
        }
    }
    closedir(d);
}

/* User-space stacks of every thread, from gdb when it is installed (the
 * kernel stacks above say only that a thread waits on a futex). */
static void dump_user_stacks(void)
{
    if (access("/usr/bin/gdb", X_OK) != 0) {
        fprintf(stderr, "(no /usr/bin/gdb: no user-space stacks)\n");
        return;
    }
    prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
    char pid[32];
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    fprintf(stderr, "---- threads (user-space stacks, gdb) ----\n");
    pid_t g = fork();
    if (g == 0) {
        dup2(STDERR_FILENO, STDOUT_FILENO);
        execl("/usr/bin/gdb", "gdb", "-nx", "-batch", "-p", pid, "-ex", "thread apply all bt 24", (char *)NULL);
        _exit(127);
    }
    if (g < 0) return;
    for (int i = 0; i < 1200; i++) { /* gdb gets 120 s */
        if (waitpid(g, NULL, WNOHANG) == g) return;
        usleep(100000);
    }
    kill(g, SIGKILL);
    waitpid(g, NULL, 0);
}

static void *watchdog_main(void *arg)
{
    (void)arg;
    uint64_t deadline = xs_now_ns() + (uint64_t)xs_timeout * 1000000000ull;
    while (xs_now_ns() < deadline) usleep(100000);
    pthread_mutex_lock(&g_fail_lock);
    fprintf(stderr, "map_stress[%s]: TIMEOUT after %d s in phase '%s' (deadlock?)\n", xs_provider, xs_timeout,
            atomic_load(&g_phase));
    dump_tasks();
    dump_user_stacks();
    die(EXIT_WATCHDOG);
    return NULL;
}

/* ---- the appliance ---------------------------------------------------- */

static void make_secret(const char *path)
{
    uint8_t raw[32];
    int rfd = open("/dev/urandom", O_RDONLY);
    if (rfd < 0 || read(rfd, raw, sizeof(raw)) != (ssize_t)sizeof(raw)) xs_setup_error("/dev/urandom: %m");
    close(rfd);
    char hex[65];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", raw[i]);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, hex, 64) != 64) xs_setup_error("cannot write %s: %m", path);
    close(fd);
}

void xs_appliance_start(const char *pool)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/xmem-stress-XXXXXX");
    if (mkdtemp(g_dir) == NULL) xs_setup_error("mkdtemp: %m");
    snprintf(g_secret, sizeof(g_secret), "%s/secret", g_dir);
    snprintf(g_log, sizeof(g_log), "%s/xmemd.log", g_dir);
    make_secret(g_secret);
    /* "local": xmemd serves tcp and the local transport, which this process's clients then
     * use (XMEM_TRANSPORT, set before any thread starts) */
    bool tcp = strcmp(xs_provider, "tcp") == 0;
    if (!tcp && strcmp(xs_provider, "local") != 0) xs_setup_error("--provider tcp or local");
    setenv("XMEM_TRANSPORT", tcp ? "tcp" : "local", 1);
    const char *argv[] = {XMEM_BIN_DIR "/xmemd", "--listen", "127.0.0.1:0", "--pool", pool,
                          "--backing", "memfd", "--provider", "tcp", "--secret-file", g_secret,
                          "--log-level", "info", NULL};
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) xs_setup_error("pipe: %m");
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) xs_setup_error("fork: %m");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives the test */
        if (getppid() != parent) _exit(127);
        dup2(out[1], 1);
        int logfd = open(g_log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (logfd >= 0) dup2(logfd, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(out[1]);
    g_xmemd = pid;
    char buf[256] = {0};
    size_t got = 0;
    uint64_t deadline = xs_now_ns() + 20000000000ull;
    while (got < sizeof(buf) - 1 && strchr(buf, '\n') == NULL && xs_now_ns() < deadline) {
        struct pollfd p = {.fd = out[0], .events = POLLIN};
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t r = read(out[0], buf + got, sizeof(buf) - 1 - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(out[0]);
    char *at = strstr(buf, "listening on ");
    if (at == NULL) xs_setup_error("xmemd did not start (output: '%s')", buf);
    at += strlen("listening on ");
    at[strcspn(at, "\n")] = '\0';
    snprintf(xs_addr, sizeof(xs_addr), "%s", at);
}

/* SIGTERM and wait: the appliance must exit cleanly (0: no sanitizer report, no leak). */
int xs_appliance_stop(void)
{
    if (g_xmemd <= 0) return 0;
    kill(g_xmemd, SIGTERM);
    uint64_t deadline = xs_now_ns() + 30000000000ull;
    int st = 0;
    pid_t r = 0;
    while (xs_now_ns() < deadline && (r = waitpid(g_xmemd, &st, WNOHANG)) == 0) usleep(10000);
    if (r != g_xmemd) {
        kill(g_xmemd, SIGKILL);
        waitpid(g_xmemd, NULL, 0);
        g_xmemd = 0;
        dump_file(g_log, "xmemd log");
        return -1;
    }
    g_xmemd = 0;
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (code != 0) dump_file(g_log, "xmemd log");
    return code;
}

xm_ctx_h xs_connect(void)
{
    /* alice's own credential, issued once with the cluster secret */
    static char cred[600];
    static pthread_mutex_t cred_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&cred_lock);
    if (cred[0] == '\0') {
        char why[256];
        snprintf(cred, sizeof(cred), "%s.alice.cred", g_secret);
        if (access(cred, F_OK) != 0 &&
            xm_tenant_add(g_secret, NULL, "alice", cred, why, sizeof(why)) != XM_OK) {
            pthread_mutex_unlock(&cred_lock);
            xs_setup_error("issue alice a credential: %s", why);
        }
    }
    pthread_mutex_unlock(&cred_lock);
    xm_connect_opts_t o = {.size = sizeof(xm_connect_opts_t), .appliance = xs_addr, .secret_file = cred, .tenant = "alice",
                           .timeout_ms = 20000};
    xm_ctx_h ctx = NULL;
    xm_status_t s = xm_connect(&o, &ctx);
    if (s != XM_OK) xs_setup_error("connect to %s: %s (%s)", xs_addr, xm_status_str(s), xm_last_error(NULL));
    return ctx;
}

/* Skip (exit 77, with the reason) where userfaultfd or its features are missing. */
void xs_need_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    if (fd < 0) {
        printf("SKIP: userfaultfd unavailable (%s): needs root or vm.unprivileged_userfaultfd=1\n",
               strerror(errno));
        exit(EXIT_SKIP);
    }
    struct uffdio_api api = {.api = UFFD_API, .features = (1 << 15) | (1 << 16) | (1 << 14)};
    int rc = ioctl(fd, UFFDIO_API, &api);
    close(fd);
    if (rc != 0) {
        printf("SKIP: userfaultfd lacks WP_ASYNC, MOVE or POISON (Linux >= 6.8 needed)\n");
        exit(EXIT_SKIP);
    }
}

void xs_watchdog_start(void)
{
    pthread_t wd;
    if (pthread_create(&wd, NULL, watchdog_main, NULL) != 0) xs_setup_error("pthread_create: %m");
    pthread_detach(wd);
}
