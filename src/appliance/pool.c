/* The pool: backing memory reserved but never touched, cut into extents. */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/memfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/common.h"
#include "appliance.h"

xm_status_t appl_backing_parse(const char *text, appl_backing_t *backing_p, char *path,
                               size_t pathlen)
{
    if (strcmp(text, "memfd") == 0) {
        *backing_p = APPL_BACKING_MEMFD;
        return XM_OK;
    }
    if (strcmp(text, "hugetlb") == 0) {
        *backing_p = APPL_BACKING_HUGETLB;
        return XM_OK;
    }
    if (strncmp(text, "file:", 5) == 0 && text[5] != '\0' && strlen(text + 5) < pathlen) {
        *backing_p = APPL_BACKING_FILE;
        snprintf(path, pathlen, "%s", text + 5);
        return XM_OK;
    }
    return XM_ERR_INVALID;
}

const char *appl_backing_name(appl_backing_t backing)
{
    switch (backing) {
    case APPL_BACKING_MEMFD: return "memfd";
    case APPL_BACKING_HUGETLB: return "hugetlb";
    case APPL_BACKING_FILE: return "file";
    }
    return "?";
}

xm_status_t appl_pool_init(appl_pool_t *pool, appl_backing_t backing, const char *path,
                           uint64_t size, uint64_t extent_size)
{
    memset(pool, 0, sizeof(*pool));
    pool->fd = -1;
    pool->backing = backing;
    if (extent_size == 0 || (extent_size & (extent_size - 1)) != 0 ||
        extent_size % (uint64_t)sysconf(_SC_PAGESIZE) != 0) {
        xm_log_error("extent size %llu is not a power of two multiple of the page size",
                     (unsigned long long)extent_size);
        return XM_ERR_INVALID;
    }
    uint64_t n = size / extent_size;
    if (n == 0 || n > UINT32_MAX) {
        xm_log_error("pool size %llu holds no extent of %llu bytes (or too many)",
                     (unsigned long long)size, (unsigned long long)extent_size);
        return XM_ERR_INVALID;
    }
    pool->extent_size = extent_size;
    pool->nextents = (uint32_t)n;
    pool->size = n * extent_size;
    switch (backing) {
    case APPL_BACKING_MEMFD:
        pool->fd = memfd_create("xmem-pool", MFD_CLOEXEC);
        break;
    case APPL_BACKING_HUGETLB:
        pool->fd = memfd_create("xmem-pool", MFD_CLOEXEC | MFD_HUGETLB);
        break;
    case APPL_BACKING_FILE:
        snprintf(pool->path, sizeof(pool->path), "%s", path);
        pool->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        break;
    }
    if (pool->fd < 0) {
        xm_log_error("cannot create the %s pool: %m", appl_backing_name(backing));
        return XM_ERR_IO;
    }
    struct stat st;
    if (backing == APPL_BACKING_FILE) {
        /* one xmemd per pool file: a second one would overwrite the first one's regions */
        if (flock(pool->fd, LOCK_EX | LOCK_NB) != 0) {
            xm_log_error("pool file %s is in use by another xmemd (%m): refusing to start", path);
            goto err_close;
        }
        if (fstat(pool->fd, &st) == 0 &&
            (st.st_uid != geteuid() || (st.st_mode & 077) != 0 || !S_ISREG(st.st_mode))) {
            xm_log_error("pool file %s is accessible by other users or owned by another "
                         "(mode %03o, uid %u): refused; run chmod 600 %s", path,
                         (unsigned)(st.st_mode & 0777), (unsigned)st.st_uid, path);
            goto err_close;
        }
    }
    if (fstat(pool->fd, &st) != 0 || ((uint64_t)st.st_size < pool->size &&
                                      ftruncate(pool->fd, (off_t)pool->size) != 0)) {
        xm_log_error("cannot size the pool to %llu bytes: %m", (unsigned long long)pool->size);
        goto err_close;
    }
    if (backing == APPL_BACKING_FILE && (uint64_t)st.st_size > pool->size) {
        xm_log_error("pool file %s is %lld bytes, larger than --pool %llu: refusing to lose data",
                     path, (long long)st.st_size, (unsigned long long)pool->size);
        goto err_close;
    }
    pool->bitmap = calloc((n + 63) / 64, sizeof(uint64_t));
    if (pool->bitmap == NULL) {
        goto err_close;
    }
    return XM_OK;

err_close:
    close(pool->fd);
    pool->fd = -1;
    return XM_ERR_IO;
}

void appl_pool_cleanup(appl_pool_t *pool)
{
    free(pool->bitmap);
    pool->bitmap = NULL;
    if (pool->fd >= 0) {
        if (pool->backing == APPL_BACKING_FILE) {
            fsync(pool->fd);
        }
        close(pool->fd);
        pool->fd = -1;
    }
}

static bool bit_get(const appl_pool_t *pool, uint32_t i)
{
    return (pool->bitmap[i / 64] >> (i % 64)) & 1u;
}

static void bit_set(appl_pool_t *pool, uint32_t i, bool on)
{
    if (on) {
        pool->bitmap[i / 64] |= 1ull << (i % 64);
    } else {
        pool->bitmap[i / 64] &= ~(1ull << (i % 64));
    }
}

xm_status_t appl_pool_alloc(appl_pool_t *pool, uint32_t n, uint32_t *extents)
{
    if (n == 0 || n > pool->nextents - pool->used) {
        return XM_ERR_NO_SPACE;
    }
    /* first fit, skipping whole used words: keeps regions in long runs */
    uint32_t got = 0;
    for (uint32_t w = 0; w < (pool->nextents + 63) / 64 && got < n; w++) {
        if (pool->bitmap[w] == UINT64_MAX) {
            continue;
        }
        for (uint32_t b = 0; b < 64 && got < n; b++) {
            uint32_t i = w * 64 + b;
            if (i < pool->nextents && !bit_get(pool, i)) {
                extents[got++] = i;
            }
        }
    }
    if (got < n) {
        return XM_ERR_NO_SPACE;
    }
    for (uint32_t i = 0; i < n; i++) {
        bit_set(pool, extents[i], true);
    }
    pool->used += n;
    return XM_OK;
}

xm_status_t appl_pool_claim(appl_pool_t *pool, const uint32_t *extents, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (extents[i] >= pool->nextents || bit_get(pool, extents[i])) {
            for (uint32_t j = 0; j < i; j++) {
                bit_set(pool, extents[j], false);
            }
            return XM_ERR_INVALID;
        }
        bit_set(pool, extents[i], true);
    }
    pool->used += n;
    return XM_OK;
}

void appl_pool_free(appl_pool_t *pool, const uint32_t *extents, uint32_t n)
{
    for (uint32_t i = 0; i < n;) {
        uint32_t run = 1;
        while (i + run < n && extents[i + run] == extents[i] + run) {
            run++;
        }
        if (fallocate(pool->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      (off_t)((uint64_t)extents[i] * pool->extent_size),
                      (off_t)((uint64_t)run * pool->extent_size)) != 0) {
            xm_log_warn("cannot return extents %u..%u to the OS: %m", extents[i],
                        extents[i] + run - 1);
        }
        for (uint32_t j = 0; j < run; j++) {
            bit_set(pool, extents[i + j], false);
        }
        i += run;
    }
    pool->used -= n;
}

xm_status_t appl_pool_map(appl_pool_t *pool, const uint32_t *extents, uint32_t n,
                          void **window_p)
{
    size_t len = (size_t)n * pool->extent_size;
    size_t align = pool->extent_size;
    /* reserve an extent-aligned window (hugetlb needs it; it also lets THP-sized
     * pages line up), then trim the slack */
    uint8_t *raw = mmap(NULL, len + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                        -1, 0);
    if (raw == MAP_FAILED) {
        xm_log_error("cannot reserve %zu bytes of address space: %m", len);
        return XM_ERR_NO_SPACE;
    }
    uint8_t *win = (uint8_t *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
    if (win > raw) munmap(raw, (size_t)(win - raw));
    if (win + len < raw + len + align) munmap(win + len, (size_t)(raw + len + align - (win + len)));
    /* hugetlb reserves its pages at map time, so a short pool fails here, not on access */
    int noreserve = pool->backing == APPL_BACKING_HUGETLB ? 0 : MAP_NORESERVE;
    for (uint32_t i = 0; i < n;) {
        uint32_t run = 1;
        while (i + run < n && extents[i + run] == extents[i] + run) {
            run++;
        }
        void *p = mmap(win + (size_t)i * pool->extent_size, (size_t)run * pool->extent_size,
                       PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | noreserve, pool->fd,
                       (off_t)((uint64_t)extents[i] * pool->extent_size));
        if (p == MAP_FAILED) {
            xm_log_error("cannot map %u pool extents: %m", run);
            munmap(win, len);
            return XM_ERR_NO_SPACE;
        }
        i += run;
    }
    *window_p = win;
    return XM_OK;
}

/* ---- a region's own memfd (the local transport, src/xfer/local.h) ---------------------- */

bool appl_pool_own_fd(const appl_pool_t *pool)
{
    return pool->backing != APPL_BACKING_FILE;
}

static size_t trailer_len(const appl_pool_t *pool)
{
    /* hugetlb files are sized and mapped in huge pages */
    return pool->backing == APPL_BACKING_HUGETLB ? (size_t)pool->extent_size
                                                 : (size_t)sysconf(_SC_PAGESIZE);
}

size_t appl_pool_memfd_len(const appl_pool_t *pool, uint32_t n)
{
    return (size_t)n * pool->extent_size + trailer_len(pool);
}

xm_status_t appl_pool_remap_own(appl_pool_t *pool, uint32_t n, void *window, int fd)
{
    size_t len = (size_t)n * pool->extent_size;
    int noreserve = pool->backing == APPL_BACKING_HUGETLB ? 0 : MAP_NORESERVE;
    void *p = mmap(window, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | noreserve, fd, 0);
    if (p == MAP_FAILED) {
        xm_log_error("cannot map a region memfd of %zu bytes: %m", len);
        return XM_ERR_NO_SPACE;
    }
    return XM_OK;
}

xm_status_t appl_pool_map_own(appl_pool_t *pool, uint32_t n, void **window_p, int *fd_p)
{
    size_t len = (size_t)n * pool->extent_size;
    size_t align = pool->extent_size;
    int fd;
    xm_status_t status = net_local_memfd(appl_pool_memfd_len(pool, n),
                                         pool->backing == APPL_BACKING_HUGETLB, &fd);
    if (status != XM_OK) return status;
    /* an extent-aligned window, as appl_pool_map makes */
    uint8_t *raw = mmap(NULL, len + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                        -1, 0);
    if (raw == MAP_FAILED) {
        close(fd);
        return XM_ERR_NO_SPACE;
    }
    uint8_t *win = (uint8_t *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
    if (win > raw) munmap(raw, (size_t)(win - raw));
    if (win + len < raw + len + align) munmap(win + len, (size_t)(raw + len + align - (win + len)));
    status = appl_pool_remap_own(pool, n, win, fd);
    if (status != XM_OK) {
        munmap(win, len);
        close(fd);
        return status;
    }
    *window_p = win;
    *fd_p = fd;
    return XM_OK;
}

void appl_pool_retire_own(appl_pool_t *pool, uint32_t n, int fd)
{
    size_t win = (size_t)n * pool->extent_size, tl = trailer_len(pool);
    /* the mark first, then the pages: a holder that reads data after the punch (zeros)
     * finds the mark when it checks after its copy */
    uint64_t *tr = mmap(NULL, tl, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)win);
    if (tr != MAP_FAILED) {
        __atomic_store_n(tr, (uint64_t)1, __ATOMIC_SEQ_CST);
        munmap(tr, tl);
    } else {
        xm_log_warn("cannot mark a region memfd retired: %m");
    }
    net_local_release(fd, win);
}
