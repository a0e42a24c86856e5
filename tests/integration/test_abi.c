/*
 * The ABI rules of include/xmem/xmem.h, as a program built against another
 * header would meet them: a sized struct of an older (smaller) header gets no
 * byte written past its size and defaults for the options it lacks; a newer
 * (larger) one is refused only when it asks for an option this library does
 * not know; a forgotten size is an error; libxmem.so exports xm_* only, each at
 * XMEM_0.1; xm_version agrees with the header.
 */
#include <ctype.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static xt_appliance_t app;

static void setup(void)
{
    xt_start(&app, NULL);
}

static void teardown(void)
{
    cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
    xt_cleanup(&app);
}

/* The header before huge_frames was added (ec68a01), in the sized layout. */
#define OLD_STATS_SIZE offsetof(xm_map_stats_t, huge_frames)
#define CANARY 0xA5

/* A region of len bytes mapped and touched (read and written), so every counter moves. */
static void *mapped(xm_ctx_h ctx, xm_region_h *r_p, uint64_t len)
{
    cr_assert_eq(xm_region_create(ctx, len, NULL, r_p), XM_OK);
    xm_map_opts_t o = XM_MAP_OPTS_INIT;
    o.cache_bytes = len / 2;
    o.fetch_size = 16384;
    char *p;
    xm_status_t s = xm_map(ctx, *r_p, 0, len, &o, (void **)&p);
    cr_assert_eq(s, XM_OK, "xm_map: %s (%s)", xm_status_str(s), xm_last_error(ctx));
    for (uint64_t i = 0; i < len; i += 4096) p[i] = (char)(i >> 12);
    cr_assert_eq(xm_sync(p, len), XM_OK);
    return p;
}

Test(abi, map_stat_never_writes_past_an_older_size, .init = setup, .fini = teardown,
     .timeout = 120)
{
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    char *p = mapped(ctx, &r, 1u << 20);

    /* what the current header gets */
    xm_map_stats_t now = XM_MAP_STATS_INIT;
    cr_assert_eq(xm_map_stat(p, &now), XM_OK);
    cr_assert_gt(now.faults, 0);
    cr_assert_eq(now.fetch_size, 16384);
    cr_assert_eq(now.size, sizeof(xm_map_stats_t), "xm_map_stat changed size");

    /* an older program's struct, with the bytes after it on its stack */
    alignas(8) unsigned char buf[sizeof(xm_map_stats_t) + 64];
    memset(buf, CANARY, sizeof(buf));
    size_t old = OLD_STATS_SIZE;
    memcpy(buf, &old, sizeof(old));
    cr_assert_eq(xm_map_stat(p, (xm_map_stats_t *)buf), XM_OK);
    for (size_t i = OLD_STATS_SIZE; i < sizeof(buf); i++) {
        cr_assert_eq(buf[i], CANARY, "xm_map_stat wrote byte %zu past the caller's size %zu", i,
                     OLD_STATS_SIZE);
    }
    xm_map_stats_t got;
    memcpy(&got, buf, OLD_STATS_SIZE);
    cr_expect_eq(got.size, OLD_STATS_SIZE, "size was overwritten");
    cr_expect_eq(got.faults, now.faults, "the fields the old struct has are filled");
    cr_expect_eq(got.fetch_size, 16384);
    cr_expect_eq(got.budget_bytes, now.budget_bytes);

    /* only the size field: nothing else written */
    memset(buf, CANARY, sizeof(buf));
    old = sizeof(size_t);
    memcpy(buf, &old, sizeof(old));
    cr_assert_eq(xm_map_stat(p, (xm_map_stats_t *)buf), XM_OK);
    for (size_t i = sizeof(size_t); i < sizeof(buf); i++) cr_assert_eq(buf[i], CANARY);

    /* a newer program's larger struct: its fields this library does not know are left alone */
    memset(buf, 0, sizeof(buf));
    size_t newer = sizeof(buf);
    memcpy(buf, &newer, sizeof(newer));
    memset(buf + sizeof(xm_map_stats_t), CANARY, sizeof(buf) - sizeof(xm_map_stats_t));
    cr_assert_eq(xm_map_stat(p, (xm_map_stats_t *)buf), XM_OK);
    memcpy(&got, buf, sizeof(got));
    cr_expect_eq(got.faults, now.faults);
    for (size_t i = sizeof(xm_map_stats_t); i < sizeof(buf); i++) cr_assert_eq(buf[i], CANARY);

    /* a size never set: an error, and nothing written */
    memset(buf, CANARY, sizeof(buf));
    memset(buf, 0, sizeof(size_t));
    cr_assert_eq(xm_map_stat(p, (xm_map_stats_t *)buf), XM_ERR_INVALID);
    for (size_t i = sizeof(size_t); i < sizeof(buf); i++) cr_assert_eq(buf[i], CANARY);

    cr_assert_eq(xm_unmap(p), XM_OK);
    xm_region_close(r);
    xm_disconnect(ctx);
}

Test(abi, map_opts_of_an_older_size_get_defaults, .init = setup, .fini = teardown, .timeout = 120)
{
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 1u << 20, NULL, &r), XM_OK);
    void *p;

    /* a header without fetch_size and flags: the bytes after its size are not options */
    alignas(8) unsigned char buf[sizeof(xm_map_opts_t)];
    xm_map_opts_t o = XM_MAP_OPTS_INIT;
    o.size = offsetof(xm_map_opts_t, fetch_size);
    o.cache_bytes = 256u << 10;
    o.fetch_size = 3000; /* invalid: refused if the library read it */
    o.flags = ~0u;
    memcpy(buf, &o, sizeof(o));
    xm_status_t s = xm_map(ctx, r, 0, 1u << 20, (xm_map_opts_t *)buf, &p);
    cr_assert_eq(s, XM_OK, "xm_map read past the caller's size: %s (%s)", xm_status_str(s),
                 xm_last_error(ctx));
    xm_map_stats_t st = XM_MAP_STATS_INIT;
    cr_assert_eq(xm_map_stat(p, &st), XM_OK);
    cr_expect_eq(st.budget_bytes, 256u << 10, "the options the old struct has are used");
    cr_expect_neq(st.fetch_size, 3000);
    cr_expect_eq(st.fetch_size & (st.fetch_size - 1), 0, "fetch size %llu is not the default",
                 (unsigned long long)st.fetch_size);
    xm_unmap_discard(p);

    /* the current size with the same bytes: fetch_size 3000 is read, and refused */
    o.size = sizeof(o);
    cr_assert_eq(xm_map(ctx, r, 0, 1u << 20, &o, &p), XM_ERR_INVALID);

    /* no size at all: an error that says so, never options silently ignored */
    xm_map_opts_t forgot = {.cache_bytes = 256u << 10};
    cr_assert_eq(xm_map(ctx, r, 0, 1u << 20, &forgot, &p), XM_ERR_INVALID);
    cr_expect(strstr(xm_last_error(ctx), "size") != NULL, "xm_last_error: %s", xm_last_error(ctx));

    /* a newer, larger struct: fine while what this library does not know is unset */
    struct {
        xm_map_opts_t o;
        uint64_t future_option;
    } newer = {.o = XM_MAP_OPTS_INIT};
    newer.o.size = sizeof(newer);
    cr_assert_eq(xm_map(ctx, r, 0, 1u << 20, &newer.o, &p), XM_OK, "%s", xm_last_error(ctx));
    xm_unmap_discard(p);
    newer.future_option = 1;
    cr_assert_eq(xm_map(ctx, r, 0, 1u << 20, &newer.o, &p), XM_ERR_INVALID);

    xm_region_close(r);
    xm_disconnect(ctx);
}

Test(abi, connect_opts_of_an_older_size_get_defaults, .init = setup, .fini = teardown,
     .timeout = 120)
{
    char cred[PATH_MAX + 80];
    xt_cred(app.secret, "alice", cred, sizeof(cred));
    /* a header without .manager: the garbage after its size must not send us to a manager */
    xm_connect_opts_t o = {.size = offsetof(xm_connect_opts_t, manager), .appliance = app.addr,
                           .secret_file = cred, .tenant = "alice",
                           .manager = "192.0.2.1:9"};
    xm_ctx_h ctx = NULL;
    xm_status_t s = xm_connect(&o, &ctx);
    cr_assert_eq(s, XM_OK, "xm_connect read past the caller's size: %s (%s)", xm_status_str(s),
                 xm_last_error(NULL));
    xm_region_h r;
    cr_expect_eq(xm_region_create(ctx, 4096, NULL, &r), XM_OK, "not an appliance context");
    xm_region_close(r);
    xm_disconnect(ctx);

    /* forgotten size */
    xm_connect_opts_t forgot = {.appliance = app.addr, .secret_file = cred};
    cr_assert_eq(xm_connect(&forgot, &ctx), XM_ERR_INVALID);
    cr_expect(strstr(xm_last_error(NULL), "XM_CONNECT_OPTS_INIT") != NULL, "xm_last_error: %s",
              xm_last_error(NULL));

    /* a newer header's option this library does not know */
    struct {
        xm_connect_opts_t o;
        const char *future_option;
    } newer = {.o = {.size = sizeof(newer), .appliance = app.addr, .secret_file = cred,
                     .tenant = "alice"}};
    cr_assert_eq(xm_connect(&newer.o, &ctx), XM_OK, "%s", xm_last_error(NULL));
    xm_disconnect(ctx);
    newer.future_option = "x";
    cr_assert_eq(xm_connect(&newer.o, &ctx), XM_ERR_INVALID);

    /* NULL: every default; XM_CONNECT_OPTS_INIT is the same */
    xm_connect_opts_t init = XM_CONNECT_OPTS_INIT;
    cr_expect_eq(init.size, sizeof(xm_connect_opts_t));
    cr_expect_eq(init.appliance, NULL);
}

Test(abi, version_matches_the_header)
{
    unsigned num = 0;
    const char *v = xm_version(&num);
    cr_assert_str_eq(v, XM_VERSION_STRING);
    cr_assert_eq(num, XM_VERSION_NUMBER);
    cr_assert_eq(num, XM_VERSION_MAJOR * 10000u + XM_VERSION_MINOR * 100u + XM_VERSION_PATCH);
    cr_assert_str_eq(xm_version(NULL), v);
}

Test(abi, op_has_fixed_size_and_reserved_space)
{
    xm_op_t op = {0};
    cr_assert_geq(sizeof(op.reserved_), 128);
    cr_assert_eq(sizeof(xm_op_t), offsetof(xm_op_t, reserved_) + sizeof(op.reserved_),
                 "private state outgrew the reserved space");
}

/* libxmem.so exports the xm_* API only, every symbol at version XMEM_0.1. */
Test(abi, shared_library_exports_only_versioned_xm_symbols)
{
    const char *lib = XMEM_BIN_DIR "/../lib/libxmem.so";
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof(cmd), "readelf --dyn-syms -W '%s'", lib);
    FILE *f = popen(cmd, "r");
    cr_assert(f != NULL);
    char line[1024];
    int exported = 0;
    bool have_version = false, have_connect = false;
    while (fgets(line, sizeof(line), f) != NULL) {
        /* Num: Value Size Type Bind Vis Ndx Name */
        char num[32], value[32], size[32], type[32], bind[32], vis[32], ndx[32], name[512];
        if (sscanf(line, "%31s %31s %31s %31s %31s %31s %31s %511s", num, value, size, type, bind,
                   vis, ndx, name) != 8 || !isdigit((unsigned char)num[0])) {
            continue;
        }
        if (strcmp(ndx, "UND") == 0 || strcmp(bind, "LOCAL") == 0) continue;
        if (strcmp(ndx, "ABS") == 0 && strncmp(name, "XMEM_", 5) == 0) continue; /* version node */
        exported++;
        cr_expect(strncmp(name, "xm_", 3) == 0 && strncmp(name, "xm__", 4) != 0,
                  "libxmem.so exports %s, which is not public API", name);
        cr_expect(strstr(name, "@@XMEM_0.1") != NULL, "%s is not at version XMEM_0.1", name);
        if (strncmp(name, "xm_version@", 11) == 0) have_version = true;
        if (strncmp(name, "xm_connect@", 11) == 0) have_connect = true;
    }
    pclose(f);
    cr_assert_gt(exported, 20, "readelf found %d exported symbols in %s", exported, lib);
    cr_expect(have_version && have_connect, "xm_version or xm_connect not exported");

    /* and every function the public headers name is exported, at XMEM_0.1 */
    snprintf(cmd, sizeof(cmd),
             "grep -ohE '\\bxm_[a-z0-9_]+\\(' '%s'/include/xmem/*.h | tr -d '(' | sort -u",
             XMEM_SOURCE_DIR);
    f = popen(cmd, "r");
    cr_assert(f != NULL);
    char want[128];
    int named = 0;
    while (fscanf(f, "%127s", want) == 1) {
        named++;
        char check[PATH_MAX + 256];
        snprintf(check, sizeof(check),
                 "readelf --dyn-syms -W '%s' | grep -q ' %s@@XMEM_0.1$'", lib, want);
        cr_expect_eq(system(check), 0, "%s is declared in include/xmem but not exported", want);
    }
    pclose(f);
    cr_assert_gt(named, 20, "found %d functions in include/xmem/*.h", named);
}
