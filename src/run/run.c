/* libxmem-run.so: the LD_PRELOAD library behind `xmem run` (issue 14, first slice).
 *
 * It interposes the malloc family and lays the program's heap on an external
 * mapping (xm_map of a region or allocation that `xmem run` made), with
 * mimalloc managing that range as an arena (mi_manage_os_memory_ex +
 * mi_option_limit_os_alloc). Tiers (docs/run.md): up to three arenas, given to
 * mimalloc in this order, which is the order it fills them in (first fit):
 *
 *   local     anonymous memory of this host (XMEM_RUN_TIER_LOCAL bytes, trimmed
 *             at start to half of MemAvailable and to the cgroup's headroom)
 *   external  the xm_map mapping (XMEM_RUN_REGION; its local cache is bounded)
 *   file      a file on local disk (XMEM_RUN_SPILL bytes in XMEM_RUN_SPILL_DIR,
 *             unlinked, MAP_SHARED), used when the external heap is full or
 *             could not be had (no appliance capacity)
 *
 * Allocations are routed:
 *
 *   - program threads, heap ready           -> mimalloc, inside the mapping
 *   - before the heap is ready              -> a static bootstrap arena
 *   - the library's own threads (libxmem's fault handlers, libfabric's
 *     progress threads: every thread created while a thread of ours runs
 *     library code) and the constructor  -> glibc (never the mapping: a fault
 *     handler that faulted on its own heap would wait for itself)
 *   - heap full, or the child of a fork()  -> glibc
 *
 * free() and friends route by address: inside the mapping -> mimalloc, inside
 * the bootstrap arena -> nothing, anything else -> glibc.
 *
 * The region belongs to `xmem run`, which frees it when the program has
 * exited (killed or not); the library never tears the mapping down, because
 * exit() still flushes stdio buffers that live in the heap after every
 * destructor ran.
 */
#include <dlfcn.h>
#include <link.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mimalloc.h>
#include <xmem/xmem.h>

#define RUN_API __attribute__((visibility("default")))
#define TLS_IE __attribute__((tls_model("initial-exec")))
#define LIKELY(x) __builtin_expect(!!(x), 1)

/* mimalloc 2.0's segments are 32 MiB and found by masking a pointer: the arena
 * must start on that alignment (xmem run maps this much more than --heap) */
#define SEG_ALIGN (32ull << 20)
/* the region's first page holds the owner's pid (the claim), the heap follows */
#define CLAIM_BYTES 4096ull

enum { ST_BOOT, ST_HEAP, ST_LOCAL, ST_CHILD };

/* g_state moves BOOT -> HEAP|LOCAL once (constructor), HEAP -> CHILD in a fork's
 * child; g_lo/g_len are written before g_state is published (release) */
static _Atomic int g_state = ST_BOOT;
static uintptr_t g_lo, g_len;          /* the whole mapping */
enum { TIER_LOCAL, TIER_EXT, TIER_FILE, NTIERS };
static const char *const tier_name[NTIERS] = {"local", "external", "file"};
/* each tier's range (len 0: none); written before g_state is published */
static struct { uintptr_t lo, len; } g_tier[NTIERS];
static int g_spill_fd = -1;            /* the file tier's file (unlinked) */
static __thread int t_internal TLS_IE;         /* this thread runs library code: glibc only */
static pid_t g_owner;                  /* the process that mapped the heap */
static _Atomic uint64_t g_refused;     /* requests the full heap refused (ENOMEM) */
static bool g_stats;
static uint64_t g_heap_bytes, g_local_bytes, g_region_id;
static void *g_map;
static int g_err_fd = -1;              /* stderr as it was at start (coreutils close fd 2 at exit) */

/* glibc's own functions, taken from libc.so.6 itself (libmimalloc.so also
 * exports malloc and __libc_malloc) */
static void *(*lc_malloc)(size_t);
static void (*lc_free)(void *);
static void *(*lc_calloc)(size_t, size_t);
static void *(*lc_realloc)(void *, size_t);
static void *(*lc_memalign)(size_t, size_t);
static size_t (*lc_usable)(void *);
static void *(*lc_mmap)(void *, size_t, int, int, int, off_t);
static int (*lc_munmap)(void *, size_t);
static void *(*lc_mremap)(void *, size_t, size_t, int, ...);
static int (*lc_madvise)(void *, size_t, int);
static int (*lc_mprotect)(void *, size_t, int);
static int (*real_pthread_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

/* ---- bootstrap arena: serves until glibc's functions are known ---------- */

#define BOOT_BYTES (8u << 20)
static _Alignas(64) unsigned char boot_mem[BOOT_BYTES];
static _Atomic size_t boot_top;

static bool in_boot(const void *p)
{
    return (const unsigned char *)p >= boot_mem && (const unsigned char *)p < boot_mem + BOOT_BYTES;
}

/* bump allocation with the size in the 16 bytes before the block; never freed */
static void *boot_alloc(size_t n, size_t align)
{
    if (align < 16) align = 16;
    size_t top = atomic_load(&boot_top), start, end;
    do {
        start = ((top + 16 + align - 1) & ~(align - 1));
        end = start + n;
        if (end < start || end > BOOT_BYTES) {
            errno = ENOMEM;
            return NULL;
        }
    } while (!atomic_compare_exchange_weak(&boot_top, &top, end));
    *(size_t *)(boot_mem + start - 16) = n;
    return boot_mem + start;
}

static size_t boot_size(const void *p) { return *(const size_t *)((const unsigned char *)p - 16); }

static bool resolving;

/* glibc's malloc family; while dlopen/dlsym allocate, the bootstrap arena serves */
static bool resolve_libc(void)
{
    if (lc_malloc != NULL) return true;
    if (resolving) return false;
    resolving = true;
    void *h = dlopen("libc.so.6", RTLD_NOLOAD | RTLD_LAZY);
    if (h != NULL) {
        lc_free = (void (*)(void *))dlsym(h, "free");
        lc_calloc = (void *(*)(size_t, size_t))dlsym(h, "calloc");
        lc_realloc = (void *(*)(void *, size_t))dlsym(h, "realloc");
        lc_memalign = (void *(*)(size_t, size_t))dlsym(h, "memalign");
        lc_mmap = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(h, "mmap");
        lc_munmap = (int (*)(void *, size_t))dlsym(h, "munmap");
        lc_mremap = (void *(*)(void *, size_t, size_t, int, ...))dlsym(h, "mremap");
        lc_madvise = (int (*)(void *, size_t, int))dlsym(h, "madvise");
        lc_mprotect = (int (*)(void *, size_t, int))dlsym(h, "mprotect");
        lc_usable = (size_t(*)(void *))dlsym(h, "malloc_usable_size");
        real_pthread_create = (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *),
                                       void *))dlsym(h, "pthread_create");
        void *m = dlsym(h, "malloc");
        if (m && lc_free && lc_calloc && lc_realloc && lc_memalign && lc_usable && real_pthread_create && lc_mmap &&
            lc_munmap && lc_mremap && lc_madvise && lc_mprotect)
            __atomic_store_n(&lc_malloc, (void *(*)(size_t))m, __ATOMIC_RELEASE);
    }
    resolving = false;
    return lc_malloc != NULL;
}

static bool in_heap(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    return a - g_tier[TIER_EXT].lo < g_tier[TIER_EXT].len || a - g_tier[TIER_LOCAL].lo < g_tier[TIER_LOCAL].len ||
           a - g_tier[TIER_FILE].lo < g_tier[TIER_FILE].len;
}

static bool use_heap(void) { return LIKELY(atomic_load_explicit(&g_state, memory_order_acquire) == ST_HEAP) && !t_internal; }

/* The heap is full: the request fails (ENOMEM), as malloc does when memory runs
 * out; a program that asks for a large buffer and halves it on failure (sort)
 * then fits. Falling back to local memory would break the --local bound. */
static void *heap_full(void)
{
    atomic_fetch_add_explicit(&g_refused, 1, memory_order_relaxed);
    errno = ENOMEM;
    return NULL;
}

/* every request that is not the heap's */
static void *local_alloc(size_t n, size_t align, bool zero)
{
    if (!resolve_libc()) {
        void *p = boot_alloc(n, align);
        if (p != NULL && zero) memset(p, 0, n);  /* reused? never: the arena only grows */
        return p;
    }
    if (align > 16) return lc_memalign(align, n);
    return zero ? lc_calloc(1, n) : lc_malloc(n);
}

/* ---- the malloc family -------------------------------------------------- */

RUN_API void *malloc(size_t n)
{
    if (use_heap()) {
        void *p = mi_malloc(n);
        return LIKELY(p != NULL) ? p : heap_full();
    }
    return local_alloc(n, 0, false);
}

RUN_API void free(void *p)
{
    if (in_heap(p)) {
        /* a fork's child has no heap (the mapping is not inherited): its objects are gone */
        if (atomic_load_explicit(&g_state, memory_order_relaxed) != ST_CHILD) mi_free(p);
        return;
    }
    if (p == NULL || in_boot(p)) return;
    if (resolve_libc()) lc_free(p);
}

RUN_API void *calloc(size_t n, size_t size)
{
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes)) {
        errno = ENOMEM;
        return NULL;
    }
    if (use_heap()) {
        void *p = mi_calloc(n, size);
        return LIKELY(p != NULL) ? p : heap_full();
    }
    return local_alloc(bytes, 0, true);
}

RUN_API size_t malloc_usable_size(void *p)
{
    if (p == NULL) return 0;
    if (in_heap(p)) return mi_usable_size(p);
    if (in_boot(p)) return boot_size(p);
    return resolve_libc() ? lc_usable(p) : 0;
}

RUN_API void *realloc(void *p, size_t n)
{
    if (p == NULL) return malloc(n);
    if (n == 0) {
        free(p);
        return NULL;
    }
    if (in_heap(p) && use_heap()) {
        void *q = mi_realloc(p, n);
        return q != NULL ? q : heap_full();
    }
    if (!in_heap(p) && !in_boot(p) && resolve_libc()) return lc_realloc(p, n); /* stays glibc's */
    /* a bootstrap block, or a heap block in a fork's child or in a thread of ours: move it */
    size_t old = malloc_usable_size(p);
    void *q = malloc(n);
    if (q == NULL) return NULL;
    memcpy(q, p, old < n ? old : n);
    free(p);
    return q;
}

/* mimalloc 2.0.9 (Debian) now and then returns a block that misses the
 * alignment (seen: posix_memalign(512, 512), 1 in ~100k mixed requests, also
 * with plain libmimalloc): check, and ask again a bit larger */
static void *mi_aligned_checked(size_t n, size_t align)
{
    void *p = mi_malloc_aligned(n, align);
    for (size_t t = 1; p != NULL && ((uintptr_t)p & (align - 1)) != 0; t++) {
        mi_free(p);
        p = t < 8 ? mi_malloc_aligned(n + t * align, align) : NULL;
    }
    return p;
}

RUN_API void *reallocarray(void *p, size_t n, size_t size)
{
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, bytes);
}

static void *aligned(size_t align, size_t n)
{
    if (use_heap()) {
        void *p = mi_aligned_checked(n, align);
        return LIKELY(p != NULL) ? p : heap_full();
    }
    return local_alloc(n, align, false);
}

RUN_API int posix_memalign(void **p_out, size_t align, size_t n)
{
    if (align < sizeof(void *) || (align & (align - 1)) != 0) return EINVAL;
    void *p = aligned(align, n);
    if (p == NULL) return ENOMEM;
    *p_out = p;
    return 0;
}

RUN_API void *aligned_alloc(size_t align, size_t n)
{
    if (align == 0 || (align & (align - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    return aligned(align, n);
}

RUN_API void *memalign(size_t align, size_t n)
{
    if (align == 0 || (align & (align - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    return aligned(align, n);
}

RUN_API void *valloc(size_t n) { return aligned((size_t)sysconf(_SC_PAGESIZE), n); }

RUN_API void *pvalloc(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return aligned(pg, (n + pg - 1) & ~(pg - 1));
}

/* ---- large private anonymous mmap --------------------------------------
 *
 * mmap(NULL, len >= XMEM_RUN_MMAP_MIN, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS)
 * from a program thread is served from the heap: a page-aligned, zeroed block
 * (Python's pymalloc arenas, numpy buffers, glibc-less allocators). Each such block is
 * in a table (start -> length, unmapped bytes) so that munmap, mremap, madvise and
 * mprotect on it act on the block, never on the mapping engine's pages:
 *   munmap    of the whole block frees it; of a part, the part reads as it was until
 *             the rest is unmapped too (the block is freed then), no SIGSEGV
 *   mremap    shrinks in place; grows by moving (MREMAP_MAYMOVE) or fails ENOMEM
 *   madvise   MADV_DONTNEED zeroes the range (what it reads afterwards); others: 0
 *   mprotect  PROT_READ|PROT_WRITE: 0; anything else: EACCES
 * Every other mmap (files, shared, fixed, executable, stacks, smaller ones, the
 * library's own threads) goes to the kernel as before. */

#define MM_SLOTS 4096u /* open addressing, power of two */
typedef struct { uintptr_t start; size_t len, unmapped; } mm_block_t;
static mm_block_t *g_mm;          /* MM_SLOTS entries, from glibc, made at set-up */
static pthread_mutex_t g_mm_lock = PTHREAD_MUTEX_INITIALIZER;
static size_t g_mm_min = 128u << 10;
static _Atomic uint64_t g_mm_count, g_mm_bytes; /* blocks served, and bytes now */

static size_t page_up(size_t n) { return (n + 4095) & ~(size_t)4095; }

/* mimalloc's own code (its OS layer calls mmap): its requests go to the kernel */
static uintptr_t g_mi_lo, g_mi_hi;

static int find_mimalloc(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    uintptr_t fn = (uintptr_t)arg;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || (ph->p_flags & PF_X) == 0) continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (fn - lo < hi - lo) {
            g_mi_lo = lo;
            g_mi_hi = hi;
            return 1;
        }
    }
    return 0;
}

/* The block that contains a, or NULL: the slot of its start first, then a scan
 * (an address inside a block: rare, munmap/madvise of a part). */
static mm_block_t *mm_find_locked(uintptr_t a)
{
    for (uint32_t i = 0, h = (uint32_t)(a >> 12) & (MM_SLOTS - 1); i < MM_SLOTS && g_mm[h].start != 0;
         i++, h = (h + 1) & (MM_SLOTS - 1)) {
        if (g_mm[h].start == a) return &g_mm[h];
    }
    for (uint32_t i = 0; i < MM_SLOTS; i++) {
        mm_block_t *b = &g_mm[i];
        if (b->start != 0 && a - b->start < b->len) return b;
    }
    return NULL;
}

static bool mm_add_locked(uintptr_t start, size_t len)
{
    for (uint32_t i = 0, h = (uint32_t)(start >> 12) & (MM_SLOTS - 1); i < MM_SLOTS; i++, h = (h + 1) & (MM_SLOTS - 1)) {
        if (g_mm[h].start == 0) {
            g_mm[h] = (mm_block_t){start, len, 0};
            return true;
        }
    }
    return false;
}

static bool mm_wanted(void *addr, size_t len, int prot, int flags, int fd, uintptr_t caller)
{
    return g_mm != NULL && use_heap() && addr == NULL && fd == -1 && len >= g_mm_min &&
           prot == (PROT_READ | PROT_WRITE) && (flags & ~MAP_NORESERVE) == (MAP_PRIVATE | MAP_ANONYMOUS) &&
           caller - g_mi_lo >= g_mi_hi - g_mi_lo;
}

RUN_API void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (mm_wanted(addr, len, prot, flags, fd, (uintptr_t)__builtin_return_address(0))) {
        size_t n = page_up(len);
        void *p = mi_zalloc_aligned(n, 4096);
        if (p != NULL && ((uintptr_t)p & 4095) != 0) { /* see mi_aligned_checked */
            mi_free(p);
            p = NULL;
        }
        if (p != NULL) {
            pthread_mutex_lock(&g_mm_lock);
            bool ok = mm_add_locked((uintptr_t)p, n);
            pthread_mutex_unlock(&g_mm_lock);
            if (ok) {
                atomic_fetch_add_explicit(&g_mm_count, 1, memory_order_relaxed);
                atomic_fetch_add_explicit(&g_mm_bytes, n, memory_order_relaxed);
                return p;
            }
            mi_free(p); /* the table is full: the kernel serves this one */
        }
    }
    if (!resolve_libc()) return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    return lc_mmap(addr, len, prot, flags, fd, off);
}

RUN_API void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return mmap(addr, len, prot, flags, fd, off);
}

RUN_API int munmap(void *addr, size_t len)
{
    if (g_mm != NULL && in_heap(addr)) {
        uintptr_t a = (uintptr_t)addr;
        pthread_mutex_lock(&g_mm_lock);
        mm_block_t *b = mm_find_locked(a);
        if (b == NULL || (a & 4095) != 0) {
            pthread_mutex_unlock(&g_mm_lock);
            errno = EINVAL; /* never the kernel's munmap inside the heap */
            return -1;
        }
        size_t n = page_up(len);
        if (a + n > b->start + b->len) n = b->start + b->len - a;
        b->unmapped += n;
        void *free_me = NULL;
        if ((a == b->start && n == b->len) || b->unmapped >= b->len) {
            free_me = (void *)b->start;
            atomic_fetch_sub_explicit(&g_mm_bytes, b->len, memory_order_relaxed);
            *b = (mm_block_t){0, 0, 0};
            /* keep the probe chains whole: re-insert what follows in the cluster */
            for (uint32_t i = (uint32_t)(b - g_mm + 1) & (MM_SLOTS - 1); g_mm[i].start != 0; i = (i + 1) & (MM_SLOTS - 1)) {
                mm_block_t moved = g_mm[i];
                g_mm[i] = (mm_block_t){0, 0, 0};
                mm_add_locked(moved.start, moved.len);
                mm_find_locked(moved.start)->unmapped = moved.unmapped;
            }
        }
        pthread_mutex_unlock(&g_mm_lock);
        if (free_me != NULL && atomic_load_explicit(&g_state, memory_order_relaxed) != ST_CHILD) mi_free(free_me);
        return 0;
    }
    if (!resolve_libc()) return (int)syscall(SYS_munmap, addr, len);
    return lc_munmap(addr, len);
}

RUN_API void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
    if (g_mm != NULL && in_heap(old)) {
        pthread_mutex_lock(&g_mm_lock);
        mm_block_t *b = mm_find_locked((uintptr_t)old);
        bool whole = b != NULL && b->start == (uintptr_t)old;
        size_t cur = whole ? b->len : 0;
        pthread_mutex_unlock(&g_mm_lock);
        if (!whole || (flags & MREMAP_FIXED) != 0) {
            errno = EINVAL;
            return MAP_FAILED;
        }
        if (page_up(new_len) <= cur) { /* shrink in place: what is left is what munmap must see */
            pthread_mutex_lock(&g_mm_lock);
            b = mm_find_locked((uintptr_t)old);
            if (b != NULL && b->start == (uintptr_t)old && page_up(new_len) > 0) {
                atomic_fetch_sub_explicit(&g_mm_bytes, b->len - page_up(new_len), memory_order_relaxed);
                b->len = page_up(new_len);
            }
            pthread_mutex_unlock(&g_mm_lock);
            return old;
        }
        if ((flags & MREMAP_MAYMOVE) == 0 || !use_heap()) {
            errno = ENOMEM;
            return MAP_FAILED;
        }
        void *p = mmap(NULL, new_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return MAP_FAILED;
        memcpy(p, old, old_len < cur ? old_len : cur);
        munmap(old, cur);
        return p;
    }
    if (!resolve_libc()) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        void *to = va_arg(ap, void *);
        va_end(ap);
        return lc_mremap(old, old_len, new_len, flags, to);
    }
    return lc_mremap(old, old_len, new_len, flags);
}

RUN_API int madvise(void *addr, size_t len, int advice)
{
    if (g_mm != NULL && in_heap(addr)) {
        pthread_mutex_lock(&g_mm_lock);
        mm_block_t *b = mm_find_locked((uintptr_t)addr);
        size_t room = b != NULL ? b->start + b->len - (uintptr_t)addr : 0;
        pthread_mutex_unlock(&g_mm_lock);
        if (b == NULL) return 0; /* advice on malloc'd memory: the mapping engine decides */
        if (advice == MADV_DONTNEED) memset(addr, 0, len < room ? len : room);
        return 0;
    }
    if (!resolve_libc()) return (int)syscall(SYS_madvise, addr, len, advice);
    return lc_madvise(addr, len, advice);
}

RUN_API int mprotect(void *addr, size_t len, int prot)
{
    if (g_mm != NULL && in_heap(addr)) {
        if (prot == (PROT_READ | PROT_WRITE)) return 0;
        errno = EACCES; /* the heap's pages stay readable and writable */
        return -1;
    }
    if (!resolve_libc()) return (int)syscall(SYS_mprotect, addr, len, prot);
    return lc_mprotect(addr, len, prot);
}

/* ---- threads: those created while library code runs are the library's -- */

struct tramp {
    void *(*fn)(void *);
    void *arg;
};

static void *internal_start(void *p)
{
    struct tramp t = *(struct tramp *)p;
    t_internal = 1;
    lc_free(p);
    return t.fn(t.arg);
}

RUN_API int pthread_create(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
    if (!resolve_libc()) return EAGAIN;
    if (!t_internal) return real_pthread_create(th, attr, fn, arg);
    struct tramp *t = lc_malloc(sizeof(*t));
    if (t == NULL) return EAGAIN;
    t->fn = fn;
    t->arg = arg;
    int rc = real_pthread_create(th, attr, internal_start, t);
    if (rc != 0) lc_free(t);
    return rc;
}

/* ---- set-up, fork, exit ------------------------------------------------- */

/* The child of a fork() has no external or file heap: xm_map's mapping and the
 * file tier are MADV_DONTFORK (a shared heap would let parent and child overwrite
 * each other's objects). New allocations come from glibc; those ranges are
 * reserved inaccessible, so a touch of an object allocated there before the fork
 * is SIGSEGV at once, never a silent read of whatever a later mmap put there.
 * The local tier is ordinary private memory: the child has its own copy of it
 * (the kernel's copy-on-write), readable and writable. fork()+exec() (and
 * posix_spawn, vfork) work. */
static void atfork_child(void)
{
    /* what it execs asks for the heap, finds it claimed by the parent's pid and
     * runs on plain memory (no getenv/setenv here: bash has its own, on its heap) */
    atomic_store(&g_state, ST_CHILD);
    if (g_len != 0)
        mmap((void *)g_lo, g_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
             -1, 0);
    if (g_tier[TIER_FILE].len != 0)
        mmap((void *)g_tier[TIER_FILE].lo, g_tier[TIER_FILE].len, PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
}

static uint64_t env_u64(const char *name)
{
    const char *v = getenv(name);
    return v != NULL ? strtoull(v, NULL, 10) : 0;
}

/* Remove our entry from LD_PRELOAD and the XMEM_RUN_* variables: what this
 * process execs runs on plain memory. */
static void scrub_env(void)
{
    const char *pre = getenv("LD_PRELOAD");
    if (pre != NULL) {
        char buf[4096] = "";
        const char *s = pre;
        while (*s != '\0') {
            size_t len = strcspn(s, ": ");
            bool ours = len >= 16 && memmem(s, len, "libxmem-run.so", 14) != NULL;
            if (!ours && len > 0 && strlen(buf) + len + 2 < sizeof(buf)) {
                if (buf[0] != '\0') strcat(buf, ":");
                strncat(buf, s, len);
            }
            s += len;
            while (*s == ':' || *s == ' ') s++;
        }
        if (buf[0] == '\0') unsetenv("LD_PRELOAD");
        else setenv("LD_PRELOAD", buf, 1);
    }
    unsetenv("XMEM_RUN_REGION");
    unsetenv("XMEM_RUN_HEAP");
    unsetenv("XMEM_RUN_LOCAL");
    unsetenv("XMEM_RUN_STATS");
    unsetenv("XMEM_RUN_TIER_LOCAL");
    unsetenv("XMEM_RUN_SPILL");
    unsetenv("XMEM_RUN_SPILL_DIR");
    unsetenv("XMEM_RUN_MMAP_MIN");
}

static void fail(xm_ctx_h ctx, const char *what, xm_status_t st)
{
    fprintf(stderr, "xmem run: %s: %s%s%s; the program runs on local memory\n", what, xm_status_str(st),
            ctx != NULL ? ": " : "", ctx != NULL ? xm_last_error(ctx) : "");
}

/* The kB figure of field in a /proc file of "Name: value kB" lines (0 if absent). */
static uint64_t proc_kib(const char *path, const char *field)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    char line[256];
    uint64_t v = 0;
    size_t fl = strlen(field);
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, field, fl) == 0 && line[fl] == ':') v = strtoull(line + fl + 1, NULL, 10);
    fclose(f);
    return v;
}

/* Bytes the process's cgroup (v2) may still take: memory.max - memory.current;
 * UINT64_MAX when there is no limit or no cgroup v2. */
static uint64_t cgroup_headroom(void)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (f == NULL) return UINT64_MAX;
    char line[512], path[768] = "";
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "0::", 3) == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(path, sizeof(path), "/sys/fs/cgroup%s", line + 3);
        }
    }
    fclose(f);
    if (path[0] == '\0') return UINT64_MAX;
    char file[900], buf[64];
    uint64_t max = UINT64_MAX, cur = 0;
    snprintf(file, sizeof(file), "%s/memory.max", path);
    FILE *m = fopen(file, "r");
    if (m != NULL) {
        if (fgets(buf, sizeof(buf), m) != NULL && strncmp(buf, "max", 3) != 0) max = strtoull(buf, NULL, 10);
        fclose(m);
    }
    if (max == UINT64_MAX) return UINT64_MAX;
    snprintf(file, sizeof(file), "%s/memory.current", path);
    m = fopen(file, "r");
    if (m != NULL) {
        if (fgets(buf, sizeof(buf), m) != NULL) cur = strtoull(buf, NULL, 10);
        fclose(m);
    }
    return max > cur ? max - cur : 0;
}

/* Address space of len bytes starting on a segment boundary, PROT_NONE; NULL on failure. */
static void *reserve_aligned(uint64_t len)
{
    uint8_t *a = mmap(NULL, len + SEG_ALIGN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (a == MAP_FAILED) return NULL;
    uint8_t *lo = (uint8_t *)(((uintptr_t)a + SEG_ALIGN - 1) & ~(uintptr_t)(SEG_ALIGN - 1));
    if (lo > a) munmap(a, (size_t)(lo - a));
    munmap(lo + len, (size_t)(a + len + SEG_ALIGN - (lo + len)));
    return lo;
}

/* Hand [lo, lo+len) to mimalloc as its next arena (arenas are filled in the order given). */
static bool add_arena(int tier, void *lo, uint64_t len, bool zero)
{
    mi_arena_id_t arena;
    /* committed and "large" (pinned): mimalloc neither commits nor decommits it */
    if (!mi_manage_os_memory_ex(lo, len, true, true, zero, -1, false, &arena)) {
        fprintf(stderr, "xmem run: mimalloc refused the %s tier's range\n", tier_name[tier]);
        return false;
    }
    g_tier[tier].lo = (uintptr_t)lo;
    g_tier[tier].len = len;
    return true;
}

/* The local tier: at most `want` bytes of this host's memory, trimmed to half of
 * MemAvailable and of the cgroup's headroom, in whole segments. */
static void local_tier(uint64_t want)
{
    uint64_t avail = proc_kib("/proc/meminfo", "MemAvailable") << 10, room = cgroup_headroom();
    uint64_t bytes = want;
    if (avail != 0 && bytes > avail / 2) bytes = avail / 2;
    if (room != UINT64_MAX && bytes > room / 2) bytes = room / 2;
    bytes &= ~(SEG_ALIGN - 1);
    if (bytes < want)
        fprintf(stderr, "xmem run: local tier trimmed to %llu MiB of the %llu MiB asked (MemAvailable %llu MiB%s)\n",
                (unsigned long long)(bytes >> 20), (unsigned long long)(want >> 20),
                (unsigned long long)(avail >> 20), room != UINT64_MAX ? ", cgroup limit" : "");
    if (bytes == 0) return;
    void *lo = reserve_aligned(bytes);
    if (lo == NULL || mprotect(lo, bytes, PROT_READ | PROT_WRITE) != 0) {
        fprintf(stderr, "xmem run: cannot reserve the local tier (%llu MiB): %s\n",
                (unsigned long long)(bytes >> 20), strerror(errno));
        return;
    }
    if (!add_arena(TIER_LOCAL, lo, bytes, true)) munmap(lo, bytes);
}

/* The file tier: an unlinked file of `bytes` in dir, mapped shared (its pages go to
 * the disk, not to swap); not inherited by a fork's child (see atfork_child). */
static void file_tier(const char *dir, uint64_t bytes)
{
    bytes &= ~(SEG_ALIGN - 1);
    if (bytes == 0) return;
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "xmem run: cannot make the file tier in %s: %s\n", dir, strerror(errno));
        return;
    }
    void *lo = NULL;
    if (ftruncate(fd, (off_t)bytes) != 0 || (lo = reserve_aligned(bytes)) == NULL ||
        mmap(lo, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_NORESERVE, fd, 0) == MAP_FAILED ||
        madvise(lo, bytes, MADV_DONTFORK) != 0) {
        fprintf(stderr, "xmem run: cannot map the file tier (%llu MiB in %s): %s\n",
                (unsigned long long)(bytes >> 20), dir, strerror(errno));
        if (lo != NULL) munmap(lo, bytes);
        close(fd);
        return;
    }
    if (!add_arena(TIER_FILE, lo, bytes, true)) {
        munmap(lo, bytes);
        close(fd);
        return;
    }
    g_spill_fd = fd;
}

/* The external tier: claim and map the region xmem run made (external_arena gives it
 * to mimalloc). Returns false when this process must run on plain memory (the heap is
 * another process's). */
static bool external_tier(bool manager)
{
    xm_ctx_h ctx = NULL;
    xm_region_h r = NULL;
    xm_status_t st = xm_connect(NULL, &ctx);
    if (st != XM_OK) {
        fprintf(stderr, "xmem run: connect: %s: %s\n", xm_status_str(st), xm_last_error(NULL));
        return true;
    }
    st = manager ? xm_attach(ctx, g_region_id, NULL, XM_ACCESS_READ_WRITE, &r)
                 : xm_region_open(ctx, g_region_id, NULL, XM_ACCESS_READ_WRITE, &r);
    if (st != XM_OK) {
        fail(ctx, "opening the heap's region", st);
        xm_disconnect(ctx);
        return true;
    }
    /* One process owns the heap: the first to swap its pid into the region's
     * first word, or that same process after an exec (a wrapper script's
     * `exec python3` gets the heap; the old image's heap is gone with it).
     * Others - a posix_spawn'd or vfork'd child, which inherits LD_PRELOAD
     * without running fork handlers - run on local memory and drop the
     * variables, so their own children do not ask again. */
    uint64_t owner = 0, me = (uint64_t)getpid();
    st = xm_compare_swap(r, 0, 0, me, &owner);
    if (st != XM_OK || (owner != 0 && owner != me)) {
        if (st != XM_OK) fail(ctx, "claiming the heap", st);
        if (manager) xm_alloc_close(r);
        else xm_region_close(r);
        scrub_env();
        xm_disconnect(ctx);
        return false;
    }
    if (g_heap_bytes > xm_region_size(r)) g_heap_bytes = xm_region_size(r);
    g_heap_bytes -= CLAIM_BYTES;
    xm_map_opts_t mo = XM_MAP_OPTS_INIT;
    mo.cache_bytes = g_local_bytes;
    st = xm_map(ctx, r, CLAIM_BYTES, g_heap_bytes, &mo, &g_map);
    if (manager) xm_alloc_close(r);
    else xm_region_close(r);
    if (st != XM_OK) {
        fail(ctx, "mapping the heap", st);
        g_map = NULL;
        xm_disconnect(ctx);
        return true;
    }
    /* the mapping keeps its own data path: the context is not needed any more */
    xm_disconnect(ctx);
    g_lo = (uintptr_t)g_map;
    g_len = g_heap_bytes;
    return true;
}

/* The mapped external heap goes to mimalloc (after the local tier, so it comes second). */
static void external_arena(void)
{
    if (g_map == NULL) return;
    uintptr_t lo = ((uintptr_t)g_map + SEG_ALIGN - 1) & ~(uintptr_t)(SEG_ALIGN - 1);
    uintptr_t hi = ((uintptr_t)g_map + g_heap_bytes) & ~(uintptr_t)(SEG_ALIGN - 1);
    /* not zero: a region's bytes are whatever the appliance holds */
    if (hi <= lo || !add_arena(TIER_EXT, (void *)lo, hi - lo, false)) {
        xm_unmap_discard(g_map);
        g_map = NULL;
        g_lo = g_len = 0;
    }
}

__attribute__((constructor)) static void run_init(void)
{
    t_internal = 1;
    if (!resolve_libc()) {
        fprintf(stderr, "xmem run: glibc's malloc not found; the program runs on bootstrap memory\n");
        atomic_store(&g_state, ST_LOCAL);
        return;
    }
    g_region_id = env_u64("XMEM_RUN_REGION");
    g_heap_bytes = env_u64("XMEM_RUN_HEAP");
    g_local_bytes = env_u64("XMEM_RUN_LOCAL");
    g_stats = env_u64("XMEM_RUN_STATS") != 0;
    uint64_t tier_local = env_u64("XMEM_RUN_TIER_LOCAL"), spill = env_u64("XMEM_RUN_SPILL");
    const char *spill_dir = getenv("XMEM_RUN_SPILL_DIR");
    if (spill_dir == NULL || spill_dir[0] == '\0') spill = 0;
    if (g_stats) g_err_fd = fcntl(2, F_DUPFD_CLOEXEC, 100);
    bool manager = getenv("XMEM_MANAGER") != NULL && getenv("XMEM_MANAGER")[0] != '\0';
    if (g_region_id != 0 && g_heap_bytes < SEG_ALIGN * 2) {
        fprintf(stderr, "xmem run: heap too small (XMEM_RUN_HEAP)\n");
        g_region_id = 0;
    }
    if (g_region_id == 0 && tier_local == 0 && spill == 0) {
        fprintf(stderr, "xmem run: XMEM_RUN_REGION not set (start programs with `xmem run`); "
                        "the program runs on local memory\n");
        goto local;
    }
    /* never return memory to the "OS": decommit/reset would be madvise or mmap
     * over a range the mapping engine owns (its cache evicts instead) */
    mi_option_set(mi_option_limit_os_alloc, 1);
    mi_option_set(mi_option_allow_decommit, 0);
    mi_option_set(mi_option_page_reset, 0);
    mi_option_set(mi_option_abandoned_page_decommit, 0);
    /* a thread's first segments are otherwise "delayed" and may not come from a
     * pinned arena: with the OS closed to it, every new thread's malloc failed */
    mi_option_set(mi_option_eager_commit_delay, 0);
    /* the claim on the external heap comes first: a process that is not its owner
     * runs on plain memory, with no tier at all */
    if (g_region_id != 0 && !external_tier(manager)) goto local;
    /* mimalloc fills its arenas in the order given: local, external, file */
    if (tier_local != 0) local_tier(tier_local);
    external_arena();
    if (spill != 0) file_tier(spill_dir, spill);
    if (g_tier[TIER_LOCAL].len == 0 && g_tier[TIER_EXT].len == 0 && g_tier[TIER_FILE].len == 0) {
        fprintf(stderr, "xmem run: no tier could be set up; the program runs on local memory\n");
        goto local;
    }
    /* large private anonymous mmaps come from the heap too, unless XMEM_RUN_MMAP_MIN=0 */
    const char *mm_min = getenv("XMEM_RUN_MMAP_MIN");
    if (mm_min != NULL && *mm_min != '\0') g_mm_min = (size_t)strtoull(mm_min, NULL, 10);
    if (g_mm_min != 0) {
        dl_iterate_phdr(find_mimalloc, (void *)(uintptr_t)&mi_malloc);
        if (g_mi_hi != 0) g_mm = lc_calloc(MM_SLOTS, sizeof(mm_block_t));
    }
    g_owner = getpid();
    pthread_atfork(NULL, NULL, atfork_child);
    atomic_store_explicit(&g_state, ST_HEAP, memory_order_release);
    t_internal = 0;
    return;

local:
    atomic_store(&g_state, ST_LOCAL);
    t_internal = 0;
}

static const char *human(uint64_t b, char *buf, size_t len)
{
    static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int i = 0;
    while (v >= 1024 && i < 4) v /= 1024, i++;
    snprintf(buf, len, i == 0 ? "%.0f %s" : "%.1f %s", v, u[i]);
    return buf;
}


/* Bytes of [lo, lo+len) in this process's memory (mincore, in 64 MiB steps). */
static uint64_t resident_bytes(uintptr_t lo, uint64_t len)
{
    static unsigned char vec[(64u << 20) / 4096];
    uint64_t n = 0;
    for (uint64_t off = 0; off < len; off += sizeof(vec) * 4096ull) {
        uint64_t step = len - off < sizeof(vec) * 4096ull ? len - off : sizeof(vec) * 4096ull;
        if (mincore((void *)(lo + off), step, vec) != 0) return 0;
        for (uint64_t i = 0; i < step / 4096; i++) n += vec[i] & 1;
    }
    return n * 4096;
}

/* --stats: where the bytes went, on stderr. The mapping stays (see the top). */
__attribute__((destructor)) static void run_fini(void)
{
    if (!g_stats || g_err_fd < 0 || getpid() != g_owner) return;
    t_internal = 1;
    char a[32], b[32], c[32], d[32], e[32], f[32], g[32], h[32];
    if (g_tier[TIER_LOCAL].len != 0)
        dprintf(g_err_fd, "xmem run: tier local: %s, in memory at exit %s\n", human(g_tier[TIER_LOCAL].len, a, sizeof(a)),
                human(resident_bytes(g_tier[TIER_LOCAL].lo, g_tier[TIER_LOCAL].len), b, sizeof(b)));
    if (g_tier[TIER_FILE].len != 0) {
        struct stat st;
        uint64_t used = fstat(g_spill_fd, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
        dprintf(g_err_fd, "xmem run: tier file: %s, written to the file %s\n", human(g_tier[TIER_FILE].len, a, sizeof(a)),
                human(used, b, sizeof(b)));
    }
    if (g_mm != NULL)
        dprintf(g_err_fd, "xmem run: private anonymous mmaps served from the heap %llu, %s of them mapped at exit\n",
                (unsigned long long)atomic_load(&g_mm_count), human(atomic_load(&g_mm_bytes), a, sizeof(a)));
    xm_map_stats_t s = XM_MAP_STATS_INIT;
    if (g_map == NULL || xm_map_stat(g_map, &s) != XM_OK) {
        dprintf(g_err_fd, "xmem run: tier external: none; requests refused with ENOMEM (heap full) %llu\n",
                (unsigned long long)atomic_load(&g_refused));
        return;
    }
    dprintf(g_err_fd,
            "xmem run: tier external: heap %s on region %llu, local cache %s (fetch unit %s)\n"
            "xmem run: peak RSS %s (the process, heap cache included; with the local transport also the "
            "region's pages it shares with the appliance), private memory at exit %s, heap resident at exit %s\n"
            "xmem run: faults %llu, fetched %s, evictions %llu, written back %s (%llu failed), "
            "requests refused with ENOMEM (heap full) %llu\n",
            human(g_heap_bytes, a, sizeof(a)), (unsigned long long)g_region_id, human(s.budget_bytes, b, sizeof(b)),
            human(s.fetch_size, c, sizeof(c)), human(proc_kib("/proc/self/status", "VmHWM") << 10, d, sizeof(d)),
            human(proc_kib("/proc/self/status", "RssAnon") << 10, h, sizeof(h)), human(s.resident_bytes, e, sizeof(e)), (unsigned long long)s.faults, human(s.fetched_bytes, f, sizeof(f)),
            (unsigned long long)s.evictions, human(s.writeback_pages << 12, g, sizeof(g)),
            (unsigned long long)s.writeback_errors, (unsigned long long)atomic_load(&g_refused));
}
