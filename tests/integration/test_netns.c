/* Several hosts simulated with network namespaces: the manager, three
 * appliances and the client each in its own namespace, joined by veth pairs
 * to a bridge in a "switch" namespace, with private addresses that exist only
 * inside those namespaces (no namespace has a route anywhere else, so no
 * packet can leave this machine). Created and removed by the test, also when
 * it fails; skipped with the reason when not root or `ip netns` is missing. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define NODES 5              /* manager, appliances 0..2, client */
#define SUBNET "10.251.77."  /* lives only inside the test's namespaces */

static const char *const role[NODES] = {"m", "a0", "a1", "a2", "c"};
static const int host_id[NODES] = {10, 20, 21, 22, 30};

static char tag[16];          /* unique per run: namespaces and links carry it */
static char dir[256];
static char secret[PATH_MAX];
static pid_t pids[NODES];
static int home_ns = -1;     /* the test's own network namespace, to return to */
static bool made;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

static void ns_name(char *buf, size_t len, const char *r)
{
    snprintf(buf, len, "%s-%s", tag, r);
}

static void addr_of(int i, char *buf, size_t len)
{
    snprintf(buf, len, SUBNET "%d:7400", host_id[i]);
}

/* Remove everything this run made (namespaces take their veth ends with them). */
static void teardown(void)
{
    for (int i = 0; i < NODES; i++) {
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
            pids[i] = 0;
        }
    }
    if (home_ns >= 0) {
        setns(home_ns, CLONE_NEWNET);
        close(home_ns);
        home_ns = -1;
    }
    if (made) {
        char ns[64];
        for (int i = 0; i < NODES; i++) {
            ns_name(ns, sizeof(ns), role[i]);
            sh("ip netns del %s 2>/dev/null", ns);
        }
        ns_name(ns, sizeof(ns), "sw");
        sh("ip netns del %s 2>/dev/null", ns);
        made = false;
    }
    if (dir[0] != '\0') {
        sh("rm -rf '%s'", dir);
        dir[0] = '\0';
    }
}

/* Namespaces of runs that died without their teardown (tag xn<pid> of a dead pid). */
static void remove_stale(void)
{
    FILE *f = popen("ip netns list 2>/dev/null", "r");
    if (f == NULL) return;
    char line[256];
    while (fgets(line, sizeof(line), f) != NULL) {
        int pid;
        char rest[64];
        if (sscanf(line, "xn%d-%63s", &pid, rest) == 2 && pid != getpid() && kill(pid, 0) != 0 &&
            errno == ESRCH) {
            line[strcspn(line, " \n")] = '\0';
            sh("ip netns del %s 2>/dev/null", line);
        }
    }
    pclose(f);
}

/* Build the namespaces and links; false (and why) when the machine cannot. */
static bool build(char *why, size_t len)
{
    if (geteuid() != 0) {
        snprintf(why, len, "network namespaces need root");
        return false;
    }
    if (sh("ip netns list >/dev/null 2>&1") != 0) {
        snprintf(why, len, "`ip netns` is not available (iproute2)");
        return false;
    }
    remove_stale();
    snprintf(tag, sizeof(tag), "xn%d", (int)getpid() % 1000000);
    char sw[64], ns[64];
    ns_name(sw, sizeof(sw), "sw");
    made = true;
    if (sh("ip netns add %s", sw) != 0) {
        snprintf(why, len, "`ip netns add` failed (no CAP_SYS_ADMIN, or no netns support)");
        return false;
    }
    cr_assert_eq(sh("ip -n %s link add br0 type bridge && ip -n %s link set br0 up", sw, sw), 0,
                 "cannot make the bridge");
    for (int i = 0; i < NODES; i++) {
        ns_name(ns, sizeof(ns), role[i]);
        cr_assert_eq(sh("ip netns add %s", ns), 0);
        /* veth pair made in the switch namespace: nothing touches the test's own */
        cr_assert_eq(sh("ip -n %s link add p%d type veth peer name eth0 netns %s", sw, i, ns), 0,
                     "cannot make veth pair %d", i);
        cr_assert_eq(sh("ip -n %s link set p%d master br0 && ip -n %s link set p%d up", sw, i, sw, i), 0);
        cr_assert_eq(sh("ip -n %s addr add " SUBNET "%d/24 dev eth0 && ip -n %s link set eth0 up && "
                        "ip -n %s link set lo up", ns, host_id[i], ns, ns), 0,
                     "cannot address namespace %s", ns);
    }
    return true;
}

/* Enter namespace r (this process or a child). */
static void enter(const char *r)
{
    char path[128], ns[64];
    ns_name(ns, sizeof(ns), r);
    snprintf(path, sizeof(path), "/var/run/netns/%s", ns);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
        fprintf(stderr, "setns %s: %s\n", path, strerror(errno));
        _exit(126);
    }
    close(fd);
}

/* Start a daemon in node i's namespace; its stderr goes to dir/<role>.log. */
static void spawn(int i, const char *const *argv)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        enter(role[i]);
        char log[PATH_MAX];
        snprintf(log, sizeof(log), "%s/%s.log", dir, role[i]);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int null = open("/dev/null", O_WRONLY);
        if (fd >= 0) dup2(fd, 2);
        if (null >= 0) dup2(null, 1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    pids[i] = pid;
}

static void start_appliance(int i)
{
    char listen[64], mgr[64], dom[8];
    addr_of(i, listen, sizeof(listen));
    addr_of(0, mgr, sizeof(mgr));
    snprintf(dom, sizeof(dom), "d%d", i);
    const char *argv[] = {XMEM_BIN_DIR "/xmemd", "--listen", listen, "--pool", "128M",
                          "--provider", "tcp", "--secret-file", secret, "--manager", mgr,
                          "--domain", dom, "--heartbeat-ms", "100", "--log-level", "info", NULL};
    spawn(i, argv);
}

static void dump_logs(void)
{
    for (int i = 0; i < NODES - 1; i++) {
        char cmd[PATH_MAX + 64];
        snprintf(cmd, sizeof(cmd), "echo '---- %s'; tail -n 20 '%s/%s.log'", role[i], dir, role[i]);
        if (system(cmd) != 0) { /* best effort */ }
    }
}

static int count_up(xm_ctx_h ctx)
{
    xm_appliance_entry_t *es = NULL;
    size_t n = 0;
    int up = 0;
    if (xm_appliance_list(ctx, &es, &n) != XM_OK) return -1;
    for (size_t i = 0; i < n; i++) up += strcmp(es[i].state, "up") == 0;
    free(es);
    return up;
}

static void state_of(xm_ctx_h ctx, uint64_t id, char *state, size_t len)
{
    xt_alloc_state(ctx, id, state, len);
}

static void start_manager(void)
{
    char mgr[64], db[PATH_MAX];
    addr_of(0, mgr, sizeof(mgr));
    snprintf(db, sizeof(db), "%s/manager.db", dir);
    const char *argv[] = {XMEM_BIN_DIR "/xmem-manager", "--listen", mgr, "--db", db,
                          "--secret-file", secret, "--down-after-ms", "600", "--log-level",
                          "info", NULL};
    spawn(0, argv);
}

/* Wait until the manager lists `want` appliances up; connects *ctx_p first if NULL. */
static int wait_up(xm_ctx_h *ctx_p, const char *tenant, int want, int timeout_ms)
{
    char mgr[64];
    addr_of(0, mgr, sizeof(mgr));
    char cred[PATH_MAX + 80];
    xm_connect_opts_t o = {.size = sizeof(xm_connect_opts_t), .manager = mgr,
                           .secret_file = xt_cred(secret, tenant, cred, sizeof(cred)), .tenant = tenant,
                           .timeout_ms = 5000};
    uint64_t deadline = xt_now_ms() + (uint64_t)timeout_ms;
    int up = 0;
    while (xt_now_ms() < deadline) {
        if (*ctx_p == NULL && xm_connect(&o, ctx_p) != XM_OK) *ctx_p = NULL;
        if (*ctx_p != NULL && (up = count_up(*ctx_p)) == want) break;
        usleep(50000);
    }
    return up;
}

/* Namespaces, the manager and three appliances in theirs; the test becomes the client in
 * its own namespace, connected to the manager as alice. Skips when the machine cannot. */
static xm_ctx_h cluster_up(void)
{
    char why[256];
    if (!build(why, sizeof(why))) {
        teardown();
        cr_skip_test("%s", why);
    }
    snprintf(dir, sizeof(dir), "/tmp/xmem-test-XXXXXX");
    cr_assert(mkdtemp(dir) != NULL);
    snprintf(secret, sizeof(secret), "%s/secret", dir);
    xt_make_secret(secret);
    start_manager();
    for (int i = 1; i <= 3; i++) start_appliance(i);

    /* the test itself is the client, on its own host; threads it starts are there too */
    home_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    cr_assert(home_ns >= 0);
    enter("c");
    xm_ctx_h ctx = NULL;
    int up = wait_up(&ctx, "alice", 3, 20000);
    if (up != 3) dump_logs();
    cr_assert_eq(up, 3, "appliances up in their namespaces: %d (connect: %s)", up,
                 ctx != NULL ? "ok" : xm_last_error(NULL));
    return ctx;
}

Test(netns, striped_across_hosts_and_appliance_kill9, .fini = teardown, .timeout = 120)
{
    xm_ctx_h ctx = cluster_up();
    xm_appliance_entry_t *es;
    size_t n;
    cr_assert_eq(xm_appliance_list(ctx, &es, &n), XM_OK);
    for (size_t i = 0; i < n; i++) {
        cr_assert(strncmp(es[i].addr, SUBNET, strlen(SUBNET)) == 0,
                  "appliance registered as %s, not on the namespaces' subnet", es[i].addr);
    }
    free(es);

    /* striped data round trips across the three hosts */
    const uint64_t size = (12u << 20) + 777;
    xm_alloc_h st;
    cr_assert_eq(xm_alloc(ctx, size, "stripe:3:64K", "across", &st), XM_OK, "%s", xm_last_error(ctx));
    uint8_t *w = malloc(size), *r = malloc(size);
    xt_fill(w, size, 9);
    cr_assert_eq(xm_write(st, 0, w, size), XM_OK, "%s", xm_last_error(ctx));
    memset(r, 0, size);
    cr_assert_eq(xm_read(st, 0, r, size), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(w, r, size) == 0, "striped bytes differ after the round trip");
    xm_alloc_info_t *infos;
    cr_assert_eq(xm_alloc_list(ctx, &infos, &n), XM_OK);
    cr_assert_eq(n, 1);
    cr_assert_eq(infos[0].parts, 3, "the stripe spans %u hosts", infos[0].parts);
    free(infos);
    /* singles land on the freest appliances: one on each host */
    xm_alloc_h s[3];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(xm_alloc(ctx, 16u << 20, NULL, NULL, &s[i]), XM_OK, "%s", xm_last_error(ctx));
        cr_assert_eq(xm_write(s[i], 4096, w + i, 4096), XM_OK, "%s", xm_last_error(ctx));
    }

    /* kill -9 one appliance: its allocations turn degraded, the others keep working */
    kill(pids[2], SIGKILL);
    waitpid(pids[2], NULL, 0);
    pids[2] = 0;
    char state[16] = "";
    uint64_t deadline = xt_now_ms() + 5000;
    while (xt_now_ms() < deadline) {
        state_of(ctx, xm_region_id(st), state, sizeof(state));
        if (strcmp(state, "degraded") == 0) break;
        usleep(50000);
    }
    cr_assert_str_eq(state, "degraded", "the stripe over the dead host is '%s'", state);
    int degraded = 0;
    for (int i = 0; i < 3; i++) {
        state_of(ctx, xm_region_id(s[i]), state, sizeof(state));
        if (strcmp(state, "degraded") == 0) {
            degraded++;
            continue;
        }
        cr_assert_str_eq(state, "ok");
        cr_assert_eq(xm_read(s[i], 4096, r, 4096), XM_OK, "%s", xm_last_error(ctx));
        cr_assert(memcmp(w + i, r, 4096) == 0, "allocation %d lost its bytes", i);
        cr_assert_eq(xm_write(s[i], 0, w, 8192), XM_OK, "%s", xm_last_error(ctx));
    }
    cr_assert_eq(degraded, 1, "%d allocations degraded; expected only the dead host's", degraded);
    /* new striped allocations go to the two live hosts and round-trip */
    xm_alloc_h fresh;
    cr_assert_eq(xm_alloc(ctx, 4u << 20, "stripe:2:64K", NULL, &fresh), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(fresh, 0, w, 4u << 20), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_read(fresh, 0, r, 4u << 20), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(w, r, 4u << 20) == 0);
    cr_assert_eq(xm_free(ctx, xm_region_id(fresh), NULL), XM_OK);
    xm_alloc_close(fresh);
    for (int i = 0; i < 3; i++) xm_alloc_close(s[i]);
    xm_alloc_close(st);
    xm_disconnect(ctx);
    free(w);
    free(r);
}

/* Bytes the live appliances hold in regions, asked directly across the links. */
static uint64_t pool_used_direct(void)
{
    uint64_t used = 0;
    for (int i = 1; i <= 3; i++) {
        if (pids[i] <= 0) continue;
        char addr[64];
        addr_of(i, addr, sizeof(addr));
        char cred[PATH_MAX + 80];
        xm_connect_opts_t o = {.size = sizeof(xm_connect_opts_t), .appliance = addr,
                               .secret_file = xt_cred(secret, "alice", cred, sizeof(cred)), .tenant = "alice",
                               .timeout_ms = 5000};
        xm_ctx_h a;
        cr_assert_eq(xm_connect(&o, &a), XM_OK, "appliance %s: %s", addr, xm_last_error(NULL));
        xm_appliance_info_t info;
        cr_assert_eq(xm_appliance_stat(a, &info), XM_OK, "%s", xm_last_error(a));
        used += info.pool_used;
        xm_disconnect(a);
    }
    return used;
}

/* Frees are destroyed on the appliances behind the reply and regions made ahead (stock)
 * after an idle second: poll until used bytes and regions come back, within 10 s. */
static bool wait_settled(xm_ctx_h ctx, uint64_t want, uint64_t *used_p, uint64_t *direct_p)
{
    uint64_t deadline = xt_now_ms() + 10000;
    uint32_t regions;
    do {
        *used_p = xt_used_on_appliances(ctx, &regions);
        *direct_p = pool_used_direct();
        if (*used_p == want && regions == 0 && *direct_p == want) return true;
        usleep(50000);
    } while (xt_now_ms() < deadline);
    return false;
}

/* SIGTERM every daemon still running; each must exit cleanly (under ASan: no leak). */
static void stop_all_clean(void)
{
    for (int i = 0; i < NODES; i++) {
        if (pids[i] <= 0) continue;
        kill(pids[i], SIGTERM);
        int st = 0;
        pid_t r = 0;
        uint64_t deadline = xt_now_ms() + 15000;
        while (xt_now_ms() < deadline && (r = waitpid(pids[i], &st, WNOHANG)) == 0) usleep(10000);
        if (r != pids[i]) continue; /* teardown kills it; the expect below reports it */
        pids[i] = 0;
        int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (code != 0) dump_logs();
        cr_expect_eq(code, 0, "%s exited with %d on SIGTERM", role[i], code);
    }
    for (int i = 0; i < NODES; i++) cr_expect_eq(pids[i], 0, "%s did not stop on SIGTERM", role[i]);
}

/* A second client streaming through its cached descriptor while the manager dies. */
typedef struct io_loop {
    xm_alloc_h alloc;
    uint8_t *image;            /* what the allocation must hold; the loop's until joined */
    uint64_t size;
    _Atomic int stop;
    _Atomic uint64_t rounds;   /* verified write+read rounds */
    _Atomic int failures;
    char why[256];
} io_loop_t;

static void *io_loop(void *arg)
{
    io_loop_t *io = arg;
    const size_t win = 256u << 10; /* 4 chunks of 64 KiB: every round touches all three hosts */
    uint8_t *back = malloc(win);
    for (uint64_t r = 0; !io->stop; r++) {
        uint64_t off = (r * (320u << 10) + r % 7) % (io->size - win);
        xt_fill(io->image + off, win, 1000 + r);
        xm_status_t s = xm_write(io->alloc, off, io->image + off, win);
        if (s == XM_OK) s = xm_read(io->alloc, off, back, win);
        if (s != XM_OK || memcmp(back, io->image + off, win) != 0) {
            if (io->failures++ == 0) {
                snprintf(io->why, sizeof(io->why), "round %llu at %llu: %s", (unsigned long long)r,
                         (unsigned long long)off, s != XM_OK ? xm_status_str(s) : "bytes differ");
            }
        } else {
            io->rounds++;
        }
        usleep(2000);
    }
    free(back);
    return NULL;
}

static bool wait_rounds(io_loop_t *io, uint64_t at_least, int timeout_ms)
{
    uint64_t deadline = xt_now_ms() + (uint64_t)timeout_ms;
    while (io->rounds < at_least && io->failures == 0 && xt_now_ms() < deadline) usleep(10000);
    return io->rounds >= at_least;
}

Test(netns, manager_kill9_and_restart_across_hosts, .fini = teardown, .timeout = 120)
{
    xm_ctx_h ctx = cluster_up();
    uint64_t start_used, start_direct;
    cr_assert(wait_settled(ctx, 0, &start_used, &start_direct), "a fresh cluster holds %llu bytes",
              (unsigned long long)start_used);
    const uint64_t size = 12u << 20;
    xm_alloc_h st, one;
    cr_assert_eq(xm_alloc(ctx, size, "stripe:3:64K", "kept", &st), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_alloc(ctx, 1u << 20, NULL, "one", &one), XM_OK, "%s", xm_last_error(ctx));
    io_loop_t io = {.image = malloc(size), .size = size};
    uint8_t *r = malloc(size), small[4096], got[4096];
    xt_fill(io.image, size, 5);
    xt_fill(small, sizeof(small), 6);
    cr_assert_eq(xm_write(st, 0, io.image, size), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(one, 8192, small, sizeof(small)), XM_OK, "%s", xm_last_error(ctx));

    /* another client on the same host attaches and keeps doing I/O through all that follows */
    char mgr[64];
    addr_of(0, mgr, sizeof(mgr));
    char cred[PATH_MAX + 80];
    xm_connect_opts_t o = {.size = sizeof(xm_connect_opts_t), .manager = mgr,
                           .secret_file = xt_cred(secret, "alice", cred, sizeof(cred)), .tenant = "alice",
                           .timeout_ms = 5000};
    xm_ctx_h ioctx;
    cr_assert_eq(xm_connect(&o, &ioctx), XM_OK, "%s", xm_last_error(NULL));
    cr_assert_eq(xm_attach(ioctx, 0, "kept", XM_ACCESS_READ_WRITE, &io.alloc), XM_OK, "%s",
                 xm_last_error(ioctx));
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, io_loop, &io), 0);
    cr_assert(wait_rounds(&io, 5, 10000), "I/O did not start: %s", io.why);

    /* kill -9 the manager's host process: the data path goes on without it */
    kill(pids[0], SIGKILL);
    waitpid(pids[0], NULL, 0);
    pids[0] = 0;
    uint64_t at_kill = io.rounds;
    xm_alloc_h x;
    cr_assert_eq(xm_alloc(ctx, 4096, NULL, NULL, &x), XM_ERR_CONNECT,
                 "allocating with the manager dead: %s", xm_last_error(ctx));
    cr_assert_eq(xm_attach(ctx, 0, "kept", XM_ACCESS_READ, &x), XM_ERR_CONNECT,
                 "attaching with the manager dead: %s", xm_last_error(ctx));
    cr_assert_eq(xm_read(one, 8192, got, sizeof(got)), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(small, got, sizeof(got)) == 0);
    cr_assert_eq(xm_write(one, 0, small, sizeof(small)), XM_OK, "%s", xm_last_error(ctx));
    /* a whole second down: the appliances' heartbeats fail meanwhile */
    usleep(1000000);
    cr_assert(wait_rounds(&io, at_kill + 20, 10000),
              "I/O stalled with the manager down: %llu rounds since the kill (%s)",
              (unsigned long long)(io.rounds - at_kill), io.why);
    cr_assert_eq(io.failures, 0, "I/O failed with the manager down: %s", io.why);

    /* restart on the same host, address and table: everything is still there */
    start_manager();
    uint64_t at_restart = io.rounds;
    int up = wait_up(&ctx, "alice", 3, 15000);
    if (up != 3) dump_logs();
    cr_assert_eq(up, 3, "appliances up after the manager's restart: %d", up);
    xm_alloc_info_t *infos;
    size_t n;
    cr_assert_eq(xm_alloc_list(ctx, &infos, &n), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(n, 2, "%zu allocations listed after the restart", n);
    for (size_t i = 0; i < n; i++) {
        cr_assert_str_eq(infos[i].state, "ok", "'%s' is %s after the restart", infos[i].name,
                         infos[i].state);
        if (strcmp(infos[i].name, "kept") == 0) {
            cr_assert_eq(infos[i].parts, 3);
            cr_assert_eq(infos[i].size, size);
        }
    }
    free(infos);
    cr_assert(wait_rounds(&io, at_restart + 5, 10000), "I/O stalled after the restart (%s)", io.why);
    io.stop = 1;
    pthread_join(th, NULL);
    cr_assert_eq(io.failures, 0, "%d I/O rounds failed (first: %s)", io.failures, io.why);
    cr_assert_gt(at_restart - at_kill, 0);

    /* a fresh attach after the restart sees every byte written before, during and after */
    cr_assert_eq(xm_attach(ctx, 0, "kept", XM_ACCESS_READ, &x), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_read(x, 0, r, size), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(io.image, r, size) == 0, "the stripe lost bytes across the manager's restart");
    xm_alloc_close(x);
    cr_assert_eq(xm_attach(ctx, 0, "one", XM_ACCESS_READ, &x), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_read(x, 0, got, sizeof(got)), XM_OK);
    cr_assert(memcmp(small, got, sizeof(got)) == 0, "a write made while the manager was down is lost");
    xm_alloc_close(x);
    /* the restarted manager allocates and frees, and nothing leaks */
    cr_assert_eq(xm_alloc(ctx, 6u << 20, "stripe:3:64K", NULL, &x), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(x, (6u << 20) - 4096, small, sizeof(small)), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_free(ctx, xm_region_id(x), NULL), XM_OK, "%s", xm_last_error(ctx));
    xm_alloc_close(x);
    cr_assert_eq(xm_free(ctx, 0, "kept"), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_free(ctx, 0, "one"), XM_OK, "%s", xm_last_error(ctx));
    uint64_t used, direct;
    bool settled = wait_settled(ctx, start_used, &used, &direct);
    cr_assert(settled, "after freeing everything the manager counts %llu bytes, the appliances hold "
              "%llu (start: %llu)", (unsigned long long)used, (unsigned long long)direct,
              (unsigned long long)start_used);
    xm_alloc_close(io.alloc);
    xm_alloc_close(st);
    xm_alloc_close(one);
    xm_disconnect(ioctx);
    xm_disconnect(ctx);
    stop_all_clean();
    free(io.image);
    free(r);
}

/* Several clients on the client host allocate, use and free at once. */
typedef struct churner {
    int idx;
    int failures;
    int done;
    char why[256];
} churner_t;

static void *churn(void *arg)
{
    churner_t *wk = arg;
    char mgr[64], tenant[16];
    addr_of(0, mgr, sizeof(mgr));
    snprintf(tenant, sizeof(tenant), "t%d", wk->idx);
    char cred[PATH_MAX + 80];
    snprintf(cred, sizeof(cred), "%s.%s.cred", secret, tenant); /* issued before the threads start */
    xm_connect_opts_t o = {.size = sizeof(xm_connect_opts_t), .manager = mgr, .secret_file = cred, .tenant = tenant,
                           .timeout_ms = 5000};
    xm_ctx_h ctx;
    if (xm_connect(&o, &ctx) != XM_OK) {
        snprintf(wk->why, sizeof(wk->why), "connect: %s", xm_last_error(NULL));
        wk->failures++;
        return NULL;
    }
    static const char *const policies[] = {"single", "stripe:2:64K", "stripe:3:64K"};
    for (int i = 0; i < 40; i++) {
        const char *pol = policies[(i + wk->idx) % 3];
        uint64_t size = 4096u * (uint64_t)(1 + (i * 7 + wk->idx) % 500);
        if (pol != policies[0]) size += 1u << 20;
        xm_alloc_h a;
        if (xm_alloc(ctx, size, pol, NULL, &a) != XM_OK) {
            snprintf(wk->why, sizeof(wk->why), "alloc %s: %s", pol, xm_last_error(ctx));
            wk->failures++;
            continue;
        }
        /* both ends of the allocation: the first and the last part */
        uint64_t v = ((uint64_t)wk->idx << 32) | (uint64_t)i, got0 = 0, got1 = 0;
        if (xm_write(a, 0, &v, 8) != XM_OK || xm_write(a, size - 8, &v, 8) != XM_OK ||
            xm_read(a, 0, &got0, 8) != XM_OK || xm_read(a, size - 8, &got1, 8) != XM_OK ||
            got0 != v || got1 != v) {
            snprintf(wk->why, sizeof(wk->why), "I/O on %s: %s", pol, xm_last_error(ctx));
            wk->failures++;
        }
        if (xm_free(ctx, xm_region_id(a), NULL) != XM_OK) {
            snprintf(wk->why, sizeof(wk->why), "free: %s", xm_last_error(ctx));
            wk->failures++;
        }
        xm_alloc_close(a);
        wk->done++;
    }
    xm_alloc_info_t *infos;
    size_t n;
    if (xm_alloc_list(ctx, &infos, &n) != XM_OK) {
        snprintf(wk->why, sizeof(wk->why), "list: %s", xm_last_error(ctx));
        wk->failures++;
    } else {
        if (n != 0) {
            snprintf(wk->why, sizeof(wk->why), "%zu allocations still listed", n);
            wk->failures++;
        }
        free(infos);
    }
    xm_disconnect(ctx);
    return NULL;
}

Test(netns, concurrent_allocate_free_across_hosts_leaks_nothing, .fini = teardown, .timeout = 120)
{
    xm_ctx_h ctx = cluster_up();
    uint64_t start_used, start_direct;
    cr_assert(wait_settled(ctx, 0, &start_used, &start_direct), "a fresh cluster holds %llu bytes",
              (unsigned long long)start_used);
    enum { CLIENTS = 4 };
    churner_t wk[CLIENTS];
    pthread_t th[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        wk[i] = (churner_t){.idx = i};
        char t[16], cred[PATH_MAX + 80];
        snprintf(t, sizeof(t), "t%d", i);
        xt_cred(secret, t, cred, sizeof(cred));
        cr_assert_eq(pthread_create(&th[i], NULL, churn, &wk[i]), 0);
    }
    for (int i = 0; i < CLIENTS; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < CLIENTS; i++) {
        cr_expect_eq(wk[i].failures, 0, "client %d: %d failures (%s)", i, wk[i].failures, wk[i].why);
        cr_expect_eq(wk[i].done, 40, "client %d finished %d of 40", i, wk[i].done);
    }
    uint64_t used, direct;
    bool settled = wait_settled(ctx, start_used, &used, &direct);
    cr_assert(settled, "after the churn the manager counts %llu bytes used, the appliances hold %llu "
              "(start: %llu)", (unsigned long long)used, (unsigned long long)direct,
              (unsigned long long)start_used);
    /* and the capacity is really there again: one allocation takes 3/4 of all of it */
    xm_alloc_h big;
    cr_assert_eq(xm_alloc(ctx, 288u << 20, "stripe:3", NULL, &big), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_free(ctx, xm_region_id(big), NULL), XM_OK);
    xm_alloc_close(big);
    xm_disconnect(ctx);
    stop_all_clean();
}
