/* File regions: an existing file on the appliance's host mapped MAP_SHARED and registered
 * as a region (docs/file-regions.md). The checks that decide which files a tenant may
 * expose live here, with the table that brings file regions back after a restart and the
 * SIGBUS guard for a file that shrinks under its mapping. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/common.h"
#include "appliance.h"

#define WHY(text)                                                                            \
    do {                                                                                     \
        *why_p = (text);                                                                     \
    } while (0)

#define PROTECT_MAX 16
/* file regions one xmemd holds at once (each takes a slot of the SIGBUS table) */
#define BUS_SLOTS 4096

/* Settings and the table's path; guarded by the region table's lock. */
struct appl_files {
    char **dirs;            /* allowed directories, resolved */
    uint32_t ndirs;
    uint64_t max_size;      /* 0: no limit */
    char table_path[PATH_MAX + 16];
    char *protect[PROTECT_MAX]; /* directories holding xmemd's own files: nothing there is exposed */
    uint32_t nprotect;
};

/*
 * A file region's window, for the SIGBUS handler. A file that shrinks while mapped makes
 * any access past its new end raise SIGBUS - in xmemd that is the provider moving a remote
 * peer's bytes. The handler maps anonymous memory over the window from the faulting page on
 * and returns, so the access completes on scratch memory (reads give zeros, writes are
 * dropped) and the region is marked: its sync fails from then on. Slots are written with
 * the table's lock held and read by the handler without locks (atomics).
 */
static struct {
    _Atomic uintptr_t start;
    _Atomic size_t len;
    atomic_int fd;          /* the file, to tell a shrunk file from a failed read */
    atomic_int hit;
} bus[BUS_SLOTS];
static atomic_int bus_installed;
static uintptr_t bus_page = 4096;

static void bus_handler(int sig, siginfo_t *si, void *uctx)
{
    (void)uctx;
    uintptr_t addr = (uintptr_t)si->si_addr;
    for (int i = 0; i < BUS_SLOTS; i++) {
        uintptr_t start = atomic_load(&bus[i].start);
        size_t len = atomic_load(&bus[i].len);
        if (start == 0 || addr < start || addr >= start + len) continue;
        uintptr_t page = addr & ~(bus_page - 1);
        /* past the file's end: scratch from here to the window's end (every later page
         * would fault too); inside it (a read error of the disk): this page only, so the
         * file's healthy pages stay mapped. fstat is async-signal-safe. */
        struct stat st;
        size_t span = bus_page;
        if (fstat(atomic_load(&bus[i].fd), &st) == 0 && (uintptr_t)st.st_size <= page - start)
            span = start + len - page;
        if (mmap((void *)page, span, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
            break;
        atomic_store(&bus[i].hit, 1);
        static const char msg[] = "xmemd: a file region's file shrank or could not be read "
                                  "while exposed: accesses there go to scratch memory; destroy "
                                  "the region\n";
        if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0) { /* nothing more to do */ }
        return;
    }
    /* not ours: the default action */
    signal(sig, SIG_DFL);
    raise(sig);
}

static int bus_add(void *window, size_t len, int fd)
{
    if (!atomic_exchange(&bus_installed, 1)) {
        bus_page = (uintptr_t)sysconf(_SC_PAGESIZE);
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = bus_handler;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGBUS, &sa, NULL) != 0) xm_log_warn("cannot handle SIGBUS: %m");
    }
    for (int i = 0; i < BUS_SLOTS; i++) {
        if (atomic_load(&bus[i].start) != 0) continue;
        atomic_store(&bus[i].hit, 0);
        atomic_store(&bus[i].fd, fd);
        atomic_store(&bus[i].len, len);
        atomic_store(&bus[i].start, (uintptr_t)window);
        return i;
    }
    return -1;
}

static void bus_del(int slot)
{
    if (slot < 0) return;
    atomic_store(&bus[slot].start, 0);
    atomic_store(&bus[slot].len, 0);
}

static bool bus_hit(const appl_region_t *r)
{
    return r->bus_slot >= 0 && atomic_load(&bus[r->bus_slot].hit);
}

bool appl__file_broken(const appl_region_t *r)
{
    return bus_hit(r);
}

/* ---- settings --------------------------------------------------------------------------- */

void appl_files_protect(appl_regions_t *t, const char *path)
{
    struct appl_files *f = t->files;
    if (f == NULL || path == NULL || path[0] == '\0' || f->nprotect == PROTECT_MAX) return;
    char copy[PATH_MAX], dir[PATH_MAX];
    snprintf(copy, sizeof(copy), "%s", path);
    if (realpath(dirname(copy), dir) == NULL) return;
    f->protect[f->nprotect] = strdup(dir);
    if (f->protect[f->nprotect] != NULL) f->nprotect++;
}

void appl__files_cleanup(appl_regions_t *t)
{
    struct appl_files *f = t->files;
    if (f == NULL) return;
    for (uint32_t i = 0; i < f->ndirs; i++) free(f->dirs[i]);
    free(f->dirs);
    for (uint32_t i = 0; i < f->nprotect; i++) free(f->protect[i]);
    free(f);
    t->files = NULL;
}

/* Is path (resolved) under one of the allowed directories? */
static bool path_allowed(const struct appl_files *f, const char *path)
{
    for (uint32_t i = 0; i < f->ndirs; i++) {
        size_t n = strlen(f->dirs[i]);
        if (strcmp(f->dirs[i], "/") == 0) return true;
        if (strncmp(path, f->dirs[i], n) == 0 && path[n] == '/') return true;
    }
    return false;
}

static bool path_protected(const struct appl_files *f, const char *path)
{
    char copy[PATH_MAX];
    snprintf(copy, sizeof(copy), "%s", path);
    const char *dir = dirname(copy);
    for (uint32_t i = 0; i < f->nprotect; i++) {
        if (strcmp(dir, f->protect[i]) == 0) return true;
    }
    return false;
}

/*
 * Open path for a file region after every check (docs/file-regions.md, "What is refused"):
 * *fd_p is open (read-write, or read-only) and flocked (exclusive, or shared for read_only),
 * *size_p its size, resolved its real path. Nothing is opened for I/O before the path is
 * known to be an allowed regular file: O_PATH first, so a fifo or a device is never opened.
 */
static xm_status_t file_open(const struct appl_files *f, const char *path, bool read_only,
                             int *fd_p, uint64_t *size_p, char *resolved, const char **why_p)
{
    if (f == NULL || f->ndirs == 0) {
        WHY("file regions are off on this appliance: start xmemd with --file-dir DIR");
        return XM_ERR_PERM;
    }
    if (path == NULL || path[0] != '/') {
        WHY("give the file's absolute path on the appliance's host");
        return XM_ERR_INVALID;
    }
    if (realpath(path, resolved) == NULL) {
        /* a path outside the allowed directories is refused as such whether or not it
         * exists: a tenant learns nothing of the rest of the host's files */
        if (!path_allowed(f, path) || strstr(path, "/..") != NULL) {
            WHY("the file is outside the directories this appliance exposes (--file-dir)");
            return XM_ERR_PERM;
        }
        if (errno == ENOENT || errno == ENOTDIR) {
            WHY("no such file on the appliance's host");
            return XM_ERR_NOT_FOUND;
        }
        WHY("cannot resolve the file's path (permission?)");
        return XM_ERR_PERM;
    }
    if (!path_allowed(f, resolved)) {
        WHY("the file is outside the directories this appliance exposes (--file-dir)");
        return XM_ERR_PERM;
    }
    if (path_protected(f, resolved)) {
        WHY("the file is in a directory holding xmemd's own files (pool, secret, identity)");
        return XM_ERR_PERM;
    }
    int pfd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (pfd < 0) {
        WHY(errno == ENOENT ? "no such file on the appliance's host"
                            : "cannot open the file (permission?)");
        return errno == ENOENT ? XM_ERR_NOT_FOUND : XM_ERR_PERM;
    }
    struct stat st;
    xm_status_t status = XM_ERR_INVALID;
    if (fstat(pfd, &st) != 0) {
        WHY("cannot stat the file");
        status = XM_ERR_IO;
        goto err_pfd;
    }
    if (S_ISLNK(st.st_mode)) {
        WHY("the path is a symbolic link: give the path of the file itself");
        goto err_pfd;
    }
    if (!S_ISREG(st.st_mode)) {
        WHY("not a regular file (a directory, fifo, socket or device cannot be a region)");
        goto err_pfd;
    }
    /* the file opened is the one checked: resolve it again through its descriptor */
    char proc[64], real[PATH_MAX];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pfd);
    ssize_t n = readlink(proc, real, sizeof(real) - 1);
    if (n <= 0) {
        WHY("cannot resolve the opened file");
        status = XM_ERR_IO;
        goto err_pfd;
    }
    real[n] = '\0';
    if (!path_allowed(f, real) || path_protected(f, real)) {
        WHY("the file is outside the directories this appliance exposes (--file-dir)");
        status = XM_ERR_PERM;
        goto err_pfd;
    }
    snprintf(resolved, PATH_MAX, "%s", real);
    /* a hard link inside an allowed directory may name a file that lives outside it
     * (a key under /etc owned by root and mode 0600 passes every other check) */
    if (st.st_nlink != 1) {
        WHY("the file has other hard links: its other names may be outside --file-dir "
            "(copy it instead)");
        status = XM_ERR_PERM;
        goto err_pfd;
    }
    if (st.st_uid != geteuid()) {
        WHY("the file is owned by another user: it must belong to xmemd's user (chown)");
        status = XM_ERR_PERM;
        goto err_pfd;
    }
    if ((st.st_mode & 077) != 0) {
        WHY("the file is readable or writable by other users: chmod 600 it (a region's data "
            "is its tenant's)");
        status = XM_ERR_PERM;
        goto err_pfd;
    }
    if (st.st_size == 0) {
        WHY("the file is empty: a region needs at least one byte (size it first)");
        goto err_pfd;
    }
    if (f->max_size != 0 && (uint64_t)st.st_size > f->max_size) {
        WHY("the file is larger than this appliance exposes (--max-file-region)");
        status = XM_ERR_NO_SPACE;
        goto err_pfd;
    }
    /* reopen the inode checked (not the path again) for I/O */
    int fd = open(proc, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        WHY(read_only ? "cannot open the file for reading"
                      : "cannot open the file for writing (use --read-only for a read-only file)");
        status = XM_ERR_PERM;
        goto err_pfd;
    }
    close(pfd);
    if (flock(fd, (read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
        WHY(errno == EWOULDBLOCK ? "the file is locked by another process (or exposed already)"
                                 : "cannot lock the file");
        close(fd);
        return errno == EWOULDBLOCK ? XM_ERR_EXISTS : XM_ERR_IO;
    }
    /* size again under the lock: what the region will map */
    if (fstat(fd, &st) != 0 || st.st_size == 0) {
        WHY("the file is empty: a region needs at least one byte (size it first)");
        close(fd);
        return XM_ERR_INVALID;
    }
    *fd_p = fd;
    *size_p = (uint64_t)st.st_size;
    return XM_OK;

err_pfd:
    close(pfd);
    return status;
}

/* Map, register and put in the table a file region whose file is open (lock held). */
static xm_status_t file_attach(appl_regions_t *t, appl_region_t *r, int fd, uint64_t size,
                               const char *resolved, bool read_only, const char **why_p)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = (size_t)((size + page - 1) / page * page);
    r->file_path = strdup(resolved);
    if (r->file_path == NULL) return XM_ERR_NO_MEMORY;
    void *w = mmap(NULL, len, PROT_READ | (read_only ? 0 : PROT_WRITE), MAP_SHARED, fd, 0);
    if (w == MAP_FAILED) {
        xm_log_error("cannot map file %s: %m", resolved);
        WHY("cannot map the file");
        goto err_path;
    }
    r->window = w;
    r->file_fd = fd;
    r->read_only = read_only;
    r->bus_slot = bus_add(w, len, fd);
    if (r->bus_slot < 0) {
        WHY("too many file regions on this appliance");
        goto err_unmap;
    }
    appl_grant_t *o = &r->grants[0];
    o->access = read_only ? XM_ACCESS_READ : XM_ACCESS_READ_WRITE;
    xm_status_t status = read_only
                             ? net_mr_reg(t->fab, w, size, XM_ACCESS_READ, &o->mr_ro, &o->key_ro)
                             : net_mr_reg(t->fab, w, size, XM_ACCESS_READ_WRITE, &o->mr_rw,
                                          &o->key_rw);
    if (status != XM_OK) {
        WHY("cannot register the region with the transport");
        goto err_bus;
    }
    /* a read-only region's other grants can only read, whatever a record says */
    for (uint32_t i = 1; i < r->ngrants && read_only; i++) r->grants[i].access = XM_ACCESS_READ;
    appl__table_add(t, r);
    return XM_OK;

err_bus:
    bus_del(r->bus_slot);
    r->bus_slot = -1;
err_unmap:
    munmap(w, len);
    r->window = NULL;
    r->file_fd = -1;
err_path:
    free(r->file_path);
    r->file_path = NULL;
    return XM_ERR_IO;
}

void appl__file_release(appl_regions_t *t, appl_region_t *r)
{
    (void)t;
    bus_del(r->bus_slot);
    r->bus_slot = -1;
    close(r->file_fd); /* and its lock; the file itself is never truncated or removed */
    r->file_fd = -1;
    free(r->file_path);
    r->file_path = NULL;
}

xm_status_t appl_region_create_file(appl_regions_t *t, const char *owner, const char *path,
                                    bool read_only, const char *name, appl_desc_t *desc,
                                    const char **why_p)
{
    int fd;
    uint64_t size;
    char resolved[PATH_MAX];
    pthread_mutex_lock(&t->lock);
    xm_status_t status;
    if (t->keyring != NULL && !rpc_keyring_has_tenant(t->keyring, owner)) {
        WHY("the tenant's credentials were revoked");
        status = XM_ERR_AUTH;
        goto out;
    }
    if (name != NULL && name[0] != '\0' && appl__region_find(t, 0, name) != NULL) {
        WHY("a region with that name exists");
        status = XM_ERR_EXISTS;
        goto out;
    }
    status = file_open(t->files, path, read_only, &fd, &size, resolved, why_p);
    if (status != XM_OK) goto out;
    appl_region_t *r = appl__region_new(t, size, name, owner);
    if (r == NULL) {
        close(fd);
        status = XM_ERR_NO_MEMORY;
        goto out;
    }
    status = file_attach(t, r, fd, size, resolved, read_only, why_p);
    if (status != XM_OK) {
        close(fd);
        appl__region_free(r);
        goto out;
    }
    t->next_id++;
    status = appl__files_save(t);
    if (status != XM_OK) {
        appl__table_del(t, r);
        WHY("cannot persist the file region table");
        appl__region_release(t, r, true);
        goto out;
    }
    appl_grant_t *o = &r->grants[0];
    desc->id = r->id;
    desc->size = r->size;
    desc->key = read_only ? o->key_ro : o->key_rw;
    desc->access = o->access;
    snprintf(desc->name, sizeof(desc->name), "%s", r->name);
    xm_log_info("tenant %s exposed file %s as region %llu (%llu bytes, %s)", owner, resolved,
                (unsigned long long)r->id, (unsigned long long)size,
                read_only ? "read-only" : "read-write");
out:
    pthread_mutex_unlock(&t->lock);
    return status;
}

xm_status_t appl_region_sync(appl_regions_t *t, const char *tenant, uint64_t id, const char *name,
                             uint64_t offset, uint64_t length, const char **why_p)
{
    pthread_mutex_lock(&t->lock);
    appl_region_t *r;
    appl_grant_t *g;
    xm_status_t status = appl__visible(t, tenant, id, name, &r, &g, why_p);
    if (status != XM_OK) goto out;
    if (r->file_fd < 0 && t->pool->backing != APPL_BACKING_FILE) {
        WHY("the region is in memory (memfd or hugetlb pool): there is no file to sync");
        status = XM_ERR_INVALID;
        goto out;
    }
    if (offset > r->size || (length != 0 && length > r->size - offset)) {
        WHY("sync range outside the region");
        status = XM_ERR_RANGE;
        goto out;
    }
    if (length == 0) length = r->size - offset;
    if (bus_hit(r)) {
        WHY("the file shrank (or a read of it failed) while exposed: accesses there were lost; "
            "destroy the region");
        status = XM_ERR_IO;
        goto out;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uint64_t start = offset / page * page;
    /* held under the table's lock: the window stays mapped while it is written out */
    if (length > 0 && msync((uint8_t *)r->window + start, (size_t)(offset + length - start),
                            MS_SYNC) != 0) {
        xm_log_error("region %llu: msync: %m", (unsigned long long)r->id);
        WHY("the file could not be written to disk (I/O error)");
        status = XM_ERR_IO;
        goto out;
    }
    if (bus_hit(r)) {
        WHY("the file shrank (or a read of it failed) while exposed: accesses there were lost; "
            "destroy the region");
        status = XM_ERR_IO;
    }
out:
    pthread_mutex_unlock(&t->lock);
    return status;
}

/* ---- the table of file regions ---------------------------------------------------------- */

xm_status_t appl__files_save(appl_regions_t *t)
{
    struct appl_files *f = t->files;
    if (f == NULL || f->table_path[0] == '\0') return XM_OK;
    size_t n = 0, ngrants = 0;
    for (appl_region_t *r = t->head; r != NULL; r = r->next) {
        if (r->file_fd < 0) continue;
        n++;
        ngrants += r->ngrants;
    }
    Xmem__FileRegionTable tab = XMEM__FILE_REGION_TABLE__INIT;
    Xmem__FileRegionRecord *recs = calloc(n + 1, sizeof(*recs));
    Xmem__FileRegionRecord **ptrs = calloc(n + 1, sizeof(*ptrs));
    Xmem__PoolGrant *grants = calloc(ngrants + 1, sizeof(*grants));
    Xmem__PoolGrant **gptrs = calloc(ngrants + 1, sizeof(*gptrs));
    uint8_t *buf = NULL;
    xm_status_t status = XM_ERR_NO_MEMORY;
    if (recs == NULL || ptrs == NULL || grants == NULL || gptrs == NULL) goto out;
    size_t i = 0, gi = 0;
    for (appl_region_t *r = t->head; r != NULL; r = r->next) {
        if (r->file_fd < 0) continue;
        xmem__file_region_record__init(&recs[i]);
        recs[i].id = r->id;
        recs[i].name = r->name;
        recs[i].owner = r->grants[0].tenant;
        recs[i].path = r->file_path;
        recs[i].read_only = r->read_only;
        recs[i].grants = &gptrs[gi];
        recs[i].n_grants = appl__grants_encode(r, &grants[gi], &gptrs[gi]);
        gi += recs[i].n_grants;
        ptrs[i] = &recs[i];
        i++;
    }
    tab.version = 1;
    tab.n_regions = i;
    tab.regions = ptrs;
    size_t len = xmem__file_region_table__get_packed_size(&tab);
    buf = malloc(len + 1);
    if (buf == NULL) goto out;
    xmem__file_region_table__pack(&tab, buf);
    char tmp[sizeof(f->table_path) + 8];
    snprintf(tmp, sizeof(tmp), "%s.tmp", f->table_path);
    status = XM_ERR_IO;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0) {
        if (write(fd, buf, len) == (ssize_t)len && fsync(fd) == 0 &&
            rename(tmp, f->table_path) == 0)
            status = XM_OK;
        close(fd);
    }
    if (status != XM_OK) xm_log_error("cannot save the file region table %s: %m", f->table_path);
out:
    free(buf);
    free(recs);
    free(ptrs);
    free(grants);
    free(gptrs);
    return status;
}

/* Restore the file regions the table lists (lock held); a file that fails a check now is
 * logged and left out (and the table rewritten without it). */
static xm_status_t files_load(appl_regions_t *t)
{
    struct appl_files *f = t->files;
    int fd = open(f->table_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return errno == ENOENT ? XM_OK : XM_ERR_IO;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size > 64 * 1024 * 1024 || st.st_uid != geteuid() ||
        (st.st_mode & 077) != 0) {
        close(fd);
        xm_log_error("file region table %s unreadable, too large or accessible by others",
                     f->table_path);
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
    Xmem__FileRegionTable *tab = NULL;
    const char *bad = NULL;
    xm_status_t ds = proto_files_decode(buf, len, &tab, &bad);
    free(buf);
    if (ds != XM_OK) {
        xm_log_error("file region table %s is invalid: %s", f->table_path, bad);
        return XM_ERR_INVALID;
    }
    uint32_t restored = 0, dropped = 0;
    for (size_t i = 0; i < tab->n_regions; i++) {
        const Xmem__FileRegionRecord *rec = tab->regions[i];
        const char *why = "bad record";
        bool ok = proto_file_record_ok(rec, &why);
        if (ok && (appl__region_find(t, rec->id, NULL) != NULL ||
                   (rec->name[0] != '\0' && appl__region_find(t, 0, rec->name) != NULL))) {
            ok = false;
            why = "its id or name is taken";
        }
        int ffd = -1;
        uint64_t size = 0;
        char resolved[PATH_MAX];
        appl_region_t *r = NULL;
        if (ok) ok = file_open(f, rec->path, rec->read_only, &ffd, &size, resolved, &why) == XM_OK;
        if (ok) {
            r = appl__region_new(t, size, rec->name, rec->owner);
            ok = r != NULL;
            if (ok) r->id = rec->id;
            else why = "out of memory";
        }
        for (size_t g = 0; ok && g < rec->n_grants; g++) {
            xm_access_t a = rec->grants[g]->access == XMEM__ACCESS__ACCESS_READ_WRITE
                                ? XM_ACCESS_READ_WRITE : XM_ACCESS_READ;
            ok = appl__grant_add(r, rec->grants[g]->tenant, a) != NULL;
        }
        if (ok) ok = file_attach(t, r, ffd, size, resolved, rec->read_only, &why) == XM_OK;
        if (!ok) {
            xm_log_error("file region %llu (%s, file %s) not restored: %s",
                         (unsigned long long)rec->id, rec->name, rec->path, why);
            if (ffd >= 0) close(ffd);
            if (r != NULL) appl__region_free(r);
            dropped++;
            continue;
        }
        if (rec->id >= t->next_id) t->next_id = rec->id + 1;
        restored++;
    }
    xmem__file_region_table__free_unpacked(tab, NULL);
    xm_log_info("restored %u file regions from %s%s", restored, f->table_path,
                dropped > 0 ? " (some dropped: see above)" : "");
    return dropped > 0 ? appl__files_save(t) : XM_OK;
}

xm_status_t appl_files_init(appl_regions_t *t, const char *dirs, uint64_t max_size,
                            const char *table_path, const char *const *protect)
{
    struct appl_files *f = calloc(1, sizeof(*f));
    if (f == NULL) return XM_ERR_NO_MEMORY;
    f->max_size = max_size;
    snprintf(f->table_path, sizeof(f->table_path), "%s", table_path != NULL ? table_path : "");
    xm_status_t status = XM_OK;
    char *copy = strdup(dirs != NULL ? dirs : "");
    if (copy == NULL) {
        free(f);
        return XM_ERR_NO_MEMORY;
    }
    char *save = NULL;
    for (char *d = strtok_r(copy, ":", &save); d != NULL; d = strtok_r(NULL, ":", &save)) {
        char real[PATH_MAX];
        struct stat st;
        if (realpath(d, real) == NULL || stat(real, &st) != 0 || !S_ISDIR(st.st_mode)) {
            xm_log_error("--file-dir %s: not a directory", d);
            status = XM_ERR_INVALID;
            break;
        }
        char **nd = realloc(f->dirs, (f->ndirs + 1) * sizeof(*nd));
        if (nd == NULL || (nd[f->ndirs] = strdup(real)) == NULL) {
            if (nd != NULL) f->dirs = nd;
            status = XM_ERR_NO_MEMORY;
            break;
        }
        f->dirs = nd;
        f->ndirs++;
        if (strcmp(real, "/") == 0) xm_log_warn("--file-dir /: tenants may expose any file of "
                                                "xmemd's user");
    }
    free(copy);
    pthread_mutex_lock(&t->lock);
    t->files = f;
    if (status == XM_OK) {
        /* the table itself is never exposed, nor xmemd's other files */
        appl_files_protect(t, f->table_path);
        for (size_t i = 0; protect != NULL && protect[i] != NULL; i++)
            appl_files_protect(t, protect[i]);
        /* file regions off: the table is left as it is, for a start with --file-dir */
        if (f->ndirs == 0 && f->table_path[0] != '\0' && access(f->table_path, F_OK) == 0)
            xm_log_warn("file regions listed in %s are not restored: file regions are off "
                        "(start xmemd with --file-dir to get them back)", f->table_path);
        else if (f->table_path[0] != '\0') status = files_load(t);
    }
    if (status != XM_OK) appl__files_cleanup(t);
    pthread_mutex_unlock(&t->lock);
    return status;
}
