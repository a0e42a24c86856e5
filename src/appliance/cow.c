/* Virtual copy: snapshots and clones of a region, copy-on-write by userfaultfd.
 *
 * A copy is a region of its own (extents reserved, an empty sparse memfd, its own
 * registration). At copy time the source's window in xmemd is write-protected
 * (UFFDIO_WRITEPROTECT, with WP_UNPOPULATED so that holes trap too) while the fabric's
 * progress loop is parked, so the copy is one point in time; the copy's window is
 * registered for MISSING faults. One handler thread serves both kinds of fault:
 *  - a write to a protected source page P (the tcp provider's recvmsg into the window,
 *    blocked in the kernel on the fault) first gives every copy that lacks P the page as
 *    it is, then un-protects P and wakes the writer;
 *  - a read or write of a page P the copy lacks fills it from its parent (a clone of a
 *    clone asks its parent, which may ask its own), then wakes the reader.
 * Invariant: for a copy C of X, every page C lacks is, in X (resolved the same way), what
 * it was when C was made - any write to X's P goes through the fault that gives C the page.
 * A region leaving the table first materializes its copies (they get every page they lack)
 * and detaches from its parent. Local clients (who map the memfd and would bypass the
 * protection) are fenced at copy time and refused while a region takes part (region.c).
 * docs/virtual-copy.md has the why and the measurements.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../common/common.h"
#include "appliance.h"

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif

/* Batch of pages a materialization copies per UFFDIO_COPY. */
#define COW_BATCH (2u << 20)

/* A region taking part in virtual copy: it has copies, or it is a copy lacking pages. */
typedef struct appl_cow {
    appl_region_t *r;
    uint8_t *win;
    size_t len, npages;
    int memfd;
    struct appl_cow *parent;  /* where pages it lacks come from; NULL: lacks none */
    uint64_t *have;           /* copy: bit per page it holds itself */
    size_t lacking;           /* pages it does not hold */
    struct appl_cow **deps;   /* its copies that still lack pages */
    uint32_t ndeps, cap;
    bool reg_wp, reg_missing; /* how its window is registered */
    struct appl_cow *next;    /* the engine's list */
} appl_cow_t;

/*
 * The engine: one userfaultfd for every window that takes part, and its handler thread.
 * lock guards the list and every appl_cow_t; lock order: the region table's lock, then
 * this one. The handler takes only this lock; a thread holding it never touches a
 * registered window through its mapping (pread of memfds and uffd ioctls only).
 */
typedef struct appl_cow_eng {
    int uffd, stopfd;
    pthread_t thread;
    pthread_mutex_t lock;
    size_t page;              /* the pool's page: 4 KiB, or the huge page */
    uint8_t *buf;             /* COW_BATCH bytes, page-aligned: what UFFDIO_COPY copies */
    appl_cow_t *list;
    uint64_t cow_pages, fill_pages; /* counters, for the log */
} appl_cow_eng_t;

static bool has(const appl_cow_t *c, size_t p)
{
    return c->have == NULL || (c->have[p / 64] >> (p % 64)) & 1;
}

static void set_has(appl_cow_t *c, size_t p)
{
    if (c->have == NULL || has(c, p)) return;
    c->have[p / 64] |= 1ull << (p % 64);
    c->lacking--;
}

/* Page p of x as a copy of it would see it: from the nearest ancestor that holds it. */
static int resolve(appl_cow_eng_t *e, const appl_cow_t *x, size_t p, uint8_t *buf)
{
    while (x->parent != NULL && !has(x, p)) x = x->parent;
    size_t done = 0;
    while (done < e->page) {
        ssize_t n = pread(x->memfd, buf + done, e->page - done, (off_t)(p * e->page + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            xm_log_error("virtual copy: cannot read page %zu of region %llu: %m", p,
                         (unsigned long long)x->r->id);
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

/* Install len bytes of buf at page p of c's window (it lacks them); wakes who waits there. */
static int install(appl_cow_eng_t *e, appl_cow_t *c, size_t p, const uint8_t *buf, size_t len)
{
    struct uffdio_copy cp = {.dst = (uintptr_t)(c->win + p * e->page), .src = (uintptr_t)buf,
                             .len = len, .mode = c->ndeps > 0 ? UFFDIO_COPY_MODE_WP : 0};
    while (ioctl(e->uffd, UFFDIO_COPY, &cp) != 0) {
        if (errno == EEXIST) {
            /* a page there already (one we filled earlier): nothing to lose, wake */
            struct uffdio_range rg = {.start = cp.dst, .len = len};
            ioctl(e->uffd, UFFDIO_WAKE, &rg);
            break;
        }
        if (errno == EAGAIN && cp.copy > 0) {
            cp.dst += (uint64_t)cp.copy;
            cp.src += (uint64_t)cp.copy;
            cp.len -= (uint64_t)cp.copy;
            cp.copy = 0;
            continue;
        }
        if (errno == EAGAIN) continue;
        xm_log_error("virtual copy: cannot fill page %zu of region %llu (%m): it will read as "
                     "zeros", p, (unsigned long long)c->r->id);
        return -1;
    }
    for (size_t i = 0; i < len / e->page; i++) set_has(c, p + i);
    return 0;
}

/* c lacks page p: give it the page as its parent has it. */
static void fill(appl_cow_eng_t *e, appl_cow_t *c, size_t p)
{
    if (has(c, p)) return;
    if (resolve(e, c->parent, p, e->buf) == 0) install(e, c, p, e->buf, e->page);
    e->fill_pages++;
}

static void protect(appl_cow_eng_t *e, appl_cow_t *x, size_t off, size_t len, bool on)
{
    struct uffdio_writeprotect wp = {.range = {.start = (uintptr_t)(x->win + off), .len = len},
                                     .mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0};
    if (ioctl(e->uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
        xm_log_error("virtual copy: cannot %s region %llu: %m", on ? "write-protect" : "unprotect",
                     (unsigned long long)x->r->id);
    }
}

static appl_cow_t *find_addr(appl_cow_eng_t *e, uintptr_t a)
{
    for (appl_cow_t *c = e->list; c != NULL; c = c->next) {
        if (a >= (uintptr_t)c->win && a < (uintptr_t)c->win + c->len) return c;
    }
    return NULL;
}

static void serve_fault(appl_cow_eng_t *e, const struct uffd_msg *m)
{
    uintptr_t a = (uintptr_t)m->arg.pagefault.address & ~(uintptr_t)(e->page - 1);
    pthread_mutex_lock(&e->lock);
    appl_cow_t *x = find_addr(e, a);
    if (x == NULL) {
        /* the window left (its region went) after the fault was raised: wake, it refaults */
        struct uffdio_range rg = {.start = a, .len = e->page};
        ioctl(e->uffd, UFFDIO_WAKE, &rg);
        pthread_mutex_unlock(&e->lock);
        return;
    }
    size_t p = (a - (uintptr_t)x->win) / e->page;
    if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
        /* a write to a protected page: x's copies that lack it get it as it is now */
        if (x->parent != NULL) fill(e, x, p);
        for (uint32_t i = 0; i < x->ndeps; i++) {
            if (!has(x->deps[i], p) && resolve(e, x, p, e->buf) == 0) {
                install(e, x->deps[i], p, e->buf, e->page);
            }
        }
        e->cow_pages++;
        protect(e, x, p * e->page, e->page, false); /* and wakes the writer */
    } else if (x->parent != NULL && !has(x, p)) {
        fill(e, x, p);
    } else {
        /* held already (or no longer a copy): a zero page if nothing is there */
        memset(e->buf, 0, e->page);
        install(e, x, p, e->buf, e->page);
    }
    pthread_mutex_unlock(&e->lock);
}

/* After a fault the handler keeps polling the userfaultfd this long before it sleeps: the
 * writes of one transfer fault page after page, and waking a sleeping thread costs
 * 20-50 us here (LIMITS.md), as much as the copy itself. Idle, it sleeps in poll. */
#ifndef COW_SPIN_NS
#define COW_SPIN_NS 200000ull
#endif

static void *handler_main(void *arg)
{
    appl_cow_eng_t *e = arg;
    struct pollfd pf[2] = {{.fd = e->uffd, .events = POLLIN}, {.fd = e->stopfd, .events = POLLIN}};
    uint64_t last = 0;
    for (;;) {
        if (xm__now_ns() - last > COW_SPIN_NS) {
            if (poll(pf, 2, -1) < 0) {
                if (errno == EINTR) continue;
                break;
            }
            if (pf[1].revents != 0) break;
        }
        struct uffd_msg msgs[16];
        ssize_t n = read(e->uffd, msgs, sizeof(msgs));
        if (n < 0) {
            if (errno == EAGAIN) {
                sched_yield(); /* spinning: leave the CPU to whoever needs it */
                continue;
            }
            if (errno == EINTR) continue;
            xm_log_error("virtual copy: reading the userfaultfd: %m");
            break;
        }
        for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++) {
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT) serve_fault(e, &msgs[i]);
        }
        last = xm__now_ns();
    }
    return NULL;
}

/* The engine, made on first use. Table lock held. */
static xm_status_t eng_get(appl_regions_t *t, appl_cow_eng_t **e_p, const char **why_p)
{
    if (t->cow != NULL) {
        *e_p = t->cow;
        return XM_OK;
    }
    appl_cow_eng_t *e = calloc(1, sizeof(*e));
    if (e == NULL) return XM_ERR_NO_MEMORY;
    size_t blen = COW_BATCH; /* the huge page, when larger, below */
    pthread_mutex_init(&e->lock, NULL);
    e->stopfd = -1;
    /* not UFFD_USER_MODE_ONLY: the writes to trap are the kernel's (recvmsg into the window) */
    e->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    struct uffdio_api api = {.api = UFFD_API,
                             .features = UFFD_FEATURE_MISSING_SHMEM |
                                         UFFD_FEATURE_MISSING_HUGETLBFS |
                                         UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
                                         UFFD_FEATURE_WP_UNPOPULATED};
    if (e->uffd < 0 || ioctl(e->uffd, UFFDIO_API, &api) != 0) {
        xm_log_error("virtual copy: userfaultfd with write-protect of shared memory: %m");
        *why_p = "virtual copy needs userfaultfd with write-protect of shared memory (kernel "
                 "6.6+, and root or CAP_SYS_PTRACE for the provider's kernel-side writes)";
        goto err;
    }
    e->page = (size_t)sysconf(_SC_PAGESIZE);
    if (t->pool->backing == APPL_BACKING_HUGETLB) {
        /* hugetlbfs reports its page size as the block size */
        int fd;
        struct stat st;
        if (net_local_memfd(t->pool->extent_size, true, &fd) == XM_OK) {
            if (fstat(fd, &st) == 0 && st.st_blksize > 0) e->page = (size_t)st.st_blksize;
            close(fd);
        }
    }
    blen = XM_MAX((size_t)COW_BATCH, e->page);
    e->buf = mmap(NULL, blen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    e->stopfd = eventfd(0, EFD_CLOEXEC);
    if (e->buf == MAP_FAILED || e->stopfd < 0) {
        if (e->buf == MAP_FAILED) e->buf = NULL;
        goto err;
    }
    if (pthread_create(&e->thread, NULL, handler_main, e) != 0) goto err;
    t->cow = e;
    *e_p = e;
    return XM_OK;
err:
    if (e->buf != NULL) munmap(e->buf, blen);
    if (e->stopfd >= 0) close(e->stopfd);
    if (e->uffd >= 0) close(e->uffd);
    pthread_mutex_destroy(&e->lock);
    free(e);
    if (*why_p == NULL) *why_p = "cannot start the copy-on-write handler";
    return XM_ERR_IO;
}

static appl_cow_t *state_get(appl_cow_eng_t *e, appl_regions_t *t, appl_region_t *r)
{
    if (r->cow != NULL) return r->cow;
    appl_cow_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return NULL;
    c->r = r;
    c->win = r->window;
    c->len = (size_t)r->nextents * t->pool->extent_size;
    c->npages = c->len / e->page;
    c->memfd = r->memfd;
    c->next = e->list;
    e->list = c;
    r->cow = c;
    return c;
}

/* Register x's window with the modes it needs now; false on failure (errno kept). */
static bool reg(appl_cow_eng_t *e, appl_cow_t *x, bool wp, bool missing)
{
    if ((!wp || x->reg_wp) && (!missing || x->reg_missing)) return true;
    struct uffdio_register rg = {
        .range = {.start = (uintptr_t)x->win, .len = x->len},
        .mode = (wp || x->reg_wp ? UFFDIO_REGISTER_MODE_WP : 0) |
                (missing || x->reg_missing ? UFFDIO_REGISTER_MODE_MISSING : 0)};
    if (ioctl(e->uffd, UFFDIO_REGISTER, &rg) != 0) return false;
    x->reg_wp |= wp;
    x->reg_missing |= missing;
    return true;
}

/* Forget x: unregister its window, take it off the list, free it. Engine lock held. */
static void state_free(appl_cow_eng_t *e, appl_cow_t *x)
{
    if (x->reg_wp || x->reg_missing) {
        struct uffdio_range rg = {.start = (uintptr_t)x->win, .len = x->len};
        if (ioctl(e->uffd, UFFDIO_UNREGISTER, &rg) != 0) {
            xm_log_warn("virtual copy: cannot unregister region %llu: %m",
                        (unsigned long long)x->r->id);
        }
    }
    for (appl_cow_t **pp = &e->list; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == x) {
            *pp = x->next;
            break;
        }
    }
    x->r->cow = NULL;
    free(x->deps);
    free(x->have);
    free(x);
}

/* x no longer has copies to serve or pages to fetch: let it go. */
static void maybe_free(appl_cow_eng_t *e, appl_cow_t *x)
{
    if (x->ndeps == 0 && x->parent == NULL) state_free(e, x);
}

/* c stops depending on its parent. Engine lock held. */
static void detach(appl_cow_eng_t *e, appl_cow_t *c)
{
    appl_cow_t *x = c->parent;
    if (x == NULL) return;
    for (uint32_t i = 0; i < x->ndeps; i++) {
        if (x->deps[i] == c) {
            x->deps[i] = x->deps[--x->ndeps];
            break;
        }
    }
    c->parent = NULL;
    if (x->ndeps == 0) {
        if (x->reg_wp) protect(e, x, 0, x->len, false); /* its writes go straight in again */
        maybe_free(e, x);
    }
}

/* Give c every page it lacks, then detach it from its parent. Engine lock held. Pages its
 * parent has as holes stay holes in c (zeros either way) unless c has copies of its own
 * (then every page is installed, write-protected, and the registration stays). */
static void materialize(appl_cow_eng_t *e, appl_cow_t *c)
{
    if (c->parent == NULL) return;
    size_t per = XM_MAX((size_t)COW_BATCH, e->page) / e->page;
    for (size_t p = 0; p < c->npages;) {
        if (has(c, p)) {
            p++;
            continue;
        }
        /* a run of lacking pages, read into buf, then installed in one call */
        size_t n = 0;
        while (p + n < c->npages && n < per && !has(c, p + n)) {
            if (resolve(e, c->parent, p + n, e->buf + n * e->page) != 0) break;
            n++;
        }
        if (n == 0) {
            p++; /* unreadable: logged; it reads as zeros */
            continue;
        }
        bool zero = c->ndeps == 0;
        for (size_t i = 0; zero && i < n * e->page; i += 8) {
            zero = *(const uint64_t *)(e->buf + i) == 0;
        }
        if (!zero) install(e, c, p, e->buf, n * e->page);
        p += n;
    }
    detach(e, c);
    free(c->have);
    c->have = NULL;
    c->lacking = 0;
    maybe_free(e, c);
}

xm_status_t appl_cow_copy(appl_regions_t *t, const char *tenant, uint64_t id, const char *name,
                          const char *new_name, bool writable, appl_desc_t *desc,
                          const char **why_p)
{
    pthread_mutex_lock(&t->lock);
    appl_region_t *src, *r = NULL;
    appl_grant_t *g;
    appl_cow_eng_t *e;
    xm_status_t status = appl__cow_visible(t, tenant, id, name, &src, &g, why_p);
    if (status != XM_OK) goto out;
    /* the source's owner, or a tenant that could write it anyway: making a copy write-
     * protects the source and fences its local holders, which a reader may not impose */
    if (g != &src->grants[0] && g->access != XM_ACCESS_READ_WRITE) {
        *why_p = "copying a region needs its owner or a read-write grant";
        status = XM_ERR_PERM;
        goto out;
    }
    if (src->memfd < 0) {
        *why_p = "virtual copy works on memfd and hugetlb pools only (this region lives on a "
                 "pool file or is a file region; docs/virtual-copy.md)";
        status = XM_ERR_INVALID;
        goto out;
    }
    status = eng_get(t, &e, why_p);
    if (status != XM_OK) goto out;
    uint64_t t0 = xm__now_ns(), t1, t2, t3;
    /* the copy: extents reserved up front, so copy-on-write never runs out of pool */
    appl_desc_t d;
    status = appl__region_create_locked(t, tenant, src->size, new_name, &d, &r, why_p);
    if (status != XM_OK) goto out;
    r->copy_of = src->id;
    r->copy_kind = writable ? XM_COPY_CLONE : XM_COPY_SNAPSHOT;
    if (!writable) {
        /* read-only for everyone: the owner's grant says read, the write registration goes */
        r->grants[0].access = XM_ACCESS_READ;
        if (r->grants[0].mr_rw != NULL) net_mr_close(r->grants[0].mr_rw);
        r->grants[0].mr_rw = NULL;
        r->grants[0].key_rw = 0;
        status = net_mr_reg(t->fab, r->window, r->size, XM_ACCESS_READ, &r->grants[0].mr_ro,
                            &r->grants[0].key_ro);
        if (status != XM_OK) {
            *why_p = "cannot register the snapshot with the transport";
            goto err_region;
        }
    }
    /* local clients that map the source would write past the protection: move them off */
    appl__region_fence(t, src);
    pthread_mutex_lock(&e->lock);
    appl_cow_t *x = state_get(e, t, src), *c = state_get(e, t, r);
    status = XM_ERR_NO_MEMORY;
    if (x == NULL || c == NULL) goto err_state;
    c->have = calloc((c->npages + 63) / 64, sizeof(uint64_t));
    appl_cow_t **deps = x->ndeps < x->cap ? x->deps
                                          : realloc(x->deps, (x->cap * 2 + 4) * sizeof(*deps));
    if (c->have == NULL || deps == NULL) goto err_state;
    if (deps != x->deps) x->cap = x->cap * 2 + 4;
    x->deps = deps;
    c->lacking = c->npages;
    status = XM_ERR_IO;
    if (!reg(e, c, false, true)) {
        xm_log_error("virtual copy: cannot register the copy's window: %m");
        *why_p = "cannot register the copy's window with userfaultfd";
        goto err_state;
    }
    /* one point in time: no one-sided transfer moves a byte while the source is protected */
    pthread_mutex_unlock(&e->lock);
    t1 = xm__now_ns();
    net_progress_pause(t->fab);
    t2 = xm__now_ns();
    pthread_mutex_lock(&e->lock);
    if (!reg(e, x, true, false)) {
        xm_log_error("virtual copy: cannot register region %llu for write-protect: %m",
                     (unsigned long long)src->id);
        *why_p = "cannot write-protect the source (userfaultfd registration refused)";
        pthread_mutex_unlock(&e->lock);
        net_progress_resume(t->fab);
        pthread_mutex_lock(&e->lock);
        goto err_state;
    }
    protect(e, x, 0, x->len, true);
    c->parent = x;
    x->deps[x->ndeps++] = c;
    pthread_mutex_unlock(&e->lock);
    net_progress_resume(t->fab);
    t3 = xm__now_ns();
    xm_log_info("region %llu: %s %llu made: copy region %.2f ms, progress parked in %.2f ms, "
                "write-protect %.2f ms (%zu MiB)", (unsigned long long)src->id,
                writable ? "clone" : "snapshot", (unsigned long long)r->id,
                (double)(t1 - t0) / 1e6, (double)(t2 - t1) / 1e6, (double)(t3 - t2) / 1e6,
                x->len >> 20);
    *desc = d;
    if (!writable) {
        desc->key = r->grants[0].key_ro;
        desc->access = XM_ACCESS_READ;
    }
    status = XM_OK;
    goto out;

err_state:
    if (c != NULL) {
        c->parent = NULL;
        maybe_free(e, c);
    }
    if (x != NULL) maybe_free(e, x);
    pthread_mutex_unlock(&e->lock);
err_region:
    /* the copy was never handed out: destroy it as its owner would */
    {
        const char *ignored;
        uint64_t rid = r->id;
        pthread_mutex_unlock(&t->lock);
        appl_region_destroy(t, tenant, rid, "", &ignored);
        return status;
    }
out:
    pthread_mutex_unlock(&t->lock);
    return status;
}

void appl_cow_release(appl_regions_t *t, appl_region_t *r)
{
    appl_cow_eng_t *e = t->cow;
    if (e == NULL || r->cow == NULL) return;
    pthread_mutex_lock(&e->lock);
    uint64_t t0 = xm__now_ns();
    uint32_t n = r->cow->ndeps;
    /* its copies get every page they lack before its memory goes (the last one's detach
     * frees r's state when r is no copy itself) */
    while (r->cow != NULL && r->cow->ndeps > 0) materialize(e, r->cow->deps[r->cow->ndeps - 1]);
    if (n > 0) {
        xm_log_info("region %llu left with %u copies: materialized in %.1f ms",
                    (unsigned long long)r->id, n, (double)(xm__now_ns() - t0) / 1e6);
    }
    /* it may still be here (a copy of something): it stops being one */
    if (r->cow != NULL) {
        detach(e, r->cow);
        if (r->cow != NULL) state_free(e, r->cow);
    }
    pthread_mutex_unlock(&e->lock);
}

void appl_cow_cleanup(appl_regions_t *t)
{
    appl_cow_eng_t *e = t->cow;
    if (e == NULL) return;
    uint64_t one = 1;
    if (write(e->stopfd, &one, sizeof(one)) != sizeof(one)) {
        xm_log_warn("virtual copy: cannot stop the handler: %m");
    }
    pthread_join(e->thread, NULL);
    pthread_mutex_lock(&e->lock);
    xm_log_info("virtual copy: %llu pages copied on write, %llu filled on read",
                (unsigned long long)e->cow_pages, (unsigned long long)e->fill_pages);
    while (e->list != NULL) {
        appl_cow_t *x = e->list;
        x->parent = NULL;
        x->ndeps = 0;
        state_free(e, x);
    }
    pthread_mutex_unlock(&e->lock);
    close(e->uffd); /* wakes any fault still waiting: it refaults on an unregistered window */
    close(e->stopfd);
    munmap(e->buf, XM_MAX((size_t)COW_BATCH, e->page));
    pthread_mutex_destroy(&e->lock);
    free(e);
    t->cow = NULL;
}
