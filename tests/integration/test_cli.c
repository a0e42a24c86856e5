/* The xmem command line against a real xmemd: what a user types, sees and gets back. */
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "harness.h"

static xt_appliance_t app;

/* The last CLI run: exit code, stdout, stderr. */
static struct {
    int rc;
    char *out;
    size_t out_len;
    char *err;
} R;

static void res_reset(void)
{
    free(R.out);
    free(R.err);
    R.out = R.err = NULL;
    R.out_len = 0;
    R.rc = -1;
}

static void teardown(void)
{
    res_reset();
    cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
    xt_cleanup(&app);
}

/* A scratch dir for tests that need no appliance; xt_cleanup removes it. */
static void scratch(void)
{
    memset(&app, 0, sizeof(app));
    snprintf(app.dir, sizeof(app.dir), "/tmp/xmem-test-XXXXXX");
    cr_assert(mkdtemp(app.dir) != NULL);
}

/* xmem ARGS... against app with the harness's environment (tenant from XMEM_TENANT or alice). */
#define CLI(in, len, ...)                                                                        \
    (res_reset(), R.rc = xt_cli(&app, in, len, &R.out, &R.out_len, &R.err, __VA_ARGS__, NULL))

static char *slurp_file(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "r");
    cr_assert(f != NULL, "cannot open %s", path);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) buf = realloc(buf, (cap *= 2) + 1);
    }
    fclose(f);
    buf[len] = '\0';
    if (len_p != NULL) *len_p = len;
    return buf;
}

/* In a child: exec argv with exactly env, keeping ASan's settings, PATH and HOME. */
static void child_exec(const char *const *env, const char *const *argv)
{
    /* keep ASan's settings, drop every XMEM_* the test process may carry */
    const char *keep[] = {"ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS", "PATH", "HOME", NULL};
    char *vals[6] = {0};
    for (int k = 0; keep[k] != NULL; k++) {
        const char *v = getenv(keep[k]);
        vals[k] = v != NULL ? strdup(v) : NULL;
    }
    clearenv();
    for (int k = 0; keep[k] != NULL; k++) {
        if (vals[k] != NULL) setenv(keep[k], vals[k], 1);
    }
    for (int k = 0; env != NULL && env[k] != NULL; k++) putenv((char *)env[k]);
    execv(argv[0], (char *const *)argv);
    _exit(127);
}

/* xmem ARGS with exactly the environment given ("NAME=VALUE", NULL-terminated), no stdin. */
static int cli_env(const char *const *env, const char *const *args)
{
    res_reset();
    const char *argv[32];
    int n = 0;
    argv[n++] = XMEM_BIN_DIR "/xmem";
    for (int i = 0; args[i] != NULL && n < 31; i++) argv[n++] = args[i];
    argv[n] = NULL;
    char outpath[PATH_MAX], errpath[PATH_MAX];
    snprintf(outpath, sizeof(outpath), "%s/env.out", app.dir);
    snprintf(errpath, sizeof(errpath), "%s/env.err", app.dir);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int i = open("/dev/null", O_RDONLY), o = open(outpath, O_WRONLY | O_CREAT | O_TRUNC, 0600),
            e = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(i, 0);
        dup2(o, 1);
        dup2(e, 2);
        child_exec(env, argv);
    }
    int st = 0;
    uint64_t deadline = xt_now_ms() + 60000;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (xt_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            cr_assert_fail("xmem CLI hung");
        }
        usleep(10000);
    }
    R.out = slurp_file(outpath, &R.out_len);
    R.err = slurp_file(errpath, NULL);
    R.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return R.rc;
}

/* xmem ARGS with stderr on a terminal (a pty) and stdout to a file: R.out is stdout,
 * R.err what the terminal showed. */
static int cli_tty(const char *const *env, const char *const *args)
{
    res_reset();
    const char *argv[32];
    int n = 0;
    argv[n++] = XMEM_BIN_DIR "/xmem";
    for (int i = 0; args[i] != NULL && n < 31; i++) argv[n++] = args[i];
    argv[n] = NULL;
    char outpath[PATH_MAX];
    snprintf(outpath, sizeof(outpath), "%s/tty.out", app.dir);
    int master;
    pid_t pid = forkpty(&master, NULL, NULL, NULL);
    cr_assert(pid >= 0, "forkpty: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int i = open("/dev/null", O_RDONLY), o = open(outpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(i, 0);
        dup2(o, 1);
        child_exec(env, argv);
    }
    size_t cap = 1 << 16, len = 0;
    R.err = malloc(cap + 1);
    uint64_t deadline = xt_now_ms() + 60000;
    for (;;) {
        struct pollfd p = {.fd = master, .events = POLLIN};
        if (xt_now_ms() > deadline) {
            kill(pid, SIGKILL);
            cr_assert_fail("xmem CLI hung");
        }
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t got = read(master, R.err + len, cap - len);
        if (got <= 0) break; /* EIO: the child closed the terminal */
        len += (size_t)got;
        if (len == cap) R.err = realloc(R.err, (cap *= 2) + 1);
    }
    R.err[len] = '\0';
    close(master);
    int st = 0;
    waitpid(pid, &st, 0);
    R.out = slurp_file(outpath, &R.out_len);
    R.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return R.rc;
}

#define ENV(...) ((const char *const[]){__VA_ARGS__, NULL})
#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* stderr holds exactly one non-empty line */
static void expect_one_line(const char *what)
{
    size_t n = strlen(R.err);
    cr_assert(n > 1 && R.err[n - 1] == '\n' && memchr(R.err, '\n', n - 1) == NULL,
              "%s: expected a one-line error on stderr, got '%s'", what, R.err);
}

#define EXPECT_OK(what)                                                                          \
    cr_assert_eq(R.rc, 0, "%s: exit %d, stderr '%s'", what, R.rc, R.err)

/* fails with a non-zero exit and one line on stderr that contains `needle` */
#define EXPECT_FAIL(what, needle)                                                                \
    do {                                                                                         \
        cr_assert_neq(R.rc, 0, "%s succeeded (stdout '%.200s')", what, R.out);                   \
        cr_assert_neq(R.rc, 2, "%s: a usage error, expected a failure (stderr '%s')", what,    \
                      R.err);                                                                    \
        expect_one_line(what);                                                                   \
        cr_assert(strstr(R.err, needle) != NULL, "%s: stderr '%s' does not mention '%s'",       \
                  what, R.err, needle);                                                          \
    } while (0)

/* The unsigned number after "key": in a JSON object; asserts it is there. */
static uint64_t json_u64(const char *json, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *at = strstr(json, pat);
    cr_assert(at != NULL, "no %s in '%s'", pat, json);
    at += strlen(pat);
    cr_assert(*at >= '0' && *at <= '9', "%s is not a number in '%s'", pat, json);
    return strtoull(at, NULL, 10);
}

static uint64_t pool_used(void)
{
    CLI(NULL, 0, "stat", "--json");
    EXPECT_OK("stat --json");
    cr_assert(R.out[0] == '{', "stat --json is not an object: '%s'", R.out);
    return json_u64(R.out, "pool_used");
}

static void expect_contains(const char *hay, const char *needle, const char *what)
{
    cr_assert(strstr(hay, needle) != NULL, "%s: '%s' not in '%s'", what, needle, hay);
}

Test(cli, secret_new_is_private_and_never_overwritten, .fini = teardown, .timeout = 60)
{
    scratch();
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/cluster.secret", app.dir);
    cli_env(NULL, ARGS("secret", "new", path));
    EXPECT_OK("secret new");
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "secret new did not create %s", path);
    cr_assert(S_ISREG(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0600, "secret file mode is %o, not 0600", st.st_mode & 07777);
    char *first = slurp_file(path, NULL);
    size_t chars = 0;
    for (const char *p = first; *p; p++) chars += *p != '\n' && *p != ' ';
    cr_assert_geq(chars, 32, "secret has only %zu characters: '%s'", chars, first);

    /* a second secret differs (it is random, not derived from the path) */
    char path2[PATH_MAX];
    snprintf(path2, sizeof(path2), "%s/other.secret", app.dir);
    cli_env(NULL, ARGS("secret", "new", path2));
    EXPECT_OK("secret new (second)");
    char *second = slurp_file(path2, NULL);
    cr_assert(strcmp(first, second) != 0, "two new secrets are equal");

    /* an existing file is left alone */
    cli_env(NULL, ARGS("secret", "new", path));
    EXPECT_FAIL("secret new over an existing file", path);
    char *after = slurp_file(path, NULL);
    cr_assert_str_eq(after, first, "secret new overwrote an existing secret");
    cli_env(NULL, ARGS("secret", "new"));
    cr_assert_eq(R.rc, 2, "secret new without PATH: exit %d", R.rc);
    free(first);
    free(second);
    free(after);
}

Test(cli, region_create_ls_stat_rm, .fini = teardown, .timeout = 120)
{
    xt_start(&app, &(xt_opts_t){.pool = "2G"});
    CLI(NULL, 0, "stat");
    EXPECT_OK("stat");
    expect_contains(R.out, "2.0 GiB", "stat shows the pool size");
    expect_contains(R.out, "used", "stat shows used bytes");
    uint64_t used0 = pool_used();
    cr_assert_eq(json_u64(R.out, "pool_size"), 2ull << 30);

    CLI(NULL, 0, "region", "create", "--size", "10M", "--name", "x");
    EXPECT_OK("region create");
    char *end;
    unsigned long long id = strtoull(R.out, &end, 10);
    cr_assert(id > 0 && end != R.out && strcmp(end, "\n") == 0,
              "region create printed '%s', not an id", R.out);
    char ids[32];
    snprintf(ids, sizeof(ids), "%llu", id);
    uint64_t used1 = pool_used();
    cr_assert_geq(used1, used0 + (10u << 20), "used %llu after a 10M region (was %llu)",
                  (unsigned long long)used1, (unsigned long long)used0);

    CLI(NULL, 0, "region", "create", "--size", "10M", "--name", "x");
    EXPECT_FAIL("region create with a taken name", "exists");
    cr_assert_eq(R.out_len, 0, "a failed create printed '%s'", R.out);
    CLI(NULL, 0, "region", "create", "--size", "12Q", "--name", "bad");
    cr_assert_eq(R.rc, 2, "--size 12Q: exit %d, stderr '%s'", R.rc, R.err);
    expect_contains(R.err, "12Q", "a bad size is named");
    CLI(NULL, 0, "region", "create", "--name", "nosize");
    cr_assert_eq(R.rc, 2, "create without --size: exit %d", R.rc);

    /* --opt=value; a name with a quote and a backslash comes back as valid JSON */
    CLI(NULL, 0, "region", "create", "--size=64K", "--name=q\"uote\\");
    EXPECT_OK("region create --size=64K --name=q\"uote\\");
    CLI(NULL, 0, "region", "ls", "--json");
    EXPECT_OK("region ls --json with an odd name");
    json_t *ls = json_loads(R.out, 0, NULL);
    cr_assert(json_is_array(ls), "region ls --json is not a JSON array: '%s'", R.out);
    bool seen = false;
    for (size_t i = 0; i < json_array_size(ls); i++) {
        const char *nm = json_string_value(json_object_get(json_array_get(ls, i), "name"));
        seen |= nm != NULL && strcmp(nm, "alice/q\"uote\\") == 0;
    }
    json_decref(ls);
    cr_assert(seen, "region ls --json lost the name q\"uote\\: '%s'", R.out);
    CLI(NULL, 0, "region", "stat", "q\"uote\\", "--json");
    EXPECT_OK("region stat --json of the odd name");
    json_t *st = json_loads(R.out, 0, NULL);
    cr_assert(json_is_object(st), "region stat --json is not a JSON object: '%s'", R.out);
    cr_assert_str_eq(json_string_value(json_object_get(st, "name")), "alice/q\"uote\\");
    cr_assert_eq(json_integer_value(json_object_get(st, "size")), 65536);
    json_decref(st);
    CLI(NULL, 0, "region", "rm", "q\"uote\\");
    EXPECT_OK("region rm of the odd name");

    /* K, M, G suffixes are powers of 1024 */
    CLI(NULL, 0, "region", "create", "--size", "64K", "--name", "k");
    EXPECT_OK("region create 64K");
    CLI(NULL, 0, "region", "create", "--size", "1G", "--name", "g");
    EXPECT_OK("region create 1G");

    CLI(NULL, 0, "region", "ls");
    EXPECT_OK("region ls");
    expect_contains(R.out, " alice/x ", "region ls shows the name, scoped to its tenant");
    expect_contains(R.out, "10.0 MiB", "region ls shows the size");
    expect_contains(R.out, "1.0 GiB", "region ls shows the size");
    expect_contains(R.out, ids, "region ls shows the id");

    CLI(NULL, 0, "region", "ls", "--json");
    EXPECT_OK("region ls --json");
    cr_assert(R.out[0] == '[' && R.out[R.out_len - 2] == ']', "not a JSON array: '%s'", R.out);
    expect_contains(R.out, "\"name\":\"alice/x\"", "ls --json");
    expect_contains(R.out, "\"size\":10485760", "ls --json");
    expect_contains(R.out, "\"size\":65536", "ls --json: 64K");
    expect_contains(R.out, "\"size\":1073741824", "ls --json: 1G");
    char idjson[48];
    snprintf(idjson, sizeof(idjson), "\"id\":%llu,", id);
    expect_contains(R.out, idjson, "ls --json");

    CLI(NULL, 0, "region", "stat", "x", "--json");
    EXPECT_OK("region stat x --json");
    cr_assert(R.out[0] == '{' && R.out[R.out_len - 2] == '}', "not a JSON object: '%s'", R.out);
    expect_contains(R.out, "\"name\":\"alice/x\"", "stat --json");
    expect_contains(R.out, "\"owner\":\"alice\"", "stat --json");
    cr_assert_eq(json_u64(R.out, "id"), id);
    cr_assert_eq(json_u64(R.out, "size"), 10u << 20);

    CLI(NULL, 0, "region", "stat", ids);
    EXPECT_OK("region stat by id");
    expect_contains(R.out, " alice/x ", "stat by id shows the name");
    expect_contains(R.out, "10.0 MiB", "stat by id shows the size");

    CLI(NULL, 0, "region", "rm", "x");
    EXPECT_OK("region rm x");
    CLI(NULL, 0, "region", "stat", "x");
    EXPECT_FAIL("region stat after rm", "no such region");
    CLI(NULL, 0, "region", "stat", ids);
    EXPECT_FAIL("region stat by id after rm", "no such region");
    CLI(NULL, 0, "region", "rm", "x");
    EXPECT_FAIL("region rm twice", "no such region");
    CLI(NULL, 0, "region", "ls");
    EXPECT_OK("region ls after rm");
    cr_assert(strstr(R.out, " alice/x ") == NULL, "region ls still shows x: '%s'", R.out);

    CLI(NULL, 0, "region", "rm", "k");
    EXPECT_OK("region rm k");
    CLI(NULL, 0, "region", "rm", "g");
    EXPECT_OK("region rm g");
    uint64_t used2 = pool_used();
    cr_assert_eq(used2, used0, "used is %llu after removing every region, was %llu",
                 (unsigned long long)used2, (unsigned long long)used0);
    cr_assert_eq(json_u64(R.out, "regions"), 0);
    /* the name is free again */
    CLI(NULL, 0, "region", "create", "--size", "1M", "--name", "x");
    EXPECT_OK("region create x again after rm");
}

XT_TEST_PROVIDERS(cli, put_get_round_trip, .fini = teardown, .timeout = 120)
{
    xt_start(&app, &(xt_opts_t){.provider = provider, .pool = "64M"});
    CLI(NULL, 0, "region", "create", "--size", "8M", "--name", "d");
    EXPECT_OK("region create");
    char id[32];
    snprintf(id, sizeof(id), "%.*s", (int)strcspn(R.out, "\n"), R.out);

    /* not a whole number of copy chunks, so the tail is a short write */
    const size_t n = (3u << 20) + 17;
    uint8_t *data = malloc(n);
    xt_fill(data, n, 1);
    CLI(data, n, "put", "d");
    EXPECT_OK("put 3M+17");
    /* progress only on a terminal: with stderr a file, nothing */
    cr_assert_str_eq(R.err, "", "put wrote on stderr that is not a terminal: '%s'", R.err);
    char len[32];
    snprintf(len, sizeof(len), "%zu", n);
    CLI(NULL, 0, "get", "d", "--length", len);
    EXPECT_OK("get --length");
    cr_assert_eq(R.out_len, n, "get returned %zu bytes, expected %zu", R.out_len, n);
    cr_assert_str_eq(R.err, "", "get wrote on stderr that is not a terminal: '%s'", R.err);
    /* and with stderr a pipe */
    char cred[PATH_MAX], cmd[3 * PATH_MAX];
    xt_cred(app.secret, "alice", cred, sizeof(cred));
    snprintf(cmd, sizeof(cmd), "XMEM_APPLIANCE=%s XMEM_SECRET_FILE=%s %s/xmem get d 2>&1 >/dev/null; "
             "echo rc=$?", app.addr, cred, XMEM_BIN_DIR);
    FILE *pipe_f = popen(cmd, "r");
    cr_assert(pipe_f != NULL);
    char piped[512] = "";
    size_t got = fread(piped, 1, sizeof(piped) - 1, pipe_f);
    piped[got] = '\0';
    pclose(pipe_f);
    cr_assert_str_eq(piped, "rc=0\n", "get with stderr a pipe wrote '%s'", piped);
    /* on a terminal the same get shows its progress there, not on stdout */
    char env_app[96], env_cred[PATH_MAX + 32];
    snprintf(env_app, sizeof(env_app), "XMEM_APPLIANCE=%s", app.addr);
    snprintf(env_cred, sizeof(env_cred), "XMEM_SECRET_FILE=%s", cred);
    cli_tty(ENV(env_app, env_cred), ARGS("get", "d", "--length", len));
    EXPECT_OK("get with stderr a terminal");
    expect_contains(R.err, "xmem get: ", "get shows progress on a terminal");
    cr_assert_eq(R.out_len, n, "get on a terminal returned %zu bytes", R.out_len);
    cr_assert(memcmp(R.out, data, n) == 0, "progress got into the data");
    cr_assert(memcmp(R.out, data, n) == 0, "get returned different bytes than put");

    /* --offset on both sides; the bytes between the two puts stay zero */
    uint8_t data2[1000];
    xt_fill(data2, sizeof(data2), 2);
    CLI(data2, sizeof(data2), "put", "d", "--offset", "5M");
    EXPECT_OK("put --offset 5M");
    char off[32];
    snprintf(off, sizeof(off), "%u", (5u << 20) - 10);
    CLI(NULL, 0, "get", id, "--offset", off, "--length", "1010");
    EXPECT_OK("get by id --offset");
    cr_assert_eq(R.out_len, 1010);
    static const uint8_t zeros[10];
    cr_assert(memcmp(R.out, zeros, 10) == 0, "bytes before the --offset put are not zero");
    cr_assert(memcmp(R.out + 10, data2, sizeof(data2)) == 0, "put/get --offset differ");
    /* the first put is untouched: its last 17 bytes */
    snprintf(off, sizeof(off), "%u", 3u << 20);
    CLI(NULL, 0, "get", "d", "--offset", off, "--length", "17");
    EXPECT_OK("get the tail of the first put");
    cr_assert_eq(R.out_len, 17);
    cr_assert(memcmp(R.out, data + (3u << 20), 17) == 0);

    /* past the end */
    CLI(NULL, 0, "get", "d", "--offset", "8M");
    EXPECT_FAIL("get at the end", "outside");
    cr_assert_eq(R.out_len, 0, "a failed get wrote %zu bytes", R.out_len);
    snprintf(off, sizeof(off), "%u", (8u << 20) - 4);
    CLI(NULL, 0, "get", "d", "--offset", off, "--length", "8");
    EXPECT_FAIL("get across the end", "outside");
    cr_assert_eq(R.out_len, 0, "a failed get wrote %zu bytes", R.out_len);

    /* more than the region holds */
    CLI(NULL, 0, "region", "create", "--size", "4K", "--name", "small");
    EXPECT_OK("region create 4K");
    CLI(data, 4097, "put", "small");
    EXPECT_FAIL("put of 4097 bytes into 4K", "do not fit");
    CLI(data, 10, "put", "small", "--offset", "4090");
    EXPECT_FAIL("put across the end", "do not fit");
    CLI(data, 10, "put", "nope");
    EXPECT_FAIL("put to a missing region", "no such region");
    free(data);
}

XT_TEST_PROVIDERS(cli, grants_decide_who_reads_and_writes, .fini = teardown, .timeout = 120)
{
    xt_start(&app, &(xt_opts_t){.provider = provider});
    unsetenv("XMEM_TENANT");
    CLI(NULL, 0, "region", "create", "--size", "1M", "--name", "x");
    EXPECT_OK("region create");
    CLI("shared bytes", 12, "put", "x");
    EXPECT_OK("put as owner");
    CLI(NULL, 0, "region", "grant", "x", "--tenant", "bob", "--read-only");
    EXPECT_OK("region grant --read-only");

    setenv("XMEM_TENANT", "bob", 1);
    CLI(NULL, 0, "get", "alice/x", "--length", "12");
    EXPECT_OK("get as a read-only grantee");
    cr_assert(R.out_len == 12 && memcmp(R.out, "shared bytes", 12) == 0, "bob read '%.*s'",
              (int)R.out_len, R.out);
    CLI("overwrite", 9, "put", "alice/x");
    EXPECT_FAIL("put as a read-only grantee", "only read access");
    CLI(NULL, 0, "region", "rm", "alice/x");
    EXPECT_FAIL("rm as a grantee", "only the owner");
    CLI(NULL, 0, "region", "ls", "--json");
    EXPECT_OK("region ls as bob");
    expect_contains(R.out, "\"name\":\"alice/x\"", "bob's region ls");
    expect_contains(R.out, "\"owner\":\"alice\"", "bob's region ls");

    setenv("XMEM_TENANT", "carol", 1);
    CLI(NULL, 0, "get", "alice/x", "--length", "12");
    cr_assert_neq(R.rc, 0, "carol read a region never granted to her");
    expect_one_line("get as carol");
    cr_assert_eq(R.out_len, 0, "carol got %zu bytes", R.out_len);
    CLI(NULL, 0, "region", "ls", "--json");
    EXPECT_OK("region ls as carol");
    cr_assert_str_eq(R.out, "[]\n", "carol's region ls shows others' regions");

    /* the global --tenant (before the command) still says who we are */
    unsetenv("XMEM_TENANT");
    CLI(NULL, 0, "--tenant", "carol", "get", "alice/x", "--length", "12");
    cr_assert_neq(R.rc, 0, "--tenant carol read a region never granted to carol");
    cr_assert_eq(R.out_len, 0);

    /* what bob tried did not change the bytes */
    CLI(NULL, 0, "get", "x", "--length", "12");
    EXPECT_OK("get as owner");
    cr_assert(R.out_len == 12 && memcmp(R.out, "shared bytes", 12) == 0);
    /* a read-write grant lets the grantee write */
    CLI(NULL, 0, "region", "grant", "x", "--tenant", "dave");
    EXPECT_OK("region grant read-write");
    setenv("XMEM_TENANT", "dave", 1);
    CLI("dave", 4, "put", "alice/x");
    EXPECT_OK("put as a read-write grantee");
    unsetenv("XMEM_TENANT");
    CLI(NULL, 0, "get", "x", "--length", "12");
    EXPECT_OK("get as owner");
    cr_assert(R.out_len == 12 && memcmp(R.out, "dave", 4) == 0, "dave's put is not visible");

    /* the owner sees the grants, in text and JSON; a grantee does not */
    CLI(NULL, 0, "region", "stat", "x");
    EXPECT_OK("region stat with grants");
    expect_contains(R.out, "bob (read)", "region stat lists bob's read-only grant");
    expect_contains(R.out, "dave (read-write)", "region stat lists dave's grant");
    CLI(NULL, 0, "region", "stat", "x", "--json");
    EXPECT_OK("region stat --json with grants");
    json_t *st = json_loads(R.out, 0, NULL);
    json_t *gl = json_object_get(st, "grantees");
    cr_assert(json_is_array(gl) && json_array_size(gl) == 2, "grantees in '%s'", R.out);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(gl, 0), "tenant")), "bob");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(gl, 0), "access")), "read");
    json_decref(st);

    /* a grantee neither sees the grants nor revokes one */
    setenv("XMEM_TENANT", "bob", 1);
    CLI(NULL, 0, "region", "revoke", "alice/x", "--tenant", "dave");
    EXPECT_FAIL("revoke by a grantee", "only the owner");
    CLI(NULL, 0, "region", "stat", "alice/x");
    EXPECT_OK("region stat as a grantee");
    cr_assert(strstr(R.out, "dave") == NULL, "a grantee sees the other grants: '%s'", R.out);
    unsetenv("XMEM_TENANT");

    /* revoke: a handle bob holds stops working, bob cannot open it again, the owner and
     * dave still can */
    xm_ctx_h bob = xt_connect(&app, "bob");
    xm_region_h bh;
    cr_assert_eq(xm_region_open(bob, 0, "alice/x", XM_ACCESS_READ, &bh), XM_OK, "%s", xm_last_error(bob));
    char b4[4];
    cr_assert_eq(xm_read(bh, 0, b4, 4), XM_OK, "bob's read before the revoke: %s", xm_last_error(bob));
    CLI(NULL, 0, "region", "revoke", "x", "--tenant", "bob");
    EXPECT_OK("region revoke");
    xm_status_t rs = xm_read(bh, 0, b4, 4);
    cr_assert_neq(rs, XM_OK, "bob's open handle still reads after the revoke");
    cr_log_info("bob's read after the revoke: %s: %s", xm_status_str(rs), xm_last_error(bob));
    cr_assert(xm_last_error(bob)[0] != '\0', "bob's failed read says nothing");
    xm_region_close(bh);
    xm_disconnect(bob);
    setenv("XMEM_TENANT", "bob", 1);
    CLI(NULL, 0, "get", "alice/x", "--length", "4");
    EXPECT_FAIL("get after the revoke", "not owned by or granted");
    cr_assert_eq(R.out_len, 0);
    setenv("XMEM_TENANT", "dave", 1);
    CLI(NULL, 0, "get", "alice/x", "--length", "4");
    EXPECT_OK("dave reads after bob's revoke");
    unsetenv("XMEM_TENANT");
    CLI(NULL, 0, "get", "x", "--length", "4");
    EXPECT_OK("the owner reads after the revoke");
    cr_assert(R.out_len == 4 && memcmp(R.out, "dave", 4) == 0);
    CLI(NULL, 0, "region", "stat", "x");
    cr_assert(strstr(R.out, "bob") == NULL, "bob still listed after the revoke: '%s'", R.out);
    CLI(NULL, 0, "region", "revoke", "x", "--tenant", "bob");
    EXPECT_FAIL("revoke twice", "no grant");
}

Test(cli, wrong_secret_is_refused_and_the_appliance_survives, .fini = teardown, .timeout = 60)
{
    xt_start(&app, NULL);
    char other[PATH_MAX];
    snprintf(other, sizeof(other), "%s/other.secret", app.dir);
    xt_make_secret(other);
    /* the flag wins over the harness's XMEM_SECRET_FILE */
    CLI(NULL, 0, "--secret-file", other, "region", "ls");
    EXPECT_FAIL("region ls with another secret (flag)", "secret");
    cr_assert_eq(R.out_len, 0);

    char env_app[96], env_secret[PATH_MAX + 32];
    snprintf(env_app, sizeof(env_app), "XMEM_APPLIANCE=%s", app.addr);
    snprintf(env_secret, sizeof(env_secret), "XMEM_SECRET_FILE=%s", other);
    cli_env(ENV(env_app, env_secret, "XMEM_TENANT=alice"), ARGS("stat"));
    EXPECT_FAIL("stat with another secret (environment)", "secret");

    /* a missing secret file is reported as that, with its path */
    char missing[PATH_MAX];
    snprintf(missing, sizeof(missing), "%s/no-such.secret", app.dir);
    CLI(NULL, 0, "--secret-file", missing, "stat");
    EXPECT_FAIL("stat with a missing secret file", missing);

    /* a client with the wrong secret must not take the appliance down */
    CLI(NULL, 0, "stat");
    EXPECT_OK("stat with the right secret after refused clients");
}

Test(cli, unreachable_appliance_fails_fast, .fini = teardown, .timeout = 60)
{
    scratch();
    char secret[PATH_MAX], env_secret[PATH_MAX + 32];
    snprintf(secret, sizeof(secret), "%s/secret", app.dir);
    xt_make_secret(secret);
    snprintf(env_secret, sizeof(env_secret), "XMEM_SECRET_FILE=%s", secret);
    uint64_t t0 = xt_now_ms();
    cli_env(ENV("XMEM_APPLIANCE=127.0.0.1:1", env_secret), ARGS("region", "ls"));
    uint64_t ms = xt_now_ms() - t0;
    EXPECT_FAIL("region ls against 127.0.0.1:1", "127.0.0.1:1");
    cr_assert_lt(ms, 5000, "took %llu ms to report an unreachable appliance", (unsigned long long)ms);
    cr_assert_eq(R.out_len, 0);

    cli_env(ENV("XMEM_APPLIANCE=no-port-here", env_secret), ARGS("stat"));
    EXPECT_FAIL("stat against an address without a port", "no-port-here");
}

Test(cli, help_and_usage_errors, .fini = teardown, .timeout = 60)
{
    scratch();
    /* nothing here may connect: point at a port nobody listens on */
    const char *const *env = ENV("XMEM_APPLIANCE=127.0.0.1:1", "XMEM_TENANT=alice");
    static const char *const helps[][4] = {
        {"--help"},           {"secret", "--help"}, {"secret", "new", "--help"},
        {"region", "--help"}, {"region", "create", "--help"}, {"region", "ls", "--help"},
        {"region", "stat", "--help"}, {"region", "rm", "--help"}, {"region", "grant", "--help"},
        {"put", "--help"},    {"get", "--help"},    {"stat", "--help"},
        {"bench", "--help"},  {"config", "--help"},
    };
    for (size_t i = 0; i < sizeof(helps) / sizeof(helps[0]); i++) {
        cli_env(env, helps[i]);
        cr_assert_eq(R.rc, 0, "xmem %s %s --help: exit %d, stderr '%s'", helps[i][0],
                     helps[i][1] ? helps[i][1] : "", R.rc, R.err);
        expect_contains(R.out, "usage: xmem", "--help prints the usage");
        if (i == 0) continue;
        /* a command's --help is its own, with an example, not the global text */
        expect_contains(R.out, "example:", "a command's help has an example");
        cr_assert(strstr(R.out, "Global options") == NULL, "xmem %s %s --help printed the global text",
                  helps[i][0], helps[i][1] ? helps[i][1] : "");
        if (strcmp(helps[i][0], "region") == 0 && helps[i][1] != NULL && strcmp(helps[i][1], "--help") != 0) {
            char words[64];
            snprintf(words, sizeof(words), "xmem region %s", helps[i][1]);
            expect_contains(R.out, words, "region CMD --help is about that command");
        }
    }
    cli_env(env, ARGS("frobnicate"));
    cr_assert_eq(R.rc, 2, "unknown command: exit %d", R.rc);
    expect_one_line("unknown command");
    expect_contains(R.err, "frobnicate", "unknown command is named");
    cli_env(env, ARGS("frobnicate", "--help"));
    cr_assert_eq(R.rc, 2, "unknown command with --help: exit %d", R.rc);
    cli_env(env, ARGS("region", "frobnicate", "x"));
    cr_assert_eq(R.rc, 2, "unknown region command: exit %d", R.rc);
    expect_contains(R.err, "unknown region command", "unknown region command");
    cli_env(env, ARGS("put", "x", "--offset", "12Q"));
    cr_assert_eq(R.rc, 2, "put --offset 12Q: exit %d", R.rc);
    cli_env(env, (const char *const[]){NULL});
    cr_assert_eq(R.rc, 2, "no command: exit %d", R.rc);
    expect_contains(R.err, "usage: xmem", "no command prints the usage on stderr");

    /* and the commands with a manager */
    static const char *const own[][3] = {{"alloc", NULL, "--policy"}, {"up", NULL, "eval"}};
    for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) {
        if (own[i][1] != NULL) cli_env(env, ARGS(own[i][0], own[i][1], "--help"));
        else cli_env(env, ARGS(own[i][0], "--help"));
        cr_assert_eq(R.rc, 0, "%s --help: exit %d", own[i][0], R.rc);
        expect_contains(R.out, own[i][2], "a command's help names its options");
        expect_contains(R.out, "example:", "a command's help has an example");
        cr_assert(strstr(R.out, "Global options") == NULL, "xmem %s %s --help printed the global text",
                  own[i][0], own[i][1] ? own[i][1] : "");
    }
    cli_env(env, ARGS("--version"));
    cr_assert_eq(R.rc, 0, "--version: exit %d", R.rc);
    expect_contains(R.out, xm_version(NULL), "--version prints the library's version");

    /* a misspelt option is reported as that, not as a missing --size */
    cli_env(env, ARGS("alloc", "--sise", "1G"));
    cr_assert_eq(R.rc, 2, "alloc --sise: exit %d", R.rc);
    expect_one_line("alloc --sise");
    expect_contains(R.err, "unknown option --sise", "alloc --sise");
    expect_contains(R.err, "xmem alloc --help", "alloc --sise points at the command's help");
    cli_env(env, ARGS("region", "create", "--sise=1G"));
    cr_assert_eq(R.rc, 2);
    expect_contains(R.err, "unknown option --sise;", "--sise=1G is named without its value");
    cli_env(env, ARGS("region", "create", "--size"));
    cr_assert_eq(R.rc, 2);
    expect_contains(R.err, "--size needs a value", "a flag without its value");
    /* numbers are checked wherever they come from, and the source is named */
    cli_env(env, ARGS("--timeout-ms", "banana", "stat"));
    cr_assert_eq(R.rc, 2, "--timeout-ms banana: exit %d", R.rc);
    expect_one_line("--timeout-ms banana");
    expect_contains(R.err, "--timeout-ms", "--timeout-ms banana");
    cli_env(env, ARGS("stat", "--timeout-ms=10x"));
    cr_assert_eq(R.rc, 2, "--timeout-ms=10x after the command: exit %d", R.rc);
    cli_env(env, ARGS("bench", "--iters", "lots"));
    cr_assert_eq(R.rc, 2);
    expect_contains(R.err, "--iters", "bench --iters lots");
    cli_env(env, ARGS("up", "--appliances", "0"));
    cr_assert_eq(R.rc, 2);
    expect_contains(R.err, "--appliances", "up --appliances 0");
    cli_env(ENV("XMEM_APPLIANCE=127.0.0.1:1", "XMEM_TENANT=alice", "XMEM_TIMEOUT_MS=banana"),
            ARGS("stat"));
    EXPECT_FAIL("stat with XMEM_TIMEOUT_MS=banana", "XMEM_TIMEOUT_MS");
    expect_contains(R.err, "banana", "the bad value is shown");
    cli_env(ENV("XMEM_APPLIANCE=127.0.0.1:1", "XMEM_RPC_SPIN_US=lots"), ARGS("stat"));
    EXPECT_FAIL("stat with XMEM_RPC_SPIN_US=lots", "XMEM_RPC_SPIN_US");
    cli_env(ENV("XMEM_TIMEOUT_MS=banana"), ARGS("config"));
    EXPECT_FAIL("config with XMEM_TIMEOUT_MS=banana", "XMEM_TIMEOUT_MS");

    /* config --json is JSON */
    cli_env(ENV("XMEM_APPLIANCE=a\"b:1"), ARGS("config", "--json"));
    EXPECT_OK("config --json");
    json_t *cfg = json_loads(R.out, 0, NULL);
    cr_assert(json_is_array(cfg), "config --json is not JSON: '%s'", R.out);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(cfg, 0), "value")), "a\"b:1");
    json_decref(cfg);

    /* a missing directory is named */
    char missing[PATH_MAX];
    snprintf(missing, sizeof(missing), "%s/no-such-dir/secret", app.dir);
    cli_env(env, ARGS("secret", "new", missing));
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/no-such-dir ", app.dir);
    EXPECT_FAIL("secret new in a missing directory", dir);
    /* and the manager's --db */
    char secret[PATH_MAX], cmd[4 * PATH_MAX], line[1024] = "";
    snprintf(secret, sizeof(secret), "%s/secret", app.dir);
    xt_make_secret(secret);
    snprintf(cmd, sizeof(cmd), "timeout 30 %s/xmem-manager --listen 127.0.0.1:0 --secret-file %s "
             "--db %s/no-such-dir/m.db 2>&1", XMEM_BIN_DIR, secret, app.dir);
    FILE *p = popen(cmd, "r");
    cr_assert(p != NULL);
    size_t got = fread(line, 1, sizeof(line) - 1, p);
    line[got] = '\0';
    cr_assert_neq(pclose(p), 0, "xmem-manager started with --db in a missing directory");
    snprintf(dir, sizeof(dir), "directory %s/no-such-dir does not exist", app.dir);
    expect_contains(line, dir, "xmem-manager --db in a missing directory names it");
}

/* ---- with a manager: xmem up, stat, region ls, bench, JSON of allocations ---------- */

static char up_dir[PATH_MAX + 16];

static void up_teardown(void)
{
    char env_dir[PATH_MAX + 32];
    snprintf(env_dir, sizeof(env_dir), "XMEM_RUN_DIR=%s", up_dir);
    cli_env(ENV(env_dir), ARGS("down"));
    cr_expect_eq(R.rc, 0, "xmem down: exit %d, stderr '%s'", R.rc, R.err);
    res_reset();
    xt_cleanup(&app);
}

/* The value of `export NAME='VALUE';` in the text of xmem up; asserts it is there. */
static void export_value(const char *text, const char *name, char *out, size_t len)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "export %s='", name);
    const char *at = strstr(text, pat);
    cr_assert(at != NULL, "xmem up printed no %s line: '%s'", name, text);
    at += strlen(pat);
    size_t n = strcspn(at, "'");
    cr_assert(n < len && at[n] == '\'');
    snprintf(out, len, "%.*s", (int)n, at);
}

Test(cli, up_prints_exports_and_commands_work_through_a_manager, .fini = up_teardown, .timeout = 180)
{
    scratch();
    snprintf(up_dir, sizeof(up_dir), "%s/run", app.dir);
    char env_dir[PATH_MAX + 32], env_mgr[128], env_cred[PATH_MAX + 32];
    snprintf(env_dir, sizeof(env_dir), "XMEM_RUN_DIR=%s", up_dir);
    cli_env(ENV(env_dir), ARGS("up", "--appliances", "1", "--pool", "128M"));
    EXPECT_OK("xmem up");
    /* stdout is for eval: export lines and nothing else; the person reads stderr */
    for (const char *l = R.out; *l != '\0'; l = strchr(l, '\n') + 1) {
        cr_assert(strncmp(l, "export XMEM_", 12) == 0, "xmem up printed '%s' for eval", R.out);
        cr_assert(strchr(l, '\n') != NULL);
    }
    cr_assert_neq(R.err[0], '\0', "xmem up said nothing on stderr");
    char mgr[64], cred[PATH_MAX];
    export_value(R.out, "XMEM_MANAGER", mgr, sizeof(mgr));
    export_value(R.out, "XMEM_SECRET_FILE", cred, sizeof(cred));
    snprintf(env_mgr, sizeof(env_mgr), "XMEM_MANAGER=%s", mgr);
    snprintf(env_cred, sizeof(env_cred), "XMEM_SECRET_FILE=%s", cred);
    /* the lines work in a shell, as the README says */
    char cmd[4 * PATH_MAX];
    snprintf(cmd, sizeof(cmd), "cd / && unset XMEM_MANAGER XMEM_SECRET_FILE && eval \"$(%s/xmem up "
             "--dir '%s' 2>/dev/null)\" && test \"$XMEM_MANAGER\" = '%s' && test \"$XMEM_SECRET_FILE\" = '%s'",
             XMEM_BIN_DIR, up_dir, mgr, cred);
    cr_assert_eq(system(cmd), 0, "eval \"$(xmem up)\" did not set the variables: %s", cmd);

    /* exported and answering: reused, nothing new started */
    cli_env(ENV(env_dir, env_mgr, env_cred), ARGS("up"));
    EXPECT_OK("xmem up again with XMEM_MANAGER exported");
    expect_contains(R.err, "already running", "a second up says the manager runs");
    char again[64];
    export_value(R.out, "XMEM_MANAGER", again, sizeof(again));
    cr_assert_str_eq(again, mgr);

    /* stat: the appliances' pools through the manager's table */
    cli_env(ENV(env_mgr, env_cred), ARGS("stat", "--json"));
    EXPECT_OK("stat --json with a manager");
    json_t *st = json_loads(R.out, 0, NULL);
    cr_assert(json_is_object(st), "stat --json: '%s'", R.out);
    cr_assert_eq(json_integer_value(json_object_get(st, "pool_size")), 128 << 20, "'%s'", R.out);
    cr_assert_eq(json_array_size(json_object_get(st, "pools")), 1, "'%s'", R.out);
    json_decref(st);
    cli_env(ENV(env_mgr, env_cred), ARGS("stat"));
    EXPECT_OK("stat with a manager");
    expect_contains(R.out, "128.0 MiB", "stat shows the pool");

    /* an allocation named so that JSON must escape it */
    cli_env(ENV(env_mgr, env_cred), ARGS("alloc", "--size=1M", "--name", "q\"uote\\"));
    EXPECT_OK("alloc --name q\"uote\\");
    cli_env(ENV(env_mgr, env_cred), ARGS("ls", "--json"));
    EXPECT_OK("ls --json");
    json_t *ls = json_loads(R.out, 0, NULL);
    cr_assert(json_is_array(ls) && json_array_size(ls) == 1, "ls --json: '%s'", R.out);
    const char *nm = json_string_value(json_object_get(json_array_get(ls, 0), "name"));
    cr_assert(nm != NULL && strlen(nm) >= 7 && strcmp(nm + strlen(nm) - 7, "q\"uote\\") == 0,
              "ls --json name '%s'", nm ? nm : "(none)");
    json_decref(ls);

    /* region ls through a manager lists the allocations and says so */
    cli_env(ENV(env_mgr, env_cred), ARGS("region", "ls"));
    EXPECT_OK("region ls with a manager");
    expect_contains(R.err, "xmem ls", "region ls points at xmem ls");
    expect_contains(R.out, "uote", "region ls lists the allocation");
    cli_env(ENV(env_mgr, env_cred), ARGS("region", "create", "--size", "1M"));
    EXPECT_FAIL("region create with a manager", "xmem alloc");

    /* region grant and revoke act on allocations through a manager */
    cli_env(ENV(env_mgr, env_cred), ARGS("alloc", "--size", "1M", "--name", "shared"));
    EXPECT_OK("alloc --name shared");
    cli_env(ENV(env_mgr, env_cred), ARGS("region", "grant", "shared", "--tenant", "bob", "--read-only"));
    EXPECT_OK("region grant of an allocation");
    cli_env(ENV(env_mgr, env_cred), ARGS("region", "revoke", "shared", "--tenant", "bob"));
    EXPECT_OK("region revoke of an allocation");
    cli_env(ENV(env_mgr, env_cred), ARGS("region", "revoke", "shared", "--tenant", "bob"));
    EXPECT_FAIL("a second revoke", "bob has no grant");
    cli_env(ENV(env_mgr, env_cred), ARGS("free", "shared"));
    EXPECT_OK("free shared");

    /* bench on an allocation it makes and frees; its progress shows on a terminal (stderr),
     * the table on stdout */
    cli_tty(ENV(env_mgr, env_cred), ARGS("bench", "--sizes", "8", "--iters", "20", "--depth", "2"));
    EXPECT_OK("bench with a manager");
    expect_contains(R.out, "read", "bench prints its table");
    expect_contains(R.err, "xmem bench: ", "bench shows progress on a terminal");
    cr_assert(strstr(R.out, "xmem bench: 1/") == NULL, "progress went to stdout: '%s'", R.out);
    cli_env(ENV(env_mgr, env_cred), ARGS("ls", "--json"));
    ls = json_loads(R.out, 0, NULL);
    cr_assert_eq(json_array_size(ls), 1, "bench left its allocation: '%s'", R.out);
    json_decref(ls);
}
