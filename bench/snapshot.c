/* snapshot: the cost of a virtual copy (xm_region_snapshot) of a fully populated region,
 * and of the first write to a page after it, against references measured in the same run.
 *
 *   snapshot [--appliance HOST:PORT] [--secret-file PATH] [--size 1G] [--count 7]
 *            [--writes 2000]
 *
 * The appliance's pool must hold twice --size (a copy reserves its size). References:
 *  - memcpy of --size bytes into fresh memory (what an eager copy costs at best);
 *  - UFFDIO_WRITEPROTECT and mprotect(PROT_READ) of a populated shared-memory range of
 *    --size bytes (memfd, as the appliance's regions): the page-table walk that any design
 *    which traps the source's later writes must pay; nothing copy-on-write can be cheaper.
 *    Local memory for them is capped at 2 GiB (--size 16G runs them on 2 GiB and scales
 *    linearly: both are linear in the pages walked; said in the output);
 *  - a 4 KiB xm_write over the fabric to a page of a region without copies (p50), against
 *    the first write to a page after a snapshot (the appliance copies it first) and the
 *    write after that.
 * Needs root for the userfaultfd reference (kernel-side writes are not trapped here, user
 * ones are: the cost of protecting is the same).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdbool.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <xmem/xmem.h>

#include "bench_util.h"

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif

#define LOCAL_MAX (2ull << 30)
#define BMIN(a, b) ((a) < (b) ? (a) : (b))

static double p50_ms(uint64_t *ns, size_t n)
{
    return (double)bench_quantile(ns, n, 0.5, 0) / 1e6;
}

static double p50_us(uint64_t *ns, size_t n)
{
    return (double)bench_quantile(ns, n, 0.5, 0) / 1e3;
}

/* A populated memfd mapping of len bytes. */
static uint8_t *populated(size_t len, int *fd_p)
{
    int fd = memfd_create("snapshot-bench", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)len) != 0) return NULL;
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) return NULL;
    for (size_t i = 0; i < len; i += 4096) p[i] = (uint8_t)i | 1;
    *fd_p = fd;
    return p;
}

int main(int argc, char **argv)
{
    xm_connect_opts_t opts = XM_CONNECT_OPTS_INIT;
    const char *size_text = "1G";
    size_t count = 7, writes = 2000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (has && strcmp(a, "--appliance") == 0) opts.appliance = argv[++i];
        else if (has && strcmp(a, "--secret-file") == 0) opts.secret_file = argv[++i];
        else if (has && strcmp(a, "--size") == 0) size_text = argv[++i];
        else if (has && strcmp(a, "--count") == 0) count = strtoul(argv[++i], NULL, 10);
        else if (has && strcmp(a, "--writes") == 0) writes = strtoul(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: snapshot [--appliance HOST:PORT] [--secret-file PATH] "
                            "[--size 1G] [--count 7] [--writes 2000]\n");
            return 2;
        }
    }
    uint64_t size;
    if (xm_parse_size(size_text, &size) != XM_OK || size < (64u << 20) || count < 1 ||
        count > 1000 || writes < 10) {
        fprintf(stderr, "snapshot: --size at least 64M, --count 1..1000, --writes >= 10\n");
        return 2;
    }
    xm_ctx_h ctx;
    xm_status_t s = xm_connect(&opts, &ctx);
    if (s != XM_OK) {
        fprintf(stderr, "snapshot: connect: %s: %s\n", xm_status_str(s), xm_last_error(NULL));
        return 1;
    }
    xm_appliance_info_t ai;
    xm_appliance_stat(ctx, &ai);

    /* the source, every page written */
    xm_region_h src;
    s = xm_region_create(ctx, size, "snapshot-bench-src", &src);
    if (s != XM_OK) {
        fprintf(stderr, "snapshot: create: %s\n", xm_last_error(ctx));
        return 1;
    }
    const size_t chunk = 8u << 20;
    uint8_t *buf = malloc(chunk);
    for (size_t i = 0; i < chunk; i++) buf[i] = (uint8_t)(i * 7 + 1);
    uint64_t t0 = bench_now_ns();
    for (uint64_t off = 0; off < size; off += chunk) {
        s = xm_write(src, off, buf, BMIN(chunk, size - off));
        if (s != XM_OK) {
            fprintf(stderr, "snapshot: populate: %s\n", xm_last_error(ctx));
            return 1;
        }
    }
    double fill_s = (double)(bench_now_ns() - t0) / 1e9;

    /* snapshots: p50 of count (each destroyed before the next, untimed) */
    uint64_t *snap_ns = calloc(count, sizeof(uint64_t));
    for (size_t k = 0; k <= count; k++) {
        xm_region_h n;
        uint64_t a = bench_now_ns();
        s = xm_region_snapshot(ctx, xm_region_id(src), NULL, "snapshot-bench-copy", &n);
        uint64_t b = bench_now_ns();
        if (s != XM_OK) {
            fprintf(stderr, "snapshot: %s (the pool must hold twice --size)\n", xm_last_error(ctx));
            return 1;
        }
        if (k > 0) snap_ns[k - 1] = b - a; /* the first is a warm-up */
        xm_region_close(n);
        xm_region_destroy(ctx, 0, "snapshot-bench-copy");
    }
    double snap_ms = p50_ms(snap_ns, count);

    /* references, local: memcpy into fresh memory; write-protect / mprotect of a populated
     * shared-memory range */
    size_t llen = (size_t)BMIN(size, LOCAL_MAX);
    double scale = (double)size / (double)llen;
    int fd;
    uint8_t *mem = populated(llen, &fd);
    uint8_t *dst = mmap(NULL, llen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == NULL || dst == MAP_FAILED) {
        fprintf(stderr, "snapshot: local reference memory: %s\n", strerror(errno));
        return 1;
    }
    t0 = bench_now_ns();
    memcpy(dst, mem, llen);
    double memcpy_ms = (double)(bench_now_ns() - t0) / 1e6 * scale;
    munmap(dst, llen);
    uint64_t *wp_ns = calloc(count, sizeof(uint64_t)), *mp_ns = calloc(count, sizeof(uint64_t));
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    struct uffdio_api api = {.api = UFFD_API,
                             .features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
                                         UFFD_FEATURE_WP_UNPOPULATED};
    struct uffdio_register rg = {.range = {.start = (uintptr_t)mem, .len = llen},
                                 .mode = UFFDIO_REGISTER_MODE_WP};
    bool have_uffd = uffd >= 0 && ioctl(uffd, UFFDIO_API, &api) == 0 &&
                     ioctl(uffd, UFFDIO_REGISTER, &rg) == 0;
    for (size_t k = 0; k < count; k++) {
        if (have_uffd) {
            struct uffdio_writeprotect wp = {.range = rg.range, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
            uint64_t a = bench_now_ns();
            ioctl(uffd, UFFDIO_WRITEPROTECT, &wp);
            wp_ns[k] = bench_now_ns() - a;
            wp.mode = 0;
            ioctl(uffd, UFFDIO_WRITEPROTECT, &wp);
        }
        uint64_t a = bench_now_ns();
        mprotect(mem, llen, PROT_READ);
        mp_ns[k] = bench_now_ns() - a;
        mprotect(mem, llen, PROT_READ | PROT_WRITE);
        /* mprotect back to writable leaves the ptes read-only until written: touch them */
        for (size_t i = 0; i < llen; i += 4096) mem[i]++;
    }
    double wp_ms = have_uffd ? p50_ms(wp_ns, count) * scale : 0;
    double mp_ms = p50_ms(mp_ns, count) * scale;
    if (uffd >= 0) close(uffd);
    munmap(mem, llen);
    close(fd);

    /* writes: the first to a page after a snapshot and the one after, each interleaved with
     * a normal 4 KiB write to a populated region without copies (same load for both) */
    size_t npages = size / 4096;
    if (writes > npages) writes = npages;
    uint64_t *w0 = calloc(writes, sizeof(uint64_t)), *w1 = calloc(writes, sizeof(uint64_t)),
             *w2 = calloc(writes, sizeof(uint64_t)), *w3 = calloc(writes, sizeof(uint64_t));
    uint64_t stride = npages / writes;
    xm_region_h ref;
    const uint64_t ref_size = 64u << 20;
    if (xm_region_create(ctx, ref_size, "snapshot-bench-ref", &ref) != XM_OK) {
        fprintf(stderr, "snapshot: %s\n", xm_last_error(ctx));
        return 1;
    }
    for (uint64_t off = 0; off < ref_size; off += chunk) xm_write(ref, off, buf, chunk);
    xm_region_h n;
    if (xm_region_snapshot(ctx, xm_region_id(src), NULL, "snapshot-bench-copy", &n) != XM_OK) {
        fprintf(stderr, "snapshot: %s\n", xm_last_error(ctx));
        return 1;
    }
    for (int pass = 0; pass < 2; pass++) {
        uint64_t *w = pass == 0 ? w1 : w2;
        for (size_t i = 0; i < writes; i++) {
            uint64_t a = bench_now_ns();
            xm_write(ref, (i * 4096 * 3) % ref_size, buf, 4096);
            uint64_t b = bench_now_ns();
            (pass == 0 ? w0 : w3)[i] = b - a;
            buf[0] = (uint8_t)(pass + 2);
            a = bench_now_ns();
            s = xm_write(src, i * stride * 4096, buf, 4096);
            w[i] = bench_now_ns() - a;
            buf[0] = 1;
            if (s != XM_OK) {
                fprintf(stderr, "snapshot: write: %s\n", xm_last_error(ctx));
                return 1;
            }
        }
    }
    xm_region_close(ref);
    xm_region_destroy(ctx, 0, "snapshot-bench-ref");
    /* the snapshot kept the old bytes */
    uint8_t chk[4096];
    xm_read(n, 0, chk, sizeof(chk));
    bool kept = chk[0] == (uint8_t)1 && chk[1] == (uint8_t)8;
    xm_region_close(n);
    xm_region_destroy(ctx, 0, "snapshot-bench-copy");
    double n_us = p50_us(w0, writes), f_us = p50_us(w1, writes), l_us = p50_us(w2, writes),
           n2_us = p50_us(w3, writes);

    char sz[32];
    snprintf(sz, sizeof(sz), "%.1f GiB", (double)size / (1u << 30));
    printf("snapshot: %s region, fully populated (%.1f s over the fabric), %s pool over %s; "
           "%zu snapshots after one warm-up%s\n",
           sz, fill_s, ai.backing, ai.provider, count,
           scale > 1 ? "; local references on 2 GiB, scaled linearly" : "");
    printf("%-48s %10s %10s\n", "", "p50 ms", "x snapshot");
    printf("%-48s %10.2f %10s\n", "xm_region_snapshot", snap_ms, "1.00");
    printf("%-48s %10.2f %10.2f\n", "memcpy into fresh memory (eager copy)", memcpy_ms,
           memcpy_ms / snap_ms);
    if (have_uffd) {
        printf("%-48s %10.2f %10.2f\n", "UFFDIO_WRITEPROTECT of the populated range", wp_ms,
               wp_ms / snap_ms);
    } else {
        printf("%-48s %10s\n", "UFFDIO_WRITEPROTECT of the populated range", "n/a (root?)");
    }
    printf("%-48s %10.2f %10.2f\n", "mprotect(PROT_READ) of the populated range", mp_ms,
           mp_ms / snap_ms);
    printf("\n%-48s %10s %10s\n", "4 KiB xm_write over the fabric", "p50 us", "x normal");
    printf("%-48s %10.1f %10s\n", "normal (region without copies), interleaved", n_us, "1.00");
    printf("%-48s %10.1f %10.2f\n", "first write to a page after a snapshot", f_us, f_us / n_us);
    printf("%-48s %10.1f %10s\n", "normal, interleaved with the later writes", n2_us, "");
    printf("%-48s %10.1f %10.2f\n", "later write to the same page (x the line above)", l_us,
           l_us / n2_us);
    printf("(%zu pages, %llu KiB apart; the snapshot kept the old bytes: %s)\n", writes,
           (unsigned long long)(stride * 4), kept ? "yes" : "NO");
    xm_region_close(src);
    xm_region_destroy(ctx, 0, "snapshot-bench-src");
    xm_disconnect(ctx);
    free(buf);
    free(w0);
    free(w1);
    free(w2);
    free(w3);
    return kept ? 0 : 1;
}
