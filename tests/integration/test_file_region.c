/* File regions: a file on the appliance's host exposed as a region (docs/file-regions.md). */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static xt_appliance_t app;
static char dir[256];        /* scratch: the appliance's files, and files/ below it */
static char files[300];      /* the --file-dir */

static void teardown(void)
{
    if (app.pid > 0) cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
    xt_cleanup(&app);
}

/* A scratch dir with files/ inside; xmemd started with --file-dir files/ and extra. */
static void start(const char *provider, const char *extra1, const char *extra2)
{
    snprintf(dir, sizeof(dir), "/tmp/xmem-test-XXXXXX");
    cr_assert(mkdtemp(dir) != NULL);
    snprintf(files, sizeof(files), "%s/files", dir);
    cr_assert(mkdir(files, 0700) == 0);
    xt_start(&app, &(xt_opts_t){.provider = provider, .dir = dir,
                                .extra = {"--file-dir", files, extra1, extra2}});
}

/* Write a file of len bytes (content from seed) with mode; returns the bytes written. */
static uint8_t *make_file(const char *path, size_t len, uint64_t seed, mode_t mode)
{
    uint8_t *data = malloc(len + 1);
    xt_fill(data, len, seed);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert(fd >= 0, "create %s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, data, len), (ssize_t)len);
    cr_assert(fchmod(fd, mode) == 0);
    close(fd);
    return data;
}

static void pread_all(const char *path, uint8_t *buf, size_t len, off_t off)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
    cr_assert_eq(pread(fd, buf, len, off), (ssize_t)len, "pread %s", path);
    close(fd);
}

static off_t file_size(const char *path)
{
    struct stat st;
    cr_assert(stat(path, &st) == 0, "%s is gone", path);
    return st.st_size;
}

/* The appliance still serves: a plain region can be created and destroyed. */
static void still_serving(xm_ctx_h ctx)
{
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 4096, "alive", &r), XM_OK, "xmemd stopped serving: %s",
                 xm_last_error(ctx));
    xm_region_close(r);
    cr_assert_eq(xm_region_destroy(ctx, 0, "alive"), XM_OK);
    cr_assert_eq(kill(app.pid, 0), 0, "xmemd died");
}

XT_TEST_PROVIDERS(file, exposed_file_reads_writes_and_syncs, .fini = teardown, .timeout = 120)
{
    start(provider, NULL, NULL);
    char path[400];
    snprintf(path, sizeof(path), "%s/data.bin", files);
    const size_t len = (3u << 20) + 123; /* not a whole number of pages */
    uint8_t *data = make_file(path, len, 7, 0600);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create_file(ctx, path, 0, "ds", &r), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_size(r), len, "the region's size is not the file's");
    cr_assert_eq(xm_region_access(r), XM_ACCESS_READ_WRITE);
    /* the file's content, without loading anything */
    uint8_t *got = malloc(len);
    cr_assert_eq(xm_read(r, 0, got, len), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(got, data, len) == 0, "the region does not read as the file");
    /* a write, synced, is in the file; so is one at the very end */
    uint8_t w[8192];
    xt_fill(w, sizeof(w), 99);
    cr_assert_eq(xm_write(r, 4096 + 17, w, sizeof(w)), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(r, len - 100, w, 100), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_sync(r, 0, 0), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_sync(r, 4096, 8192 + 17), XM_OK, "%s", xm_last_error(ctx));
    uint8_t f[8192];
    pread_all(path, f, sizeof(f), 4096 + 17);
    cr_assert(memcmp(f, w, sizeof(w)) == 0, "the write did not reach the file");
    pread_all(path, f, 100, (off_t)(len - 100));
    cr_assert(memcmp(f, w, 100) == 0, "the write at the end did not reach the file");
    cr_assert_eq(file_size(path), (off_t)len, "the file's size changed");
    /* sync out of range is refused */
    cr_assert_eq(xm_region_sync(r, len, 1), XM_ERR_RANGE);
    /* a second client, opening by name, sees the same bytes */
    xm_ctx_h ctx2 = xt_connect(&app, NULL);
    xm_region_h r2;
    cr_assert_eq(xm_region_open(ctx2, 0, "ds", XM_ACCESS_READ, &r2), XM_OK, "%s",
                 xm_last_error(ctx2));
    cr_assert_eq(xm_read(r2, 4096 + 17, got, sizeof(w)), XM_OK, "%s", xm_last_error(ctx2));
    cr_assert(memcmp(got, w, sizeof(w)) == 0);
    xm_region_close(r2);
    xm_disconnect(ctx2);
    /* the CLI: sync by name */
    char *out = NULL, *err = NULL;
    int rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "region", "sync", "ds", NULL);
    cr_assert_eq(rc, 0, "xmem region sync: %s", err);
    free(out);
    free(err);
    xm_region_close(r);
    xm_disconnect(ctx);
    free(data);
    free(got);
}

Test(file, sync_then_kill9_keeps_the_data_and_restart_restores_the_region, .fini = teardown,
     .timeout = 120)
{
    start("tcp", NULL, NULL);
    char path[400];
    snprintf(path, sizeof(path), "%s/keep.bin", files);
    const size_t len = 1u << 20;
    uint8_t *data = make_file(path, len, 3, 0600);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create_file(ctx, path, 0, "keep", &r), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_grant(ctx, 0, "keep", "bob", XM_ACCESS_READ), XM_OK);
    uint64_t id = xm_region_id(r);
    uint8_t w[65536];
    xt_fill(w, sizeof(w), 5);
    cr_assert_eq(xm_write(r, 12345, w, sizeof(w)), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_sync(r, 12345, sizeof(w)), XM_OK, "%s", xm_last_error(ctx));
    memcpy(data + 12345, w, sizeof(w));
    xm_region_close(r);
    xm_disconnect(ctx);
    char addr[64], secret[PATH_MAX];
    snprintf(addr, sizeof(addr), "%s", app.addr);
    snprintf(secret, sizeof(secret), "%s", app.secret);
    xt_kill9(&app);
    uint8_t *f = malloc(len);
    pread_all(path, f, len, 0);
    cr_assert(memcmp(f, data, len) == 0, "synced data is not in the file after kill -9");

    /* the same appliance (address, identity) comes back with the region */
    xt_start(&app, &(xt_opts_t){.dir = dir, .secret = secret, .listen = addr,
                                .extra = {"--file-dir", files}});
    ctx = xt_connect(&app, NULL);
    xm_region_info_t info;
    cr_assert_eq(xm_region_stat(ctx, 0, "keep", &info), XM_OK, "the file region is gone: %s",
                 xm_last_error(ctx));
    cr_assert_eq(info.id, id);
    cr_assert_eq(info.size, len);
    cr_assert_eq(xm_region_open(ctx, 0, "keep", XM_ACCESS_READ_WRITE, &r), XM_OK, "%s",
                 xm_last_error(ctx));
    uint8_t *got = malloc(len);
    cr_assert_eq(xm_read(r, 0, got, len), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(got, data, len) == 0, "the restored region does not read as the file");
    /* writable again, under a key issued by this run */
    cr_assert_eq(xm_write(r, 0, "again", 5), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_sync(r, 0, 5), XM_OK);
    pread_all(path, f, 5, 0);
    cr_assert(memcmp(f, "again", 5) == 0);
    xm_region_close(r);
    /* the grant came back too: bob reads, and cannot write */
    xm_ctx_h bob = xt_connect(&app, "bob");
    cr_assert_eq(xm_region_open(bob, 0, "alice/keep", XM_ACCESS_READ, &r), XM_OK, "%s",
                 xm_last_error(bob));
    cr_assert_eq(xm_read(r, 5, got, 100), XM_OK);
    cr_assert(memcmp(got, data + 5, 100) == 0);
    xm_region_close(r);
    cr_assert_eq(xm_region_open(bob, 0, "alice/keep", XM_ACCESS_READ_WRITE, &r), XM_ERR_PERM);
    xm_disconnect(bob);
    /* a restart without --file-dir does not restore it, and does not forget it either */
    xm_disconnect(ctx);
    cr_assert_eq(xt_stop(&app), 0);
    xt_start(&app, &(xt_opts_t){.dir = dir, .secret = secret, .listen = addr});
    ctx = xt_connect(&app, NULL);
    cr_assert_eq(xm_region_stat(ctx, 0, "keep", &info), XM_ERR_NOT_FOUND);
    xm_disconnect(ctx);
    cr_assert_eq(xt_stop(&app), 0);
    /* and a clean restart (SIGTERM) with it keeps the region */
    xt_start(&app, &(xt_opts_t){.dir = dir, .secret = secret, .listen = addr,
                                .extra = {"--file-dir", files}});
    ctx = xt_connect(&app, NULL);
    cr_assert_eq(xm_region_stat(ctx, 0, "keep", &info), XM_OK, "%s", xm_last_error(ctx));
    xm_disconnect(ctx);
    free(data);
    free(got);
    free(f);
}

/* Create must fail with want, the daemon keep serving, and the message contain hint. */
static void refused(xm_ctx_h ctx, const char *path, uint32_t flags, xm_status_t want,
                    const char *hint, const char *what)
{
    xm_region_h r = NULL;
    xm_status_t s = xm_region_create_file(ctx, path, flags, NULL, &r);
    cr_assert_eq(s, want, "%s: got %s (%s), want %s", what, xm_status_str(s), xm_last_error(ctx),
                 xm_status_str(want));
    cr_assert_not_null(strstr(xm_last_error(ctx), hint), "%s: message '%s' does not say '%s'",
                       what, xm_last_error(ctx), hint);
    still_serving(ctx);
}

Test(file, unsafe_files_are_refused, .fini = teardown, .timeout = 120)
{
    start("tcp", "--max-file-region", "1M");
    xm_ctx_h ctx = xt_connect(&app, NULL);
    char p[400], q[400];
    snprintf(p, sizeof(p), "%s/missing", files);
    refused(ctx, p, 0, XM_ERR_NOT_FOUND, "no such file", "missing file");
    refused(ctx, "relative/path", 0, XM_ERR_INVALID, "absolute", "relative path");
    snprintf(p, sizeof(p), "%s/sub", files);
    cr_assert(mkdir(p, 0700) == 0);
    refused(ctx, p, 0, XM_ERR_INVALID, "not a regular file", "directory");
    snprintf(p, sizeof(p), "%s/fifo", files);
    cr_assert(mkfifo(p, 0600) == 0);
    refused(ctx, p, 0, XM_ERR_INVALID, "not a regular file", "fifo");
    /* a symbolic link, even to an allowed file */
    snprintf(q, sizeof(q), "%s/target", files);
    free(make_file(q, 4096, 1, 0600));
    snprintf(p, sizeof(p), "%s/link", files);
    cr_assert(symlink(q, p) == 0);
    refused(ctx, p, 0, XM_ERR_INVALID, "symbolic link", "symlink");
    /* a link out of the allowed directory */
    snprintf(p, sizeof(p), "%s/shadow", files);
    cr_assert(symlink("/etc/shadow", p) == 0);
    refused(ctx, p, 0, XM_ERR_PERM, "--file-dir", "symlink to /etc/shadow");
    refused(ctx, "/etc/shadow", 0, XM_ERR_PERM, "--file-dir", "/etc/shadow");
    /* whether a path outside exists is not told: both are 'outside' */
    refused(ctx, "/etc/no-such-file-here", 0, XM_ERR_PERM, "--file-dir", "missing outside");
    snprintf(q, sizeof(q), "%s/../no-such-file-here", files);
    refused(ctx, q, 0, XM_ERR_PERM, "--file-dir", "missing outside through ..");
    /* a file outside, and one reached with .. */
    snprintf(p, sizeof(p), "%s/outside", dir);
    free(make_file(p, 4096, 1, 0600));
    /* a hard link inside to the file outside (0600, ours: every other check passes) */
    snprintf(q, sizeof(q), "%s/hardlink", files);
    cr_assert(link(p, q) == 0, "link: %s", strerror(errno));
    refused(ctx, q, 0, XM_ERR_PERM, "hard links", "hard link to a file outside");
    refused(ctx, p, 0, XM_ERR_PERM, "--file-dir", "outside --file-dir");
    snprintf(p, sizeof(p), "%s/../outside", files);
    refused(ctx, p, 0, XM_ERR_PERM, "--file-dir", "outside through ..");
    /* modes and sizes */
    snprintf(p, sizeof(p), "%s/shared", files);
    free(make_file(p, 4096, 1, 0644));
    refused(ctx, p, 0, XM_ERR_PERM, "chmod 600", "mode 0644");
    snprintf(p, sizeof(p), "%s/groupw", files);
    free(make_file(p, 4096, 1, 0620));
    refused(ctx, p, XM_REGION_FILE_READ_ONLY, XM_ERR_PERM, "chmod 600", "mode 0620 read-only");
    snprintf(p, sizeof(p), "%s/empty", files);
    free(make_file(p, 0, 1, 0600));
    refused(ctx, p, 0, XM_ERR_INVALID, "empty", "empty file");
    snprintf(p, sizeof(p), "%s/big", files);
    free(make_file(p, (1u << 20) + 1, 1, 0600));
    refused(ctx, p, 0, XM_ERR_NO_SPACE, "--max-file-region", "too large");
    /* exactly the cap is fine */
    snprintf(p, sizeof(p), "%s/cap", files);
    free(make_file(p, 1u << 20, 1, 0600));
    xm_region_h r;
    cr_assert_eq(xm_region_create_file(ctx, p, 0, "cap", &r), XM_OK, "%s", xm_last_error(ctx));
    xm_region_close(r);
    /* exposed already (read-write): a second region of it is refused by its lock */
    refused(ctx, p, 0, XM_ERR_EXISTS, "locked", "exposed twice");
    cr_assert_eq(xm_region_destroy(ctx, 0, "cap"), XM_OK);
    /* locked by another process (this one), exclusively or shared */
    snprintf(p, sizeof(p), "%s/locked", files);
    free(make_file(p, 4096, 1, 0600));
    int lfd = open(p, O_RDONLY | O_CLOEXEC);
    cr_assert(flock(lfd, LOCK_EX) == 0);
    refused(ctx, p, 0, XM_ERR_EXISTS, "locked by another process", "locked exclusively");
    refused(ctx, p, XM_REGION_FILE_READ_ONLY, XM_ERR_EXISTS, "locked by another process",
            "locked exclusively, read-only");
    cr_assert(flock(lfd, LOCK_SH) == 0);
    refused(ctx, p, 0, XM_ERR_EXISTS, "locked by another process", "locked shared");
    /* a shared lock lets a read-only region in (both only read) */
    cr_assert_eq(xm_region_create_file(ctx, p, XM_REGION_FILE_READ_ONLY, "shared", &r), XM_OK,
                 "%s", xm_last_error(ctx));
    xm_region_close(r);
    /* and while the region exists, the appliance holds its lock */
    cr_assert(flock(lfd, LOCK_UN) == 0);
    int other = open(p, O_RDONLY | O_CLOEXEC);
    cr_assert(flock(other, LOCK_EX | LOCK_NB) != 0, "the appliance does not hold the file's lock");
    cr_assert_eq(xm_region_destroy(ctx, 0, "shared"), XM_OK);
    cr_assert(flock(other, LOCK_EX | LOCK_NB) == 0, "the lock outlived the region");
    close(other);
    close(lfd);
    xm_disconnect(ctx);
}

Test(file, xmemd_own_files_are_refused, .fini = teardown, .timeout = 60)
{
    /* an operator who allows the directory holding the secret: still never the secret, the
     * tenant registry, the identity or the pool */
    snprintf(dir, sizeof(dir), "/tmp/xmem-test-XXXXXX");
    cr_assert(mkdtemp(dir) != NULL);
    char pool[400];
    snprintf(pool, sizeof(pool), "file:%s/pool", dir);
    xt_start(&app, &(xt_opts_t){.dir = dir, .pool = "64M", .backing = pool,
                                .extra = {"--file-dir", dir}});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    char p[400];
    snprintf(p, sizeof(p), "%s/secret", dir);
    refused(ctx, p, XM_REGION_FILE_READ_ONLY, XM_ERR_PERM, "xmemd's own files", "the secret");
    snprintf(p, sizeof(p), "%s/pool", dir);
    refused(ctx, p, 0, XM_ERR_PERM, "xmemd's own files", "the pool file");
    snprintf(p, sizeof(p), "%s/pool.identity", dir);
    refused(ctx, p, XM_REGION_FILE_READ_ONLY, XM_ERR_PERM, "xmemd's own files", "the identity");
    xm_disconnect(ctx);
}

Test(file, file_owned_by_another_user_is_refused, .fini = teardown, .timeout = 60)
{
    if (geteuid() != 0) cr_skip_test("needs root to give a file to another user");
    struct passwd *pw = getpwnam("nobody");
    if (pw == NULL) cr_skip_test("no user 'nobody' on this host");
    start("tcp", NULL, NULL);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    char p[400];
    snprintf(p, sizeof(p), "%s/nobodys", files);
    free(make_file(p, 4096, 1, 0600));
    cr_assert(chown(p, pw->pw_uid, pw->pw_gid) == 0);
    refused(ctx, p, 0, XM_ERR_PERM, "owned by another user", "owned by nobody");
    refused(ctx, p, XM_REGION_FILE_READ_ONLY, XM_ERR_PERM, "owned by another user",
            "owned by nobody, read-only");
    xm_disconnect(ctx);
}

Test(file, no_file_dir_means_no_file_regions, .fini = teardown, .timeout = 60)
{
    xt_start(&app, &(xt_opts_t){0});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    char p[400];
    snprintf(p, sizeof(p), "%s/f", app.dir);
    free(make_file(p, 4096, 1, 0600));
    refused(ctx, p, 0, XM_ERR_PERM, "--file-dir", "no --file-dir");
    refused(ctx, "/etc/passwd", XM_REGION_FILE_READ_ONLY, XM_ERR_PERM, "--file-dir",
            "no --file-dir, /etc/passwd");
    xm_disconnect(ctx);
}

XT_TEST_PROVIDERS(file, read_only_region_refuses_writes_and_write_grants, .fini = teardown,
                  .timeout = 120)
{
    start(provider, NULL, NULL);
    char path[400];
    snprintf(path, sizeof(path), "%s/ro.bin", files);
    const size_t len = 200000;
    uint8_t *data = make_file(path, len, 11, 0400);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create_file(ctx, path, XM_REGION_FILE_READ_ONLY, "ro", &r), XM_OK,
                 "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_access(r), XM_ACCESS_READ);
    uint8_t *got = malloc(len);
    cr_assert_eq(xm_read(r, 0, got, len), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(got, data, len) == 0);
    cr_assert_neq(xm_write(r, 0, "x", 1), XM_OK, "a read-only file region took a write");
    xm_region_close(r);
    /* not even its owner opens it for writing; no grant gives write */
    cr_assert_eq(xm_region_open(ctx, 0, "ro", XM_ACCESS_READ_WRITE, &r), XM_ERR_PERM);
    cr_assert_eq(xm_region_grant(ctx, 0, "ro", "bob", XM_ACCESS_READ_WRITE), XM_ERR_PERM);
    cr_assert_not_null(strstr(xm_last_error(ctx), "read-only"), "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_grant(ctx, 0, "ro", "bob", XM_ACCESS_READ), XM_OK);
    xm_ctx_h bob = xt_connect(&app, "bob");
    cr_assert_eq(xm_region_open(bob, 0, "alice/ro", XM_ACCESS_READ_WRITE, &r), XM_ERR_PERM);
    cr_assert_eq(xm_region_open(bob, 0, "alice/ro", XM_ACCESS_READ, &r), XM_OK, "%s",
                 xm_last_error(bob));
    cr_assert_neq(xm_write(r, 10, "x", 1), XM_OK, "bob wrote a read-only file region");
    xm_region_close(r);
    xm_disconnect(bob);
    /* the file is as it was */
    pread_all(path, got, len, 0);
    cr_assert(memcmp(got, data, len) == 0, "a read-only file region's file changed");
    still_serving(ctx);
    xm_disconnect(ctx);
    free(data);
    free(got);
}

Test(file, destroy_leaves_the_file_intact, .fini = teardown, .timeout = 60)
{
    start("tcp", NULL, NULL);
    char path[400];
    snprintf(path, sizeof(path), "%s/stay.bin", files);
    const size_t len = 300000;
    uint8_t *data = make_file(path, len, 13, 0600);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create_file(ctx, path, 0, "stay", &r), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(r, 100, "written", 7), XM_OK);
    memcpy(data + 100, "written", 7);
    xm_region_close(r);
    cr_assert_eq(xm_region_destroy(ctx, 0, "stay"), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(file_size(path), (off_t)len, "destroy changed the file's size");
    uint8_t *got = malloc(len);
    pread_all(path, got, len, 0);
    cr_assert(memcmp(got, data, len) == 0, "destroy changed the file's content");
    xm_region_info_t info;
    cr_assert_eq(xm_region_stat(ctx, 0, "stay", &info), XM_ERR_NOT_FOUND);
    /* and it can be exposed again */
    cr_assert_eq(xm_region_create_file(ctx, path, 0, "stay", &r), XM_OK, "%s", xm_last_error(ctx));
    xm_region_close(r);
    xm_disconnect(ctx);
    free(data);
    free(got);
}

XT_TEST_PROVIDERS(file, another_tenant_needs_a_grant, .fini = teardown, .timeout = 60)
{
    start(provider, NULL, NULL);
    char path[400];
    snprintf(path, sizeof(path), "%s/private.bin", files);
    uint8_t *data = make_file(path, 8192, 17, 0600);
    xm_ctx_h alice = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create_file(alice, path, 0, "private", &r), XM_OK, "%s",
                 xm_last_error(alice));
    uint64_t id = xm_region_id(r);
    xm_region_close(r);
    xm_ctx_h bob = xt_connect(&app, "bob");
    cr_assert_eq(xm_region_open(bob, 0, "alice/private", XM_ACCESS_READ, &r), XM_ERR_PERM);
    cr_assert_eq(xm_region_open(bob, id, NULL, XM_ACCESS_READ, &r), XM_ERR_PERM);
    xm_region_h rb;
    cr_assert_eq(xm_region_sync(NULL, 0, 0), XM_ERR_INVALID);
    /* bob cannot destroy it either */
    cr_assert_eq(xm_region_destroy(bob, 0, "alice/private"), XM_ERR_PERM);
    cr_assert_eq(xm_region_grant(alice, 0, "private", "bob", XM_ACCESS_READ_WRITE), XM_OK);
    cr_assert_eq(xm_region_open(bob, 0, "alice/private", XM_ACCESS_READ_WRITE, &rb), XM_OK, "%s",
                 xm_last_error(bob));
    uint8_t got[8192];
    cr_assert_eq(xm_read(rb, 0, got, sizeof(got)), XM_OK, "%s", xm_last_error(bob));
    cr_assert(memcmp(got, data, sizeof(got)) == 0);
    cr_assert_eq(xm_write(rb, 0, "bob", 3), XM_OK, "%s", xm_last_error(bob));
    cr_assert_eq(xm_region_sync(rb, 0, 3), XM_OK, "%s", xm_last_error(bob));
    pread_all(path, got, 3, 0);
    cr_assert(memcmp(got, "bob", 3) == 0);
    xm_region_close(rb);
    /* bob still cannot destroy it */
    cr_assert_eq(xm_region_destroy(bob, 0, "alice/private"), XM_ERR_PERM);
    xm_disconnect(bob);
    xm_disconnect(alice);
    free(data);
}

Test(file, a_file_that_shrinks_does_not_crash_the_appliance, .fini = teardown, .timeout = 60)
{
    start("tcp", NULL, NULL);
    char path[400];
    snprintf(path, sizeof(path), "%s/shrink.bin", files);
    const size_t len = 1u << 20;
    uint8_t *data = make_file(path, len, 19, 0600);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create_file(ctx, path, 0, "shrink", &r), XM_OK, "%s",
                 xm_last_error(ctx));
    /* xmemd's user (root here, or the same user) truncates the file behind its back */
    cr_assert(truncate(path, 4096) == 0);
    uint8_t buf[65536];
    xm_status_t s = xm_read(r, len - sizeof(buf), buf, sizeof(buf));
    if (s == XM_OK) {
        for (size_t i = 0; i < sizeof(buf); i++)
            cr_assert_eq(buf[i], 0, "bytes past the file's new end are not zeros");
    }
    (void)xm_write(r, len - 4096, buf, 4096);
    cr_assert_eq(kill(app.pid, 0), 0, "xmemd died of a shrunk file");
    /* sync says what happened */
    s = xm_region_sync(r, 0, 0);
    cr_assert_eq(s, XM_ERR_IO, "sync after the file shrank: %s", xm_status_str(s));
    cr_assert_not_null(strstr(xm_last_error(ctx), "shrank"), "%s", xm_last_error(ctx));
    /* the page the file still has reads as the file */
    cr_assert_eq(xm_read(r, 0, buf, 4096), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(buf, data, 4096) == 0, "the file's remaining page does not read as it");
    xm_region_close(r);
    /* no new key reads scratch as data */
    cr_assert_eq(xm_region_open(ctx, 0, "shrink", XM_ACCESS_READ, &r), XM_ERR_IO);
    cr_assert_not_null(strstr(xm_last_error(ctx), "destroy"), "%s", xm_last_error(ctx));
    still_serving(ctx);
    cr_assert_eq(xm_region_destroy(ctx, 0, "shrink"), XM_OK);
    xm_disconnect(ctx);
    free(data);
}

Test(file, file_pool_restart_restores_pool_and_file_regions, .fini = teardown, .timeout = 120)
{
    /* a file pool keeps its regions in POOL.meta, file regions in POOL.files: both return */
    snprintf(dir, sizeof(dir), "/tmp/xmem-test-XXXXXX");
    cr_assert(mkdtemp(dir) != NULL);
    snprintf(files, sizeof(files), "%s/files", dir);
    cr_assert(mkdir(files, 0700) == 0);
    char pool[400], path[400];
    snprintf(pool, sizeof(pool), "file:%s/pool", dir);
    snprintf(path, sizeof(path), "%s/f.bin", files);
    uint8_t *data = make_file(path, 70000, 23, 0600);
    xt_start(&app, &(xt_opts_t){.dir = dir, .pool = "64M", .backing = pool,
                                .extra = {"--file-dir", files}});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r, f;
    cr_assert_eq(xm_region_create(ctx, 4u << 20, "p", &r), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(r, 1000, "pool", 4), XM_OK);
    cr_assert_eq(xm_region_sync(r, 0, 0), XM_OK, "a file pool's region syncs: %s",
                 xm_last_error(ctx));
    cr_assert_eq(xm_region_create_file(ctx, path, XM_REGION_FILE_READ_ONLY, "f", &f), XM_OK,
                 "%s", xm_last_error(ctx));
    uint64_t pid = xm_region_id(r), fid = xm_region_id(f);
    cr_assert_neq(pid, fid);
    xm_region_close(r);
    xm_region_close(f);
    xm_disconnect(ctx);
    char addr[64], secret[PATH_MAX];
    snprintf(addr, sizeof(addr), "%s", app.addr);
    snprintf(secret, sizeof(secret), "%s", app.secret);
    cr_assert_eq(xt_stop(&app), 0);
    xt_start(&app, &(xt_opts_t){.dir = dir, .secret = secret, .listen = addr, .pool = "64M",
                                .backing = pool, .extra = {"--file-dir", files}});
    ctx = xt_connect(&app, NULL);
    cr_assert_eq(xm_region_open(ctx, 0, "p", XM_ACCESS_READ, &r), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_open(ctx, 0, "f", XM_ACCESS_READ, &f), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_region_id(r), pid);
    cr_assert_eq(xm_region_id(f), fid);
    char got[4];
    cr_assert_eq(xm_read(r, 1000, got, 4), XM_OK);
    cr_assert(memcmp(got, "pool", 4) == 0);
    uint8_t *fg = malloc(70000);
    cr_assert_eq(xm_read(f, 0, fg, 70000), XM_OK);
    cr_assert(memcmp(fg, data, 70000) == 0);
    /* still read-only after the restart */
    xm_region_h w;
    cr_assert_eq(xm_region_open(ctx, 0, "f", XM_ACCESS_READ_WRITE, &w), XM_ERR_PERM);
    /* a new region takes an id neither of them has */
    xm_region_h n;
    cr_assert_eq(xm_region_create(ctx, 4096, "n", &n), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(xm_region_id(n) != pid && xm_region_id(n) != fid);
    xm_region_close(n);
    xm_region_close(r);
    xm_region_close(f);
    xm_disconnect(ctx);
    free(data);
    free(fg);
}

Test(file, memfd_region_sync_is_refused_with_the_reason, .fini = teardown, .timeout = 60)
{
    start("tcp", NULL, NULL);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create(ctx, 4096, "mem", &r), XM_OK);
    cr_assert_eq(xm_region_sync(r, 0, 0), XM_ERR_INVALID);
    cr_assert_not_null(strstr(xm_last_error(ctx), "no file"), "%s", xm_last_error(ctx));
    xm_region_close(r);
    xm_disconnect(ctx);
}

Test(file, cli_create_file_get_sync_and_refusal, .fini = teardown, .timeout = 60)
{
    start("tcp", NULL, NULL);
    char path[400], missing[400];
    snprintf(path, sizeof(path), "%s/cli.bin", files);
    snprintf(missing, sizeof(missing), "%s/nope.bin", files);
    uint8_t *data = make_file(path, 5000, 29, 0600);
    char *out = NULL, *err = NULL;
    size_t olen = 0;
    int rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "region", "create", "--file", path,
                    "--read-only", "clif", NULL);
    cr_assert_eq(rc, 0, "xmem region create --file: %s", err);
    cr_assert(out[0] >= '1' && out[0] <= '9', "no region id printed: '%s'", out);
    free(out);
    free(err);
    rc = xt_cli(&app, NULL, 0, &out, &olen, &err, "get", "clif", NULL);
    cr_assert_eq(rc, 0, "xmem get: %s", err);
    cr_assert_eq(olen, 5000);
    cr_assert(memcmp(out, data, 5000) == 0, "xmem get does not read the file");
    free(out);
    free(err);
    rc = xt_cli(&app, "x", 1, &out, NULL, &err, "put", "clif", NULL);
    cr_assert_neq(rc, 0, "xmem put wrote a read-only file region");
    free(out);
    free(err);
    rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "region", "sync", "clif", "--length", "4K", NULL);
    cr_assert_eq(rc, 0, "xmem region sync: %s", err);
    free(out);
    free(err);
    rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "region", "create", "--file", missing, NULL);
    cr_assert_eq(rc, 1, "a missing file: exit %d", rc);
    cr_assert_not_null(strstr(err, "no such file"), "stderr: %s", err);
    free(out);
    free(err);
    free(data);
}

static long read_long(const char *path)
{
    FILE *f = fopen(path, "r");
    long v = -1;
    if (f != NULL) {
        if (fscanf(f, "%ld", &v) != 1) v = -1;
        fclose(f);
    }
    return v;
}

static bool write_long(const char *path, long v)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) return false;
    bool ok = fprintf(f, "%ld\n", v) > 0;
    return fclose(f) == 0 && ok;
}

#define NR_HUGE "/proc/sys/vm/nr_hugepages"
#define FREE_HUGE "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"
static long saved_pages = -1;

static void teardown_huge(void)
{
    teardown();
    if (saved_pages >= 0) write_long(NR_HUGE, saved_pages);
}

Test(file, hugetlb_pool_restart_restores_file_regions, .fini = teardown_huge, .timeout = 120)
{
    saved_pages = read_long(NR_HUGE);
    if (saved_pages < 0 || access(FREE_HUGE, R_OK) != 0)
        cr_skip_test("no 2 MiB hugetlb support in this kernel");
    if (!write_long(NR_HUGE, saved_pages + 32) || read_long(FREE_HUGE) < 32)
        cr_skip_test("cannot reserve 32 huge pages (not root, or memory too fragmented)");
    snprintf(dir, sizeof(dir), "/tmp/xmem-test-XXXXXX");
    cr_assert(mkdtemp(dir) != NULL);
    snprintf(files, sizeof(files), "%s/files", dir);
    cr_assert(mkdir(files, 0700) == 0);
    char path[400];
    snprintf(path, sizeof(path), "%s/h.bin", files);
    uint8_t *data = make_file(path, 123457, 31, 0600);
    xt_start(&app, &(xt_opts_t){.dir = dir, .pool = "64M", .backing = "hugetlb",
                                .extra = {"--file-dir", files}});
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_create_file(ctx, path, 0, "h", &r), XM_OK, "%s", xm_last_error(ctx));
    cr_assert_eq(xm_write(r, 7, "huge", 4), XM_OK);
    memcpy(data + 7, "huge", 4);
    xm_region_close(r);
    xm_disconnect(ctx);
    char addr[64], secret[PATH_MAX];
    snprintf(addr, sizeof(addr), "%s", app.addr);
    snprintf(secret, sizeof(secret), "%s", app.secret);
    xt_kill9(&app);
    xt_start(&app, &(xt_opts_t){.dir = dir, .secret = secret, .listen = addr, .pool = "64M",
                                .backing = "hugetlb", .extra = {"--file-dir", files}});
    ctx = xt_connect(&app, NULL);
    cr_assert_eq(xm_region_open(ctx, 0, "h", XM_ACCESS_READ_WRITE, &r), XM_OK,
                 "the file region did not come back on a hugetlb appliance: %s",
                 xm_last_error(ctx));
    uint8_t *got = malloc(123457);
    cr_assert_eq(xm_read(r, 0, got, 123457), XM_OK, "%s", xm_last_error(ctx));
    cr_assert(memcmp(got, data, 123457) == 0);
    xm_region_close(r);
    xm_disconnect(ctx);
    free(data);
    free(got);
}
