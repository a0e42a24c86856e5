/* xmem stat --pid PID: the mapping counters a process using xmem publishes in
 * /dev/shm/xmem-stat-UID-PID (include/xmem/procstat.h). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xmem/procstat.h>

#include "cli.h"

/* --pid N or --pid=N among the command's arguments: N, 0 when absent, -1 when malformed. */
static long pid_arg(const cli_t *cli, int *json_p)
{
    long pid = 0;
    for (int i = 0; i < cli->argc; i++) {
        const char *a = cli->argv[i], *v = NULL;
        if (strcmp(a, "--json") == 0) *json_p = 1;
        if (strcmp(a, "--pid") == 0) v = i + 1 < cli->argc ? cli->argv[i + 1] : "";
        else if (strncmp(a, "--pid=", 6) == 0) v = a + 6;
        if (v == NULL) continue;
        char *end;
        errno = 0;
        pid = strtol(v, &end, 10);
        if (v[0] == '\0' || *end != '\0' || errno != 0 || pid <= 0 || pid > INT_MAX) return -1;
    }
    return pid;
}

bool cli_stat_pid_wanted(const cli_t *cli)
{
    for (int i = 0; i < cli->argc; i++) {
        if (strcmp(cli->argv[i], "--pid") == 0 || strncmp(cli->argv[i], "--pid=", 6) == 0) return true;
    }
    return false;
}

/* The owner of /proc/PID: whose file to look for. */
static int proc_uid(long pid, uid_t *uid_p)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld", pid);
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    *uid_p = st.st_uid;
    return 0;
}

/* When the process started, in unix seconds (/proc/PID/stat's starttime after boot); 0 unknown. */
static double proc_start_unix(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (p == NULL) return 0;
    unsigned long long start = 0;
    /* after ") ": state is field 3; starttime is field 22 */
    int field = 2;
    for (char *tok = strtok(p + 1, " "); tok != NULL; tok = strtok(NULL, " ")) {
        if (++field == 22) {
            start = strtoull(tok, NULL, 10);
            break;
        }
    }
    f = fopen("/proc/stat", "r");
    if (f == NULL || start == 0) {
        if (f != NULL) fclose(f);
        return 0;
    }
    unsigned long long btime = 0;
    char line[256];
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "btime %llu", &btime) == 1) break;
    }
    fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    return btime != 0 && hz > 0 ? (double)btime + (double)start / (double)hz : 0;
}

int cmd_stat_pid(cli_t *cli)
{
    int json = cli->json ? 1 : 0;
    long pid = pid_arg(cli, &json);
    if (pid <= 0) {
        fprintf(stderr, "xmem: stat: --pid needs a process id (a positive number)\n");
        return 2;
    }
    uid_t uid;
    if (proc_uid(pid, &uid) != 0) {
        return cli_fail("stat", "no process %ld", pid);
    }
    if (uid != getuid() && getuid() != 0) {
        return cli_fail("stat", "process %ld belongs to another user (uid %u): only that user or root "
                                "may read its counters", pid, (unsigned)uid);
    }
    char path[96];
    snprintf(path, sizeof(path), XM_PROCSTAT_PATH_FMT, (unsigned)uid, (int)pid);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return cli_fail("stat", "process %ld publishes no xmem counters (%s is missing: it has "
                                    "mapped no xmem memory, or XMEM_PROCSTAT=0)", pid, path);
        return cli_fail("stat", "cannot read %s: %s", path, strerror(errno));
    }
    struct stat st;
    xm_procstat_t ps;
    /* the file must be the process's user's own, a regular file as large as the layout */
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != uid ||
        (st.st_mode & 077) != 0 || (size_t)st.st_size < sizeof(ps)) {
        close(fd);
        return cli_fail("stat", "%s is not a counters file of process %ld (owner, mode or size "
                                "wrong): ignored", path, pid);
    }
    const xm_procstat_t *map = mmap(NULL, sizeof(ps), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return cli_fail("stat", "cannot map %s: %s", path, strerror(errno));
    memcpy(&ps, map, sizeof(ps)); /* a snapshot: the process goes on counting */
    munmap((void *)map, sizeof(ps));
    if (ps.magic != XM_PROCSTAT_MAGIC || ps.version != XM_PROCSTAT_VERSION || ps.pid != (int32_t)pid) {
        return cli_fail("stat", "%s: not in the layout this xmem reads (version %u)", path, ps.version);
    }
    /* a file left by a dead process whose pid was reused names that pid too: it must have
     * been made after the process now holding the pid started */
    double started = proc_start_unix(pid);
    if (started > 0 && (double)ps.start_unix_ns / 1e9 + 1.0 < started) {
        return cli_fail("stat", "%s was left by an earlier process %ld (the pid was reused): "
                                "this one publishes no xmem counters", path, pid);
    }
    uint64_t avg_ns = ps.fetches != 0 ? ps.fetch_ns_sum / ps.fetches : 0;
    if (json) {
        json_t *hist = json_array();
        for (int b = 0; b < XM_PROCSTAT_BUCKETS; b++) {
            json_array_append_new(hist, json_pack("{s:I, s:I}", "le_us",
                                                  (json_int_t)(b < XM_PROCSTAT_BUCKETS - 1 ? 1ll << b : -1),
                                                  "count", (json_int_t)ps.fetch_hist[b]));
        }
        json_t *o = json_pack("{s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}",
                              "pid", (int)pid, "mappings", (json_int_t)ps.mappings,
                              "faults", (json_int_t)ps.faults, "fetched_bytes", (json_int_t)ps.fetched_bytes,
                              "readahead_blocks", (json_int_t)ps.readahead_blocks,
                              "evictions", (json_int_t)ps.evictions,
                              "writeback_pages", (json_int_t)ps.writeback_pages,
                              "writeback_errors", (json_int_t)ps.writeback_errors,
                              "resident_bytes", (json_int_t)ps.resident_bytes,
                              "fetches", (json_int_t)ps.fetches, "fetch_ns_avg", (json_int_t)avg_ns,
                              "fetch_latency_us", hist);
        char *text = json_dumps(o, JSON_INDENT(2));
        json_decref(o);
        if (text == NULL) return cli_fail("stat", "out of memory");
        puts(text);
        free(text);
        return 0;
    }
    printf("process %ld (uid %u), %llu mapping(s)\n", pid, (unsigned)uid, (unsigned long long)ps.mappings);
    printf("  %-18s %llu\n", "faults", (unsigned long long)ps.faults);
    printf("  %-18s %llu\n", "fetched bytes", (unsigned long long)ps.fetched_bytes);
    printf("  %-18s %llu\n", "read-ahead blocks", (unsigned long long)ps.readahead_blocks);
    printf("  %-18s %llu\n", "evictions", (unsigned long long)ps.evictions);
    printf("  %-18s %llu\n", "write-back pages", (unsigned long long)ps.writeback_pages);
    printf("  %-18s %llu\n", "write-back errors", (unsigned long long)ps.writeback_errors);
    printf("  %-18s %llu\n", "resident bytes", (unsigned long long)ps.resident_bytes);
    printf("  %-18s %llu (average %.1f us)\n", "fetches", (unsigned long long)ps.fetches, avg_ns / 1e3);
    printf("  fetch latency:\n");
    for (int b = 0; b < XM_PROCSTAT_BUCKETS; b++) {
        if (ps.fetch_hist[b] == 0) continue;
        if (b < XM_PROCSTAT_BUCKETS - 1)
            printf("    < %8llu us  %llu\n", 1ull << b, (unsigned long long)ps.fetch_hist[b]);
        else
            printf("    >= %7llu us  %llu\n", 1ull << (b - 1), (unsigned long long)ps.fetch_hist[b]);
    }
    return 0;
}
