/* xmem-manager: parse config, create the manager and its server, run, destroy. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "../common/common.h"
#include "../common/config.h"
#include "../ops/ops.h"
#include "ha.h"
#include "manager.h"
#include "metrics.h"

static xm_config_entry_t entries[] = {
    {"listen", "127.0.0.1:7300", "HOST:PORT of the control listener (PORT 0: any free port)", 0, 0},
    {"db", NULL, "path of the allocation table (SQLite, WAL); created when missing", 0, 0},
    {"store", "sqlite", "where the allocation table lives: sqlite (--db, one manager) | etcd (--etcd: a group of managers electing a leader, docs/ha.md)", 0, 0},
    {"etcd", "", "etcd endpoints of --store etcd: http://HOST:PORT[,http://HOST:PORT...]", 0, 0},
    {"etcd-prefix", "/xmem", "key prefix of this manager group in etcd", 0, 0},
    {"advertise", "", "HOST:PORT peers reach this manager at (--store etcd; empty: --listen's)", 0, 0},
    {"lease-ttl", "2", "seconds a dead leader keeps the leadership (--store etcd)", 0, 0},
    {"secret-file", NULL, "file holding the cluster secret (xmem secret new PATH)", 0, 0},
    {"tenants", "", "tenant registry (xmem tenant add); empty: SECRET-FILE.tenants", 0, 0},
    {"down-after-ms", "2000", "an appliance without a heartbeat this long is down", 0, 0},
    {"rebuild-after-ms", "30000", "rebuild the replicate parts of an appliance down this long elsewhere (0: never)", 0, 0},
    {"stripe-chunk", "1M", "stripe unit when a policy names none (stripe:N)", 0, 0},
    {"quota", "0", "bytes each tenant may hold (0: no limit)", 0, 0},
    {"quotas", "", "per-tenant quotas: TENANT=SIZE[,TENANT=SIZE...]", 0, 0},
    {"max-conns", "4096", "control connections served at once", 0, 0},
    {"max-conns-per-tenant", "256", "control connections one tenant may hold at once", 0, 0},
    {"idle-timeout-ms", "600000", "an authenticated control connection idle this long is closed (0: never)", 0, 0},
    {"timeout-ms", "5000", "bound on each control message and on each call to an appliance", 0, 0},
    {"stock", "16", "fresh regions made ahead per appliance, tenant and size in use (0: none)", 0, 0},
    {"stock-max-size", "4M", "parts larger than this are never made ahead", 0, 0},
    {"stock-idle-ms", "1000", "regions made ahead and not asked for this long are destroyed", 0, 0},
    {"spin-us", "0", "after serving requests, poll for more this long before sleeping", 0, 0},
    {"log-level", "info", "error | warn | info | debug", 0, 0},
    XM_OPS_CONFIG_ENTRIES,
};

static const char synopsis[] =
    "usage: xmem-manager --db PATH --secret-file PATH [--OPTION VALUE ...] [--print-config]\n"
    "Hand out memory of registered appliances as allocations.\n\n";


/* "alice=1G,bob=2G" */
static int parse_quotas(const char *text, mgr_quota_t **q_p, uint32_t *n_p)
{
    *q_p = NULL;
    *n_p = 0;
    if (text == NULL || text[0] == '\0') return 0;
    char *copy = strdup(text), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        uint64_t bytes;
        if (eq == NULL || (*eq = '\0', !xm__name_valid(tok)) || xm__parse_size(eq + 1, &bytes) != XM_OK) {
            fprintf(stderr, "xmem-manager: --quotas: expected TENANT=SIZE, got '%s'\n", tok);
            rc = -1;
            break;
        }
        mgr_quota_t *q = realloc(*q_p, (*n_p + 1) * sizeof(*q));
        if (q == NULL) {
            rc = -1;
            break;
        }
        *q_p = q;
        snprintf(q[*n_p].tenant, sizeof(q->tenant), "%s", tok);
        q[*n_p].bytes = bytes;
        (*n_p)++;
    }
    free(copy);
    return rc;
}

int main(int argc, char **argv)
{
    xm__log_set_ident("xmem-manager");
    /* no process of our user reaches the table's keys through /proc/PID/{fd,mem} or process_vm_readv */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    xm_config_t cfg = {entries, XM_ARRAY_LEN(entries), "/etc/xmem/manager.conf"};
    xm__config_init(&cfg);
    int done = xm__config_parse_args(&cfg, argc, argv, "xmem-manager", synopsis);
    if (done >= 0) {
        xm__config_cleanup(&cfg);
        return done;
    }
    int rc = 2;
    mgr_quota_t *quotas = NULL;
    if (xm__ops_log_setup(&cfg, "xmem-manager") != 0) goto out;
    char host[256], port[16];
    if (xm__config_get_hostport(&cfg, "xmem-manager", "listen", host, sizeof(host), port, sizeof(port)) != 0) {
        goto out;
    }
    const char *db = xm__config_get(&cfg, "db");
    const char *store = xm__config_get(&cfg, "store");
    bool ha_group = store != NULL && strcmp(store, "etcd") == 0;
    if (!ha_group && (store == NULL || strcmp(store, "sqlite") != 0)) {
        fprintf(stderr, "xmem-manager: --store: sqlite or etcd, not '%s'\n", store ? store : "");
        goto out;
    }
    if (ha_group) db = xm__config_get(&cfg, "etcd");
    if (ha_group && (db == NULL || db[0] == '\0')) {
        fprintf(stderr, "xmem-manager: --store etcd needs --etcd http://HOST:PORT[,...]\n");
        goto out;
    }
    if (db == NULL || db[0] == '\0') {
        fprintf(stderr, "xmem-manager: --db PATH is required (the allocation table)\n");
        goto out;
    }
    mgr_opts_t o = {0};
    uint64_t chunk;
    if (xm__config_get_size(&cfg, "xmem-manager", "stripe-chunk", &chunk) != 0) goto out;
    if (chunk < 4096 || (chunk & (chunk - 1)) != 0) {
        fprintf(stderr, "xmem-manager: --stripe-chunk: a power of two from 4K\n");
        goto out;
    }
    if (xm__config_get_size(&cfg, "xmem-manager", "stock-max-size", &o.stock_max_size) != 0 ||
        xm__config_get_size(&cfg, "xmem-manager", "quota", &o.default_quota) != 0) {
        goto out;
    }
    if (parse_quotas(xm__config_get(&cfg, "quotas"), &quotas, &o.nquotas) != 0 ||
        xm__config_get_u32(&cfg, "xmem-manager", "down-after-ms", &o.down_after_ms) != 0 ||
        xm__config_get_u32(&cfg, "xmem-manager", "rebuild-after-ms", &o.rebuild_after_ms) != 0 ||
        xm__config_get_u32(&cfg, "xmem-manager", "max-conns", &o.max_conns) != 0 ||
        xm__config_get_u32(&cfg, "xmem-manager", "timeout-ms", &o.timeout_ms) != 0 ||
        xm__config_get_u32(&cfg, "xmem-manager", "stock", &o.stock_per_kind) != 0 ||
        xm__config_get_u32(&cfg, "xmem-manager", "spin-us", &o.spin_us) != 0 ||
        xm__config_get_u32(&cfg, "xmem-manager", "stock-idle-ms", &o.stock_idle_ms) != 0) {
        goto out;
    }
    rpc_cred_t cred;
    rpc_keyring_t keyring;
    char why[512];
    if (rpc_cred_load(xm__config_get(&cfg, "secret-file"), &cred, why, sizeof(why)) != XM_OK ||
        rpc_keyring_init(&keyring, &cred, xm__config_get(&cfg, "tenants"), why, sizeof(why)) != XM_OK) {
        fprintf(stderr, "xmem-manager: %s\n", why);
        goto out;
    }
    if (xm__config_get_u32(&cfg, "xmem-manager", "max-conns-per-tenant", &o.max_conns_per_tenant) != 0 ||
        xm__config_get_u32(&cfg, "xmem-manager", "idle-timeout-ms", &o.idle_ms) != 0) {
        rpc_keyring_cleanup(&keyring);
        goto out;
    }
    o.cred = &cred;
    o.keyring = &keyring;
    o.db_path = db;
    o.default_chunk = chunk;
    o.quotas = quotas;

    int sig_fd, hup_fd;
    rpc_daemon_signals(&sig_fd, &hup_fd);

    rc = 1;
    xm_metrics_server_t *metrics = NULL;
    if (xm__ops_metrics_start(&cfg, "xmem-manager", &metrics) != 0) goto err_sig;
    mgr_t *m = NULL;
    mgr_server_t *server = NULL;
    int listen_fd = -1;
    uint16_t bound = 0;
    if (ha_group) {
        /* a group: stand by until elected, then lead (src/manager/leader.c) */
        uint32_t ttl = 0;
        if (xm__config_get_u32(&cfg, "xmem-manager", "lease-ttl", &ttl) != 0 || ttl < 2 || ttl > 60) {
            fprintf(stderr, "xmem-manager: --lease-ttl: seconds from 2 to 60\n");
            goto err_sig;
        }
        o.store_ops = &mgr_store_etcd;
        if (rpc_listen(host, port, &listen_fd, &bound) != XM_OK) goto err_sig;
        char adv[300];
        const char *a = xm__config_get(&cfg, "advertise");
        if (a == NULL || a[0] == '\0') snprintf(adv, sizeof(adv), "%s:%u", host, bound);
        else snprintf(adv, sizeof(adv), "%s", a);
        mgr_ha_opts_t hao = {.endpoints = db, .prefix = xm__config_get(&cfg, "etcd-prefix"),
                             .advertise = adv, .lease_ttl_s = ttl};
        printf("xmem-manager listening on %s:%u\n", host, bound);
        fflush(stdout);
        xm__ops_notify("READY=1"); /* systemd (Type=notify): standing by, listening */
        rc = mgr_ha_run(&o, &hao, listen_fd, sig_fd, hup_fd);
        xm__ops_notify("STOPPING=1");
        xm_log_info("shutting down");
        close(listen_fd);
        goto err_sig;
    }
    if (mgr_create(&o, &m, why, sizeof(why)) != XM_OK) {
        fprintf(stderr, "xmem-manager: %s\n", why);
        goto err_sig;
    }
    if (mgr_metrics_register(m) != XM_OK) goto err_mgr;
    if (rpc_listen(host, port, &listen_fd, &bound) != XM_OK) goto err_mgr;
    if (mgr_server_create(m, listen_fd, &server) != XM_OK) goto err_listen;
    xm_log_info("managing allocations on %s:%u, table %s", host, bound, db);
    printf("xmem-manager listening on %s:%u\n", host, bound);
    fflush(stdout);
    xm__ops_notify("READY=1"); /* systemd (Type=notify): the listener is up */
    mgr_server_run(server, sig_fd, hup_fd);
    xm__ops_notify("STOPPING=1");
    xm_log_info("shutting down");
    rc = 0;
    mgr_server_destroy(server);
err_listen:
    close(listen_fd);
err_mgr:
    mgr_metrics_unregister(m);
    mgr_destroy(m);
err_sig:
    xm__metrics_server_stop(metrics);
    if (sig_fd >= 0) close(sig_fd);
    if (hup_fd >= 0) close(hup_fd);
    rpc_keyring_cleanup(&keyring);
    sodium_memzero(&cred, sizeof(cred));
out:
    free(quotas);
    xm__config_cleanup(&cfg);
    return rc;
}
