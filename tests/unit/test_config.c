/* Config table: defaults < file < XMEM_* environment < flags; bad input refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <xmem/version.h>
#include <xmem/xmem.h>

#include "../../src/common/common.h"
#include "../../src/common/config.h"

/* Names unlikely to be set in anyone's environment: XMEM_XT_POOL, XMEM_XT_LISTEN, ... */
static xm_config_entry_t entries[] = {
    {"xt-pool", "1G", "pool size"},
    {"xt-listen", "127.0.0.1:7000", "address to listen on"},
    {"xt-level", "warn", "log level"},
    {"xt-secret", NULL, "secret file"},
};
static xm_config_t cfg = {entries, XM_ARRAY_LEN(entries)};
static char path[64];

static void setup(void)
{
    unsetenv("XMEM_XT_POOL");
    unsetenv("XMEM_XT_LISTEN");
    unsetenv("XMEM_XT_LEVEL");
    unsetenv("XMEM_XT_SECRET");
    path[0] = '\0';
}

static void teardown(void)
{
    xm__config_cleanup(&cfg);
    if (path[0] != '\0') {
        unlink(path);
    }
}

/* Write text to a fresh temp file; its name goes to path, removed by teardown. */
static const char *write_file(const char *text)
{
    snprintf(path, sizeof(path), "/tmp/xmem-test-config-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0, "mkstemp: %m");
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

static const char *source_of(const char *name)
{
    for (size_t i = 0; i < cfg.count; i++) {
        if (strcmp(cfg.entries[i].name, name) == 0) {
            return cfg.entries[i].source;
        }
    }
    cr_assert_fail("no entry %s", name);
    return NULL;
}

TestSuite(config, .init = setup, .fini = teardown);

Test(config, defaults)
{
    xm__config_init(&cfg);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "1G");
    cr_expect_str_eq(xm__config_get(&cfg, "xt-listen"), "127.0.0.1:7000");
    cr_expect_str_eq(source_of("xt-pool"), "default");
    cr_expect_null(xm__config_get(&cfg, "xt-secret"), "an entry without default is unset");
    cr_expect_null(xm__config_get(&cfg, "no-such-setting"));
}

Test(config, env_overrides_default)
{
    setenv("XMEM_XT_POOL", "8G", 1);
    setenv("XMEM_XT_SECRET", "/etc/xmem/secret", 1);
    xm__config_init(&cfg);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "8G");
    cr_expect_str_eq(source_of("xt-pool"), "env");
    cr_expect_str_eq(xm__config_get(&cfg, "xt-secret"), "/etc/xmem/secret");
    cr_expect_str_eq(xm__config_get(&cfg, "xt-listen"), "127.0.0.1:7000");
    cr_expect_str_eq(source_of("xt-listen"), "default");
}

Test(config, empty_env_is_ignored)
{
    setenv("XMEM_XT_POOL", "", 1);
    xm__config_init(&cfg);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "1G");
    cr_expect_str_eq(source_of("xt-pool"), "default");
}

Test(config, env_name_is_upper_snake_case)
{
    /* "xt-listen" is XMEM_XT_LISTEN, not XMEM_XT-LISTEN */
    setenv("XMEM_XT-LISTEN", "wrong:1", 1);
    setenv("XMEM_XT_LISTEN", "right:2", 1);
    xm__config_init(&cfg);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-listen"), "right:2");
    unsetenv("XMEM_XT-LISTEN");
}

Test(config, file_overrides_default)
{
    xm__config_init(&cfg);
    const char *p = write_file("# an xmemd config\n"
                               "\n"
                               "   xt-pool   =   64G   \n"
                               "\t# indented comment\n"
                               "xt-level=debug\n"
                               "xt-listen = [::1]:7001\n");
    cr_assert_eq(xm__config_load_file(&cfg, p), XM_OK);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "64G", "spaces around name and value trimmed");
    cr_expect_str_eq(source_of("xt-pool"), "file");
    cr_expect_str_eq(xm__config_get(&cfg, "xt-level"), "debug");
    cr_expect_str_eq(xm__config_get(&cfg, "xt-listen"), "[::1]:7001");
    cr_expect_null(xm__config_get(&cfg, "xt-secret"), "not in the file: stays unset");
}

Test(config, file_value_may_contain_equals_and_be_empty)
{
    xm__config_init(&cfg);
    const char *p = write_file("xt-secret = /path/a=b\nxt-level =\n");
    cr_assert_eq(xm__config_load_file(&cfg, p), XM_OK);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-secret"), "/path/a=b");
    cr_expect_str_eq(xm__config_get(&cfg, "xt-level"), "");
}

Test(config, last_line_without_newline)
{
    xm__config_init(&cfg);
    const char *p = write_file("xt-pool = 2T");
    cr_assert_eq(xm__config_load_file(&cfg, p), XM_OK);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "2T");
}

Test(config, env_beats_file)
{
    setenv("XMEM_XT_POOL", "8G", 1);
    xm__config_init(&cfg);
    const char *p = write_file("xt-pool = 64G\nxt-level = info\n");
    cr_assert_eq(xm__config_load_file(&cfg, p), XM_OK);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "8G");
    cr_expect_str_eq(source_of("xt-pool"), "env");
    cr_expect_str_eq(xm__config_get(&cfg, "xt-level"), "info", "the file still sets the rest");
}

Test(config, flag_beats_everything)
{
    setenv("XMEM_XT_POOL", "8G", 1);
    setenv("XMEM_XT_LEVEL", "error", 1);
    xm__config_init(&cfg);
    const char *p = write_file("xt-pool = 64G\nxt-listen = 10.0.0.1:1\nxt-level = info\n");
    cr_assert_eq(xm__config_load_file(&cfg, p), XM_OK);
    /* the order xmemd applies them: defaults+env, file, then flags */
    cr_assert_eq(xm__config_set(&cfg, "xt-pool", "128G", "flag"), XM_OK);
    cr_assert_eq(xm__config_set(&cfg, "xt-listen", "10.0.0.2:2", "flag"), XM_OK);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "128G", "flag over env");
    cr_expect_str_eq(source_of("xt-pool"), "flag");
    cr_expect_str_eq(xm__config_get(&cfg, "xt-listen"), "10.0.0.2:2", "flag over file");
    cr_expect_str_eq(xm__config_get(&cfg, "xt-level"), "error", "env over file");
    cr_expect_null(xm__config_get(&cfg, "xt-secret"));
}

Test(config, set_copies_the_value)
{
    xm__config_init(&cfg);
    char value[] = "32G";
    cr_assert_eq(xm__config_set(&cfg, "xt-pool", value, "flag"), XM_OK);
    value[0] = '9';
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "32G");
}

Test(config, set_unknown_name_refused)
{
    xm__config_init(&cfg);
    cr_expect_eq(xm__config_set(&cfg, "xt-poool", "8G", "flag"), XM_ERR_INVALID);
    cr_expect_eq(xm__config_set(&cfg, "", "8G", "flag"), XM_ERR_INVALID);
    cr_expect_eq(xm__config_set(&cfg, "XT-POOL", "8G", "flag"), XM_ERR_INVALID,
                 "names are case-sensitive");
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "1G", "nothing changed");
}

Test(config, file_with_unknown_name_refused)
{
    xm__config_init(&cfg);
    const char *p = write_file("xt-pool = 64G\nxt-typo = 1\n");
    cr_expect_eq(xm__config_load_file(&cfg, p), XM_ERR_INVALID);
}

Test(config, file_with_line_without_equals_refused)
{
    xm__config_init(&cfg);
    const char *p = write_file("xt-pool 64G\n");
    cr_expect_eq(xm__config_load_file(&cfg, p), XM_ERR_INVALID);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "1G");
}

Test(config, file_with_empty_name_refused)
{
    xm__config_init(&cfg);
    const char *p = write_file("= 64G\n");
    cr_expect_eq(xm__config_load_file(&cfg, p), XM_ERR_INVALID);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "1G");
}

Test(config, missing_file_is_an_io_error)
{
    xm__config_init(&cfg);
    cr_expect_eq(xm__config_load_file(&cfg, "/tmp/xmem-test-config-does-not-exist/x.conf"),
                 XM_ERR_IO);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "1G");
}

Test(config, print_lists_every_entry)
{
    xm__config_init(&cfg);
    cr_assert_eq(xm__config_set(&cfg, "xt-level", "debug", "flag"), XM_OK);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    cr_assert_not_null(f);
    xm__config_print(&cfg, f);
    fclose(f);
    cr_expect_not_null(strstr(out, "xt-pool"));
    cr_expect_not_null(strstr(out, "pool size"), "descriptions printed");
    cr_expect_not_null(strstr(out, "127.0.0.1:7000"), "values printed");
    cr_expect_not_null(strstr(out, "(unset)"), "unset entries shown as such");
    /* one line per entry, in table order, each naming its source */
    int lines = 0;
    for (char *s = out; *s; s++) lines += *s == '\n';
    cr_expect_eq(lines, (int)cfg.count);
    char *level = strstr(out, "xt-level");
    cr_assert_not_null(level);
    char *eol = strchr(level, '\n');
    *eol = '\0';
    cr_expect_not_null(strstr(level, "debug"));
    cr_expect_not_null(strstr(level, "flag"));
    cr_expect(strstr(out, "xt-pool") < strstr(out, "xt-listen"));
    free(out);
}

Test(config, cleanup_releases_values)
{
    xm__config_init(&cfg);
    cr_assert_eq(xm__config_set(&cfg, "xt-secret", "/s", "flag"), XM_OK);
    xm__config_cleanup(&cfg);
    for (size_t i = 0; i < cfg.count; i++) {
        cr_expect_null(cfg.entries[i].value, "%s still set after cleanup", cfg.entries[i].name);
    }
    /* a second init after cleanup starts from defaults again */
    xm__config_init(&cfg);
    cr_expect_null(xm__config_get(&cfg, "xt-secret"));
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "1G");
}

Test(config, flag_outranks_a_file_loaded_after_it, .init = setup, .fini = teardown)
{
    xm__config_init(&cfg);
    cr_assert_eq(xm__config_set(&cfg, "xt-pool", "8G", "flag"), XM_OK);
    cr_assert_eq(xm__config_load_file(&cfg, write_file("xt-pool = 2G\n")), XM_OK);
    cr_assert_str_eq(xm__config_get(&cfg, "xt-pool"), "8G");
    cr_assert_str_eq(source_of("xt-pool"), "flag");
}

Test(config, command_line_file_then_flags, .init = setup, .fini = teardown)
{
    xm__config_init(&cfg);
    const char *file = write_file("xt-pool = 2G\nxt-level = debug\n");
    char *argv[] = {"prog", "--xt-pool", "8G", "--config", (char *)file, NULL};
    cr_assert_eq(xm__config_parse_args(&cfg, 5, argv, "prog", "usage: prog\n"), -1);
    cr_assert_str_eq(xm__config_get(&cfg, "xt-pool"), "8G", "a flag before --config lost to the file");
    cr_assert_str_eq(xm__config_get(&cfg, "xt-level"), "debug");
    char *bad[] = {"prog", "--no-such", "1", NULL};
    cr_assert_eq(xm__config_parse_args(&cfg, 3, bad, "prog", "usage: prog\n"), 2);
    char *dangling[] = {"prog", "--xt-pool", NULL};
    cr_assert_eq(xm__config_parse_args(&cfg, 2, dangling, "prog", "usage: prog\n"), 2);
    char *help[] = {"prog", "--xt-pool", "1G", "--help", NULL};
    cr_assert_eq(xm__config_parse_args(&cfg, 4, help, "prog", "usage: prog\n"), 0,
                 "--help must end the program successfully");
}

Test(config, numbers_are_checked, .init = setup, .fini = teardown)
{
    xm__config_init(&cfg);
    uint32_t v = 7;
    cr_assert_eq(xm__config_set(&cfg, "xt-pool", "4096", "flag"), XM_OK);
    cr_assert_eq(xm__config_get_u32(&cfg, "prog", "xt-pool", &v), 0);
    cr_assert_eq(v, 4096);
    static const char *const bad[] = {"", "-1", "12x", "4294967296"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 7;
        cr_assert_eq(xm__config_set(&cfg, "xt-pool", bad[i], "flag"), XM_OK);
        cr_assert_eq(xm__config_get_u32(&cfg, "prog", "xt-pool", &v), -1, "accepted '%s'", bad[i]);
        cr_assert_eq(v, 7, "output written for '%s'", bad[i]);
    }
}

/* ---- getopt_long command lines, the default file, messages naming the source ---------- */

/* Run parse_args with stdout and stderr captured into *out_p / *err_p (malloc'd). */
static int parse_captured(int argc, char **argv, char **out_p, char **err_p)
{
    fflush(stdout);
    fflush(stderr);
    FILE *o = tmpfile(), *e = tmpfile();
    cr_assert(o != NULL && e != NULL);
    int so = dup(1), se = dup(2);
    dup2(fileno(o), 1);
    dup2(fileno(e), 2);
    int rc = xm__config_parse_args(&cfg, argc, argv, "prog", "usage: prog [OPTIONS]\n");
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    FILE *fs[2] = {o, e};
    char **outs[2] = {out_p, err_p};
    for (int i = 0; i < 2; i++) {
        long n = ftell(fs[i]);
        char *buf = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
        rewind(fs[i]);
        if (n > 0) cr_assert_eq(fread(buf, 1, (size_t)n, fs[i]), (size_t)n);
        fclose(fs[i]);
        *outs[i] = buf;
    }
    return rc;
}

Test(config, equals_form_and_separate_value_both_work, .init = setup, .fini = teardown)
{
    xm__config_init(&cfg);
    char *argv[] = {"prog", "--xt-pool=16G", "--xt-listen", "[::1]:9", "--xt-secret=/a=b", NULL};
    char *out, *err;
    cr_assert_eq(parse_captured(5, argv, &out, &err), -1, "stderr: %s", err);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "16G");
    cr_expect_str_eq(xm__config_get(&cfg, "xt-listen"), "[::1]:9");
    cr_expect_str_eq(xm__config_get(&cfg, "xt-secret"), "/a=b", "only the first '=' splits");
    cr_expect_str_eq(source_of("xt-pool"), "flag");
    free(out);
    free(err);
}

Test(config, misspelt_option_is_unknown_with_a_hint, .init = setup, .fini = teardown)
{
    xm__config_init(&cfg);
    char *argv[] = {"prog", "--xt-pooll", "1G", NULL};
    char *out, *err;
    cr_assert_eq(parse_captured(3, argv, &out, &err), 2);
    cr_expect_not_null(strstr(err, "unknown option '--xt-pooll'"), "stderr: %s", err);
    cr_expect_not_null(strstr(err, "did you mean '--xt-pool'"), "stderr: %s", err);
    cr_expect_null(strstr(err, "missing"), "reported as something else: %s", err);
    free(out);
    free(err);
    /* the =value form of an unknown option names the option, not option=value */
    char *argv2[] = {"prog", "--zzzzzzzz=3", NULL};
    cr_assert_eq(parse_captured(2, argv2, &out, &err), 2);
    cr_expect_not_null(strstr(err, "unknown option '--zzzzzzzz'"), "stderr: %s", err);
    cr_expect_null(strstr(err, "did you mean"), "no hint for a name nothing is close to: %s", err);
    free(out);
    free(err);
}

Test(config, missing_value_and_stray_argument_are_named, .init = setup, .fini = teardown)
{
    xm__config_init(&cfg);
    char *argv[] = {"prog", "--xt-pool", NULL};
    char *out, *err;
    cr_assert_eq(parse_captured(2, argv, &out, &err), 2);
    cr_expect_not_null(strstr(err, "'--xt-pool' needs a value"), "stderr: %s", err);
    free(out);
    free(err);
    char *argv2[] = {"prog", "stray", NULL};
    cr_assert_eq(parse_captured(2, argv2, &out, &err), 2);
    cr_expect_not_null(strstr(err, "unexpected argument 'stray'"), "stderr: %s", err);
    free(out);
    free(err);
}

Test(config, version_and_help, .init = setup, .fini = teardown)
{
    xm__config_init(&cfg);
    char *argv[] = {"prog", "--version", NULL};
    char *out, *err;
    cr_assert_eq(parse_captured(2, argv, &out, &err), 0);
    cr_expect_str_eq(out, "prog (xmem) " XM_VERSION_STRING "\n");
    cr_expect_str_eq(xm_version(NULL), XM_VERSION_STRING, "the library's version is the one printed");
    free(out);
    free(err);
    char *argv2[] = {"prog", "--help", NULL};
    cr_assert_eq(parse_captured(2, argv2, &out, &err), 0);
    cr_expect(strncmp(out, "usage: prog", 11) == 0, "synopsis first: %s", out);
    cr_expect_not_null(strstr(out, "--xt-listen"));
    cr_expect_not_null(strstr(out, "address to listen on"));
    cr_expect_not_null(strstr(out, "--version"));
    free(out);
    free(err);
}

Test(config, default_file_read_when_present_and_skipped_when_absent, .init = setup, .fini = teardown)
{
    xm__config_init(&cfg);
    cfg.default_file = write_file("xt-pool = 3G\n");
    char *argv[] = {"prog", "--xt-level", "debug", NULL};
    char *out, *err;
    cr_assert_eq(parse_captured(3, argv, &out, &err), -1, "stderr: %s", err);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "3G");
    cr_expect_str_eq(source_of("xt-pool"), "file");
    free(out);
    free(err);
    xm__config_cleanup(&cfg);
    /* --config replaces the default file */
    xm__config_init(&cfg);
    char named[64];
    snprintf(named, sizeof(named), "%s", path);
    cfg.default_file = "/tmp/xmem-test-config-no-default-here.conf";
    char *argv2[] = {"prog", "--config", named, NULL};
    cr_assert_eq(parse_captured(3, argv2, &out, &err), -1, "stderr: %s", err);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "3G");
    free(out);
    free(err);
    xm__config_cleanup(&cfg);
    /* an absent default file is fine */
    xm__config_init(&cfg);
    cfg.default_file = "/tmp/xmem-test-config-no-default-here.conf";
    char *argv3[] = {"prog", NULL};
    cr_assert_eq(parse_captured(1, argv3, &out, &err), -1, "stderr: %s", err);
    cr_expect_str_eq(xm__config_get(&cfg, "xt-pool"), "1G");
    free(out);
    free(err);
    /* a named file that is missing is an error naming it */
    char *argv4[] = {"prog", "--config=/tmp/xmem-test-config-missing.conf", NULL};
    cr_assert_eq(parse_captured(2, argv4, &out, &err), 2);
    cr_expect_not_null(strstr(err, "/tmp/xmem-test-config-missing.conf"), "stderr: %s", err);
    free(out);
    free(err);
    cfg.default_file = NULL;
}

Test(config, bad_numbers_name_the_entry_and_its_source, .init = setup, .fini = teardown)
{
    setenv("XMEM_XT_LEVEL", "banana", 1);
    xm__config_init(&cfg);
    const char *file = write_file("xt-listen = 12x\n");
    char *argv[] = {"prog", "--config", (char *)file, "--xt-pool=1.5Q", NULL};
    char *out, *err;
    cr_assert_eq(parse_captured(4, argv, &out, &err), -1, "stderr: %s", err);
    free(out);
    free(err);
    uint32_t v = 7;
    uint64_t size = 9;
    char *msg = NULL;
    size_t len = 0;
    fflush(stderr);
    FILE *e = open_memstream(&msg, &len);
    int se = dup(2);
    FILE *t = tmpfile();
    dup2(fileno(t), 2);
    cr_expect_eq(xm__config_get_u32(&cfg, "prog", "xt-level", &v), -1);
    cr_expect_eq(xm__config_get_u32(&cfg, "prog", "xt-listen", &v), -1);
    cr_expect_eq(xm__config_get_size(&cfg, "prog", "xt-pool", &size), -1);
    fflush(stderr);
    dup2(se, 2);
    close(se);
    fclose(e);
    free(msg);
    long n = ftell(t);
    char *text = calloc(1, (size_t)n + 1);
    rewind(t);
    cr_assert_eq(fread(text, 1, (size_t)n, t), (size_t)n);
    fclose(t);
    cr_expect_eq(v, 7);
    cr_expect_eq(size, 9);
    cr_expect_not_null(strstr(text, "xt-level = 'banana' (from XMEM_XT_LEVEL)"), "%s", text);
    cr_expect_not_null(strstr(text, "xt-listen = '12x' (from /tmp/xmem-test-config-"), "%s", text);
    cr_expect_not_null(strstr(text, "xt-pool = '1.5Q' (from --xt-pool)"), "%s", text);
    free(text);
    /* a good size passes */
    cr_assert_eq(xm__config_set(&cfg, "xt-pool", "1.5G", "flag"), XM_OK);
    cr_expect_eq(xm__config_get_size(&cfg, "prog", "xt-pool", &size), 0);
    cr_expect_eq(size, 1536ull << 20);
}
