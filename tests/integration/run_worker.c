/* A program test_run.c runs under `xmem run` (built without sanitizers: it is
 * an ordinary program that knows nothing of xmem).
 *   run_worker threads T ITERS LIVE   T threads malloc/calloc/realloc/memalign/free
 *                                     blocks of many sizes, each keeping LIVE blocks,
 *                                     some freed by another thread; every byte checked
 *   run_worker fork                   what a fork's child can and cannot do
 *   run_worker mmap                   large private anonymous mmap, mremap, madvise,
 *                                     munmap (whole and in parts), mprotect: what a
 *                                     program sees of the blocks xmem run serves
 *   run_worker tiers MIB              MIB blocks of 1 MiB, each filled with its own
 *                                     pattern, then all checked; prints where the first
 *                                     and last block sit (/proc/self/maps: the tier)
 * Prints "ok ..." and exits 0, or names the first wrong byte and exits 1. */
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t rng(uint64_t *s)
{
    uint64_t x = *s += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

typedef struct blk {
    unsigned char *p;
    size_t n;
    uint8_t tag;
} blk_t;

static void fill(blk_t *b)
{
    for (size_t i = 0; i < b->n; i++) b->p[i] = (unsigned char)(b->tag + i * 31 + (i >> 12));
}

static int check(const blk_t *b, size_t upto, const char *when)
{
    for (size_t i = 0; i < upto; i++) {
        if (b->p[i] != (unsigned char)(b->tag + i * 31 + (i >> 12))) {
            fprintf(stderr, "wrong byte %zu of a %zu-byte block at %p (%s)\n", i, b->n, (void *)b->p, when);
            return 1;
        }
    }
    return 0;
}

static size_t pick_size(uint64_t *s)
{
    uint64_t r = rng(s);
    if (r % 64 == 0) return 1 + (r >> 8) % (1u << 20);   /* up to 1 MiB */
    if (r % 8 == 1) return 1 + (r >> 8) % 65536;         /* up to 64 KiB */
    return 1 + (r >> 8) % 512;                           /* small objects */
}

/* blocks handed from one thread to the next, freed there */
static pthread_mutex_t hand_lock = PTHREAD_MUTEX_INITIALIZER;
static blk_t hand[64];
static int nhand;
static long iters, live;
static _Atomic int bad;

static void *worker(void *arg)
{
    uint64_t s = (uint64_t)(uintptr_t)arg * 7919 + 1;
    blk_t *b = calloc((size_t)live, sizeof(*b));
    for (long it = 0; it < iters && !bad; it++) {
        blk_t *x = &b[rng(&s) % (uint64_t)live];
        if (x->p != NULL) {
            if (check(x, x->n, "before free/realloc")) { bad = 1; break; }
            uint64_t what = rng(&s) % 8;
            if (what == 0) {
                /* realloc keeps the prefix */
                size_t nn = pick_size(&s);
                unsigned char *q = (it & 1) ? realloc(x->p, nn) : reallocarray(x->p, 1, nn);
                if (q == NULL) { fprintf(stderr, "realloc(%zu) failed\n", nn); bad = 1; break; }
                x->p = q;
                blk_t old = *x;
                if (check(&old, nn < x->n ? nn : x->n, "after realloc")) { bad = 1; break; }
                x->n = nn;
                fill(x);
                continue;
            }
            if (what == 1) {
                pthread_mutex_lock(&hand_lock);
                if (nhand < 64) { hand[nhand++] = *x; x->p = NULL; }
                pthread_mutex_unlock(&hand_lock);
                if (x->p == NULL) continue;
            }
            free(x->p);
            x->p = NULL;
            continue;
        }
        x->n = pick_size(&s);
        x->tag = (uint8_t)rng(&s);
        uint64_t how = rng(&s) % 8;
        if (how == 0) {
            x->p = calloc(1, x->n);
            for (size_t i = 0; x->p != NULL && i < x->n; i++)
                if (x->p[i] != 0) { fprintf(stderr, "calloc'd byte %zu not zero\n", i); bad = 1; break; }
        } else if (how == 1) {
            size_t al = (size_t)16 << (rng(&s) % 9); /* 16 .. 4096 */
            void *p = NULL;
            if (posix_memalign(&p, al, x->n) != 0) p = NULL;
            if (p != NULL && ((uintptr_t)p & (al - 1)) != 0) { fprintf(stderr, "misaligned %p for %zu\n", p, al); bad = 1; }
            x->p = p;
        } else if (how == 2) {
            x->p = aligned_alloc(64, (x->n + 63) & ~(size_t)63);
        } else {
            x->p = malloc(x->n);
        }
        if (x->p == NULL) { fprintf(stderr, "allocation of %zu failed\n", x->n); bad = 1; break; }
        if (malloc_usable_size(x->p) < x->n) { fprintf(stderr, "usable size below request\n"); bad = 1; break; }
        fill(x);
        /* free what another thread handed over */
        pthread_mutex_lock(&hand_lock);
        blk_t h = nhand > 0 ? hand[--nhand] : (blk_t){0};
        pthread_mutex_unlock(&hand_lock);
        if (h.p != NULL) {
            if (check(&h, h.n, "handed to another thread")) { bad = 1; break; }
            free(h.p);
        }
    }
    for (long i = 0; i < live; i++) {
        if (b[i].p != NULL && check(&b[i], b[i].n, "at the end")) bad = 1;
        free(b[i].p);
    }
    free(b);
    return NULL;
}

static int run_threads(int t, long n, long l)
{
    iters = n;
    live = l;
    pthread_t th[64];
    if (t > 64) t = 64;
    for (int i = 0; i < t; i++) pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < t; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < nhand; i++) {
        if (check(&hand[i], hand[i].n, "left handed over")) bad = 1;
        free(hand[i].p);
    }
    if (bad) return 1;
    printf("ok threads %d iterations %ld live %ld\n", t, n, l);
    return 0;
}

/* What a fork's child sees (docs/run.md, Fork): new allocations work; an object
 * allocated before the fork is not there (SIGSEGV, never the parent's bytes);
 * the parent's heap is untouched; fork+exec works. */
static int run_fork(void)
{
    blk_t b = {.n = 1 << 20, .tag = 7};
    b.p = malloc(b.n);
    fill(&b);
    pid_t c1 = fork();
    if (c1 == 0) {
        blk_t n = {.n = 3 << 20, .tag = 9};
        n.p = malloc(n.n);
        if (n.p == NULL) _exit(2);
        fill(&n);
        if (check(&n, n.n, "child's own")) _exit(3);
        n.p = realloc(n.p, 5 << 20);
        if (check(&n, n.n, "child's own after realloc")) _exit(4);
        free(n.p);
        free(b.p); /* the parent's object: ignored, not a crash */
        _exit(0);
    }
    int st1;
    waitpid(c1, &st1, 0);
    pid_t c2 = fork();
    if (c2 == 0) {
        volatile unsigned char *p = b.p;
        p[0] = 1; /* the parent's object */
        _exit(0);
    }
    int st2;
    waitpid(c2, &st2, 0);
    int sys = system("exit 3");
    if (check(&b, b.n, "parent after the children")) return 1;
    free(b.p);
    printf("child1 %s %d\n", WIFEXITED(st1) ? "exit" : "signal", WIFEXITED(st1) ? WEXITSTATUS(st1) : WTERMSIG(st1));
    printf("child2 %s %d\n", WIFEXITED(st2) ? "exit" : "signal", WIFEXITED(st2) ? WEXITSTATUS(st2) : WTERMSIG(st2));
    printf("system %d\n", WIFEXITED(sys) ? WEXITSTATUS(sys) : -1);
    printf("ok fork\n");
    return 0;
}

/* The mapping that holds p, as "anon" (no path) or its path, from /proc/self/maps. */
static void where(const void *p, char *out, size_t len)
{
    snprintf(out, len, "?");
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL) return;
    char line[512];
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long lo, hi;
        char path[400] = "";
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %399[^\n]", &lo, &hi, path) < 2) continue;
        if ((uintptr_t)p < lo || (uintptr_t)p >= hi) continue;
        snprintf(out, len, "%s", path[0] != '\0' ? path : "anon");
        break;
    }
    fclose(f);
}

#define FAILIF(c, ...)                  \
    do {                                \
        if (c) {                        \
            printf(__VA_ARGS__);        \
            printf("\n");               \
            return 1;                   \
        }                               \
    } while (0)

static int run_mmap(void)
{
    const size_t mib = 1u << 20;
    uint8_t *p = mmap(NULL, 4 * mib, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    FAILIF(p == MAP_FAILED, "mmap 4M: %m");
    for (size_t i = 0; i < 4 * mib; i++) FAILIF(p[i] != 0, "fresh mmap not zero at %zu", i);
    for (size_t i = 0; i < 4 * mib; i++) p[i] = (uint8_t)(i * 7 + 1);
    /* grow: moved, contents kept, the new part zero */
    uint8_t *q = mremap(p, 4 * mib, 8 * mib, MREMAP_MAYMOVE);
    FAILIF(q == MAP_FAILED, "mremap grow: %m");
    for (size_t i = 0; i < 4 * mib; i++) FAILIF(q[i] != (uint8_t)(i * 7 + 1), "mremap lost byte %zu", i);
    for (size_t i = 4 * mib; i < 8 * mib; i++) FAILIF(q[i] != 0, "mremap's new part not zero at %zu", i);
    /* without MAYMOVE a block that cannot grow in place says ENOMEM */
    FAILIF(mremap(q, 8 * mib, 16 * mib, 0) != MAP_FAILED, "mremap grew without MREMAP_MAYMOVE");
    /* shrink in place */
    FAILIF(mremap(q, 8 * mib, 6 * mib, 0) != q, "mremap shrink moved");
    /* MADV_DONTNEED: the range reads zero afterwards, the rest keeps its bytes */
    FAILIF(madvise(q + mib, mib, MADV_DONTNEED) != 0, "madvise: %m");
    for (size_t i = mib; i < 2 * mib; i++) FAILIF(q[i] != 0, "after MADV_DONTNEED byte %zu not zero", i);
    for (size_t i = 2 * mib; i < 4 * mib; i++) FAILIF(q[i] != (uint8_t)(i * 7 + 1), "madvise changed byte %zu", i);
    /* mprotect: read-write is fine, anything else is refused (the heap stays read-write) */
    FAILIF(mprotect(q, mib, PROT_READ | PROT_WRITE) != 0, "mprotect rw: %m");
    int rc = mprotect(q, mib, PROT_READ);
    printf("mprotect read-only %s\n", rc == 0 ? "accepted" : "refused");
    /* munmap in two parts frees it */
    FAILIF(munmap(q, 2 * mib) != 0, "munmap first part: %m");
    FAILIF(munmap(q + 2 * mib, 4 * mib) != 0, "munmap rest: %m");
    /* many blocks, freed and made again: nothing leaks (a 256 MiB heap holds them) */
    for (int round = 0; round < 64; round++) {
        uint8_t *b[16];
        for (int i = 0; i < 16; i++) {
            b[i] = mmap(NULL, mib, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            FAILIF(b[i] == MAP_FAILED, "round %d block %d: %m", round, i);
            FAILIF(b[i][mib - 1] != 0, "a reused block is not zero");
            b[i][0] = b[i][mib - 1] = (uint8_t)i;
        }
        for (int i = 0; i < 16; i++) FAILIF(munmap(b[i], mib) != 0, "munmap: %m");
    }
    /* a small mmap and a file mapping are the kernel's as before */
    uint8_t *small = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    FAILIF(small == MAP_FAILED || munmap(small, 4096) != 0, "small mmap: %m");
    /* munmap inside a malloc'd block is refused, never done */
    char *m = malloc(4 * mib);
    FAILIF(m == NULL, "malloc");
    memset(m, 1, 4 * mib);
    uintptr_t inner = ((uintptr_t)m + 2 * 4096) & ~(uintptr_t)4095;
    rc = munmap((void *)inner, 4096);
    printf("munmap inside malloc %s\n", rc == 0 ? "accepted" : "refused");
    if (rc != 0) {
        FAILIF(((char *)inner)[0] != 1, "munmap inside a malloc block took its page");
        free(m);
    }
    printf("ok mmap\n");
    return 0;
}

static int run_tiers(long mib)
{
    uint64_t **blk = calloc((size_t)mib, sizeof(*blk));
    const size_t words = (1u << 20) / 8;
    for (long i = 0; i < mib; i++) {
        blk[i] = malloc(1u << 20);
        if (blk[i] == NULL) {
            printf("malloc failed at block %ld\n", i);
            return 1;
        }
        for (size_t w = 0; w < words; w++) blk[i][w] = ((uint64_t)i << 32) ^ w ^ 0x5bd1e995u;
    }
    for (long i = 0; i < mib; i++) {
        for (size_t w = 0; w < words; w++) {
            if (blk[i][w] != (((uint64_t)i << 32) ^ w ^ 0x5bd1e995u)) {
                printf("block %ld word %zu wrong\n", i, w);
                return 1;
            }
        }
    }
    char first[400], last[400];
    where(blk[0], first, sizeof(first));
    where(blk[mib - 1], last, sizeof(last));
    printf("first %s\nlast %s\n", first, last);
    for (long i = 0; i < mib; i++) free(blk[i]);
    free(blk);
    printf("ok tiers %ld\n", mib);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc >= 5 && strcmp(argv[1], "threads") == 0)
        return run_threads(atoi(argv[2]), atol(argv[3]), atol(argv[4]));
    if (argc >= 2 && strcmp(argv[1], "fork") == 0) return run_fork();
    if (argc >= 2 && strcmp(argv[1], "mmap") == 0) return run_mmap();
    if (argc >= 3 && strcmp(argv[1], "tiers") == 0 && atol(argv[2]) > 0) return run_tiers(atol(argv[2]));
    fprintf(stderr, "usage: run_worker threads T ITERS LIVE | fork | mmap | tiers MIB\n");
    return 2;
}
