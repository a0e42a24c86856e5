/* Failures and bad input: dead appliances, dead clients, malformed messages,
 * a full pool, restarts of a file-backed pool, memory given back. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static xt_appliance_t app;

static void teardown(void)
{
    if (app.pid > 0) cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
    xt_cleanup(&app);
}

XT_TEST_PROVIDERS(failures, appliance_killed_during_io_errors_in_bounded_time, .fini = teardown,
                  .timeout = 90)
{
    xt_start(&app, &(xt_opts_t){.provider = provider});
    xm_ctx_h ctx;
    cr_assert_eq(xt_try_connect(&app, NULL, NULL, 2000, &ctx), XM_OK);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 8u << 20, NULL, &r), XM_OK);
    static uint8_t buf[1u << 20];
    for (int i = 0; i < 20; i++) cr_assert_eq(xm_write(r, 0, buf, sizeof(buf)), XM_OK);
    /* async I/O in flight when the appliance dies */
    xm_op_t ops[8];
    for (int i = 0; i < 8; i++) {
        ops[i] = (xm_op_t){.opcode = XM_OP_WRITE, .region = r, .offset = (uint64_t)i << 20,
                           .buf = buf, .length = sizeof(buf)};
        xm_post(ctx, &ops[i]);
    }
    xt_kill9(&app);
    uint64_t t0 = xt_now_ms();
    bool local = strcmp(provider, "local") == 0;
    if (local) {
        /* the region's memfd lives on in our mapping, but the region is gone for everyone
         * else: the very first operation after the death fails, and every later one (a
         * write must not be acknowledged into a copy nobody will ever read) */
        uint64_t v = 7;
        cr_assert_eq(xm_write(r, 0, &v, 8), XM_ERR_DISCONNECTED, "write to a dead appliance's "
                     "mapping: %s", xm_last_error(ctx));
        cr_assert(strstr(xm_last_error(ctx), "gone") != NULL, "error: %s", xm_last_error(ctx));
        for (int i = 0; i < 1000; i++) {
            cr_assert_eq(xm_read(r, (uint64_t)i * 8, &v, 8), XM_ERR_DISCONNECTED, "read %d", i);
        }
    }
    xm_op_t *ptrs[8];
    for (int i = 0; i < 8; i++) ptrs[i] = &ops[i];
    xm_wait(ctx, ptrs, 8); /* some may have landed before the kill */
    for (int i = 0; i < 8; i++) cr_assert_neq(ops[i].status, XM_IN_PROGRESS);
    xm_status_t s = xm_read(r, 0, buf, 4096);
    cr_assert_neq(s, XM_OK, "read from a dead appliance succeeded");
    if (local) cr_assert_eq(s, XM_ERR_DISCONNECTED, "%s", xm_status_str(s));
    s = xm_write(r, 0, buf, 4096);
    cr_assert_neq(s, XM_OK);
    if (local) cr_assert_eq(s, XM_ERR_DISCONNECTED, "%s", xm_status_str(s));
    uint64_t old;
    s = xm_fetch_add(r, 0, 1, &old);
    cr_assert_neq(s, XM_OK);
    if (local) cr_assert_eq(s, XM_ERR_DISCONNECTED, "%s", xm_status_str(s));
    xm_region_h r2;
    cr_assert_neq(xm_region_create(ctx, 4096, NULL, &r2), XM_OK);
    uint64_t elapsed = xt_now_ms() - t0;
    /* five calls, each bounded by the 2 s timeout */
    cr_assert_lt(elapsed, 5 * 2000 + 3000, "calls to a dead appliance took %llu ms",
                 (unsigned long long)elapsed);
    cr_assert_str_neq(xm_last_error(ctx), "", "no error message for the user");
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* A local handle outlives its appliance in the client's mapping. After xmemd is killed and
 * started again at the same address (same socket path, ids counting from 1 again), the old
 * handle fails with XM_ERR_DISCONNECTED - it neither keeps working on the dead copy nor
 * reaches the new appliance's region of the same id - and the new region is untouched. */
Test(failures, local_handle_of_a_killed_appliance_fails_after_restart, .fini = teardown,
     .timeout = 90)
{
    xt_start(&app, &(xt_opts_t){.provider = "local"});
    char dir[256], addr[64];
    snprintf(dir, sizeof(dir), "%s", app.dir);
    snprintf(addr, sizeof(addr), "%s", app.addr);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h old;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, NULL, &old), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(old, 0, "old data", 8), XM_OK);
    xt_kill9(&app);
    xt_start(&app, &(xt_opts_t){.provider = "local", .dir = dir, .listen = addr});
    xm_ctx_h ctx2 = xt_connect(&app, NULL);
    xm_region_h fresh;
    cr_assert_eq(xm_region_create(ctx2, 1u << 20, NULL, &fresh), XM_OK, "%s", xm_last_error(ctx2));
    cr_assert_eq(xm_region_id(fresh), xm_region_id(old), "the test needs the id reused");
    cr_assert_eq(xm_write(fresh, 0, "new data", 8), XM_OK);
    char got[8];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(xm_write(old, 0, "clobber!", 8), XM_ERR_DISCONNECTED, "%s", xm_last_error(ctx));
        cr_assert_eq(xm_read(old, 0, got, 8), XM_ERR_DISCONNECTED, "%s", xm_last_error(ctx));
        usleep(2000); /* past any rate limit of a liveness check */
    }
    cr_assert_eq(xm_read(fresh, 0, got, 8), XM_OK);
    cr_assert(memcmp(got, "new data", 8) == 0, "the new appliance's region was written through "
              "a handle of the killed one");
    xm_region_close(fresh);
    xm_region_close(old);
    xm_disconnect(ctx2);
    xm_disconnect(ctx);
}

/* SIGSTOP takes effect asynchronously: wait until every thread is stopped. */
static void stop_and_wait(pid_t pid)
{
    kill(pid, SIGSTOP);
    for (int tries = 0; tries < 500; tries++) {
        char path[64], line[512];
        snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
        DIR *d = opendir(path);
        cr_assert_not_null(d);
        bool all = true;
        struct dirent *e;
        while ((e = readdir(d)) != NULL && all) {
            if (e->d_name[0] == '.') continue;
            snprintf(line, sizeof(line), "/proc/%d/task/%s/stat", (int)pid, e->d_name);
            FILE *f = fopen(line, "r");
            if (f == NULL) continue;
            char *state = fgets(line, sizeof(line), f) != NULL ? strrchr(line, ')') : NULL;
            all = state != NULL && state[2] == 'T';
            fclose(f);
        }
        closedir(d);
        if (all) return;
        usleep(2000);
    }
    cr_assert_fail("xmemd did not stop");
}

/* Over the local transport a stopped appliance is not in the way of I/O: the memory is on
 * this host and loads and stores need no xmemd CPU. Its control calls time out, and what was
 * written meanwhile is in the appliance's memory when it runs again. */
static void stopped_local(void)
{
    xt_start(&app, &(xt_opts_t){.provider = "local"});
    xm_ctx_h ctx;
    cr_assert_eq(xt_try_connect(&app, NULL, NULL, 700, &ctx), XM_OK);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, "stopped", &r), XM_OK, "%s", xm_last_error(ctx));
    uint8_t buf[4096], more[4096], got[4096];
    xt_fill(buf, sizeof(buf), 9);
    xt_fill(more, sizeof(more), 10);
    cr_assert_eq(xm_write(r, 0, buf, sizeof(buf)), XM_OK);
    stop_and_wait(app.pid);
    uint64_t t0 = xt_now_ms();
    xm_status_t rd = xm_read(r, 0, got, sizeof(got));
    xm_status_t wr = xm_write(r, 8192, more, sizeof(more));
    uint64_t old = 1;
    xm_status_t fa = xm_fetch_add(r, 65536, 5, &old);
    uint64_t io_ms = xt_now_ms() - t0;
    xm_appliance_info_t info;
    t0 = xt_now_ms();
    xm_status_t ctl = xm_appliance_stat(ctx, &info);
    uint64_t ctl_ms = xt_now_ms() - t0;
    kill(app.pid, SIGCONT);
    cr_assert_eq(rd, XM_OK, "local read while the appliance is stopped: %s", xm_status_str(rd));
    cr_assert(memcmp(got, buf, sizeof(buf)) == 0);
    cr_assert_eq(wr, XM_OK, "local write while the appliance is stopped: %s", xm_status_str(wr));
    cr_assert_eq(fa, XM_OK, "local fetch-add while the appliance is stopped: %s", xm_status_str(fa));
    cr_assert_eq(old, 0);
    cr_assert_lt(io_ms, 500, "local I/O waited for a stopped appliance (%llu ms)",
                 (unsigned long long)io_ms);
    cr_assert_eq(ctl, XM_ERR_TIMEOUT, "control call to a stopped appliance: %s", xm_status_str(ctl));
    cr_assert_lt(ctl_ms, 3000, "timeout of 700 ms took %llu ms", (unsigned long long)ctl_ms);
    /* running again: control works on the same context, and the appliance's memory has what
     * was written while it was stopped (read over tcp, which goes through xmemd) */
    cr_assert_eq(xm_appliance_stat(ctx, &info), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(setenv("XMEM_TRANSPORT", "tcp", 1), 0);
    xm_ctx_h tcp = xt_connect(&app, NULL);
    cr_assert_eq(setenv("XMEM_TRANSPORT", "local", 1), 0);
    xm_region_h rt;
    cr_assert_eq(xm_region_open(tcp, 0, "stopped", XM_ACCESS_READ_WRITE, &rt), XM_OK);
    cr_assert_eq(xm_read(rt, 8192, got, sizeof(got)), XM_OK, "%s", xm_last_error(tcp));
    cr_assert(memcmp(got, more, sizeof(more)) == 0, "a local write made while xmemd was stopped "
              "is not in its memory");
    uint64_t v = 0;
    cr_assert_eq(xm_read(rt, 65536, &v, 8), XM_OK);
    cr_assert_eq(v, 5);
    xm_region_close(rt);
    xm_disconnect(tcp);
    xm_region_close(r);
    xm_disconnect(ctx);
}

XT_TEST_PROVIDERS(failures, stopped_appliance_times_out_then_recovers, .fini = teardown,
                  .timeout = 90)
{
    if (strcmp(provider, "local") == 0) {
        stopped_local();
        return;
    }
    xt_start(&app, &(xt_opts_t){.provider = provider});
    xm_ctx_h ctx;
    cr_assert_eq(xt_try_connect(&app, NULL, NULL, 700, &ctx), XM_OK);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, NULL, &r), XM_OK);
    uint8_t buf[4096];
    xt_fill(buf, sizeof(buf), 9);
    cr_assert_eq(xm_write(r, 0, buf, sizeof(buf)), XM_OK);
    stop_and_wait(app.pid);
    uint64_t t0 = xt_now_ms();
    uint8_t got[4096];
    xm_status_t s = xm_read(r, 0, got, sizeof(got));
    uint64_t elapsed = xt_now_ms() - t0;
    kill(app.pid, SIGCONT);
    cr_assert_eq(s, XM_ERR_TIMEOUT, "read from a stopped appliance: %s", xm_status_str(s));
    cr_assert_lt(elapsed, 3000, "timeout of 700 ms took %llu ms", (unsigned long long)elapsed);
    /* the appliance is back: the same context works again */
    cr_assert_eq(xm_read(r, 0, got, sizeof(got)), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(got, buf, sizeof(buf)) == 0);
    xm_region_close(r);
    xm_disconnect(ctx);
}

XT_TEST_PROVIDERS(failures, client_killed_mid_transfer_leaves_appliance_healthy, .fini = teardown,
                  .timeout = 90)
{
    xt_start(&app, &(xt_opts_t){.provider = provider});
    pid_t parent = getpid();
    pid_t child = fork();
    cr_assert(child >= 0);
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
        xm_ctx_h c;
        if (xt_try_connect(&app, "victim", NULL, 5000, &c) != XM_OK) _exit(2);
        xm_region_h r;
        if (xm_region_create(c, 32u << 20, "victim-data", &r) != XM_OK) _exit(3);
        static uint8_t big[4u << 20];
        xm_op_t ops[8];
        for (;;) { /* keep transfers in flight until killed */
            for (int i = 0; i < 8; i++) {
                ops[i] = (xm_op_t){.opcode = i % 2 ? XM_OP_WRITE : XM_OP_READ, .region = r,
                                   .offset = (uint64_t)i * sizeof(big), .buf = big,
                                   .length = sizeof(big)};
            }
            xm_submit(c, ops, 8);
        }
    }
    usleep(1500 * 1000);
    kill(child, SIGKILL);
    int st;
    waitpid(child, &st, 0);
    cr_assert(WIFSIGNALED(st), "the client exited early (status %d): it never got going", st);

    /* the appliance serves others; the dead client's region stays until destroyed */
    xm_ctx_h ctx = xt_connect(&app, "victim");
    xm_region_h r;
    cr_assert_eq(xm_region_open(ctx, 0, "victim-data", XM_ACCESS_READ_WRITE, &r), XM_OK,
                 "the dead client's region is gone: %s", xm_last_error(ctx));
    uint8_t buf[65536], got[65536];
    xt_fill(buf, sizeof(buf), 11);
    cr_assert_eq(xm_write(r, 12345, buf, sizeof(buf)), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_read(r, 12345, got, sizeof(got)), XM_OK);
    cr_assert(memcmp(buf, got, sizeof(buf)) == 0);
    cr_assert_eq(xm_region_destroy(ctx, 0, "victim-data"), XM_OK);
    xm_region_close(r);
    xm_disconnect(ctx);
}

static int raw_connect(const xt_appliance_t *a)
{
    const char *colon = strrchr(a->addr, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* True when the peer closes the connection within ms. */
static bool dropped_within(int fd, int ms)
{
    char b[256];
    uint64_t deadline = xt_now_ms() + (uint64_t)ms;
    while (xt_now_ms() < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t n = recv(fd, b, sizeof(b), 0);
        if (n <= 0) return true; /* error replies before the close are fine */
    }
    return false;
}

Test(failures, malformed_messages_drop_the_connection_only, .fini = teardown, .timeout = 90)
{
    xt_start(&app, &(xt_opts_t){.extra = {"--timeout-ms", "1000"}});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h keep;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, "keep", &keep), XM_OK);
    cr_assert_eq(xm_write(keep, 0, "intact!!", 8), XM_OK);

    struct { const char *what; const uint8_t *bytes; size_t len; bool hold; } cases[] = {
        {"oversized length", (const uint8_t *)"\xff\xff\xff\xff", 4, false},
        {"zero length", (const uint8_t *)"\x00\x00\x00\x00", 4, false},
        {"garbage body", (const uint8_t *)"\x00\x00\x00\x08\xff\xff\xff\xff\xff\xff\xff\xff", 12, false},
        /* a region-create before any hello: field 20 (size 4096) */
        {"request before auth", (const uint8_t *)"\x00\x00\x00\x05\xa2\x01\x02\x08\x01", 9, false},
        {"truncated frame", (const uint8_t *)"\x00\x00\x01\x00\x08\x01", 6, true},
        {"half a header", (const uint8_t *)"\x00\x00", 2, true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int fd = raw_connect(&app);
        cr_assert_eq(send(fd, cases[i].bytes, cases[i].len, MSG_NOSIGNAL), (ssize_t)cases[i].len);
        /* a truncated frame is dropped when the frame timeout (1 s) passes */
        cr_assert(dropped_within(fd, 4000), "%s: connection not dropped", cases[i].what);
        close(fd);
    }
    /* a peer that connects and vanishes mid-handshake */
    for (int i = 0; i < 20; i++) close(raw_connect(&app));

    /* the daemon serves on, with nothing created by the bad peers */
    xm_ctx_h ctx2 = xt_connect(&app, NULL);
    xm_region_info_t *infos;
    size_t n;
    cr_assert_eq(xm_region_list(ctx2, &infos, &n), XM_OK);
    cr_assert_eq(n, 1);
    free(infos);
    char got[8];
    cr_assert_eq(xm_read(keep, 0, got, 8), XM_OK);
    cr_assert(memcmp(got, "intact!!", 8) == 0);
    xm_region_close(keep);
    xm_disconnect(ctx2);
    xm_disconnect(ctx);
    FILE *f = fopen(app.log, "r");
    char line[1024];
    int warnings = 0;
    while (fgets(line, sizeof(line), f) != NULL) warnings += strstr(line, "warn:") != NULL;
    fclose(f);
    cr_assert_geq(warnings, 6, "bad peers were not logged");
}

Test(failures, pool_exhaustion_leaves_nothing_half_created, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.pool = "64M"});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h a, b;
    cr_assert_eq(xm_region_create(ctx, 40u << 20, "a", &a), XM_OK);
    xm_appliance_info_t before, after;
    cr_assert_eq(xm_appliance_stat(ctx, &before), XM_OK);
    cr_assert_eq(xm_region_create(ctx, 40u << 20, "b", &b), XM_ERR_NO_SPACE);
    cr_assert_eq(xm_region_create(ctx, 1ull << 40, "huge", &b), XM_ERR_NO_SPACE);
    cr_assert_eq(xm_appliance_stat(ctx, &after), XM_OK);
    cr_assert_eq(after.pool_used, before.pool_used, "a failed create left extents allocated");
    cr_assert_eq(after.regions, 1);
    xm_region_h none;
    cr_assert_eq(xm_region_open(ctx, 0, "b", XM_ACCESS_READ, &none), XM_ERR_NOT_FOUND);
    /* exactly the rest still fits, then nothing more */
    cr_assert_eq(xm_region_create(ctx, 24u << 20, "b", &b), XM_OK);
    cr_assert_eq(xm_region_create(ctx, 1, "c", &none), XM_ERR_NO_SPACE);
    cr_assert_eq(xm_region_create(ctx, 1, "a", &none), XM_ERR_EXISTS);
    /* freeing makes room again */
    cr_assert_eq(xm_region_destroy(ctx, xm_region_id(a), NULL), XM_OK);
    xm_region_h c;
    cr_assert_eq(xm_region_create(ctx, 40u << 20, "c", &c), XM_OK);
    xm_region_close(a);
    xm_region_close(b);
    xm_region_close(c);
    xm_disconnect(ctx);
}

static void file_pool_restart(const char *provider, bool crash)
{
    xt_start(&app, &(xt_opts_t){.provider = provider, .pool = "128M"});
    char dir[256], backing[300];
    snprintf(dir, sizeof(dir), "%s", app.dir);
    cr_assert_eq(xt_stop(&app), 0);
    snprintf(backing, sizeof(backing), "file:%s/pool", dir);
    xt_start(&app, &(xt_opts_t){.provider = provider, .pool = "128M", .backing = backing, .dir = dir});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    static uint8_t data[3u << 20], got[3u << 20];
    xt_fill(data, sizeof(data), 77);
    xm_region_h r, gone;
    cr_assert_eq(xm_region_create(ctx, sizeof(data), "persist", &r), XM_OK);
    cr_assert_eq(xm_region_create(ctx, 4u << 20, "removed", &gone), XM_OK);
    cr_assert_eq(xm_write(r, 0, data, sizeof(data)), XM_OK);
    cr_assert_eq(xm_region_grant(ctx, 0, "persist", "bob", XM_ACCESS_READ), XM_OK);
    cr_assert_eq(xm_region_destroy(ctx, 0, "removed"), XM_OK);
    uint64_t id = xm_region_id(r);
    xm_region_close(r);
    xm_region_close(gone);
    xm_disconnect(ctx);
    if (crash) xt_kill9(&app);
    else cr_assert_eq(xt_stop(&app), 0);

    xt_start(&app, &(xt_opts_t){.provider = provider, .pool = "128M", .backing = backing, .dir = dir});
    ctx = xt_connect(&app, NULL);
    cr_assert_eq(xm_region_open(ctx, 0, "persist", XM_ACCESS_READ_WRITE, &r), XM_OK,
                 "region lost across restart: %s", xm_last_error(ctx));
    cr_assert_eq(xm_region_id(r), id);
    cr_assert_eq(xm_read(r, 0, got, sizeof(got)), XM_OK);
    cr_assert(memcmp(data, got, sizeof(got)) == 0, "data changed across restart");
    cr_assert_eq(xm_region_open(ctx, 0, "removed", XM_ACCESS_READ, &gone), XM_ERR_NOT_FOUND);
    xm_appliance_info_t info;
    cr_assert_eq(xm_appliance_stat(ctx, &info), XM_OK);
    cr_assert_eq(info.regions, 1);
    cr_assert_eq(info.pool_used, 4u << 20, "extents of the restored region: %llu bytes used",
                 (unsigned long long)info.pool_used);
    /* grants persist too, and new ids do not reuse old ones */
    xm_ctx_h bob = xt_connect(&app, "bob");
    xm_region_h b;
    cr_assert_eq(xm_region_open(bob, id, NULL, XM_ACCESS_READ, &b), XM_OK);
    xm_region_h fresh;
    cr_assert_eq(xm_region_create(ctx, 4096, NULL, &fresh), XM_OK);
    cr_assert_gt(xm_region_id(fresh), id + 1);
    xm_region_close(fresh);
    xm_region_close(b);
    xm_disconnect(bob);
    xm_region_close(r);
    xm_disconnect(ctx);
}

XT_TEST_PROVIDERS(failures, file_pool_survives_clean_restart, .fini = teardown, .timeout = 90)
{
    file_pool_restart(provider, false);
}

Test(failures, file_pool_survives_kill9, .fini = teardown, .timeout = 90)
{
    file_pool_restart("tcp", true);
}

Test(failures, file_pool_refuses_mismatched_size, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.pool = "64M"});
    char dir[256], backing[300];
    snprintf(dir, sizeof(dir), "%s", app.dir);
    cr_assert_eq(xt_stop(&app), 0);
    snprintf(backing, sizeof(backing), "file:%s/pool", dir);
    xt_start(&app, &(xt_opts_t){.pool = "64M", .backing = backing, .dir = dir});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 4096, "x", &r), XM_OK);
    xm_region_close(r);
    xm_disconnect(ctx);
    cr_assert_eq(xt_stop(&app), 0);
    /* a smaller pool would lose data: xmemd must refuse to start */
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s/xmemd --listen 127.0.0.1:0 --pool 32M --backing %s "
             "--secret-file %s/secret >/dev/null 2>&1", XMEM_BIN_DIR, backing, dir);
    int rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) != 0, "xmemd started on a pool file larger than --pool");
}

Test(failures, huge_pool_is_reserved_not_touched_and_memory_returns, .fini = teardown,
     .timeout = 120)
{
    xt_start(&app, &(xt_opts_t){.pool = "64G"});
    size_t rss0 = xt_rss(app.pid);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h big;
    cr_assert_eq(xm_region_create(ctx, 64ull << 30, "big", &big), XM_OK, "%s", xm_last_error(ctx));
    uint64_t v = 1;
    cr_assert_eq(xm_read(big, (64ull << 30) - 8, &v, 8), XM_OK);
    cr_assert_eq(v, 0, "a fresh region does not read as zeros");
    size_t rss1 = xt_rss(app.pid);
    cr_assert_lt(rss1, rss0 + (64u << 20), "creating a 64 GiB region touched memory: RSS %zu -> %zu",
                 rss0, rss1);
    cr_assert_eq(xm_region_destroy(ctx, 0, "big"), XM_OK);
    xm_region_close(big);

    /* fill 512 MiB, then free it: the appliance's resident memory drops */
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 512u << 20, NULL, &r), XM_OK);
    static uint8_t chunk[4u << 20];
    memset(chunk, 0x5a, sizeof(chunk));
    for (uint64_t off = 0; off < (512u << 20); off += sizeof(chunk)) {
        cr_assert_eq(xm_write(r, off, chunk, sizeof(chunk)), XM_OK);
    }
    size_t full = xt_rss(app.pid);
    cr_assert_gt(full, rss0 + (400u << 20), "512 MiB written but RSS only %zu", full);
    xm_region_info_t info;
    cr_assert_eq(xm_region_stat(ctx, xm_region_id(r), NULL, &info), XM_OK);
    cr_assert_eq(info.resident, 512u << 20, "stat reports %llu resident bytes",
                 (unsigned long long)info.resident);
    cr_assert_eq(xm_region_destroy(ctx, xm_region_id(r), NULL), XM_OK);
    size_t freed = xt_rss(app.pid);
    cr_assert_lt(freed, rss0 + (100u << 20), "RSS after freeing 512 MiB: %zu (before: %zu)", freed, full);
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* Does process pid map or hold anything under /dev/shm (where libfabric's shm provider keeps
 * its queues)? Criterion's own arena (bxf_arena_*, inherited by what a test forks) aside. */
static bool shm_file(const char *s)
{
    const char *at = strstr(s, "/dev/shm/");
    return at != NULL && strncmp(at, "/dev/shm/bxf_", 13) != 0;
}

static bool uses_dev_shm(pid_t pid, char *what, size_t wlen)
{
    char path[64], line[512];
    what[0] = '\0';
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    bool found = false;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (shm_file(line) && !found) snprintf(what, wlen, "%s", line);
        found |= shm_file(line);
    }
    fclose(f);
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    cr_assert_not_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        char link[PATH_MAX + 64], target[PATH_MAX];
        snprintf(link, sizeof(link), "%s/%s", path, e->d_name);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n <= 0) continue;
        target[n] = '\0';
        if (shm_file(target) && !found) snprintf(what, wlen, "%s", target);
        found |= shm_file(target);
    }
    closedir(d);
    return found;
}

/* libfabric's shm provider let any local process read and write xmemd's memory (issue 11):
 * it is gone. --provider shm still starts (an alias of tcp, with a warning: clients on this
 * host get the local transport whatever the provider), a client configured for shm connects
 * as tcp, and neither xmemd nor a local client has anything in /dev/shm. */
Test(failures, provider_shm_is_tcp_and_opens_no_shared_memory_queue, .fini = teardown,
     .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.provider = "local", .extra = {"--provider", "shm"}});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_appliance_info_t info;
    cr_assert_eq(xm_appliance_stat(ctx, &info), XM_OK);
    cr_assert_str_eq(info.provider, "tcp");
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, NULL, &r), XM_OK);
    cr_assert_eq(xm_write(r, 0, "no shm", 6), XM_OK, "%s", xm_last_error(ctx));
    char got[6];
    cr_assert_eq(xm_read(r, 0, got, 6), XM_OK);
    cr_assert(memcmp(got, "no shm", 6) == 0);
    /* a client still configured for shm is taken as tcp (and the local transport here) */
    cr_assert_eq(setenv("XMEM_PROVIDER", "shm", 1), 0);
    xm_ctx_h old = xt_connect(&app, NULL);
    unsetenv("XMEM_PROVIDER");
    xm_region_h ro;
    cr_assert_eq(xm_region_open(old, xm_region_id(r), NULL, XM_ACCESS_READ, &ro), XM_OK, "%s",
                 xm_last_error(old));
    memset(got, 0, sizeof(got));
    cr_assert_eq(xm_read(ro, 0, got, 6), XM_OK, "%s", xm_last_error(old));
    cr_assert(memcmp(got, "no shm", 6) == 0);
    xm_region_close(ro);
    xm_disconnect(old);
    char what[512];
    cr_assert_not(uses_dev_shm(app.pid, what, sizeof(what)), "xmemd uses /dev/shm: %s", what);
    cr_assert_not(uses_dev_shm(getpid(), what, sizeof(what)), "the client uses /dev/shm: %s", what);
    xm_region_close(r);
    xm_disconnect(ctx);
    FILE *f = fopen(app.log, "r");
    cr_assert_not_null(f);
    char line[1024];
    bool warned = false;
    while (fgets(line, sizeof(line), f) != NULL) warned |= strstr(line, "--provider shm") != NULL;
    fclose(f);
    cr_assert(warned, "no warning that --provider shm is served as tcp");
}
