/* xmemd's control server is one event loop (src/rpc/server.c): idle sessions cost no
 * threads, a loaded appliance still answers others at once, and running out of file
 * descriptors pauses accept instead of spinning on EMFILE. Clients here speak the
 * protocol themselves (rpc_connect + the handshake), as many as a test needs. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "harness.h"
#include "../../src/client/client.h"
#include "../../src/common/common.h"

static xt_appliance_t app;

static void teardown(void)
{
    cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
    xt_cleanup(&app);
}

/* Threads of a process (/proc/PID/status). */
static int thread_count(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    int n = -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "Threads: %d", &n) == 1) break;
    }
    fclose(f);
    return n;
}

/* CPU time (user + system) a process used, in ms (/proc/PID/stat). */
static uint64_t cpu_ms(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = '\0';
    /* fields after the command's closing parenthesis: state is field 3, utime 14, stime 15 */
    char *p = strrchr(buf, ')');
    cr_assert_not_null(p);
    unsigned long long ut = 0, st = 0;
    cr_assert_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st), 2);
    return (ut + st) * 1000ull / (uint64_t)sysconf(_SC_CLK_TCK);
}

/* Times the process's main thread (the server's loop) went to sleep and was woken. */
static long main_thread_wakeups(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/task/%d/status", (int)pid, (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    long n = -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "voluntary_ctxt_switches: %ld", &n) == 1) break;
    }
    fclose(f);
    return n;
}

/* An authenticated session of tenant's, bypassing libxmem; false when refused or timed out. */
static bool session_open(const char *tenant, uint32_t timeout_ms, rpc_conn_t *rc)
{
    char host[64], port[16], cred_path[PATH_MAX + 80], why[256];
    cr_assert_eq(xm__parse_hostport(app.addr, host, sizeof(host), port, sizeof(port)), XM_OK);
    xt_cred(app.secret, tenant, cred_path, sizeof(cred_path));
    rpc_cred_t cred;
    cr_assert_eq(rpc_cred_load(cred_path, &cred, why, sizeof(why)), XM_OK, "%s", why);
    int fd;
    if (rpc_connect(host, port, timeout_ms, &fd) != XM_OK) return false;
    rpc_conn_init(rc, fd);
    xm_msg_t *welcome = NULL;
    if (rpc_handshake_client(rc, &cred, tenant, timeout_ms, &welcome, why, sizeof(why)) != XM_OK) {
        rpc_conn_close(rc);
        return false;
    }
    proto_msg_free(welcome);
    return true;
}

/* One appliance stat on a session; true when answered within timeout_ms. */
static bool session_stat(rpc_conn_t *rc, uint32_t timeout_ms)
{
    Xmem__ApplianceStat st = XMEM__APPLIANCE_STAT__INIT;
    xm_msg_t req = XMEM__MSG__INIT;
    req.body_case = XMEM__MSG__BODY_APPLIANCE_STAT;
    req.appliance_stat = &st;
    xm_msg_t *rep = NULL;
    char why[256];
    xm_status_t s = rpc_call(rc, &req, timeout_ms, &rep, why, sizeof(why));
    bool ok = s == XM_OK && rep->body_case == XMEM__MSG__BODY_APPLIANCE_INFO;
    if (rep != NULL) proto_msg_free(rep);
    return ok;
}

/* 200 idle sessions are 200 descriptors, not 200 threads; a newcomer is served at once and
 * every held session still answers (a thread per connection had 200 threads here). */
Test(appliance_loop, idle_sessions_cost_no_threads, .fini = teardown, .timeout = 120)
{
    enum { N = 200 };
    xt_start(&app, &(xt_opts_t){.extra = {"--max-conns-per-tenant", "256"}});
    int before = thread_count(app.pid);
    static rpc_conn_t held[N];
    for (int i = 0; i < N; i++) {
        cr_assert(session_open("alice", 5000, &held[i]), "session %d refused", i);
    }
    /* handshake threads end with their handshakes; allow a moment for the last ones */
    int during = 0;
    for (int i = 0; i < 50; i++) {
        during = thread_count(app.pid);
        if (during <= before + 2) break;
        usleep(100000);
    }
    cr_assert_leq(during, before + 2, "%d threads with %d idle sessions (%d before)", during, N,
                  before);

    uint64_t t0 = xt_now_ms();
    xm_ctx_h bob = xt_connect(&app, "bob");
    xm_appliance_info_t info;
    cr_assert_eq(xm_appliance_stat(bob, &info), XM_OK, "%s", xm_last_error(bob));
    uint64_t took = xt_now_ms() - t0;
    cr_assert_lt(took, 2000, "a newcomer waited %llu ms beside %d idle sessions",
                 (unsigned long long)took, N);
    xm_disconnect(bob);

    for (int i = 0; i < N; i++) cr_assert(session_stat(&held[i], 5000), "held session %d not served", i);
    for (int i = 0; i < N; i++) rpc_conn_close(&held[i]);
}

/* With fewer descriptors than --max-conns, accept fails with EMFILE while connections wait
 * in the backlog: the appliance pauses accept (no spin: its CPU time over 2 s stays small),
 * keeps serving its sessions, and accepts again once descriptors are free. */
Test(appliance_loop, out_of_descriptors_pauses_accept, .fini = teardown, .timeout = 120)
{
    enum { MAX_HELD = 96, WAITING = 8 };
    xt_start(&app, &(xt_opts_t){.extra = {"--max-conns", "1000", "--max-conns-per-tenant", "256"}});
    rpc_conn_t bob;
    cr_assert(session_open("bob", 5000, &bob));
    /* what `ulimit -n 64` would have done at xmemd's start */
    struct rlimit rl;
    cr_assert_eq(prlimit(app.pid, RLIMIT_NOFILE, NULL, &rl), 0, "%s", strerror(errno));
    struct rlimit low = {.rlim_cur = 64, .rlim_max = rl.rlim_max};
    cr_assert_eq(prlimit(app.pid, RLIMIT_NOFILE, &low, NULL), 0, "%s", strerror(errno));

    /* take descriptors until the appliance has none left */
    static rpc_conn_t held[MAX_HELD];
    int nheld = 0;
    while (nheld < MAX_HELD && session_open("alice", 1000, &held[nheld])) nheld++;
    cr_assert_lt(nheld, MAX_HELD, "%d sessions under a limit of 64 descriptors", nheld);
    int waiting[WAITING];
    char host[64], port[16];
    cr_assert_eq(xm__parse_hostport(app.addr, host, sizeof(host), port, sizeof(port)), XM_OK);
    for (int i = 0; i < WAITING; i++) {
        cr_assert_eq(rpc_connect(host, port, 2000, &waiting[i]), XM_OK); /* queued, not accepted */
    }

    uint64_t cpu0 = cpu_ms(app.pid);
    usleep(2000000);
    uint64_t cpu = cpu_ms(app.pid) - cpu0;
    cr_assert_lt(cpu, 400, "xmemd used %llu ms of CPU in 2 s out of descriptors (accept spins?)",
                 (unsigned long long)cpu);
    cr_assert(session_stat(&bob, 3000), "an existing session was not served while out of descriptors");

    /* descriptors come back: the queued peers and new sessions get in */
    for (int i = 0; i < WAITING; i++) close(waiting[i]);
    for (int i = 0; i < nheld; i++) rpc_conn_close(&held[i]);
    rpc_conn_t again;
    bool in = false;
    for (int i = 0; i < 20 && !in; i++) {
        in = session_open("carol", 2000, &again);
        if (!in) usleep(100000);
    }
    cr_assert(in, "no new session once descriptors were free again");
    cr_assert(session_stat(&again, 3000));
    rpc_conn_close(&again);

    cr_assert_eq(prlimit(app.pid, RLIMIT_NOFILE, &rl, NULL), 0);
    cr_assert(session_stat(&bob, 3000));
    rpc_conn_close(&bob);
}

/* An idle appliance sleeps: its loop is not woken periodically, with no sessions or with idle
 * ones (the thread-per-connection server woke every second while it had connections). */
Test(appliance_loop, idle_appliance_sleeps, .fini = teardown, .timeout = 60)
{
    enum { N = 10 };
    xt_start(&app, NULL);
    usleep(300000);
    long w0 = main_thread_wakeups(app.pid);
    usleep(2500000);
    long w = main_thread_wakeups(app.pid) - w0;
    cr_assert_leq(w, 1, "the loop woke %ld times in 2.5 s with no connections", w);

    rpc_conn_t held[N];
    for (int i = 0; i < N; i++) cr_assert(session_open("alice", 5000, &held[i]));
    usleep(300000);
    w0 = main_thread_wakeups(app.pid);
    usleep(2500000);
    w = main_thread_wakeups(app.pid) - w0;
    cr_assert_leq(w, 1, "the loop woke %ld times in 2.5 s with %d idle sessions", w, N);
    for (int i = 0; i < N; i++) cr_assert(session_stat(&held[i], 3000));
    for (int i = 0; i < N; i++) rpc_conn_close(&held[i]);
}
