/* Security: authentication, grants and what the transport refuses when a
 * client bypasses libxmem's own checks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "../../src/client/client.h"

static xt_appliance_t app;

static void teardown(void)
{
    cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
    xt_cleanup(&app);
}

Test(security, wrong_or_missing_secret_refused, .fini = teardown, .timeout = 60)
{
    xt_start(&app, NULL);
    char other[300];
    snprintf(other, sizeof(other), "%s/other-secret", app.dir);
    xt_make_secret(other);
    xm_ctx_h ctx = NULL;
    cr_assert_eq(xt_try_connect(&app, "mallory", other, 3000, &ctx), XM_ERR_AUTH);
    cr_assert_null(ctx);
    char missing[300];
    snprintf(missing, sizeof(missing), "%s/no-such-file", app.dir);
    cr_assert_eq(xt_try_connect(&app, "mallory", missing, 3000, &ctx), XM_ERR_AUTH);
    /* a short secret is refused before anything is sent */
    char shortp[300];
    snprintf(shortp, sizeof(shortp), "%s/short", app.dir);
    FILE *f = fopen(shortp, "w");
    fputs("tooshort", f);
    fclose(f);
    cr_assert_eq(xt_try_connect(&app, "mallory", shortp, 3000, &ctx), XM_ERR_AUTH);
    /* the appliance serves the right secret afterwards */
    ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 4096, NULL, &r), XM_OK);
    xm_region_close(r);
    xm_disconnect(ctx);
}

/* Owner alice, region with a known pattern; bob granted read-only. */
static xm_region_h setup_shared(xm_ctx_h alice, uint8_t *pattern, size_t len)
{
    xm_region_h r;
    cr_assert_eq(xm_region_create(alice, len, "shared", &r), XM_OK);
    xt_fill(pattern, len, 42);
    cr_assert_eq(xm_write(r, 0, pattern, len), XM_OK);
    cr_assert_eq(xm_region_grant(alice, 0, "shared", "bob", XM_ACCESS_READ), XM_OK);
    return r;
}

static void expect_intact(xm_region_h r, const uint8_t *pattern, size_t len)
{
    uint8_t *now = malloc(len);
    cr_assert_eq(xm_read(r, 0, now, len), XM_OK, "%s", xm_last_error(r->ctx));
    cr_assert(memcmp(now, pattern, len) == 0, "the appliance's memory was changed");
    free(now);
}

/* tcp refuses with an error; the local transport refuses what its mapping does not allow
 * (rights, range) and a region that is gone, before touching memory. */
static void expect_refused(const char *provider, xm_status_t s)
{
    if (strcmp(provider, "tcp") == 0) {
        cr_assert_eq(s, XM_ERR_ACCESS, "tcp: expected the transport to refuse, got %s", xm_status_str(s));
    } else {
        cr_assert(s == XM_ERR_ACCESS || s == XM_ERR_NOT_FOUND, "local: expected refusal, got %s",
                  xm_status_str(s));
    }
}

XT_TEST_PROVIDERS(security, grants_and_read_only_refusal, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){.provider = provider});
    enum { LEN = 65536 };
    static uint8_t pattern[LEN];
    xm_ctx_h alice = xt_connect(&app, "alice");
    xm_region_h r = setup_shared(alice, pattern, LEN);

    xm_ctx_h carol = xt_connect(&app, "carol");
    xm_region_h c;
    cr_assert_eq(xm_region_open(carol, 0, "alice/shared", XM_ACCESS_READ, &c), XM_ERR_PERM);
    xm_region_info_t *infos;
    size_t n;
    cr_assert_eq(xm_region_list(carol, &infos, &n), XM_OK);
    cr_assert_eq(n, 0, "carol sees a region she was not granted");
    free(infos);
    cr_assert_eq(xm_region_destroy(carol, 0, "alice/shared"), XM_ERR_PERM);
    cr_assert_eq(xm_region_grant(carol, 0, "alice/shared", "carol", XM_ACCESS_READ_WRITE), XM_ERR_PERM);

    xm_ctx_h bob = xt_connect(&app, "bob");
    xm_region_h b;
    cr_assert_eq(xm_region_open(bob, 0, "alice/shared", XM_ACCESS_READ_WRITE, &b), XM_ERR_PERM);
    cr_assert_eq(xm_region_open(bob, 0, "alice/shared", XM_ACCESS_READ, &b), XM_OK);
    cr_assert_eq(xm_region_destroy(bob, 0, "alice/shared"), XM_ERR_PERM, "a grantee destroyed the region");
    uint8_t buf[4096];
    cr_assert_eq(xm_read(b, 0, buf, sizeof(buf)), XM_OK);
    cr_assert(memcmp(buf, pattern, sizeof(buf)) == 0);
    cr_assert_eq(xm_write(b, 0, buf, 16), XM_ERR_PERM, "libxmem let a read-only handle write");

    /* bypass libxmem: claim write rights on the read-only key */
    bob->timeout_ms = 1500;
    b->access = XM_ACCESS_READ_WRITE;
    memset(buf, 0xAA, sizeof(buf));
    expect_refused(provider, xm_write(b, 0, buf, sizeof(buf)));
    uint64_t old;
    expect_refused(provider, xm_fetch_add(b, 0, 1, &old));
    expect_intact(r, pattern, LEN);

    /* after a refusal the client reconnects and reads again */
    b->access = XM_ACCESS_READ;
    cr_assert_eq(xm_read(b, 4096, buf, sizeof(buf)), XM_OK, "%s", xm_last_error(bob));
    cr_assert(memcmp(buf, pattern + 4096, sizeof(buf)) == 0);
    xm_region_close(b);
    xm_region_close(r);
    xm_disconnect(bob);
    xm_disconnect(carol);
    xm_disconnect(alice);
}

XT_TEST_PROVIDERS(security, wrong_key_out_of_range_and_stale_key_refused, .fini = teardown,
                  .timeout = 90)
{
    xt_start(&app, &(xt_opts_t){.provider = provider});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    ctx->timeout_ms = 1500;
    enum { LEN = 8192 };
    static uint8_t a_pat[LEN], b_pat[2u << 20];
    xm_region_h a, b;
    cr_assert_eq(xm_region_create(ctx, LEN, "a", &a), XM_OK);
    cr_assert_eq(xm_region_create(ctx, sizeof(b_pat), "b", &b), XM_OK);
    xt_fill(a_pat, LEN, 1);
    xt_fill(b_pat, sizeof(b_pat), 2);
    cr_assert_eq(xm_write(a, 0, a_pat, LEN), XM_OK);
    cr_assert_eq(xm_write(b, 0, b_pat, sizeof(b_pat)), XM_OK);
    uint8_t junk[4096];
    memset(junk, 0x66, sizeof(junk));

    /* wrong key (locally the mapping is the capability and no key is used: the attacks on
     * it are in test_local.c) */
    uint64_t key = a->key;
    a->key = key ^ 0x5a5a5a5a5a5a5a5aull;
    if (strcmp(provider, "tcp") == 0) {
        expect_refused(provider, xm_write(a, 0, junk, sizeof(junk)));
        expect_refused(provider, xm_read(a, 0, junk, sizeof(junk)));
    }
    a->key = key;

    /* past the end of the registration: the rest of the extent and beyond */
    a->size = 16u << 20;
    expect_refused(provider, xm_write(a, LEN, junk, sizeof(junk)));
    expect_refused(provider, xm_write(a, LEN - 100, junk, sizeof(junk)));
    expect_refused(provider, xm_read(a, 1u << 20, junk, sizeof(junk)));
    a->size = LEN;
    expect_intact(a, a_pat, LEN);
    expect_intact(b, b_pat, sizeof(b_pat));

    /* a destroyed region's key is dead, even when its memory is reused */
    xm_region_h stale;
    cr_assert_eq(xm_region_open(ctx, 0, "a", XM_ACCESS_READ_WRITE, &stale), XM_OK);
    cr_assert_eq(xm_region_destroy(ctx, 0, "a"), XM_OK);
    xm_region_h c;
    cr_assert_eq(xm_region_create(ctx, LEN, "c", &c), XM_OK);
    static uint8_t c_pat[LEN];
    xt_fill(c_pat, LEN, 3);
    cr_assert_eq(xm_write(c, 0, c_pat, LEN), XM_OK);
    expect_refused(provider, xm_write(stale, 0, junk, sizeof(junk)));
    expect_refused(provider, xm_read(stale, 0, junk, sizeof(junk)));
    expect_intact(c, c_pat, LEN);
    expect_intact(b, b_pat, sizeof(b_pat));
    xm_region_close(stale);
    xm_region_close(a);
    xm_region_close(b);
    xm_region_close(c);
    xm_disconnect(ctx);
}
