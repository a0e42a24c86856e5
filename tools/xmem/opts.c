/* xmem: option parsing (getopt_long), per-command help, validated numbers, JSON output. */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ---- per-command help: usage, what it does, one example ---------------- */

typedef struct help { const char *cmd, *text; } help_t;

static const help_t helps[] = {
    {"secret", "usage: xmem secret new PATH\n"
               "  Write a fresh 256-bit cluster secret to PATH (mode 0600; never overwrites).\n"
               "example:\n  xmem secret new /etc/xmem/secret\n"},
    {"tenant", "usage: xmem tenant add NAME [--out FILE] | tenant ls | tenant rm NAME\n"
               "  Issue NAME a credential (default ./NAME.cred), list tenants, or revoke NAME's\n"
               "  credentials. Needs the cluster secret (--secret-file or XMEM_SECRET_FILE).\n"
               "example:\n  xmem --secret-file /etc/xmem/secret tenant add alice --out alice.cred\n"},
    {"region", "usage: xmem region create|ls|stat|rm|grant|revoke|sync|copy|snapshot|clone ...\n"
               "  Regions on one appliance (--appliance or XMEM_APPLIANCE). `xmem region CMD --help`\n"
               "  describes each.\n"
               "example:\n  xmem region create --size 1G --name data\n"},
    {"region create", "usage: xmem region create --size SIZE [--name NAME]\n"
                      "       xmem region create --file PATH [--read-only] [NAME]\n"
                      "  Create a region (or expose a file on the appliance's host); print its id.\n"
                      "  SIZE takes K, M, G, T suffixes (powers of 1024).\n"
                      "example:\n  xmem region create --size 64M --name cache\n"},
    {"region ls", "usage: xmem region ls [--json]\n"
                  "  List the regions you own or were granted on the appliance.\n"
                  "  With a manager, use `xmem ls` (allocations).\n"
                  "example:\n  xmem region ls --json\n"},
    {"region stat", "usage: xmem region stat ID|NAME [--json]\n"
                    "  Describe a region: size, resident bytes, owner, and its grants.\n"
                    "example:\n  xmem region stat cache\n"},
    {"region rm", "usage: xmem region rm ID|NAME\n"
                  "  Destroy a region (owner only); its memory returns to the pool.\n"
                  "example:\n  xmem region rm cache\n"},
    {"region grant", "usage: xmem region grant ID|NAME --tenant T [--read-only]\n"
                     "  Let tenant T open the region (as OWNER/NAME). Here --tenant names the\n"
                     "  grantee; a global --tenant (who you are) goes before `region`. With a\n"
                     "  manager, ID|NAME is an allocation: T attaches it as OWNER/NAME.\n"
                     "example:\n  xmem region grant cache --tenant bob --read-only\n"},
    {"region revoke", "usage: xmem region revoke ID|NAME --tenant T\n"
                      "  Remove tenant T's grant: T's open handles lose access at once. With a\n"
                      "  manager, ID|NAME is an allocation (every part's keys for T end).\n"
                      "example:\n  xmem region revoke cache --tenant bob\n"},
    {"region sync", "usage: xmem region sync ID|NAME [--offset N] [--length N]\n"
                    "  Make what was written to a file region (or a file pool's region) durable.\n"
                    "example:\n  xmem region sync logs --offset 0 --length 1M\n"},
    {"region copy", "usage: xmem region copy ID|NAME --to HOST:PORT[:TARGET] [--offset N] [--chunk SIZE]\n"
                    "  Copy the region appliance to appliance (docs/region-copy.md); prints the\n"
                    "  target region's id. Resume a broken copy with --offset.\n"
                    "example:\n  xmem region copy cache --to 10.0.0.2:7400:cache-copy\n"},
    {"region snapshot", "usage: xmem region snapshot ID|NAME [NEW-NAME]\n"
                        "  A read-only copy-on-write copy on the same appliance; prints its id.\n"
                        "example:\n  xmem region snapshot cache cache-monday\n"},
    {"region clone", "usage: xmem region clone ID|NAME [NEW-NAME]\n"
                     "  A writable copy-on-write copy on the same appliance; prints its id.\n"
                     "example:\n  xmem region clone cache scratch\n"},
    {"put", "usage: xmem put ID|NAME [--offset N]\n"
            "  Copy stdin into the region (with a manager: the allocation) at --offset.\n"
            "  Progress on stderr when it is a terminal.\n"
            "example:\n  xmem put cache --offset 4K < data.bin\n"},
    {"get", "usage: xmem get ID|NAME [--offset N] [--length N]\n"
            "  Copy the region (with a manager: the allocation) to stdout; by default from\n"
            "  --offset to the end. Progress on stderr when it is a terminal.\n"
            "example:\n  xmem get cache --length 1M > out.bin\n"},
    {"stat", "usage: xmem stat [--json] | xmem stat --pid PID [--json]\n"
             "  The appliance's pool: size, use, backing, provider. With a manager, every\n"
             "  appliance's pool. --pid: the mapped-memory counters of a process of yours\n"
             "  (faults, evictions, write-backs, resident bytes, fetch latency histogram).\n"
             "example:\n  xmem stat --json\n  xmem stat --pid 4242\n"},
    {"bench", "usage: xmem bench [--sizes LIST] [--iters N] [--depth Q] [--json]\n"
              "  p50/p99 latency and pipelined bandwidth of reads, writes and atomics against\n"
              "  a raw TCP round trip and stream measured in the same run. Sizes 8..64M;\n"
              "  N 10..10000000; Q 1..256. With a manager, on an allocation it makes and frees.\n"
              "example:\n  xmem bench --sizes 8,4K,1M --iters 500\n"},
    {"bench map", "usage: xmem bench map [--size 256M] [--fetch SIZE] [--faults N] [--workloads LIST]\n"
                  "                      [--fractions LIST] [--reps N] [--no-faults] [--stats]\n"
                  "  Mapped memory: fault latency and workloads against local memory.\n"
                  "example:\n  xmem bench map --size 64M\n"},
    {"config", "usage: xmem config [--json]\n"
               "  The client settings in force and where each came from (flag, env, default).\n"
               "example:\n  xmem config --json\n"},
    {"run", "usage: xmem run [--heap SIZE] [--local SIZE] [--policy P] [--stats] -- CMD ARGS...\n"
            "  Run an unmodified program with its heap on external memory (docs/run.md).\n"
            "example:\n  xmem run --heap 8G --local 1G -- sort -S 6G big.txt\n"},
    {"appliances", "usage: xmem appliances [--json]\n"
                   "  The manager's appliances: state, failure domain, capacity, use.\n"
                   "example:\n  xmem --manager 10.0.0.1:7500 appliances\n"},
    {"alloc", "usage: xmem alloc --size SIZE [--policy POLICY] [--name NAME]\n"
              "  Allocate through the manager; print the id.\n"
              "  POLICY: single | stripe:N[:CHUNK] | replicate:R | ec:K+M[:CHUNK]\n"
              "  (N 1..1024; R 2..8; K 1..16, M 1..4, K+M <= 20; CHUNK a power of two,\n"
              "   ec 4K..4M, default 64K)\n"
              "example:\n  xmem alloc --size 12G --policy stripe:3:1M --name striped\n"},
    {"ls", "usage: xmem ls [--json]\n"
           "  The allocations you own or were granted, with their state.\n"
           "example:\n  xmem ls --json\n"},
    {"free", "usage: xmem free ID|NAME\n"
             "  Free an allocation (owner only).\n"
             "example:\n  xmem free striped\n"},
    {"scrub", "usage: xmem scrub ID|NAME [--json]\n"
              "  Check a replicate or ec allocation whole and repair what disagrees.\n"
              "example:\n  xmem scrub mirrored\n"},
    {"up", "usage: xmem up [--appliances N] [--pool SIZE] [--dir DIR] [--data-provider P]\n"
           "  Start a local manager and N (1..64) appliances in the background and print\n"
           "  the `export` lines that point xmem at them: run it as eval \"$(xmem up)\".\n"
           "  State in --dir, $XMEM_RUN_DIR or /tmp/xmem-run-UID. When XMEM_MANAGER is\n"
           "  exported and answers, nothing is started.\n"
           "example:\n  eval \"$(xmem up --appliances 3 --pool 8G)\"\n"},
    {"down", "usage: xmem down [--dir DIR]\n"
             "  Stop what `xmem up` started (the allocation table stays).\n"
             "example:\n  xmem down && unset XMEM_MANAGER XMEM_SECRET_FILE\n"},
};

/* Print the help of cmd ("region create", "put", ...) on stdout. Commands without an entry
 * here get the lines of the global usage that name them. */
void cli_help(const char *cmd, const char *usage)
{
    for (size_t i = 0; i < sizeof(helps) / sizeof(helps[0]); i++) {
        if (strcmp(helps[i].cmd, cmd) == 0) {
            fputs(helps[i].text, stdout);
            return;
        }
    }
    printf("usage: xmem %s ...\n", cmd);
    size_t n = strlen(cmd);
    for (const char *line = usage; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        const char *w = line;
        while (*w == ' ') w++;
        if ((size_t)(w - line) == 2 && strncmp(w, cmd, n) == 0 && (w[n] == ' ' || w[n] == '\n'))
            printf("%.*s\n", (int)len, line);
        line += len + (end != NULL);
    }
    printf("(see xmem --help)\n");
}

bool cli_has_help(const char *cmd)
{
    for (size_t i = 0; i < sizeof(helps) / sizeof(helps[0]); i++)
        if (strcmp(helps[i].cmd, cmd) == 0) return true;
    return false;
}

/* ---- options -------------------------------------------------------------- */

const char *cli_tenants_file;

/* The global options: accepted before the command and after it. */
enum { G_APPLIANCE = 1, G_MANAGER, G_SECRET, G_TENANT, G_TENANTS, G_PROVIDER, G_TIMEOUT, G_JSON };
static const struct option global_opts[] = {
    {"appliance", required_argument, NULL, G_APPLIANCE},
    {"manager", required_argument, NULL, G_MANAGER},
    {"secret-file", required_argument, NULL, G_SECRET},
    {"tenant", required_argument, NULL, G_TENANT},
    {"tenants", required_argument, NULL, G_TENANTS},
    {"provider", required_argument, NULL, G_PROVIDER},
    {"timeout-ms", required_argument, NULL, G_TIMEOUT},
    {"json", no_argument, NULL, G_JSON},
};
#define NGLOBAL (sizeof(global_opts) / sizeof(global_opts[0]))

int cli_u64(const cli_t *cli, const char *what, const char *text, uint64_t min, uint64_t max,
            uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = text[0] >= '0' && text[0] <= '9' ? strtoull(text, &end, 10) : 0;
    if (text[0] < '0' || text[0] > '9' || *end != '\0' || errno != 0 || v < min || v > max) {
        fprintf(stderr, "xmem: %s: '%s' is not a whole number from %llu to %llu; see xmem %s%s--help\n",
                what, text, (unsigned long long)min, (unsigned long long)max,
                cli->cmd != NULL ? cli->cmd : "", cli->cmd != NULL ? " " : "");
        return 2;
    }
    *out = v;
    return 0;
}

int cli_sz(const cli_t *cli, const char *what, const char *text, uint64_t min, uint64_t *out)
{
    uint64_t v;
    if (xm_parse_size(text, &v) != XM_OK || v < min) {
        fprintf(stderr, "xmem: %s: '%s' is not a size%s (a number with an optional K, M, G or T "
                "suffix, e.g. 64M); see xmem %s%s--help\n", what, text, min > 0 ? " above 0" : "",
                cli->cmd != NULL ? cli->cmd : "", cli->cmd != NULL ? " " : "");
        return 2;
    }
    *out = v;
    return 0;
}

static int set_global(cli_t *cli, int which, const char *v)
{
    switch (which) {
    case G_APPLIANCE: cli->conn.appliance = v; break;
    case G_MANAGER: cli->conn.manager = v; break;
    case G_SECRET: cli->conn.secret_file = v; break;
    case G_TENANT: cli->conn.tenant = v; break;
    case G_TENANTS: cli_tenants_file = v; break;
    case G_PROVIDER: cli->conn.provider = v; break;
    case G_JSON: cli->json = true; break;
    case G_TIMEOUT: {
        uint64_t ms;
        if (cli_u64(cli, "--timeout-ms", v, 1, 86400000, &ms) != 0) return 2;
        cli->conn.timeout_ms = (uint32_t)ms;
        break;
    }
    }
    return 0;
}

/* The option text getopt stopped at, for messages: "--sise" of "--sise=1G". */
static void bad_opt(char *out, size_t len, const char *arg, int optopt_v)
{
    if (optopt_v > 0 && optopt_v < 256 && (arg == NULL || arg[1] != '-')) {
        snprintf(out, len, "-%c", optopt_v);
        return;
    }
    snprintf(out, len, "%s", arg != NULL ? arg : "?");
    char *eq = strchr(out, '=');
    if (eq != NULL) *eq = '\0';
}

/* getopt_long over argv[0..argc) ("argv[-1]" need not exist): opts then the global options
 * not shadowed by one of opts. Positional arguments are left in argv, in order; *argc_p
 * becomes their count. stop_at_command: stop at the first positional (global options
 * before the command). */
static int parse(cli_t *cli, int *argc_p, char **argv, const cli_opt_t *opts, bool stop_at_command)
{
    size_t nopts = 0;
    while (opts != NULL && opts[nopts].name != NULL) nopts++;
    struct option *lo = calloc(nopts + NGLOBAL + 1, sizeof(*lo));
    char **av = calloc((size_t)*argc_p + 2, sizeof(char *));
    if (lo == NULL || av == NULL) {
        free(lo);
        free(av);
        return cli_fail("options", "out of memory");
    }
    size_t n = 0;
    for (size_t i = 0; i < nopts; i++)
        lo[n++] = (struct option){opts[i].name, opts[i].value != NULL ? required_argument : no_argument,
                                  NULL, 1000 + (int)i};
    for (size_t g = 0; g < NGLOBAL; g++) {
        bool shadowed = false;
        for (size_t i = 0; i < nopts; i++) shadowed |= strcmp(opts[i].name, global_opts[g].name) == 0;
        if (!shadowed) lo[n++] = global_opts[g];
    }
    av[0] = (char *)"xmem";
    for (int i = 0; i < *argc_p; i++) av[i + 1] = argv[i];
    int ac = *argc_p + 1, rc = 0, c;
    opterr = 0;
    optind = 0; /* glibc: start afresh (another parse may have run) */
    while ((c = getopt_long(ac, av, stop_at_command ? "+:h" : ":h", lo, NULL)) != -1) {
        char name[64];
        const char *help_cmd = cli->cmd != NULL ? cli->cmd : "";
        if (c == '?') {
            bad_opt(name, sizeof(name), av[optind - 1], optopt);
            fprintf(stderr, "xmem: unknown option %s; see xmem %s%s--help\n", name, help_cmd,
                    help_cmd[0] ? " " : "");
            rc = 2;
            break;
        }
        if (c == ':') {
            bad_opt(name, sizeof(name), av[optind - 1], optopt);
            fprintf(stderr, "xmem: %s needs a value; see xmem %s%s--help\n", name, help_cmd,
                    help_cmd[0] ? " " : "");
            rc = 2;
            break;
        }
        if (c == 'h') {
            cli->help = true;
        } else if (c >= 1000) {
            const cli_opt_t *o = &opts[c - 1000];
            if (o->value != NULL) *o->value = optarg;
            if (o->flag != NULL) *o->flag = true;
        } else if (set_global(cli, c, optarg) != 0) {
            rc = 2;
            break;
        }
    }
    if (rc == 0) {
        int k = 0;
        for (int i = optind; i < ac; i++) argv[k++] = av[i];
        *argc_p = k;
    }
    free(lo);
    free(av);
    return rc;
}

int cli_parse(cli_t *cli, const cli_opt_t *opts)
{
    return parse(cli, &cli->argc, cli->argv, opts, false);
}

int cli_parse_globals(cli_t *cli, int *argc_p, char **argv)
{
    bool help = false, version = false;
    cli_opt_t o[] = {{"help", NULL, &help}, {"version", NULL, &version}, {NULL}};
    int rc = parse(cli, argc_p, argv, o, true);
    if (help) cli->help = true;
    if (version) cli->version = true;
    return rc;
}

/* Commands that parse with cli_take (run, bench map, ...): take the global options out of
 * their arguments, up to a "--", in either --opt value or --opt=value form. */
int cli_take_globals(cli_t *cli, bool keep_tenant)
{
    int end = cli->argc;
    for (int i = 0; i < cli->argc; i++)
        if (strcmp(cli->argv[i], "--") == 0) { end = i; break; }
    for (int i = 0; i < end;) {
        const char *a = cli->argv[i];
        const struct option *g = NULL;
        const char *val = NULL;
        for (size_t k = 0; k < NGLOBAL && g == NULL && a[0] == '-' && a[1] == '-'; k++) {
            size_t len = strlen(global_opts[k].name);
            if (strncmp(a + 2, global_opts[k].name, len) != 0) continue;
            if (a[2 + len] == '\0') g = &global_opts[k];
            else if (a[2 + len] == '=' && global_opts[k].has_arg) g = &global_opts[k], val = a + 3 + len;
        }
        if (g == NULL || (keep_tenant && g->val == G_TENANT)) { i++; continue; }
        int used = 1;
        if (g->has_arg && val == NULL) {
            if (i + 1 >= end) {
                fprintf(stderr, "xmem: %s needs a value; see xmem %s --help\n", a, cli->cmd);
                return 2;
            }
            val = cli->argv[i + 1];
            used = 2;
        }
        if (set_global(cli, g->val, val) != 0) return 2;
        memmove(&cli->argv[i], &cli->argv[i + used], (size_t)(cli->argc - i - used) * sizeof(char *));
        cli->argc -= used;
        end -= used;
    }
    return 0;
}

/* ---- JSON ------------------------------------------------------------------ */

int cli_json_print(json_t *j)
{
    int rc = 0;
    if (j == NULL || json_dumpf(j, stdout, JSON_COMPACT) != 0 || putchar('\n') == EOF) {
        rc = cli_fail("json", "cannot write the output");
    }
    json_decref(j);
    return rc;
}

/* ---- progress ------------------------------------------------------------- */

void cli_progress(cli_progress_t *p, const char *what, uint64_t done, uint64_t total)
{
    if (!p->init) {
        p->init = true;
        p->tty = isatty(STDERR_FILENO) == 1;
        p->what = what;
    }
    if (!p->tty) return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    if (p->start_ms == 0) p->start_ms = now;
    bool last = total != 0 && done >= total;
    /* the first update at once, then at most 5 a second */
    if (!last && p->shown && now - p->last_ms < 200) return;
    p->last_ms = now;
    p->shown = true;
    double secs = (double)(now - p->start_ms) / 1000.0;
    double mib = (double)done / 1048576.0;
    if (last) {
        /* a long operation leaves a summary line; a short one leaves nothing */
        if (secs >= 1.0)
            fprintf(stderr, "\r\033[Kxmem %s: %.0f MiB in %.1f s, %.0f MiB/s\n", p->what, mib,
                    secs, mib / secs);
        else
            fputs("\r\033[K", stderr);
        p->shown = false;
        return;
    }
    if (total != 0)
        fprintf(stderr, "\r\033[Kxmem %s: %.0f / %.0f MiB (%.0f %%), %.0f MiB/s", p->what, mib,
                (double)total / 1048576.0, 100.0 * (double)done / (double)total,
                secs > 0 ? mib / secs : 0.0);
    else
        fprintf(stderr, "\r\033[Kxmem %s: %.0f MiB, %.0f MiB/s", p->what, mib, secs > 0 ? mib / secs : 0.0);
}

void cli_progress_step(cli_progress_t *p, const char *what, const char *step, unsigned i, unsigned n)
{
    if (!p->init) {
        p->init = true;
        p->tty = isatty(STDERR_FILENO) == 1;
        p->what = what;
    }
    if (!p->tty) return;
    if (i >= n) {
        if (p->shown) fputs("\r\033[K", stderr);
        return;
    }
    p->shown = true;
    fprintf(stderr, "\r\033[Kxmem %s: %u/%u %s", p->what, i + 1, n, step);
}

void cli_progress_end(cli_progress_t *p)
{
    if (p->tty && p->shown) fputs("\r\033[K", stderr);
    p->shown = false;
}
