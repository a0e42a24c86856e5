/* manager: xmem-manager, the allocation logic unit. The appliance registry
 * (registry.c), placement (placement.c), the allocation table (alloc.c) kept
 * durable by a store (store.c, SQLite), and the control server (server.c). */
#ifndef XM_MANAGER_H
#define XM_MANAGER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <uthash.h>
#include <xmem/xmem.h>

#include "../xfer/xfer.h"

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
    uint64_t foreign;                /* bytes in use there that the manager did not place (regions
                                      * tenants created directly), from the last heartbeat */
    uint32_t nregions;               /* regions the manager placed there */
    uint64_t boot_id;
    uint64_t last_seen_ns;
    bool up;
    bool validated;                  /* reconciled with the table since it (re)registered */
    bool draining;                   /* xmem appliance drain: its parts are moved off, nothing new placed */
    uint64_t down_since_ns;          /* when it was marked down (0: never since the manager started) */
    uint8_t identity[XM_IDENTITY_PK_LEN]; /* its pinned identity key: who it is, whatever its address */
    bool pinned;
    pthread_mutex_t conn_lock;
    rpc_conn_t conn;                 /* the manager's control session to it, conn.fd -1: none */
} mgr_appliance_t;

/* Find by address or add (down, unvalidated); NULL on no memory. Manager lock held. */
mgr_appliance_t *mgr_registry_get(mgr_t *m, const char *addr, bool create);
/* Handle a registration/heartbeat from an appliance's connection. first: the first on it.
 * nowait: XM_ERR_AGAIN (nothing changed) where it would call the appliance back. */
xm_status_t mgr_registry_heartbeat(mgr_t *m, const Xmem__ApplianceRegister *reg,
                                   const struct sockaddr_storage *peer, const uint8_t transcript[32],
                                   bool first, bool nowait,
                                   char *addr_out, size_t addr_len, const char **why_p);
/* The appliance's heartbeat connection closed: mark it down now. */
void mgr_registry_lost(mgr_t *m, const char *addr);
/* Mark appliances whose heartbeat is late as down; run periodically. */
void mgr_registry_sweep(mgr_t *m);
/* One request to an appliance as the manager; reconnects once. why gets the reason. */
xm_status_t mgr_appl_call(mgr_t *m, mgr_appliance_t *a, xm_msg_t *req, xm_msg_t **rep_p,
                          char *why, size_t whylen);
/* n requests pipelined to an appliance (net_call_many); reconnects once like mgr_appl_call. */
xm_status_t mgr_appl_call_many(mgr_t *m, mgr_appliance_t *a, xm_msg_t *const *reqs, size_t n,
                               xm_msg_t **reps, xm_status_t *statuses, char *why, size_t whylen);
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
/* An appliance for a new copy of part `part` of an allocation whose parts sit on appls[0..n-1]
 * (the part's own entry excluded): up, validated, not draining, not holding another part of it,
 * room for size bytes; another failure domain than the other parts where possible, then the
 * freest. -1 when none. Manager lock held. */
int mgr_place_spare(mgr_appliance_t *const *apps, uint32_t napps, const uint32_t *appls,
                    uint32_t n, uint32_t part, uint64_t size);

/* ---- alloc.c: the allocation table --------------------------------------- */

/* Regions the manager creates are named PREFIX<alloc id>.<part> on their appliance. */
#define MGR_REGION_PREFIX "@alloc-"

typedef struct mgr_part {
    uint32_t appl;                   /* registry index */
    uint64_t region_id;              /* 0 while being created */
    uint64_t key;                    /* the owner's read-write key */
    uint64_t size;
    bool missing;                    /* the appliance came back without it */
    uint8_t state;                   /* MGR_PART_OK, MGR_PART_REBUILDING (in the table: survives a restart) */
} mgr_part_t;

/* A part's state in the table; the same numbers as the wire's PartState. */
enum { MGR_PART_OK = 0, MGR_PART_REBUILDING = 1 };

typedef struct mgr_grant {
    char tenant[XM_NAME_MAX + 1];
    xm_access_t access;
} mgr_grant_t;

/* The same numbers as xm__layout_kind_t (src/common/layout.h) and the table's layout column. */
typedef enum mgr_layout {
    MGR_LAYOUT_SINGLE = 1,
    MGR_LAYOUT_STRIPE = 2,
    MGR_LAYOUT_REPLICATE = 3,        /* every part a copy; part 0 the primary */
    MGR_LAYOUT_EC = 4,               /* Reed-Solomon stripes, each piece of a stripe on its own part */
} mgr_layout_t;

typedef struct mgr_policy {
    mgr_layout_t layout;
    uint32_t width;                  /* parts, all of them (data + redundancy) */
    uint32_t redundancy;             /* parity (ec) or extra copies (replicate) among them */
    uint64_t chunk;                  /* stripe unit (stripe, ec); 0 otherwise */
} mgr_policy_t;

/* The key a retried request is recognised by: its tenant and request id (zero-padded). */
typedef struct mgr_req_key {
    char owner[XM_NAME_MAX + 1];
    uint64_t request_id;
} mgr_req_key_t;

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
    bool keys_stale;                 /* its owner was revoked: the stored owner keys may be dead
                                      * (appliances closed them); fetch fresh ones at attach */
    bool moving;                     /* a part is being rebuilt or moved (rebuild.c) */
    uint64_t move_done, move_total;  /* its progress, bytes (not kept in the table) */
    struct mgr_alloc *next;          /* the queue of freed allocations (manager.c) */
    /* in the table (mgr_table_link): a list, and indexes by id, request and name */
    struct mgr_alloc *tprev, *tnext;
    mgr_req_key_t req_key;
    UT_hash_handle hh_id, hh_req, hh_name;
} mgr_alloc_t;

/* Bytes a tenant's allocations hold (its quota's use), kept as allocations come and go. */
typedef struct mgr_tenant {
    char name[XM_NAME_MAX + 1];
    uint64_t used;
    UT_hash_handle hh;
} mgr_tenant_t;

/* Requests one round of the server's event loop serves together (one commit). */
#define MGR_BATCH_MAX 64

/* "single", "stripe:N[:CHUNK]", "replicate:R", "ec:K+M[:CHUNK]" (xm__layout_policy_parse;
 * default_chunk is the stripe's) */
xm_status_t mgr_policy_parse(const char *text, uint64_t default_chunk, mgr_policy_t *p,
                             const char **why_p);
/* The layout of an allocation of size bytes under p (checked). */
xm_status_t mgr_policy_layout(const mgr_policy_t *p, uint64_t size, xm__layout_t *l_p,
                              const char **why_p);
/* How an allocation's parts sit in failure domains: distinct domains, the most parts in
 * one. Lock held. */
void mgr_alloc_domains(const mgr_t *m, const mgr_alloc_t *a, uint32_t *domains_p,
                       uint32_t *max_p);
mgr_alloc_t *mgr_alloc_new(uint32_t nparts);
void mgr_alloc_free_mem(mgr_alloc_t *a);
/* Free every allocation in the table and its indexes (at exit). */
void mgr_table_clear(mgr_t *m);
/* Add a restored allocation (store load); takes ownership. */
void mgr_alloc_restore(mgr_t *m, mgr_alloc_t *a);

/*
 * A batch of requests served together by the server's event loop (group commit).
 * With a batch, the calls below never wait: where they would (an appliance call, a
 * busy allocation, space to be flushed) they return XM_ERR_AGAIN having changed
 * nothing, and the request is served again without a batch on a worker thread.
 * Their store writes join the store's open batch, and what may only happen once
 * those are durable is recorded here and done by mgr_batch_finish.
 */
typedef struct mgr_batch_op {
    enum { MGR_BATCH_CREATED, MGR_BATCH_FREED } kind;
    mgr_alloc_t *alloc;
    size_t slot;                     /* the caller's index of the request */
} mgr_batch_op_t;

typedef struct mgr_batch {
    mgr_batch_op_t ops[MGR_BATCH_MAX];
    size_t nops;
} mgr_batch_t;

/* After the store's batch_end: committed → the changes take effect (created allocations
 * become usable, freed ones leave the table and their regions are destroyed behind);
 * not committed → each is undone, and failed[slot] is set for the caller's request. */
void mgr_batch_finish(mgr_t *m, mgr_batch_t *b, bool committed, bool *failed);

xm_status_t mgr_alloc_create(mgr_t *m, const char *tenant, const Xmem__AllocRequest *req,
                             mgr_batch_t *b, size_t slot, xm_msg_t *rep, char *why, size_t whylen);
xm_status_t mgr_alloc_destroy(mgr_t *m, const char *tenant, const Xmem__AllocRef *ref,
                              mgr_batch_t *b, size_t slot, char *why, size_t whylen);
xm_status_t mgr_alloc_attach(mgr_t *m, const char *tenant, const Xmem__AllocRef *ref,
                             mgr_batch_t *b, xm_msg_t *rep, char *why, size_t whylen);
xm_status_t mgr_alloc_grant(mgr_t *m, const char *tenant, const Xmem__AllocGrant *g, char *why,
                            size_t whylen);
/* Take tenant g->tenant's grant away (owner only): every part's appliance first (their
 * registrations for that grantee close), then the table. A part whose appliance no longer
 * has the grant counts as done, so a failed revoke can simply be tried again. */
xm_status_t mgr_alloc_revoke(mgr_t *m, const char *tenant, const Xmem__AllocGrant *g, char *why,
                             size_t whylen);
xm_status_t mgr_alloc_list(mgr_t *m, const char *tenant, xm_msg_t *rep);
xm_status_t mgr_appliance_list(mgr_t *m, xm_msg_t *rep);
/* Region calls on an appliance as the manager (alloc.c); destroy treats not-found as done. */
xm_status_t mgr_region_create(mgr_t *m, mgr_appliance_t *ap, const char *tenant, uint64_t size,
                              const char *name, uint64_t *id_p, uint64_t *key_p, char *why,
                              size_t whylen);
xm_status_t mgr_region_destroy(mgr_t *m, mgr_appliance_t *ap, uint64_t id, char *why, size_t whylen);
/* Destroy an allocation's created parts; failures are left to reconciliation. No lock held. */
void mgr_parts_destroy(mgr_t *m, mgr_alloc_t *a);
/* Give an allocation's reserved space back to its appliances. Manager lock held. */
void mgr_alloc_unreserve(mgr_t *m, const mgr_alloc_t *a);
/* Free what a reply built by the functions above allocated. */
void mgr_reply_cleanup(xm_msg_t *rep);
/* Compare an appliance's regions with the table: reclaim unknown ones, flag missing ones. */
void mgr_reconcile(mgr_t *m, mgr_appliance_t *a);
/* Find an allocation by id. Lock held. */
mgr_alloc_t *mgr_alloc_find(mgr_t *m, uint64_t id);
/* Write an allocation to the table (the caller holds it busy, not the lock). */
xm_status_t mgr_alloc_record(mgr_t *m, mgr_alloc_t *a);
/* Let go of a busy allocation. */
void mgr_alloc_release(mgr_t *m, mgr_alloc_t *a);
/* xmem appliance drain | rm: an ApplianceRef request of the administrator; the reply
 * (DrainState, or Empty) freed by mgr_reply_cleanup. */
xm_status_t mgr_appliance_request(mgr_t *m, const char *tenant, const xm_msg_t *msg, xm_msg_t *rep,
                                  char *why, size_t whylen);
/* xmem appliance rm / drain (ApplianceRef requests). */
xm_status_t mgr_appliance_remove(mgr_t *m, const char *addr, char *why, size_t whylen);
xm_status_t mgr_appliance_drain(mgr_t *m, const char *addr, bool stop, char *why, size_t whylen);
/* Parts still on appliance addr: replicate ones (moved by a drain) and others (not moved). */
xm_status_t mgr_appliance_drain_state(mgr_t *m, const char *addr, uint32_t *moving_p,
                                      uint32_t *unmovable_p, uint64_t *first_p);

/* ---- rebuild.c: restoring redundancy, draining ---------------------------------
 *
 * A thread that, for every replicate allocation with a part on an appliance down longer than
 * rebuild_after_ms (or on a draining appliance), places a new copy elsewhere, publishes it as
 * rebuilding (generation bumped), fences writers of older descriptors through the lock words,
 * copies appliance to appliance (RegionCopy), recopies the units written meanwhile under their
 * locks, and marks the part ok. Parts left rebuilding by a manager that stopped are resumed.
 */
xm_status_t mgr_rebuild_start(mgr_t *m);
void mgr_rebuild_stop(mgr_t *m);
/* Wake the thread (an appliance went down or a drain started). */
void mgr_rebuild_kick(mgr_t *m);

/* ---- manager.c: the background thread: stock of fresh regions, deferred destroys ----
 *
 * A stock entry is a region made ahead on one appliance, owned from its creation by
 * the tenant it is for, never handed out before: an allocation of that tenant and
 * part size on that appliance takes it instead of waiting for a region create. Its
 * space is reserved on the appliance (it counts in `reserved`, not in `nregions`).
 * An entry nobody asked for during stock_idle_ms is destroyed. Freed allocations
 * leave the table at once and their regions are destroyed behind the reply; their
 * space stays reserved until the appliance has destroyed them (and revoked keys).
 */
typedef struct mgr_stock {
    uint32_t appl;
    char tenant[XM_NAME_MAX + 1];
    uint64_t size;
    uint64_t region_id;              /* 0 while queued to be made */
    uint64_t key;
    uint64_t last_use_ns;            /* when its kind was last asked for */
    struct mgr_stock *next;
} mgr_stock_t;

/* Start / stop the background thread (stop destroys the stock and what is queued). */
xm_status_t mgr_bg_start(mgr_t *m);
void mgr_bg_stop(mgr_t *m);
/* Take a ready stock region for (appliance, tenant, size); its space moves to the caller's
 * reservation. Lock held. */
bool mgr_stock_take(mgr_t *m, uint32_t appl, const char *tenant, uint64_t size, uint64_t *id_p,
                    uint64_t *key_p);
/* An appliance holding a ready stock region for (tenant, size), or -1. Lock held. */
int mgr_stock_pick(mgr_t *m, const char *tenant, uint64_t size);
/* Note demand for (appliance, tenant, size): queue a stock region if below the limit. Lock held. */
void mgr_stock_want(mgr_t *m, uint32_t appl, const char *tenant, uint64_t size);
/* Queue a freed allocation (out of the table, unlinked) for its regions' destruction. Lock held. */
void mgr_free_later(mgr_t *m, mgr_alloc_t *a);
/* Destroy the stock and wait for queued destroys (space they hold). Lock held; false: nothing to wait for. */
bool mgr_bg_flush(mgr_t *m);
/* Is region id on appliance a stock region (or one being made there: *busy_p)? Lock held. */
bool mgr_stock_known(mgr_t *m, uint32_t appl, uint64_t region_id, bool *busy_p);
/* Drop stock entries of an appliance whose region ids are not in ids[] (it restarted). Lock held. */
void mgr_stock_forget_missing(mgr_t *m, uint32_t appl, const uint64_t *ids, size_t n);

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
    /* the appliance (same identity) now answers at new_addr: its parts follow it */
    xm_status_t (*appliance_rename)(mgr_store_t *st, const char *old_addr, const char *new_addr);
    /* Insert or replace an allocation with its parts and grants; appl_addr names part i's appliance. */
    xm_status_t (*alloc_put)(mgr_store_t *st, const mgr_alloc_t *a, const char *const *appl_addr);
    xm_status_t (*alloc_delete)(mgr_store_t *st, uint64_t id);
    /* forget an appliance (xmem appliance rm; it holds no parts); NULL: not supported */
    xm_status_t (*appliance_delete)(mgr_store_t *st, const char *addr);
    /* Group commit: the calling thread's puts and deletes between batch_begin and
     * batch_end share one transaction (each one undone alone if it fails); other
     * threads' calls wait until batch_end. A change in a batch is durable only once
     * batch_end(commit) returned XM_OK. */
    xm_status_t (*batch_begin)(mgr_store_t *st);
    xm_status_t (*batch_end)(mgr_store_t *st, bool commit);
} mgr_store_ops_t;

extern const mgr_store_ops_t mgr_store_sqlite;

/* ---- the manager ----------------------------------------------------------- */

typedef struct mgr_quota {
    char tenant[XM_NAME_MAX + 1];
    uint64_t bytes;
} mgr_quota_t;

typedef struct mgr_opts {
    const rpc_cred_t *cred;          /* the cluster credential: the manager's own */
    rpc_keyring_t *keyring;          /* who may connect */
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
    uint32_t max_conns_per_tenant;
    uint32_t idle_ms;                /* authenticated connections idle this long are closed; 0: never */
    uint32_t stock_per_kind;         /* ready regions per (appliance, tenant, size); 0: no stock */
    uint64_t stock_max_size;         /* parts larger than this are never stocked */
    uint32_t stock_idle_ms;          /* unasked-for stock is destroyed after this */
    uint32_t spin_us;                /* a connection polls this long for its next request */
    uint32_t rebuild_after_ms;       /* rebuild parts of an appliance down this long; 0: never */
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
    mgr_alloc_t *allocs;             /* the table: a list (tnext) ... */
    mgr_alloc_t *by_id, *by_req, *by_name; /* ... and its indexes */
    mgr_tenant_t *tenants;
    uint64_t nallocs;
    uint64_t next_id;
    /* the background thread (manager.c); bg_cond wakes it, cond tells flushers it progressed */
    pthread_t bg;
    bool bg_running, bg_stop, bg_drain, bg_idle;
    pthread_cond_t bg_cond;
    mgr_alloc_t *dying;              /* freed allocations whose regions are to be destroyed */
    mgr_stock_t *stock;              /* ready stock regions */
    mgr_stock_t *to_make;            /* stock regions queued to be made (space reserved) */
    uint32_t bg_busy;                /* calls the thread is making without the lock */
    uint32_t making_appl;            /* appliance a stock region is being made on, or UINT32_MAX */
    uint64_t stock_seq, stock_nonce;
    /* rebuild.c's thread; rb_cond (CLOCK_MONOTONIC) wakes it */
    pthread_t rb;
    bool rb_running, rb_stop;
    pthread_cond_t rb_cond;
};

xm_status_t mgr_create(const mgr_opts_t *opts, mgr_t **m_p, char *why, size_t whylen);
void mgr_destroy(mgr_t *m);
uint64_t mgr_quota_of(const mgr_t *m, const char *tenant);
/* The tenant registry changed (the keyring's on_change): allocations of owners no longer in
 * it get keys_stale. */
void mgr_tenants_changed(void *arg);

/* ---- server.c ----------------------------------------------------------- */

typedef struct mgr_server mgr_server_t;
xm_status_t mgr_server_create(mgr_t *m, int listen_fd, mgr_server_t **s_p);
/* Accept and serve until stop_fd is readable; sweeps heartbeats meanwhile; hup_fd readable
 * (SIGHUP): reload the tenant registry. */
void mgr_server_run(mgr_server_t *s, int stop_fd, int hup_fd);
void mgr_server_destroy(mgr_server_t *s);

#endif
