/* file_region: a dataset as a file region (xm_region_create_file) against loading it into a
 * memory region, and 4 KiB reads of the two, measured in the same run.
 *
 *   file_region --file PATH [--size 256M] [--reads 4000] [--appliance HOST:PORT]
 *               [--secret-file PATH]
 *
 * Runs on the appliance's host: PATH must be under the appliance's --file-dir (the program
 * writes it, mode 0600, --size bytes of pseudo-random data, and removes it at the end); the
 * pool must hold --size. Figures:
 *  - expose: xm_region_create_file until the handle is back (p50 of 9), against the
 *    reference of what a user does without file regions: create a memory region and load the
 *    file into it with 1 MiB xm_writes (one run). The ratio is load / expose.
 *  - 4 KiB random reads (p50, p99) of the file region against the memory region (loaded
 *    above), interleaved read by read: first with the file's pages dropped from the page
 *    cache (posix_fadvise DONTNEED; the region was never read, so the appliance maps none
 *    of them: each read goes to the disk), then the same offsets again (page cache, and the
 *    appliance's page tables, warm). Run with XMEM_TRANSPORT=tcp: a memory region is mapped
 *    by same-host clients (local transport), a file region never is.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <unistd.h>

#include <xmem/xmem.h>

#include "bench_util.h"

static void die(const char *what, xm_ctx_h ctx, xm_status_t s)
{
    fprintf(stderr, "file_region: %s: %s: %s\n", what, xm_status_str(s), xm_last_error(ctx));
    exit(1);
}

/* 4 KiB reads at random page-aligned offsets, one of a then one of b at the same offset,
 * so that both see the same machine (this one is shared and noisy); p50/p99 in us */
static void reads(xm_ctx_h ctx, xm_region_h a, xm_region_h b, uint64_t size, int n,
                  double q[4])
{
    uint64_t *na = malloc((size_t)n * sizeof(*na)), *nb = malloc((size_t)n * sizeof(*nb));
    char buf[4096];
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t off = (x % (size / 4096)) * 4096;
        uint64_t t0 = bench_now_ns();
        xm_status_t s = xm_read(a, off, buf, sizeof(buf));
        uint64_t t1 = bench_now_ns();
        if (s == XM_OK) s = xm_read(b, off, buf, sizeof(buf));
        nb[i] = bench_now_ns() - t1;
        na[i] = t1 - t0;
        if (s != XM_OK) die("read", ctx, s);
    }
    q[0] = (double)bench_quantile(na, (size_t)n, 0.5, 0) / 1e3;
    q[1] = (double)bench_quantile(na, (size_t)n, 0.99, 1) / 1e3;
    q[2] = (double)bench_quantile(nb, (size_t)n, 0.5, 0) / 1e3;
    q[3] = (double)bench_quantile(nb, (size_t)n, 0.99, 1) / 1e3;
    free(na);
    free(nb);
}

int main(int argc, char **argv)
{
    xm_connect_opts_t opts = XM_CONNECT_OPTS_INIT;
    const char *path = NULL;
    uint64_t size = 256ull << 20;
    int nreads = 4000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (has && strcmp(a, "--appliance") == 0) opts.appliance = argv[++i];
        else if (has && strcmp(a, "--secret-file") == 0) opts.secret_file = argv[++i];
        else if (has && strcmp(a, "--file") == 0) path = argv[++i];
        else if (has && strcmp(a, "--size") == 0) xm_parse_size(argv[++i], &size);
        else if (has && strcmp(a, "--reads") == 0) nreads = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: file_region --file PATH [--size 256M] [--reads 4000] "
                            "[--appliance HOST:PORT] [--secret-file PATH]\n");
            return 2;
        }
    }
    if (path == NULL || path[0] != '/' || size < (1u << 20) || nreads <= 0) {
        fprintf(stderr, "file_region: --file needs an absolute path under the appliance's "
                        "--file-dir; --size at least 1M\n");
        return 2;
    }
    size = size / (1u << 20) * (1u << 20);
    /* the dataset */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror("file_region: create the file");
        return 1;
    }
    char *chunk = malloc(1u << 20);
    uint64_t x = 1;
    for (uint64_t off = 0; off < size; off += 1u << 20) {
        for (size_t i = 0; i < (1u << 20) / 8; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            memcpy(chunk + i * 8, &x, 8);
        }
        if (pwrite(fd, chunk, 1u << 20, (off_t)off) != (ssize_t)(1u << 20)) {
            perror("file_region: write the file");
            return 1;
        }
    }
    fsync(fd);
    close(fd);

    xm_ctx_h ctx;
    xm_status_t s = xm_connect(&opts, &ctx);
    if (s != XM_OK) die("connect", NULL, s);
    /* expose, 9 times */
    uint64_t expose[9];
    xm_region_h fr = NULL;
    for (int i = 0; i < 9; i++) {
        uint64_t t0 = bench_now_ns();
        s = xm_region_create_file(ctx, path, 0, "bench-file", &fr);
        expose[i] = bench_now_ns() - t0;
        if (s != XM_OK) die("create_file", ctx, s);
        if (i < 8) {
            xm_region_close(fr);
            if ((s = xm_region_destroy(ctx, 0, "bench-file")) != XM_OK) die("destroy", ctx, s);
        }
    }
    double expose_ms = (double)bench_quantile(expose, 9, 0.5, 0) / 1e6;
    /* the reference: load it into a memory region */
    xm_region_h mr;
    uint64_t t0 = bench_now_ns();
    if ((s = xm_region_create(ctx, size, "bench-mem", &mr)) != XM_OK) die("create", ctx, s);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    for (uint64_t off = 0; off < size; off += 1u << 20) {
        if (pread(fd, chunk, 1u << 20, (off_t)off) != (ssize_t)(1u << 20)) {
            perror("file_region: read the file");
            return 1;
        }
        if ((s = xm_write(mr, off, chunk, 1u << 20)) != XM_OK) die("load", ctx, s);
    }
    double load_ms = (double)(bench_now_ns() - t0) / 1e6;

    /* first pass: the file's pages out of the page cache (clean, and not yet mapped by the
     * appliance: the region was never read), so each read goes to the disk; second pass:
     * the same offsets, now in the page cache and in the appliance's page tables */
    double w[4], c[4];
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    reads(ctx, fr, mr, size, nreads, c);
    reads(ctx, fr, mr, size, nreads, w);
    close(fd);

    char sz[32];
    snprintf(sz, sizeof(sz), "%llu MiB", (unsigned long long)(size >> 20));
    printf("%-46s %12s %12s %8s\n", "what", "xmem", "reference", "ratio");
    printf("%-46s %9.2f ms %9.1f ms %7.0fx\n", "usable: expose file / load into memory region",
           expose_ms, load_ms, load_ms / expose_ms);
    printf("%-46s %9.1f us %9.1f us %7.2fx\n", "4 KiB read p50, file on disk: file / memory",
           c[0], c[2], c[0] / c[2]);
    printf("%-46s %9.1f us %9.1f us %7.2fx\n", "4 KiB read p99, file on disk: file / memory",
           c[1], c[3], c[1] / c[3]);
    printf("%-46s %9.1f us %9.1f us %7.2fx\n", "4 KiB read p50, same pages again", w[0], w[2],
           w[0] / w[2]);
    printf("%-46s %9.1f us %9.1f us %7.2fx\n", "4 KiB read p99, same pages again", w[1], w[3],
           w[1] / w[3]);
    printf("(dataset %s, %d reads each, interleaved; transport %s: file regions always go "
           "over tcp, set XMEM_TRANSPORT=tcp to compare like with like)\n", sz, nreads,
           getenv("XMEM_TRANSPORT") != NULL ? getenv("XMEM_TRANSPORT") : "auto");

    xm_region_close(fr);
    xm_region_close(mr);
    xm_region_destroy(ctx, 0, "bench-file");
    xm_region_destroy(ctx, 0, "bench-mem");
    xm_disconnect(ctx);
    unlink(path);
    free(chunk);
    return 0;
}
