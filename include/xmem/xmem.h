/**
 * @file xmem.h
 * @brief libxmem: software-defined external memory, client API.
 *
 * A client connects to an appliance (xmemd), creates or opens regions of
 * the appliance's memory, and reads, writes and atomically updates them by
 * one-sided access over libfabric. The appliance's CPU runs no xmem code on
 * the data path.
 *
 * Every function returns an ::xm_status_t; outputs are set only on success.
 *
 * @par Threads
 * A context is safe to use from many threads at once for I/O: ::xm_read,
 * ::xm_write, ::xm_fetch_add, ::xm_compare_swap, ::xm_post, ::xm_wait,
 * ::xm_submit and ::xm_progress on its regions and allocations, also while
 * its mappings serve faults. They share one data path (one endpoint per
 * context): each thread posts its own operations, and any thread that waits
 * or calls ::xm_progress completes everyone's. An ::xm_op_t may be posted by
 * one thread and waited for by another, but never waited for by two threads
 * at once. Control calls (regions, allocations, grants, stats) may also come
 * from any thread; they take turns on the context's control connection.
 * ::xm_disconnect and ::xm_region_close must not race calls that use the
 * context or handle. ::xm_last_error is per thread: it describes the calling
 * thread's last failed call.
 *
 * @par ABI rules (libxmem.so.0, symbol version XMEM_0.1)
 * The structs of this header follow one of three rules, so that a program
 * built against an older header keeps working with a newer library and the
 * reverse:
 *  - **Sized structs** — the option and statistics structs the caller
 *    allocates and passes one at a time (::xm_connect_opts_t,
 *    ::xm_map_opts_t, ::xm_map_stats_t) start with `size_t size`, which the
 *    caller sets to `sizeof` the struct as its header declares it: initialise
 *    with the `XM_..._INIT` macro (`xm_map_stats_t st = XM_MAP_STATS_INIT;`)
 *    or write `.size = sizeof(xm_map_opts_t)` in a designated initializer.
 *    New fields are only ever appended. The library reads and writes only
 *    the first `size` bytes: an option a smaller (older) struct does not have
 *    takes its default, and a statistics call never writes past `size`.
 *    Bytes a larger (newer) struct has beyond what the library knows must be
 *    zero in options (else XM_ERR_INVALID: the program asks for something
 *    this library cannot do) and are left as they were in statistics (zero,
 *    with the `_INIT` macro). A `size` smaller than `sizeof(size_t)` (0 in
 *    particular: a struct zero-filled and never given its size) or an
 *    options `size` above 4096 is XM_ERR_INVALID, so a forgotten `size` is
 *    an error, never options silently ignored.
 *  - **Fixed structs with reserved space** — ::xm_op_t, and the records the
 *    library fills (::xm_region_info_t, ::xm_appliance_info_t,
 *    ::xm_alloc_info_t, ::xm_appliance_entry_t, ::xm_group_info_t; three of
 *    them also come back in library-allocated arrays, whose stride is the
 *    caller's `sizeof`): their size never changes; new fields take reserved
 *    space, which the library zero-fills and callers must leave alone.
 *  - ::xm_piece_t is passed by value and never changes.
 * Only `xm_*` symbols are exported, each with the version node XMEM_0.1
 * (a later release adds XMEM_0.2 for what it adds). ::xm_version reports the
 * library the program is running with; the XM_VERSION_* macros the header
 * it was built with.
 */
#ifndef XMEM_XMEM_H
#define XMEM_XMEM_H

#include <stddef.h>
#include <stdint.h>

#include <xmem/status.h>
#include <xmem/version.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define XM_API __attribute__((visibility("default")))
#else
#define XM_API
#endif

/**
 * Version of the library the program is running with (the header it was
 * built with is XM_VERSION_STRING / XM_VERSION_NUMBER).
 * @param [out] number_p  XM_VERSION_NUMBER of the library
 *                        (major * 10000 + minor * 100 + patch), or NULL
 * @return "MAJOR.MINOR.PATCH", a static string
 */
XM_API const char *xm_version(unsigned *number_p);

/** A connection to one appliance. */
typedef struct xm_ctx *xm_ctx_h;
/** An opened region: its id, size, key and rights, cached client-side. */
typedef struct xm_region *xm_region_h;

/** Longest region or tenant name, in bytes, without the terminating NUL. */
#define XM_NAME_MAX 63

/** Access rights of a region handle. */
typedef enum xm_access {
    XM_ACCESS_READ = 1,       /**< read and atomically fetch */
    XM_ACCESS_READ_WRITE = 3, /**< read, write and atomics */
} xm_access_t;

/**
 * Options of ::xm_connect, a sized struct (see the ABI rules above):
 * `xm_connect_opts_t o = XM_CONNECT_OPTS_INIT;` then set what you need, or
 * `{.size = sizeof(xm_connect_opts_t), .appliance = ...}`.
 */
typedef struct xm_connect_opts {
    /** sizeof(xm_connect_opts_t) as the caller's header declares it. */
    size_t size;
    /** "HOST:PORT" of the appliance; NULL: $XMEM_APPLIANCE, else 127.0.0.1:7400. */
    const char *appliance;
    /** Path of the cluster secret; NULL: $XMEM_SECRET_FILE. */
    const char *secret_file;
    /** libfabric provider: "tcp" ("shm", the old same-host provider, is taken as
     *  "tcp": clients on an appliance's host use the local transport whatever the
     *  provider, see $XMEM_TRANSPORT); NULL: $XMEM_PROVIDER, else "tcp". */
    const char *provider;
    /** Tenant name; NULL: $XMEM_TENANT, else the user name. */
    const char *tenant;
    /** Per-operation timeout in ms; 0: $XMEM_TIMEOUT_MS, else 5000. */
    uint32_t timeout_ms;
    /**
     * "HOST:PORT" of an allocation manager (xmem-manager). When set — or when
     * @ref appliance is NULL and $XMEM_MANAGER is set — the context talks to
     * the manager and uses allocations (::xm_alloc); the region calls then
     * return XM_ERR_INVALID.
     */
    const char *manager;
} xm_connect_opts_t;

/** Initializer of ::xm_connect_opts_t: its size, every option at its default. */
#define XM_CONNECT_OPTS_INIT { .size = sizeof(xm_connect_opts_t) }

/** What ::xm_region_stat and ::xm_region_list report of a region. */
typedef struct xm_region_info {
    uint64_t id;                    /**< appliance-unique id, never reused */
    uint64_t size;                  /**< bytes */
    char name[XM_NAME_MAX + 1];     /**< "" when unnamed */
    char owner[XM_NAME_MAX + 1];    /**< tenant that created it */
    uint32_t extents;               /**< pool extents backing it */
    uint32_t grants;                /**< tenants granted access besides the owner */
    uint64_t resident;              /**< bytes of it currently in memory */
    uint64_t copy_of;               /**< a virtual copy: id of the region it was copied from
                                         (it may be gone since); 0: not a copy */
    uint32_t copy_kind;             /**< 0: not a copy; 1: snapshot (read-only); 2: clone */
    uint32_t pad_;                  /**< zero */
    uint64_t reserved_[6];          /**< zero; room for new fields (the struct never grows) */
} xm_region_info_t;

/** What ::xm_appliance_stat reports of the appliance. */
typedef struct xm_appliance_info {
    uint64_t pool_size;   /**< bytes the pool can serve */
    uint64_t pool_used;   /**< bytes held by regions */
    uint64_t extent_size; /**< unit of placement */
    uint32_t regions;     /**< live regions */
    char backing[XM_NAME_MAX + 1]; /**< "memfd", "hugetlb" or "file" */
    char provider[XM_NAME_MAX + 1]; /**< libfabric provider serving data */
    uint64_t reserved_[8]; /**< zero; room for new fields (the struct never grows) */
} xm_appliance_info_t;

/**
 * Connect and authenticate to an appliance.
 * @param [in]  opts   options, or NULL for all defaults
 * @param [out] ctx_p  the new context
 * @return XM_OK, XM_ERR_AUTH (wrong or missing secret), XM_ERR_CONNECT,
 *         XM_ERR_TIMEOUT, XM_ERR_INVALID
 */
XM_API xm_status_t xm_connect(const xm_connect_opts_t *opts, xm_ctx_h *ctx_p);

/** Close a context; regions it created stay until destroyed. */
XM_API void xm_disconnect(xm_ctx_h ctx);

/**
 * What the calling thread's last failed call on a context ran into, as one
 * line, or "" (thread-local: a failure in another thread never shows here;
 * valid until the thread's next call).
 * With NULL: why the calling thread's last ::xm_connect failed.
 */
XM_API const char *xm_last_error(xm_ctx_h ctx);

/**
 * Create a region and open it read-write.
 * @param [in]  ctx       context
 * @param [in]  size      bytes, > 0; rounded up to the extent size on the appliance
 * @param [in]  name      unique name, or NULL
 * @param [out] region_p  opened handle
 * @return XM_OK, XM_ERR_NO_SPACE, XM_ERR_EXISTS, XM_ERR_INVALID, ...
 */
XM_API xm_status_t xm_region_create(xm_ctx_h ctx, uint64_t size, const char *name,
                                    xm_region_h *region_p);

/**
 * Open a region by id or name with the rights the caller holds.
 * @param [in]  ctx       context
 * @param [in]  id        region id, or 0 to open by @p name
 * @param [in]  name      region name when @p id is 0
 * @param [in]  access    rights wanted; more than granted is XM_ERR_PERM
 * @param [out] region_p  opened handle
 */
XM_API xm_status_t xm_region_open(xm_ctx_h ctx, uint64_t id, const char *name,
                                  xm_access_t access, xm_region_h *region_p);

/** Release a handle (the region itself stays). */
XM_API void xm_region_close(xm_region_h region);

/** ::xm_region_create_file flag: map and register the file read-only; no grant gives write. */
#define XM_REGION_FILE_READ_ONLY 0x1u

/**
 * Expose an existing file on the appliance's host as a region (docs/file-regions.md): the
 * appliance maps it shared, so reads and writes go to the file's page cache, and keeps it
 * exposed across its restarts. The region's size is the file's size now. The file must be a
 * regular file (not a symbolic link) under a directory the appliance allows (xmemd
 * --file-dir), owned by the appliance's user with mode 0600 (or 0400), not empty, within
 * xmemd --max-file-region, and not locked by another process (the appliance holds a lock on
 * it - exclusive, shared when read-only - while the region exists). Destroying the region
 * leaves the file as it is. A file region is reached over the fabric, also from the
 * appliance's host.
 * @param [in]  ctx       context
 * @param [in]  path      absolute path on the appliance's host
 * @param [in]  flags     0 or ::XM_REGION_FILE_READ_ONLY
 * @param [in]  name      unique name, or NULL
 * @param [out] region_p  opened handle (read-write, or read-only)
 * @return XM_OK, XM_ERR_NOT_FOUND (no such file), XM_ERR_INVALID (not absolute, not a regular
 *         file, a symbolic link, empty), XM_ERR_PERM (file regions off, outside the allowed
 *         directories, wrong owner or mode), XM_ERR_EXISTS (name taken, or the file is locked
 *         by another process), XM_ERR_NO_SPACE (larger than the appliance allows), ...
 */
XM_API xm_status_t xm_region_create_file(xm_ctx_h ctx, const char *path, uint32_t flags,
                                         const char *name, xm_region_h *region_p);

/**
 * Make the bytes written to [offset, offset + length) of a region durable: on return they are
 * on the appliance's disk (msync MS_SYNC of the range on the appliance), and survive a crash
 * of the appliance or its host. For file regions and regions of a file pool; a region in
 * memory (memfd, hugetlb pool) has no file: XM_ERR_INVALID.
 * @param [in] region  an open region (not an allocation of the manager)
 * @param [in] offset  first byte
 * @param [in] length  bytes, or 0 for all from @p offset to the end
 * @return XM_OK, XM_ERR_RANGE, XM_ERR_INVALID, XM_ERR_IO (the disk failed, or the file shrank
 *         while exposed), XM_ERR_NOT_FOUND, ...
 */
XM_API xm_status_t xm_region_sync(xm_region_h region, uint64_t offset, uint64_t length);

/** Destroy a region (owner only); its memory goes back to the OS and every key to it dies. */
XM_API xm_status_t xm_region_destroy(xm_ctx_h ctx, uint64_t id, const char *name);

/**
 * Snapshot a region: a read-only, point-in-time copy on the same appliance, copy-on-write
 * (creating it write-protects the source's pages; a page is copied when the source first
 * writes it afterwards). Later writes to the source are never visible in the snapshot; the
 * snapshot outlives its source. It reserves as much pool space as the source (the pool can
 * never run out mid-copy) and counts against the caller's quota. Needs the source's owner
 * or a read-write grant; the snapshot belongs to the caller, and no one may write it
 * (opening it read-write fails with XM_ERR_PERM). Memory and hugetlb pools only: a file pool
 * gives XM_ERR_INVALID with the reason. See docs/virtual-copy.md.
 * @param [in]  ctx       context
 * @param [in]  id        source region id, or 0 to name it
 * @param [in]  name      source region name when @p id is 0
 * @param [in]  new_name  the snapshot's name ("" or NULL: unnamed)
 * @param [out] region_p  the snapshot, opened read-only
 * @return XM_OK; XM_ERR_NO_SPACE when the pool or quota cannot hold the copy; XM_ERR_PERM,
 *         XM_ERR_NOT_FOUND, XM_ERR_EXISTS (name taken), XM_ERR_INVALID (file pool)
 */
XM_API xm_status_t xm_region_snapshot(xm_ctx_h ctx, uint64_t id, const char *name,
                                      const char *new_name, xm_region_h *region_p);

/**
 * Clone a region: as ::xm_region_snapshot, but the copy is writable by its owner (the
 * caller); writes to the clone are never visible in the source, nor the source's in it.
 * A clone can be cloned or snapshotted in turn.
 * @param [in]  ctx       context
 * @param [in]  id        source region id, or 0 to name it
 * @param [in]  name      source region name when @p id is 0
 * @param [in]  new_name  the clone's name ("" or NULL: unnamed)
 * @param [out] region_p  the clone, opened read-write
 * @return as ::xm_region_snapshot
 */
XM_API xm_status_t xm_region_clone(xm_ctx_h ctx, uint64_t id, const char *name,
                                   const char *new_name, xm_region_h *region_p);

/** One grant of a region, as ::xm_region_grants reports it. */
typedef struct xm_grant_info {
    char tenant[XM_NAME_MAX + 1];   /**< the grantee */
    uint32_t access;                /**< XM_ACCESS_READ or XM_ACCESS_READ_WRITE */
    uint32_t reserved32_;           /**< zero */
    uint64_t reserved_[2];          /**< zero; room for new fields (the struct never grows) */
} xm_grant_info_t;

/**
 * The grants of a region the caller owns, besides the owner's own access.
 * @param [out] grants_p  malloc'd array (free() it), NULL when there are none
 * @param [out] count_p   its length
 * @return XM_OK (a grantee asking gets no grants), XM_ERR_NOT_FOUND, XM_ERR_PERM, ...
 */
XM_API xm_status_t xm_region_grants(xm_ctx_h ctx, uint64_t id, const char *name,
                                    xm_grant_info_t **grants_p, size_t *count_p);

/**
 * Revoke @p tenant's grant on a region the caller owns. The registrations made for that
 * grant close, so the grantee's open handles fail their next operation (XM_ERR_ACCESS or
 * the error of reopening) and it can no longer open the region; the owner's and other
 * grantees' handles keep working.
 * @return XM_OK, XM_ERR_NOT_FOUND (no such region, or no grant to @p tenant),
 *         XM_ERR_PERM (not the owner), XM_ERR_INVALID (@p tenant is the owner)
 */
XM_API xm_status_t xm_region_revoke(xm_ctx_h ctx, uint64_t id, const char *name,
                                    const char *tenant);

/** Grant @p tenant @p access to a region the caller owns (XM_ACCESS_READ for read-only). */
XM_API xm_status_t xm_region_grant(xm_ctx_h ctx, uint64_t id, const char *name,
                                   const char *tenant, xm_access_t access);

/** Id, size and rights of an opened handle. */
XM_API uint64_t xm_region_id(xm_region_h region);
XM_API uint64_t xm_region_size(xm_region_h region);
XM_API xm_access_t xm_region_access(xm_region_h region);

/** Describe one region, by id or (id 0) name. */
XM_API xm_status_t xm_region_stat(xm_ctx_h ctx, uint64_t id, const char *name,
                                  xm_region_info_t *info_p);

/**
 * List regions visible to the caller's tenant.
 * @param [out] infos_p  array to release with free(); NULL when count is 0
 * @param [out] count_p  entries
 */
XM_API xm_status_t xm_region_list(xm_ctx_h ctx, xm_region_info_t **infos_p, size_t *count_p);

/** Describe the appliance's pool. */
XM_API xm_status_t xm_appliance_stat(xm_ctx_h ctx, xm_appliance_info_t *info_p);

/* ---- region copy, appliance to appliance (docs/region-copy.md) ----------- */

/** Progress of ::xm_region_copy: @p done bytes from the start acknowledged by the target
 *  (increasing), of @p total. */
typedef void (*xm_copy_progress_cb)(uint64_t done, uint64_t total, void *arg);

/**
 * Options of ::xm_region_copy, a sized struct (see the ABI rules above):
 * `xm_copy_opts_t o = XM_COPY_OPTS_INIT;`.
 */
typedef struct xm_copy_opts {
    /** sizeof(xm_copy_opts_t) as the caller's header declares it. */
    size_t size;
    /** Resume from this byte of the source (what an interrupted copy returned in done_p);
     *  the bytes below it are taken as copied. */
    uint64_t offset;
    /** Bytes per write of the source appliance, 64K..16M; 0: its default (1 MiB). */
    uint64_t chunk;
    /** Called with increasing byte counts while the copy runs (and once at its end), or NULL. */
    xm_copy_progress_cb progress;
    void *arg;               /**< passed to progress */
    /** How often the source appliance is asked for progress, in ms; 0: 20. */
    uint32_t poll_ms;
} xm_copy_opts_t;

/** Initializer of ::xm_copy_opts_t: its size, every option at its default. */
#define XM_COPY_OPTS_INIT { .size = sizeof(xm_copy_opts_t) }

/**
 * Copy region @p source into region @p target on another appliance: the source's
 * appliance writes the bytes straight into the target's (nothing goes through this
 * process); the call waits until the copy ends. The caller needs read access to the
 * source (checked by its appliance for the source context's tenant) and @p target must
 * be opened read-write (its key is what lets the source appliance write there: the
 * target's appliance checks it on every write). Holes of the source (never written) are
 * skipped, so the target must read zeros there: a freshly created target region does.
 * Not a snapshot: bytes written to the source while the copy runs may or may not be in
 * the copy; copy a snapshot for a point-in-time copy. If the copy fails, @p done_p says
 * how many bytes from the start the target acknowledged: call again with that offset to
 * resume, or destroy the target region to discard it. An appliance runs at most 4 copies,
 * at most 2 per tenant (XM_ERR_AGAIN beyond).
 * @param [in]  source  region handle on the source appliance's context
 * @param [in]  target  region handle (read-write) on the target appliance's context, at
 *                      least as large as @p source
 * @param [in]  opts    options, or NULL for defaults
 * @param [out] done_p  bytes acknowledged by the target, set on success and on failure,
 *                      or NULL
 * @return XM_OK, XM_ERR_PERM (no read access to the source, target opened read-only),
 *         XM_ERR_RANGE (target too small, offset past the end), XM_ERR_NOT_FOUND (source
 *         destroyed during the copy), XM_ERR_ACCESS (the target refused the writes: wrong
 *         key, region destroyed), XM_ERR_DISCONNECTED / XM_ERR_CONNECT (the target
 *         appliance is gone), XM_ERR_AGAIN (too many copies running), XM_ERR_INVALID, ...;
 *         xm_last_error(source's context) says what failed and where
 */
XM_API xm_status_t xm_region_copy(xm_region_h source, xm_region_h target,
                                  const xm_copy_opts_t *opts, uint64_t *done_p);

/**
 * Read @p length bytes at @p offset of a region into @p buf (one-sided).
 * @return XM_OK, XM_ERR_RANGE (outside the region, or length 0),
 *         XM_ERR_ACCESS (refused by the transport), XM_ERR_TIMEOUT,
 *         XM_ERR_DISCONNECTED
 */
XM_API xm_status_t xm_read(xm_region_h region, uint64_t offset, void *buf, size_t length);

/** Write @p length bytes; on XM_OK they are in the appliance's memory (delivery-complete). */
XM_API xm_status_t xm_write(xm_region_h region, uint64_t offset, const void *buf, size_t length);

/** Atomic 64-bit fetch-and-add at an 8-byte-aligned offset; old value in @p old_p. */
XM_API xm_status_t xm_fetch_add(xm_region_h region, uint64_t offset, uint64_t add,
                                uint64_t *old_p);

/**
 * Atomic 64-bit compare-and-swap: if the word equals @p expected it becomes
 * @p desired. The word's previous value is returned in @p old_p either way.
 */
XM_API xm_status_t xm_compare_swap(xm_region_h region, uint64_t offset, uint64_t expected,
                                   uint64_t desired, uint64_t *old_p);

/** Kinds of asynchronous operation. */
typedef enum xm_opcode {
    XM_OP_READ = 1,
    XM_OP_WRITE = 2,
    XM_OP_FETCH_ADD = 3,
    XM_OP_COMPARE_SWAP = 4,
} xm_opcode_t;

/**
 * One asynchronous operation. The caller owns the struct; between
 * ::xm_post and its completion it and its buffer belong to the library.
 * Zero-fill it (`xm_op_t op = {0};` or memset) before setting the fields.
 *
 * Its size is fixed (ABI rules above): the library's private state lives in
 * reserved space (128 bytes), which may change from one release to the next
 * without changing the struct's size or the offsets of the public fields.
 * Never read or write it.
 */
typedef struct xm_op {
    xm_opcode_t opcode;
    xm_region_h region;
    uint64_t offset;
    void *buf;          /**< READ/WRITE data */
    size_t length;      /**< READ/WRITE bytes */
    uint64_t operand;   /**< FETCH_ADD addend, COMPARE_SWAP desired value */
    uint64_t compare;   /**< COMPARE_SWAP expected value */
    uint64_t result;    /**< atomics: the previous value */
    xm_status_t status; /**< XM_IN_PROGRESS until complete */
    /** Library-private, reserved: its layout is not part of the ABI. */
    union {
        struct {
            uint32_t pending_;
            int32_t error_;
            uint64_t deadline_ns_;
            struct xm_op *next_;
            struct xm_op *prev_;
        };
        uint64_t reserved_[16];
    };
} xm_op_t;

/**
 * Start an operation; it completes during ::xm_progress / ::xm_wait.
 * @return XM_OK when posted (op->status is XM_IN_PROGRESS), or the error
 *         that stopped it before anything was sent (op->status is the same).
 */
XM_API xm_status_t xm_post(xm_ctx_h ctx, xm_op_t *op);

/** Drive completions without blocking; returns the number of operations completed. */
XM_API int xm_progress(xm_ctx_h ctx);

/**
 * Wait until all @p n operations are complete (each within the context's
 * timeout). @return XM_OK when all succeeded, else the first failure's status.
 */
XM_API xm_status_t xm_wait(xm_ctx_h ctx, xm_op_t **ops, size_t n);

/** Post and wait for a batch. */
XM_API xm_status_t xm_submit(xm_ctx_h ctx, xm_op_t *ops, size_t n);

/* ---- allocations through the manager (issue 3) ------------------------- */

/**
 * An allocation: one or more regions on one or more appliances, laid out by a
 * policy. It is used through the same calls as a region handle — ::xm_read,
 * ::xm_write, ::xm_fetch_add, ::xm_compare_swap, ::xm_post with
 * xm_op_t.region set to it, ::xm_region_id, ::xm_region_size — which route
 * each byte by offset to its appliance directly; the manager is not involved
 * and need not be running.
 */
typedef struct xm_region *xm_alloc_h;

/**
 * What ::xm_alloc_list (and ::xm_alloc_create) report of an allocation.
 *
 * @p state: "ok" — every part reachable; "degraded" — some parts are on down
 * appliances or gone, but no more than @p redundancy of them (single and stripe:
 * an appliance is down, nothing is gone); "lost" — more than @p redundancy
 * parts are unavailable (single and stripe: a region is gone), so some bytes
 * cannot be read until appliances come back with their regions.
 */
typedef struct xm_alloc_info {
    uint64_t id;                    /**< manager-unique id */
    uint64_t size;                  /**< bytes */
    char name[XM_NAME_MAX + 1];     /**< "" when unnamed */
    char owner[XM_NAME_MAX + 1];    /**< tenant that allocated it */
    char policy[XM_NAME_MAX + 1];   /**< "single", "stripe:4:1024K", "replicate:2", "ec:4+2:64K" */
    char state[16];                 /**< "ok", "degraded", "rebuilding N%" or "lost" */
    uint32_t parts;                 /**< regions (appliances) it spans */
    uint32_t domains;               /**< distinct failure domains its parts are in */
    uint32_t redundancy;            /**< appliances it can lose without losing data: M of
                                         ec:K+M, R-1 of replicate:R, 0 for single and stripe */
    uint32_t domain_max;            /**< most parts in one failure domain: above @p redundancy,
                                         the loss of that whole domain loses the allocation (the
                                         manager places parts in distinct domains where there
                                         are enough, and anyway where there are not) */
    uint32_t unavailable;           /**< parts now on down appliances or gone */
    uint32_t reserved32_;           /**< zero; room for a new field */
    uint64_t reserved_[6];          /**< zero; room for new fields (the struct never grows) */
} xm_alloc_info_t;

/** What ::xm_appliance_list reports of an appliance registered with the manager. */
typedef struct xm_appliance_entry {
    char addr[XM_NAME_MAX + 1];     /**< control HOST:PORT */
    char domain[XM_NAME_MAX + 1];   /**< failure domain */
    char state[16];                 /**< "up" or "down" */
    char provider[16];              /**< libfabric provider */
    uint64_t capacity;              /**< pool bytes */
    uint64_t used;                  /**< bytes placed there by the manager */
    uint32_t regions;               /**< regions placed there by the manager */
    uint32_t reserved32_;           /**< zero; room for a new field */
    uint64_t other_used;            /**< bytes in use there that the manager did not place
                                         (regions tenants created directly) */
    uint64_t reserved_[7];          /**< zero; room for new fields (the struct never grows) */
} xm_appliance_entry_t;

/**
 * Allocate memory through the manager.
 * @param [in]  ctx      a context connected to a manager
 * @param [in]  size     bytes, > 0
 * @param [in]  policy   "single" (or NULL); "stripe:N" or "stripe:N:CHUNK"
 *                       (N parts on N appliances, N 1..1024, CHUNK a power of
 *                       two >= 4K, default the manager's); "replicate:R" (every
 *                       byte on R appliances, R 2..8); "ec:K+M" or
 *                       "ec:K+M:CHUNK" (Reed-Solomon: stripes of K data and M
 *                       parity pieces of CHUNK bytes on K+M appliances, any M
 *                       of which may be lost; K 1..16, M 1..4, K+M <= 20,
 *                       CHUNK a power of two 4K..4M, default 64K). Parts go to
 *                       distinct failure domains where there are enough
 *                       (::xm_alloc_info_t.domains says where they went).
 * @param [in]  name     unique name, or NULL
 * @param [out] alloc_p  handle, opened read-write
 * @return XM_OK, XM_ERR_NO_SPACE (no room or quota exceeded; nothing is left
 *         allocated), XM_ERR_EXISTS, XM_ERR_INVALID, XM_ERR_CONNECT, ...
 *         A retry after a timeout is sent with the same request id, so it
 *         never allocates twice. This release cannot yet read or write
 *         replicate and ec allocations: xm_alloc and ::xm_attach refuse them
 *         with XM_ERR_INVALID (xm_alloc frees what it made); create them with
 *         ::xm_alloc_create.
 */
XM_API xm_status_t xm_alloc(xm_ctx_h ctx, uint64_t size, const char *policy, const char *name,
                            xm_alloc_h *alloc_p);

/**
 * Allocate like ::xm_alloc without opening the allocation: for tools that
 * make allocations for others to attach (grant it with ::xm_alloc_grant).
 * @param [out] info_p  what ::xm_alloc_list would report of it (state "ok",
 *                      the policy as the manager spells it, where its parts went)
 * @return as ::xm_alloc
 */
XM_API xm_status_t xm_alloc_create(xm_ctx_h ctx, uint64_t size, const char *policy,
                                   const char *name, xm_alloc_info_t *info_p);

/** Free an allocation (owner only), by id or (id 0) name; every key to it dies. */
XM_API xm_status_t xm_free(xm_ctx_h ctx, uint64_t id, const char *name);

/**
 * Attach to an existing allocation by id or (id 0) name with the rights the
 * caller's tenant holds (its own, or granted with ::xm_alloc_grant).
 */
XM_API xm_status_t xm_attach(xm_ctx_h ctx, uint64_t id, const char *name, xm_access_t access,
                             xm_alloc_h *alloc_p);

/** Release an allocation handle (the allocation itself stays). */
XM_API void xm_alloc_close(xm_alloc_h alloc);

/** What ::xm_alloc_scrub found. */
typedef struct xm_scrub_report {
    uint64_t units;                 /**< stripes (ec) or 64 KiB units (replicate) looked at */
    uint64_t repaired;              /**< found inconsistent and rewritten from the data */
    uint64_t skipped;               /**< not checked: a piece or copy was unreachable */
    uint64_t reserved_[5];          /**< zero */
} xm_scrub_report_t;

/**
 * Check a resilient allocation (replicate or ec) whole and repair what disagrees
 * (docs/resilience.md): each 64 KiB unit of a replicate allocation is compared across its
 * reachable copies and rewritten from the first; each ec stripe's parity is re-encoded from
 * its data and rewritten where it differs (a writer that died between data and parity, a
 * torn write). Every unit or stripe is locked as a writer locks it, so scrubbing runs beside
 * the allocation's readers and writers. Stripes with an unreachable piece are counted as
 * skipped, not repaired. Needs read-write access.
 * @param [in]  alloc     an attached allocation
 * @param [in]  progress  called with (done, total) units about every 100 ms and at the end;
 *                        NULL: none
 * @param [in]  arg       passed to progress
 * @param [out] report_p  what was found (filled also on error, with what was done)
 * @return XM_OK; XM_ERR_INVALID (single or stripe: no redundancy to check), XM_ERR_PERM
 *         (read-only handle), XM_ERR_IO, ...
 */
XM_API xm_status_t xm_alloc_scrub(xm_alloc_h alloc,
                                  void (*progress)(uint64_t done, uint64_t total, void *arg),
                                  void *arg, xm_scrub_report_t *report_p);

/** Let @p tenant attach to an allocation the caller owns (XM_ACCESS_READ: read-only). */
XM_API xm_status_t xm_alloc_grant(xm_ctx_h ctx, uint64_t id, const char *name,
                                  const char *tenant, xm_access_t access);

/**
 * Take @p tenant's grant on an allocation the caller owns away: the keys of that
 * tenant's handles to every part stop working at once (their next access fails), and it
 * can no longer attach. XM_ERR_NOT_FOUND: @p tenant has no grant on it. When a part's
 * appliance cannot be reached nothing changes in the manager's table and the call can
 * be repeated.
 */
XM_API xm_status_t xm_alloc_revoke(xm_ctx_h ctx, uint64_t id, const char *name, const char *tenant);

/** Allocations the caller owns or was granted; *infos_p is released with free(). */
XM_API xm_status_t xm_alloc_list(xm_ctx_h ctx, xm_alloc_info_t **infos_p, size_t *count_p);

/** Appliances registered with the manager; *entries_p is released with free(). */
XM_API xm_status_t xm_appliance_list(xm_ctx_h ctx, xm_appliance_entry_t **entries_p,
                                     size_t *count_p);

/**
 * Drain appliance @p addr (its control HOST:PORT as ::xm_appliance_list reports it) before
 * maintenance: the manager places nothing new there and moves the parts of replicate
 * allocations elsewhere, appliance to appliance, in the background (docs/resilience.md,
 * "Rebuild"). Ask again to follow it: *moving_p counts replicate parts still there,
 * *unmovable_p parts of single, stripe and ec allocations, which a drain does not move.
 * @p stop nonzero ends draining. The cluster's administrator only (a context of the cluster
 * secret); XM_ERR_NOT_FOUND for an unknown appliance.
 */
XM_API xm_status_t xm_appliance_drain(xm_ctx_h ctx, const char *addr, int stop,
                                      uint32_t *moving_p, uint32_t *unmovable_p);

/**
 * Forget appliance @p addr: it must be down and hold no part of any allocation (refused with
 * XM_ERR_EXISTS, naming an allocation, while parts remain; XM_ERR_INVALID while it is up).
 * The cluster's administrator only.
 */
XM_API xm_status_t xm_appliance_remove(xm_ctx_h ctx, const char *addr);

/* ---- client-coordinated sub-allocation (issue 3) ------------------------ */

/**
 * A member's handle on a group: one allocation made by the manager for a group
 * of clients, which carve it into pieces themselves. Pieces are claimed and
 * returned with remote atomics on an owner map inside the allocation (one
 * byte per block naming the member that holds it); the manager is not asked.
 * Concurrent members never receive overlapping pieces. A member renews a
 * lease as it works; the pieces of a member that stops renewing (it died) are
 * taken back by ::xm_group_reclaim in any survivor. Use a handle from one
 * thread at a time, like its context.
 */
typedef struct xm_group *xm_group_h;

/** A piece of a group: bytes [offset, offset + size) of ::xm_group_alloc. Passed by value; never changes. */
typedef struct xm_piece {
    uint64_t offset;   /**< into the group's allocation, a multiple of the block size */
    uint64_t size;     /**< bytes asked for (the piece holds whole blocks) */
} xm_piece_t;

/** What ::xm_group_stat reports. */
typedef struct xm_group_info {
    uint64_t block_size;   /**< unit of a piece: a power of two, >= 64 */
    uint64_t blocks;       /**< blocks in the group */
    uint64_t free_blocks;  /**< blocks nobody holds */
    uint64_t own_blocks;   /**< blocks this member holds */
    uint64_t lease_ms;     /**< a member silent this long may be reclaimed */
    uint32_t members;      /**< members joined (including ones not yet reclaimed) */
    uint32_t member;       /**< this member's slot */
    uint64_t reserved_[8]; /**< zero; room for new fields (the struct never grows) */
} xm_group_info_t;

/**
 * Allocate a group of @p size usable bytes through the manager (one `single`
 * allocation named @p name, with a small header and owner map in front) and
 * join it. The block size is the smallest power of two >= 64 that keeps the
 * group at most 2^18 blocks. The lease is $XMEM_GROUP_LEASE_MS, else 10 s.
 * Free the group with ::xm_free(ctx, 0, name) once every member is done.
 * @return XM_OK, XM_ERR_EXISTS, XM_ERR_NO_SPACE, XM_ERR_INVALID, ...
 */
XM_API xm_status_t xm_group_create(xm_ctx_h ctx, uint64_t size, const char *name,
                                   xm_group_h *group_p);

/**
 * Join the group @p name (the caller's tenant needs read-write rights on its
 * allocation). At most 127 members at once.
 * @return XM_OK, XM_ERR_NOT_FOUND, XM_ERR_PERM, XM_ERR_INVALID (not a group),
 *         XM_ERR_NO_SPACE (no free member slot), ...
 */
XM_API xm_status_t xm_group_attach(xm_ctx_h ctx, const char *name, xm_group_h *group_p);

/** Leave the group: this member's pieces are freed, then the handle. */
XM_API void xm_group_close(xm_group_h group);

/** The group's allocation, for ::xm_read, ::xm_write and atomics on pieces. */
XM_API xm_alloc_h xm_group_alloc(xm_group_h group);

/**
 * Carve a piece of @p size bytes (usually one remote compare-and-swap).
 * @return XM_OK, XM_ERR_NO_SPACE (no free run that long), XM_ERR_INVALID,
 *         XM_ERR_PERM (this member's lease expired and it was reclaimed), ...
 */
XM_API xm_status_t xm_suballoc(xm_group_h group, uint64_t size, xm_piece_t *piece_p);

/**
 * Return a piece this member holds; it can be handed out again at once.
 * @return XM_OK, XM_ERR_INVALID (not a piece this member holds), XM_ERR_PERM, ...
 */
XM_API xm_status_t xm_subfree(xm_group_h group, xm_piece_t piece);

/** Renew this member's lease now (members idle longer than a quarter lease call it). */
XM_API xm_status_t xm_group_renew(xm_group_h group);

/**
 * Take back the pieces of members whose heartbeat this handle has seen
 * standing still for a whole lease (call it periodically; the first call
 * only starts watching).
 * @param [out] members_p  members reclaimed by this call, or NULL
 * @param [out] bytes_p    bytes returned to the group by this call, or NULL
 */
XM_API xm_status_t xm_group_reclaim(xm_group_h group, uint32_t *members_p, uint64_t *bytes_p);

/** Geometry, free space and members of the group, read from the allocation now. */
XM_API xm_status_t xm_group_stat(xm_group_h group, xm_group_info_t *info_p);

/**
 * Parse a size such as "4096", "64K", "1.5G", "2T" (powers of 1024).
 * @return XM_OK or XM_ERR_INVALID
 */
XM_API xm_status_t xm_parse_size(const char *text, uint64_t *size_p);

/* ---- mapped external memory (issue 4) ----------------------------------- */

/** ::xm_map_opts_t.flags: no sequential read-ahead. */
#define XM_MAP_NO_READAHEAD 0x1u

/**
 * Options of ::xm_map, a sized struct (see the ABI rules above):
 * `xm_map_opts_t o = XM_MAP_OPTS_INIT;` then set what you need, or
 * `{.size = sizeof(xm_map_opts_t), .cache_bytes = ...}`.
 */
typedef struct xm_map_opts {
    /** sizeof(xm_map_opts_t) as the caller's header declares it. */
    size_t size;
    /**
     * Local cache budget of this mapping in bytes (rounded down to the fetch
     * size, at least one fetch unit); 0: the mapping's length (no eviction
     * beyond the context budget).
     */
    uint64_t cache_bytes;
    /**
     * Budget shared by all mappings made through this context; 0 leaves the
     * context's budget as it is (initially unlimited). Resident bytes of the
     * context's mappings stay at or under it.
     */
    uint64_t ctx_cache_bytes;
    /**
     * Bytes fetched per fault (a block): a power of two from 4K to 2M; 0:
     * 256K, halved while it exceeds 1/512 of the smallest budget given here
     * (a sort's 256 bucket cursors then take at most half the cache), down
     * to 16K. Random faults fetch one page whatever the size; sequential
     * ones whole blocks.
     */
    uint32_t fetch_size;
    /** XM_MAP_* flags. */
    uint32_t flags;
} xm_map_opts_t;

/** Initializer of ::xm_map_opts_t: its size, every option at its default. */
#define XM_MAP_OPTS_INIT { .size = sizeof(xm_map_opts_t) }

/**
 * What ::xm_map_stat reports of a mapping (counters since ::xm_map), a sized
 * struct (see the ABI rules above): `xm_map_stats_t st = XM_MAP_STATS_INIT;`.
 * ::xm_map_stat writes at most `size` bytes and leaves `size` as it was.
 */
typedef struct xm_map_stats {
    /** sizeof(xm_map_stats_t) as the caller's header declares it; set before ::xm_map_stat. */
    size_t size;
    uint64_t faults;            /**< page faults served from an appliance */
    uint64_t fetched_bytes;     /**< bytes read from appliances (faults and read-ahead) */
    uint64_t readahead_blocks;  /**< fetch units read ahead of a sequential access */
    uint64_t evictions;         /**< fetch units dropped from the local cache */
    uint64_t writeback_pages;   /**< 4 KiB pages written back (eviction and ::xm_sync) */
    uint64_t writeback_errors;  /**< write-backs that failed (the pages stayed resident) */
    uint64_t resident_bytes;    /**< bytes of the mapping in local memory now */
    uint64_t budget_bytes;      /**< the mapping's cache budget */
    uint64_t fetch_size;        /**< the mapping's fetch unit (chosen by ::xm_map when 0 was asked) */
    uint64_t huge_frames;       /**< 2 MiB frames a sequential run brought in as one huge page each (no copy; opt-in: XMEM_MAP_HUGE=1) */
} xm_map_stats_t;

/** Initializer of ::xm_map_stats_t: its size, set before calling ::xm_map_stat. */
#define XM_MAP_STATS_INIT { .size = sizeof(xm_map_stats_t) }

/**
 * Map @p length bytes of a region or allocation at @p offset into the address
 * space. Pages are fetched from the appliances on first touch into a local
 * cache bounded by the budgets; written pages go back on eviction and on
 * ::xm_sync. Any thread may use the mapping. Faults are served through
 * @p ctx's data path, shared with the context's own I/O (faults never use
 * the control connection); the mapping keeps that data path and its own copy
 * of @p region, so @p ctx and @p region may be used or closed independently
 * afterwards. After fork() the child has no mapping at
 * that address (MADV_DONTFORK): touching it there is SIGSEGV.
 * If the appliance cannot be reached during a fault (after retries) the
 * access gets SIGBUS and a log line names the region and offset.
 * @param [in]  ctx       context the region or allocation belongs to
 * @param [in]  region    region or allocation handle (read-only handles map read-only)
 * @param [in]  offset    multiple of 4096
 * @param [in]  length    bytes, > 0, within the region
 * @param [in]  opts      options, or NULL for defaults
 * @param [out] addr_p    start of the mapping
 * @return XM_OK, XM_ERR_INVALID, XM_ERR_RANGE, XM_ERR_NO_MEMORY,
 *         XM_ERR_IO (userfaultfd unavailable: it needs root or
 *         vm.unprivileged_userfaultfd, and Linux >= 6.8 for MOVE, POISON and
 *         WP_ASYNC; xm_last_error(ctx) says which)
 */
XM_API xm_status_t xm_map(xm_ctx_h ctx, xm_region_h region, uint64_t offset, uint64_t length,
                          const xm_map_opts_t *opts, void **addr_p);

/**
 * Write back the pages of [addr, addr+length) written since they were last
 * written back; on XM_OK they are in the appliance's memory. A page written
 * again later is written back by a later call. On failure the pages stay
 * resident and dirty and the error is returned.
 */
XM_API xm_status_t xm_sync(void *addr, size_t length);

/**
 * Write back every dirty page, then unmap. If the write-back fails the
 * mapping stays (nothing is lost) and the error is returned; see
 * ::xm_unmap_discard.
 * @param [in] addr  the address ::xm_map returned
 */
XM_API xm_status_t xm_unmap(void *addr);

/** Unmap without writing anything back (unsynced writes are lost). */
XM_API void xm_unmap_discard(void *addr);

/**
 * Counters of the mapping that contains @p addr.
 * @param [in]     addr     any address inside a mapping
 * @param [in,out] stats_p  `size` set by the caller (::XM_MAP_STATS_INIT);
 *                          at most that many bytes are written
 * @return XM_OK, XM_ERR_INVALID (not a mapping, or `size` too small)
 */
XM_API xm_status_t xm_map_stat(const void *addr, xm_map_stats_t *stats_p);

#ifdef __cplusplus
}
#endif

#endif /* XMEM_XMEM_H */
