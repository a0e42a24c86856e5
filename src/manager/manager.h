/* manager: xmem-manager, the allocation logic unit. The appliance registry
 * (registry.c), placement (placement.c), the allocation table (alloc.c) kept
 * durable by a store (store.c, SQLite), and the control server (server.c). */
#ifndef XM_MANAGER_H
#define XM_MANAGER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <xmem/xmem.h>

#include "../net/net.h"

typedef struct mgr mgr_t;

/* ---- registry.c: appliances, heartbeats, the manager's calls to them ----- */

/*
 * One appliance. The manager's lock guards every field except the control
 * connection (fd, seq), which conn_lock guards. Lock order: the manager's
 * lock is never held while waiting for conn_lock (calls to appliances run
 * without it); a registry entry is never freed before mgr_destroy.
 */
typedef struct mgr_appliance {
    uint32_t idx;                    /* position in the registry, stable */
    char addr[XM_NAME_MAX + 1];      /* control HOST:PORT: its identity */
    char domain[XM_NAME_MAX + 1];
    char provider[16];
    char backing[16];
    uint8_t fabric_addr[XM_FABRIC_ADDR_MAX];
    size_t fabric_addr_len;
    uint64_t capacity;               /* pool bytes */
    uint64_t extent_size;
    uint64_t reported_used;          /* from the last heartbeat */
    uint64_t reserved;               /* bytes the manager placed there, extent-rounded */
    uint32_t nregions;               /* regions the manager placed there */
    uint64_t boot_id;
    uint64_t last_seen_ns;
    bool up;
    bool validated;                  /* reconciled with the table since it (re)registered */
    pthread_mutex_t conn_lock;
    int fd;                          /* the manager's control connection to it, -1: none */
    uint64_t seq;
} mgr_appliance_t;

/* Find by address or add (down, unvalidated); NULL on no memory. Manager lock held. */
mgr_appliance_t *mgr_registry_get(mgr_t *m, const char *addr, bool create);
/* Handle a registration/heartbeat from an appliance's connection. first: the first on it. */
xm_status_t mgr_registry_heartbeat(mgr_t *m, const Xmem__ApplianceRegister *reg,
                                   const struct sockaddr_storage *peer, bool first,
                                   char *addr_out, size_t addr_len, const char **why_p);
/* The appliance's heartbeat connection closed: mark it down now. */
void mgr_registry_lost(mgr_t *m, const char *addr);
/* Mark appliances whose heartbeat is late as down; run periodically. */
void mgr_registry_sweep(mgr_t *m);
/* One request to an appliance as the manager; reconnects once. why gets the reason. */
xm_status_t mgr_appl_call(mgr_t *m, mgr_appliance_t *a, xm_msg_t *req, xm_msg_t **rep_p,
                          char *why, size_t whylen);
/* Close every appliance connection, free the registry. */
void mgr_registry_cleanup(mgr_t *m);

/* ---- placement.c: the replaceable placement strategy --------------------- */

typedef struct mgr_place_req {
    uint32_t nparts;
    const uint64_t *part_size;       /* bytes of each part */
} mgr_place_req_t;

/*
 * Choose a distinct up appliance for every part, or XM_ERR_NO_SPACE. Manager
 * lock held. The default strategy: capacity-aware, spread across failure
 * domains first, then across appliances, the freest first.
 */
typedef xm_status_t (*mgr_place_fn)(mgr_appliance_t *const *apps, uint32_t napps,
                                    const mgr_place_req_t *req, uint32_t *chosen,
                                    const char **why_p);
xm_status_t mgr_place_spread(mgr_appliance_t *const *apps, uint32_t napps,
                             const mgr_place_req_t *req, uint32_t *chosen, const char **why_p);
/* Bytes a region of size bytes takes on an appliance (whole extents). */
uint64_t mgr_extent_round(const mgr_appliance_t *a, uint64_t size);

/* ---- alloc.c: the allocation table --------------------------------------- */

/* Regions the manager creates are named PREFIX<alloc id>.<part> on their appliance. */
#define MGR_REGION_PREFIX "@alloc-"

typedef struct mgr_part {
    uint32_t appl;                   /* registry index */
    uint64_t region_id;              /* 0 while being created */
    uint64_t key;                    /* the owner's read-write key */
    uint64_t size;
    bool missing;                    /* the appliance came back without it */
} mgr_part_t;

typedef struct mgr_grant {
    char tenant[XM_NAME_MAX + 1];
    xm_access_t access;
} mgr_grant_t;

typedef enum mgr_layout {
    MGR_LAYOUT_SINGLE = 1,
    MGR_LAYOUT_STRIPE = 2,
    /* MGR_LAYOUT_REPLICATE, MGR_LAYOUT_EC: parts carry copies / parity; the
     * descriptor grows a role per part, placement already spreads parts. */
} mgr_layout_t;

typedef struct mgr_policy {
    mgr_layout_t layout;
    uint32_t width;                  /* parts */
    uint64_t chunk;                  /* stripe unit */
} mgr_policy_t;

/* An allocation. The manager's lock guards it; busy ones are not touched by others. */
typedef struct mgr_alloc {
    uint64_t id;
    uint64_t request_id;
    uint64_t size;
    uint64_t generation;
    char owner[XM_NAME_MAX + 1];
    char name[XM_NAME_MAX + 1];
    char policy_text[XM_NAME_MAX + 1];
    mgr_policy_t policy;
    mgr_part_t *parts;
    mgr_grant_t *grants;
    uint32_t ngrants;
    bool busy;                       /* being created or freed */
    struct mgr_alloc *next;
} mgr_alloc_t;

/* "single", "stripe:N", "stripe:N:CHUNK" */
xm_status_t mgr_policy_parse(const char *text, uint64_t default_chunk, mgr_policy_t *p,
                             const char **why_p);
mgr_alloc_t *mgr_alloc_new(uint32_t nparts);
void mgr_alloc_free_mem(mgr_alloc_t *a);
/* Add a restored allocation (store load); takes ownership. */
void mgr_alloc_restore(mgr_t *m, mgr_alloc_t *a);

xm_status_t mgr_alloc_create(mgr_t *m, const char *tenant, const Xmem__AllocRequest *req,
                             xm_msg_t *rep, char *why, size_t whylen);
xm_status_t mgr_alloc_destroy(mgr_t *m, const char *tenant, const Xmem__AllocRef *ref,
                              char *why, size_t whylen);
xm_status_t mgr_alloc_attach(mgr_t *m, const char *tenant, const Xmem__AllocRef *ref,
                             xm_msg_t *rep, char *why, size_t whylen);
xm_status_t mgr_alloc_grant(mgr_t *m, const char *tenant, const Xmem__AllocGrant *g, char *why,
                            size_t whylen);
xm_status_t mgr_alloc_list(mgr_t *m, const char *tenant, xm_msg_t *rep);
xm_status_t mgr_appliance_list(mgr_t *m, xm_msg_t *rep);
/* Free what a reply built by the functions above allocated. */
void mgr_reply_cleanup(xm_msg_t *rep);
/* Compare an appliance's regions with the table: reclaim unknown ones, flag missing ones. */
void mgr_reconcile(mgr_t *m, mgr_appliance_t *a);

/* ---- store.c: the durable allocation table ------------------------------- */

typedef struct mgr_store mgr_store_t;

/*
 * The store behind the table. Calls come without the manager's lock; an
 * implementation serialises itself. SQLite is the embedded default; a
 * clustered store (etcd) implements the same table.
 */
typedef struct mgr_store_ops {
    const char *name;
    xm_status_t (*open)(const char *path, mgr_store_t **st_p, char *why, size_t whylen);
    void (*close)(mgr_store_t *st);
    /* Restore appliances (registry entries, down) and allocations into m. */
    xm_status_t (*load)(mgr_store_t *st, mgr_t *m);
    xm_status_t (*appliance_put)(mgr_store_t *st, const mgr_appliance_t *a);
    /* Insert or replace an allocation with its parts and grants; appl_addr names part i's appliance. */
    xm_status_t (*alloc_put)(mgr_store_t *st, const mgr_alloc_t *a, const char *const *appl_addr);
    xm_status_t (*alloc_delete)(mgr_store_t *st, uint64_t id);
} mgr_store_ops_t;

extern const mgr_store_ops_t mgr_store_sqlite;

/* ---- the manager ----------------------------------------------------------- */

typedef struct mgr_quota {
    char tenant[XM_NAME_MAX + 1];
    uint64_t bytes;
} mgr_quota_t;

typedef struct mgr_opts {
    const net_secret_t *secret;
    const mgr_store_ops_t *store_ops;
    const char *db_path;
    mgr_place_fn place;
    uint64_t default_chunk;
    uint64_t default_quota;          /* 0: none */
    mgr_quota_t *quotas;             /* per-tenant overrides */
    uint32_t nquotas;
    uint32_t down_after_ms;
    uint32_t timeout_ms;
    uint32_t max_conns;
} mgr_opts_t;

/*
 * lock guards the registry, the allocation table and next_id; cond is
 * signalled when a busy allocation settles. Lock order: lock, then nothing
 * (appliance calls and store writes happen without it).
 */
struct mgr {
    mgr_opts_t opts;
    mgr_store_t *store;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    mgr_appliance_t **apps;
    uint32_t napps;
    mgr_alloc_t *allocs;
    uint64_t nallocs;
    uint64_t next_id;
};

xm_status_t mgr_create(const mgr_opts_t *opts, mgr_t **m_p, char *why, size_t whylen);
void mgr_destroy(mgr_t *m);
uint64_t mgr_quota_of(const mgr_t *m, const char *tenant);

/* ---- server.c ----------------------------------------------------------- */

typedef struct mgr_server mgr_server_t;
xm_status_t mgr_server_create(mgr_t *m, int listen_fd, mgr_server_t **s_p);
/* Accept and serve until stop_fd is readable; sweeps heartbeats meanwhile. */
void mgr_server_run(mgr_server_t *s, int stop_fd);
void mgr_server_destroy(mgr_server_t *s);

#endif
