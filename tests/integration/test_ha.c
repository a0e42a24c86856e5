/* A highly available manager group (docs/ha.md): two xmem-managers sharing their table in
 * a three-member etcd, two appliances and a client given both managers. The leader is
 * killed (-9) under a loop of allocations and frees, three times: the other takes over,
 * no allocation is lost or made twice, every allocation's bytes survive, and the
 * appliances end up holding exactly the regions of the allocations listed. A standby
 * names the leader, a fenced leader cannot write, the loss of one etcd member is
 * tolerated. Needs etcd (Debian etcd-server); skipped with the reason when absent. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
/* xm__rpc: an allocation request with a chosen request id, as a retry sends it */
#include "../../src/client/client.h"

#define NMGR 2
#define NAPP 2
#define MAX_ALLOCS 4096
#define NETCD 3

typedef struct group {
    char dir[256], secret[PATH_MAX], etcd_url[NETCD * 32], etcd_log[PATH_MAX];
    char etcd_member[NETCD][32];   /* client URL of each member */
    pid_t etcd[NETCD];
    xt_manager_t mgr[NMGR];
    char mgr_listen[NMGR][64];
    char managers[NMGR * 64];      /* "A,B": what clients and appliances are given */
    xt_appliance_t app[NAPP];
} group_t;

static group_t g;

static const char *etcd_binary(void)
{
    static const char *paths[] = {"/usr/bin/etcd", "/usr/local/bin/etcd"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
        if (access(paths[i], X_OK) == 0) return paths[i];
    return NULL;
}

/* A port nobody listens on now (bound, then released). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    cr_assert(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    cr_assert(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                             .sin_port = htons((uint16_t)port)};
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/* A three-member etcd on loopback (member loss is tolerated as etcd tolerates it). */
static void etcd_start(void)
{
    const char *bin = etcd_binary();
    int cport[NETCD], pport[NETCD];
    char cluster[NETCD * 48] = "";
    for (int i = 0; i < NETCD; i++) {
        cport[i] = free_port();
        pport[i] = free_port();
        snprintf(g.etcd_member[i], sizeof(g.etcd_member[i]), "http://127.0.0.1:%d", cport[i]);
        size_t n = strlen(cluster);
        snprintf(cluster + n, sizeof(cluster) - n, "%se%d=http://127.0.0.1:%d", i ? "," : "", i, pport[i]);
        n = strlen(g.etcd_url);
        snprintf(g.etcd_url + n, sizeof(g.etcd_url) - n, "%s%s", i ? "," : "", g.etcd_member[i]);
    }
    snprintf(g.etcd_log, sizeof(g.etcd_log), "%s/etcd.log", g.dir);
    pid_t parent = getpid();
    for (int i = 0; i < NETCD; i++) {
        char name[8], data[PATH_MAX + 16], peer[64];
        snprintf(name, sizeof(name), "e%d", i);
        snprintf(data, sizeof(data), "%s/etcd%d", g.dir, i);
        snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", pport[i]);
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) _exit(127);
            int fd = open(g.etcd_log, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
            }
            execl(bin, bin, "--name", name, "--data-dir", data, "--listen-client-urls",
                  g.etcd_member[i], "--advertise-client-urls", g.etcd_member[i],
                  "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                  "--initial-cluster", cluster, "--initial-cluster-state", "new",
                  "--log-level", "warn", (char *)NULL);
            _exit(127);
        }
        g.etcd[i] = pid;
    }
    uint64_t deadline = xt_now_ms() + 20000;
    for (int i = 0; i < NETCD; i++) {
        while (!port_open(cport[i]) && xt_now_ms() < deadline) {
            cr_assert(waitpid(g.etcd[i], NULL, WNOHANG) == 0, "etcd exited at start (log %s)", g.etcd_log);
            usleep(50000);
        }
        cr_assert(port_open(cport[i]), "etcd did not listen on %s", g.etcd_member[i]);
    }
}

/* --down-after-ms 3000: a new leader's reconciliation of an appliance takes up to a second
 * under load (ASan, other tests), and the appliance's next heartbeat comes only after it */
static void mgr_start(int i)
{
    const char *extra[] = {"--store", "etcd", "--etcd", g.etcd_url, "--etcd-prefix", "/xmem-test",
                           "--stock", "0", "--down-after-ms", "3000", NULL};
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/m%d", g.dir, i);
    mkdir(dir, 0755);
    xt_manager_start(&g.mgr[i], dir, g.secret, g.mgr_listen[i][0] ? g.mgr_listen[i] : NULL, extra);
    snprintf(g.mgr_listen[i], sizeof(g.mgr_listen[i]), "%s", g.mgr[i].addr);
}

/* etcd, the managers, the appliances registered with the group. */
static void group_start(void)
{
    if (etcd_binary() == NULL)
        cr_skip_test("etcd is not installed (Debian etcd-server; scripts/install-deps.sh installs it)");
    memset(&g, 0, sizeof(g));
    snprintf(g.dir, sizeof(g.dir), "/tmp/xmem-test-XXXXXX");
    cr_assert(mkdtemp(g.dir) != NULL);
    snprintf(g.secret, sizeof(g.secret), "%s/secret", g.dir);
    xt_make_secret(g.secret);
    etcd_start();
    for (int i = 0; i < NMGR; i++) {
        mgr_start(i);
        size_t n = strlen(g.managers);
        snprintf(g.managers + n, sizeof(g.managers) - n, "%s%s", i ? "," : "", g.mgr[i].addr);
    }
    for (int i = 0; i < NAPP; i++) {
        char sub[300];
        static char domains[NAPP][8];
        snprintf(sub, sizeof(sub), "%s/a%d", g.dir, i);
        mkdir(sub, 0755);
        snprintf(domains[i], sizeof(domains[i]), "d%d", i);
        xt_opts_t o = {.pool = "256M", .secret = g.secret, .dir = sub,
                       .extra = {"--manager", g.managers, "--domain", domains[i], "--heartbeat-ms", "100"}};
        xt_start(&g.app[i], &o);
    }
}

static void group_stop(void)
{
    for (int i = 0; i < NAPP; i++)
        if (g.app[i].pid > 0) cr_expect_eq(xt_stop(&g.app[i]), 0, "appliance %d: unclean exit", i);
    for (int i = 0; i < NMGR; i++)
        if (g.mgr[i].pid > 0) cr_expect_eq(xt_manager_stop(&g.mgr[i]), 0, "manager %d: unclean exit", i);
    for (int i = 0; i < NETCD; i++) {
        if (g.etcd[i] > 0) {
            kill(g.etcd[i], SIGKILL); /* its data is thrown away: no graceful stop to wait for */
            waitpid(g.etcd[i], NULL, 0);
            g.etcd[i] = 0;
        }
    }
    if (strncmp(g.dir, "/tmp/xmem-test-", 15) == 0 && getenv("XT_KEEP_LOG") == NULL) {
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g.dir);
        if (system(cmd) != 0) { /* best effort */ }
    }
}

/* A context on the whole group (both managers). */
static xm_ctx_h group_connect(const char *tenant)
{
    xt_manager_t all = g.mgr[0];
    snprintf(all.addr, sizeof(all.addr), "%.63s", g.managers); /* two loopback addresses fit */
    return xt_manager_connect(&all, tenant);
}

/* Which manager leads now (-1: none yet): the one whose handshake is not a standby's. */
static int leader_now(void)
{
    for (int i = 0; i < NMGR; i++) {
        xm_ctx_h c;
        if (g.mgr[i].pid > 0 && xt_manager_try_connect(&g.mgr[i], "alice", &c) == XM_OK) {
            xm_disconnect(c);
            return i;
        }
    }
    return -1;
}

static int wait_leader(void)
{
    uint64_t deadline = xt_now_ms() + 20000;
    int l;
    while ((l = leader_now()) < 0 && xt_now_ms() < deadline) usleep(50000);
    cr_assert_geq(l, 0, "no manager became the leader");
    return l;
}

static int appliances_up(xm_ctx_h ctx)
{
    xm_appliance_entry_t *es = NULL;
    size_t n = 0;
    int up = 0;
    if (xm_appliance_list(ctx, &es, &n) != XM_OK) return -1;
    for (size_t i = 0; i < n; i++) up += strcmp(es[i].state, "up") == 0;
    free(es);
    return up;
}

/* ---- the allocation loop ---- */

typedef struct churn {
    xm_ctx_h ctx;
    volatile bool stop;
    pthread_mutex_t lock;
    uint64_t ids[MAX_ALLOCS];        /* allocations alive, as this client believes */
    size_t n;
    uint64_t made, freed;
    uint64_t last_ok_ms;             /* when the last call succeeded */
    char error[512];                 /* the first failure */
} churn_t;

static void *churn_main(void *arg)
{
    churn_t *c = arg;
    for (uint64_t k = 0; !c->stop && c->error[0] == '\0'; k++) {
        xm_alloc_h a;
        xm_status_t s = xm_alloc(c->ctx, 64 << 10, k % 3 == 0 ? "stripe:2:4K" : "single", NULL, &a);
        if (s != XM_OK) {
            snprintf(c->error, sizeof(c->error), "alloc %llu: %s: %s", (unsigned long long)k,
                     xm_status_str(s), xm_last_error(c->ctx));
            break;
        }
        uint64_t id = xm_region_id(a);
        /* its id in its first bytes: read back after the failovers */
        s = xm_write(a, 0, &id, sizeof(id));
        xm_alloc_close(a);
        if (s != XM_OK) {
            snprintf(c->error, sizeof(c->error), "write to %llu: %s", (unsigned long long)id,
                     xm_last_error(c->ctx));
            break;
        }
        pthread_mutex_lock(&c->lock);
        for (size_t i = 0; i < c->n; i++) {
            if (c->ids[i] == id) {
                snprintf(c->error, sizeof(c->error), "allocation %llu handed out twice",
                         (unsigned long long)id);
            }
        }
        if (c->n < MAX_ALLOCS) c->ids[c->n++] = id;
        c->made++;
        c->last_ok_ms = xt_now_ms();
        pthread_mutex_unlock(&c->lock);
        if (k % 2 == 1 && c->n > 0) { /* free every other one: frees cross failovers too */
            pthread_mutex_lock(&c->lock);
            uint64_t victim = c->ids[(k * 7) % c->n];
            pthread_mutex_unlock(&c->lock);
            s = xm_free(c->ctx, victim, NULL);
            if (s != XM_OK) {
                snprintf(c->error, sizeof(c->error), "free %llu: %s: %s", (unsigned long long)victim,
                         xm_status_str(s), xm_last_error(c->ctx));
                break;
            }
            pthread_mutex_lock(&c->lock);
            for (size_t i = 0; i < c->n; i++) {
                if (c->ids[i] == victim) {
                    c->ids[i] = c->ids[--c->n];
                    break;
                }
            }
            c->freed++;
            c->last_ok_ms = xt_now_ms();
            pthread_mutex_unlock(&c->lock);
        }
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Regions the appliances hold, asked of each directly (the manager's count is not evidence). */
static size_t regions_on_appliances(void)
{
    size_t total = 0;
    for (int i = 0; i < NAPP; i++) {
        xm_ctx_h a = xt_connect(&g.app[i], "@admin");
        xm_appliance_info_t info;
        cr_assert_eq(xm_appliance_stat(a, &info), XM_OK, "%s", xm_last_error(a));
        total += info.regions;
        xm_disconnect(a);
    }
    return total;
}

/* One AllocCreate with a chosen request id (what the library resends after a failover). */
static uint64_t raw_alloc(xm_ctx_h ctx, uint64_t request_id)
{
    Xmem__AllocRequest ar = XMEM__ALLOC_REQUEST__INIT;
    ar.request_id = request_id;
    ar.size = 1 << 20;
    ar.policy = "single";
    ar.name = "";
    xm_msg_t req = XMEM__MSG__INIT, *rep;
    req.body_case = XMEM__MSG__BODY_ALLOC_CREATE;
    req.alloc_create = &ar;
    xm_status_t s = xm__rpc(ctx, &req, &rep);
    cr_assert_eq(s, XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(rep->body_case, XMEM__MSG__BODY_ALLOC_DESC);
    uint64_t id = rep->alloc_desc->id;
    proto_msg_free(rep);
    return id;
}

/* After the failovers (one group start for both: each costs ~5 s under ASan): a standby
 * names the leader; a clean stop hands over at once and a retried request id is the same
 * allocation; a fenced leader cannot write; one etcd member's loss is tolerated. */
static void standby_fencing_and_member_loss(void)
{
    int leader = wait_leader();
    int standby = 1 - leader;
    /* a client given the standby alone is told where the leader is */
    xm_ctx_h c = NULL;
    xm_status_t s = xt_manager_try_connect(&g.mgr[standby], "alice", &c);
    cr_assert_eq(s, XM_ERR_CONNECT, "a standby accepted a client: %s", xm_status_str(s));
    cr_assert(strstr(xm_last_error(NULL), "standby") != NULL, "%s", xm_last_error(NULL));
    cr_assert(strstr(xm_last_error(NULL), g.mgr[leader].addr) != NULL,
              "the standby did not name the leader %s: %s", g.mgr[leader].addr, xm_last_error(NULL));
    /* a clean stop of the leader hands over at once (its lease is revoked) */
    xm_ctx_h ctx = group_connect("alice");
    uint64_t deadline = xt_now_ms() + 20000;
    while (appliances_up(ctx) != NAPP && xt_now_ms() < deadline) usleep(50000);
    xm_alloc_info_t *infos = NULL;
    size_t n = 0, n0;
    cr_assert_eq(xm_alloc_list(ctx, &infos, &n0), XM_OK);
    free(infos);
    uint64_t first = raw_alloc(ctx, 0xfa110fe5);
    cr_assert_eq(xt_manager_stop(&g.mgr[leader]), 0);
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, 1 << 20, "single", "after-stop", &a), XM_OK, "%s", xm_last_error(ctx));
    xm_alloc_close(a);
    cr_assert_eq(leader_now(), standby);
    /* the new leader knows the request from the table: its retry is the same allocation */
    cr_assert_eq(raw_alloc(ctx, 0xfa110fe5), first, "a retried request made a second allocation");
    cr_assert_eq(xm_alloc_list(ctx, &infos, &n), XM_OK);
    free(infos);
    cr_assert_eq(n, n0 + 2, "%zu allocations listed, %zu made", n, n0 + 2);

    /* fencing: with the leader key gone behind its back (as when etcd expired its lease
     * during a stall), the leader's next write is refused, nothing is recorded, and it
     * stands down and campaigns afresh */
    if (access("/usr/bin/etcdctl", X_OK) != 0) {
        cr_log_warn("etcdctl is not installed (etcd-client): fencing not checked");
        xm_disconnect(ctx);
        return;
    }
    char cmd[PATH_MAX + 256];
    snprintf(cmd, sizeof(cmd), "ETCDCTL_API=3 /usr/bin/etcdctl --endpoints %s del /xmem-test/leader "
             ">/dev/null", g.etcd_url);
    cr_assert_eq(system(cmd), 0, "etcdctl del failed");
    /* the refused write's request is answered with an error, or (when the leader phase
     * ended before its reply) retried by the library on the re-elected leader: either
     * way recorded at most once */
    xm_status_t st = xm_alloc(ctx, 1 << 20, "single", "fenced", &a);
    cr_assert(st == XM_OK || st == XM_ERR_IO, "%s: %s", xm_status_str(st), xm_last_error(ctx));
    size_t made = n0 + 2 + (st == XM_OK);
    if (st == XM_OK) xm_alloc_close(a);
    deadline = xt_now_ms() + 20000;
    while ((st = xm_alloc(ctx, 1 << 20, "single", "after-fence", &a)) != XM_OK && xt_now_ms() < deadline)
        usleep(100000);
    cr_assert_eq(st, XM_OK, "no leader after the fenced write: %s", xm_last_error(ctx));
    xm_alloc_close(a);
    made++;
    /* the leader saw its write refused (and stood down) */
    snprintf(cmd, sizeof(cmd), "grep -q 'write refused: another manager leads' '%s'", g.mgr[standby].log);
    cr_assert_eq(system(cmd), 0, "the leader's write was not refused after its key was deleted");
    cr_assert_eq(xm_alloc_list(ctx, &infos, &n), XM_OK);
    free(infos);
    cr_assert_eq(n, made, "%zu allocations listed, %zu made", n, made);

    /* one of the three etcd members dies (the first the managers use): the group goes on */
    kill(g.etcd[0], SIGKILL);
    waitpid(g.etcd[0], NULL, 0);
    g.etcd[0] = 0;
    cr_assert_eq(xm_alloc(ctx, 1 << 20, "single", "one-etcd-member-down", &a), XM_OK, "%s",
                 xm_last_error(ctx));
    xm_alloc_close(a);
    cr_assert_eq(xm_alloc_list(ctx, &infos, &n), XM_OK, "%s", xm_last_error(ctx));
    free(infos);
    cr_assert_eq(n, made + 1, "%zu allocations listed, %zu made", n, made + 1);
    xm_disconnect(ctx);
}

Test(ha, leader_killed_standby_fenced_etcd_member_lost, .init = group_start, .fini = group_stop,
     .timeout = 180)
{
    int leader = wait_leader();
    xm_ctx_h ctx = group_connect("alice");
    uint64_t deadline = xt_now_ms() + 20000;
    while (appliances_up(ctx) != NAPP && xt_now_ms() < deadline) usleep(50000);
    cr_assert_eq(appliances_up(ctx), NAPP, "the appliances did not register with the group");

    static churn_t c;
    memset(&c, 0, sizeof(c));
    pthread_mutex_init(&c.lock, NULL);
    c.ctx = ctx;
    pthread_t th;
    pthread_create(&th, NULL, churn_main, &c);
    const int failovers = 3;
    for (int f = 0; f < failovers && c.error[0] == '\0'; f++) {
        /* allocations flow, then the leader dies in the middle of them */
        uint64_t before = c.made;
        uint64_t until = xt_now_ms() + 15000;
        while (c.made < before + 20 && c.error[0] == '\0' && xt_now_ms() < until) usleep(10000);
        cr_assert_geq(c.made, before + 20, "allocations stalled before failover %d: %s", f, c.error);
        xt_manager_kill9(&g.mgr[leader]);
        uint64_t killed = xt_now_ms(); /* reaped: a success from now on is the new leader's */
        /* served again: a success after the kill (the bench measures the time; this only
         * bounds it generously) */
        while (c.last_ok_ms <= killed && c.error[0] == '\0' && xt_now_ms() < killed + 30000) usleep(10000);
        cr_assert_str_empty(c.error, "failover %d: %s", f, c.error);
        cr_assert_gt(c.last_ok_ms, killed, "failover %d: nothing served 30 s after the kill", f);
        cr_log_info("failover %d: served again %llu ms after the kill", f,
                    (unsigned long long)(c.last_ok_ms - killed));
        int old = leader;
        leader = wait_leader();
        cr_assert_neq(leader, old, "the killed manager still leads");
        mgr_start(old); /* back as a standby, same address */
    }
    c.stop = true;
    pthread_join(th, NULL);
    cr_assert_str_empty(c.error, "%s", c.error);
    cr_assert_gt(c.freed, 0);

    /* the table is what the client was told: every allocation it holds, nothing else */
    xm_alloc_info_t *infos = NULL;
    size_t n = 0;
    cr_assert_eq(xm_alloc_list(ctx, &infos, &n), XM_OK, "%s", xm_last_error(ctx));
    uint64_t *listed = calloc(n + 1, sizeof(*listed));
    for (size_t i = 0; i < n; i++) listed[i] = infos[i].id;
    free(infos);
    qsort(listed, n, sizeof(*listed), cmp_u64);
    qsort(c.ids, c.n, sizeof(*c.ids), cmp_u64);
    cr_assert_eq(n, c.n, "the group lists %zu allocations, the client holds %zu (made %llu, freed %llu)",
                 n, c.n, (unsigned long long)c.made, (unsigned long long)c.freed);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(listed[i], c.ids[i], "listed allocation %llu is not the client's %llu",
                     (unsigned long long)listed[i], (unsigned long long)c.ids[i]);
    free(listed);
    /* their bytes survived the failovers */
    for (size_t i = 0; i < c.n; i++) {
        xm_alloc_h a;
        cr_assert_eq(xm_attach(ctx, c.ids[i], NULL, XM_ACCESS_READ, &a), XM_OK, "attach %llu: %s",
                     (unsigned long long)c.ids[i], xm_last_error(ctx));
        uint64_t v = 0;
        cr_assert_eq(xm_read(a, 0, &v, sizeof(v)), XM_OK, "%s", xm_last_error(ctx));
        cr_assert_eq(v, c.ids[i], "allocation %llu holds %llu", (unsigned long long)c.ids[i],
                     (unsigned long long)v);
        xm_alloc_close(a);
    }
    /* and the appliances hold exactly their regions: nothing made twice or left behind by a
     * leader that died mid-request (reclaimed when the appliance re-registered) */
    xm_alloc_info_t *again = NULL;
    cr_assert_eq(xm_alloc_list(ctx, &again, &n), XM_OK);
    size_t want = 0;
    for (size_t i = 0; i < n; i++) want += again[i].parts;
    free(again);
    deadline = xt_now_ms() + 20000;
    size_t have;
    while ((have = regions_on_appliances()) != want && xt_now_ms() < deadline) usleep(100000);
    cr_assert_eq(have, want, "the appliances hold %zu regions, the allocations have %zu parts", have, want);
    cr_log_info("%llu allocations made, %llu freed, %zu live over %d failovers",
                (unsigned long long)c.made, (unsigned long long)c.freed, c.n, failovers);
    xm_disconnect(ctx);
    pthread_mutex_destroy(&c.lock);
    standby_fencing_and_member_loss();
}
