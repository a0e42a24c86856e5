/* Regions: windows onto pool extents, each grant its own registration. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/common.h"
#include "appliance.h"

/* A closed registration may still have a provider transfer in progress into
 * its window (tcp checks the key once, then moves the data over many progress
 * rounds, as slowly as the client reads), so a destroyed region's window is
 * detached from the pool onto scratch memory and its addresses are never
 * handed to another region: a late transfer reads zeros or writes scratch,
 * never the next owner's data. Pages a late write touched are dropped every
 * GRAVE_NS; the address space itself is given back only past GRAVE_VA_MAX,
 * oldest first. */
#define GRAVE_NS (5ull * 1000000000ull)
#define GRAVE_VA_MAX (16ull << 40)
/* ... or past this many graves: each is a mapping, and the kernel allows a process about
 * 65,530 (vm.max_map_count); an appliance that had destroyed ~65,000 regions could map no
 * new one (found by the manager benchmark) */
#define GRAVE_COUNT_MAX 8192u

#define WHY(text)                                                                            \
    do {                                                                                     \
        *why_p = (text);                                                                     \
    } while (0)

static size_t window_len(const appl_regions_t *t, const appl_region_t *r)
{
    if (r->file_fd >= 0) {
        /* a file region maps the file's pages, not extents */
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        return (size_t)((r->size + page - 1) / page * page);
    }
    return (size_t)r->nextents * t->pool->extent_size;
}

static bool holder_has(const appl_region_t *r, const char *tenant)
{
    for (uint32_t i = 0; i < r->nholders; i++) {
        if (strcmp(r->holders[i], tenant) == 0) return true;
    }
    return false;
}

/*
 * Move a region whose memfd was handed out to a fresh memfd, so that what the holders
 * map stops being the region (a revoked tenant, a narrowed grant). Lock held. The old
 * memfd is marked retired first: holders that check after each operation (libxmem does)
 * fetch the new one, which this thread hands out only after the move, and redo what they
 * did. O(resident bytes): only the old memfd's data ranges are copied (SEEK_DATA), so a
 * sparse region commits no memory. The fabric's progress loop is parked from before the copy
 * until the window maps the new memfd: data progress is manual, so no one-sided transfer
 * moves a byte meanwhile - what landed before is copied, what lands after goes to the new
 * memfd (a transfer accepted before the pause continues after it, into the new one), and
 * registrations and keys stay as they are. Over tcp the region's clients see a delay of
 * the copy's length, no error. Revocations are rare.
 */
static void region_move(appl_regions_t *t, appl_region_t *r)
{
    size_t len = window_len(t, r);
    int nfd;
    if (net_local_memfd(appl_pool_memfd_len(t->pool, r->nextents),
                        t->pool->backing == APPL_BACKING_HUGETLB, &nfd) != XM_OK) {
        goto err;
    }
    uint8_t *tmp = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED |
                        (t->pool->backing == APPL_BACKING_HUGETLB ? 0 : MAP_NORESERVE), nfd, 0);
    if (tmp == MAP_FAILED) {
        close(nfd);
        goto err;
    }
    /* from here until the window maps nfd no fabric transfer moves data */
    net_progress_pause(t->fab);
    /* mark the old memfd retired (its trailer word), without freeing it yet */
    size_t tl = appl_pool_memfd_len(t->pool, r->nextents) - len;
    uint64_t *tr = mmap(NULL, tl, PROT_READ | PROT_WRITE, MAP_SHARED, r->memfd, (off_t)len);
    if (tr != MAP_FAILED) {
        __atomic_store_n(tr, (uint64_t)1, __ATOMIC_SEQ_CST);
        munmap(tr, tl);
    }
    off_t off = 0;
    while ((size_t)off < len) {
        off_t data = lseek(r->memfd, off, SEEK_DATA);
        if (data < 0 || (size_t)data >= len) break;
        off_t hole = lseek(r->memfd, data, SEEK_HOLE);
        if (hole < 0 || (size_t)hole > len) hole = (off_t)len;
        memcpy(tmp + data, (uint8_t *)r->window + data, (size_t)(hole - data));
        off = hole;
    }
    munmap(tmp, len);
    if (appl_pool_remap_own(t->pool, r->nextents, r->window, nfd) != XM_OK) {
        net_progress_resume(t->fab);
        close(nfd);
        goto err;
    }
    net_progress_resume(t->fab);
    net_local_release(r->memfd, len);
    close(r->memfd);
    r->memfd = nfd;
    r->nholders = 0; /* those still entitled ask again */
    xm_log_info("region %llu moved to a fresh memfd: what its holders map is no longer it",
                (unsigned long long)r->id);
    return;
err:
    xm_log_error("region %llu could not be moved to a fresh memfd (%m): holders of its old "
                 "descriptor still reach it", (unsigned long long)r->id);
}

static void grant_close(appl_grant_t *g)
{
    net_mr_close(g->mr_rw);
    net_mr_close(g->mr_ro);
    g->mr_rw = g->mr_ro = NULL;
}

uint64_t appl_regions_direct_bytes(appl_regions_t *t)
{
    uint64_t bytes = 0;
    pthread_mutex_lock(&t->lock);
    for (appl_region_t *r = t->head; r != NULL; r = r->next) {
        if (r->name[0] != '@') bytes += (uint64_t)r->nextents * t->pool->extent_size;
    }
    pthread_mutex_unlock(&t->lock);
    return bytes;
}

void appl_regions_revoke(appl_regions_t *t, rpc_keyring_t *kr)
{
    uint32_t closed = 0;
    pthread_mutex_lock(&t->lock);
    for (appl_region_t *r = t->head; r != NULL; r = r->next) {
        /* a revoked tenant's mapping of the region's memfd: move the region away from it */
        for (uint32_t i = 0; r->memfd >= 0 && i < r->nholders; i++) {
            if (!rpc_keyring_has_tenant(kr, r->holders[i])) {
                region_move(t, r);
                closed++;
                break;
            }
        }
        for (uint32_t i = 0; i < r->ngrants; i++) {
            appl_grant_t *g = &r->grants[i];
            if ((g->mr_rw != NULL || g->mr_ro != NULL) && !rpc_keyring_has_tenant(kr, g->tenant)) {
                grant_close(g);
                closed++;
            }
        }
    }
    pthread_mutex_unlock(&t->lock);
    if (closed > 0) xm_log_info("revoked: %u grants' registrations closed", closed);
}

static void grave_append(appl_regions_t *t, appl_grave_t *g)
{
    g->next = NULL;
    if (t->graves == NULL) {
        t->graves = g;
    } else {
        t->graves_last->next = g;
    }
    t->graves_last = g;
}

static appl_grave_t *grave_pop(appl_regions_t *t)
{
    appl_grave_t *g = t->graves;
    t->graves = g->next;
    if (t->graves == NULL) t->graves_last = NULL;
    return g;
}

/* The queue is in the order graves were last cleaned (oldest first), so each call looks
 * only at graves that are due: a steady stream of destroys costs O(1) each. */
static void graves_reap(appl_regions_t *t, bool all)
{
    while (t->graves != NULL &&
           (all || t->graves_len > GRAVE_VA_MAX || t->graves_count > GRAVE_COUNT_MAX)) {
        appl_grave_t *g = grave_pop(t);
        munmap(g->window, g->len);
        t->graves_len -= g->len;
        t->graves_count--;
        free(g);
    }
    uint64_t now = xm__now_ns();
    appl_grave_t *stop = NULL; /* the first grave cleaned in this call: all after it are newer */
    while (t->graves != NULL && t->graves != stop && now - t->graves->since_ns >= GRAVE_NS) {
        appl_grave_t *g = grave_pop(t);
        madvise(g->window, g->len, MADV_DONTNEED);
        g->since_ns = now;
        grave_append(t, g);
        if (stop == NULL) stop = g;
    }
}

/* Close registrations and release the window; with punch, return the extents. */
static void region_release(appl_regions_t *t, appl_region_t *r, bool give_back)
{
    for (uint32_t i = 0; i < r->ngrants; i++) {
        grant_close(&r->grants[i]);
    }
    size_t len = window_len(t, r);
    if (give_back) {
        /* detach the pool pages: a late transfer lands in scratch memory */
        void *p = mmap(r->window, len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
        /* its own memfd: marked retired and freed now, also while clients map it */
        if (r->memfd >= 0) appl_pool_retire_own(t->pool, r->nextents, r->memfd);
        /* a file region's extents are none: its file is closed below, never truncated */
        appl_grave_t *g = malloc(sizeof(*g));
        if (p == MAP_FAILED || g == NULL) {
            free(g);
            munmap(r->window, len); /* cannot defer: unmap now */
        } else {
            *g = (appl_grave_t){.window = r->window, .len = len, .since_ns = xm__now_ns()};
            grave_append(t, g);
            t->graves_len += len;
            t->graves_count++;
        }
        appl_pool_free(t->pool, r->extents, r->nextents);
    } else {
        if (t->pool->backing == APPL_BACKING_FILE || r->file_fd >= 0) {
            msync(r->window, len, MS_SYNC);
        }
        /* shutting down: a memfd region ends with xmemd; local holders see it retired */
        if (r->memfd >= 0) appl_pool_retire_own(t->pool, r->nextents, r->memfd);
        munmap(r->window, len);
    }
    if (r->memfd >= 0) close(r->memfd);
    if (r->file_fd >= 0) appl__file_release(t, r); /* the window no longer maps the file */
    free(r->holders);
    free(r->extents);
    free(r->grants);
    free(r);
}

void appl__region_release(appl_regions_t *t, appl_region_t *r, bool give_back)
{
    region_release(t, r, give_back);
}

static appl_region_t *region_find(appl_regions_t *t, uint64_t id, const char *name);

/* Put a region in the table (its list and indexes) / take it out. Lock held. */
static void table_add(appl_regions_t *t, appl_region_t *r)
{
    r->prev = NULL;
    r->next = t->head;
    if (t->head != NULL) t->head->prev = r;
    t->head = r;
    t->count++;
    HASH_ADD(hh_id, t->by_id, id, sizeof(r->id), r);
    if (r->name[0] != '\0') HASH_ADD_KEYPTR(hh_name, t->by_name, r->name, strlen(r->name), r);
}

static void table_del(appl_regions_t *t, appl_region_t *r)
{
    if (r->prev != NULL) r->prev->next = r->next;
    else t->head = r->next;
    if (r->next != NULL) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    t->count--;
    HASH_DELETE(hh_id, t->by_id, r);
    if (r->name[0] != '\0') HASH_DELETE(hh_name, t->by_name, r);
}

/* ---- persistence of a file-backed pool's table -------------------------- */

size_t appl__grants_encode(const appl_region_t *r, Xmem__PoolGrant *grants, Xmem__PoolGrant **gptrs)
{
    size_t n = 0;
    for (uint32_t g = 1; g < r->ngrants; g++, n++) {
        xmem__pool_grant__init(&grants[n]);
        grants[n].tenant = (char *)r->grants[g].tenant;
        grants[n].access = (Xmem__Access)r->grants[g].access;
        gptrs[n] = &grants[n];
    }
    return n;
}

static xm_status_t meta_save(appl_regions_t *t)
{
    if (t->meta_path[0] == '\0') {
        return XM_OK;
    }
    Xmem__PoolMeta meta = XMEM__POOL_META__INIT;
    meta.version = 1;
    meta.pool_size = t->pool->size;
    meta.extent_size = t->pool->extent_size;
    meta.next_id = t->next_id;
    meta.n_regions = t->count;
    Xmem__PoolRegion *recs = calloc(t->count + 1, sizeof(*recs));
    Xmem__PoolRegion **ptrs = calloc(t->count + 1, sizeof(*ptrs));
    size_t ngrants = 0;
    for (appl_region_t *r = t->head; r != NULL; r = r->next) ngrants += r->ngrants;
    Xmem__PoolGrant *grants = calloc(ngrants + 1, sizeof(*grants));
    Xmem__PoolGrant **gptrs = calloc(ngrants + 1, sizeof(*gptrs));
    xm_status_t status = XM_ERR_NO_MEMORY;
    if (recs == NULL || ptrs == NULL || grants == NULL || gptrs == NULL) {
        goto out;
    }
    size_t i = 0, gi = 0;
    for (appl_region_t *r = t->head; r != NULL; r = r->next) {
        if (r->file_fd >= 0) continue; /* file regions are kept in their own table */
        xmem__pool_region__init(&recs[i]);
        recs[i].id = r->id;
        recs[i].size = r->size;
        recs[i].name = r->name;
        recs[i].owner = r->grants[0].tenant;
        recs[i].n_extents = r->nextents;
        recs[i].extents = r->extents;
        recs[i].grants = &gptrs[gi];
        recs[i].n_grants = appl__grants_encode(r, &grants[gi], &gptrs[gi]);
        gi += recs[i].n_grants;
        ptrs[i] = &recs[i];
        i++;
    }
    meta.regions = ptrs;
    meta.n_regions = i;
    size_t len = xmem__pool_meta__get_packed_size(&meta);
    uint8_t *buf = malloc(len + 1);
    if (buf == NULL) {
        goto out;
    }
    xmem__pool_meta__pack(&meta, buf);
    char tmp[sizeof(t->meta_path) + 8];
    snprintf(tmp, sizeof(tmp), "%s.tmp", t->meta_path);
    status = XM_ERR_IO;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
        if (write(fd, buf, len) == (ssize_t)len && fsync(fd) == 0 && rename(tmp, t->meta_path) == 0) {
            status = XM_OK;
        }
        close(fd);
    }
    if (status != XM_OK) {
        xm_log_error("cannot save pool metadata %s: %m", t->meta_path);
    }
    free(buf);
out:
    free(recs);
    free(ptrs);
    free(grants);
    free(gptrs);
    return status;
}

static appl_region_t *region_new(uint64_t id, uint64_t size, const char *name, const char *owner,
                                 uint32_t nextents)
{
    appl_region_t *r = calloc(1, sizeof(*r));
    if (r == NULL) return NULL;
    r->extents = calloc(nextents > 0 ? nextents : 1, sizeof(uint32_t)); /* file regions: none */
    r->grants = calloc(1, sizeof(appl_grant_t));
    if (r->extents == NULL || r->grants == NULL) {
        free(r->extents);
        free(r->grants);
        free(r);
        return NULL;
    }
    r->id = id;
    r->size = size;
    r->nextents = nextents;
    r->memfd = -1;
    r->file_fd = -1;
    r->bus_slot = -1;
    snprintf(r->name, sizeof(r->name), "%s", name != NULL ? name : "");
    snprintf(r->grants[0].tenant, sizeof(r->grants[0].tenant), "%s", owner);
    r->grants[0].access = XM_ACCESS_READ_WRITE;
    r->ngrants = 1;
    return r;
}

static appl_grant_t *grant_add(appl_region_t *r, const char *tenant, xm_access_t access)
{
    appl_grant_t *g = realloc(r->grants, (r->ngrants + 1) * sizeof(*g));
    if (g == NULL) return NULL;
    r->grants = g;
    g = &r->grants[r->ngrants++];
    memset(g, 0, sizeof(*g));
    snprintf(g->tenant, sizeof(g->tenant), "%s", tenant);
    g->access = access;
    return g;
}

static xm_status_t meta_load(appl_regions_t *t)
{
    int fd = open(t->meta_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return errno == ENOENT ? XM_OK : XM_ERR_IO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size > 256 * 1024 * 1024) {
        close(fd);
        xm_log_error("pool metadata %s unreadable or too large", t->meta_path);
        return XM_ERR_IO;
    }
    size_t len = (size_t)st.st_size;
    uint8_t *buf = malloc(len + 1);
    if (buf == NULL || read(fd, buf, len) != (ssize_t)len) {
        free(buf);
        close(fd);
        return XM_ERR_IO;
    }
    close(fd);
    Xmem__PoolMeta *meta;
    const char *why;
    xm_status_t status = proto_pool_decode(buf, len, &meta, &why);
    free(buf);
    if (status != XM_OK) {
        xm_log_error("pool metadata %s is invalid: %s", t->meta_path, why);
        return XM_ERR_INVALID;
    }
    status = XM_ERR_INVALID;
    if (meta->extent_size != t->pool->extent_size || meta->pool_size != t->pool->size) {
        xm_log_error("pool %s was made with pool size %llu and extent size %llu; "
                     "start xmemd with the same --pool and --extent-size",
                     t->pool->path, (unsigned long long)meta->pool_size,
                     (unsigned long long)meta->extent_size);
        goto out;
    }
    t->next_id = meta->next_id;
    for (size_t i = 0; i < meta->n_regions; i++) {
        const Xmem__PoolRegion *rec = meta->regions[i];
        if (region_find(t, rec->id, NULL) != NULL ||
            (rec->name[0] != '\0' && region_find(t, 0, rec->name) != NULL)) {
            xm_log_error("pool metadata: region %llu or its name appears twice",
                         (unsigned long long)rec->id);
            goto out;
        }
        if (rec->n_extents > t->pool->nextents ||
            rec->size > (uint64_t)rec->n_extents * t->pool->extent_size ||
            appl_pool_claim(t->pool, rec->extents, (uint32_t)rec->n_extents) != XM_OK) {
            xm_log_error("pool metadata: region %llu has bad extents",
                         (unsigned long long)rec->id);
            goto out;
        }
        appl_region_t *r = region_new(rec->id, rec->size, rec->name, rec->owner,
                                      (uint32_t)rec->n_extents);
        if (r == NULL) goto out;
        memcpy(r->extents, rec->extents, rec->n_extents * sizeof(uint32_t));
        for (size_t g = 0; g < rec->n_grants; g++) {
            if (grant_add(r, rec->grants[g]->tenant, (xm_access_t)rec->grants[g]->access) == NULL) {
                table_add(t, r); /* freed with the table */
                goto out;
            }
        }
        if (appl_pool_map(t->pool, r->extents, r->nextents, &r->window) != XM_OK ||
            net_mr_reg(t->fab, r->window, r->size, XM_ACCESS_READ_WRITE, &r->grants[0].mr_rw,
                       &r->grants[0].key_rw) != XM_OK) {
            free(r->extents);
            free(r->grants);
            free(r);
            goto out;
        }
        table_add(t, r);
    }
    xm_log_info("restored %u regions from %s", t->count, t->meta_path);
    status = XM_OK;
out:
    proto_pool_free(meta);
    return status;
}

xm_status_t appl_regions_init(appl_regions_t *t, appl_pool_t *pool, net_fabric_t *fab)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->lock, NULL);
    t->pool = pool;
    t->fab = fab;
    t->next_id = 1;
    /* regions with memfds of their own are handed to local clients, who watch this page */
    if (appl_pool_own_fd(pool) && net_local_live_start(&t->live) != XM_OK) t->live = NULL;
    if (pool->backing == APPL_BACKING_FILE) {
        snprintf(t->meta_path, sizeof(t->meta_path), "%s.meta", pool->path);
        xm_status_t status = meta_load(t);
        if (status != XM_OK) {
            appl_regions_cleanup(t);
            return status;
        }
    }
    return XM_OK;
}

void appl_regions_cleanup(appl_regions_t *t)
{
    /* local clients see the appliance gone before its regions go */
    net_local_live_stop(t->live);
    t->live = NULL;
    appl_cow_cleanup(t);
    pthread_mutex_lock(&t->lock);
    HASH_CLEAR(hh_id, t->by_id);
    HASH_CLEAR(hh_name, t->by_name);
    while (t->head != NULL) {
        appl_region_t *r = t->head;
        t->head = r->next;
        region_release(t, r, false);
    }
    t->count = 0;
    graves_reap(t, true);
    appl__files_cleanup(t); /* file regions' table stays on disk: they come back at start */
    pthread_mutex_unlock(&t->lock);
    pthread_mutex_destroy(&t->lock);
}

static appl_region_t *region_find(appl_regions_t *t, uint64_t id, const char *name)
{
    appl_region_t *r = NULL;
    if (id != 0) {
        HASH_FIND(hh_id, t->by_id, &id, sizeof(id), r);
    } else if (name != NULL && name[0] != '\0') {
        HASH_FIND(hh_name, t->by_name, name, strlen(name), r);
    }
    return r;
}

static appl_grant_t *grant_find(appl_region_t *r, const char *tenant)
{
    for (uint32_t i = 0; i < r->ngrants; i++) {
        if (strcmp(r->grants[i].tenant, tenant) == 0) {
            return &r->grants[i];
        }
    }
    return NULL;
}

static void desc_fill(const appl_region_t *r, uint64_t key, xm_access_t access, appl_desc_t *d)
{
    d->id = r->id;
    d->size = r->size;
    d->key = key;
    d->access = access;
    snprintf(d->name, sizeof(d->name), "%s", r->name);
}

xm_status_t appl_region_create(appl_regions_t *t, const char *owner, uint64_t size,
                               const char *name, appl_desc_t *desc, const char **why_p)
{
    appl_region_t *r;
    pthread_mutex_lock(&t->lock);
    xm_status_t status = appl__region_create_locked(t, owner, size, name, desc, &r, why_p);
    pthread_mutex_unlock(&t->lock);
    return status;
}

xm_status_t appl__region_create_locked(appl_regions_t *t, const char *owner, uint64_t size,
                                       const char *name, appl_desc_t *desc, appl_region_t **r_p,
                                       const char **why_p)
{
    if (size == 0) {
        WHY("region size 0");
        return XM_ERR_INVALID;
    }
    graves_reap(t, false);
    xm_status_t status;
    uint64_t want = (size + t->pool->extent_size - 1) / t->pool->extent_size;
    if (t->keyring != NULL && !rpc_keyring_has_tenant(t->keyring, owner)) {
        WHY("the tenant's credentials were revoked");
        status = XM_ERR_AUTH;
        goto out;
    }
    if (name != NULL && name[0] != '\0' && region_find(t, 0, name) != NULL) {
        WHY("a region with that name exists");
        status = XM_ERR_EXISTS;
        goto out;
    }
    if (size > t->pool->size || want > t->pool->nextents - t->pool->used) {
        WHY("not enough free space in the pool");
        status = XM_ERR_NO_SPACE;
        goto out;
    }
    /* a tenant's own regions count against its quota here; the manager's (named '@...')
     * count against the manager's quota instead */
    if (t->tenant_quota != 0 && (name == NULL || name[0] != '@')) {
        uint64_t held = 0;
        for (appl_region_t *o = t->head; o != NULL; o = o->next) {
            if (o->name[0] != '@' && strcmp(o->grants[0].tenant, owner) == 0)
                held += (uint64_t)o->nextents * t->pool->extent_size;
        }
        if (held + want * t->pool->extent_size > t->tenant_quota) {
            WHY("the tenant's quota on this appliance would be exceeded (--quota)");
            status = XM_ERR_NO_SPACE;
            goto out;
        }
    }
    appl_region_t *r = region_new(t->next_id, size, name, owner, (uint32_t)want);
    if (r == NULL) {
        status = XM_ERR_NO_MEMORY;
        goto out;
    }
    status = appl_pool_alloc(t->pool, r->nextents, r->extents);
    if (status != XM_OK) {
        WHY("not enough free space in the pool");
        goto err_free;
    }
    /* memfd and hugetlb pools: a memfd of its own, which the local transport can hand out */
    status = appl_pool_own_fd(t->pool)
                 ? appl_pool_map_own(t->pool, r->nextents, &r->window, &r->memfd)
                 : appl_pool_map(t->pool, r->extents, r->nextents, &r->window);
    if (status != XM_OK) {
        WHY("cannot map the region (hugetlb pages short?)");
        goto err_pool;
    }
    /* the registration covers exactly the bytes asked for, not the rounded extents */
    status = net_mr_reg(t->fab, r->window, size, XM_ACCESS_READ_WRITE, &r->grants[0].mr_rw,
                        &r->grants[0].key_rw);
    if (status != XM_OK) {
        WHY("cannot register the region with the transport");
        goto err_unmap;
    }
    t->next_id++;
    table_add(t, r);
    if (meta_save(t) != XM_OK) {
        table_del(t, r);
        WHY("cannot persist the pool metadata");
        status = XM_ERR_IO;
        region_release(t, r, true);
        goto out;
    }
    desc_fill(r, r->grants[0].key_rw, XM_ACCESS_READ_WRITE, desc);
    *r_p = r;
    return XM_OK;

err_unmap:
    munmap(r->window, window_len(t, r));
    if (r->memfd >= 0) close(r->memfd);
err_pool:
    /* nothing was written: the extents go back without a hole punch being needed */
    appl_pool_free(t->pool, r->extents, r->nextents);
err_free:
    free(r->extents);
    free(r->grants);
    free(r);
out:
    return status;
}

/* Find a region the tenant may see; XM_ERR_NOT_FOUND / XM_ERR_PERM otherwise. */
static xm_status_t visible(appl_regions_t *t, const char *tenant, uint64_t id, const char *name,
                           appl_region_t **r_p, appl_grant_t **g_p, const char **why_p)
{
    appl_region_t *r = region_find(t, id, name);
    if (r == NULL) {
        WHY("no such region");
        return XM_ERR_NOT_FOUND;
    }
    /* a revoked tenant's sessions may still be closing, and the manager may ask for it */
    if (t->keyring != NULL && !rpc_keyring_has_tenant(t->keyring, tenant)) {
        WHY("the tenant's credentials were revoked");
        return XM_ERR_AUTH;
    }
    /* the manager acts as every region's owner (docs/security.md) */
    appl_grant_t *g = strcmp(tenant, XM_MANAGER_TENANT) == 0 ? &r->grants[0] : grant_find(r, tenant);
    if (g == NULL) {
        WHY("region not owned by or granted to this tenant");
        return XM_ERR_PERM;
    }
    *r_p = r;
    *g_p = g;
    return XM_OK;
}

xm_status_t appl_region_open(appl_regions_t *t, const char *tenant, uint64_t id,
                             const char *name, xm_access_t access, appl_desc_t *desc,
                             const char **why_p)
{
    pthread_mutex_lock(&t->lock);
    appl_region_t *r;
    appl_grant_t *g;
    xm_status_t status = visible(t, tenant, id, name, &r, &g, why_p);
    if (status != XM_OK) goto out;
    if (r->file_fd >= 0 && appl__file_broken(r)) {
        /* its window has scratch pages in it: no new key reads zeros as data */
        WHY("the region's file shrank (or a read of it failed) while exposed: destroy the "
            "region and create it again");
        status = XM_ERR_IO;
        goto out;
    }
    if (access == XM_ACCESS_READ_WRITE && r->read_only) {
        WHY("the region is a read-only file region: open it for reading");
        status = XM_ERR_PERM;
        goto out;
    }
    if (access == XM_ACCESS_READ_WRITE && g->access != XM_ACCESS_READ_WRITE) {
        WHY("only read access was granted");
        status = XM_ERR_PERM;
        goto out;
    }
    if (access == XM_ACCESS_READ_WRITE) {
        if (g->mr_rw == NULL) {
            status = net_mr_reg(t->fab, r->window, r->size, XM_ACCESS_READ_WRITE, &g->mr_rw,
                                &g->key_rw);
            if (status != XM_OK) goto out;
        }
        desc_fill(r, g->key_rw, XM_ACCESS_READ_WRITE, desc);
    } else {
        if (g->mr_ro == NULL) {
            status = net_mr_reg(t->fab, r->window, r->size, XM_ACCESS_READ, &g->mr_ro, &g->key_ro);
            if (status != XM_OK) goto out;
        }
        desc_fill(r, g->key_ro, XM_ACCESS_READ, desc);
    }
out:
    pthread_mutex_unlock(&t->lock);
    return status;
}

xm_status_t appl_region_fd(appl_regions_t *t, const char *tenant, uint64_t id, const char *name,
                           uint64_t key, xm_access_t access, appl_desc_t *desc, int *fd_p,
                           const char **why_p)
{
    pthread_mutex_lock(&t->lock);
    appl_region_t *r;
    appl_grant_t *g = NULL;
    xm_status_t status;
    uint64_t gkey = 0;
    xm_access_t got = XM_ACCESS_READ;
    if (id == NET_LOCAL_LIVE_ID && key == 0) {
        /* no region: the liveness page, read-only (any session on the local socket) */
        status = XM_ERR_NOT_FOUND;
        if (t->live == NULL) {
            WHY("this appliance has no liveness page");
            goto out;
        }
        int fd = net_local_reopen_ro(net_local_live_fd(t->live));
        if (fd < 0) {
            WHY("cannot make a descriptor of the liveness page");
            status = XM_ERR_IO;
            goto out;
        }
        memset(desc, 0, sizeof(*desc));
        desc->id = NET_LOCAL_LIVE_ID;
        desc->size = (uint64_t)sysconf(_SC_PAGESIZE);
        desc->access = XM_ACCESS_READ;
        *fd_p = fd;
        status = XM_OK;
        goto out;
    }
    if (key != 0) {
        /* the key is the capability (allocation parts): the tenant must still be valid */
        r = region_find(t, id, name);
        status = XM_ERR_NOT_FOUND;
        if (r == NULL) {
            WHY("no such region");
            goto out;
        }
        status = XM_ERR_AUTH;
        if (t->keyring != NULL && !rpc_keyring_has_tenant(t->keyring, tenant)) {
            WHY("the tenant's credentials were revoked");
            goto out;
        }
        for (uint32_t i = 0; i < r->ngrants && g == NULL; i++) {
            appl_grant_t *c = &r->grants[i];
            if (c->mr_rw != NULL && c->key_rw == key) {
                g = c;
                got = XM_ACCESS_READ_WRITE;
            } else if (c->mr_ro != NULL && c->key_ro == key) {
                g = c;
                got = XM_ACCESS_READ;
            }
        }
        status = XM_ERR_PERM;
        if (g == NULL) {
            WHY("the key names no registration of this region");
            goto out;
        }
        gkey = key;
    } else {
        status = visible(t, tenant, id, name, &r, &g, why_p);
        if (status != XM_OK) goto out;
        got = g->access;
        gkey = access == XM_ACCESS_READ_WRITE ? g->key_rw : g->key_ro;
    }
    if (access == XM_ACCESS_READ_WRITE && got != XM_ACCESS_READ_WRITE) {
        WHY("only read access was granted");
        status = XM_ERR_PERM;
        goto out;
    }
    if (r->file_fd >= 0) {
        /* its memory is a file's page cache: no memfd to hand out, and a descriptor of the
         * file could be truncated or kept past a revocation (docs/file-regions.md) */
        WHY("a file region is reached over the fabric, not mapped");
        status = XM_ERR_INVALID;
        goto out;
    }
    if (r->memfd < 0) {
        WHY("the region lives on a pool file: reach it over the fabric");
        status = XM_ERR_INVALID;
        goto out;
    }
    if (r->cow != NULL) {
        /* a local mapping would bypass copy-on-write (docs/virtual-copy.md) */
        WHY("the region has virtual copies or is one: reach it over the fabric (reopen it)");
        status = XM_ERR_INVALID;
        goto out;
    }
    if (!holder_has(r, tenant)) {
        char (*h)[XM_NAME_MAX + 1] = realloc(r->holders, (r->nholders + 1) * sizeof(*h));
        status = XM_ERR_NO_MEMORY;
        if (h == NULL) goto out;
        r->holders = h;
        snprintf(h[r->nholders++], XM_NAME_MAX + 1, "%s", tenant);
    }
    /* read-only: a reopen of the memfd for reading, which cannot be mapped writable */
    int fd = access == XM_ACCESS_READ_WRITE ? fcntl(r->memfd, F_DUPFD_CLOEXEC, 0)
                                            : net_local_reopen_ro(r->memfd);
    if (fd < 0) {
        xm_log_error("region %llu: cannot make a descriptor for %s: %m",
                     (unsigned long long)r->id, tenant);
        WHY("cannot make a descriptor of the region");
        status = XM_ERR_IO;
        goto out;
    }
    desc_fill(r, gkey, access, desc);
    *fd_p = fd;
    status = XM_OK;
out:
    pthread_mutex_unlock(&t->lock);
    return status;
}

xm_status_t appl_region_destroy(appl_regions_t *t, const char *tenant, uint64_t id,
                                const char *name, const char **why_p)
{
    pthread_mutex_lock(&t->lock);
    graves_reap(t, false);
    appl_region_t *r;
    appl_grant_t *g;
    xm_status_t status = visible(t, tenant, id, name, &r, &g, why_p);
    if (status == XM_OK && g != &r->grants[0]) {
        WHY("only the owner may destroy a region");
        status = XM_ERR_PERM;
    }
    if (status == XM_OK) {
        table_del(t, r);
        /* the table on disk must forget the region before its memory goes */
        status = r->file_fd >= 0 ? appl__files_save(t) : meta_save(t);
        if (status != XM_OK) {
            WHY("cannot persist the pool metadata");
            table_add(t, r);
        } else {
            appl_cow_release(t, r); /* its copies stay intact */
            region_release(t, r, true);
        }
    }
    pthread_mutex_unlock(&t->lock);
    return status;
}

xm_status_t appl_region_grant(appl_regions_t *t, const char *tenant, uint64_t id,
                              const char *name, const char *grantee, xm_access_t access,
                              const char **why_p)
{
    pthread_mutex_lock(&t->lock);
    appl_region_t *r;
    appl_grant_t *g;
    xm_status_t status = visible(t, tenant, id, name, &r, &g, why_p);
    if (status != XM_OK) goto out;
    if (g != &r->grants[0]) {
        WHY("only the owner may grant access");
        status = XM_ERR_PERM;
        goto out;
    }
    if (strcmp(grantee, tenant) == 0) {
        WHY("the owner already has full access");
        status = XM_ERR_INVALID;
        goto out;
    }
    if (r->read_only && access == XM_ACCESS_READ_WRITE) {
        WHY("the region is a read-only file region: only read access can be granted");
        status = XM_ERR_PERM;
        goto out;
    }
    appl_grant_t *old = grant_find(r, grantee);
    xm_access_t was = old != NULL ? old->access : XM_ACCESS_READ;
    if (old != NULL) {
        old->access = access;
    } else if (grant_add(r, grantee, access) == NULL) {
        status = XM_ERR_NO_MEMORY;
        goto out;
    }
    status = r->file_fd >= 0 ? appl__files_save(t) : meta_save(t);
    if (status != XM_OK) {
        WHY("cannot persist the pool metadata");
        if (old != NULL) {
            grant_find(r, grantee)->access = was;
        } else {
            r->ngrants--; /* the grant just added is the last */
        }
    } else if (old != NULL) {
        /* a changed grant revokes the keys handed out under the old one */
        grant_close(grant_find(r, grantee));
        /* and a descriptor of the memfd given under it (local transport) */
        if (r->memfd >= 0 && holder_has(r, grantee)) region_move(t, r);
    }
out:
    pthread_mutex_unlock(&t->lock);
    return status;
}

xm_status_t appl_region_revoke_grant(appl_regions_t *t, const char *tenant, uint64_t id,
                                     const char *name, const char *grantee, const char **why_p)
{
    pthread_mutex_lock(&t->lock);
    appl_region_t *r;
    appl_grant_t *g;
    xm_status_t status = visible(t, tenant, id, name, &r, &g, why_p);
    if (status != XM_OK) goto out;
    if (g != &r->grants[0]) {
        WHY("only the owner may revoke a grant");
        status = XM_ERR_PERM;
        goto out;
    }
    appl_grant_t *old = grant_find(r, grantee);
    if (old == &r->grants[0]) {
        WHY("the owner's own access cannot be revoked");
        status = XM_ERR_INVALID;
        goto out;
    }
    if (old == NULL) {
        WHY("that tenant has no grant on this region");
        status = XM_ERR_NOT_FOUND;
        goto out;
    }
    appl_grant_t gone = *old;
    size_t at = (size_t)(old - r->grants);
    memmove(old, old + 1, (r->ngrants - at - 1) * sizeof(*old));
    r->ngrants--;
    status = r->file_fd >= 0 ? appl__files_save(t) : meta_save(t);
    if (status != XM_OK) {
        WHY("cannot persist the pool metadata");
        memmove(&r->grants[at + 1], &r->grants[at], (r->ngrants - at) * sizeof(*old));
        r->grants[at] = gone;
        r->ngrants++;
        goto out;
    }
    /* each grant has registrations of its own: closing them ends the grantee's keys (and no
     * one else's); a memfd it was handed (local transport) stops being the region */
    grant_close(&gone);
    if (r->memfd >= 0 && holder_has(r, grantee)) region_move(t, r);
    xm_log_info("tenant %s revoked %s's grant on region %llu", tenant, grantee,
                (unsigned long long)r->id);
out:
    pthread_mutex_unlock(&t->lock);
    return status;
}

xm_status_t appl_region_grants(appl_regions_t *t, const char *tenant, uint64_t id,
                               const char *name, appl_grant_entry_t **list_p, size_t *n_p)
{
    *list_p = NULL;
    *n_p = 0;
    pthread_mutex_lock(&t->lock);
    appl_region_t *r;
    appl_grant_t *g;
    const char *why;
    const char **why_p = &why;
    xm_status_t status = visible(t, tenant, id, name, &r, &g, why_p);
    if (status == XM_OK && g == &r->grants[0] && r->ngrants > 1) {
        appl_grant_entry_t *l = calloc(r->ngrants - 1, sizeof(*l));
        if (l == NULL) {
            status = XM_ERR_NO_MEMORY;
        } else {
            for (uint32_t i = 1; i < r->ngrants; i++) {
                snprintf(l[i - 1].tenant, sizeof(l[i - 1].tenant), "%s", r->grants[i].tenant);
                l[i - 1].access = r->grants[i].access;
            }
            *list_p = l;
            *n_p = r->ngrants - 1;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return status;
}

static uint64_t resident_bytes(const appl_regions_t *t, const appl_region_t *r)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t chunk = 1u << 30;
    size_t len = window_len(t, r);
    unsigned char *vec = malloc(chunk / page);
    if (vec == NULL) return 0;
    uint64_t resident = 0;
    for (size_t off = 0; off < len; off += chunk) {
        size_t n = XM_MIN(chunk, len - off);
        if (mincore((uint8_t *)r->window + off, n, vec) != 0) break;
        for (size_t i = 0; i < n / page; i++) resident += vec[i] & 1;
    }
    free(vec);
    return resident * page;
}

static void info_fill(const appl_regions_t *t, const appl_region_t *r, xm_region_info_t *info)
{
    memset(info, 0, sizeof(*info));
    info->id = r->id;
    info->size = r->size;
    snprintf(info->name, sizeof(info->name), "%s", r->name);
    snprintf(info->owner, sizeof(info->owner), "%s", r->grants[0].tenant);
    info->extents = r->nextents;
    info->grants = r->ngrants - 1;
    info->resident = resident_bytes(t, r);
    info->copy_of = r->copy_of;
    info->copy_kind = r->copy_kind;
}

xm_status_t appl_region_stat(appl_regions_t *t, const char *tenant, uint64_t id,
                             const char *name, xm_region_info_t *info, const char **why_p)
{
    pthread_mutex_lock(&t->lock);
    appl_region_t *r;
    appl_grant_t *g;
    xm_status_t status = visible(t, tenant, id, name, &r, &g, why_p);
    if (status == XM_OK) {
        info_fill(t, r, info);
    }
    pthread_mutex_unlock(&t->lock);
    return status;
}

xm_status_t appl_region_list(appl_regions_t *t, const char *tenant, xm_region_info_t **infos_p,
                             size_t *count_p)
{
    pthread_mutex_lock(&t->lock);
    xm_region_info_t *infos = calloc(t->count + 1, sizeof(*infos));
    if (infos == NULL) {
        pthread_mutex_unlock(&t->lock);
        return XM_ERR_NO_MEMORY;
    }
    size_t n = 0;
    for (appl_region_t *r = t->head; r != NULL; r = r->next) {
        if (grant_find(r, tenant) != NULL || strcmp(tenant, XM_MANAGER_TENANT) == 0) {
            info_fill(t, r, &infos[n++]);
        }
    }
    pthread_mutex_unlock(&t->lock);
    *infos_p = infos;
    *count_p = n;
    return XM_OK;
}

void appl_pool_info(appl_regions_t *t, xm_appliance_info_t *info)
{
    pthread_mutex_lock(&t->lock);
    memset(info, 0, sizeof(*info));
    info->pool_size = t->pool->size;
    info->pool_used = (uint64_t)t->pool->used * t->pool->extent_size;
    info->extent_size = t->pool->extent_size;
    info->regions = t->count;
    snprintf(info->backing, sizeof(info->backing), "%s", appl_backing_name(t->pool->backing));
    snprintf(info->provider, sizeof(info->provider), "%s", t->fab->provider);
    pthread_mutex_unlock(&t->lock);
}

/* ---- region.c's table, for file_region.c (lock held) -------------------------------- */

appl_region_t *appl__region_new(appl_regions_t *t, uint64_t size, const char *name,
                                const char *owner)
{
    return region_new(t->next_id, size, name, owner, 0);
}

void appl__region_free(appl_region_t *r)
{
    free(r->holders);
    free(r->extents);
    free(r->grants);
    free(r);
}

void appl__table_add(appl_regions_t *t, appl_region_t *r) { table_add(t, r); }
void appl__table_del(appl_regions_t *t, appl_region_t *r) { table_del(t, r); }

appl_region_t *appl__region_find(appl_regions_t *t, uint64_t id, const char *name)
{
    return region_find(t, id, name);
}

appl_grant_t *appl__grant_add(appl_region_t *r, const char *tenant, xm_access_t access)
{
    return grant_add(r, tenant, access);
}

xm_status_t appl__visible(appl_regions_t *t, const char *tenant, uint64_t id, const char *name,
                          appl_region_t **r_p, appl_grant_t **g_p, const char **why_p)
{
    return visible(t, tenant, id, name, r_p, g_p, why_p);
}

/* ---- region.c for cow.c (lock held) ------------------------------------------------ */

xm_status_t appl__cow_visible(appl_regions_t *t, const char *tenant, uint64_t id,
                              const char *name, appl_region_t **r_p, appl_grant_t **g_p,
                              const char **why_p)
{
    return visible(t, tenant, id, name, r_p, g_p, why_p);
}

void appl__region_fence(appl_regions_t *t, appl_region_t *r)
{
    if (r->memfd >= 0 && r->nholders > 0) region_move(t, r);
}
