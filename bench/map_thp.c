/* Issue 4 experiment: can a sequential stream be installed without copying?
 * A 2 MiB block fetched into a transparent-huge-page staging buffer is moved
 * into the mapping with one UFFDIO_MOVE of a whole PMD, and moved out again
 * the same way at eviction (the evicted huge page then receives the next
 * fetch: no zeroing, no copy). Compared in the same run with what the fault
 * path does today (data into a bounce buffer, UFFDIO_COPY with WP), and the
 * data's arrival (memcpy from a source, standing in for the transport).
 * Also checks what write-protect-async tracking does on a moved-in huge page:
 * the move clears uffd-wp, UFFDIO_WRITEPROTECT sets it on the PMD, and a
 * store must then show one written 4 KiB page in PAGEMAP_SCAN.
 *   cc -O2 -o /tmp/map_thp bench/map_thp.c && /tmp/map_thp   (THP "madvise" or "always") */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../src/client/map/uffd_compat.h"

#define HP (2ul << 20)
#define NB 256ul /* 512 MiB */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void die(const char *w)
{
    perror(w);
    exit(1);
}

static uint8_t *huge_area(size_t bytes, int advice)
{
    uint8_t *p = mmap(NULL, bytes + HP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap");
    uint8_t *a = (uint8_t *)(((uintptr_t)p + HP - 1) & ~(HP - 1));
    if (madvise(a, bytes, advice) != 0) die("madvise");
    return a;
}

static long smaps_kb(void *addr, const char *key)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[256], want[64];
    long v = -1;
    int in = 0;
    snprintf(want, sizeof want, "%lx-", (unsigned long)addr);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, want, strlen(want)) == 0) in = 1;
        else if (in && strncmp(line, key, strlen(key)) == 0) {
            sscanf(line + strlen(key), " %ld", &v);
            break;
        }
    }
    fclose(f);
    return v;
}

static int mk_uffd(void *a, size_t bytes)
{
    int u = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_MOVE};
    if (u < 0 || ioctl(u, UFFDIO_API, &api) != 0) die("uffd api");
    struct uffdio_register r = {.range = {.start = (uintptr_t)a, .len = bytes},
                                .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP};
    if (ioctl(u, UFFDIO_REGISTER, &r) != 0) die("register");
    return u;
}

static long written_pages(int pm, void *a, size_t bytes)
{
    struct page_region vec[64];
    struct pm_scan_arg arg = {.size = sizeof(arg), .flags = 0, .start = (uintptr_t)a,
                              .end = (uintptr_t)a + bytes, .vec = (uintptr_t)vec, .vec_len = 64,
                              .category_mask = PAGE_IS_WRITTEN | PAGE_IS_PRESENT,
                              .return_mask = PAGE_IS_WRITTEN};
    long n = ioctl(pm, PAGEMAP_SCAN, &arg);
    if (n < 0) die("PAGEMAP_SCAN");
    long pages = 0;
    for (long i = 0; i < n; i++) pages += (long)((vec[i].end - vec[i].start) / 4096);
    return pages;
}

int main(void)
{
    int pm = open("/proc/self/pagemap", O_RDONLY);
    uint8_t *src = huge_area(HP, MADV_HUGEPAGE);
    for (size_t i = 0; i < HP; i++) src[i] = (uint8_t)(i * 7 + 1);
    volatile uint64_t sink = 0;

    for (int round = 0; round < 3; round++) {
        /* today: memcpy into a bounce buffer (the transport), UFFDIO_COPY with WP */
        uint8_t *m1 = huge_area(NB * HP, MADV_NOHUGEPAGE);
        int u1 = mk_uffd(m1, NB * HP);
        uint8_t *bounce = huge_area(HP, MADV_NOHUGEPAGE);
        double t_arrive = 0, t_install = 0;
        for (size_t b = 0; b < NB; b++) {
            double t0 = now();
            memcpy(bounce, src, HP);
            double t1 = now();
            struct uffdio_copy c = {.dst = (uintptr_t)(m1 + b * HP), .src = (uintptr_t)bounce, .len = HP,
                                    .mode = UFFDIO_COPY_MODE_WP};
            if (ioctl(u1, UFFDIO_COPY, &c) != 0) die("UFFDIO_COPY");
            t_install += now() - t1;
            t_arrive += t1 - t0;
        }
        double t0 = now();
        for (size_t i = 0; i < NB * HP; i += 64) sink += m1[i];
        double t_scan = now() - t0;
        printf("round %d  COPY   (4K pages): arrive %.2f GB/s, install %.2f GB/s, scan %.2f GB/s\n", round,
               NB * HP / t_arrive / 1e9, NB * HP / t_install / 1e9, NB * HP / t_scan / 1e9);
        munmap(m1, NB * HP);
        close(u1);

        /* huge pages moved in whole; evicted by moving them out, then refilled */
        uint8_t *m2 = huge_area(NB * HP, MADV_HUGEPAGE);
        int u2 = mk_uffd(m2, NB * HP);
        uint8_t *stage = huge_area(HP, MADV_HUGEPAGE);
        double t_fresh = 0, t_move = 0, t_wp = 0;
        int not_huge = 0;
        for (size_t b = 0; b < NB; b++) {
            double a0 = now();
            memcpy(stage, src, HP); /* first touch: a fresh (zeroed) huge page */
            double a1 = now();
            if (b == 0 && smaps_kb(stage, "AnonHugePages:") < 2048) not_huge++;
            struct uffdio_move mv = {.dst = (uintptr_t)(m2 + b * HP), .src = (uintptr_t)stage, .len = HP};
            if (ioctl(u2, UFFDIO_MOVE, &mv) != 0) die("UFFDIO_MOVE in");
            double a2 = now();
            struct uffdio_writeprotect wp = {.range = {.start = (uintptr_t)(m2 + b * HP), .len = HP},
                                             .mode = UFFDIO_WRITEPROTECT_MODE_WP};
            if (ioctl(u2, UFFDIO_WRITEPROTECT, &wp) != 0) die("UFFDIO_WRITEPROTECT");
            double a3 = now();
            t_fresh += a1 - a0;
            t_move += a2 - a1;
            t_wp += a3 - a2;
        }
        long huge_kb = smaps_kb(m2, "AnonHugePages:");
        t0 = now();
        for (size_t i = 0; i < NB * HP; i += 64) sink += m2[i];
        t_scan = now() - t0;
        printf("round %d  MOVE   (2M pages): arrive in a fresh huge page %.2f GB/s, move in %.2f GB/s, "
               "write-protect %.2f GB/s, scan %.2f GB/s; mapping AnonHugePages %ld MiB%s\n",
               round, NB * HP / t_fresh / 1e9, NB * HP / t_move / 1e9, NB * HP / t_wp / 1e9, NB * HP / t_scan / 1e9,
               huge_kb / 1024, not_huge ? " (staging NOT huge)" : "");
        long w0 = written_pages(pm, m2, NB * HP);
        m2[5 * HP + 3 * 4096 + 1] = 1;
        long w1 = written_pages(pm, m2, NB * HP);
        long huge_after = smaps_kb(m2, "AnonHugePages:");
        printf("round %d  tracking: written before a store %ld pages, after one store %ld (huge MiB %ld -> %ld)\n",
               round, w0, w1, huge_kb / 1024, huge_after / 1024);
        /* eviction: move each block out to staging (PMD), refill it with the next data, move back;
         * a move's destination must be registered with the same uffd (empty now: no fault) */
        struct uffdio_register sr = {.range = {.start = (uintptr_t)stage, .len = HP}, .mode = UFFDIO_REGISTER_MODE_MISSING};
        if (ioctl(u2, UFFDIO_REGISTER, &sr) != 0) die("register staging");
        double t_out = 0, t_refill = 0;
        for (size_t b = 0; b < NB; b++) {
            if (b == 5) continue; /* split by the store above */
            double e0 = now();
            struct uffdio_move mv = {.dst = (uintptr_t)stage, .src = (uintptr_t)(m2 + b * HP), .len = HP};
            if (ioctl(u2, UFFDIO_MOVE, &mv) != 0) die("UFFDIO_MOVE out");
            double e1 = now();
            memcpy(stage, src, HP); /* the recycled huge page receives the next fetch */
            double e2 = now();
            struct uffdio_move back = {.dst = (uintptr_t)(m2 + b * HP), .src = (uintptr_t)stage, .len = HP};
            if (ioctl(u2, UFFDIO_MOVE, &back) != 0) die("UFFDIO_MOVE back");
            t_out += e1 - e0;
            t_refill += e2 - e1;
        }
        printf("round %d  EVICT  (2M pages): move out %.2f GB/s, arrive in the recycled page %.2f GB/s\n", round,
               (NB - 1) * HP / t_out / 1e9, (NB - 1) * HP / t_refill / 1e9);
        munmap(m2, NB * HP);
        close(u2);
    }
    return (int)(sink & 0);
}
