/* appliance: the pool, its extents, regions and their registrations, the
 * control server. xmemd's main.c drives these. */
#ifndef XM_APPLIANCE_H
#define XM_APPLIANCE_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <uthash.h>
#include <xmem/xmem.h>

#include "../xfer/local.h"
#include "../xfer/xfer.h"

/* ---- pool.c: backing memory and the extent allocator -------------------- */

typedef enum appl_backing {
    APPL_BACKING_MEMFD,
    APPL_BACKING_HUGETLB,
    APPL_BACKING_FILE,
} appl_backing_t;

/* Not thread-safe: the region table's lock guards it. */
typedef struct appl_pool {
    int fd;
    appl_backing_t backing;
    char path[PATH_MAX];     /* file backing */
    uint64_t size;           /* bytes served: nextents * extent_size */
    uint64_t extent_size;
    uint32_t nextents;
    uint32_t used;           /* extents held by regions */
    uint64_t *bitmap;        /* bit set: extent in use */
} appl_pool_t;

/* "memfd", "hugetlb", "file:PATH" */
xm_status_t appl_backing_parse(const char *text, appl_backing_t *backing_p, char *path,
                               size_t pathlen);
const char *appl_backing_name(appl_backing_t backing);
/* Reserve (never touch) a pool of size bytes, rounded down to whole extents. */
xm_status_t appl_pool_init(appl_pool_t *pool, appl_backing_t backing, const char *path,
                           uint64_t size, uint64_t extent_size);
void appl_pool_cleanup(appl_pool_t *pool);
/* Take n free extents, all or none; XM_ERR_NO_SPACE when fewer are free. */
xm_status_t appl_pool_alloc(appl_pool_t *pool, uint32_t n, uint32_t *extents);
/* Mark extents used (restoring a file pool); XM_ERR_INVALID when out of range or taken. */
xm_status_t appl_pool_claim(appl_pool_t *pool, const uint32_t *extents, uint32_t n);
/* Return extents; their memory goes back to the OS (hole punched) and reads as zeros. */
void appl_pool_free(appl_pool_t *pool, const uint32_t *extents, uint32_t n);
/* Map extents contiguously at a fresh window; *window_p spans n * extent_size. */
xm_status_t appl_pool_map(appl_pool_t *pool, const uint32_t *extents, uint32_t n,
                          void **window_p);
/* memfd and hugetlb pools: a region's memory is a memfd of its own (the local transport
 * hands it to clients on this host; the pool keeps only the extent accounting). */
bool appl_pool_own_fd(const appl_pool_t *pool);
/* Bytes of a region memfd for n extents: the window, then one trailer page (hugetlb: one
 * huge page) whose first word is set when the memfd is retired (APPL_TRAILER_RETIRED). */
size_t appl_pool_memfd_len(const appl_pool_t *pool, uint32_t n);
/* A region's own sealed memfd for n extents, mapped at a fresh window. */
xm_status_t appl_pool_map_own(appl_pool_t *pool, uint32_t n, void **window_p, int *fd_p);
/* Map memfd fd over an existing window of n extents (a region moving to a fresh memfd). */
xm_status_t appl_pool_remap_own(appl_pool_t *pool, uint32_t n, void *window, int fd);
/* Mark a region memfd retired (its trailer word) and free its pages: holders that still
 * map it read zeros and see the mark; their later writes stay in pages of their own. */
void appl_pool_retire_own(appl_pool_t *pool, uint32_t n, int fd);

/* ---- region.c: regions, grants, registrations, persistence -------------- */

typedef struct appl_grant {
    char tenant[XM_NAME_MAX + 1];
    xm_access_t access;     /* the most this tenant may do */
    struct fid_mr *mr_rw;   /* registration with write rights, when access allows */
    uint64_t key_rw;
    struct fid_mr *mr_ro;   /* read-only registration, made on first read-only open */
    uint64_t key_ro;
} appl_grant_t;

typedef struct appl_region {
    uint64_t id;
    uint64_t size;
    int memfd;              /* its own memory (memfd/hugetlb pools), -1: a window on the pool file */
    char (*holders)[XM_NAME_MAX + 1]; /* tenants its memfd was handed to (local transport) */
    uint32_t nholders;
    char name[XM_NAME_MAX + 1];
    uint32_t nextents;
    uint32_t *extents;
    void *window;
    appl_grant_t *grants;   /* grants[0] is the owner */
    uint32_t ngrants;
    struct appl_cow *cow;   /* virtual copy (cow.c): set while it has copies or is an
                             * unmaterialized copy; then REGION_FD does not hand it out */
    uint64_t copy_of;       /* virtual copy: the region it was copied from (0: none) */
    uint32_t copy_kind;     /* 0, XM_COPY_SNAPSHOT or XM_COPY_CLONE */
    /* file regions (file_region.c): no extents; the window maps the file itself */
    int file_fd;            /* the file, open and flocked while the region exists; -1: none */
    bool read_only;         /* mapped and registered read-only: no grant gives write */
    char *file_path;        /* as resolved at create */
    int bus_slot;           /* its entry in the SIGBUS table (a file that shrinks), -1: none */
    struct appl_region *prev, *next;  /* the table's list */
    UT_hash_handle hh_id, hh_name;    /* and its indexes */
} appl_region_t;

typedef struct appl_grave {
    void *window;
    size_t len;
    uint64_t since_ns;
    struct appl_grave *next;
} appl_grave_t;

/*
 * The region table. lock guards every field and the pool; it is held across
 * registration calls (fi_mr_reg is thread-safe and never blocks on peers).
 * Control threads take it; the progress thread never does.
 */
typedef struct appl_regions {
    pthread_mutex_t lock;
    appl_pool_t *pool;
    net_fabric_t *fab;
    appl_region_t *head;
    appl_region_t *by_id, *by_name;   /* indexes of the same regions */
    uint32_t count;
    uint64_t next_id;
    char meta_path[PATH_MAX + 8]; /* file pools: where the table is kept; "" otherwise */
    appl_grave_t *graves;         /* destroyed regions' windows, least recently cleaned first */
    appl_grave_t *graves_last;    /* (see region.c) */
    uint64_t graves_len;          /* bytes of address space they hold */
    uint32_t graves_count;        /* how many (each is a mapping) */
    uint64_t tenant_quota;        /* bytes of regions a tenant may create directly; 0: no limit */
    rpc_keyring_t *keyring;       /* who may hold keys (appl_regions_revoke) */
    struct net_local_live *live;  /* local clients' liveness page (src/xfer/local.h), or NULL */
    struct appl_cow_eng *cow;     /* virtual copy's userfaultfd handler (cow.c), made on first use */
    struct appl_files *files;     /* file regions' settings and table (file_region.c), or NULL */
} appl_regions_t;

/* A region as a client sees it: the registration to use. */
typedef struct appl_desc {
    uint64_t id, size, key;
    xm_access_t access;
    char name[XM_NAME_MAX + 1];
} appl_desc_t;

xm_status_t appl_regions_init(appl_regions_t *t, appl_pool_t *pool, net_fabric_t *fab);
/* Persist shut-down state and release everything (regions of a file pool stay on disk). */
void appl_regions_cleanup(appl_regions_t *t);
xm_status_t appl_region_create(appl_regions_t *t, const char *owner, uint64_t size,
                               const char *name, appl_desc_t *desc, const char **why_p);
xm_status_t appl_region_open(appl_regions_t *t, const char *tenant, uint64_t id,
                             const char *name, xm_access_t access, appl_desc_t *desc,
                             const char **why_p);
xm_status_t appl_region_destroy(appl_regions_t *t, const char *tenant, uint64_t id,
                                const char *name, const char **why_p);
xm_status_t appl_region_grant(appl_regions_t *t, const char *tenant, uint64_t id,
                              const char *name, const char *grantee, xm_access_t access,
                              const char **why_p);
xm_status_t appl_region_stat(appl_regions_t *t, const char *tenant, uint64_t id,
                             const char *name, xm_region_info_t *info, const char **why_p);
/* Remove grantee's grant (the owner only): its registrations close, so the keys handed out
 * under it stop working at once, and a memfd it mapped stops being the region. */
xm_status_t appl_region_revoke_grant(appl_regions_t *t, const char *tenant, uint64_t id,
                                     const char *name, const char *grantee, const char **why_p);
typedef struct appl_grant_entry {
    char tenant[XM_NAME_MAX + 1];
    xm_access_t access;
} appl_grant_entry_t;
/* The grants of a region besides its owner's: to its owner only (others get none);
 * *list_p is malloc'd (NULL when *n_p is 0). */
xm_status_t appl_region_grants(appl_regions_t *t, const char *tenant, uint64_t id,
                               const char *name, appl_grant_entry_t **list_p, size_t *n_p);
/*
 * Local transport: a descriptor of the region's memfd for tenant, with the rights of its
 * grant (read-write: the memfd; read-only: a read-only reopen), checked as appl_region_open
 * checks them; or, with key != 0, with the rights of the registration that key names (the
 * parts of manager allocations: whoever holds the key may already use it over the fabric).
 * XM_ERR_INVALID for regions on a pool file (they stay on the fabric). *fd_p is the caller's.
 */
xm_status_t appl_region_fd(appl_regions_t *t, const char *tenant, uint64_t id, const char *name,
                           uint64_t key, xm_access_t access, appl_desc_t *desc, int *fd_p,
                           const char **why_p);
/* Regions the tenant owns or was granted; *infos_p is malloc'd. */
xm_status_t appl_region_list(appl_regions_t *t, const char *tenant, xm_region_info_t **infos_p,
                             size_t *count_p);
void appl_pool_info(appl_regions_t *t, xm_appliance_info_t *info);
/* The tenant registry changed: close every registration of tenants it no longer holds, so
 * the keys they were given stop working at once (re-made if the tenant returns and opens). */
void appl_regions_revoke(appl_regions_t *t, rpc_keyring_t *kr);
/* Bytes of the regions tenants created directly (not named '@...' by the manager). */
uint64_t appl_regions_direct_bytes(appl_regions_t *t);

/* ---- file_region.c: existing files exposed as regions (docs/file-regions.md) ---- */

/* Allow file regions under dirs (colon-separated, each resolved with realpath; NULL or "":
 * file regions stay off), of at most max_size bytes (0: no limit); never a file in the
 * directory of one of protect (NULL-terminated: xmemd's pool, secret, identity...); keep their
 * table at table_path ("" : not kept) and restore the regions it lists (a file that can no
 * longer be exposed is logged and dropped). Call once, after appl_regions_init. */
xm_status_t appl_files_init(appl_regions_t *t, const char *dirs, uint64_t max_size,
                            const char *table_path, const char *const *protect);
/* A file never to be exposed, wherever it is (the pool, its metadata, the secret...). */
void appl_files_protect(appl_regions_t *t, const char *path);
xm_status_t appl_region_create_file(appl_regions_t *t, const char *owner, const char *path,
                                    bool read_only, const char *name, appl_desc_t *desc,
                                    const char **why_p);
/* Make [offset, offset + length) of a file region (or a file pool's region) durable: msync
 * MS_SYNC. length 0: to the end. */
xm_status_t appl_region_sync(appl_regions_t *t, const char *tenant, uint64_t id, const char *name,
                             uint64_t offset, uint64_t length, const char **why_p);

/* region.c's table, for file_region.c (lock held by the caller) */
appl_region_t *appl__region_new(appl_regions_t *t, uint64_t size, const char *name,
                                const char *owner);
void appl__region_free(appl_region_t *r);
/* r's grants besides its owner's, as stored records: into grants[] with pointers in gptrs[]
 * (room for r->ngrants each); returns how many. */
struct Xmem__PoolGrant;
size_t appl__grants_encode(const appl_region_t *r, struct Xmem__PoolGrant *grants,
                           struct Xmem__PoolGrant **gptrs);
void appl__table_add(appl_regions_t *t, appl_region_t *r);
void appl__table_del(appl_regions_t *t, appl_region_t *r);
appl_region_t *appl__region_find(appl_regions_t *t, uint64_t id, const char *name);
appl_grant_t *appl__grant_add(appl_region_t *r, const char *tenant, xm_access_t access);
xm_status_t appl__visible(appl_regions_t *t, const char *tenant, uint64_t id, const char *name,
                          appl_region_t **r_p, appl_grant_t **g_p, const char **why_p);
void appl__region_release(appl_regions_t *t, appl_region_t *r, bool give_back);
/* file_region.c's side: persist the file regions; release a region's file (window gone) */
xm_status_t appl__files_save(appl_regions_t *t);
void appl__file_release(appl_regions_t *t, appl_region_t *r);
/* a file region whose file shrank or failed a read while mapped (SIGBUS caught) */
bool appl__file_broken(const appl_region_t *r);
void appl__files_cleanup(appl_regions_t *t);

/* ---- cow.c: virtual copy (snapshot, clone), copy-on-write by userfaultfd ---- */

#define XM_COPY_SNAPSHOT 1u
#define XM_COPY_CLONE 2u

/* region.c for cow.c (lock held): appl_region_create under the lock, *r_p the new region;
 * the region a tenant may see; a region whose memfd local clients hold moved to a fresh one */
xm_status_t appl__region_create_locked(appl_regions_t *t, const char *owner, uint64_t size,
                                       const char *name, appl_desc_t *desc, appl_region_t **r_p,
                                       const char **why_p);
xm_status_t appl__cow_visible(appl_regions_t *t, const char *tenant, uint64_t id,
                              const char *name, appl_region_t **r_p, appl_grant_t **g_p,
                              const char **why_p);
void appl__region_fence(appl_regions_t *t, appl_region_t *r);

/* A copy of region (id, name) named new_name, owned by tenant: read-only (a snapshot) or
 * writable (a clone). Costs a write-protect of the source's window; bytes are copied as
 * the source or the copy is written (docs/virtual-copy.md). */
xm_status_t appl_cow_copy(appl_regions_t *t, const char *tenant, uint64_t id, const char *name,
                          const char *new_name, bool writable, appl_desc_t *desc,
                          const char **why_p);
/* A region leaves the table (lock held): its copies are materialized first, and it stops
 * being one. Call before its window goes. */
void appl_cow_release(appl_regions_t *t, appl_region_t *r);
/* Stop the handler and free every copy state (shutting down; before the regions go). */
void appl_cow_cleanup(appl_regions_t *t);

/* ---- server.c: control connections (the rpc event-loop server) ----------- */

typedef struct appl_server appl_server_t;

typedef struct appl_server_opts {
    int listen_fd;
    int local_fd;                    /* AF_UNIX listener of the local transport; 0 / -1: none */
    const char *local_path;          /* its path, told to clients in the Welcome */
    const char *boot_id;             /* this host's, told to clients in the Welcome */
    rpc_keyring_t *keyring;          /* who may connect */
    const rpc_identity_t *identity;  /* signs every handshake */
    appl_regions_t *regions;
    net_fabric_t *fab;
    uint32_t max_conns;
    uint32_t max_conns_per_tenant;
    uint32_t timeout_ms;   /* a started frame must finish within this */
    uint32_t idle_ms;      /* an authenticated connection idle this long is closed; 0: never */
} appl_server_opts_t;

xm_status_t appl_server_create(const appl_server_opts_t *opts, appl_server_t **server_p);
/* Accept and serve until stop_fd is readable; hup_fd readable (SIGHUP): reload tenants. */
void appl_server_run(appl_server_t *server, int stop_fd, int hup_fd);
/* End every session and stop the server's threads. */
void appl_server_destroy(appl_server_t *server);

/* ---- copy.c: region copy, appliance to appliance (docs/region-copy.md) ----- */

#define APPL_COPY_MAX_RUNNING 4     /* copies running on one appliance */
#define APPL_COPY_MAX_PER_TENANT 2  /* ... for one tenant */

enum { APPL_COPY_RUNNING = 1, APPL_COPY_DONE = 2, APPL_COPY_FAILED = 3 };

/* The copies of one appliance. Its lock guards the copy list and each copy's state; it is
 * never held together with the region table's lock. */
typedef struct appl_copies appl_copies_t;

typedef struct appl_copy_req {
    uint64_t id;                /* source region by id, or by (scoped) name when 0 */
    const char *name;
    const uint8_t *addr;        /* the target's data address (fi_getname of its endpoint) */
    size_t addr_len;
    const char *target_control; /* its control HOST:PORT (fixes up a wildcard data address) */
    uint64_t target_region;     /* for messages */
    uint64_t key;               /* a read-write key of the target region */
    uint64_t offset;            /* resume from here */
    uint64_t chunk;             /* bytes per write, 0: default (1 MiB, $XMEM_COPY_CHUNK) */
} appl_copy_req_t;

typedef struct appl_copy_state {
    uint64_t id, done, total, copied;
    int state;                  /* APPL_COPY_* */
    xm_status_t error;
    char why[256];
} appl_copy_state_t;

/* provider: the one the appliance serves (the copies' initiator endpoints use it too). */
xm_status_t appl_copies_create(appl_regions_t *t, const char *provider, appl_copies_t **c_p);
/* Cancel every running copy and wait for its thread (before the region table goes). */
void appl_copies_destroy(appl_copies_t *c);
/* Start copying for tenant (it must be able to open the source for reading): XM_ERR_AGAIN
 * past the per-tenant or per-appliance bound, XM_ERR_INVALID / XM_ERR_CONNECT for a target
 * address that is not a listening unicast IPv4 data address. *st: the running copy. */
xm_status_t appl_copy_start(appl_copies_t *c, const char *tenant, const appl_copy_req_t *req,
                            appl_copy_state_t *st, const char **why_p);
/* The state of tenant's copy id (XM_ERR_NOT_FOUND for another tenant's); cancel stops it. */
xm_status_t appl_copy_status(appl_copies_t *c, const char *tenant, uint64_t id, bool cancel,
                             appl_copy_state_t *st, const char **why_p);

/* ---- member.c: registration with the allocation manager ------------------ */

typedef struct appl_member appl_member_t;

typedef struct appl_member_opts {
    const char *manager;        /* HOST:PORT */
    const char *control_addr;   /* our control HOST:PORT as bound */
    const char *domain;         /* failure domain */
    const rpc_cred_t *cred;     /* the cluster credential */
    const rpc_identity_t *identity;
    appl_regions_t *regions;
    net_fabric_t *fab;
    uint32_t heartbeat_ms;
    uint32_t timeout_ms;
} appl_member_opts_t;

/* Register and heartbeat from a thread until stopped; reconnects as needed. */
xm_status_t appl_member_start(const appl_member_opts_t *opts, appl_member_t **mb_p);
void appl_member_stop(appl_member_t *mb);

#endif
