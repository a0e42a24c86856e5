/* ctx_cost: what one client context costs before its first byte moves — the
 * process's resident memory and the time of the first 4 KiB read (which opens
 * the data endpoint and connects) — for N contexts held at once, against the
 * same process before any context and a second read on a warm context.
 * A mapping holds one context per handler thread plus one for xm_sync, so
 * this is also the fixed memory an xm_map adds beside its cache budget.
 *
 *   ctx_cost [--count N (default 4)]   (XMEM_APPLIANCE, XMEM_SECRET_FILE, XMEM_PROVIDER)
 */
#include <stdlib.h>
#include <string.h>

#include <xmem/xmem.h>

#include "bench_util.h"

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
    }
    if (f != NULL) fclose(f);
    return kib;
}

int main(int argc, char **argv)
{
    int count = 4;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--count") == 0 && i + 1 < argc) {
            count = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: ctx_cost [--count N]\n");
            return 2;
        }
    }
    if (count < 1 || count > 64) {
        fprintf(stderr, "ctx_cost: --count must be 1..64\n");
        return 2;
    }
    xm_ctx_h *ctx = calloc((size_t)count, sizeof(*ctx));
    xm_region_h *reg = calloc((size_t)count, sizeof(*reg));
    char buf[4096];
    long base = rss_kib();
    printf("ctx_cost: process RSS before any context %ld KiB; FI_OFI_RXM_MSG_RX_SIZE=%s\n", base,
           getenv("FI_OFI_RXM_MSG_RX_SIZE") ? getenv("FI_OFI_RXM_MSG_RX_SIZE") : "(unset: xmem's 16)");
    printf("%-8s %14s %16s %14s %14s\n", "context", "RSS KiB", "+KiB this one", "first read ms", "second read us");
    long prev = base;
    for (int i = 0; i < count; i++) {
        if (xm_connect(NULL, &ctx[i]) != XM_OK) {
            fprintf(stderr, "ctx_cost: connect: %s\n", xm_last_error(ctx[i]));
            return 1;
        }
        if (xm_region_create(ctx[i], 1u << 20, NULL, &reg[i]) != XM_OK) {
            fprintf(stderr, "ctx_cost: region create: %s\n", xm_last_error(ctx[i]));
            return 1;
        }
        uint64_t t0 = bench_now_ns();
        xm_status_t s1 = xm_read(reg[i], 0, buf, sizeof(buf));
        uint64_t t1 = bench_now_ns();
        xm_status_t s2 = xm_read(reg[i], 0, buf, sizeof(buf));
        uint64_t t2 = bench_now_ns();
        if (s1 != XM_OK || s2 != XM_OK) {
            fprintf(stderr, "ctx_cost: read: %s\n", xm_last_error(ctx[i]));
            return 1;
        }
        long now = rss_kib();
        printf("%-8d %14ld %16ld %14.1f %14.1f\n", i + 1, now, now - prev, (double)(t1 - t0) / 1e6,
               (double)(t2 - t1) / 1e3);
        prev = now;
    }
    printf("ctx_cost: %d contexts hold %ld KiB more than none (%.1f MiB each)\n", count, prev - base,
           (double)(prev - base) / 1024.0 / count);
    for (int i = 0; i < count; i++) {
        xm_region_destroy(ctx[i], xm_region_id(reg[i]), NULL);
        xm_region_close(reg[i]);
        xm_disconnect(ctx[i]);
    }
    free(ctx);
    free(reg);
    return 0;
}
