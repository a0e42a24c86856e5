/* Issue 4 experiment: UFFDIO_COPY (anonymous) vs UFFDIO_CONTINUE (MINOR mode on a memfd) as the
 * install step of a mapped-memory fault. Data "arrives" by memcpy from a
 * source buffer (what the transport would do): into a bounce buffer for COPY
 * (then the kernel copies it again), straight into the page cache through an
 * unregistered alias mapping for CONTINUE (the kernel maps it, no copy).
 * Also: eviction cost (MOVE+DONTNEED vs DONTNEED+PUNCH_HOLE), and whether
 * WP_ASYNC + PAGEMAP_SCAN and smaps accounting work on the shmem mapping.
 * Results and reading: docs/performance.md, "Installing pages".
 *   cc -O2 -o /tmp/map_install bench/map_install.c && /tmp/map_install
 *   PREP=1 (fallocate the block first) or PREP=2 (MADV_POPULATE_WRITE the alias first) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include "../src/client/map/uffd_compat.h"
#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((__u64)1 << 1)
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TOTAL (256ul << 20)
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void die(const char *w) { perror(w); exit(1); }

static int mkuffd(uint64_t features)
{
    int u = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    struct uffdio_api api = {.api = UFFD_API, .features = features};
    if (u < 0 || ioctl(u, UFFDIO_API, &api)) die("uffd api");
    return u;
}

static long rss_kb(void *addr, const char *key)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[256]; long v = -1; int in = 0;
    char want[64]; snprintf(want, sizeof want, "%lx-", (unsigned long)addr);
    while (fgets(line, sizeof line, f)) {
        if (strchr(line, '-') && line[0] != ' ' && strncmp(line, want, strlen(want)) == 0) in = 1;
        else if (in && strncmp(line, key, strlen(key)) == 0) { sscanf(line + strlen(key), " %ld", &v); break; }
        else if (in && strncmp(line, "VmFlags", 7) == 0) break;
    }
    fclose(f);
    return v;
}

int main(void)
{
    uint8_t *src = aligned_alloc(4096, 2u << 20);
    for (size_t i = 0; i < (2u << 20); i++) src[i] = (uint8_t)(i * 7 + 1);
    uint8_t *bounce = aligned_alloc(4096, 2u << 20);
    memset(bounce, 0, 2u << 20);
    size_t blks[2] = {64u << 10, 2u << 20};
    printf("%-10s %-44s %8s\n", "block", "what (256 MiB, fresh pages each time)", "GB/s");
    for (int bi = 0; bi < 2; bi++) {
        size_t B = blks[bi];
        for (int rep = 0; rep < 3; rep++) {
        /* COPY: memcpy into bounce + UFFDIO_COPY */
        int u = mkuffd(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_MOVE);
        uint8_t *a = mmap(NULL, TOTAL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        madvise(a, TOTAL, MADV_NOHUGEPAGE);
        struct uffdio_register r = {.range = {(uintptr_t)a, TOTAL}, .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP};
        if (ioctl(u, UFFDIO_REGISTER, &r)) die("register anon");
        double t0 = now(), tc = 0;
        for (size_t off = 0; off < TOTAL; off += B) {
            memcpy(bounce, src, B);
            double t1 = now();
            struct uffdio_copy c = {.dst = (uintptr_t)(a + off), .src = (uintptr_t)bounce, .len = B, .mode = UFFDIO_COPY_MODE_WP};
            if (ioctl(u, UFFDIO_COPY, &c)) die("copy");
            tc += now() - t1;
        }
        double tt = now() - t0;
        /* eviction, anonymous: MOVE to a staging area, DONTNEED there */
        uint8_t *st = mmap(NULL, B, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        madvise(st, B, MADV_NOHUGEPAGE);
        struct uffdio_register rs = {.range = {(uintptr_t)st, B}, .mode = UFFDIO_REGISTER_MODE_MISSING};
        if (ioctl(u, UFFDIO_REGISTER, &rs)) die("register staging");
        double e0 = now();
        for (size_t off = 0; off < TOTAL; off += B) {
            struct uffdio_move mv = {.dst = (uintptr_t)st, .src = (uintptr_t)(a + off), .len = B, .mode = UFFDIO_MOVE_MODE_DONTWAKE};
            if (ioctl(u, UFFDIO_MOVE, &mv)) die("move");
            madvise(st, B, MADV_DONTNEED);
        }
        double te = now() - e0;
        printf("%-10zu COPY: memcpy to bounce + UFFDIO_COPY          %8.2f   (ioctl alone %.2f)\n", B >> 10, TOTAL / tt / 1e9, TOTAL / tc / 1e9);
        printf("%-10zu evict anon: UFFDIO_MOVE + MADV_DONTNEED      %8.2f\n", B >> 10, TOTAL / te / 1e9);
        munmap(a, TOTAL); munmap(st, B); close(u);

        /* CONTINUE: memfd, alias written by memcpy, UFFDIO_CONTINUE on the registered mapping */
        u = mkuffd(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED);
        int fd = memfd_create("xm", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, TOTAL)) die("memfd");
        uint8_t *m = mmap(NULL, TOTAL, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        uint8_t *alias = mmap(NULL, TOTAL, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        madvise(m, TOTAL, MADV_NOHUGEPAGE);
        madvise(alias, TOTAL, MADV_NOHUGEPAGE);
        struct uffdio_register rm = {.range = {(uintptr_t)m, TOTAL}, .mode = UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP};
        if (ioctl(u, UFFDIO_REGISTER, &rm)) die("register shmem minor+wp");
        t0 = now(); tc = 0;
        int how = getenv("PREP") ? atoi(getenv("PREP")) : 0;
        for (size_t off = 0; off < TOTAL; off += B) {
            if (how == 1 && fallocate(fd, 0, off, B)) die("fallocate");
            if (how == 2 && madvise(alias + off, B, MADV_POPULATE_WRITE)) die("populate");
            memcpy(alias + off, src, B);
            double t1 = now();
            struct uffdio_continue c = {.range = {(uintptr_t)(m + off), B}, .mode = UFFDIO_CONTINUE_MODE_WP};
            if (ioctl(u, UFFDIO_CONTINUE, &c)) die("continue");
            tc += now() - t1;
        }
        tt = now() - t0;
        long rss = rss_kb(m, "Rss:"), rsd = rss_kb(m, "Shared_Dirty:"), rpd = rss_kb(m, "Private_Dirty:");
        /* WP_ASYNC on shmem: write one page, PAGEMAP_SCAN for written pages */
        m[4096 * 3] = 42;
        int pm = open("/proc/self/pagemap", O_RDONLY);
        struct page_region vec[8];
        struct pm_scan_arg sa = {.size = sizeof(sa), .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                                 .start = (uintptr_t)m, .end = (uintptr_t)(m + TOTAL), .vec = (uintptr_t)vec, .vec_len = 8,
                                 .category_mask = PAGE_IS_WRITTEN | PAGE_IS_PRESENT, .return_mask = PAGE_IS_WRITTEN};
        long nw = ioctl(pm, PAGEMAP_SCAN, &sa);
        unsigned long pg1 = nw > 0 ? (unsigned long)((vec[0].start - (uintptr_t)m) / 4096) : 0ul;
        m[4096 * 5] = 43;
        long nw2 = ioctl(pm, PAGEMAP_SCAN, &sa);
        unsigned long pg2 = nw2 > 0 ? (unsigned long)((vec[0].start - (uintptr_t)m) / 4096) : 0ul;
        /* eviction, shmem: DONTNEED on the registered mapping, punch the page cache */
        e0 = now();
        for (size_t off = 0; off < TOTAL; off += B) {
            madvise(m + off, B, MADV_DONTNEED);
            if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, B)) die("punch");
        }
        te = now() - e0;
        printf("%-10zu CONTINUE: memcpy to alias + UFFDIO_CONTINUE    %8.2f   (ioctl alone %.2f)\n", B >> 10, TOTAL / tt / 1e9, TOTAL / tc / 1e9);
        printf("%-10zu evict shmem: MADV_DONTNEED + PUNCH_HOLE      %8.2f\n", B >> 10, TOTAL / te / 1e9);
        if (rep == 0 && bi == 0) {
            printf("  shmem mapping after CONTINUE of 256 MiB: Rss %ld kB (Shared_Dirty %ld, Private_Dirty %ld)\n", rss, rsd, rpd);
            printf("  WP_ASYNC on shmem: a store to page 3 -> PAGEMAP_SCAN reports %ld range (page %lu); "
                   "then a store to page 5 -> %ld range (page %lu)\n", nw, pg1, nw2, pg2);
            struct stat sb;
            fstat(fd, &sb);
            printf("  after eviction: Rss %ld kB, memfd blocks %lld\n", rss_kb(m, "Rss:"), (long long)sb.st_blocks);
        }
        close(pm);
        munmap(m, TOTAL); munmap(alias, TOTAL); close(fd); close(u);
        }
    }
    return 0;
}
