/* A highly available manager group (leader.c): managers sharing one allocation table in
 * etcd (store_etcd.c) elect a leader through an etcd lease; the others stand by. */
#ifndef XM_MGR_HA_H
#define XM_MGR_HA_H

#include <stdbool.h>
#include <stdint.h>

#include "manager.h"

typedef struct mgr_ha_opts {
    const char *endpoints;           /* etcd: http://HOST:PORT[,...] */
    const char *prefix;              /* every key of the group under it ("/xmem") */
    const char *advertise;           /* HOST:PORT clients reach this manager at */
    uint32_t lease_ttl_s;            /* a dead leader is replaced this long after its last renewal */
    uint32_t poll_ms;                /* a standby looks for a vacant leadership this often */
} mgr_ha_opts_t;

/* Serve as one of the group on listen_fd until sig_fd is readable: stand by (answering
 * every peer with where the leader is) until elected, then lead (load the table, serve)
 * until stopped or deposed, and stand by again. Returns the exit code. */
int mgr_ha_run(const mgr_opts_t *o, const mgr_ha_opts_t *ha, int listen_fd, int sig_fd, int hup_fd);

/* A leader elected moments ago waits for the appliances of its table to register (at most
 * 3 x down_after_ms, 3 s at least) before it places allocations: true while so and nowait (the caller
 * retries on a worker); otherwise waits, then false. Always false outside a group. */
bool mgr_ha_settling(mgr_t *m, bool nowait);

/* ---- for the etcd store ---- */
/* The group's key prefix, the leader key and this process's leadership revision (0: not
 * the leader). Every table write is a txn guarded by the leader key's create revision. */
const char *mgr_ha_prefix(void);
bool mgr_ha_fence(char *key, size_t keylen, int64_t *rev_p);
/* A guarded write found the leadership gone: stop leading at once. */
void mgr_ha_deposed(const char *why);

extern const mgr_store_ops_t mgr_store_etcd;

#endif
