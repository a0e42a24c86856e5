/* The local transport (src/xfer/local.h, src/client/local.c) against a real xmemd: regions
 * mapped by clients on the appliance's host, and every attack on it we know of. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xmem/tenant.h>

#include "../../src/client/client.h"
#include "../../src/rpc/rpc.h"
#include "../../src/xfer/local.h"
#include "harness.h"

static xt_appliance_t app;

static void teardown(void)
{
    cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
    xt_cleanup(&app);
}

/* The appliance's local socket: beside its identity (SECRET.HOST_PORT.identity). */
static void sock_path(const xt_appliance_t *a, char *buf, size_t len)
{
    const char *port = strrchr(a->addr, ':') + 1;
    snprintf(buf, len, "%s.127.0.0.1_%s.sock", a->secret, port);
}

static xm_ctx_h connect_as(const char *tenant, const char *transport)
{
    setenv("XMEM_TRANSPORT", transport, 1);
    return xt_connect(&app, tenant);
}

/* Bytes of this process's mappings of region memfds ("memfd:xmem-region"). */
static size_t mapped_regions(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    size_t bytes = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        unsigned long lo, hi;
        if (strstr(line, "memfd:xmem-region") != NULL && sscanf(line, "%lx-%lx", &lo, &hi) == 2)
            bytes += hi - lo;
    }
    if (f != NULL) fclose(f);
    return bytes;
}

static size_t rss_shmem(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "RssShmem:", 9) == 0) kb = strtoul(line + 9, NULL, 10);
    }
    if (f != NULL) fclose(f);
    return kb * 1024;
}

/*
 * An attacker's own REGION_FD: a session on the local socket with credential cred (its
 * tenant), then the request; the descriptor that came with the reply in *fd_p (-1: none).
 * Returns the reply's status (or the handshake's).
 */
static xm_status_t raw_region_fd(const char *path, const char *cred_path, uint64_t id, uint64_t key,
                                 xm_access_t access, int *fd_p)
{
    *fd_p = -1;
    rpc_cred_t cred;
    char why[512];
    xm_status_t s = rpc_cred_load(cred_path, &cred, why, sizeof(why));
    cr_assert_eq(s, XM_OK, "%s", why);
    int sock;
    cr_assert_eq(net_local_connect(path, 2000, &sock), XM_OK, "connect %s", path);
    rpc_conn_t c;
    rpc_conn_init(&c, sock);
    xm_msg_t *w;
    s = rpc_handshake_client(&c, &cred, cred.cluster ? "@admin" : cred.tenant, 5000, &w, why,
                             sizeof(why));
    if (s != XM_OK) {
        rpc_conn_close(&c);
        return s;
    }
    proto_msg_free(w);
    Xmem__RegionRef ref = XMEM__REGION_REF__INIT;
    ref.id = id;
    ref.name = "";
    ref.key = key;
    ref.access = (Xmem__Access)access;
    xm_msg_t req = XMEM__MSG__INIT;
    req.body_case = XMEM__MSG__BODY_REGION_FD;
    req.region_fd = &ref;
    req.seq = ++c.seq;
    cr_assert_eq(rpc_send(&c, &req, rpc_deadline_after(5000)), XM_OK);
    /* the descriptor rides on the reply's first byte: take it with the header */
    uint8_t hdr[XM_FRAME_HEADER];
    size_t got = 0;
    while (got < sizeof(hdr)) {
        int f;
        rpc_spin_readable(sock, 1000000);
        struct pollfd p = {.fd = sock, .events = POLLIN};
        poll(&p, 1, 5000);
        ssize_t n = net_local_recv_fd(sock, hdr + got, sizeof(hdr) - got, &f);
        if (f >= 0) *fd_p = f;
        cr_assert(n > 0 || (n < 0 && errno == EAGAIN), "reply header: %zd %s", n, strerror(errno));
        if (n > 0) got += (size_t)n;
    }
    size_t len;
    cr_assert_eq(proto_frame_len(hdr, rpc_frame_max(XM_FRAME_MAX_REPLY), &len), XM_OK);
    uint8_t *body = malloc(len);
    cr_assert_eq(rpc_sock_xfer(sock, body, len, false, rpc_deadline_after(5000)), XM_OK);
    xm_msg_t *rep;
    const char *w2;
    cr_assert_eq(rpc_open(&c, body, len, XM_FRAME_MAX_REPLY, &rep, &w2), XM_OK);
    free(body);
    s = rpc_reply_status(rep, why, sizeof(why));
    proto_msg_free(rep);
    rpc_conn_close(&c);
    return s;
}

static const char *cred_of(const char *tenant, char *buf, size_t len)
{
    return xt_cred(app.secret, tenant, buf, len);
}

Test(local, regions_are_mapped_and_bytes_cross_transports, .fini = teardown, .timeout = 120)
{
    xt_start(&app, &(xt_opts_t){.provider = "local", .pool = "256M"});
    xm_ctx_h tcp = connect_as(NULL, "tcp");
    xm_ctx_h loc = connect_as(NULL, "local");
    const uint64_t size = (8u << 20) + 12345;
    xm_region_h rt, rl;
    cr_assert_eq(xm_region_create(tcp, size, "x", &rt), XM_OK, "%s", xm_last_error(tcp));
    cr_assert_eq(mapped_regions(), 0, "a tcp client mapped a region");
    cr_assert_eq(xm_region_open(loc, xm_region_id(rt), NULL, XM_ACCESS_READ_WRITE, &rl), XM_OK,
                 "%s", xm_last_error(loc));
    cr_assert_geq(mapped_regions(), size, "the local client did not map the region");
    uint8_t *a = malloc(size), *b = malloc(size);
    /* written locally, read over tcp: every byte */
    xt_fill(a, size, 1);
    cr_assert_eq(xm_write(rl, 0, a, size), XM_OK, "%s", xm_last_error(loc));
    memset(b, 0, size);
    cr_assert_eq(xm_read(rt, 0, b, size), XM_OK, "%s", xm_last_error(tcp));
    cr_assert(memcmp(a, b, size) == 0, "bytes written locally differ over tcp");
    /* written over tcp at odd offsets, read locally */
    xt_fill(a, size, 2);
    cr_assert_eq(xm_write(rt, 3, a, size - 3), XM_OK);
    cr_assert_eq(xm_read(rl, 3, b, size - 3), XM_OK);
    cr_assert(memcmp(a, b, size - 3) == 0, "bytes written over tcp differ locally");
    /* bounds are checked before any access */
    cr_assert_eq(xm_read(rl, size - 10, b, 11), XM_ERR_RANGE);
    xm_region_close(rl);
    cr_assert_eq(mapped_regions(), 0, "closing the handle left the region mapped");
    free(a);
    free(b);
    xm_region_close(rt);
    xm_disconnect(loc);
    xm_disconnect(tcp);
}

Test(local, mixed_local_and_tcp_fetch_add_count_every_increment, .fini = teardown, .timeout = 120)
{
    xt_start(&app, &(xt_opts_t){.provider = "local"});
    xm_ctx_h tcp = connect_as(NULL, "tcp");
    xm_region_h r;
    cr_assert_eq(xm_region_create(tcp, 4096, "ctr", &r), XM_OK);
    const int n = 3000;
    pid_t pid = fork();
    if (pid == 0) {
        xm_ctx_h loc = connect_as(NULL, "local");
        xm_region_h rl;
        if (xm_region_open(loc, xm_region_id(r), NULL, XM_ACCESS_READ_WRITE, &rl) != XM_OK ||
            mapped_regions() == 0)
            _exit(2);
        for (int i = 0; i < n; i++) {
            uint64_t old;
            if (xm_fetch_add(rl, 64, 1, &old) != XM_OK) _exit(3);
            uint64_t exp = 0;
            if (xm_compare_swap(rl, 128, exp, exp, &old) != XM_OK) _exit(4);
        }
        _exit(0);
    }
    for (int i = 0; i < n; i++) {
        uint64_t old;
        cr_assert_eq(xm_fetch_add(r, 64, 1, &old), XM_OK, "%s", xm_last_error(tcp));
    }
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the local adder failed (%d)", st);
    uint64_t v;
    cr_assert_eq(xm_read(r, 64, &v, 8), XM_OK);
    cr_assert_eq(v, (uint64_t)2 * n, "counter %llu: increments were lost between local and tcp",
                 (unsigned long long)v);
    xm_region_close(r);
    xm_disconnect(tcp);
}

/* Threads of one process on one local mapping: two count with fetch-add on word 0 while a
 * third reads it with 8-byte xm_read, and a fourth flips word 8 between two patterns with
 * 8-byte xm_write while the reader reads it too. An aligned 8-byte local read or write is a
 * relaxed atomic access, so the reader sees a counter that never goes back and only whole
 * patterns. (The data race of the plain memcpy it replaced is what ThreadSanitizer finds: the
 * tsan preset runs stress/io_stress_local, whose threads read a counter with 8-byte xm_read
 * while others compare-and-swap it - Criterion's arena does not start under TSan here.) */
typedef struct word_job {
    xm_region_h r;
    int n;
    int bad;
    volatile int *stop;
} word_job_t;

static void *word_adder(void *arg)
{
    word_job_t *j = arg;
    for (int i = 0; i < j->n; i++) {
        uint64_t old;
        if (xm_fetch_add(j->r, 0, 1, &old) != XM_OK) j->bad++;
    }
    return NULL;
}

static void *word_flipper(void *arg)
{
    word_job_t *j = arg;
    for (int i = 0; !__atomic_load_n(j->stop, __ATOMIC_RELAXED); i++) {
        uint64_t v = i & 1 ? 0x0123456789abcdefull : 0xfedcba9876543210ull;
        if (xm_write(j->r, 8, &v, 8) != XM_OK) j->bad++;
    }
    return NULL;
}

Test(local, aligned_words_are_read_and_written_whole_beside_atomics, .fini = teardown,
     .timeout = 120)
{
    xt_start(&app, &(xt_opts_t){.provider = "local"});
    xm_ctx_h loc = connect_as(NULL, "local");
    xm_region_h r;
    cr_assert_eq(xm_region_create(loc, 4096, "words", &r), XM_OK, "%s", xm_last_error(loc));
    cr_assert_gt(mapped_regions(), 0, "the region is not mapped locally");
    uint64_t v = 0xfedcba9876543210ull;
    cr_assert_eq(xm_write(r, 8, &v, 8), XM_OK);
    volatile int stop = 0;
    const int n = 20000;
    word_job_t add[2] = {{.r = r, .n = n, .stop = &stop}, {.r = r, .n = n, .stop = &stop}};
    word_job_t flip = {.r = r, .stop = &stop};
    pthread_t t[3];
    cr_assert_eq(pthread_create(&t[0], NULL, word_adder, &add[0]), 0);
    cr_assert_eq(pthread_create(&t[1], NULL, word_adder, &add[1]), 0);
    cr_assert_eq(pthread_create(&t[2], NULL, word_flipper, &flip), 0);
    uint64_t last = 0, reads = 0;
    int torn = 0, back = 0, failed = 0;
    while (last < (uint64_t)2 * n) {
        uint8_t buf[9]; /* an unaligned destination: the region side decides */
        if (xm_read(r, 0, buf + 1, 8) != XM_OK) failed++;
        memcpy(&v, buf + 1, 8);
        back += v < last;
        last = v > last ? v : last;
        if (xm_read(r, 8, &v, 8) != XM_OK) failed++;
        torn += v != 0x0123456789abcdefull && v != 0xfedcba9876543210ull;
        reads++;
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    cr_assert_eq(add[0].bad + add[1].bad + flip.bad + failed, 0, "operations failed");
    cr_assert_eq(back, 0, "the counter went back %d times in %llu reads", back,
                 (unsigned long long)reads);
    cr_assert_eq(torn, 0, "%d torn words in %llu reads", torn, (unsigned long long)reads);
    cr_assert_eq(xm_read(r, 0, &v, 8), XM_OK);
    cr_assert_eq(v, (uint64_t)2 * n);
    xm_region_close(r);
    xm_disconnect(loc);
}

Test(local, socket_gives_nothing_without_a_credential, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.provider = "local"});
    xm_ctx_h ctx = connect_as(NULL, "tcp");
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, "secret-data", &r), XM_OK);
    char path[PATH_MAX + 64];
    sock_path(&app, path, sizeof(path));
    /* a request sent without a session: no descriptor, the connection is dropped */
    int sock;
    cr_assert_eq(net_local_connect(path, 2000, &sock), XM_OK, "no local socket at %s", path);
    Xmem__RegionRef ref = XMEM__REGION_REF__INIT;
    ref.id = xm_region_id(r);
    ref.name = "";
    ref.access = XMEM__ACCESS__ACCESS_READ_WRITE;
    xm_msg_t req = XMEM__MSG__INIT;
    req.body_case = XMEM__MSG__BODY_REGION_FD;
    req.region_fd = &ref;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(proto_encode(&req, &buf, &len), XM_OK);
    cr_assert_eq(write(sock, buf, len), (ssize_t)len);
    free(buf);
    uint8_t junk[256];
    int fd = -1;
    ssize_t n;
    uint64_t until = xt_now_ms() + 5000;
    do {
        struct pollfd p = {.fd = sock, .events = POLLIN};
        poll(&p, 1, 500);
        n = net_local_recv_fd(sock, junk, sizeof(junk), &fd);
        cr_assert_lt(fd, 0, "a descriptor came without a credential");
    } while ((n > 0 || (n < 0 && errno == EAGAIN)) && xt_now_ms() < until);
    cr_assert_eq(n, 0, "the connection was not closed");
    close(sock);
    /* a credential of another cluster: the handshake fails, nothing is handed out */
    char other[PATH_MAX];
    snprintf(other, sizeof(other), "%s/other-secret", app.dir);
    xt_make_secret(other);
    char ocred[PATH_MAX + 80];
    xt_cred(other, "alice", ocred, sizeof(ocred));
    cr_assert_eq(raw_region_fd(path, ocred, xm_region_id(r), 0, XM_ACCESS_READ, &fd), XM_ERR_AUTH);
    cr_assert_lt(fd, 0);
    /* and over TCP a region descriptor is refused (it cannot carry one) */
    xm_region_close(r);
    xm_disconnect(ctx);
}

Test(local, tenants_get_only_their_grants_and_cannot_unseal, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.provider = "local"});
    xm_ctx_h alice = connect_as("alice", "tcp");
    xm_region_h r;
    cr_assert_eq(xm_region_create(alice, 1u << 20, "shared", &r), XM_OK);
    uint64_t id = xm_region_id(r);
    char path[PATH_MAX + 64], bob[PATH_MAX + 80], al[PATH_MAX + 80];
    sock_path(&app, path, sizeof(path));
    cred_of("bob", bob, sizeof(bob));
    cred_of("alice", al, sizeof(al));
    int fd;
    /* not granted: nothing */
    cr_assert_eq(raw_region_fd(path, bob, id, 0, XM_ACCESS_READ, &fd), XM_ERR_PERM);
    cr_assert_lt(fd, 0);
    /* a made-up key names no registration */
    cr_assert_eq(raw_region_fd(path, bob, id, 0x1234567890abcdefull, XM_ACCESS_READ, &fd), XM_ERR_PERM);
    cr_assert_lt(fd, 0);
    /* a read grant: a read-only descriptor, which cannot be mapped writable */
    cr_assert_eq(xm_region_grant(alice, id, NULL, "bob", XM_ACCESS_READ), XM_OK);
    cr_assert_eq(raw_region_fd(path, bob, id, 0, XM_ACCESS_READ_WRITE, &fd), XM_ERR_PERM);
    cr_assert_lt(fd, 0);
    cr_assert_eq(raw_region_fd(path, bob, id, 0, XM_ACCESS_READ, &fd), XM_OK);
    cr_assert_geq(fd, 0);
    cr_assert_eq(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDONLY, "read grant gave a writable descriptor");
    cr_assert_eq(mmap(NULL, 1u << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), MAP_FAILED,
                 "a read-only grant was mapped writable");
    void *ro = mmap(NULL, 1u << 20, PROT_READ, MAP_SHARED, fd, 0);
    cr_assert_neq(ro, MAP_FAILED);
    cr_assert_neq(mprotect(ro, 1u << 20, PROT_READ | PROT_WRITE), 0, "mprotect made it writable");
    munmap(ro, 1u << 20);
    close(fd);
    /* the owner's read-write descriptor: sealed, so a client cannot truncate it (xmemd's own
     * accesses would fault) nor seal it against writes */
    cr_assert_eq(raw_region_fd(path, al, id, 0, XM_ACCESS_READ_WRITE, &fd), XM_OK);
    cr_assert_neq(ftruncate(fd, 0), 0, "a client truncated a region's memfd");
    cr_assert_neq(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_FUTURE_WRITE), 0,
                  "a client sealed a region's memfd");
    close(fd);
    /* xmemd serves on, the bytes intact */
    uint8_t buf[64] = {0}, got[64];
    xt_fill(buf, sizeof(buf), 7);
    cr_assert_eq(xm_write(r, (1u << 20) - 64, buf, 64), XM_OK, "%s", xm_last_error(alice));
    cr_assert_eq(xm_read(r, (1u << 20) - 64, got, 64), XM_OK);
    cr_assert(memcmp(buf, got, 64) == 0);
    xm_region_close(r);
    xm_disconnect(alice);
}

Test(local, destroyed_region_memory_is_freed_while_mapped, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.provider = "local", .pool = "256M"});
    xm_ctx_h ctx = connect_as(NULL, "local");
    const size_t size = 64u << 20;
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, size, "big", &r), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_geq(mapped_regions(), size);
    uint8_t *buf = malloc(size);
    xt_fill(buf, size, 3);
    size_t before = rss_shmem();
    cr_assert_eq(xm_write(r, 0, buf, size), XM_OK);
    cr_assert_geq(rss_shmem(), before + size - (4u << 20), "the writes did not reach the mapping");
    xm_appliance_info_t info;
    cr_assert_eq(xm_appliance_stat(ctx, &info), XM_OK);
    cr_assert_geq(info.pool_used, size);
    cr_assert_eq(xm_region_destroy(ctx, xm_region_id(r), NULL), XM_OK);
    /* the handle still maps it: its pages are gone all the same */
    cr_assert_lt(rss_shmem(), before + (4u << 20), "a destroyed region's memory stayed resident "
                 "(%zu bytes) while a client mapped it", rss_shmem());
    cr_assert_eq(xm_appliance_stat(ctx, &info), XM_OK);
    cr_assert_eq(info.pool_used, 0);
    /* the client gets a clear error, not SIGBUS or stale bytes */
    cr_assert_eq(xm_read(r, 0, buf, 4096), XM_ERR_NOT_FOUND, "read of a destroyed region: %s",
                 xm_last_error(ctx));
    xm_region_close(r);
    /* the appliance keeps serving */
    cr_assert_eq(xm_region_create(ctx, size, "big", &r), XM_OK);
    cr_assert_eq(xm_write(r, 0, buf, size), XM_OK);
    cr_assert_eq(xm_read(r, size - 4096, buf, 4096), XM_OK);
    xm_region_close(r);
    free(buf);
    xm_disconnect(ctx);
}

Test(local, revoked_tenant_mapping_stops_seeing_writes, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.provider = "local"});
    xm_ctx_h alice = connect_as("alice", "local");
    xm_ctx_h atcp = connect_as("alice", "tcp");
    xm_region_h r, rt;
    cr_assert_eq(xm_region_create(alice, 1u << 20, "rev", &r), XM_OK, "%s", xm_last_error(alice));
    cr_assert_eq(xm_region_open(atcp, xm_region_id(r), NULL, XM_ACCESS_READ_WRITE, &rt), XM_OK);
    cr_assert_eq(xm_region_grant(alice, xm_region_id(r), NULL, "bob", XM_ACCESS_READ_WRITE), XM_OK);
    char path[PATH_MAX + 64], bob[PATH_MAX + 80];
    sock_path(&app, path, sizeof(path));
    cred_of("bob", bob, sizeof(bob));
    int fd;
    cr_assert_eq(raw_region_fd(path, bob, xm_region_id(r), 0, XM_ACCESS_READ_WRITE, &fd), XM_OK);
    volatile uint8_t *m = mmap(NULL, 1u << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    cr_assert_neq((void *)m, MAP_FAILED);
    close(fd);
    cr_assert_eq(xm_write(r, 0, "before", 6), XM_OK);
    cr_assert(memcmp((const void *)m, "before", 6) == 0, "bob's mapping is not the region");
    char why[512];
    cr_assert_eq(xm_tenant_rm(app.secret, NULL, "bob", why, sizeof(why)), XM_OK, "%s", why);
    /* the appliance moves the region when it notices (inotify): wait for the log line */
    uint64_t until = xt_now_ms() + 5000;
    bool moved = false;
    while (!moved && xt_now_ms() < until) {
        char cmd[PATH_MAX + 64];
        snprintf(cmd, sizeof(cmd), "grep -q 'moved to a fresh memfd' '%s'", app.log);
        moved = system(cmd) == 0;
        if (!moved) usleep(20000);
    }
    cr_assert(moved, "the region was not moved away from the revoked tenant");
    /* new writes, local and over tcp, never reach bob's mapping */
    cr_assert_eq(xm_write(r, 0, "after!", 6), XM_OK, "%s", xm_last_error(alice));
    cr_assert_eq(xm_write(rt, 100, "tcp-write", 9), XM_OK);
    cr_assert(memcmp((const void *)m, "after!", 6) != 0, "the revoked tenant saw a new write");
    cr_assert(memcmp((const void *)m + 100, "tcp-write", 9) != 0, "the revoked tenant saw a tcp write");
    /* bob writing into what he maps changes nothing of the region */
    memcpy((void *)m, "bobbob", 6);
    char got[16] = {0};
    cr_assert_eq(xm_read(rt, 0, got, 6), XM_OK);
    cr_assert(memcmp(got, "after!", 6) == 0, "the region holds '%s'", got);
    cr_assert_eq(xm_read(r, 100, got, 9), XM_OK, "%s", xm_last_error(alice));
    cr_assert(memcmp(got, "tcp-write", 9) == 0, "alice's local handle did not follow the move");
    munmap((void *)m, 1u << 20);
    xm_region_close(r);
    xm_region_close(rt);
    xm_disconnect(alice);
    xm_disconnect(atcp);
}

/* A writer over tcp that records which of its writes were acknowledged. */
typedef struct tcp_writer {
    xm_region_h r;
    uint64_t slots;              /* 4 KiB slots of the region */
    volatile int stop;
    uint64_t written;            /* writes made (acknowledged ones are acked[]) */
    uint8_t *acked;
    int failed;
} tcp_writer_t;

static uint64_t slot_of(uint64_t i, uint64_t slots)
{
    return (i * 7919u) % slots; /* a permutation (7919 is prime to the power-of-two count) */
}

static void *tcp_writer_main(void *arg)
{
    tcp_writer_t *w = arg;
    uint8_t page[4096];
    for (uint64_t i = 0; i < w->slots && !__atomic_load_n(&w->stop, __ATOMIC_RELAXED); i++) {
        uint64_t slot = slot_of(i, w->slots);
        xt_fill(page, sizeof(page), 5000 + slot);
        xm_status_t st = xm_write(w->r, slot * 4096, page, sizeof(page));
        if (st == XM_OK) w->acked[slot] = 1;
        else w->failed++;
        w->written = i + 1;
    }
    return NULL;
}

/* CPU time (user + system, in clock ticks) process pid has used. */
static unsigned long long cpu_ticks(pid_t pid)
{
    char path[64], line[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL || fgets(line, sizeof(line), f) == NULL) {
        if (f != NULL) fclose(f);
        return 0;
    }
    fclose(f);
    unsigned long long ut = 0, st = 0;
    const char *p = strrchr(line, ')');
    if (p != NULL) sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st);
    return ut + st;
}

/*
 * A region handed out locally is moved to a fresh memfd each time a holder's grant narrows
 * (region.c region_move: its resident bytes are copied). Over tcp, a writer keeps writing
 * 4 KiB slots of it meanwhile: every write acknowledged must be in the region afterwards.
 * Before the fix a write that landed on an already-copied range during the copy was
 * acknowledged and lost; now the appliance's progress loop is parked for the copy (data
 * progress is manual), so no transfer moves bytes while the memory changes under it.
 */
Test(local, tcp_writes_during_a_revocation_copy_are_kept, .fini = teardown, .timeout = 180)
{
    xt_start(&app, &(xt_opts_t){.provider = "local", .pool = "256M"});
    xm_ctx_h alice = connect_as("alice", "tcp");
    const uint64_t slots = 8192, size = slots * 4096; /* 32 MiB, all resident */
    xm_region_h r;
    cr_assert_eq(xm_region_create(alice, size, "moving", &r), XM_OK, "%s", xm_last_error(alice));
    uint8_t *zero = calloc(1, 1u << 20);
    memset(zero, 0xa5, 1u << 20);
    for (uint64_t off = 0; off < size; off += 1u << 20) {
        cr_assert_eq(xm_write(r, off, zero, 1u << 20), XM_OK); /* resident: the copy has work */
    }
    free(zero);
    char path[PATH_MAX + 64], bob[PATH_MAX + 80];
    sock_path(&app, path, sizeof(path));
    cred_of("bob", bob, sizeof(bob));
    tcp_writer_t w = {.r = r, .slots = slots, .acked = calloc(slots, 1)};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, tcp_writer_main, &w), 0);
    int moves = 0;
    for (int k = 0; k < 12; k++) {
        xm_access_t acc = k % 2 == 0 ? XM_ACCESS_READ_WRITE : XM_ACCESS_READ;
        cr_assert_eq(xm_region_grant(alice, xm_region_id(r), NULL, "bob", acc), XM_OK, "%s",
                     xm_last_error(alice));
        int fd;
        /* bob maps it: a holder, so the next change of his grant moves the region */
        cr_assert_eq(raw_region_fd(path, bob, xm_region_id(r), 0, acc, &fd), XM_OK);
        close(fd);
        cr_assert_eq(xm_region_grant(alice, xm_region_id(r), NULL, "bob",
                                     acc == XM_ACCESS_READ ? XM_ACCESS_READ_WRITE : XM_ACCESS_READ),
                     XM_OK, "%s", xm_last_error(alice));
        moves++;
        usleep(20000);
    }
    __atomic_store_n(&w.stop, 1, __ATOMIC_RELAXED);
    pthread_join(t, NULL);
    cr_assert_gt(w.written, 100, "the writer hardly wrote (%llu)", (unsigned long long)w.written);
    /* every acknowledged slot holds its bytes: read through a fresh tcp context */
    xm_ctx_h check = connect_as("alice", "tcp");
    xm_region_h rc;
    cr_assert_eq(xm_region_open(check, 0, "moving", XM_ACCESS_READ, &rc), XM_OK);
    uint8_t want[4096], got[4096];
    uint64_t lost = 0, acked = 0, first_lost = UINT64_MAX;
    for (uint64_t slot = 0; slot < slots; slot++) {
        if (!w.acked[slot]) continue;
        acked++;
        xt_fill(want, sizeof(want), 5000 + slot);
        cr_assert_eq(xm_read(rc, slot * 4096, got, sizeof(got)), XM_OK, "%s", xm_last_error(check));
        if (memcmp(want, got, sizeof(got)) != 0) {
            lost++;
            if (first_lost == UINT64_MAX) first_lost = slot;
        }
    }
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof(cmd), "grep -c 'moved to a fresh memfd' '%s' >/dev/null", app.log);
    cr_assert_eq(system(cmd), 0, "the region was never moved");
    cr_assert_eq(lost, 0, "%llu of %llu acknowledged tcp writes are not in the region after %d "
                 "moves (first: slot %llu); %d writes failed", (unsigned long long)lost,
                 (unsigned long long)acked, moves, (unsigned long long)first_lost, w.failed);
    /* after the moves, with both clients still connected and idle, the appliance sleeps
     * (the pauses' CQ signal once kept its progress loop busy for good) */
    usleep(1300000);
    unsigned long long c0 = cpu_ticks(app.pid);
    usleep(1000000);
    unsigned long long used = cpu_ticks(app.pid) - c0;
    cr_expect_lt(used, (unsigned long long)sysconf(_SC_CLK_TCK) / 5,
                 "an idle appliance used %llu ticks in 1 s after the moves", used);
    free(w.acked);
    xm_region_close(rc);
    xm_disconnect(check);
    xm_region_close(r);
    xm_disconnect(alice);
}

Test(local, another_user_maps_with_a_credential_it_can_read, .fini = teardown, .timeout = 60)
{
    struct passwd *pw = getpwnam("nobody");
    if (geteuid() != 0 || pw == NULL) cr_skip_test("needs root and the user nobody to switch to");
    xt_start(&app, &(xt_opts_t){.provider = "local"});
    /* nobody must reach the socket's directory and own its credential */
    cr_assert_eq(chmod(app.dir, 0711), 0);
    char cred[PATH_MAX + 80], path[PATH_MAX + 64];
    xt_cred(app.secret, "carol", cred, sizeof(cred));
    cr_assert_eq(chown(cred, pw->pw_uid, pw->pw_gid), 0);
    sock_path(&app, path, sizeof(path));
    xm_ctx_h alice = connect_as("alice", "tcp");
    xm_region_h shared;
    cr_assert_eq(xm_region_create(alice, 1u << 20, "for-carol", &shared), XM_OK);
    cr_assert_eq(xm_write(shared, 0, "from alice", 10), XM_OK);
    cr_assert_eq(xm_region_grant(alice, xm_region_id(shared), NULL, "carol", XM_ACCESS_READ), XM_OK);
    pid_t pid = fork();
    if (pid == 0) {
        if (setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) _exit(10);
        setenv("XMEM_TRANSPORT", "local", 1);
        xm_ctx_h ctx;
        if (xt_try_connect(&app, "carol", cred, 5000, &ctx) != XM_OK) _exit(11);
        xm_region_h r;
        if (xm_region_create(ctx, 1u << 20, "mine", &r) != XM_OK) _exit(12);
        if (mapped_regions() < (1u << 20)) _exit(13);
        if (xm_write(r, 5, "hello", 5) != XM_OK) _exit(14);
        char got[16] = {0};
        if (xm_read(r, 5, got, 5) != XM_OK || memcmp(got, "hello", 5) != 0) _exit(15);
        /* alice's read grant: readable, and the descriptor cannot be reopened writable */
        xm_region_h s;
        if (xm_region_open(ctx, xm_region_id(shared), NULL, XM_ACCESS_READ, &s) != XM_OK) _exit(16);
        if (xm_read(s, 0, got, 10) != XM_OK || memcmp(got, "from alice", 10) != 0) _exit(17);
        int fd;
        if (raw_region_fd(path, cred, xm_region_id(shared), 0, XM_ACCESS_READ, &fd) != XM_OK) _exit(18);
        char self[64];
        snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
        if (open(self, O_RDWR) >= 0) _exit(19); /* the reopen attack */
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the client of another user failed at step %d",
              WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    xm_region_close(shared);
    xm_disconnect(alice);
}

Test(local, works_from_another_network_namespace, .fini = teardown, .timeout = 60)
{
    if (geteuid() != 0) cr_skip_test("needs root to make a network namespace");
    xt_start(&app, &(xt_opts_t){.provider = "local"});
    xm_ctx_h tcp = connect_as(NULL, "tcp");
    pid_t pid = fork();
    if (pid == 0) {
        xm_ctx_h ctx = connect_as(NULL, "local");
        /* the control connection stays where it was made; everything after is from a network
         * namespace of its own, where the appliance's abstract or TCP names would not resolve */
        if (unshare(CLONE_NEWNET) != 0) _exit(20);
        xm_region_h r;
        if (xm_region_create(ctx, 1u << 20, "ns", &r) != XM_OK) _exit(21);
        if (mapped_regions() < (1u << 20)) _exit(22);
        if (xm_write(r, 0, "from-netns", 10) != XM_OK) _exit(23);
        xm_region_close(r);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 20) cr_skip_test("unshare(CLONE_NEWNET) refused here");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "netns client failed at step %d",
              WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    xm_region_h r;
    cr_assert_eq(xm_region_open(tcp, 0, "ns", XM_ACCESS_READ, &r), XM_OK, "%s", xm_last_error(tcp));
    char got[16] = {0};
    cr_assert_eq(xm_read(r, 0, got, 10), XM_OK);
    cr_assert(memcmp(got, "from-netns", 10) == 0);
    xm_region_close(r);
    xm_disconnect(tcp);
}

/* ---- an allocation with parts on this host and parts elsewhere ------------------------- */

static xt_cluster_t cl;

static void cl_teardown(void)
{
    xt_cluster_stop(&cl);
}

/* SIGSTOP takes effect asynchronously: wait until every thread of pid is stopped. */
static void stop_all(pid_t pid)
{
    kill(pid, SIGSTOP);
    for (int tries = 0; tries < 500; tries++) {
        char path[64], line[512];
        snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
        DIR *d = opendir(path);
        cr_assert_not_null(d);
        bool all = true;
        for (struct dirent *e; all && (e = readdir(d)) != NULL;) {
            if (e->d_name[0] == '.') continue;
            snprintf(line, sizeof(line), "/proc/%d/task/%s/stat", (int)pid, e->d_name);
            FILE *f = fopen(line, "r");
            if (f == NULL) continue;
            char *st = fgets(line, sizeof(line), f) != NULL ? strrchr(line, ')') : NULL;
            all = st != NULL && st[2] == 'T';
            fclose(f);
        }
        closedir(d);
        if (all) return;
        usleep(2000);
    }
    cr_assert_fail("xmemd did not stop");
}

/*
 * A 2-way stripe over two appliances of which this client reaches one locally (the other
 * has no local socket, as if on another host): the local part's pieces are loads and stores,
 * the other's go over tcp, in one operation. Every byte is checked against a shadow copy,
 * through this context and through a tcp-only one (so what was stored locally is in the
 * appliance's memory). Then the local appliance is stopped: operations on the local part, and
 * ones spanning both parts, still complete (its pieces need no xmemd CPU; over the fabric they
 * would time out, which is what happened when a mixed allocation went all over the fabric).
 */
Test(local, striped_allocation_part_local_part_tcp_every_byte, .fini = cl_teardown, .timeout = 240)
{
    xt_cluster_start(&cl, 1, "256M", "local", NULL);
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/a1", cl.dir);
    mkdir(sub, 0755);
    xt_start(&cl.app[1], &(xt_opts_t){.provider = "local", .pool = "256M", .secret = cl.secret,
                                      .dir = sub,
                                      .extra = {"--manager", cl.mgr.addr, "--domain", "d1",
                                                "--heartbeat-ms", "100", "--local-socket",
                                                "none"}});
    cl.n = 2;
    cr_assert(xt_cluster_wait_up(&cl, 2, 10000), "the second appliance did not come up");
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, NULL);
    const uint64_t size = (6u << 20) + 4321, chunk = 64u << 10;
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, size, "stripe:2:64K", "mixed", &a), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(a->nparts, 2);
    int local_part = a->parts[0].lmap != NULL ? 0 : 1;
    cr_assert((a->parts[0].lmap != NULL) != (a->parts[1].lmap != NULL),
              "want exactly one part mapped here (parts mapped: %d, %d)", a->parts[0].lmap != NULL,
              a->parts[1].lmap != NULL);

    uint8_t *shadow = calloc(1, size), *w = malloc(size), *r = malloc(size);
    static const uint64_t lens[] = {1, 7, 8, 4096, 65535, 65536, 65537, 200000, (1u << 20) + 3};
    uint64_t seed = 1;
    for (int i = 0; i < 300; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t len = lens[(seed >> 33) % (sizeof(lens) / sizeof(lens[0]))];
        uint64_t off = (seed >> 7) % (size - len + 1);
        if (i % 3 == 0) off = off / chunk * chunk + chunk - 3; /* across a chunk boundary */
        if (off + len > size) off = size - len;
        xt_fill(w, len, seed);
        cr_assert_eq(xm_write(a, off, w, len), XM_OK, "write %llu@%llu: %s",
                     (unsigned long long)len, (unsigned long long)off, xm_last_error(ctx));
        memcpy(shadow + off, w, len);
        cr_assert_eq(xm_read(a, off, r, len), XM_OK, "%s", xm_last_error(ctx));
        cr_assert(memcmp(r, shadow + off, len) == 0, "%llu bytes at %llu differ",
                  (unsigned long long)len, (unsigned long long)off);
    }
    /* operations in flight together: writes over both parts, then reads of them */
    xm_op_t ops[8], *ptrs[8];
    for (int i = 0; i < 8; i++) {
        uint64_t off = (uint64_t)i * (size / 8), len = size / 8 - 5;
        xt_fill(w + off, len, 1000 + i);
        memcpy(shadow + off, w + off, len);
        ops[i] = (xm_op_t){.opcode = XM_OP_WRITE, .region = a, .offset = off, .buf = w + off,
                           .length = len};
        ptrs[i] = &ops[i];
    }
    cr_assert_eq(xm_submit(ctx, ops, 8), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_wait(ctx, ptrs, 8), XM_OK, "%s", xm_last_error(ctx));
    /* an atomic on each part: chunk 0 is part 0, chunk 1 part 1 */
    for (uint64_t c = 0; c < 2; c++) {
        uint64_t off = c * chunk + 64, old, v = 0;
        memcpy(&v, shadow + off, 8);
        cr_assert_eq(xm_fetch_add(a, off, 5, &old), XM_OK, "%s", xm_last_error(ctx));
        cr_assert_eq(old, v);
        v += 5;
        memcpy(shadow + off, &v, 8);
    }
    memset(r, 0xee, size);
    cr_assert_eq(xm_read(a, 0, r, size), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(r, shadow, size) == 0, "the allocation differs from what was written");
    /* what was stored locally is in the appliance's memory: a tcp-only reader sees it all */
    setenv("XMEM_TRANSPORT", "tcp", 1);
    xm_ctx_h tcp = xt_manager_connect(&cl.mgr, NULL);
    xm_alloc_h b;
    cr_assert_eq(xm_attach(tcp, 0, "mixed", XM_ACCESS_READ, &b), XM_OK, "%s", xm_last_error(tcp));
    setenv("XMEM_TRANSPORT", "local", 1);
    cr_assert(b->parts[0].lmap == NULL && b->parts[1].lmap == NULL, "the tcp reader mapped a part");
    memset(r, 0xee, size);
    cr_assert_eq(xm_read(b, 0, r, size), XM_OK, "%s", xm_last_error(tcp));
    cr_assert(memcmp(r, shadow, size) == 0, "over tcp the allocation differs");

    /* the local part needs no xmemd CPU: stop its appliance (appliance 0 has the socket) */
    stop_all(cl.app[0].pid);
    uint64_t off_local = (uint64_t)local_part * chunk + 100;
    xt_fill(w, 4096, 77);
    xm_status_t s1 = xm_write(a, off_local, w, 4096);
    xm_status_t s2 = xm_read(a, off_local, r, 4096);
    bool same1 = memcmp(w, r, 4096) == 0;
    /* spanning both parts: the local pieces now, the other part's over tcp */
    xt_fill(w, 4 * chunk, 78);
    xm_status_t s3 = xm_write(a, chunk / 2, w, 4 * chunk);
    memset(r, 0, 4 * chunk);
    xm_status_t s4 = xm_read(a, chunk / 2, r, 4 * chunk);
    bool same2 = memcmp(w, r, 4 * chunk) == 0;
    kill(cl.app[0].pid, SIGCONT);
    cr_assert_eq(s1, XM_OK, "local-part write with its appliance stopped: %s", xm_status_str(s1));
    cr_assert_eq(s2, XM_OK, "local-part read with its appliance stopped: %s", xm_status_str(s2));
    cr_assert(same1);
    cr_assert_eq(s3, XM_OK, "spanning write with the local appliance stopped: %s", xm_status_str(s3));
    cr_assert_eq(s4, XM_OK, "spanning read with the local appliance stopped: %s", xm_status_str(s4));
    cr_assert(same2);
    memcpy(shadow + chunk / 2, w, 4 * chunk);
    xt_fill(w, 4096, 77);
    memcpy(shadow + off_local, w, 4096);
    memset(r, 0xee, size);
    cr_assert_eq(xm_read(b, 0, r, size), XM_OK, "%s", xm_last_error(tcp));
    cr_assert(memcmp(r, shadow, size) == 0, "over tcp the allocation differs after the stop");

    free(shadow);
    free(w);
    free(r);
    xm_alloc_close(b);
    xm_disconnect(tcp);
    xm_alloc_close(a);
    cr_assert_eq(xm_free(ctx, 0, "mixed"), XM_OK, "%s", xm_last_error(ctx));
    xm_disconnect(ctx);
}
