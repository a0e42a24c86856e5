/* The control plane against a hostile tenant, a hostile secret holder and an
 * unauthenticated local user (issue 10): each test reproduces one attack, some with
 * a client that bypasses libxmem and speaks the protocol itself, and asserts the
 * attack fails, the victim's bytes are unchanged and the daemon keeps serving. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <xmem/tenant.h>

#include "harness.h"
#include "../../src/client/client.h"
#include "../../src/common/common.h"

static xt_appliance_t app;
static xt_cluster_t cl;
static bool cluster_up;

static void teardown(void)
{
    if (cluster_up) {
        xt_cluster_stop(&cl);
        cluster_up = false;
        return;
    }
    cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
    xt_cleanup(&app);
}

/* Connect with an explicit credential file and claimed tenant. */
static xm_status_t connect_as(const char *cred, const char *tenant, xm_ctx_h *ctx_p)
{
    xm_connect_opts_t o = {.size = sizeof(xm_connect_opts_t), .appliance = app.addr,
                           .secret_file = cred, .tenant = tenant, .timeout_ms = 3000};
    return xm_connect(&o, ctx_p);
}

/* A region of alice's holding a known pattern. */
static xm_region_h victim_region(xm_ctx_h alice, const char *name, uint8_t *pattern, size_t len)
{
    xm_region_h r;
    cr_assert_eq(xm_region_create(alice, len, name, &r), XM_OK, "%s", xm_last_error(alice));
    xt_fill(pattern, len, 7);
    cr_assert_eq(xm_write(r, 0, pattern, len), XM_OK);
    return r;
}

static void expect_intact(xm_region_h r, const uint8_t *pattern, size_t len)
{
    uint8_t *now = malloc(len);
    cr_assert_eq(xm_read(r, 0, now, len), XM_OK, "%s", xm_last_error(r->ctx));
    cr_assert(memcmp(now, pattern, len) == 0, "the victim's memory was changed");
    free(now);
}

/* Attack 2: a tenant is what its credential proves, never the name it claims. */
Test(control, claimed_tenant_refused, .fini = teardown, .timeout = 60)
{
    xt_start(&app, NULL);
    char alice_cred[PATH_MAX + 80], mallory_cred[PATH_MAX + 80];
    xt_cred(app.secret, "alice", alice_cred, sizeof(alice_cred));
    xt_cred(app.secret, "mallory", mallory_cred, sizeof(mallory_cred));
    xm_ctx_h alice = xt_connect(&app, "alice");
    enum { LEN = 8192 };
    static uint8_t pattern[LEN];
    xm_region_h r = victim_region(alice, "secrets", pattern, LEN);

    xm_ctx_h ctx = NULL;
    /* mallory's credential claiming alice */
    cr_assert_eq(connect_as(mallory_cred, "alice", &ctx), XM_ERR_AUTH);
    /* the cluster secret claiming a tenant, or an unknown role */
    cr_assert_eq(connect_as(app.secret, "alice", &ctx), XM_ERR_AUTH);
    /* a tenant credential claiming an @ role */
    cr_assert_eq(connect_as(mallory_cred, "@manager", &ctx), XM_ERR_AUTH);

    /* bypassing libxmem: a Hello naming alice with mallory's key does not get a session */
    rpc_cred_t forged;
    char why[256];
    cr_assert_eq(rpc_cred_load(mallory_cred, &forged, why, sizeof(why)), XM_OK, "%s", why);
    snprintf(forged.tenant, sizeof(forged.tenant), "alice");
    rpc_cred_t real;
    cr_assert_eq(rpc_cred_load(alice_cred, &real, why, sizeof(why)), XM_OK);
    forged.id = real.id; /* even with alice's credential id */
    char host[64], port[16];
    cr_assert_eq(xm__parse_hostport(app.addr, host, sizeof(host), port, sizeof(port)), XM_OK);
    int fd;
    cr_assert_eq(rpc_connect(host, port, 3000, &fd), XM_OK);
    rpc_conn_t rc;
    rpc_conn_init(&rc, fd);
    xm_msg_t *welcome = NULL;
    cr_assert_eq(rpc_handshake_client(&rc, &forged, "alice", 3000, &welcome, why, sizeof(why)),
                 XM_ERR_AUTH, "a forged credential got a session");
    rpc_conn_close(&rc);

    /* mallory as herself cannot reach alice's region */
    xm_ctx_h mallory = xt_connect(&app, "mallory");
    xm_region_h m;
    cr_assert_eq(xm_region_open(mallory, 0, "alice/secrets", XM_ACCESS_READ, &m), XM_ERR_PERM);
    cr_assert_eq(xm_region_destroy(mallory, 0, "alice/secrets"), XM_ERR_PERM);
    expect_intact(r, pattern, LEN);
    xm_disconnect(mallory);
    xm_region_close(r);
    xm_disconnect(alice);
}

/* Attacks 2 and 5: names are the tenant's own; '@' names are the cluster's. */
Test(control, names_are_scoped_and_reserved, .fini = teardown, .timeout = 60)
{
    xt_start(&app, NULL);
    xm_ctx_h eve = xt_connect(&app, "eve");
    xm_ctx_h bob = xt_connect(&app, "bob");
    xm_region_h squat, mine;
    /* eve squats the name bob will use and grants it to him */
    cr_assert_eq(xm_region_create(eve, 4096, "results", &squat), XM_OK);
    cr_assert_eq(xm_region_grant(eve, 0, "results", "bob", XM_ACCESS_READ_WRITE), XM_OK);
    /* bob's "results" is his own, not eve's */
    cr_assert_eq(xm_region_create(bob, 4096, "results", &mine), XM_OK, "%s", xm_last_error(bob));
    cr_assert_eq(xm_write(mine, 0, "bob's", 5), XM_OK);
    char got[5] = {0};
    cr_assert_eq(xm_read(squat, 0, got, 5), XM_OK);
    cr_assert(memcmp(got, "bob's", 5) != 0, "bob's write landed in eve's squatted region");
    /* the reserved prefix */
    xm_region_h r;
    cr_assert_eq(xm_region_create(eve, 4096, "@alloc-1.0", &r), XM_ERR_INVALID);
    xm_region_close(squat);
    xm_region_close(mine);
    xm_disconnect(eve);
    xm_disconnect(bob);
}

/* Attack 4: a frame injected, replayed or altered after the handshake ends the session
 * and does nothing; key material never crosses in clear. */
Test(control, injected_or_replayed_frames_end_the_session, .fini = teardown, .timeout = 60)
{
    xt_start(&app, NULL);
    xm_ctx_h alice = xt_connect(&app, "alice");
    xm_region_info_t *infos;
    size_t n0, n;
    cr_assert_eq(xm_region_list(alice, &infos, &n0), XM_OK);
    free(infos);

    Xmem__RegionCreate rq = XMEM__REGION_CREATE__INIT;
    rq.size = 4096;
    xm_msg_t req = XMEM__MSG__INIT;
    req.seq = 99;
    req.body_case = XMEM__MSG__BODY_REGION_CREATE;
    req.region_create = &rq;

    /* an unsealed frame on alice's session (what a relay without her key can write) */
    uint8_t *clear;
    size_t clear_len;
    cr_assert_eq(proto_encode(&req, &clear, &clear_len), XM_OK);
    cr_assert_eq(send(alice->conn.fd, clear, clear_len, MSG_NOSIGNAL), (ssize_t)clear_len);
    free(clear);
    char b;
    usleep(200000);
    cr_assert_eq(recv(alice->conn.fd, &b, 1, 0), 0, "the appliance kept a session with an injected frame");

    /* a sealed frame sent twice: the second one is a replay */
    xm_ctx_h ctx = xt_connect(&app, "alice");
    /* both ends run here: AES-256-GCM when the CPU has it, else ChaCha20-Poly1305 */
    cr_assert_eq(ctx->conn.cipher, crypto_aead_aes256gcm_is_available() ? RPC_CIPHER_AES256GCM
                                                                        : RPC_CIPHER_CHACHA20);
    uint8_t *sealed;
    size_t sealed_len;
    cr_assert_eq(rpc_seal(&ctx->conn, &req, &sealed, &sealed_len), XM_OK);
    /* no key or name in clear: the sealed bytes do not contain the request's body */
    cr_assert_eq(send(ctx->conn.fd, sealed, sealed_len, MSG_NOSIGNAL), (ssize_t)sealed_len);
    xm_msg_t *rep;
    const char *why;
    cr_assert_eq(rpc_recv(&ctx->conn, XM_FRAME_MAX_REPLY, rpc_deadline_after(3000), 3000, &rep, &why),
                 XM_OK);
    cr_assert_eq(rep->body_case, XMEM__MSG__BODY_REGION_DESC);
    proto_msg_free(rep);
    cr_assert_eq(send(ctx->conn.fd, sealed, sealed_len, MSG_NOSIGNAL), (ssize_t)sealed_len);
    free(sealed);
    usleep(200000);
    cr_assert_eq(recv(ctx->conn.fd, &b, 1, 0), 0, "a replayed frame was served");

    /* one region came of it (the legitimate frame), and the appliance serves on */
    xm_ctx_h again = xt_connect(&app, "alice");
    cr_assert_eq(xm_region_list(again, &infos, &n), XM_OK);
    free(infos);
    cr_assert_eq(n, n0 + 1, "%zu regions, expected %zu", n, n0 + 1);
    xm_disconnect(again);
    xm_disconnect(ctx);
    xm_disconnect(alice);
}

/* Revocation ends a tenant's sessions at once and refuses new ones. */
Test(control, revoked_tenant_is_cut_off, .fini = teardown, .timeout = 60)
{
    xt_start(&app, NULL);
    xm_ctx_h alice = xt_connect(&app, "alice");
    xm_ctx_h bob = xt_connect(&app, "bob");
    xm_appliance_info_t info;
    cr_assert_eq(xm_appliance_stat(alice, &info), XM_OK);
    char why[256];
    cr_assert_eq(xm_tenant_rm(app.secret, NULL, "alice", why, sizeof(why)), XM_OK, "%s", why);
    char b;
    bool closed = false;
    for (int i = 0; i < 50 && !closed; i++) {
        usleep(100000);
        closed = recv(alice->conn.fd, &b, 1, MSG_DONTWAIT) == 0;
    }
    cr_assert(closed, "alice's session outlived her revocation");
    char cred[PATH_MAX + 80];
    snprintf(cred, sizeof(cred), "%s.alice.cred", app.secret);
    xm_ctx_h ctx = NULL;
    cr_assert_eq(connect_as(cred, NULL, &ctx), XM_ERR_AUTH, "a revoked credential connected");
    cr_assert_eq(xm_appliance_stat(bob, &info), XM_OK, "bob was cut off too");
    xm_disconnect(alice);
    xm_disconnect(bob);
}

/* Attack 5: one tenant cannot hold every connection slot. */
Test(control, one_tenant_cannot_take_every_connection, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.extra = {"--max-conns-per-tenant", "4", "--max-conns", "8"}});
    xm_ctx_h held[4];
    for (int i = 0; i < 4; i++) held[i] = xt_connect(&app, "mallory");
    xm_ctx_h ctx = NULL;
    cr_assert_neq(xt_try_connect(&app, "mallory", NULL, 3000, &ctx), XM_OK,
                  "mallory got a fifth connection");
    for (int i = 0; i < 3; i++) {
        xm_ctx_h alice = xt_connect(&app, "alice");
        xm_appliance_info_t info;
        cr_assert_eq(xm_appliance_stat(alice, &info), XM_OK);
        xm_disconnect(alice);
    }
    for (int i = 0; i < 4; i++) xm_disconnect(held[i]);
}

/* Attack 6: secrets and credentials must be private and real secrets. */
Test(control, weak_or_exposed_secrets_refused, .fini = teardown, .timeout = 60)
{
    xt_start(&app, NULL);
    char cred[PATH_MAX + 80], copy[PATH_MAX + 80];
    xt_cred(app.secret, "alice", cred, sizeof(cred));
    xm_ctx_h ctx = NULL;
    /* a world-readable credential */
    snprintf(copy, sizeof(copy), "%s/open.cred", app.dir);
    char cmd[PATH_MAX * 3];
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && chmod 644 '%s'", cred, copy, copy);
    cr_assert_eq(system(cmd), 0);
    cr_assert_eq(connect_as(copy, NULL, &ctx), XM_ERR_AUTH);
    cr_assert(strstr(xm_last_error(NULL), "chmod 600") != NULL, "%s", xm_last_error(NULL));
    /* a secret of one repeated letter, and a world-readable cluster secret */
    char weak[300], open_secret[300];
    snprintf(weak, sizeof(weak), "%s/weak", app.dir);
    snprintf(cmd, sizeof(cmd), "printf 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' > '%s' && chmod 600 '%s'", weak, weak);
    cr_assert_eq(system(cmd), 0);
    snprintf(open_secret, sizeof(open_secret), "%s/open-secret", app.dir);
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && chmod 644 '%s'", app.secret, open_secret, open_secret);
    cr_assert_eq(system(cmd), 0);
    const char *bad[] = {weak, open_secret};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof(cmd), "'%s/xmemd' --listen 127.0.0.1:0 --pool 64M --secret-file '%s' "
                 ">/dev/null 2>'%s/err%d'", XMEM_BIN_DIR, bad[i], app.dir, i);
        int st = system(cmd);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "xmemd accepted secret %s", bad[i]);
    }
    /* the appliance still serves */
    ctx = xt_connect(&app, "alice");
    xm_disconnect(ctx);
}

/* Attack 7: a file pool is served by one xmemd at a time; SIGHUP does not kill it. */
Test(control, file_pool_locked_and_sighup_survived, .fini = teardown, .timeout = 60)
{
    char dir[] = "/tmp/xmem-test-XXXXXX";
    cr_assert(mkdtemp(dir) != NULL);
    char backing[PATH_MAX];
    snprintf(backing, sizeof(backing), "file:%s/pool", dir);
    xt_start(&app, &(xt_opts_t){.dir = dir, .backing = backing, .pool = "64M"});
    xm_ctx_h alice = xt_connect(&app, "alice");
    enum { LEN = 4096 };
    static uint8_t pattern[LEN];
    xm_region_h r = victim_region(alice, "kept", pattern, LEN);
    char cmd[PATH_MAX * 3];
    snprintf(cmd, sizeof(cmd), "'%s/xmemd' --listen 127.0.0.1:0 --pool 64M --backing '%s' "
             "--secret-file '%s' >/dev/null 2>'%s/second.err'", XMEM_BIN_DIR, backing, app.secret, dir);
    int st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0, "a second xmemd served the same pool file");
    cr_assert_eq(kill(app.pid, SIGHUP), 0);
    usleep(300000);
    cr_assert_eq(kill(app.pid, 0), 0, "SIGHUP killed xmemd");
    expect_intact(r, pattern, LEN);
    xm_region_close(r);
    xm_disconnect(alice);
}

/* Whether the file at path holds the 8 bytes of v in either byte order. */
static bool file_holds_u64(const char *path, uint64_t v)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return false;
    uint8_t le[8], be[8];
    for (int i = 0; i < 8; i++) {
        le[i] = (uint8_t)(v >> (8 * i));
        be[7 - i] = le[i];
    }
    static uint8_t buf[1 << 20];
    size_t n;
    bool found = false;
    uint8_t carry[7];
    size_t ncarry = 0;
    while (!found && (n = fread(buf + 7, 1, sizeof(buf) - 7, f)) > 0) {
        memcpy(buf + 7 - ncarry, carry, ncarry);
        const uint8_t *p = buf + 7 - ncarry;
        size_t len = n + ncarry;
        for (size_t i = 0; i + 8 <= len && !found; i++) {
            found = memcmp(p + i, le, 8) == 0 || memcmp(p + i, be, 8) == 0;
        }
        ncarry = len < 7 ? len : 7;
        memcpy(carry, p + len - ncarry, ncarry);
    }
    fclose(f);
    return found;
}

/* Attack 1: the manager's table is the manager's alone, and keeps no usable key. */
Test(control, manager_table_is_private, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 1, "128M", "tcp", NULL);
    cluster_up = true;
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, "alice");
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, 1u << 20, "single", "x", &a), XM_OK, "%s", xm_last_error(ctx));
    /* the read-write key the descriptor carries is nowhere in the table's files */
    uint64_t key = a->parts[0].key;
    const char *files[] = {"", "-wal"};
    for (int i = 0; i < 2; i++) {
        char p[PATH_MAX + 8];
        snprintf(p, sizeof(p), "%s%s", cl.mgr.db, files[i]);
        cr_assert(!file_holds_u64(p, key), "the region key is in clear in %s", p);
    }
    const char *suffix[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        char p[PATH_MAX + 8];
        snprintf(p, sizeof(p), "%s%s", cl.mgr.db, suffix[i]);
        struct stat st;
        if (stat(p, &st) != 0) continue;
        cr_assert_eq(st.st_mode & 077, 0, "%s is mode %o", p, st.st_mode & 0777);
    }
    xm_alloc_close(a);
    xm_disconnect(ctx);
}

/* Attack 3: a secret holder registering under a real appliance's address is refused,
 * and the allocations there keep being served by the real one. */
/* Register with the manager as an appliance at control_addr, signed by idn; the status. */
static xm_status_t register_as(const rpc_identity_t *idn, const char *control_addr, uint64_t boot_id)
{
    rpc_cred_t cred;
    char why[256];
    cr_assert_eq(rpc_cred_load(cl.secret, &cred, why, sizeof(why)), XM_OK, "%s", why);
    char host[64], port[16];
    cr_assert_eq(xm__parse_hostport(cl.mgr.addr, host, sizeof(host), port, sizeof(port)), XM_OK);
    int fd;
    cr_assert_eq(rpc_connect(host, port, 3000, &fd), XM_OK);
    rpc_conn_t rc;
    rpc_conn_init(&rc, fd);
    xm_msg_t *welcome;
    cr_assert_eq(rpc_handshake_client(&rc, &cred, RPC_ROLE_APPLIANCE, 3000, &welcome, why,
                                      sizeof(why)), XM_OK, "%s", why);
    proto_msg_free(welcome);
    uint8_t sig[RPC_ID_SIG_LEN], msg[14 + 32];
    memcpy(msg, "xmem-register", 14);
    memcpy(msg + 14, rc.transcript, 32);
    crypto_sign_detached(sig, NULL, msg, sizeof(msg), idn->sk);
    Xmem__ApplianceRegister reg = XMEM__APPLIANCE_REGISTER__INIT;
    reg.control_addr = (char *)control_addr;
    reg.domain = "d0";
    reg.provider = "tcp";
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(1)};
    sin.sin_addr.s_addr = htonl(0x7f000001);
    reg.fabric_addr = (ProtobufCBinaryData){sizeof(sin), (uint8_t *)&sin};
    reg.pool_size = 128u << 20;
    reg.extent_size = 2u << 20;
    reg.boot_id = boot_id;
    reg.identity_pk = (ProtobufCBinaryData){RPC_ID_PK_LEN, (uint8_t *)idn->pk};
    reg.identity_sig = (ProtobufCBinaryData){RPC_ID_SIG_LEN, sig};
    xm_msg_t req = XMEM__MSG__INIT, *rep = NULL;
    req.body_case = XMEM__MSG__BODY_APPLIANCE_REGISTER;
    req.appliance_register = &reg;
    xm_status_t status = rpc_call(&rc, &req, 5000, &rep, why, sizeof(why));
    if (rep != NULL) proto_msg_free(rep);
    rpc_conn_close(&rc);
    return status;
}

/* The allocation x is still served by the real appliance. */
static void still_genuine(xm_ctx_h ctx)
{
    xm_alloc_h a;
    cr_assert_eq(xm_attach(ctx, 0, "x", XM_ACCESS_READ_WRITE, &a), XM_OK, "%s", xm_last_error(ctx));
    char got[7];
    cr_assert_eq(xm_read(a, 0, got, 7), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(got, "genuine", 7) == 0, "reads are served by someone else");
    xm_alloc_close(a);
}

Test(control, impostor_appliance_refused, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 1, "128M", "tcp", NULL);
    cluster_up = true;
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, "alice");
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, 1u << 20, "single", "x", &a), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(a, 0, "genuine", 7), XM_OK);

    /* the impostor: the cluster secret, its own identity, the victim's address */
    rpc_identity_t idn;
    char why[256], idpath[PATH_MAX + 16];
    snprintf(idpath, sizeof(idpath), "%s/impostor.identity", cl.dir);
    cr_assert_eq(rpc_identity_load(idpath, &idn, why, sizeof(why)), XM_OK, "%s", why);
    cr_assert_eq(register_as(&idn, cl.app[0].addr, 1), XM_ERR_PERM,
                 "the impostor's registration was accepted");
    xm_alloc_close(a);
    still_genuine(ctx);
    xm_disconnect(ctx);
}

/* Two processes with one identity (a copied identity file): the second, at another address,
 * is refused while the first runs, instead of the entry flapping between them (which moved
 * the first one's allocations to the second's address on every heartbeat). */
Test(control, a_running_appliances_identity_cannot_register_elsewhere, .fini = teardown,
     .timeout = 120)
{
    xt_cluster_start(&cl, 1, "128M", "tcp", NULL);
    cluster_up = true;
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, "alice");
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, 1u << 20, "single", "x", &a), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(a, 0, "genuine", 7), XM_OK);
    xm_alloc_close(a);
    /* the real appliance's identity file, beside the secret */
    char idpath[PATH_MAX + 96], hostport[64], why[256];
    snprintf(hostport, sizeof(hostport), "%s", cl.app[0].addr);
    *strrchr(hostport, ':') = '_';
    snprintf(idpath, sizeof(idpath), "%s.%s.identity", cl.app[0].secret, hostport);
    rpc_identity_t idn;
    cr_assert_eq(rpc_identity_load(idpath, &idn, why, sizeof(why)), XM_OK, "%s: %s", idpath, why);
    cr_assert_eq(register_as(&idn, "127.0.0.1:9", 424242), XM_ERR_PERM,
                 "a second process with a running appliance's identity was registered elsewhere");
    still_genuine(ctx);
    xm_disconnect(ctx);
}

/* Attack 2: quotas follow the proven tenant on an appliance too, and what tenants make
 * there directly is not offered again by the manager. */
Test(control, direct_regions_count, .fini = teardown, .timeout = 120)
{
    xt_start(&app, &(xt_opts_t){.pool = "64M", .extra = {"--quota", "16M"}});
    xm_ctx_h mallory = xt_connect(&app, "mallory");
    xm_region_h r[3];
    cr_assert_eq(xm_region_create(mallory, 8u << 20, "a", &r[0]), XM_OK);
    cr_assert_eq(xm_region_create(mallory, 8u << 20, "b", &r[1]), XM_OK);
    cr_assert_eq(xm_region_create(mallory, 2u << 20, "c", &r[2]), XM_ERR_NO_SPACE,
                 "mallory went past her quota");
    /* another tenant has a quota of her own */
    xm_ctx_h alice = xt_connect(&app, "alice");
    xm_region_h ra;
    cr_assert_eq(xm_region_create(alice, 8u << 20, "mine", &ra), XM_OK, "%s", xm_last_error(alice));
    xm_region_close(ra);
    xm_region_close(r[0]);
    xm_region_close(r[1]);
    xm_disconnect(alice);
    xm_disconnect(mallory);
}

Test(control, manager_does_not_place_on_space_taken_directly, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 1, "64M", "tcp", NULL);
    cluster_up = true;
    /* a tenant fills most of the appliance directly */
    xt_appliance_t *ap = &cl.app[0];
    xm_ctx_h direct = xt_connect(ap, "mallory");
    xm_region_h big;
    cr_assert_eq(xm_region_create(direct, 48u << 20, "hog", &big), XM_OK, "%s", xm_last_error(direct));
    usleep(600000); /* a heartbeat reports it */
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, "alice");
    xm_appliance_entry_t *es;
    size_t n;
    cr_assert_eq(xm_appliance_list(ctx, &es, &n), XM_OK);
    cr_assert_eq(n, 1);
    cr_assert_geq(es[0].other_used, 48u << 20, "the manager does not count the space taken directly "
                  "(%llu bytes)", (unsigned long long)es[0].other_used);
    free(es);
    xm_alloc_h a;
    /* the manager must say there is no room rather than fail half-way on the appliance */
    xm_status_t s = xm_alloc(ctx, 32u << 20, "single", NULL, &a);
    cr_assert_eq(s, XM_ERR_NO_SPACE, "got %s (%s)", xm_status_str(s), xm_last_error(ctx));
    cr_assert_eq(xm_alloc(ctx, 8u << 20, "single", NULL, &a), XM_OK, "%s", xm_last_error(ctx));
    xm_alloc_close(a);
    xm_region_close(big);
    xm_disconnect(direct);
    xm_disconnect(ctx);
}

/* Attack 3, without an attacker: an appliance restarted under another spelling of its address
 * (localhost:P for 127.0.0.1:P) is the same appliance, by its identity; the manager keeps its
 * regions and the allocation's bytes. */
Test(control, appliance_under_another_address_spelling_keeps_its_regions, .fini = teardown,
     .timeout = 120)
{
    xt_cluster_start(&cl, 0, "64M", "tcp", NULL);
    cluster_up = true;
    cl.n = 1;
    char sub[300], backing[PATH_MAX], idpath[PATH_MAX];
    snprintf(sub, sizeof(sub), "%s/a0", cl.dir);
    mkdir(sub, 0700);
    snprintf(backing, sizeof(backing), "file:%s/pool", sub);
    snprintf(idpath, sizeof(idpath), "%s/identity", sub);
    xt_opts_t o = {.pool = "64M", .backing = backing, .secret = cl.secret, .dir = sub,
                   .extra = {"--manager", cl.mgr.addr, "--domain", "d0", "--heartbeat-ms", "100",
                             "--identity", idpath}};
    xt_start(&cl.app[0], &o);
    cr_assert(xt_cluster_wait_up(&cl, 1, 10000), "the appliance did not come up");
    xm_ctx_h ctx = xt_manager_connect(&cl.mgr, "alice");
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(ctx, 4u << 20, "single", "kept", &a), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(a, 1000, "survives", 8), XM_OK);
    xm_alloc_close(a);

    /* restart it as localhost:PORT */
    const char *port = strrchr(cl.app[0].addr, ':') + 1;
    char listen[64];
    snprintf(listen, sizeof(listen), "localhost:%s", port);
    cr_assert_eq(xt_stop(&cl.app[0]), 0);
    o.listen = listen;
    xt_start(&cl.app[0], &o);
    bool up = false;
    for (int i = 0; i < 100 && !up; i++) {
        xm_appliance_entry_t *es;
        size_t n;
        cr_assert_eq(xm_appliance_list(ctx, &es, &n), XM_OK);
        cr_assert_eq(n, 1, "the appliance got a second registry entry under its new spelling");
        up = strcmp(es[0].state, "up") == 0 && strncmp(es[0].addr, "localhost:", 10) == 0;
        free(es);
        if (!up) usleep(100000);
    }
    cr_assert(up, "the moved appliance is not up under its new address");
    char state[32];
    xm_alloc_info_t *infos;
    size_t n;
    cr_assert_eq(xm_alloc_list(ctx, &infos, &n), XM_OK);
    cr_assert_eq(n, 1);
    snprintf(state, sizeof(state), "%s", infos[0].state);
    free(infos);
    cr_assert_str_eq(state, "ok");
    cr_assert_eq(xm_attach(ctx, 0, "kept", XM_ACCESS_READ_WRITE, &a), XM_OK, "%s", xm_last_error(ctx));
    char got[8];
    cr_assert_eq(xm_read(a, 1000, got, 8), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(got, "survives", 8) == 0, "the region was reconciled away");
    xm_alloc_close(a);
    xm_disconnect(ctx);
}

/* An authenticated session idle past --idle-timeout-ms is closed by the appliance (a slot is
 * not held forever); the client's next call opens a fresh session without failing. */
Test(control, idle_sessions_are_closed_and_clients_reconnect, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.extra = {"--idle-timeout-ms", "300"}});
    xm_ctx_h ctx = xt_connect(&app, "alice");
    xm_appliance_info_t info;
    cr_assert_eq(xm_appliance_stat(ctx, &info), XM_OK);
    int before = ctx->conn.fd;
    char b;
    bool closed = false;
    for (int i = 0; i < 30 && !closed; i++) {
        usleep(100000);
        closed = recv(before, &b, 1, MSG_DONTWAIT | MSG_PEEK) == 0;
    }
    cr_assert(closed, "an idle session was kept open past the idle timeout");
    cr_assert_eq(xm_appliance_stat(ctx, &info), XM_OK, "the call after an idle close failed: %s",
                 xm_last_error(ctx));
    xm_disconnect(ctx);
}

/* Revocation reaches the data path too: keys a revoked tenant was given stop working. */
Test(control, revoked_tenant_keys_stop_working, .fini = teardown, .timeout = 60)
{
    xt_start(&app, NULL);
    xm_ctx_h alice = xt_connect(&app, "alice");
    enum { LEN = 8192 };
    static uint8_t pattern[LEN];
    xm_region_h r = victim_region(alice, "shared", pattern, LEN);
    cr_assert_eq(xm_region_grant(alice, 0, "shared", "bob", XM_ACCESS_READ_WRITE), XM_OK);
    xm_ctx_h bob = xt_connect(&app, "bob");
    xm_region_h b;
    cr_assert_eq(xm_region_open(bob, 0, "alice/shared", XM_ACCESS_READ_WRITE, &b), XM_OK,
                 "%s", xm_last_error(bob));
    uint8_t got[16];
    cr_assert_eq(xm_read(b, 0, got, sizeof(got)), XM_OK, "%s", xm_last_error(bob));
    char why[256];
    cr_assert_eq(xm_tenant_rm(app.secret, NULL, "bob", why, sizeof(why)), XM_OK, "%s", why);
    usleep(500000); /* the appliance sees the registry change */
    cr_assert_neq(xm_write(b, 0, "revoked!", 8), XM_OK, "a revoked tenant's key still writes");
    cr_assert_neq(xm_read(b, 0, got, sizeof(got)), XM_OK, "a revoked tenant's key still reads");
    expect_intact(r, pattern, LEN);
    xm_region_close(b);
    xm_disconnect(bob);
    xm_region_close(r);
    xm_disconnect(alice);
}

/* Revocation through the manager: a revoked tenant's requests are refused, and when it is
 * issued a credential again its allocations are its own again, keys and bytes. */
Test(control, revoked_then_readded_tenant_through_the_manager, .fini = teardown, .timeout = 120)
{
    xt_cluster_start(&cl, 1, "64M", "tcp", NULL);
    cluster_up = true;
    xm_ctx_h alice = xt_manager_connect(&cl.mgr, "alice");
    xm_alloc_h a;
    cr_assert_eq(xm_alloc(alice, 1u << 20, "single", "kept", &a), XM_OK, "%s", xm_last_error(alice));
    cr_assert_eq(xm_write(a, 64, "mine", 4), XM_OK);
    char why[256];
    cr_assert_eq(xm_tenant_rm(cl.secret, NULL, "alice", why, sizeof(why)), XM_OK, "%s", why);
    usleep(500000);
    xm_alloc_h b;
    cr_assert_neq(xm_alloc(alice, 1u << 20, "single", NULL, &b), XM_OK, "a revoked tenant allocated");
    char got[4];
    cr_assert_neq(xm_read(a, 64, got, 4), XM_OK, "a revoked tenant's key still reads");
    xm_alloc_close(a);
    xm_disconnect(alice);

    /* issued again: a new credential, the same allocations */
    char cred[PATH_MAX + 80];
    snprintf(cred, sizeof(cred), "%s.alice.cred", cl.secret);
    unlink(cred);
    xm_ctx_h again = xt_manager_connect(&cl.mgr, "alice");
    cr_assert_eq(xm_attach(again, 0, "kept", XM_ACCESS_READ_WRITE, &a), XM_OK, "%s", xm_last_error(again));
    cr_assert_eq(xm_read(a, 64, got, 4), XM_OK, "the re-added tenant cannot read its allocation: %s",
                 xm_last_error(again));
    cr_assert(memcmp(got, "mine", 4) == 0);
    xm_alloc_close(a);
    xm_disconnect(again);
}

/* Attack 6: a pool file others may read is refused; `xmem up` refuses a run directory it
 * does not own privately (a planted secret would join the victim's cluster), and `xmem down`
 * never kills a process a planted pid file names. */
Test(control, exposed_pool_and_planted_run_directory_refused, .fini = teardown, .timeout = 60)
{
    xt_start(&app, NULL);
    char cmd[PATH_MAX * 3];
    /* a world-readable pool file */
    snprintf(cmd, sizeof(cmd), "touch '%s/open.pool' && chmod 644 '%s/open.pool' && '%s/xmemd' "
             "--listen 127.0.0.1:0 --pool 64M --backing 'file:%s/open.pool' --secret-file '%s' "
             ">/dev/null 2>'%s/pool.err'", app.dir, app.dir, XMEM_BIN_DIR, app.dir, app.secret, app.dir);
    int st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0, "xmemd served a pool file others can read");

    /* xmem up in a run directory open to others */
    char run[PATH_MAX];
    snprintf(run, sizeof(run), "%s/run", app.dir);
    cr_assert_eq(mkdir(run, 0755), 0);
    cr_assert_eq(chmod(run, 0755), 0);
    snprintf(cmd, sizeof(cmd), "XMEM_RUN_DIR='%s' '%s/xmem' up --appliances 1 --pool 64M "
             ">/dev/null 2>'%s/up.err'", run, XMEM_BIN_DIR, app.dir);
    st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0, "xmem up used a run directory others can write");
    char secret[PATH_MAX + 16];
    snprintf(secret, sizeof(secret), "%s/secret", run);
    cr_assert_neq(access(secret, F_OK), 0, "xmem up wrote a secret into it");

    /* a pid file naming an unrelated process, in a private run directory */
    cr_assert_eq(chmod(run, 0700), 0);
    pid_t victim = fork();
    if (victim == 0) {
        execl("/bin/sleep", "sleep", "30", (char *)NULL);
        _exit(127);
    }
    char pidfile[PATH_MAX + 16];
    snprintf(pidfile, sizeof(pidfile), "%s/manager.pid", run);
    FILE *f = fopen(pidfile, "w");
    fprintf(f, "%d\n", (int)victim);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "XMEM_RUN_DIR='%s' '%s/xmem' down >/dev/null 2>&1", run, XMEM_BIN_DIR);
    cr_assert_neq(system(cmd), -1);
    usleep(200000);
    int wst;
    cr_assert_eq(waitpid(victim, &wst, WNOHANG), 0, "xmem down killed the process a planted pid file named");
    kill(victim, SIGKILL);
    waitpid(victim, &wst, 0);
}

/* Connections from 127.0.0.2 that never start their handshake; alice (from 127.0.0.1)
 * must still get in and be served, three times. */
static void flood_then_connect(int flood)
{
    const char *colon = strrchr(app.addr, ':');
    cr_assert_not_null(colon);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    int *fds = calloc((size_t)flood, sizeof(int));
    for (int i = 0; i < flood; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in from = {.sin_family = AF_INET};
        inet_pton(AF_INET, "127.0.0.2", &from.sin_addr);
        cr_assert_eq(bind(fds[i], (struct sockaddr *)&from, sizeof(from)), 0, "bind 127.0.0.2: %s",
                     strerror(errno));
        cr_assert_eq(connect(fds[i], (struct sockaddr *)&to, sizeof(to)), 0);
    }
    usleep(300000); /* the appliance has accepted (or refused) them all */
    for (int i = 0; i < 3; i++) {
        xm_ctx_h alice = NULL;
        xm_status_t st = xt_try_connect(&app, "alice", NULL, 3000, &alice);
        if (st != XM_OK) xt_dump_log(&app);
        cr_assert_eq(st, XM_OK,
                     "a tenant could not connect while %d unauthenticated connections were open",
                     flood);
        xm_appliance_info_t info;
        cr_assert_eq(xm_appliance_stat(alice, &info), XM_OK);
        xm_disconnect(alice);
    }
    for (int i = 0; i < flood; i++) close(fds[i]);
    free(fds);
}

/* Peers without a credential cannot keep tenants out: connections that never finish their
 * handshake are capped below --max-conns in all... */
Test(control, unauthenticated_floods_leave_room_for_tenants, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.extra = {"--max-conns", "24"}});
    flood_then_connect(40);
}

/* ...and per source address, so one flooding host does not fill the handshakes' share */
Test(control, one_source_cannot_take_every_handshake, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.extra = {"--max-conns", "80"}});
    flood_then_connect(90);
}
