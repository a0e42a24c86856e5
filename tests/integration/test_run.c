/* xmem run (issue 14): unmodified programs with their heap on external memory,
 * --local well below their working set, checked by their results against the
 * same command run on plain memory. */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static xt_appliance_t app;
static bool started;

static void teardown(void)
{
    if (started) {
        cr_expect_eq(xt_stop(&app), 0, "xmemd did not shut down cleanly on SIGTERM");
        xt_cleanup(&app);
        started = false;
    }
}

static void need_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    if (fd < 0) cr_skip_test("userfaultfd unavailable (%m): needs root or vm.unprivileged_userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = (1 << 15) | (1 << 16) | (1 << 14)};
    int rc = ioctl(fd, UFFDIO_API, &api);
    close(fd);
    if (rc != 0) cr_skip_test("userfaultfd lacks WP_ASYNC/MOVE/POISON (Linux >= 6.8 needed)");
}

static void start(void)
{
    need_uffd();
    /* the local transport (an appliance on this host): over loopback tcp every fault is a
     * round trip, and these programs take minutes at these --local sizes */
    xt_start(&app, &(xt_opts_t){.pool = "2G", .provider = "local"});
    started = true;
}

/* stdout of argv run on plain memory (no xmem), or NULL when it failed */
static char *run_plain(char *const argv[], size_t *len_p)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/plain.out", app.dir);
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(o, 1);
        unsetenv("LD_PRELOAD"); /* an ASan build preloads nothing, but be sure */
        execvp(argv[0], argv);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return NULL;
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len_p = (size_t)n;
    return buf;
}

/* a counter from the --stats lines ("faults 12,", "evictions 3,") */
static unsigned long long stat_of(const char *err, const char *name)
{
    char key[64];
    snprintf(key, sizeof(key), "%s ", name);
    const char *p = strstr(err, key);
    cr_assert_not_null(p, "no '%s' in xmem run's stats:\n%s", name, err);
    return strtoull(p + strlen(key), NULL, 10);
}

/* the region the run made is gone after it */
static void expect_no_regions(void)
{
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_info_t *infos = NULL;
    size_t n = 0;
    cr_assert_eq(xm_region_list(ctx, &infos, &n), XM_OK);
    cr_expect_eq(n, 0, "xmem run left %zu region(s) behind", n);
    free(infos);
    xm_disconnect(ctx);
}

#define PY_PROG                                                                                     \
    "import hashlib\n"                                                                              \
    "d = {i: ('%d' % i) * 8 for i in range(400000)}\n"                                              \
    "l = [(k, v[::-1]) for k, v in d.items()]\n"                                                    \
    "print(len(d), hashlib.sha256(repr(l).encode()).hexdigest())\n"

/* python3 building a ~100 MB dict and list with 16 MiB local, with its own
 * allocator: pymalloc's 1 MiB arenas come by mmap, and xmem run serves them
 * from the heap */
Test(run, python_builds_and_hashes_a_large_dict_as_plain_python, .fini = teardown, .timeout = 120)
{
    start();
    if (access("/usr/bin/python3", X_OK) != 0) cr_skip_test("/usr/bin/python3 is not installed");
    char *const plain_argv[] = {"/usr/bin/python3", "-c", PY_PROG, NULL};
    size_t plen = 0;
    char *plain = run_plain(plain_argv, &plen);
    cr_assert_not_null(plain, "python3 failed on plain memory");
    char *out = NULL, *err = NULL;
    int rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "run", "--heap", "512M", "--local", "16M", "--stats", "--",
                    "/usr/bin/python3", "-c", PY_PROG, NULL);
    cr_assert_eq(rc, 0, "xmem run python3: exit %d\n%s", rc, err);
    cr_expect_str_eq(out, plain, "python3 under xmem run printed something else");
    cr_expect_gt(stat_of(err, "evictions"), 0, "the heap never left the 16 MiB cache:\n%s", err);
    cr_expect_gt(stat_of(err, "faults"), 1000, "%s", err);
    cr_expect_geq(stat_of(err, "served from the heap"), 50, "pymalloc's arenas stayed local:\n%s", err);
    free(plain);
    free(out);
    free(err);
    expect_no_regions();
}

/* sort of a 16 MB file with an 8 MiB sort buffer (-S: sort's heap working set is the
 * buffer and its line table; the rest goes through temporary files) and 4 MiB local */
Test(run, sort_of_a_file_larger_than_local_matches_plain_sort, .fini = teardown, .timeout = 120)
{
    start();
    char in[PATH_MAX];
    snprintf(in, sizeof(in), "%s/sort.in", app.dir);
    FILE *f = fopen(in, "w");
    cr_assert_not_null(f);
    uint64_t s = 42;
    size_t bytes = 0;
    while (bytes < (16u << 20)) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        bytes += (size_t)fprintf(f, "%016llx %llu\n", (unsigned long long)s, (unsigned long long)(s >> 40));
    }
    fclose(f);
    setenv("LC_ALL", "C", 1);
    char *const plain_argv[] = {"sort", "-S", "8M", in, NULL};
    size_t plen = 0, olen = 0;
    char *plain = run_plain(plain_argv, &plen);
    cr_assert_not_null(plain, "plain sort failed");
    char *out = NULL, *err = NULL;
    int rc = xt_cli(&app, NULL, 0, &out, &olen, &err, "run", "--heap", "256M", "--local", "4M", "--stats", "--",
                    "sort", "-S", "8M", in, NULL);
    cr_assert_eq(rc, 0, "xmem run sort: exit %d\n%s", rc, err);
    cr_expect_eq(olen, plen, "sort under xmem run wrote %zu bytes, plain sort %zu", olen, plen);
    cr_expect(olen == plen && memcmp(out, plain, plen) == 0, "sort under xmem run sorted differently");
    cr_expect_gt(stat_of(err, "evictions"), 0, "%s", err);
    free(plain);
    free(out);
    free(err);
    expect_no_regions();
}

/* four threads malloc/calloc/realloc/posix_memalign/aligned_alloc/free many
 * sizes (to 1 MiB), free each other's blocks, and check every byte */
Test(run, threads_allocate_free_and_verify_every_byte, .fini = teardown, .timeout = 120)
{
    start();
    char *out = NULL, *err = NULL;
    int rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "run", "--heap", "512M", "--local", "8M", "--stats", "--",
                    XMEM_BIN_DIR "/run_worker", "threads", "4", "20000", "500", NULL);
    cr_assert_eq(rc, 0, "run_worker threads: exit %d\n%s%s", rc, out, err);
    cr_expect(strstr(out, "ok threads 4") != NULL, "%s", out);
    cr_expect_gt(stat_of(err, "evictions"), 0, "the working set fit the cache:\n%s", err);
    cr_expect_gt(stat_of(err, "written back"), 0, "%s", err);
    free(out);
    free(err);
    expect_no_regions();
}

/* fork(): the child allocates and frees on its own (local) memory; an object
 * allocated before the fork is not there (SIGSEGV), never shared with the
 * parent; the parent's heap is intact; system() (fork+exec) works */
Test(run, a_forked_child_gets_its_own_memory_and_never_the_parents_heap, .fini = teardown, .timeout = 60)
{
    start();
    char *out = NULL, *err = NULL;
    int rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "run", "--heap", "256M", "--local", "16M", "--",
                    XMEM_BIN_DIR "/run_worker", "fork", NULL);
    cr_assert_eq(rc, 0, "run_worker fork: exit %d\n%s%s", rc, out, err);
    cr_expect(strstr(out, "child1 exit 0\n") != NULL, "the child could not allocate on its own:\n%s", out);
    cr_expect(strstr(out, "child2 signal 11\n") != NULL,
              "the child touched the parent's heap object without SIGSEGV:\n%s", out);
    cr_expect(strstr(out, "system 3\n") != NULL, "system() (fork+exec) failed:\n%s", out);
    cr_expect(strstr(out, "ok fork\n") != NULL, "the parent's heap changed:\n%s%s", out, err);
    free(out);
    free(err);
    expect_no_regions();
}

/* a program killed with SIGKILL: xmem run still frees its heap's region and
 * reports the signal in its exit status */
Test(run, a_killed_programs_heap_is_freed, .fini = teardown, .timeout = 60)
{
    start();
    char *err = NULL;
    int rc = xt_cli(&app, NULL, 0, NULL, NULL, &err, "run", "--heap", "128M", "--", "sh", "-c", "kill -KILL $$",
                    NULL);
    cr_expect_eq(rc, 128 + SIGKILL, "exit %d\n%s", rc, err);
    free(err);
    expect_no_regions();
}

/* xmem run itself killed with SIGKILL (here by the program): its reaper frees the
 * heap, and the program does not outlive it (its heap would be gone) */
Test(run, a_killed_xmem_run_still_frees_the_heap_and_ends_the_program, .fini = teardown, .timeout = 60)
{
    start();
    char pidfile[PATH_MAX], script[PATH_MAX + 128];
    snprintf(pidfile, sizeof(pidfile), "%s/prog.pid", app.dir);
    snprintf(script, sizeof(script), "echo $$ > %s; kill -KILL $PPID; sleep 30", pidfile);
    char *err = NULL;
    int rc = xt_cli(&app, NULL, 0, NULL, NULL, &err, "run", "--heap", "128M", "--", "sh", "-c", script, NULL);
    cr_expect_eq(rc, 128 + SIGKILL, "exit %d\n%s", rc, err);
    free(err);
    FILE *f = fopen(pidfile, "r");
    cr_assert_not_null(f, "the program never ran");
    int pid = 0;
    cr_assert_eq(fscanf(f, "%d", &pid), 1);
    fclose(f);
    /* the reaper: the program gone, then the heap, within seconds */
    xm_ctx_h ctx = xt_connect(&app, NULL);
    size_t n = 1;
    for (int i = 0; i < 100 && (n != 0 || kill(pid, 0) == 0); i++) {
        usleep(100000);
        xm_region_info_t *infos = NULL;
        cr_assert_eq(xm_region_list(ctx, &infos, &n), XM_OK);
        free(infos);
    }
    xm_disconnect(ctx);
    cr_expect_neq(kill(pid, 0), 0, "the program (pid %d) outlived xmem run", pid);
    cr_expect_eq(n, 0, "the heap of a killed xmem run was left behind");
}

/* a request larger than the heap fails as malloc fails when memory runs out
 * (ENOMEM: Python's MemoryError), and --stats counts it */
Test(run, a_full_heap_refuses_with_enomem, .fini = teardown, .timeout = 60)
{
    start();
    if (access("/usr/bin/python3", X_OK) != 0) cr_skip_test("/usr/bin/python3 is not installed");
    char *out = NULL, *err = NULL;
    int rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "run", "--heap", "128M", "--stats", "--", "/usr/bin/python3",
                    "-c",
                    "try:\n    b = bytearray(300 << 20)\n    print('allocated')\n"
                    "except MemoryError:\n    print('MemoryError')\n"
                    "b = bytearray(16 << 20)\nprint('then', len(b))\n",
                    NULL);
    cr_assert_eq(rc, 0, "exit %d\n%s", rc, err);
    cr_expect_str_eq(out, "MemoryError\nthen 16777216\n");
    cr_expect_geq(stat_of(err, "(heap full)"), 1, "%s", err);
    free(out);
    free(err);
    expect_no_regions();
}

#define PY_SPAWN                                                                                    \
    "import subprocess, sys\n"                                                                      \
    "d = {i: str(i) * 8 for i in range(200000)}\n"                                                  \
    "c = subprocess.run(['/usr/bin/python3', '-c', 'import os; print(os.environ.get(\"XMEM_RUN_REGION\"))'],\n" \
    "                   capture_output=True, text=True)\n"                                          \
    "print(len(d), c.returncode, c.stdout.strip())\n"

/* A wrapper that execs (env here; pyenv's shims, scripts ending in exec) hands the heap
 * to the program it execs (same pid: the claim holds); a child python3 spawned by it
 * finds the heap claimed, runs on plain memory and drops the variables */
Test(run, an_execd_program_keeps_the_heap_and_a_spawned_child_runs_plain, .fini = teardown, .timeout = 60)
{
    start();
    if (access("/usr/bin/python3", X_OK) != 0) cr_skip_test("/usr/bin/python3 is not installed");
    char *out = NULL, *err = NULL;
    int rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "run", "--heap", "256M", "--stats", "--", "/usr/bin/env",
                    "PYTHONMALLOC=malloc", "/usr/bin/python3", "-c", PY_SPAWN, NULL);
    cr_assert_eq(rc, 0, "exit %d\n%s", rc, err);
    cr_expect_str_eq(out, "200000 0 None\n", "the spawned child saw the heap's variables, or failed");
    /* the dict (~40 MB through malloc) went to the heap: the exec'd python3 mapped it */
    const char *f = strstr(err, "fetched ");
    cr_assert_not_null(f, "%s", err);
    double mib = 0;
    char unit[8] = "";
    cr_assert_eq(sscanf(f, "fetched %lf %7[A-Za-z]", &mib, unit), 2, "%s", err);
    cr_expect(strcmp(unit, "MiB") == 0 && mib >= 16, "the exec'd program did not get the heap:\n%s", err);
    free(out);
    free(err);
    expect_no_regions();
}

/* a size from the --stats lines ("in memory at exit 63.2 MiB"), in MiB */
static double mib_of(const char *err, const char *name)
{
    const char *p = strstr(err, name);
    cr_assert_not_null(p, "no '%s' in xmem run's stats:\n%s", name, err);
    double v = 0;
    char unit[8] = "";
    cr_assert_eq(sscanf(p + strlen(name), " %lf %7[A-Za-z]", &v, unit), 2, "%s", err);
    return strcmp(unit, "GiB") == 0 ? v * 1024 : strcmp(unit, "MiB") == 0 ? v : strcmp(unit, "KiB") == 0 ? v / 1024 : v / 1048576;
}

/* Tiers: with --tier-local, the first 64 MiB of the program's heap are this host's
 * memory, the rest goes to the external heap behind its 16 MiB cache; every byte
 * comes back right */
Test(run, the_local_tier_fills_first_then_the_external_heap, .fini = teardown, .timeout = 120)
{
    start();
    char *out = NULL, *err = NULL;
    int rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "run", "--heap", "256M", "--local", "16M", "--tier-local", "64M",
                    "--stats", "--", XMEM_BIN_DIR "/run_worker", "tiers", "120", NULL);
    cr_assert_eq(rc, 0, "run_worker tiers: exit %d\n%s%s", rc, out, err);
    cr_expect(strstr(out, "ok tiers 120\n") != NULL, "%s", out);
    /* the local tier holds (nearly) all of its 64 MiB: it was used first */
    double local = mib_of(err, "tier local: 64.0 MiB, in memory at exit");
    cr_expect_geq(local, 48, "the local tier was not filled first (%.1f MiB in it):\n%s", local, err);
    /* and the rest went to the external heap: more than its 16 MiB cache, so evictions */
    cr_expect_geq(stat_of(err, "evictions"), 1, "nothing of the heap went external:\n%s", err);
    free(out);
    free(err);
    expect_no_regions();
}

/* No appliance capacity for the heap: with --spill the program runs on a file in
 * that directory (unlinked, on local disk), and says so */
Test(run, no_appliance_capacity_spills_to_a_file_tier, .fini = teardown, .timeout = 120)
{
    start();
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/spill", app.dir);
    cr_assert_eq(mkdir(dir, 0700), 0);
    char *out = NULL, *err = NULL;
    /* the appliance's pool is 2 GiB */
    int rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "run", "--heap", "8G", "--spill", dir, "--spill-size", "256M",
                    "--stats", "--", XMEM_BIN_DIR "/run_worker", "tiers", "100", NULL);
    cr_assert_eq(rc, 0, "run_worker tiers: exit %d\n%s%s", rc, out, err);
    cr_expect(strstr(out, "ok tiers 100\n") != NULL, "%s", out);
    cr_expect(strstr(err, "no external memory for the heap") != NULL, "%s", err);
    /* the last block sits in the (deleted) file in that directory */
    const char *last = strstr(out, "last ");
    cr_assert_not_null(last, "%s", out);
    cr_expect(strncmp(last + 5, dir, strlen(dir)) == 0, "the blocks are not in the spill file:\n%s", out);
    double written = mib_of(err, "tier file: 256.0 MiB, written to the file");
    cr_expect_geq(written, 90, "%.1f MiB in the file:\n%s", written, err);
    cr_expect(strstr(err, "tier external: none") != NULL, "%s", err);
    free(out);
    free(err);
    expect_no_regions();
}

/* Large private anonymous mmaps are served from the heap: zeroed, mremap grows by
 * moving and keeps the bytes, MADV_DONTNEED zeroes, munmap in parts frees the block
 * (1,026 blocks made and unmapped leave nothing mapped), mprotect other than
 * read-write and munmap inside a malloc'd block are refused, never done */
Test(run, large_anonymous_mmaps_come_from_the_heap, .fini = teardown, .timeout = 60)
{
    start();
    char *out = NULL, *err = NULL;
    int rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "run", "--heap", "256M", "--local", "16M", "--stats", "--",
                    XMEM_BIN_DIR "/run_worker", "mmap", NULL);
    cr_assert_eq(rc, 0, "run_worker mmap: exit %d\n%s%s", rc, out, err);
    cr_expect(strstr(out, "ok mmap\n") != NULL, "%s", out);
    cr_expect(strstr(out, "mprotect read-only refused\n") != NULL, "%s", out);
    cr_expect(strstr(out, "munmap inside malloc refused\n") != NULL, "%s", out);
    cr_expect_geq(stat_of(err, "served from the heap"), 1026, "%s", err);
    cr_expect(strstr(err, "0 B of them mapped at exit") != NULL, "a block leaked:\n%s", err);
    free(out);
    free(err);
    expect_no_regions();
}

/* --keep NAME: the heap stays on the appliance under that name after the program
 * (for inspection with xmem get); a second run with the same name is refused */
Test(run, keep_leaves_the_heap_under_its_name, .fini = teardown, .timeout = 60)
{
    start();
    char *out = NULL, *err = NULL;
    int rc = xt_cli(&app, NULL, 0, &out, NULL, &err, "run", "--heap", "128M", "--keep", "kept-heap", "--",
                    XMEM_BIN_DIR "/run_worker", "tiers", "8", NULL);
    cr_assert_eq(rc, 0, "exit %d\n%s%s", rc, out, err);
    cr_expect(strstr(err, "the heap is kept: region") != NULL, "%s", err);
    free(out);
    free(err);
    xm_ctx_h ctx = xt_connect(&app, NULL);
    xm_region_h r;
    cr_assert_eq(xm_region_open(ctx, 0, "kept-heap", XM_ACCESS_READ, &r), XM_OK, "%s", xm_last_error(ctx));
    cr_expect_geq(xm_region_size(r), 128ull << 20);
    /* the owner's pid is still in the claim word: the heap is what the program left */
    uint64_t claim = 0;
    cr_expect_eq(xm_read(r, 0, &claim, sizeof(claim)), XM_OK);
    cr_expect_neq(claim, 0, "the kept heap was never claimed by the program");
    xm_region_close(r);
    rc = xt_cli(&app, NULL, 0, NULL, NULL, &err, "run", "--heap", "128M", "--keep", "kept-heap", "--", "true", NULL);
    cr_expect_neq(rc, 0, "a second heap under the same name was accepted");
    free(err);
    cr_assert_eq(xm_region_destroy(ctx, 0, "kept-heap"), XM_OK, "%s", xm_last_error(ctx));
    xm_disconnect(ctx);
    expect_no_regions();
}

/* usage errors are refused before anything is allocated */
Test(run, usage_errors_are_refused_before_any_allocation, .fini = teardown, .timeout = 30)
{
    start();
    char *err = NULL;
    int rc = xt_cli(&app, NULL, 0, NULL, NULL, &err, "run", "true", NULL);
    cr_expect_eq(rc, 2, "no --: exit %d", rc);
    cr_expect(strstr(err, "usage: xmem run") != NULL, "%s", err);
    free(err);
    rc = xt_cli(&app, NULL, 0, NULL, NULL, &err, "run", "--heap", "1M", "--", "true", NULL);
    cr_expect_eq(rc, 1, "--heap 1M: exit %d", rc);
    cr_expect(strstr(err, "at least 64M") != NULL, "%s", err);
    free(err);
    rc = xt_cli(&app, NULL, 0, NULL, NULL, &err, "run", "--policy", "stripe:2", "--", "true", NULL);
    cr_expect_eq(rc, 1, "--policy without a manager: exit %d", rc);
    cr_expect(strstr(err, "needs a manager") != NULL, "%s", err);
    free(err);
    rc = xt_cli(&app, NULL, 0, NULL, NULL, &err, "run", "--heap", "64M", "--", "/nonexistent/program", NULL);
    cr_expect_eq(rc, 127, "a program that does not exist: exit %d", rc);
    cr_expect(strstr(err, "/nonexistent/program") != NULL, "%s", err);
    free(err);
    expect_no_regions();
}
