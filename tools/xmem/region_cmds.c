/* xmem region / put / get / stat. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define COPY_CHUNK (1u << 20)

static int take_u64(cli_t *cli, const char *flag, uint64_t *out, bool *given);

static bool has_arg(const cli_t *cli, const char *flag)
{
    for (int i = 0; i < cli->argc; i++) {
        if (strcmp(cli->argv[i], flag) == 0) return true;
    }
    return false;
}

static int fail_ctx(xm_ctx_h ctx, const char *what, xm_status_t s)
{
    const char *detail = xm_last_error(ctx);
    if (strcmp(detail, xm_status_str(s)) == 0) detail = ""; /* not "no such region: no such region" */
    int rc = cli_fail(what, "%s%s%s", xm_status_str(s), detail[0] ? ": " : "", detail);
    xm_disconnect(ctx);
    return rc;
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        putchar(*s);
    }
    putchar('"');
}

static void print_info(const xm_region_info_t *in, bool json, bool header)
{
    char a[32], b[32];
    if (json) {
        printf("{\"id\":%llu,\"size\":%llu,\"name\":", (unsigned long long)in->id,
               (unsigned long long)in->size);
        json_str(in->name);
        printf(",\"owner\":");
        json_str(in->owner);
        printf(",\"extents\":%u,\"grants\":%u,\"resident\":%llu", in->extents, in->grants,
               (unsigned long long)in->resident);
        /* a virtual copy: its source and kind */
        if (in->copy_of != 0)
            printf(",\"copy_of\":%llu,\"copy\":\"%s\"", (unsigned long long)in->copy_of,
                   in->copy_kind == 1 ? "snapshot" : "clone");
        putchar('}');
        return;
    }
    if (header) printf("%-6s %-12s %-12s %-20s %-12s %-8s %s\n", "ID", "SIZE", "RESIDENT", "NAME", "OWNER", "EXTENTS", "SOURCE");
    char src[48] = "-";
    if (in->copy_of != 0)
        snprintf(src, sizeof(src), "%s of %llu", in->copy_kind == 1 ? "snapshot" : "clone",
                 (unsigned long long)in->copy_of);
    printf("%-6llu %-12s %-12s %-20s %-12s %-8u %s\n", (unsigned long long)in->id,
           cli_size(in->size, a, sizeof(a)), cli_size(in->resident, b, sizeof(b)),
           in->name[0] ? in->name : "-", in->owner, in->extents, src);
}

/* xmem region copy (docs/region-copy.md): progress on stderr when it is a terminal. */
static void copy_progress(uint64_t done, uint64_t total, void *arg)
{
    (void)arg;
    fprintf(stderr, "\rcopy: %llu / %llu MiB (%.0f %%)  ", (unsigned long long)(done >> 20),
            (unsigned long long)(total >> 20), total > 0 ? 100.0 * (double)done / (double)total : 100.0);
}

/* xmem region copy SRC --to HOST:PORT[:TARGET-NAME] [--offset N] [--chunk SIZE]: the source
 * appliance writes the region into a region on the target appliance: TARGET-NAME when it
 * exists there, else a new one (named so) of the source's size. Prints the target's id. */
static int region_copy_cmd(cli_t *cli)
{
    const char *to = cli_take(cli, "--to");
    const char *off_text = cli_take(cli, "--offset");
    const char *chunk_text = cli_take(cli, "--chunk");
    uint64_t offset = 0, chunk = 0, id;
    const char *name;
    if (to == NULL || cli->argc < 1 || cli->argv[0][0] == '-' ||
        (off_text != NULL && xm_parse_size(off_text, &offset) != XM_OK) ||
        (chunk_text != NULL && xm_parse_size(chunk_text, &chunk) != XM_OK)) {
        fprintf(stderr, "usage: xmem region copy ID|NAME --to HOST:PORT[:TARGET-NAME] "
                        "[--offset N] [--chunk SIZE]\n");
        return 2;
    }
    cli_ref(cli->argv[0], &id, &name);
    if (cli_no_more(cli, 1) != 0) return 2;
    char addr[300];
    const char *tname = NULL;
    const char *c1 = strchr(to, ':');
    const char *c2 = c1 != NULL ? strchr(c1 + 1, ':') : NULL;
    size_t alen = c2 != NULL ? (size_t)(c2 - to) : strlen(to);
    if (c1 == NULL || alen >= sizeof(addr)) {
        fprintf(stderr, "xmem: region copy: --to takes HOST:PORT[:TARGET-NAME]\n");
        return 2;
    }
    memcpy(addr, to, alen);
    addr[alen] = '\0';
    if (c2 != NULL && c2[1] != '\0') tname = c2 + 1;
    xm_ctx_h ctx, tctx;
    if (cli_connect(cli, &ctx) != 0) return 1;
    xm_region_h src, dst;
    xm_status_t s = xm_region_open(ctx, id, name, XM_ACCESS_READ, &src);
    if (s != XM_OK) return fail_ctx(ctx, "region copy: source", s);
    xm_connect_opts_t o = cli->conn;
    o.appliance = addr;
    o.manager = NULL;
    s = xm_connect(&o, &tctx);
    if (s != XM_OK) return cli_fail("region copy: target", "%s", xm_last_error(NULL));
    uint64_t tid = 0;
    const char *tn = NULL;
    if (tname != NULL) cli_ref(tname, &tid, &tn);
    s = tname != NULL ? xm_region_open(tctx, tid, tn, XM_ACCESS_READ_WRITE, &dst) : XM_ERR_NOT_FOUND;
    if (s == XM_ERR_NOT_FOUND && offset == 0 && tid == 0)
        s = xm_region_create(tctx, xm_region_size(src), tn, &dst);
    if (s != XM_OK) return fail_ctx(tctx, "region copy: target region", s);
    xm_copy_opts_t co = XM_COPY_OPTS_INIT;
    co.offset = offset;
    co.chunk = chunk;
    bool tty = isatty(2);
    if (tty) co.progress = copy_progress;
    uint64_t done = 0;
    s = xm_region_copy(src, dst, &co, &done);
    if (tty) fputc('\n', stderr);
    if (s != XM_OK) {
        int rc = fail_ctx(ctx, "region copy", s);
        fprintf(stderr, "xmem: region copy: target region %llu holds the first %llu bytes: resume "
                "with --to %s:%llu --offset %llu, or remove it\n", (unsigned long long)xm_region_id(dst),
                (unsigned long long)done, addr, (unsigned long long)xm_region_id(dst),
                (unsigned long long)done);
        return rc;
    }
    printf("%llu\n", (unsigned long long)xm_region_id(dst));
    xm_region_close(dst);
    xm_region_close(src);
    xm_disconnect(tctx);
    xm_disconnect(ctx);
    return 0;
}

int cmd_region(cli_t *cli)
{
    if (cli->argc < 1) {
        fprintf(stderr, "usage: xmem region create|ls|stat|rm|grant ... (see xmem --help)\n");
        return 2;
    }
    const char *sub = cli->argv[0];
    cli->argc--;
    cli->argv++;
    xm_ctx_h ctx;
    xm_status_t s;
    uint64_t id;
    const char *name;
    if (strcmp(sub, "snapshot") == 0 || strcmp(sub, "clone") == 0) {
        /* virtual copy (docs/virtual-copy.md): xmem region snapshot|clone SRC [NAME] */
        bool snap = sub[0] == 's';
        if (cli->argc < 1 || cli->argc > 2 || cli->argv[0][0] == '-') {
            fprintf(stderr, "usage: xmem region %s ID|NAME [NEW-NAME]\n", sub);
            return 2;
        }
        cli_ref(cli->argv[0], &id, &name);
        const char *nn = cli->argc > 1 ? cli->argv[1] : NULL;
        if (cli_connect(cli, &ctx) != 0) return 1;
        xm_region_h r;
        s = snap ? xm_region_snapshot(ctx, id, name, nn, &r) : xm_region_clone(ctx, id, name, nn, &r);
        if (s != XM_OK) return fail_ctx(ctx, snap ? "region snapshot" : "region clone", s);
        printf("%llu\n", (unsigned long long)xm_region_id(r));
        xm_region_close(r);
        xm_disconnect(ctx);
        return 0;
    }
    if (strcmp(sub, "create") == 0 && has_arg(cli, "--file")) {
        /* a file on the appliance's host exposed as a region (docs/file-regions.md) */
        const char *file = cli_take(cli, "--file");
        const char *rname = cli_take(cli, "--name");
        bool ro = cli_take_flag(cli, "--read-only");
        if (file == NULL) {
            fprintf(stderr, "usage: xmem region create --file PATH [--read-only] [NAME]\n");
            return 2;
        }
        if (rname == NULL && cli->argc > 0 && cli->argv[0][0] != '-') {
            rname = cli->argv[0];
            if (cli_no_more(cli, 1) != 0) return 2;
        } else if (cli_no_more(cli, 0) != 0) {
            return 2;
        }
        /* the appliance resolves absolute paths only: a relative one is taken from here */
        char abs[4096];
        if (file[0] != '/') {
            char cwd[3000];
            if (getcwd(cwd, sizeof(cwd)) == NULL) {
                fprintf(stderr, "xmem: region create: give an absolute --file path\n");
                return 2;
            }
            snprintf(abs, sizeof(abs), "%s/%s", cwd, file);
            file = abs;
        }
        if (cli_connect(cli, &ctx) != 0) return 1;
        xm_region_h r;
        s = xm_region_create_file(ctx, file, ro ? XM_REGION_FILE_READ_ONLY : 0, rname, &r);
        if (s != XM_OK) return fail_ctx(ctx, "region create", s);
        printf("%llu\n", (unsigned long long)xm_region_id(r));
        xm_region_close(r);
        xm_disconnect(ctx);
        return 0;
    }
    if (strcmp(sub, "create") == 0) {
        const char *size_text = cli_take(cli, "--size");
        const char *rname = cli_take(cli, "--name");
        uint64_t size;
        if (size_text == NULL) {
            fprintf(stderr, "xmem: region create needs --size SIZE (e.g. 64M, 1G)\n");
            return 2;
        }
        if (xm_parse_size(size_text, &size) != XM_OK || size == 0) {
            fprintf(stderr, "xmem: region create: not a size: '%s' (e.g. 64M, 1G)\n", size_text);
            return 2;
        }
        if (cli_no_more(cli, 0) != 0) return 2;
        if (cli_connect(cli, &ctx) != 0) return 1;
        xm_region_h r;
        s = xm_region_create(ctx, size, rname, &r);
        if (s != XM_OK) return fail_ctx(ctx, "region create", s);
        printf("%llu\n", (unsigned long long)xm_region_id(r));
        xm_region_close(r);
        xm_disconnect(ctx);
        return 0;
    }
    if (strcmp(sub, "ls") == 0) {
        if (cli_no_more(cli, 0) != 0) return 2;
        if (cli_connect(cli, &ctx) != 0) return 1;
        xm_region_info_t *infos;
        size_t n;
        s = xm_region_list(ctx, &infos, &n);
        if (s != XM_OK) return fail_ctx(ctx, "region ls", s);
        if (cli->json) putchar('[');
        for (size_t i = 0; i < n; i++) {
            if (cli->json && i > 0) putchar(',');
            print_info(&infos[i], cli->json, i == 0);
        }
        if (cli->json) printf("]\n");
        else if (n == 0) printf("no regions\n");
        free(infos);
        xm_disconnect(ctx);
        return 0;
    }
    if (strcmp(sub, "sync") == 0) {
        /* make what was written durable (file regions, file pools) */
        uint64_t offset = 0, length = 0;
        bool given;
        if (take_u64(cli, "--offset", &offset, &given) != 0 ||
            take_u64(cli, "--length", &length, &given) != 0)
            return 2;
        if (cli->argc < 1 || cli->argv[0][0] == '-') {
            fprintf(stderr, "usage: xmem region sync ID|NAME [--offset N] [--length N]\n");
            return 2;
        }
        cli_ref(cli->argv[0], &id, &name);
        if (cli_no_more(cli, 1) != 0) return 2;
        if (cli_connect(cli, &ctx) != 0) return 1;
        xm_region_h r;
        s = xm_region_open(ctx, id, name, XM_ACCESS_READ, &r);
        if (s != XM_OK) return fail_ctx(ctx, "region sync", s);
        s = xm_region_sync(r, offset, length);
        xm_region_close(r);
        if (s != XM_OK) return fail_ctx(ctx, "region sync", s);
        xm_disconnect(ctx);
        return 0;
    }
    if (strcmp(sub, "copy") == 0) return region_copy_cmd(cli);
    if (strcmp(sub, "stat") != 0 && strcmp(sub, "rm") != 0 && strcmp(sub, "grant") != 0) {
        fprintf(stderr, "xmem: unknown region command '%s' (see xmem --help)\n", sub);
        return 2;
    }
    if (cli->argc < 1 || cli->argv[0][0] == '-') {
        fprintf(stderr, "usage: xmem region %s ID|NAME\n", sub);
        return 2;
    }
    cli_ref(cli->argv[0], &id, &name);
    if (strcmp(sub, "stat") == 0) {
        if (cli_no_more(cli, 1) != 0) return 2;
        if (cli_connect(cli, &ctx) != 0) return 1;
        xm_region_info_t info;
        s = xm_region_stat(ctx, id, name, &info);
        if (s != XM_OK) return fail_ctx(ctx, "region stat", s);
        print_info(&info, cli->json, true);
        if (cli->json) putchar('\n');
        xm_disconnect(ctx);
        return 0;
    }
    if (strcmp(sub, "rm") == 0) {
        if (cli_no_more(cli, 1) != 0) return 2;
        if (cli_connect(cli, &ctx) != 0) return 1;
        s = xm_region_destroy(ctx, id, name);
        if (s != XM_OK) return fail_ctx(ctx, "region rm", s);
        xm_disconnect(ctx);
        return 0;
    }
    if (strcmp(sub, "grant") == 0) {
        const char *tenant = cli_take(cli, "--tenant");
        bool ro = cli_take_flag(cli, "--read-only");
        if (tenant == NULL) {
            fprintf(stderr, "usage: xmem region grant ID|NAME --tenant T [--read-only]\n");
            return 2;
        }
        if (cli_no_more(cli, 1) != 0) return 2;
        if (cli_connect(cli, &ctx) != 0) return 1;
        s = xm_region_grant(ctx, id, name, tenant, ro ? XM_ACCESS_READ : XM_ACCESS_READ_WRITE);
        if (s != XM_OK) return fail_ctx(ctx, "region grant", s);
        xm_disconnect(ctx);
        return 0;
    }
    fprintf(stderr, "xmem: unknown region command '%s' (see xmem --help)\n", sub);
    return 2;
}

static int take_u64(cli_t *cli, const char *flag, uint64_t *out, bool *given)
{
    const char *t = cli_take(cli, flag);
    *given = t != NULL;
    if (t == NULL) return 0;
    if (xm_parse_size(t, out) != XM_OK) {
        fprintf(stderr, "xmem: %s: not a size: %s\n", flag, t);
        return 2;
    }
    return 0;
}

static int open_ref(cli_t *cli, const char *verb, xm_access_t access, xm_ctx_h *ctx_p,
                    xm_region_h *r_p)
{
    if (cli->argc < 1 || cli->argv[0][0] == '-') {
        fprintf(stderr, "usage: xmem %s ID|NAME [--offset N]%s\n", verb,
                strcmp(verb, "get") == 0 ? " [--length N]" : "");
        return 2;
    }
    uint64_t id;
    const char *name;
    cli_ref(cli->argv[0], &id, &name);
    if (cli_no_more(cli, 1) != 0) return 2;
    if (cli_connect(cli, ctx_p) != 0) return 1;
    /* through a manager, ID|NAME names an allocation */
    const char *mgr = getenv("XMEM_MANAGER");
    bool alloc = cli->conn.manager != NULL ||
                 (cli->conn.appliance == NULL && mgr != NULL && mgr[0] != '\0');
    xm_status_t s = alloc ? xm_attach(*ctx_p, id, name, access, r_p)
                          : xm_region_open(*ctx_p, id, name, access, r_p);
    if (s != XM_OK) return fail_ctx(*ctx_p, verb, s);
    return 0;
}

int cmd_put(cli_t *cli)
{
    uint64_t offset = 0;
    bool given;
    if (take_u64(cli, "--offset", &offset, &given) != 0) return 2;
    xm_ctx_h ctx;
    xm_region_h r;
    int rc = open_ref(cli, "put", XM_ACCESS_READ_WRITE, &ctx, &r);
    if (rc != 0) return rc;
    char *buf = malloc(COPY_CHUNK);
    uint64_t total = 0;
    rc = 0;
    for (;;) {
        size_t have = 0;
        while (have < COPY_CHUNK) {
            ssize_t n = read(0, buf + have, COPY_CHUNK - have);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) {
                rc = cli_fail("put", "reading stdin: %s", strerror(errno));
                goto out;
            }
            if (n == 0) break;
            have += (size_t)n;
        }
        if (have == 0) break;
        xm_status_t s = xm_write(r, offset + total, buf, have);
        if (s != XM_OK) {
            rc = cli_fail("put", "%s after %llu bytes: %s", xm_status_str(s),
                          (unsigned long long)total, xm_last_error(ctx));
            goto out;
        }
        total += have;
        if (have < COPY_CHUNK) break;
    }
out:
    free(buf);
    xm_region_close(r);
    xm_disconnect(ctx);
    return rc;
}

int cmd_get(cli_t *cli)
{
    uint64_t offset = 0, length = 0;
    bool has_off, has_len;
    if (take_u64(cli, "--offset", &offset, &has_off) != 0 ||
        take_u64(cli, "--length", &length, &has_len) != 0) {
        return 2;
    }
    xm_ctx_h ctx;
    xm_region_h r;
    int rc = open_ref(cli, "get", XM_ACCESS_READ, &ctx, &r);
    if (rc != 0) return rc;
    uint64_t size = xm_region_size(r);
    if (!has_len) length = offset < size ? size - offset : 0;
    if (offset >= size || length == 0 || length > size - offset) {
        rc = cli_fail("get", "offset %llu length %llu outside region of %llu bytes",
                      (unsigned long long)offset, (unsigned long long)length,
                      (unsigned long long)size);
        goto out_close;
    }
    char *buf = malloc(COPY_CHUNK);
    for (uint64_t done = 0; done < length;) {
        size_t n = length - done < COPY_CHUNK ? (size_t)(length - done) : COPY_CHUNK;
        xm_status_t s = xm_read(r, offset + done, buf, n);
        if (s != XM_OK) {
            rc = cli_fail("get", "%s: %s", xm_status_str(s), xm_last_error(ctx));
            break;
        }
        if (fwrite(buf, 1, n, stdout) != n) {
            rc = cli_fail("get", "writing stdout: %s", strerror(errno));
            break;
        }
        done += n;
    }
    free(buf);
    if (fflush(stdout) != 0 && rc == 0) rc = cli_fail("get", "writing stdout: %s", strerror(errno));
out_close:
    xm_region_close(r);
    xm_disconnect(ctx);
    return rc;
}

int cmd_stat(cli_t *cli)
{
    if (cli_no_more(cli, 0) != 0) return 2;
    xm_ctx_h ctx;
    if (cli_connect(cli, &ctx) != 0) return 1;
    xm_appliance_info_t info;
    xm_status_t s = xm_appliance_stat(ctx, &info);
    if (s != XM_OK) return fail_ctx(ctx, "stat", s);
    char a[32], b[32], c[32];
    if (cli->json) {
        printf("{\"pool_size\":%llu,\"pool_used\":%llu,\"extent_size\":%llu,\"regions\":%u,"
               "\"backing\":\"%s\",\"provider\":\"%s\"}\n",
               (unsigned long long)info.pool_size, (unsigned long long)info.pool_used,
               (unsigned long long)info.extent_size, info.regions, info.backing, info.provider);
    } else {
        printf("pool      %s (%s), extent %s\nused      %s in %u regions\nprovider  %s\n",
               cli_size(info.pool_size, a, sizeof(a)), info.backing,
               cli_size(info.extent_size, b, sizeof(b)), cli_size(info.pool_used, c, sizeof(c)),
               info.regions, info.provider);
    }
    xm_disconnect(ctx);
    return 0;
}
