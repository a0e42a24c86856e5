/*
 * The README's C code, built and run as a user would: every ```c block of
 * README.md is compiled against the built libxmem.so (a block without main()
 * is wrapped in one) and run against a real xmemd on loopback; it must exit 0.
 * And the installed tree: `cmake --install` into a scratch prefix, the README's
 * first program built with `pkg-config --cflags --libs xmem`, and the installed
 * xmem run with no LD_LIBRARY_PATH (it finds libxmem.so by its RUNPATH).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#ifndef XMEM_CC
#error "XMEM_CC, XMEM_SNIPPET_FLAGS, XMEM_LIB_DIR, XMEM_GEN_INCLUDE_DIR, XMEM_BUILD_DIR, XMEM_CMAKE come from CMakeLists.txt"
#endif

static xt_appliance_t app;

static void teardown(void)
{
    cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
    xt_cleanup(&app);
}

static char *slurp_path(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) return strdup("");
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    size_t got = fread(buf, 1, (size_t)len, f);
    buf[got] = '\0';
    fclose(f);
    return buf;
}

/* Run a shell command; its exit code (128+signal when killed). */
static int sh(const char *cmd)
{
    int st = system(cmd);
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The ```c blocks of README.md, each written to dir/readme_N.c; returns how many. */
static int extract_blocks(const char *dir, char paths[][PATH_MAX], int max)
{
    char *md = slurp_path(XMEM_SOURCE_DIR "/README.md");
    int n = 0;
    char *at = md;
    while (n < max && (at = strstr(at, "\n```c\n")) != NULL) {
        char *body = at + strlen("\n```c\n");
        char *end = strstr(body, "\n```");
        cr_assert(end != NULL, "README.md: a ```c block is not closed");
        size_t len = (size_t)(end - body) + 1;
        snprintf(paths[n], PATH_MAX, "%s/readme_%d.c", dir, n);
        FILE *f = fopen(paths[n], "w");
        cr_assert(f != NULL);
        char *code = strndup(body, len);
        if (strstr(code, "main(") != NULL) {
            fputs(code, f);
        } else {
            /* a fragment: its #-lines first, the rest as the body of main() */
            fputs("#include <stdint.h>\n#include <stdio.h>\n#include <stdlib.h>\n"
                  "#include <string.h>\n#include <xmem/xmem.h>\n",
                  f);
            for (char *line = strtok(code, "\n"); line != NULL; line = strtok(NULL, "\n")) {
                if (line[0] == '#') fprintf(f, "%s\n", line);
            }
            free(code);
            code = strndup(body, len);
            fputs("int main(void)\n{\n", f);
            for (char *line = strtok(code, "\n"); line != NULL; line = strtok(NULL, "\n")) {
                if (line[0] != '#') fprintf(f, "    %s\n", line);
            }
            fputs("    return 0;\n}\n", f);
        }
        free(code);
        fclose(f);
        n++;
        at = end;
    }
    free(md);
    return n;
}

/* Compile src to exe against the build tree's headers and libxmem.so; asserts success. */
static void compile(const char *src, const char *exe, const char *flags)
{
    char cmd[4 * PATH_MAX + 512], log[PATH_MAX];
    snprintf(log, sizeof(log), "%s.log", exe);
    snprintf(cmd, sizeof(cmd), "%s -std=c11 -Wall -Wextra -Werror %s -o '%s' '%s' %s > '%s' 2>&1",
             XMEM_CC, XMEM_SNIPPET_FLAGS, exe, src, flags, log);
    int rc = sh(cmd);
    if (rc != 0) {
        char *out = slurp_path(log);
        cr_log_error("%s\n%s", cmd, out);
        free(out);
    }
    cr_assert_eq(rc, 0, "%s does not compile (see above)", src);
}

/* Run exe against app with the environment a user sets (README, "Using it"); its exit code. */
static int run_against_app(const char *exe, char **out_p)
{
    char cmd[5 * PATH_MAX + 512], log[PATH_MAX], cred[PATH_MAX + 80];
    snprintf(log, sizeof(log), "%s.out", exe);
    xt_cred(app.secret, "alice", cred, sizeof(cred)); /* alice's tenant credential */
    snprintf(cmd, sizeof(cmd),
             "env -u XMEM_MANAGER XMEM_APPLIANCE='%s' XMEM_SECRET_FILE='%s' XMEM_TENANT=alice "
             "XMEM_PROVIDER='%s' timeout 300 '%s' > '%s' 2>&1",
             app.addr, cred, app.provider, exe, log);
    int rc = sh(cmd);
    *out_p = slurp_path(log);
    return rc;
}

Test(readme, every_c_block_compiles_and_runs, .fini = teardown, .timeout = 600)
{
    xt_start(&app, &(xt_opts_t){.pool = "512M"});
    char paths[16][PATH_MAX];
    int n = extract_blocks(app.dir, paths, 16);
    /* "From C" and "Mapped memory" at least */
    cr_assert_geq(n, 2, "README.md has %d ```c blocks", n);
    char flags[3 * PATH_MAX];
    snprintf(flags, sizeof(flags), "-I'%s/include' -I'%s' -L'%s' -Wl,-rpath,'%s' -lxmem",
             XMEM_SOURCE_DIR, XMEM_GEN_INCLUDE_DIR, XMEM_LIB_DIR, XMEM_LIB_DIR);
    for (int i = 0; i < n; i++) {
        char exe[PATH_MAX];
        snprintf(exe, sizeof(exe), "%s/readme_%d", app.dir, i);
        compile(paths[i], exe, flags);
        char *out;
        int rc = run_against_app(exe, &out);
        cr_log_info("README block %d exited %d:\n%s", i, rc, out);
        cr_expect_eq(rc, 0, "README block %d (%s) exited %d:\n%s", i, paths[i], rc, out);
        free(out);
    }
}

Test(readme, installed_tree_builds_with_pkg_config_and_finds_libxmem, .fini = teardown,
     .timeout = 600)
{
    xt_start(&app, NULL);
    char prefix[PATH_MAX], cmd[5 * PATH_MAX + 512];
    snprintf(prefix, sizeof(prefix), "%s/prefix", app.dir);
    snprintf(cmd, sizeof(cmd), "'%s' --install '%s' --prefix '%s' > '%s/install.log' 2>&1",
             XMEM_CMAKE, XMEM_BUILD_DIR, prefix, app.dir);
    cr_assert_eq(sh(cmd), 0, "%s failed", cmd);

    /* the installed xmem finds libxmem.so with nothing in the environment */
    char cred[PATH_MAX + 80];
    xt_cred(app.secret, "alice", cred, sizeof(cred));
    snprintf(cmd, sizeof(cmd),
             "cd / && env -u LD_LIBRARY_PATH XMEM_APPLIANCE='%s' XMEM_SECRET_FILE='%s' "
             "XMEM_PROVIDER='%s' XMEM_TENANT=alice '%s/bin/xmem' stat > '%s/stat.out' 2>&1",
             app.addr, cred, app.provider, prefix, app.dir);
    int rc = sh(cmd);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/stat.out", app.dir);
    char *out = slurp_path(path);
    cr_expect_eq(rc, 0, "installed xmem stat exited %d:\n%s", rc, out);
    cr_expect(strstr(out, "libxmem.so") == NULL, "installed xmem did not find libxmem.so:\n%s", out);
    free(out);

    /* pkg-config finds the library and its headers (version.h included) */
    char pcdir[PATH_MAX];
    snprintf(cmd, sizeof(cmd), "find '%s' -name xmem.pc -printf '%%h' > '%s/pcdir'", prefix,
             app.dir);
    cr_assert_eq(sh(cmd), 0);
    snprintf(path, sizeof(path), "%s/pcdir", app.dir);
    char *dir = slurp_path(path);
    cr_assert(dir[0] != '\0', "no xmem.pc installed under %s", prefix);
    snprintf(pcdir, sizeof(pcdir), "%s", dir);
    free(dir);
    snprintf(cmd, sizeof(cmd),
             "PKG_CONFIG_PATH='%s' pkg-config --modversion xmem > '%s/pc.out' && "
             "PKG_CONFIG_PATH='%s' pkg-config --cflags --libs xmem > '%s/pcflags' && "
             "PKG_CONFIG_PATH='%s' pkg-config --variable=libdir xmem > '%s/pclibdir'",
             pcdir, app.dir, pcdir, app.dir, pcdir, app.dir);
    cr_assert_eq(sh(cmd), 0, "pkg-config does not know xmem: %s", cmd);
    snprintf(path, sizeof(path), "%s/pc.out", app.dir);
    char *ver = slurp_path(path);
    cr_expect_eq(strncmp(ver, XM_VERSION_STRING, strlen(XM_VERSION_STRING)), 0,
                 "xmem.pc says version %s, the header %s", ver, XM_VERSION_STRING);
    free(ver);
    snprintf(path, sizeof(path), "%s/pcflags", app.dir);
    char *pcflags = slurp_path(path);
    pcflags[strcspn(pcflags, "\n")] = '\0';
    snprintf(path, sizeof(path), "%s/pclibdir", app.dir);
    char *libdir = slurp_path(path);
    libdir[strcspn(libdir, "\n")] = '\0';
    cr_assert(strncmp(libdir, prefix, strlen(prefix)) == 0 || strstr(libdir, "/prefix/") != NULL,
              "xmem.pc's libdir %s is not under the install prefix %s", libdir, prefix);

    char paths[16][PATH_MAX];
    int n = extract_blocks(app.dir, paths, 16);
    cr_assert_geq(n, 1);
    char flags[3 * PATH_MAX + 64], exe[PATH_MAX];
    snprintf(flags, sizeof(flags), "%s -Wl,-rpath,'%s'", pcflags, libdir);
    snprintf(exe, sizeof(exe), "%s/installed_readme_0", app.dir);
    compile(paths[0], exe, flags);
    free(pcflags);
    free(libdir);
    rc = run_against_app(exe, &out);
    cr_expect_eq(rc, 0, "README's first program, built from the installed tree, exited %d:\n%s",
                 rc, out);
    free(out);
}
