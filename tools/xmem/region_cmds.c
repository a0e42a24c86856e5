/* xmem region / put / get / stat. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

#define COPY_CHUNK (1u << 20)

/* Exactly `min`..`max` positional arguments, the first an ID|NAME; 0 or 2 (usage printed). */
static int positional(cli_t *cli, int min, int max, const char *what)
{
    if (cli->argc < min || cli->argc > max) {
        if (cli->argc < min)
            fprintf(stderr, "xmem: %s: give %s; see xmem %s --help\n", cli->cmd, what, cli->cmd);
        else
            fprintf(stderr, "xmem: %s: unexpected argument '%s'; see xmem %s --help\n", cli->cmd,
                    cli->argv[max], cli->cmd);
        return 2;
    }
    return 0;
}

static json_t *info_json(const xm_region_info_t *in)
{
    json_t *o = json_pack("{s:I, s:I, s:s, s:s, s:i, s:i, s:I}", "id", (json_int_t)in->id,
                          "size", (json_int_t)in->size, "name", in->name, "owner", in->owner,
                          "extents", (int)in->extents, "grants", (int)in->grants,
                          "resident", (json_int_t)in->resident);
    /* a virtual copy: its source and kind */
    if (o != NULL && in->copy_of != 0) {
        json_object_set_new(o, "copy_of", json_integer((json_int_t)in->copy_of));
        json_object_set_new(o, "copy", json_string(in->copy_kind == 1 ? "snapshot" : "clone"));
    }
    return o;
}

static void print_info(const xm_region_info_t *in, bool header)
{
    char a[32], b[32];
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
    cli_progress(arg, "region copy", done, total);
}

/* xmem region copy SRC --to HOST:PORT[:TARGET-NAME] [--offset N] [--chunk SIZE]: the source
 * appliance writes the region into a region on the target appliance: TARGET-NAME when it
 * exists there, else a new one (named so) of the source's size. Prints the target's id. */
static int region_copy_cmd(cli_t *cli)
{
    const char *to = NULL, *off_text = NULL, *chunk_text = NULL;
    const cli_opt_t opts[] = {{"to", &to, NULL}, {"offset", &off_text, NULL},
                              {"chunk", &chunk_text, NULL}, {NULL}};
    if (cli_parse(cli, opts) != 0 || positional(cli, 1, 1, "the source region's ID|NAME") != 0) return 2;
    uint64_t offset = 0, chunk = 0, id;
    const char *name;
    if ((off_text != NULL && cli_sz(cli, "--offset", off_text, 0, &offset) != 0) ||
        (chunk_text != NULL && cli_sz(cli, "--chunk", chunk_text, 1, &chunk) != 0))
        return 2;
    if (to == NULL) {
        fprintf(stderr, "xmem: region copy: give --to HOST:PORT[:TARGET-NAME]; see xmem region copy --help\n");
        return 2;
    }
    cli_ref(cli->argv[0], &id, &name);
    char addr[300];
    const char *tname = NULL;
    const char *c1 = strchr(to, ':');
    const char *c2 = c1 != NULL ? strchr(c1 + 1, ':') : NULL;
    size_t alen = c2 != NULL ? (size_t)(c2 - to) : strlen(to);
    if (c1 == NULL || alen >= sizeof(addr)) {
        fprintf(stderr, "xmem: region copy: --to takes HOST:PORT[:TARGET-NAME], not '%s'\n", to);
        return 2;
    }
    memcpy(addr, to, alen);
    addr[alen] = '\0';
    if (c2 != NULL && c2[1] != '\0') tname = c2 + 1;
    xm_ctx_h ctx, tctx;
    if (cli_connect(cli, &ctx) != 0) return 1;
    xm_region_h src, dst;
    xm_status_t s = xm_region_open(ctx, id, name, XM_ACCESS_READ, &src);
    if (s != XM_OK) return cli_fail_ctx(ctx, "region copy: source", s);
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
    if (s != XM_OK) return cli_fail_ctx(tctx, "region copy: target region", s);
    xm_copy_opts_t co = XM_COPY_OPTS_INIT;
    cli_progress_t prog = {0};
    co.offset = offset;
    co.chunk = chunk;
    co.progress = copy_progress;
    co.arg = &prog;
    uint64_t done = 0;
    s = xm_region_copy(src, dst, &co, &done);
    cli_progress_end(&prog);
    if (s != XM_OK) {
        int rc = cli_fail_ctx(ctx, "region copy", s);
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

/* Regions are on one appliance: through a manager, say what to use instead. */
static int need_appliance(cli_t *cli)
{
    if (!cli_has_manager(cli)) return 0;
    fprintf(stderr, "xmem: %s: regions live on one appliance and a manager is configured "
            "(--manager or XMEM_MANAGER): use xmem alloc, ls, free for allocations, or give "
            "--appliance HOST:PORT\n", cli->cmd);
    return 1;
}

static int region_ls(cli_t *cli)
{
    xm_ctx_h ctx;
    if (cli_has_manager(cli)) {
        /* through a manager the user's memory is allocations: list those */
        fprintf(stderr, "xmem: region ls: a manager is configured: listing allocations (xmem ls); "
                "give --appliance HOST:PORT for one appliance's regions\n");
        return cmd_ls(cli);
    }
    if (cli_connect(cli, &ctx) != 0) return 1;
    xm_region_info_t *infos;
    size_t n;
    xm_status_t s = xm_region_list(ctx, &infos, &n);
    if (s != XM_OK) return cli_fail_ctx(ctx, "region ls", s);
    json_t *all = cli->json ? json_array() : NULL;
    for (size_t i = 0; i < n; i++) {
        if (cli->json) json_array_append_new(all, info_json(&infos[i]));
        else print_info(&infos[i], i == 0);
    }
    if (!cli->json && n == 0) printf("no regions\n");
    free(infos);
    xm_disconnect(ctx);
    return cli->json ? cli_json_print(all) : 0;
}

int cmd_region(cli_t *cli)
{
    if (cli->argc < 1 || cli->argv[0][0] == '-') {
        fprintf(stderr, "usage: xmem region create|ls|stat|rm|grant|revoke|sync|copy|snapshot|clone "
                        "... (see xmem region --help)\n");
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
        if (cli_parse(cli, NULL) != 0 || positional(cli, 1, 2, "the source region's ID|NAME") != 0)
            return 2;
        if (need_appliance(cli) != 0) return 1;
        cli_ref(cli->argv[0], &id, &name);
        const char *nn = cli->argc > 1 ? cli->argv[1] : NULL;
        if (cli_connect(cli, &ctx) != 0) return 1;
        xm_region_h r;
        s = snap ? xm_region_snapshot(ctx, id, name, nn, &r) : xm_region_clone(ctx, id, name, nn, &r);
        if (s != XM_OK) return cli_fail_ctx(ctx, snap ? "region snapshot" : "region clone", s);
        printf("%llu\n", (unsigned long long)xm_region_id(r));
        xm_region_close(r);
        xm_disconnect(ctx);
        return 0;
    }
    if (strcmp(sub, "create") == 0) {
        const char *size_text = NULL, *rname = NULL, *file = NULL;
        bool ro = false;
        const cli_opt_t opts[] = {{"size", &size_text, NULL}, {"name", &rname, NULL},
                                  {"file", &file, NULL}, {"read-only", NULL, &ro}, {NULL}};
        if (cli_parse(cli, opts) != 0) return 2;
        if (file != NULL) {
            /* a file on the appliance's host exposed as a region (docs/file-regions.md) */
            if (positional(cli, 0, rname == NULL ? 1 : 0, "") != 0) return 2;
            if (rname == NULL && cli->argc == 1) rname = cli->argv[0];
            if (size_text != NULL) {
                fprintf(stderr, "xmem: region create: --file regions take the file's size: drop --size\n");
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
            if (need_appliance(cli) != 0) return 1;
            if (cli_connect(cli, &ctx) != 0) return 1;
            xm_region_h r;
            s = xm_region_create_file(ctx, file, ro ? XM_REGION_FILE_READ_ONLY : 0, rname, &r);
            if (s != XM_OK) return cli_fail_ctx(ctx, "region create", s);
            printf("%llu\n", (unsigned long long)xm_region_id(r));
            xm_region_close(r);
            xm_disconnect(ctx);
            return 0;
        }
        uint64_t size;
        if (size_text == NULL) {
            fprintf(stderr, "xmem: region create: give --size SIZE (e.g. 64M, 1G) or --file PATH; "
                            "see xmem region create --help\n");
            return 2;
        }
        if (cli_sz(cli, "--size", size_text, 1, &size) != 0) return 2;
        if (positional(cli, 0, 0, "") != 0) return 2;
        if (need_appliance(cli) != 0) return 1;
        if (cli_connect(cli, &ctx) != 0) return 1;
        xm_region_h r;
        s = xm_region_create(ctx, size, rname, &r);
        if (s != XM_OK) return cli_fail_ctx(ctx, "region create", s);
        printf("%llu\n", (unsigned long long)xm_region_id(r));
        xm_region_close(r);
        xm_disconnect(ctx);
        return 0;
    }
    if (strcmp(sub, "ls") == 0) {
        if (cli_parse(cli, NULL) != 0 || positional(cli, 0, 0, "") != 0) return 2;
        return region_ls(cli);
    }
    if (strcmp(sub, "sync") == 0) {
        /* make what was written durable (file regions, file pools) */
        const char *ot = NULL, *lt = NULL;
        const cli_opt_t opts[] = {{"offset", &ot, NULL}, {"length", &lt, NULL}, {NULL}};
        uint64_t offset = 0, length = 0;
        if (cli_parse(cli, opts) != 0 || positional(cli, 1, 1, "the region's ID|NAME") != 0 ||
            (ot != NULL && cli_sz(cli, "--offset", ot, 0, &offset) != 0) ||
            (lt != NULL && cli_sz(cli, "--length", lt, 0, &length) != 0))
            return 2;
        if (need_appliance(cli) != 0) return 1;
        cli_ref(cli->argv[0], &id, &name);
        if (cli_connect(cli, &ctx) != 0) return 1;
        xm_region_h r;
        s = xm_region_open(ctx, id, name, XM_ACCESS_READ, &r);
        if (s != XM_OK) return cli_fail_ctx(ctx, "region sync", s);
        s = xm_region_sync(r, offset, length);
        xm_region_close(r);
        if (s != XM_OK) return cli_fail_ctx(ctx, "region sync", s);
        xm_disconnect(ctx);
        return 0;
    }
    if (strcmp(sub, "copy") == 0) return region_copy_cmd(cli);
    if (strcmp(sub, "stat") == 0 || strcmp(sub, "rm") == 0) {
        if (cli_parse(cli, NULL) != 0 || positional(cli, 1, 1, "the region's ID|NAME") != 0) return 2;
        if (need_appliance(cli) != 0) return 1;
        cli_ref(cli->argv[0], &id, &name);
        if (cli_connect(cli, &ctx) != 0) return 1;
        if (sub[0] == 'r') {
            s = xm_region_destroy(ctx, id, name);
            if (s != XM_OK) return cli_fail_ctx(ctx, "region rm", s);
            xm_disconnect(ctx);
            return 0;
        }
        xm_region_info_t info;
        s = xm_region_stat(ctx, id, name, &info);
        if (s != XM_OK) return cli_fail_ctx(ctx, "region stat", s);
        /* who else may open it: listed to the owner only */
        xm_grant_info_t *gl = NULL;
        size_t ng = 0;
        if (info.grants > 0 && xm_region_grants(ctx, info.id, NULL, &gl, &ng) != XM_OK) ng = 0;
        int rc = 0;
        if (cli->json) {
            json_t *o = info_json(&info), *ga = json_array();
            for (size_t i = 0; i < ng; i++)
                json_array_append_new(ga, json_pack("{s:s, s:s}", "tenant", gl[i].tenant, "access",
                                                    gl[i].access == XM_ACCESS_READ ? "read" : "read-write"));
            json_object_set_new(o, "grantees", ga);
            rc = cli_json_print(o);
        } else {
            print_info(&info, true);
            if (ng > 0) {
                printf("granted to:");
                for (size_t i = 0; i < ng; i++)
                    printf("%s %s (%s)", i == 0 ? "" : ",", gl[i].tenant,
                           gl[i].access == XM_ACCESS_READ ? "read" : "read-write");
                putchar('\n');
            }
        }
        free(gl);
        xm_disconnect(ctx);
        return rc;
    }
    if (strcmp(sub, "revoke") == 0) {
        const char *tenant = NULL;
        const cli_opt_t opts[] = {{"tenant", &tenant, NULL}, {NULL}};
        if (cli_parse(cli, opts) != 0 ||
            positional(cli, 1, 1, "the region's (with a manager: the allocation's) ID|NAME") != 0) return 2;
        if (tenant == NULL) {
            fprintf(stderr, "xmem: region revoke: give --tenant T (the grantee); see xmem region revoke --help\n");
            return 2;
        }
        cli_ref(cli->argv[0], &id, &name);
        if (cli_connect(cli, &ctx) != 0) return 1;
        /* through a manager, ID|NAME names an allocation */
        s = cli_has_manager(cli) ? xm_alloc_revoke(ctx, id, name, tenant) : xm_region_revoke(ctx, id, name, tenant);
        if (s != XM_OK) return cli_fail_ctx(ctx, "region revoke", s);
        xm_disconnect(ctx);
        return 0;
    }
    if (strcmp(sub, "grant") == 0) {
        const char *tenant = NULL;
        bool ro = false;
        const cli_opt_t opts[] = {{"tenant", &tenant, NULL}, {"read-only", NULL, &ro}, {NULL}};
        if (cli_parse(cli, opts) != 0 ||
            positional(cli, 1, 1, "the region's (with a manager: the allocation's) ID|NAME") != 0) return 2;
        if (tenant == NULL) {
            fprintf(stderr, "xmem: region grant: give --tenant T (the grantee); see xmem region grant --help\n");
            return 2;
        }
        cli_ref(cli->argv[0], &id, &name);
        if (cli_connect(cli, &ctx) != 0) return 1;
        xm_access_t acc = ro ? XM_ACCESS_READ : XM_ACCESS_READ_WRITE;
        s = cli_has_manager(cli) ? xm_alloc_grant(ctx, id, name, tenant, acc) : xm_region_grant(ctx, id, name, tenant, acc);
        if (s != XM_OK) return cli_fail_ctx(ctx, "region grant", s);
        xm_disconnect(ctx);
        return 0;
    }
    fprintf(stderr, "xmem: unknown region command '%s' (see xmem region --help)\n", sub);
    return 2;
}

static int open_ref(cli_t *cli, const char *verb, xm_access_t access, xm_ctx_h *ctx_p,
                    xm_region_h *r_p)
{
    if (positional(cli, 1, 1, "the region's (with a manager: the allocation's) ID|NAME") != 0) return 2;
    uint64_t id;
    const char *name;
    cli_ref(cli->argv[0], &id, &name);
    if (cli_connect(cli, ctx_p) != 0) return 1;
    /* through a manager, ID|NAME names an allocation */
    xm_status_t s = cli_has_manager(cli) ? xm_attach(*ctx_p, id, name, access, r_p)
                                         : xm_region_open(*ctx_p, id, name, access, r_p);
    if (s != XM_OK) return cli_fail_ctx(*ctx_p, verb, s);
    return 0;
}

int cmd_put(cli_t *cli)
{
    const char *ot = NULL;
    const cli_opt_t opts[] = {{"offset", &ot, NULL}, {NULL}};
    uint64_t offset = 0;
    if (cli_parse(cli, opts) != 0 || (ot != NULL && cli_sz(cli, "--offset", ot, 0, &offset) != 0))
        return 2;
    xm_ctx_h ctx;
    xm_region_h r;
    int rc = open_ref(cli, "put", XM_ACCESS_READ_WRITE, &ctx, &r);
    if (rc != 0) return rc;
    char *buf = malloc(COPY_CHUNK);
    uint64_t total = 0, expect = 0;
    struct stat st;
    if (fstat(0, &st) == 0 && S_ISREG(st.st_mode)) expect = (uint64_t)st.st_size;
    cli_progress_t prog = {0};
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
            cli_progress_end(&prog);
            rc = cli_fail("put", "%s (after %llu bytes were written)", xm_last_error(ctx)[0] ?
                          xm_last_error(ctx) : xm_status_str(s), (unsigned long long)total);
            goto out;
        }
        total += have;
        cli_progress(&prog, "put", total, expect >= total ? expect : 0);
        if (have < COPY_CHUNK) break;
    }
    cli_progress_end(&prog);
out:
    free(buf);
    xm_region_close(r);
    xm_disconnect(ctx);
    return rc;
}

int cmd_get(cli_t *cli)
{
    const char *ot = NULL, *lt = NULL;
    const cli_opt_t opts[] = {{"offset", &ot, NULL}, {"length", &lt, NULL}, {NULL}};
    uint64_t offset = 0, length = 0;
    if (cli_parse(cli, opts) != 0 || (ot != NULL && cli_sz(cli, "--offset", ot, 0, &offset) != 0) ||
        (lt != NULL && cli_sz(cli, "--length", lt, 0, &length) != 0))
        return 2;
    bool has_len = lt != NULL;
    xm_ctx_h ctx;
    xm_region_h r;
    int rc = open_ref(cli, "get", XM_ACCESS_READ, &ctx, &r);
    if (rc != 0) return rc;
    uint64_t size = xm_region_size(r);
    if (!has_len) length = offset < size ? size - offset : 0;
    if (offset >= size || length == 0 || length > size - offset) {
        rc = cli_fail("get", "offset %llu length %llu is outside the %llu bytes there are",
                      (unsigned long long)offset, (unsigned long long)length,
                      (unsigned long long)size);
        goto out_close;
    }
    char *buf = malloc(COPY_CHUNK);
    cli_progress_t prog = {0};
    for (uint64_t done = 0; done < length;) {
        size_t n = length - done < COPY_CHUNK ? (size_t)(length - done) : COPY_CHUNK;
        xm_status_t s = xm_read(r, offset + done, buf, n);
        if (s != XM_OK) {
            cli_progress_end(&prog);
            rc = cli_fail("get", "%s", xm_last_error(ctx)[0] ? xm_last_error(ctx) : xm_status_str(s));
            break;
        }
        if (fwrite(buf, 1, n, stdout) != n) {
            cli_progress_end(&prog);
            rc = cli_fail("get", "writing stdout: %s", strerror(errno));
            break;
        }
        done += n;
        cli_progress(&prog, "get", done, length);
    }
    cli_progress_end(&prog);
    free(buf);
    if (fflush(stdout) != 0 && rc == 0) rc = cli_fail("get", "writing stdout: %s", strerror(errno));
out_close:
    xm_region_close(r);
    xm_disconnect(ctx);
    return rc;
}

/* With a manager: every appliance's pool, from the manager's appliance table. */
static int stat_manager(cli_t *cli)
{
    xm_ctx_h ctx;
    if (cli_connect(cli, &ctx) != 0) return 1;
    xm_appliance_entry_t *es;
    size_t n;
    xm_status_t s = xm_appliance_list(ctx, &es, &n);
    if (s != XM_OK) return cli_fail_ctx(ctx, "stat", s);
    uint64_t cap = 0, used = 0, other = 0;
    uint32_t regions = 0, up = 0;
    for (size_t i = 0; i < n; i++) {
        cap += es[i].capacity;
        used += es[i].used;
        other += es[i].other_used;
        regions += es[i].regions;
        up += strcmp(es[i].state, "up") == 0;
    }
    int rc = 0;
    if (cli->json) {
        json_t *apps = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(apps, json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:i}",
                "addr", es[i].addr, "state", es[i].state, "domain", es[i].domain,
                "provider", es[i].provider, "pool_size", (json_int_t)es[i].capacity,
                "pool_used", (json_int_t)(es[i].used + es[i].other_used),
                "allocated", (json_int_t)es[i].used, "regions", (int)es[i].regions));
        rc = cli_json_print(json_pack("{s:I, s:I, s:i, s:i, s:i, s:o}", "pool_size", (json_int_t)cap,
                                      "pool_used", (json_int_t)(used + other), "regions", (int)regions,
                                      "appliances", (int)n, "up", (int)up, "pools", apps));
    } else {
        char a[32], b[32], c[32];
        printf("pools     %s on %zu appliance%s (%u up)\nused      %s, of which %s in %u allocation "
               "part%s\n", cli_size(cap, a, sizeof(a)), n, n == 1 ? "" : "s", up,
               cli_size(used + other, b, sizeof(b)), cli_size(used, c, sizeof(c)), regions,
               regions == 1 ? "" : "s");
        printf("%-22s %-6s %-10s %-10s %-10s %s\n", "APPLIANCE", "STATE", "DOMAIN", "POOL", "USED", "PROVIDER");
        for (size_t i = 0; i < n; i++)
            printf("%-22s %-6s %-10s %-10s %-10s %s\n", es[i].addr, es[i].state, es[i].domain,
                   cli_size(es[i].capacity, a, sizeof(a)),
                   cli_size(es[i].used + es[i].other_used, b, sizeof(b)), es[i].provider);
    }
    free(es);
    xm_disconnect(ctx);
    return rc;
}

int cmd_stat(cli_t *cli)
{
    bool cli_stat_pid_wanted(const cli_t *cli); int cmd_stat_pid(cli_t *cli); /* stat_pid.c */
    if (cli_stat_pid_wanted(cli)) return cmd_stat_pid(cli);
    if (cli_parse(cli, NULL) != 0 || positional(cli, 0, 0, "") != 0) return 2;
    if (cli_has_manager(cli)) return stat_manager(cli);
    xm_ctx_h ctx;
    if (cli_connect(cli, &ctx) != 0) return 1;
    xm_appliance_info_t info;
    xm_status_t s = xm_appliance_stat(ctx, &info);
    if (s != XM_OK) return cli_fail_ctx(ctx, "stat", s);
    char a[32], b[32], c[32];
    int rc = 0;
    if (cli->json) {
        rc = cli_json_print(json_pack("{s:I, s:I, s:I, s:i, s:s, s:s}",
                                      "pool_size", (json_int_t)info.pool_size,
                                      "pool_used", (json_int_t)info.pool_used,
                                      "extent_size", (json_int_t)info.extent_size,
                                      "regions", (int)info.regions, "backing", info.backing,
                                      "provider", info.provider));
    } else {
        printf("pool      %s (%s), extent %s\nused      %s in %u regions\nprovider  %s\n",
               cli_size(info.pool_size, a, sizeof(a)), info.backing,
               cli_size(info.extent_size, b, sizeof(b)), cli_size(info.pool_used, c, sizeof(c)),
               info.regions, info.provider);
    }
    xm_disconnect(ctx);
    return rc;
}
