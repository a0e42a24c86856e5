/* Test harness: start and stop a real xmemd on loopback, run the CLI. */
#ifndef XT_HARNESS_H
#define XT_HARNESS_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <criterion/criterion.h>
#include <xmem/xmem.h>

typedef struct xt_appliance {
    pid_t pid;
    char addr[64];          /* "127.0.0.1:PORT" */
    char dir[256];          /* scratch directory of this test */
    char secret[PATH_MAX];  /* secret file */
    char log[PATH_MAX];     /* xmemd's stderr */
    char provider[8];
} xt_appliance_t;

typedef struct xt_opts {
    const char *provider;   /* "tcp" (default): clients use tcp; "local": xmemd serves tcp and
                             * the local transport, clients on this host use the latter
                             * (XMEM_TRANSPORT is set for the test process) */
    const char *pool;       /* default "256M" */
    const char *backing;    /* default "memfd" */
    const char *secret;     /* existing secret file, or NULL to make one */
    const char *dir;        /* reuse a scratch dir (restart), or NULL */
    const char *listen;     /* default "127.0.0.1:0" */
    const char *extra[8];   /* more "--flag", "value" pairs */
} xt_opts_t;

/* Start xmemd and wait until it listens; asserts on failure. Dies with the test. */
void xt_start(xt_appliance_t *a, const xt_opts_t *opts);
/* SIGTERM and wait; returns the exit status (0 = clean shutdown, no leak under ASan). */
int xt_stop(xt_appliance_t *a);
/* SIGKILL and reap. */
void xt_kill9(xt_appliance_t *a);
/* Remove the scratch directory. */
void xt_cleanup(xt_appliance_t *a);
/* Connect as tenant (NULL: "alice") with the appliance's secret; asserts success. */
xm_ctx_h xt_connect(const xt_appliance_t *a, const char *tenant);
xm_status_t xt_try_connect(const xt_appliance_t *a, const char *tenant, const char *secret,
                           uint32_t timeout_ms, xm_ctx_h *ctx_p);
/* The credential file for tenant under cluster secret (issued on first use, beside the secret as
 * SECRET.TENANT.cred); an @ role gets the secret itself. Returns path. */
const char *xt_cred(const char *secret, const char *tenant, char *path, size_t len);
/* Write a fresh random secret file. */
void xt_make_secret(const char *path);
/* Run the xmem CLI against the appliance; returns its exit code. out/err are malloc'd (may be NULL). */
int xt_cli(const xt_appliance_t *a, const void *in, size_t in_len, char **out, size_t *out_len,
           char **err, const char *arg0, ...);
/* RSS + shared memory of a process in bytes (VmRSS from /proc). */
size_t xt_rss(pid_t pid);
/* Deterministic pseudo-random bytes. */
void xt_fill(void *buf, size_t len, uint64_t seed);
uint64_t xt_now_ms(void);
/* Print the appliance log (on failure). */
void xt_dump_log(const xt_appliance_t *a);

/* ---- the allocation manager and local clusters (cluster.c) ---------------- */

typedef struct xt_manager {
    pid_t pid;
    char addr[64];          /* "127.0.0.1:PORT" */
    char dir[256];
    char secret[PATH_MAX];
    char db[PATH_MAX];
    char log[PATH_MAX];
} xt_manager_t;

/* Start xmem-manager with its table in dir/manager.db; listen "127.0.0.1:0" unless given
 * (a restart passes the old address). extra: NULL-terminated "--flag", "value" pairs. */
void xt_manager_start(xt_manager_t *m, const char *dir, const char *secret, const char *listen,
                      const char *const *extra);
int xt_manager_stop(xt_manager_t *m);
void xt_manager_kill9(xt_manager_t *m);
/* Connect to the manager as tenant (NULL: "alice"). */
xm_status_t xt_manager_try_connect(const xt_manager_t *m, const char *tenant, xm_ctx_h *ctx_p);
xm_ctx_h xt_manager_connect(const xt_manager_t *m, const char *tenant);

#define XT_CLUSTER_MAX 8
typedef struct xt_cluster {
    char dir[256];
    char secret[PATH_MAX];
    xt_manager_t mgr;
    xt_appliance_t app[XT_CLUSTER_MAX];
    int n;
    const char *provider;
    const char *pool;
} xt_cluster_t;

/* A manager and n appliances (domains d0, d1, ...; heartbeats every 100 ms, down after
 * 600 ms) on loopback; waits until all are up. mgr_extra goes to the manager. */
void xt_cluster_start(xt_cluster_t *c, int n, const char *pool, const char *provider,
                      const char *const *mgr_extra);
/* (Re)start appliance i of the cluster, registered with its manager. */
void xt_cluster_start_appliance(xt_cluster_t *c, int i);
/* Wait until the manager lists `up` appliances as up; false on timeout. */
bool xt_cluster_wait_up(xt_cluster_t *c, int up, int timeout_ms);
/* Stop everything; expects clean exits. */
void xt_cluster_stop(xt_cluster_t *c);
/* Bytes (stock included) and regions the manager counts on its appliances; regions_p may be NULL. */
uint64_t xt_used_on_appliances(xm_ctx_h ctx, uint32_t *regions_p);
/* State of allocation id as the manager reports it ("" when not listed). */
void xt_alloc_state(xm_ctx_h ctx, uint64_t id, char *state, size_t len);

/* Define one body run as two tests: over tcp, and over the local transport (clients on the
 * appliance's host map their regions; it replaced libfabric's shm provider, removed). */
#define XT_TEST_PROVIDERS(suite, name, ...)                                                  \
    static void suite##_##name##_body(const char *provider);                                 \
    Test(suite, name##_tcp, __VA_ARGS__) { suite##_##name##_body("tcp"); }                   \
    Test(suite, name##_local, __VA_ARGS__) { suite##_##name##_body("local"); }               \
    static void suite##_##name##_body(const char *provider)

#endif
