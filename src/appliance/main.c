/* xmemd: parse config, create the pool, fabric, regions and server, run, destroy. */
#include <errno.h>
#include <stdatomic.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "../common/common.h"
#include "../common/config.h"
#include "../ops/ops.h"
#include "appliance.h"
#include "metrics.h"

static xm_config_entry_t entries[] = {
    {"listen", "127.0.0.1:7400", "HOST:PORT of the control listener (PORT 0: any free port)", 0, 0},
    {"pool", "1G", "bytes the pool serves (K/M/G/T); reserved, never touched up front", 0, 0},
    {"backing", "memfd", "memfd | hugetlb | file:PATH (file pools survive restarts)", 0, 0},
    {"extent-size", "2M", "unit of placement; a power of two", 0, 0},
    {"secret-file", NULL, "file holding the cluster secret (xmem secret new PATH)", 0, 0},
    {"tenants", "", "tenant registry (xmem tenant add); empty: SECRET-FILE.tenants", 0, 0},
    {"identity", "", "this appliance's identity key file, made at first start (empty: POOL-FILE"
                     ".identity for a file pool, SECRET-FILE.HOST_PORT.identity otherwise)", 0, 0},
    {"provider", "tcp", "libfabric provider for data: tcp (shm: an alias of tcp; clients on this "
                        "host use the local transport instead)", 0, 0},
    {"local-socket", "", "AF_UNIX socket of the local transport (empty: IDENTITY-FILE with .sock "
                         "for .identity; none: no local transport)", 0, 0},
    {"data-port", "0", "port of the tcp data endpoint (0: any free port)", 0, 0},
    {"spin-us", "2000", "progress loop keeps polling this long after activity, then sleeps", 0, 0},
    {"max-conns", "1024", "control connections served at once", 0, 0},
    {"max-conns-per-tenant", "64", "control connections one tenant may hold at once", 0, 0},
    {"quota", "0", "bytes of regions each tenant may create directly here (0: no limit)", 0, 0},
    {"idle-timeout-ms", "600000", "an authenticated control connection idle this long is closed (0: never)", 0, 0},
    {"timeout-ms", "5000", "a started control message must arrive within this", 0, 0},
    {"log-level", "info", "error | warn | info | debug", 0, 0},
    XM_OPS_CONFIG_ENTRIES,
    {"manager", "", "HOST:PORT of xmem-manager to register with (empty: serve alone)", 0, 0},
    {"domain", "default", "failure domain reported to the manager", 0, 0},
    {"heartbeat-ms", "500", "interval of heartbeats to the manager", 0, 0},
    {"file-dir", "", "directories (colon-separated) under which tenants may expose files as "
                     "regions (xmem region create --file); empty: file regions are off", 0, 0},
    {"max-file-region", "0", "largest file a file region may expose (K/M/G/T; 0: no limit)", 0, 0},
};

static const char synopsis[] =
    "usage: xmemd [--config FILE] [--OPTION VALUE ...] [--print-config]\n"
    "Serve a pool of memory for one-sided access over libfabric.\n\n";

typedef struct progress_arg {
    net_fabric_t *fab;
    net_progress_opts_t opts;
    atomic_int stop;
    int stop_fd;
} progress_arg_t;

static void revoke_regions(void *arg)
{
    appl_regions_t *t = arg;
    appl_regions_revoke(t, t->keyring);
}

static void *progress_main(void *arg)
{
    progress_arg_t *p = arg;
    net_progress_run(p->fab, &p->opts, &p->stop, p->stop_fd);
    return NULL;
}


int main(int argc, char **argv)
{
    xm__log_set_ident("xmemd");
    /* no process of our user reaches the pool through /proc/PID/{fd,mem} or process_vm_readv */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    xm_config_t cfg = {entries, XM_ARRAY_LEN(entries), "/etc/xmem/xmemd.conf"};
    xm__config_init(&cfg);
    int done = xm__config_parse_args(&cfg, argc, argv, "xmemd", synopsis);
    if (done >= 0) {
        xm__config_cleanup(&cfg);
        return done;
    }
    if (xm__ops_log_setup(&cfg, "xmemd") != 0) {
        xm__config_cleanup(&cfg);
        return 2;
    }

    char host[256], port[16], path[PATH_MAX];
    uint64_t pool_size, extent_size, quota;
    uint32_t spin_us, max_conns, max_per_tenant, idle_ms, timeout_ms, heartbeat_ms;
    appl_backing_t backing;
    if (xm__config_get_hostport(&cfg, "xmemd", "listen", host, sizeof(host), port, sizeof(port)) != 0 ||
        xm__config_get_size(&cfg, "xmemd", "quota", &quota) != 0 ||
        xm__config_get_size(&cfg, "xmemd", "pool", &pool_size) != 0 ||
        xm__config_get_size(&cfg, "xmemd", "extent-size", &extent_size) != 0) {
        return 2;
    }
    if (appl_backing_parse(xm__config_get(&cfg, "backing"), &backing, path, sizeof(path)) != XM_OK) {
        fprintf(stderr, "xmemd: --backing: expected memfd, hugetlb or file:PATH\n");
        return 2;
    }
    if (xm__config_get_u32(&cfg, "xmemd", "spin-us", &spin_us) != 0 ||
        xm__config_get_u32(&cfg, "xmemd", "max-conns", &max_conns) != 0 ||
        xm__config_get_u32(&cfg, "xmemd", "max-conns-per-tenant", &max_per_tenant) != 0 ||
        xm__config_get_u32(&cfg, "xmemd", "idle-timeout-ms", &idle_ms) != 0 ||
        xm__config_get_u32(&cfg, "xmemd", "timeout-ms", &timeout_ms) != 0 ||
        xm__config_get_u32(&cfg, "xmemd", "heartbeat-ms", &heartbeat_ms) != 0) {
        return 2;
    }
    const char *manager = xm__config_get(&cfg, "manager");
    const char *domain = xm__config_get(&cfg, "domain");
    if (manager != NULL && manager[0] != '\0' && (domain == NULL || !xm__name_valid(domain) || heartbeat_ms == 0)) {
        fprintf(stderr, "xmemd: --domain must be a name and --heartbeat-ms > 0\n");
        return 2;
    }
    if (backing == APPL_BACKING_HUGETLB && extent_size < (2u << 20)) {
        extent_size = 2u << 20;
    }
    rpc_cred_t cred;
    rpc_keyring_t keyring;
    rpc_identity_t identity;
    char why[512];
    if (rpc_cred_load(xm__config_get(&cfg, "secret-file"), &cred, why, sizeof(why)) != XM_OK ||
        rpc_keyring_init(&keyring, &cred, xm__config_get(&cfg, "tenants"), why, sizeof(why)) != XM_OK) {
        fprintf(stderr, "xmemd: %s\n", why);
        return 2;
    }
    /* signals arrive on a descriptor; threads start with them blocked */
    int sig_fd, hup_fd;
    rpc_daemon_signals(&sig_fd, &hup_fd);

    int rc = 1;
    appl_pool_t pool;
    net_fabric_t fab;
    appl_regions_t regions;
    appl_server_t *server = NULL;
    appl_member_t *member = NULL;
    xm_metrics_server_t *metrics = NULL;
    int listen_fd = -1;
    int local_fd = -1; /* the local transport's listener */
    char local_path[PATH_MAX + 64] = "", boot_id[NET_LOCAL_BOOT_ID_LEN + 1] = "";
    uint16_t bound_port = 0;
    if (appl_pool_init(&pool, backing, path, pool_size, extent_size) != XM_OK) {
        goto out;
    }
    /* libfabric's shm provider is gone (any local process could read and write xmemd's memory
     * through it): --provider shm still starts, as tcp, so that existing setups keep working
     * and their clients on this host get the local transport */
    const char *provider = xm__config_get(&cfg, "provider");
    if (strcmp(provider, "shm") == 0) {
        xm_log_warn("--provider shm: the local transport replaced it (clients on this host map "
                    "their regions, docs/security.md); serving tcp");
        provider = "tcp";
    }
    if (net_fabric_open(provider, NET_ROLE_TARGET, host,
                        xm__config_get(&cfg, "data-port"), &fab) != XM_OK) {
        goto err_pool;
    }
    if (appl_regions_init(&regions, &pool, &fab) != XM_OK) {
        goto err_fabric;
    }
    regions.tenant_quota = quota;
    /* a revoked tenant's keys stop working at once, not only its sessions */
    regions.keyring = &keyring;
    keyring.on_change = revoke_regions;
    keyring.on_change_arg = &regions;
    if (rpc_listen(host, port, &listen_fd, &bound_port) != XM_OK) {
        goto err_regions;
    }
    char id_path[PATH_MAX + 64];
    const char *id_opt = xm__config_get(&cfg, "identity");
    if (id_opt != NULL && id_opt[0] != '\0') {
        snprintf(id_path, sizeof(id_path), "%s", id_opt);
    } else if (backing == APPL_BACKING_FILE) {
        snprintf(id_path, sizeof(id_path), "%s.identity", path);
    } else {
        /* the port as bound: appliances sharing a secret file each get their own */
        snprintf(id_path, sizeof(id_path), "%s.%s_%u.identity", cred.path, host, bound_port);
    }
    if (rpc_identity_load(id_path, &identity, why, sizeof(why)) != XM_OK) {
        xm_log_error("%s", why);
        goto err_listen;
    }
    /* file regions: their table lives beside the identity (IDENTITY-STEM.files) */
    {
        uint64_t max_file;
        if (xm__config_get_size(&cfg, "xmemd", "max-file-region", &max_file) != 0) {
            goto err_listen;
        }
        char files_path[PATH_MAX + 64];
        size_t il = strlen(id_path);
        if (il > 9 && strcmp(id_path + il - 9, ".identity") == 0)
            snprintf(files_path, sizeof(files_path), "%.*s.files", (int)(il - 9), id_path);
        else snprintf(files_path, sizeof(files_path), "%s.files", id_path);
        const char *protect[] = {cred.path, keyring.tenants_path, id_path,
                                 backing == APPL_BACKING_FILE ? path : NULL, NULL};
        if (appl_files_init(&regions, xm__config_get(&cfg, "file-dir"), max_file, files_path,
                            protect) != XM_OK) {
            xm_log_error("cannot set up file regions (--file-dir, %s)", files_path);
            goto err_listen;
        }
    }


    /* local transport: an AF_UNIX listener beside the identity file */
    const char *lopt = xm__config_get(&cfg, "local-socket");
    if (lopt == NULL || strcmp(lopt, "none") != 0) {
        size_t il = strlen(id_path);
        if (lopt != NULL && lopt[0] != '\0') snprintf(local_path, sizeof(local_path), "%s", lopt);
        else if (il > 9 && strcmp(id_path + il - 9, ".identity") == 0)
            snprintf(local_path, sizeof(local_path), "%.*s.sock", (int)(il - 9), id_path);
        else snprintf(local_path, sizeof(local_path), "%s.sock", id_path);
        if (!appl_pool_own_fd(&pool)) {
            local_path[0] = '\0'; /* file pools: clients on this host use tcp on loopback */
        } else if (net_local_boot_id(boot_id) != XM_OK ||
                   net_local_listen(local_path, &local_fd) != XM_OK) {
            xm_log_warn("no local transport (%s): clients on this host use tcp", local_path);
            local_path[0] = '\0';
            local_fd = -1;
        }
    }
    progress_arg_t parg = {.fab = &fab, .opts = {.spin_us = spin_us}, .stop = 0,
                           .stop_fd = eventfd(0, EFD_CLOEXEC)};
    pthread_t progress;
    if (pthread_create(&progress, NULL, progress_main, &parg) != 0) {
        goto err_listen;
    }
    appl_server_opts_t so = {.listen_fd = listen_fd, .local_fd = local_fd,
                             .local_path = local_path, .boot_id = boot_id, .keyring = &keyring, .identity = &identity,
                             .regions = &regions, .fab = &fab, .max_conns = max_conns,
                             .max_conns_per_tenant = max_per_tenant, .timeout_ms = timeout_ms,
                             .idle_ms = idle_ms};
    if (appl_server_create(&so, &server) != XM_OK) {
        goto err_progress;
    }
    if (appl_metrics_register(&regions) != XM_OK || xm__ops_metrics_start(&cfg, "xmemd", &metrics) != 0) {
        appl_server_destroy(server);
        goto err_progress;
    }
    char sz[32];
    xm_log_info("serving %s %s pool on %s:%u over %s (%s)", xm__format_size(pool.size, sz, sizeof(sz)),
                appl_backing_name(backing), host, bound_port, fab.provider,
                fab.info->fabric_attr->prov_name);
    char control_addr[300];
    snprintf(control_addr, sizeof(control_addr), strchr(host, ':') != NULL ? "[%s]:%u" : "%s:%u",
             host, bound_port);
    if (manager != NULL && manager[0] != '\0') {
        appl_member_opts_t mo = {.manager = manager, .control_addr = control_addr, .domain = domain,
                                 .cred = &cred, .identity = &identity, .regions = &regions, .fab = &fab,
                                 .heartbeat_ms = heartbeat_ms, .timeout_ms = timeout_ms};
        if (appl_member_start(&mo, &member) != XM_OK) {
            xm__metrics_server_stop(metrics);
            appl_server_destroy(server);
            goto err_progress;
        }
    }
    printf("xmemd listening on %s:%u\n", host, bound_port);
    fflush(stdout);

    xm_log_info("identity %s (%s)", identity.id, id_path);
    xm__ops_notify("READY=1"); /* systemd (Type=notify): the listener is up */
    appl_server_run(server, sig_fd, hup_fd);
    xm__ops_notify("STOPPING=1");
    xm_log_info("shutting down");
    rc = 0;
    xm__metrics_server_stop(metrics);
    appl_member_stop(member);
    appl_server_destroy(server);
err_progress:
    appl_metrics_unregister(&regions);
    atomic_store(&parg.stop, 1);
    if (parg.stop_fd >= 0) {
        uint64_t one = 1;
        if (write(parg.stop_fd, &one, sizeof(one)) < 0) { /* the flag alone ends it within 1 s */ }
    }
    pthread_join(progress, NULL);
    if (parg.stop_fd >= 0) close(parg.stop_fd);
err_listen:
    if (local_fd >= 0) {
        close(local_fd);
        unlink(local_path);
    }
    close(listen_fd);
err_regions:
    appl_regions_cleanup(&regions);
err_fabric:
    net_fabric_close(&fab);
err_pool:
    appl_pool_cleanup(&pool);
out:
    xm__config_cleanup(&cfg);
    if (sig_fd >= 0) close(sig_fd);
    if (hup_fd >= 0) close(hup_fd);
    rpc_keyring_cleanup(&keyring);
    sodium_memzero(&identity, sizeof(identity));
    sodium_memzero(&cred, sizeof(cred));
    return rc;
}
