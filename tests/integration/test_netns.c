/* Several hosts simulated with network namespaces: the manager, three
 * appliances and the client each in its own namespace, joined by veth pairs
 * to a bridge in a "switch" namespace, with private addresses that exist only
 * inside those namespaces (no namespace has a route anywhere else, so no
 * packet can leave this machine). Created and removed by the test, also when
 * it fails; skipped with the reason when not root or `ip netns` is missing. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
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

Test(netns, striped_across_hosts_and_appliance_kill9, .fini = teardown, .timeout = 120)
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
    char mgr[64], db[PATH_MAX];
    addr_of(0, mgr, sizeof(mgr));
    snprintf(db, sizeof(db), "%s/manager.db", dir);
    const char *margv[] = {XMEM_BIN_DIR "/xmem-manager", "--listen", mgr, "--db", db,
                           "--secret-file", secret, "--down-after-ms", "600", "--log-level",
                           "info", NULL};
    spawn(0, margv);
    for (int i = 1; i <= 3; i++) start_appliance(i);

    /* the test itself is the client, on its own host */
    home_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    cr_assert(home_ns >= 0);
    enter("c");
    xm_connect_opts_t o = {.manager = mgr, .secret_file = secret, .tenant = "alice",
                           .timeout_ms = 5000};
    xm_ctx_h ctx = NULL;
    uint64_t deadline = xt_now_ms() + 20000;
    int up = 0;
    while (xt_now_ms() < deadline) {
        if (ctx == NULL && xm_connect(&o, &ctx) != XM_OK) ctx = NULL;
        if (ctx != NULL && (up = count_up(ctx)) == 3) break;
        usleep(50000);
    }
    if (up != 3) dump_logs();
    cr_assert_eq(up, 3, "appliances up in their namespaces: %d (connect: %s)", up,
                 ctx != NULL ? "ok" : xm_last_error(NULL));
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
    deadline = xt_now_ms() + 5000;
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
